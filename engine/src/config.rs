//! Engine configuration: every knob with its default and its limits.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::damage::RecoveryMode;
use crate::error::{Error, Result};
pub use crate::io::backend::Backend;
use crate::io::buffer::round_up;
use crate::wal::format::{COMMIT_HEADER_BYTES, ENTRY_HEADER_BYTES};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Acknowledged only when the record, and every byte before it in the
    /// shard's WAL, is on stable storage. The default.
    #[default]
    Sync,
    /// Acknowledged once the write reached the device (no cache flush); the
    /// shard issues a data sync at most `interval` after the first unsynced
    /// write. A power cut can lose up to `interval` of acknowledged appends;
    /// a process crash loses nothing that was acknowledged.
    Periodic {
        /// Longest time an acknowledged record may stay unsynced.
        interval: Duration,
    },
}

/// How a commit is made durable in `Durability::Sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncMethod {
    /// One write with `RWF_DSYNC` per commit: one operation, one completion.
    /// The default, chosen by measurement (see `docs/format.md`).
    #[default]
    DsyncWrite,
    /// A write linked (`IOSQE_IO_LINK`) to an `fdatasync`.
    WriteThenFdatasync,
}

/// Engine configuration. Start from [`Config::new`] and change fields.
///
/// ```
/// use corewal_engine::config::{Config, Durability};
/// let mut config = Config::new("/var/lib/my-service/wal");
/// config.shards = Some(2);
/// config.durability = Durability::Sync;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The data directory. Created (mode `dir_mode`, its parent synced) when
    /// missing; an existing one that lets group or others write into it
    /// where `dir_mode` does not is refused (`InvalidConfig { field:
    /// "dir_mode" }`): they could remove or replace its segments.
    pub dir: PathBuf,
    /// Cores the shards are pinned to, round-robin. Default `None`: every core
    /// in the process's affinity mask. Each must be in that mask.
    pub cores: Option<Vec<usize>>,
    /// Number of shards. Default `None`: one per selected core for a new
    /// directory, the recorded count for an existing one. A directory keeps the
    /// shard count it was created with (channels are routed by it); asking for
    /// another count is refused with `Error::ShardCountMismatch`. 1..=1024.
    pub shards: Option<usize>,
    /// I/O backend. Default `Backend::IoUring`.
    pub backend: Backend,
    /// Default `Durability::Sync`.
    pub durability: Durability,
    /// Default `SyncMethod::DsyncWrite`.
    pub sync_method: SyncMethod,
    /// Default `RecoveryMode::TolerateTornTail`.
    pub recovery_mode: RecoveryMode,
    /// Size of each segment file, zero-filled when created. Default 64 MiB;
    /// 1 MiB..=1 GiB, a multiple of the block size, and at least twice
    /// `commit_bytes_max` plus one block.
    pub segment_bytes: u64,
    /// Space limit of each shard's segment files (the segments of its log,
    /// the spare made ahead of use and reclaimed ones kept for recycling).
    /// Default `None`: [`WAL_SEGMENTS_DEFAULT`] × `segment_bytes` (4 GiB per
    /// shard with 64 MiB segments). At least [`WAL_SEGMENTS_MIN`] segments.
    ///
    /// Segments whose records are all checkpointed, truncated or dropped
    /// are reclaimed and recycled as the shard writes on, so a service that
    /// checkpoints keeps its WAL near what is live. Past the limit, the
    /// shard moves the live records that pin its oldest segment forward (a
    /// quarter segment at a time, when that writes at most half of what it
    /// frees) and, if what is live still fills the limit, refuses appends and
    /// registrations that need a new segment with `Error::NoSpace` (cause
    /// `Error::WalFull`, retryable) until checkpoints free some: checkpoints,
    /// truncations and drops always have room (the last
    /// [`reserve_bytes`](Config::reserve_bytes) of each segment are kept
    /// for them). `Engine::wal_usage` names the channels that pin the
    /// oldest segments.
    pub wal_bytes_max: Option<u64>,
    /// Largest commit (one write, one data sync). Default 1 MiB; at least one
    /// block plus the largest record with its headers, at most 64 MiB.
    pub commit_bytes_max: usize,
    /// Most records in one commit. Default 4096; 1..=1,048,576.
    pub records_per_commit_max: usize,
    /// Most commits a shard has on their way to the device at once. Each is
    /// its own durable write; they are acknowledged in order. More overlap
    /// hides device latency; a crash may then tear up to this many commits
    /// at the tail (none of them acknowledged). Default 1: on the virtio disk
    /// measured here, more in flight split the batches and raised latency
    /// (docs/BENCHMARKS.md); devices with deep parallel queues may gain.
    /// 1..=12 (the shard's ring also keeps up to 4 reads of the WAL in
    /// flight).
    pub commits_in_flight_max: usize,
    /// Memory for record payloads, for the whole engine: each shard keeps
    /// the payloads of its newest acknowledged records within its share
    /// (this divided by the shard count), each charged its allocation
    /// (length plus 16, in 16-byte granules) plus 48 bytes of handles, and
    /// reads older ones back from the WAL (`O_DIRECT`,
    /// through its ring) when asked. Default [`BUFFER_BYTES_MAX_DEFAULT`]
    /// (256 MiB). 0 keeps no payload in memory: every read goes to the
    /// WAL. Beside it every live record costs 16 bytes of index and every
    /// channel its state (docs/BENCHMARKS.md measures both).
    pub buffer_bytes_max: u64,
    /// Whether each shard leaves an index snapshot at a clean close (its
    /// channel table and every live record's place, tied to the last commit
    /// and the manifest generation) and the next open uses it instead of
    /// replaying the log. Default `true`. An open uses a snapshot only in
    /// the default recovery mode, and only when nothing changed the log
    /// since (see docs/RELIABILITY.md); the other modes, and `false`,
    /// replay the whole log and check every commit at the open. With a
    /// snapshot, the commits before the last are checked when they are
    /// read instead.
    pub index_snapshots: bool,
    /// With `index_snapshots`: each shard also writes a snapshot while it
    /// runs once it has written this many bytes of WAL since the last (and
    /// at least four times the last snapshot's size, so that snapshots add
    /// at most a quarter to the bytes written), so that a crash reopen
    /// replays only the log written since. Taking one pauses the shard's
    /// admission for about one commit and the time to encode its index
    /// (about 16 bytes per live record); the file is written by a thread
    /// of its own. Default [`SNAPSHOT_EVERY_BYTES_DEFAULT`] (256 MiB); 0
    /// writes snapshots only at a clean close.
    pub snapshot_every_bytes: u64,
    /// Largest record payload. Default 512 KiB; must fit in one commit with
    /// its headers.
    pub record_bytes_max: usize,
    /// Requests each shard's inbox holds before callers wait (backpressure).
    /// Default 4096; 2..=1,048,576.
    pub inbox_capacity: usize,
    /// Write unit and alignment of commits. Default `None`: the larger of the
    /// file's direct-I/O offset alignment (`statx` `STATX_DIOALIGN`, 4096 when
    /// the kernel does not say) and 4096, so that a commit never shares a
    /// physical sector with acknowledged bytes. A power of two from the
    /// direct-I/O alignment to 64 KiB.
    pub block_bytes: Option<usize>,
    /// How long `open` retries the directory lock (a killed holder's lock can
    /// outlive it briefly). Default 5 s; at most 10 minutes.
    pub lock_wait: Duration,
    /// Mode of directories the engine creates; its group and other write
    /// bits are also the widest an existing data directory may have.
    /// Default `0o700`.
    pub dir_mode: u32,
    /// Mode of files the engine creates. Default `0o600`.
    pub file_mode: u32,
}

/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Default commit size limit.
pub const COMMIT_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Upper bound of `commit_bytes_max`; also what recovery accepts from disk.
pub use crate::wal::format::COMMIT_BYTES_LIMIT;
/// Upper bound of `segment_bytes`. Recovery reads a segment whole into one
/// buffer per shard, so this also bounds recovery's memory per shard.
pub const SEGMENT_BYTES_LIMIT: u64 = 1 << 30;
/// Upper bound of `commits_in_flight_max`: what a backend holds in flight,
/// less the shard's reads of the WAL.
pub const COMMITS_IN_FLIGHT_LIMIT: usize =
    crate::io::OPS_IN_FLIGHT_MAX - crate::shard::READS_IN_FLIGHT_MAX;
/// Default `buffer_bytes_max`.
pub const BUFFER_BYTES_MAX_DEFAULT: u64 = 256 << 20;
/// Default `snapshot_every_bytes`.
pub const SNAPSHOT_EVERY_BYTES_DEFAULT: u64 = 256 << 20;
/// Upper bound of the shard count.
pub const SHARDS_LIMIT: usize = 1024;
/// Segments per shard the default `wal_bytes_max` allows.
pub const WAL_SEGMENTS_DEFAULT: u64 = 64;
/// The fewest segments `wal_bytes_max` may allow: the one being written,
/// the spare made ahead, one reclaimed and one being recycled.
pub const WAL_SEGMENTS_MIN: u64 = 4;

impl Config {
    /// A configuration with every default, for the data directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Config {
            dir: dir.into(),
            cores: None,
            shards: None,
            backend: Backend::IoUring,
            durability: Durability::Sync,
            sync_method: SyncMethod::DsyncWrite,
            recovery_mode: RecoveryMode::TolerateTornTail,
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            wal_bytes_max: None,
            commit_bytes_max: COMMIT_BYTES_MAX_DEFAULT,
            records_per_commit_max: 4096,
            commits_in_flight_max: 1,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            index_snapshots: true,
            snapshot_every_bytes: SNAPSHOT_EVERY_BYTES_DEFAULT,
            record_bytes_max: 512 << 10,
            inbox_capacity: 4096,
            block_bytes: None,
            lock_wait: Duration::from_secs(5),
            dir_mode: 0o700,
            file_mode: 0o600,
        }
    }

    /// The space limit of each shard's segment files: `wal_bytes_max`, or
    /// its default for `segment_bytes`.
    pub fn wal_bytes_max(&self) -> u64 {
        self.wal_bytes_max
            .unwrap_or(WAL_SEGMENTS_DEFAULT.saturating_mul(self.segment_bytes))
    }

    /// Each shard's share of `buffer_bytes_max`.
    pub fn buffer_bytes_per_shard(&self, shards: usize) -> u64 {
        self.buffer_bytes_max / shards.max(1) as u64
    }

    /// The end of each segment kept for requests that free space
    /// (checkpoints, truncations, drops) and for carrying state forward
    /// before segments are reclaimed, when no next segment can be had:
    /// two of the largest commits, at most a quarter segment.
    pub fn reserve_bytes(&self, block: usize) -> u64 {
        let commit = round_up(self.commit_bytes_max, block) as u64;
        (2 * commit).min(self.segment_bytes / 4)
    }

    /// Checks every field against its limits, with the block size still unknown
    /// (4096 is assumed when `block_bytes` is `None`).
    ///
    /// # Errors
    /// `Error::InvalidConfig` naming the first field out of its limits.
    pub fn validate(&self) -> Result<()> {
        self.validate_with_block(self.block_bytes.unwrap_or(4096))
    }

    pub(crate) fn validate_with_block(&self, block: usize) -> Result<()> {
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "is empty".into());
        }
        if let Some(shards) = self.shards {
            if shards == 0 || shards > SHARDS_LIMIT {
                return bad("shards", format!("is {shards}; allowed 1..={SHARDS_LIMIT}"));
            }
        }
        if let Some(cores) = &self.cores {
            if cores.is_empty() {
                return bad(
                    "cores",
                    "is an empty list; use None for every allowed core".into(),
                );
            }
        }
        self.validate_sizes(block)?;
        if self.lock_wait > Duration::from_secs(600) {
            return bad("lock_wait", "is longer than 10 minutes".into());
        }
        if let Durability::Periodic { interval } = self.durability {
            if interval.is_zero() || interval > Duration::from_secs(60) {
                return bad(
                    "durability",
                    "Periodic interval must be in (0, 60 s]".into(),
                );
            }
        }
        if self.dir_mode & !0o7777 != 0 || self.file_mode & !0o7777 != 0 {
            return bad("dir_mode/file_mode", "hold bits beyond 0o7777".into());
        }
        if self.file_mode & 0o600 != 0o600 {
            return bad(
                "file_mode",
                "must let the owner read and write (0o600)".into(),
            );
        }
        if self.dir_mode & 0o700 != 0o700 {
            return bad(
                "dir_mode",
                "must let the owner read, write and search (0o700)".into(),
            );
        }
        Ok(())
    }

    /// The sizes and counts, against the block size `block` and each other.
    fn validate_sizes(&self, block: usize) -> Result<()> {
        if !block.is_power_of_two() || !(512..=65536).contains(&block) {
            return bad(
                "block_bytes",
                format!("is {block}; a power of two from 512 to 65536"),
            );
        }
        if self.commit_bytes_max > COMMIT_BYTES_LIMIT {
            return bad(
                "commit_bytes_max",
                format!("is {}; at most {COMMIT_BYTES_LIMIT}", self.commit_bytes_max),
            );
        }
        let record_commit = round_up(
            COMMIT_HEADER_BYTES + ENTRY_HEADER_BYTES + round_up(self.record_bytes_max, 8),
            block,
        );
        if record_commit > self.commit_bytes_max {
            return bad(
                "commit_bytes_max",
                format!(
                    "is {}; a record of record_bytes_max = {} needs {record_commit} with its headers and block padding",
                    self.commit_bytes_max, self.record_bytes_max
                ),
            );
        }
        if !(1..=1 << 20).contains(&self.records_per_commit_max) {
            return bad(
                "records_per_commit_max",
                format!("is {}; allowed 1..=1048576", self.records_per_commit_max),
            );
        }
        if !(1..=COMMITS_IN_FLIGHT_LIMIT).contains(&self.commits_in_flight_max) {
            return bad(
                "commits_in_flight_max",
                format!(
                    "is {}; allowed 1..={COMMITS_IN_FLIGHT_LIMIT}",
                    self.commits_in_flight_max
                ),
            );
        }
        if !(2..=1 << 20).contains(&self.inbox_capacity) {
            return bad(
                "inbox_capacity",
                format!("is {}; allowed 2..=1048576", self.inbox_capacity),
            );
        }
        let seg = self.segment_bytes;
        if !(1 << 20..=SEGMENT_BYTES_LIMIT).contains(&seg) || !seg.is_multiple_of(block as u64) {
            return bad(
                "segment_bytes",
                format!("is {seg}; allowed 1 MiB..=1 GiB and a multiple of the block size {block}"),
            );
        }
        if seg < 2 * round_up(self.commit_bytes_max, block) as u64 + block as u64 {
            return bad(
                "segment_bytes",
                format!("is {seg}; must be at least twice commit_bytes_max plus one block"),
            );
        }
        if let Some(max) = self.wal_bytes_max {
            if max / WAL_SEGMENTS_MIN < seg {
                return bad(
                    "wal_bytes_max",
                    format!(
                        "is {max}; must hold at least {WAL_SEGMENTS_MIN} segments of \
                         segment_bytes = {seg}"
                    ),
                );
            }
        }
        Ok(())
    }
}

fn bad(field: &'static str, reason: String) -> Result<()> {
    Err(Error::InvalidConfig { field, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::new("/tmp/x").validate().unwrap();
    }

    #[test]
    fn each_limit_is_named() {
        type Change = fn(&mut Config);
        let cases: [(&str, Change); 9] = [
            ("wal_bytes_max", |c| c.wal_bytes_max = Some(3 << 26)),
            ("shards", |c| c.shards = Some(0)),
            ("block_bytes", |c| c.block_bytes = Some(3000)),
            ("commit_bytes_max", |c| c.commit_bytes_max = 4096),
            ("segment_bytes", |c| c.segment_bytes = 1000),
            ("inbox_capacity", |c| c.inbox_capacity = 0),
            ("records_per_commit_max", |c| c.records_per_commit_max = 0),
            ("file_mode", |c| c.file_mode = 0o400),
            ("commits_in_flight_max", |c| c.commits_in_flight_max = 17),
        ];
        for (field, change) in cases {
            let mut c = Config::new("/tmp/x");
            change(&mut c);
            match c.validate() {
                Err(Error::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
