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
use crate::recovery::{recover_shard, Damage, RecoverContext, Recovered};
use crate::store::{self, Meta};
use crate::types::{SegmentSeq, ShardId};
use crate::wal::segment::list_segments;

/// What one shard holds.
#[derive(Debug, Clone)]
pub struct ShardReport {
    /// The shard.
    pub shard: u16,
    /// Its segment files, in sequence order.
    pub segments: Vec<SegmentReport>,
    /// The oldest segment of its log (the manifest's log start, or the
    /// oldest segment present), once replay got that far.
    pub log_start: Option<u64>,
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

/// One segment file of a shard.
#[derive(Debug, Clone)]
pub struct SegmentReport {
    /// Its sequence number.
    pub seq: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// What it is to the log.
    pub state: SegmentState,
    /// The segment whose file was recycled into it, if any.
    pub recycled_from: Option<u64>,
    /// Live records it holds, and their payload bytes.
    pub live_records: u64,
    /// Payload bytes of those records.
    pub live_bytes: u64,
    /// Channels and dropped names it is the last to state whole.
    pub anchors: u64,
}

/// What a segment file is to its shard's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentState {
    /// It holds live records (or is the segment being written).
    Live,
    /// It holds no live record and comes before the first that does: the
    /// next reclamation frees it (after carrying forward what it anchors).
    Reclaimable,
    /// It holds no live record, but a segment before it does: it waits,
    /// since the log is reclaimed from its start.
    Kept,
    /// Before the log start: reclaimed, left by a crash before its removal
    /// or recycling; never read, and recycled or removed at the next open.
    Reclaimed,
    /// Its shard could not be replayed that far.
    Unknown,
}

impl SegmentState {
    /// Its name, as the tools print it.
    pub fn word(self) -> &'static str {
        match self {
            SegmentState::Live => "live",
            SegmentState::Reclaimable => "reclaimable",
            SegmentState::Kept => "kept",
            SegmentState::Reclaimed => "reclaimed",
            SegmentState::Unknown => "unknown",
        }
    }
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
    /// The oldest segment holding one of its live records.
    pub oldest_segment: Option<u64>,
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
            .map(|(seq, path)| SegmentReport {
                seq: seq.0,
                bytes: file::size_of(&path).unwrap_or(0),
                path,
                state: SegmentState::Unknown,
                recycled_from: None,
                live_records: 0,
                live_bytes: 0,
                anchors: 0,
            })
            .collect();
        let metrics = ShardMetrics::default();
        let mut io = Ring::portable(wake.fd());
        let ctx = RecoverContext {
            cache_budget: 0,
            fs: &Fs::Real,
            shard_dir: &shard_dir,
            shard: ShardId(shard),
            store_id: meta.store_id,
            access: Access::Buffered,
            metrics: &metrics,
            mode: RecoveryMode::SkipDamaged,
            read_only: true,
            snapshot: false,
            stop: None,
        };
        let mut report = ShardReport {
            shard,
            segments,
            log_start: None,
            commits: 0,
            channels: Vec::new(),
            damage: Vec::new(),
            error: None,
        };
        match recover_shard(&ctx, &mut io) {
            Ok(r) => {
                report.commits = metrics.snapshot().recovery_commits;
                segment_states(&mut report, &r);
                report.damage = r.damage;
                report.channels = r
                    .table
                    .channels()
                    .into_iter()
                    .map(|c| ChannelReport {
                        id: c.id().0,
                        name: c.name().to_string(),
                        dropped: c.dropped(),
                        first_offset: c.first_offset().0,
                        next_offset: c.next_offset().0,
                        records: c.held_records(),
                        bytes: c.held_bytes(),
                        lost: c.lost_offsets(),
                        oldest_segment: c.oldest_record_segment().map(|s| s.0),
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

/// Each segment's state, from what replay found.
fn segment_states(report: &mut ShardReport, r: &Recovered) {
    let pins = r.table.pins();
    let first_held = pins.oldest_with_records();
    let newest = r.log.last().map(|s| s.seq);
    report.log_start = r.log.first().map(|s| s.seq.0);
    for seg in &mut report.segments {
        let seq = SegmentSeq(seg.seq);
        let pin = pins.get(seq);
        (seg.live_records, seg.live_bytes, seg.anchors) = (pin.records, pin.bytes, pin.anchors);
        seg.recycled_from = r
            .log
            .iter()
            .find(|s| s.seq == seq)
            .and_then(|s| s.recycled_from.map(|f| f.0));
        seg.state = if r.leftovers.iter().any(|(s, _)| *s == seq) {
            SegmentState::Reclaimed
        } else if !r.log.iter().any(|s| s.seq == seq) {
            SegmentState::Unknown
        } else if pin.records > 0 || Some(seq) == newest {
            SegmentState::Live
        } else if first_held.is_none_or(|f| seq < f) {
            SegmentState::Reclaimable
        } else {
            SegmentState::Kept
        };
    }
}
