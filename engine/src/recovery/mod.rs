//! Replay of one shard's WAL, on the shard's own thread.
//!
//! Decision table for the place where a segment's chain of valid commits
//! ends (legend: *chain end* = the first block that is not the next valid
//! commit; *later commit* = a block after the chain end whose header decodes
//! with this segment's identity and a sequence number not yet replayed):
//!
//! | segment | at the chain end          | later commit? | outcome                         |
//! |---------|---------------------------|---------------|---------------------------------|
//! | last    | zeros (never written)     | no            | clean end: writing resumes here |
//! | last    | a commit that fails checks| no            | torn tail: cut, zeroed, resumed |
//! | any     | anything                  | yes           | damage: open fails              |
//! | not last| a commit that fails checks| —             | damage: open fails              |
//! | not last| zeros                     | no            | end of segment: next segment must start at the next commit sequence, else damage |
//!
//! A torn tail can only be the last commit of the last segment because a
//! shard has one commit in flight and starts a new segment only after the
//! previous commit completed. An acknowledged last commit damaged at rest is
//! indistinguishable from a torn one and is cut too; `docs/format.md` says so.

use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::buffer::table::BufferTable;
use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access};
use crate::shard::metrics::ShardMetrics;
use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};
use crate::wal::format::{
    decode_commit_header, decode_segment_header, DecodeError, Entry, EntryIter, EntryKind, COMMIT_HEADER_BYTES,
};
use crate::wal::segment::{list_segments, Segment};

/// Bytes per read system call while replaying.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Where the shard goes on writing.
pub struct Tail {
    /// The last segment, open for writing.
    pub segment: Segment,
    /// The first free block in it.
    pub position: u64,
}

/// A replayed shard.
pub struct Recovered {
    /// Channels and their records.
    pub table: BufferTable,
    /// Sequence number of the next commit.
    pub next_commit_seq: CommitSeq,
    /// The segment to continue in, if any segment exists.
    pub tail: Option<Tail>,
    /// Sequence number for the next new segment.
    pub next_segment_seq: SegmentSeq,
    /// Where a torn tail was cut, if one was.
    pub torn_tail_cut: Option<(SegmentSeq, u64)>,
}

/// What recovery needs to know.
pub struct RecoverContext<'a> {
    /// The shard's directory.
    pub shard_dir: &'a Path,
    /// The shard.
    pub shard: ShardId,
    /// The store's identity.
    pub store_id: u64,
    /// Direct or buffered reads.
    pub access: Access,
    /// Progress counters.
    pub metrics: &'a ShardMetrics,
}

enum ChainEnd {
    Zeros,
    Damaged(String),
}

/// Replays every segment of the shard in order.
pub fn recover_shard(ctx: &RecoverContext<'_>) -> Result<Recovered> {
    let segments = list_segments(ctx.shard_dir)?;
    let mut total = 0u64;
    for (_, path) in &segments {
        total += std::fs::metadata(path).map_or(0, |m| m.len());
    }
    ctx.metrics.recovery_bytes_total.store(total, Ordering::Relaxed);

    let mut table = BufferTable::default();
    let mut expected: Option<CommitSeq> = None;
    let mut buf: Option<AlignedBuf> = None;
    let mut tail = None;
    let mut torn_tail_cut = None;
    let mut next_segment_seq = SegmentSeq(1);

    for (i, (seq, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        next_segment_seq = SegmentSeq(seq.0 + 1);
        let damage = |position: u64, what: String| Error::Corruption {
            shard: ctx.shard.0,
            segment: seq.0,
            position,
            what,
        };
        let f = if last {
            file::open_rw(path, ctx.access)?
        } else {
            file::open_read(path, ctx.access)?
        };
        let size = f
            .metadata()
            .map_err(|e| Error::io("stat segment", Some(path.clone()), e))?
            .len();
        if size > crate::config::SEGMENT_BYTES_LIMIT {
            return Err(damage(0, format!("segment file of {size} bytes is larger than any corewal writes")));
        }
        let want = crate::config::round_up(size as usize, 65536).max(65536);
        if buf.as_ref().is_none_or(|b| b.len() < want) {
            buf = Some(AlignedBuf::new(want, 4096));
        }
        let b = buf.as_mut().expect("allocated above");
        let mut n = 0usize;
        while (n as u64) < size {
            let len = READ_CHUNK_BYTES.min(b.len() - n);
            let got = file::read_at(&f, path, &mut b[n..n + len], n as u64)?;
            n += got;
            ctx.metrics.recovery_bytes_read.fetch_add(got as u64, Ordering::Relaxed);
            if got < len {
                break;
            }
        }
        let n = n.min(size as usize);
        let data = &b[..n];

        let header = decode_segment_header(data).map_err(|e| damage(0, format!("segment header: {e}")))?;
        if header.shard != ctx.shard || header.store_id != ctx.store_id || header.segment_seq != *seq {
            return Err(damage(0, "segment header belongs to another shard, store or file name".into()));
        }
        if (n as u64) < header.segment_bytes {
            return Err(damage(n as u64, format!("segment file is {n} bytes, its header says {}", header.segment_bytes)));
        }
        match expected {
            None => expected = Some(header.first_commit_seq),
            Some(e) if e != header.first_commit_seq => {
                return Err(damage(
                    0,
                    format!(
                        "segment starts at commit {} but the previous segment ends before commit {}",
                        header.first_commit_seq.0, e.0
                    ),
                ))
            }
            Some(_) => {}
        }
        let block = header.block_bytes as usize;
        let mut pos = block;
        let mut next = expected.expect("set above");
        let end = loop {
            if pos + block > n {
                break ChainEnd::Zeros;
            }
            let h = match decode_commit_header(&data[pos..], block) {
                Ok(h) => h,
                Err(DecodeError::Empty) => break ChainEnd::Zeros,
                Err(e) => break ChainEnd::Damaged(e.to_string()),
            };
            if h.store_id != ctx.store_id || h.shard != ctx.shard || h.segment_seq != *seq || h.position != pos as u64 {
                break ChainEnd::Damaged("commit header from another place or file".into());
            }
            if h.commit_seq != next {
                break ChainEnd::Damaged(format!("commit sequence {} where {} was next", h.commit_seq.0, next.0));
            }
            let span = h.blocks as usize * block;
            if pos + span > n {
                break ChainEnd::Damaged("commit runs past the end of the segment".into());
            }
            let body = &data[pos + COMMIT_HEADER_BYTES..pos + COMMIT_HEADER_BYTES + h.entries_bytes as usize];
            // First pass verifies every checksum, so that a torn commit is
            // cut whole and never half-applied.
            if let Some(err) = EntryIter::new(body, h.commit_seq, h.entry_count).find_map(|e| e.err()) {
                break ChainEnd::Damaged(err.to_string());
            }
            // Second pass applies; the checksums were verified by the first.
            for e in EntryIter::new(body, h.commit_seq, h.entry_count) {
                let e = e.expect("verified in the first pass");
                apply(&mut table, &e, h.commit_seq).map_err(|what| damage(pos as u64, what))?;
            }
            pos += span;
            next = CommitSeq(next.0 + 1);
            ctx.metrics.recovery_commits.fetch_add(1, Ordering::Relaxed);
        };
        expected = Some(next);

        // Whatever ended the chain, no commit may follow it in this segment.
        let mut nonzero_end = pos;
        let mut q = pos + block;
        while q + block <= n {
            let blk = &data[q..q + block];
            if blk.iter().any(|&x| x != 0) {
                nonzero_end = q + block;
                if let Ok(h) = decode_commit_header(blk, block) {
                    if h.store_id == ctx.store_id
                        && h.shard == ctx.shard
                        && h.segment_seq == *seq
                        && h.position == q as u64
                        && h.commit_seq >= next
                    {
                        let found = match &end {
                            ChainEnd::Zeros => "zeros".to_string(),
                            ChainEnd::Damaged(w) => w.clone(),
                        };
                        return Err(damage(
                            pos as u64,
                            format!("{found} where commit {} was next, yet commit {} follows at byte {q}", next.0, h.commit_seq.0),
                        ));
                    }
                }
            }
            q += block;
        }
        if pos < n && data[pos..(pos + block).min(n)].iter().any(|&x| x != 0) {
            nonzero_end = nonzero_end.max((pos + block).min(n));
        }
        match end {
            ChainEnd::Damaged(what) if !last => {
                return Err(damage(pos as u64, format!("{what}, before later segments")));
            }
            ChainEnd::Damaged(_) => {
                // Torn tail: zero what the torn commit left, so that no byte of
                // it can be read as part of a later commit's place.
                let zeros = AlignedBuf::new(READ_CHUNK_BYTES, block);
                file::zero_fill(&f, path, &zeros, pos as u64, nonzero_end as u64)?;
                torn_tail_cut = Some((*seq, pos as u64));
            }
            ChainEnd::Zeros => {}
        }
        if last {
            tail = Some(Tail {
                segment: Segment {
                    seq: *seq,
                    path: path.clone(),
                    file: f,
                    bytes: header.segment_bytes,
                },
                position: pos as u64,
            });
        }
    }
    ctx.metrics.recovery_channels.store(table.len() as u64, Ordering::Relaxed);
    Ok(Recovered {
        table,
        next_commit_seq: expected.unwrap_or(CommitSeq(1)),
        tail,
        next_segment_seq,
        torn_tail_cut,
    })
}

fn apply(table: &mut BufferTable, e: &Entry<'_>, commit: CommitSeq) -> std::result::Result<(), String> {
    match e.kind {
        EntryKind::Register => {
            let name = std::str::from_utf8(e.payload).map_err(|_| "channel name is not UTF-8".to_string())?;
            crate::validate_channel_name(name).map_err(|err| err.to_string())?;
            if table.next_id() != e.channel {
                return Err(format!("channel id {} registered where {} was next", e.channel.0, table.next_id().0));
            }
            if table.lookup(name).is_some() {
                return Err(format!("channel {name:?} registered twice"));
            }
            table.insert(name, e.offset, commit);
            Ok(())
        }
        EntryKind::Append => {
            let ch: ChannelId = e.channel;
            let Some(state) = table.get_mut(ch) else {
                return Err(format!("record for unregistered channel id {}", ch.0));
            };
            if state.next_offset != e.offset {
                return Err(format!(
                    "record at offset {} of channel {:?} where offset {} was next",
                    e.offset.0, state.name, state.next_offset.0
                ));
            }
            state.next_offset = Offset(e.offset.0 + 1);
            table.push(ch, Bytes::copy_from_slice(e.payload));
            Ok(())
        }
        EntryKind::Drop => Err("channel drop entries are not understood by this build".into()),
    }
}
