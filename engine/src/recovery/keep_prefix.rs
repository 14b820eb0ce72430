//! `RecoveryMode::KeepPrefix`'s move of the damaged rest of a shard's WAL
//! out of the way, through the I/O layer.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, DiskFile};
use crate::types::SegmentSeq;
use crate::wal::reader::READ_CHUNK_BYTES;

use super::{Place, RecoverContext};

/// `RecoveryMode::KeepPrefix`: moves every byte after `at` out of the WAL
/// into a fresh `damaged/<time>/` directory (the segment of `at` copied whole,
/// later segments moved, highest first so that a crash midway never leaves a
/// gap), then zeroes the segment of `at` from `at` on. Running it again after
/// a crash midway finds the same damage and finishes the job.
pub(super) fn keep_prefix(
    ctx: &RecoverContext<'_>,
    segments: &[(SegmentSeq, PathBuf)],
    at: &Place,
) -> Result<PathBuf> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let damaged = ctx.shard_dir.join("damaged");
    let moved_to = damaged.join(format!(
        "{}-{:08x}",
        since_epoch.as_secs(),
        file::random_u64()? as u32
    ));
    file::create_dir(ctx.fs, &moved_to, 0o700)?;
    file::sync_dir(ctx.fs, &damaged)?;
    file::sync_dir(ctx.fs, ctx.shard_dir)?;
    let name = |p: &Path| moved_to.join(p.file_name().expect("segment paths have a file name"));
    if at.block != 0 {
        let copy = name(&at.path);
        file::copy_durably(ctx.fs, &at.path, &copy, "copy damaged segment")?;
        file::sync_dir(ctx.fs, &moved_to)?;
    }
    // Segments from `at` on when `at` is a whole segment (block 0), after it
    // otherwise.
    let first_moved = if at.block == 0 {
        at.seq.0
    } else {
        at.seq.0 + 1
    };
    for (_, path) in segments.iter().rev().filter(|(s, _)| s.0 >= first_moved) {
        let to = name(path);
        file::rename(ctx.fs, path, &to, "move segment after damage")?;
        file::sync_dir(ctx.fs, &moved_to)?;
        file::sync_dir(ctx.fs, ctx.shard_dir)?;
    }
    if at.block != 0 {
        let f = DiskFile::open_rw(ctx.fs, &at.path, ctx.access)?;
        let size = f.len()?;
        let zeros = AlignedBuf::new(READ_CHUNK_BYTES, at.block);
        f.zero_fill(&zeros, at.position, size)?;
    }
    Ok(moved_to)
}
