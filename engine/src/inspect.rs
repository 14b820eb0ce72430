//! Read-only examination of a data directory, for `corewal inspect` and
//! `corewal verify`: every shard is replayed the way recovery replays it, in
//! `RecoveryMode::SkipDamaged` so that all damage is found, with nothing
//! changed on disk (not even a torn tail) and under a shared lock, so that
//! no engine writes meanwhile.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::RecoveryMode;
use crate::error::{Error, Result};
use crate::io::file::{self, Access, DirLock};
use crate::io::fs::Fs;
use crate::io::ring::Ring;
use crate::io::wake::WakeFd;
use crate::metrics::ShardMetrics;
use crate::recovery::{recover_shard, Damage, RecoverContext};
use crate::store::{self, Meta};
use crate::types::ShardId;
use crate::wal::segment::list_segments;

/// What one shard holds.
#[derive(Debug, Clone)]
pub struct ShardReport {
    /// The shard.
    pub shard: u16,
    /// Its segment files: sequence number, path, bytes.
    pub segments: Vec<(u64, PathBuf, u64)>,
    /// Commits replayed.
    pub commits: u64,
    /// Channels, dropped ones included, in id order.
    pub channels: Vec<ChannelReport>,
    /// Damage found (nothing was changed).
    pub damage: Vec<Damage>,
    /// Where it could not be examined past a refusal: an entry that
    /// contradicts the log before it, or an I/O error.
    pub error: Option<Error>,
}

/// One channel.
#[derive(Debug, Clone)]
pub struct ChannelReport {
    /// Shard-local id.
    pub id: u32,
    /// Its name; empty for a channel whose registration was lost.
    pub name: String,
    /// Whether it was dropped.
    pub dropped: bool,
    /// Its first offset not checkpointed (its first live record, or
    /// `next_offset` when none is live).
    pub first_offset: u64,
    /// One past its last record.
    pub next_offset: u64,
    /// Records held (lost ones not counted).
    pub records: u64,
    /// Payload bytes held.
    pub bytes: u64,
    /// Offsets lost to damage.
    pub lost: u64,
}

/// The whole directory.
#[derive(Debug, Clone)]
pub struct DirReport {
    /// The directory.
    pub dir: PathBuf,
    /// Its `corewal.meta`.
    pub meta: Meta,
    /// Every shard, in order.
    pub shards: Vec<ShardReport>,
}

impl DirReport {
    /// Whether nothing is damaged (a torn tail counts as damage unless
    /// `torn_tail_ok`) and every shard could be examined.
    pub fn is_sound(&self, torn_tail_ok: bool) -> bool {
        self.shards.iter().all(|s| {
            s.error.is_none()
                && s.damage.iter().all(|d| {
                    torn_tail_ok && d.action == crate::recovery::DamageAction::TornTailFound
                })
        })
    }
}

/// Examines `dir` without changing it. Waits up to `lock_wait` for an
/// engine using the directory to close.
pub fn examine(dir: &Path, lock_wait: Duration) -> Result<DirReport> {
    let meta = store::read_meta(dir)?.ok_or_else(|| Error::Format {
        path: dir.into(),
        what: "not a corewal data directory (no corewal.meta)".into(),
    })?;
    let _lock = DirLock::acquire_shared(dir, lock_wait)?;
    let wake = WakeFd::new()?;
    let mut shards = Vec::with_capacity(meta.shards as usize);
    for shard in 0..meta.shards as u16 {
        let shard_dir = store::shard_dir(dir, shard);
        let segments = list_segments(&shard_dir, None)?
            .into_iter()
            .map(|(seq, path)| {
                let bytes = file::size_of(&path).unwrap_or(0);
                (seq.0, path, bytes)
            })
            .collect();
        let metrics = ShardMetrics::default();
        let mut io = Ring::portable(wake.fd());
        let ctx = RecoverContext {
            fs: &Fs::Real,
            shard_dir: &shard_dir,
            shard: ShardId(shard),
            store_id: meta.store_id,
            access: Access::Buffered,
            metrics: &metrics,
            mode: RecoveryMode::SkipDamaged,
            read_only: true,
            stop: None,
        };
        let mut report = ShardReport {
            shard,
            segments,
            commits: 0,
            channels: Vec::new(),
            damage: Vec::new(),
            error: None,
        };
        match recover_shard(&ctx, &mut io) {
            Ok(r) => {
                report.commits = metrics.snapshot().recovery_commits;
                report.damage = r.damage;
                report.channels = r
                    .table
                    .channels()
                    .map(|c| ChannelReport {
                        id: c.id().0,
                        name: c.name().to_string(),
                        dropped: c.dropped(),
                        first_offset: c.first_offset().0,
                        next_offset: c.next_offset().0,
                        records: c.held_records(),
                        bytes: c.held_bytes(),
                        lost: c.lost_offsets(),
                    })
                    .collect();
            }
            Err(e) => {
                report.commits = metrics.snapshot().recovery_commits;
                report.error = Some(e);
            }
        }
        shards.push(report);
    }
    Ok(DirReport {
        dir: dir.into(),
        meta,
        shards,
    })
}
