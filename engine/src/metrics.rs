//! Per-shard counters, written by the shard thread only (relaxed atomics),
//! read by anyone.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets of the records-per-commit histogram: bucket `i` counts commits
/// of `2^i ..= 2^(i+1) - 1` records (the last bucket: that many or more).
pub const COMMIT_RECORDS_BUCKETS: usize = 16;

/// The bucket of a commit of `records` records (0 for a commit of entries
/// that are not records, such as a registration).
pub fn commit_records_bucket(records: u64) -> usize {
    (records.max(1).ilog2() as usize).min(COMMIT_RECORDS_BUCKETS - 1)
}

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    /// Commits completed.
    pub commits: AtomicU64,
    /// Commits completed by records per commit (see `commit_records_bucket`).
    pub commit_records_log2: [AtomicU64; COMMIT_RECORDS_BUCKETS],
    /// Records acknowledged.
    pub records: AtomicU64,
    /// Payload bytes acknowledged.
    pub payload_bytes: AtomicU64,
    /// Bytes written to segments by commits (headers and padding included).
    pub commit_bytes: AtomicU64,
    /// Data syncs issued (commits in `Durability::Sync`, periodic syncs otherwise).
    pub syncs: AtomicU64,
    /// Segments created.
    pub segments_created: AtomicU64,
    /// Bytes of the shard's segment files on disk: its log, the spare and
    /// reclaimed files kept for recycling.
    pub wal_bytes: AtomicU64,
    /// Segments reclaimed (every record in them checkpointed, truncated or
    /// dropped, their anchors carried forward).
    pub segments_reclaimed: AtomicU64,
    /// Segments made from reclaimed files (no zero-fill).
    pub segments_recycled: AtomicU64,
    /// State and retired entries written to carry channels forward before
    /// the segments that stated them were reclaimed.
    pub entries_carried: AtomicU64,
    /// Live records written again so that the old segments holding them
    /// could be reclaimed (past `Config::wal_bytes_max`).
    pub records_relocated: AtomicU64,
    /// Reads of record payloads from the WAL (each a block-aligned span of
    /// one segment, up to 1 MiB).
    pub wal_reads: AtomicU64,
    /// Relocations given up because the payloads could not be read back
    /// (the records stay where they are; the next plan tries again).
    pub relocation_reads_failed: AtomicU64,
    /// Payload bytes the shard keeps in memory, as charged against its
    /// share of `Config::buffer_bytes_max`.
    pub cached_bytes: AtomicU64,
    /// Index snapshots written at a clean close, and those that failed.
    pub snapshots_written: AtomicU64,
    pub snapshot_writes_failed: AtomicU64,
    /// Opens that used the snapshot instead of replaying, and snapshots
    /// found but not trusted (stale, damaged, foreign: the log was replayed).
    pub snapshots_used: AtomicU64,
    pub snapshots_ignored: AtomicU64,
    /// Sum over commits of the time from submission to the shard seeing the
    /// completion, in nanoseconds.
    pub commit_device_ns: AtomicU64,
    /// Bytes of segments found at open.
    pub recovery_bytes_total: AtomicU64,
    /// Bytes of segments read so far by recovery.
    pub recovery_bytes_read: AtomicU64,
    /// Segment bytes recovery did not read: every segment reclaimed before
    /// the open (the shard manifest counts them), files before the log
    /// start that a crash left included.
    pub recovery_bytes_skipped: AtomicU64,
    /// Commits replayed.
    pub recovery_commits: AtomicU64,
    /// Channels found by recovery.
    pub recovery_channels: AtomicU64,
    /// Nanoseconds recovery took (0 while it runs).
    pub recovery_ns: AtomicU64,
    /// Damaged places recovery found (torn tails included); see
    /// `Engine::recovery_damage` for what and where.
    pub recovery_damage: AtomicU64,
    /// Idle sleeps that ran to their 1 s safety bound while requests were
    /// queued: a wake-up the shard did not receive. Should stay 0.
    pub wakeups_missed: AtomicU64,
    /// Requests refused because the next segment could not be created for
    /// lack of space (`Error::NoSpace`).
    pub no_space: AtomicU64,
}

/// A copy of a shard's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardMetricsSnapshot {
    /// Commits completed.
    pub commits: u64,
    /// Commits by records per commit: bucket `i` counts commits of
    /// `2^i ..= 2^(i+1) - 1` records.
    pub commit_records_log2: [u64; COMMIT_RECORDS_BUCKETS],
    /// Records acknowledged.
    pub records: u64,
    /// Payload bytes acknowledged.
    pub payload_bytes: u64,
    /// Bytes written by commits.
    pub commit_bytes: u64,
    /// Data syncs issued.
    pub syncs: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Bytes of segment files on disk (summed over shards: all of them).
    pub wal_bytes: u64,
    /// Segments reclaimed.
    pub segments_reclaimed: u64,
    /// Segments made from reclaimed files.
    pub segments_recycled: u64,
    /// State and retired entries written to carry channels forward.
    pub entries_carried: u64,
    /// Live records written again so that old segments could be reclaimed.
    pub records_relocated: u64,
    /// Reads of record payloads from the WAL.
    pub wal_reads: u64,
    /// Relocations given up because payloads could not be read back.
    pub relocation_reads_failed: u64,
    /// Payload bytes kept in memory (summed over shards).
    pub cached_bytes: u64,
    /// Index snapshots written at a clean close, and those that failed.
    pub snapshots_written: u64,
    pub snapshot_writes_failed: u64,
    /// Opens that used a snapshot, and snapshots not trusted.
    pub snapshots_used: u64,
    pub snapshots_ignored: u64,
    /// Sum over commits of submission-to-completion time, in nanoseconds.
    pub commit_device_ns: u64,
    /// Bytes of segments found at open.
    pub recovery_bytes_total: u64,
    /// Bytes read by recovery.
    pub recovery_bytes_read: u64,
    /// Segment bytes recovery did not read (reclaimed before the open).
    pub recovery_bytes_skipped: u64,
    /// Commits replayed.
    pub recovery_commits: u64,
    /// Channels found by recovery.
    pub recovery_channels: u64,
    /// Nanoseconds recovery took (0 while it runs).
    pub recovery_ns: u64,
    /// Damaged places recovery found, torn tails included.
    pub recovery_damage: u64,
    /// Idle sleeps that ran to their 1 s safety bound with requests queued
    /// (a missed wake-up; should be 0).
    pub wakeups_missed: u64,
    /// Requests refused for lack of space for the next segment.
    pub no_space: u64,
}

impl ShardMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> ShardMetricsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ShardMetricsSnapshot {
            commits: r(&self.commits),
            commit_records_log2: std::array::from_fn(|i| r(&self.commit_records_log2[i])),
            records: r(&self.records),
            payload_bytes: r(&self.payload_bytes),
            commit_bytes: r(&self.commit_bytes),
            syncs: r(&self.syncs),
            segments_created: r(&self.segments_created),
            wal_bytes: r(&self.wal_bytes),
            segments_reclaimed: r(&self.segments_reclaimed),
            segments_recycled: r(&self.segments_recycled),
            entries_carried: r(&self.entries_carried),
            records_relocated: r(&self.records_relocated),
            wal_reads: r(&self.wal_reads),
            relocation_reads_failed: r(&self.relocation_reads_failed),
            cached_bytes: r(&self.cached_bytes),
            snapshots_written: r(&self.snapshots_written),
            snapshot_writes_failed: r(&self.snapshot_writes_failed),
            snapshots_used: r(&self.snapshots_used),
            snapshots_ignored: r(&self.snapshots_ignored),
            commit_device_ns: r(&self.commit_device_ns),
            recovery_bytes_total: r(&self.recovery_bytes_total),
            recovery_bytes_read: r(&self.recovery_bytes_read),
            recovery_bytes_skipped: r(&self.recovery_bytes_skipped),
            recovery_commits: r(&self.recovery_commits),
            recovery_channels: r(&self.recovery_channels),
            recovery_ns: r(&self.recovery_ns),
            recovery_damage: r(&self.recovery_damage),
            wakeups_missed: r(&self.wakeups_missed),
            no_space: r(&self.no_space),
        }
    }
}

impl ShardMetricsSnapshot {
    /// The upper bound of the bucket that holds quantile `q` (0..=1) of
    /// records per commit, among the commits counted since `earlier`; 0
    /// when there were none.
    pub fn commit_records_quantile_le(&self, earlier: &Self, q: f64) -> u64 {
        let counts: Vec<u64> = (0..COMMIT_RECORDS_BUCKETS)
            .map(|i| self.commit_records_log2[i] - earlier.commit_records_log2[i])
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let want = ((total as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= want {
                return (1u64 << (i + 1)) - 1;
            }
        }
        u64::MAX
    }
}

impl std::ops::Add for ShardMetricsSnapshot {
    type Output = Self;
    fn add(self, o: Self) -> Self {
        ShardMetricsSnapshot {
            commits: self.commits + o.commits,
            commit_records_log2: std::array::from_fn(|i| {
                self.commit_records_log2[i] + o.commit_records_log2[i]
            }),
            records: self.records + o.records,
            payload_bytes: self.payload_bytes + o.payload_bytes,
            commit_bytes: self.commit_bytes + o.commit_bytes,
            syncs: self.syncs + o.syncs,
            segments_created: self.segments_created + o.segments_created,
            wal_bytes: self.wal_bytes + o.wal_bytes,
            segments_reclaimed: self.segments_reclaimed + o.segments_reclaimed,
            segments_recycled: self.segments_recycled + o.segments_recycled,
            entries_carried: self.entries_carried + o.entries_carried,
            records_relocated: self.records_relocated + o.records_relocated,
            wal_reads: self.wal_reads + o.wal_reads,
            relocation_reads_failed: self.relocation_reads_failed + o.relocation_reads_failed,
            cached_bytes: self.cached_bytes + o.cached_bytes,
            snapshots_written: self.snapshots_written + o.snapshots_written,
            snapshot_writes_failed: self.snapshot_writes_failed + o.snapshot_writes_failed,
            snapshots_used: self.snapshots_used + o.snapshots_used,
            snapshots_ignored: self.snapshots_ignored + o.snapshots_ignored,
            commit_device_ns: self.commit_device_ns + o.commit_device_ns,
            recovery_bytes_total: self.recovery_bytes_total + o.recovery_bytes_total,
            recovery_bytes_read: self.recovery_bytes_read + o.recovery_bytes_read,
            recovery_bytes_skipped: self.recovery_bytes_skipped + o.recovery_bytes_skipped,
            recovery_commits: self.recovery_commits + o.recovery_commits,
            recovery_channels: self.recovery_channels + o.recovery_channels,
            recovery_ns: self.recovery_ns.max(o.recovery_ns),
            recovery_damage: self.recovery_damage + o.recovery_damage,
            wakeups_missed: self.wakeups_missed + o.wakeups_missed,
            no_space: self.no_space + o.no_space,
        }
    }
}
