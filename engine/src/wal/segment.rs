//! Segment files: naming, creation (zero-filled, synced, then renamed into
//! place), listing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;
use crate::types::{SegmentSeq, ShardId};
use crate::wal::format::{encode_segment_header, SegmentHeader};

/// Extension of segment files.
pub const SEGMENT_EXTENSION: &str = "wal";
/// Extension of segments being created; never holds a commit.
pub const CREATING_EXTENSION: &str = "creating";

/// The file name of segment `seq`: 16 hex digits and `.wal`.
pub fn segment_path(shard_dir: &Path, seq: SegmentSeq) -> PathBuf {
    shard_dir.join(format!("{:016x}.{SEGMENT_EXTENSION}", seq.0))
}

/// An open segment.
#[derive(Debug)]
pub struct Segment {
    /// Its sequence number.
    pub seq: SegmentSeq,
    /// Its path.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<DiskFile>,
    /// Its size.
    pub bytes: u64,
    /// The segment whose file was recycled into it, if any.
    pub recycled_from: Option<SegmentSeq>,
}

impl Segment {
    /// The segment of header `h` whose `file` now has its name `path`.
    fn named(h: &SegmentHeader, file: DiskFile, path: PathBuf) -> Segment {
        Segment {
            seq: h.segment_seq,
            file: Arc::new(file.renamed(&path)),
            path,
            bytes: h.segment_bytes,
            recycled_from: h.recycled_from,
        }
    }
}

/// A segment of a shard's log as the shard keeps it: from the log start to
/// the segment being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSegment {
    /// Its sequence number.
    pub seq: SegmentSeq,
    /// Its file's size.
    pub bytes: u64,
    /// The channel id the shard would have handed out next when the
    /// segment began (the manifest records it with a new log start).
    pub next_channel_id: u64,
    /// The segment whose file was recycled into it, if any.
    pub recycled_from: Option<SegmentSeq>,
}

/// What a new segment is made of.
pub struct SegmentSpec<'a> {
    /// The shard's directory.
    pub shard_dir: &'a Path,
    /// Header fields.
    pub header: SegmentHeader,
    /// Direct or buffered I/O.
    pub access: Access,
    /// Mode of the file.
    pub file_mode: u32,
    /// The filesystem.
    pub fs: &'a Fs,
}

/// Creates a segment: writes its header and zeros over its whole size under a
/// temporary name, syncs it, renames it into place and syncs the directory.
/// A crash at any point leaves either no segment or a whole, empty one.
///
/// Zero-filling costs one sequential write of the segment at creation; in
/// return, commits later overwrite allocated, written blocks, which this disk
/// syncs at about 3x the rate of blocks that are unwritten or being extended.
///
/// `between` runs after each synced piece of the fill with the bytes done and
/// the total: the preparer paces the fill there. When it returns false the
/// creation stops, the unfinished file is removed and `Error::Closed` is
/// returned (the engine is closing).
pub fn create_segment(
    spec: &SegmentSpec<'_>,
    zeros: &mut AlignedBuf,
    between: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<Segment> {
    let h = &spec.header;
    let path = segment_path(spec.shard_dir, h.segment_seq);
    let tmp = path.with_extension(CREATING_EXTENSION);
    // A leftover from a crash during an earlier creation: it never held a commit.
    file::remove_leftover(spec.fs, &tmp);
    let file = DiskFile::create_new(spec.fs, &tmp, spec.access, spec.file_mode)?;
    if let Err(e) = fill_and_publish(spec, &file, &tmp, &path, zeros, between) {
        // Never leave a half-filled file behind: on a full filesystem it
        // would hold the space a retry needs.
        drop(file);
        file::remove_leftover(spec.fs, &tmp);
        return Err(e);
    }
    Ok(Segment::named(h, file, path))
}

/// Makes the reclaimed segment file `old` (before the log start, so that
/// replay never reads it) segment `spec.header.segment_seq`: renamed to the
/// new segment's temporary name, its header block rewritten (naming the
/// segment it was, `recycled_from`) and synced, renamed into place, and
/// the directory synced. Nothing else of it is written: what its earlier
/// life left after the header never decodes as a commit of the new segment
/// (every commit header names its segment; `docs/format.md`), and its
/// blocks stay allocated and written, so commits into it sync as into a
/// zero-filled one. A crash at any point leaves the old file under its old
/// name (before the log start: removed or recycled at the next open), or a
/// `.creating` file (removed at open), or the whole new segment.
///
/// `zeros` is a zeroed buffer of at least one block, returned zeroed.
pub fn recycle_segment(
    spec: &SegmentSpec<'_>,
    old: &Path,
    zeros: &mut AlignedBuf,
    wal_bytes: &AtomicU64,
) -> Result<Segment> {
    let h = &spec.header;
    assert!(
        h.recycled_from.is_some_and(|from| from < h.segment_seq),
        "a recycled segment names the earlier segment it was"
    );
    let path = segment_path(spec.shard_dir, h.segment_seq);
    let tmp = path.with_extension(CREATING_EXTENSION);
    file::remove_leftover(spec.fs, &tmp);
    file::rename_no_replace(spec.fs, old, &tmp)?;
    // From here on a failure removes what the file became: it is no longer
    // a segment of the log under any name.
    let give_up = |at: &Path, e: Error| {
        if let Ok(true) = file::remove(spec.fs, at, "remove reclaimed segment") {
            wal_bytes.fetch_sub(h.segment_bytes, Ordering::Relaxed);
        }
        Err(e)
    };
    let file = match DiskFile::open_rw(spec.fs, &tmp, spec.access) {
        Ok(f) => f,
        Err(e) => return give_up(&tmp, e),
    };
    let size = match file.len() {
        Ok(n) => n,
        Err(e) => {
            drop(file);
            return give_up(&tmp, e);
        }
    };
    if size != h.segment_bytes {
        drop(file);
        let what = format!(
            "a reclaimed segment of {size} bytes cannot become one of {}",
            h.segment_bytes
        );
        let e = Error::Format {
            path: old.into(),
            what,
        };
        // Counted as a segment's size when it was handed over.
        return give_up(&tmp, e);
    }
    let block = h.block_bytes as usize;
    encode_segment_header(h, &mut zeros[..]);
    let written = file.write_all_at(&zeros[..block], 0, "write segment header");
    zeros[..block].fill(0);
    if let Err(e) = written.and_then(|()| file.sync_data("sync recycled segment header")) {
        drop(file);
        return give_up(&tmp, e);
    }
    if let Err(e) = file::rename_no_replace(spec.fs, &tmp, &path) {
        drop(file);
        return give_up(&tmp, e);
    }
    if let Err(e) = file::sync_dir(spec.fs, spec.shard_dir) {
        drop(file);
        return give_up(&path, e);
    }
    Ok(Segment::named(h, file, path))
}

/// Writes the header and zeros of the new segment file `tmp`, then gives it
/// its name `path` and syncs the directory.
fn fill_and_publish(
    spec: &SegmentSpec<'_>,
    file: &DiskFile,
    tmp: &Path,
    path: &Path,
    zeros: &mut AlignedBuf,
    between: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<()> {
    let h = &spec.header;
    encode_segment_header(h, &mut zeros[..]);
    let block = h.block_bytes as usize;
    let first = file.write_all_at(&zeros[..block], 0, "write segment header");
    zeros[..block].fill(0);
    first?;
    // One synced piece per buffer: on a device with a volatile cache every
    // flush, a concurrent commit's included, writes out whatever is cached,
    // so syncing each piece keeps what a commit's flush may have to carry to
    // one piece instead of a whole segment.
    let mut at = block as u64;
    while at < h.segment_bytes {
        let end = (at + zeros.len() as u64).min(h.segment_bytes);
        file.zero_fill(zeros, at, end)?;
        at = end;
        if !between(at, h.segment_bytes) {
            return Err(Error::Closed);
        }
    }
    file::rename_no_replace(spec.fs, tmp, path)?;
    if let Err(e) = file::sync_dir(spec.fs, spec.shard_dir) {
        // Named but not durably: take the name back (no commit was ever
        // written into it), so that a retry can create the segment again.
        file::remove_leftover(spec.fs, path);
        return Err(e);
    }
    Ok(())
}

/// Lists the shard's segments in sequence order; with `tidy`, first removes
/// leftovers of interrupted creations through that filesystem (never with a
/// reader that must not write).
pub fn list_segments(shard_dir: &Path, tidy: Option<&Fs>) -> Result<Vec<(SegmentSeq, PathBuf)>> {
    let mut out = Vec::new();
    let Some(listed) = file::list_dir(shard_dir, "list shard directory")? else {
        // corewal.meta names the shard; its directory must be there.
        return Err(Error::Format {
            path: shard_dir.into(),
            what: "shard directory is missing (corewal.meta records this shard)".into(),
        });
    };
    let mut removed = false;
    for file::Listed { path, kind } in listed {
        let ext = path.extension().and_then(|e| e.to_str());
        if let (Some(CREATING_EXTENSION), Some(fs)) = (ext, tidy) {
            file::remove(fs, &path, "remove unfinished segment")?;
            removed = true;
            continue;
        }
        if ext != Some(SEGMENT_EXTENSION) {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let Some(seq) = parse_segment_stem(stem) else {
            return Err(Error::Format {
                path,
                what: "segment file name is not 16 lower-case hex digits and .wal".into(),
            });
        };
        if !kind.is_file() {
            return Err(Error::Format {
                what: format!(
                    "named like a segment but is {}; corewal only reads files it wrote",
                    file::file_kind(&kind)
                ),
                path,
            });
        }
        out.push((SegmentSeq(seq), path));
    }
    if let (true, Some(fs)) = (removed, tidy) {
        file::sync_dir(fs, shard_dir)?;
    }
    out.sort();
    Ok(out)
}

/// The sequence number a segment file name's stem spells: exactly 16
/// lower-case hex digits, as [`segment_path`] writes them — no sign, no
/// upper case, no other length.
pub fn parse_segment_stem(stem: &str) -> Option<u64> {
    let digits = stem
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if stem.len() != 16 || !digits {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// Header fields of a fresh segment.
pub fn new_header(
    shard: ShardId,
    block_bytes: usize,
    store_id: u64,
    segment_seq: SegmentSeq,
    segment_bytes: u64,
) -> SegmentHeader {
    SegmentHeader {
        shard,
        block_bytes: block_bytes as u32,
        store_id,
        segment_seq,
        segment_bytes,
        recycled_from: None,
    }
}
