//! An open from a shard's index snapshot (`wal/snapshot.rs`) instead of a
//! replay of the whole log.
//!
//! Every snapshot is tied to the last durable commit when it was written
//! (its place and header checksum): that commit is read back and checked
//! whole before anything else is believed. Then:
//!
//! * **Whole** — a snapshot of a clean close, when everything says nothing
//!   happened since: the manifest's newest generation is the one it names
//!   (a later session writes a newer one before its first commit), with
//!   the same log end and start; the segment files are exactly the log it
//!   lists, at their sizes, plus at most the empty spare made ahead of use;
//!   no commit of the shard lies where writing resumes. The open reads
//!   nothing more.
//! * **Resume** — any other snapshot whose tie holds and whose segments
//!   before the tie's are still the log's, at their sizes: its table is the
//!   start, and replay reads the log from the end of the tied commit on
//!   (a crash reopen reads what was written since the last snapshot).
//! * Otherwise the whole log is replayed, as if there were none; the
//!   metrics count it ignored, and it is removed.
//!
//! Commits before the tie are not read at the open: damage in them is
//! found by the read that meets it (every entry read from the WAL is
//! checked as replay checks it).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::buffer::channels::ChannelTable;
use crate::error::Result;
use crate::io::file::{self, Access, DiskFile};
use crate::types::{CommitSeq, SegmentSeq};
use crate::wal::format::{
    decode_commit_header, decode_segment_header, header_crc, COMMIT_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};
use crate::wal::manifest::{ManifestRecord, ManifestState};
use crate::wal::reader::first_commit_header;
use crate::wal::segment::{LogSegment, Segment};
use crate::wal::snapshot::{
    decode, CommitTie, SegmentImage, SnapshotImage, SNAPSHOT_BYTES_MAX, SNAPSHOT_FILE,
};

use super::{scan, RecoverContext, Recovered, Tail};

/// Whether the shard has a snapshot file.
pub(super) fn exists(ctx: &RecoverContext<'_>) -> bool {
    file::exists(&ctx.shard_dir.join(SNAPSHOT_FILE))
}

/// The shard's snapshot, if there is one (an unreadable one reads as
/// empty bytes, which fail to decode).
pub(super) fn read(ctx: &RecoverContext<'_>) -> Option<Vec<u8>> {
    let path = ctx.shard_dir.join(SNAPSHOT_FILE);
    if !exists(ctx) {
        return None;
    }
    let bytes = DiskFile::open_read(&path, Access::Buffered)
        .and_then(|f| f.read_bounded(SNAPSHOT_BYTES_MAX as usize))
        .ok()
        .flatten();
    Some(bytes.unwrap_or_default())
}

/// Removes a snapshot that was not trusted (best effort: one left behind
/// is not trusted the next time either).
pub(super) fn discard(ctx: &RecoverContext<'_>) {
    let _ = file::remove(
        ctx.fs,
        &ctx.shard_dir.join(SNAPSHOT_FILE),
        "remove a stale snapshot",
    );
}

/// What a snapshot is good for (see the module docs).
pub(super) enum FromSnapshot {
    /// The shard as it describes it.
    Whole(Box<Recovered>),
    /// A start for replaying what followed it.
    Resume(Box<Resume>),
    /// Nothing: replay the whole log.
    Ignored,
}

/// Where replay goes on after a snapshot.
pub(super) struct Resume {
    /// The table as of the tied commit.
    pub table: ChannelTable,
    /// The tied commit.
    pub tie: CommitTie,
    /// Where the tied commit ends in its segment.
    pub after: usize,
    /// Index of the tied commit's segment in the list replayed.
    pub first: usize,
    /// The log's segments before it, as the snapshot lists them.
    pub log: Vec<LogSegment>,
    /// The channel id that was next when the tied commit's segment began
    /// (the log start the manifest records names it).
    pub tie_next_channel_id: u64,
}

/// What the snapshot `bytes` is good for; `segments` are the files from
/// the log start on.
pub(super) fn restore(
    ctx: &RecoverContext<'_>,
    bytes: &[u8],
    manifest: &ManifestState,
    segments: &[(SegmentSeq, PathBuf)],
) -> Result<FromSnapshot> {
    let Ok(img) = decode(bytes, ctx.shard, ctx.store_id) else {
        return Ok(FromSnapshot::Ignored);
    };
    let ManifestState::Found(m) = manifest else {
        return Ok(FromSnapshot::Ignored);
    };
    let Some(after) = tie_holds(ctx, &img, segments) else {
        return Ok(FromSnapshot::Ignored);
    };
    if img.clean {
        if let Some((tail, next_segment_seq, log)) = whole_log(ctx, &img, m, segments)? {
            return Ok(whole(ctx, img, manifest, tail, next_segment_seq, log));
        }
    }
    Ok(resume(ctx, img, m, segments, after))
}

/// Replay after the snapshot's tied commit, if the segments before it are
/// still the log's (see the module docs).
fn resume(
    ctx: &RecoverContext<'_>,
    img: SnapshotImage,
    m: &ManifestRecord,
    segments: &[(SegmentSeq, PathBuf)],
    after: usize,
) -> FromSnapshot {
    let Some(tie) = img.tail.last_commit else {
        return FromSnapshot::Ignored;
    };
    if m.log_start.is_some_and(|s| s.segment > tie.segment) {
        return FromSnapshot::Ignored;
    }
    let Some(first) = segments.iter().position(|(seq, _)| *seq == tie.segment) else {
        return FromSnapshot::Ignored;
    };
    let oldest = segments[0].0;
    let listed: Vec<&SegmentImage> = img
        .log
        .iter()
        .filter(|s| s.seq >= oldest && s.seq < tie.segment)
        .collect();
    let same = listed.len() == first
        && segments[..first]
            .iter()
            .zip(&listed)
            .all(|((seq, path), s)| *seq == s.seq && file::size_of(path) == Some(s.bytes));
    if !same {
        return FromSnapshot::Ignored;
    }
    let Some(tie_next_channel_id) = img
        .log
        .iter()
        .find(|s| s.seq == tie.segment)
        .map(|s| s.next_channel_id)
    else {
        return FromSnapshot::Ignored;
    };
    let Ok(table) =
        ChannelTable::from_image(img.next_id, img.channels, img.retired, ctx.cache_budget)
    else {
        return FromSnapshot::Ignored;
    };
    FromSnapshot::Resume(Box::new(Resume {
        table,
        tie,
        after,
        first,
        log: listed.into_iter().map(log_segment).collect(),
        tie_next_channel_id,
    }))
}

fn log_segment(s: &SegmentImage) -> LogSegment {
    LogSegment {
        seq: s.seq,
        bytes: s.bytes,
        next_channel_id: s.next_channel_id,
        recycled_from: s.recycled_from,
    }
}

/// Where writing resumes and the log, as a clean close's snapshot
/// describes them, if nothing happened since (see the module docs).
fn whole_log(
    ctx: &RecoverContext<'_>,
    img: &SnapshotImage,
    m: &ManifestRecord,
    segments: &[(SegmentSeq, PathBuf)],
) -> Result<Option<(Tail, SegmentSeq, Vec<LogSegment>)>> {
    let log_start = img.log.first().map(|s| s.seq);
    if m.generation != img.generation
        || m.durable_through != img.durable_through
        || m.active_segment != img.tail.segment
        || m.log_start.is_some_and(|s| Some(s.segment) != log_start)
        || img.log.last().map(|s| s.seq) != Some(img.tail.segment)
    {
        return Ok(None);
    }
    // The files: the log as listed, at its sizes, then at most the spare.
    let (listed, spare) = match segments.len().checked_sub(img.log.len()) {
        Some(0) => (segments, None),
        Some(1) => (&segments[..img.log.len()], segments.last()),
        _ => return Ok(None),
    };
    let sizes_match = listed
        .iter()
        .zip(&img.log)
        .all(|((seq, path), s)| *seq == s.seq && file::size_of(path) == Some(s.bytes));
    if !sizes_match || !nothing_after(ctx, img, listed) {
        return Ok(None);
    }
    let mut log: Vec<LogSegment> = img.log.iter().map(log_segment).collect();
    let (tail, next_segment_seq) = match spare {
        None => {
            let path = listed.last().expect("the tail segment").1.clone();
            let t = tail_at(ctx, path, img)?;
            (t, img.tail.next_segment)
        }
        Some((seq, path)) => {
            // Replay takes an empty spare as the segment to go on in.
            let Some((h, t)) = spare_tail(ctx, *seq, path, img)? else {
                return Ok(None);
            };
            log.push(LogSegment {
                seq: *seq,
                bytes: h,
                next_channel_id: img.next_id,
                recycled_from: t.segment.recycled_from,
            });
            (t, SegmentSeq(seq.0 + 1))
        }
    };
    Ok(Some((tail, next_segment_seq, log)))
}

/// The shard as a clean close's snapshot describes it, its table moved
/// out of the image (a table the image cannot make: ignored).
fn whole(
    ctx: &RecoverContext<'_>,
    img: SnapshotImage,
    manifest: &ManifestState,
    tail: Tail,
    next_segment_seq: SegmentSeq,
    log: Vec<LogSegment>,
) -> FromSnapshot {
    let (durable_through, last_commit) = (img.durable_through, img.tail.last_commit);
    let Ok(table) =
        ChannelTable::from_image(img.next_id, img.channels, img.retired, ctx.cache_budget)
    else {
        return FromSnapshot::Ignored;
    };
    ctx.metrics
        .recovery_channels
        .store(table.len() as u64, Ordering::Relaxed);
    FromSnapshot::Whole(Box::new(Recovered {
        table,
        next_commit_seq: CommitSeq(durable_through.0 + 1),
        tail: Some(tail),
        next_segment_seq,
        damage: Vec::new(),
        cuts: Vec::new(),
        manifest: manifest.clone(),
        last_commit,
        log,
        leftovers: Vec::new(),
    }))
}

/// Where the last durable commit the snapshot names ends, if it is in
/// the log where the snapshot says, with the header it says and every
/// entry whole: a log whose end was zeroed, lost or replaced by another
/// copy since is not described by the snapshot. (The commits before it are
/// checked as they are read.) A snapshot of a shard that never committed
/// ties to nothing: `Some(0)`.
fn tie_holds(
    ctx: &RecoverContext<'_>,
    img: &SnapshotImage,
    listed: &[(SegmentSeq, PathBuf)],
) -> Option<usize> {
    let Some(tie) = img.tail.last_commit else {
        return (img.durable_through.0 == 0).then_some(0);
    };
    if tie.seq != img.durable_through {
        return None;
    }
    let (_, path) = listed.iter().find(|(seq, _)| *seq == tie.segment)?;
    let f = DiskFile::open_read(path, Access::Buffered).ok()?;
    let mut head = [0u8; SEGMENT_HEADER_BYTES];
    f.read_exact_at(&mut head, 0).ok()?;
    let segment = decode_segment_header(&head).ok()?;
    let block = segment.block_bytes as usize;
    let mut header = [0u8; COMMIT_HEADER_BYTES];
    f.read_exact_at(&mut header, tie.position).ok()?;
    let h = decode_commit_header(&header, block).ok()?;
    let identity = h.commit_seq == tie.seq
        && h.segment_seq == tie.segment
        && h.position == tie.position
        && h.shard == ctx.shard
        && h.store_id == ctx.store_id
        && header_crc(&header) == tie.header_crc;
    let end = tie.position + u64::from(h.blocks) * block as u64;
    if !identity || end > segment.segment_bytes || end > f.len().ok()? {
        return None;
    }
    let mut commit = vec![0u8; COMMIT_HEADER_BYTES + h.entries_bytes as usize];
    f.read_exact_at(&mut commit, tie.position).ok()?;
    scan::commit_body(&commit, 0, &h).ok()?;
    Some(end as usize)
}

/// Whether the tail segment holds no commit of this shard where writing
/// resumes: every session writes a newer manifest generation before its
/// first commit, so one there was written by something else (a crafted
/// log, a copy from elsewhere): replay looks at it.
fn nothing_after(
    ctx: &RecoverContext<'_>,
    img: &SnapshotImage,
    listed: &[(SegmentSeq, PathBuf)],
) -> bool {
    let Some((_, path)) = listed.last() else {
        return false;
    };
    let mut header = [0u8; COMMIT_HEADER_BYTES];
    let read = DiskFile::open_read(path, Access::Buffered)
        .and_then(|f| f.read_exact_at(&mut header, img.tail.position));
    if read.is_err() {
        // The tail segment ends where writing resumes: nothing after it.
        return file::size_of(path).is_some_and(|n| n <= img.tail.position);
    }
    !decode_commit_header(&header, img.tail.block as usize).is_ok_and(|h| {
        h.store_id == ctx.store_id && h.shard == ctx.shard && h.segment_seq == img.tail.segment
    })
}

/// The snapshot's tail segment, open for writing at its write position.
fn tail_at(ctx: &RecoverContext<'_>, path: PathBuf, img: &SnapshotImage) -> Result<Tail> {
    let f = DiskFile::open_rw(ctx.fs, &path, ctx.access)?;
    let s = img.log.last().expect("the tail segment");
    Ok(Tail {
        segment: Segment {
            seq: s.seq,
            path,
            file: Arc::new(f),
            bytes: s.bytes,
            recycled_from: s.recycled_from,
        },
        position: img.tail.position,
        block: img.tail.block as usize,
    })
}

/// The spare segment `seq` at `path` as the tail (its first block), with
/// its file size, if it is one of this shard's and holds no commit.
fn spare_tail(
    ctx: &RecoverContext<'_>,
    seq: SegmentSeq,
    path: &std::path::Path,
    img: &SnapshotImage,
) -> Result<Option<(u64, Tail)>> {
    // A commit of this segment in its first block: not an empty spare. (A
    // recycled file's first block may hold its earlier life's commit,
    // which names another segment.)
    let has_commit = first_commit_header(path).is_some_and(|(_, h)| {
        h.segment_seq == seq && h.store_id == ctx.store_id && h.shard == ctx.shard
    });
    if seq != img.tail.next_segment || has_commit {
        return Ok(None);
    }
    let mut head = vec![0u8; SEGMENT_HEADER_BYTES];
    let read =
        DiskFile::open_read(path, Access::Buffered).and_then(|f| f.read_exact_at(&mut head, 0));
    if read.is_err() {
        return Ok(None);
    }
    let f = DiskFile::open_rw(ctx.fs, path, ctx.access)?;
    let Ok(h) = decode_segment_header(&head) else {
        return Ok(None);
    };
    if h.shard != ctx.shard || h.store_id != ctx.store_id || h.segment_seq != seq {
        return Ok(None);
    }
    let bytes = f.len()?;
    Ok(Some((
        bytes,
        Tail {
            segment: Segment {
                seq,
                path: path.to_path_buf(),
                file: Arc::new(f),
                bytes: h.segment_bytes,
                recycled_from: h.recycled_from,
            },
            position: u64::from(h.block_bytes),
            block: h.block_bytes as usize,
        },
    )))
}
