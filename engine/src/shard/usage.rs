//! What a shard's WAL holds on disk, and who holds it: the answer to
//! `Engine::wal_usage`.

use crate::types::{Offset, SegmentSeq, ShardId};

use super::run::Shard;

/// Channels reported per shard by [`WalUsage::holders`], at most.
pub const WAL_HOLDERS_REPORTED: usize = 16;

/// One shard's WAL on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalUsage {
    /// The shard.
    pub shard: ShardId,
    /// Bytes of its segment files: the log, the spare made ahead of use and
    /// reclaimed files kept for recycling.
    pub wal_bytes: u64,
    /// Its limit (`Config::wal_bytes_max`).
    pub wal_bytes_max: u64,
    /// The oldest segment of its log.
    pub log_start: SegmentSeq,
    /// The segment being written.
    pub active_segment: SegmentSeq,
    /// Bytes of the log's segments, from the log start to the segment
    /// being written.
    pub log_bytes: u64,
    /// Bytes of log segments before the oldest one holding a live record:
    /// reclaimed as soon as the state they anchor is carried forward.
    pub reclaimable_bytes: u64,
    /// The channels whose live records hold the oldest segments, oldest
    /// first, at most [`WAL_HOLDERS_REPORTED`].
    pub holders: Vec<WalHolder>,
}

/// A channel holding segments of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalHolder {
    /// The channel's name.
    pub channel: String,
    /// The oldest segment holding one of its live records.
    pub oldest_segment: SegmentSeq,
    /// Its first live offset: a checkpoint through the offset before its
    /// next one lets every record of it go.
    pub first_offset: Offset,
    /// Its live records.
    pub live_records: u64,
    /// Their payload bytes.
    pub live_bytes: u64,
    /// Bytes of log segments that could be reclaimed if this channel and
    /// every channel listed before it held nothing older than the segment
    /// being written: what checkpointing them frees.
    pub wal_bytes_released: u64,
}

impl Shard {
    /// The shard's answer to `Engine::wal_usage`.
    pub(super) fn wal_usage(&self) -> WalUsage {
        let active = self.segment.seq;
        let bytes_before = |seq: SegmentSeq| -> u64 {
            self.log
                .iter()
                .take_while(|s| s.seq < seq)
                .map(|s| s.bytes)
                .sum()
        };
        let holds = self.table.holds_before(active, WAL_HOLDERS_REPORTED + 1);
        let holders = holds
            .iter()
            .enumerate()
            .take(WAL_HOLDERS_REPORTED)
            .map(|(i, h)| {
                let next = holds.get(i + 1).map_or(active, |n| n.oldest_segment);
                WalHolder {
                    channel: h.name.to_string(),
                    oldest_segment: h.oldest_segment,
                    first_offset: h.first_offset,
                    live_records: h.records,
                    live_bytes: h.bytes,
                    wal_bytes_released: bytes_before(next),
                }
            })
            .collect();
        let first_held = self
            .table
            .pins()
            .oldest_with_records()
            .map_or(active, |s| s.min(active));
        WalUsage {
            shard: self.id,
            wal_bytes: self
                .metrics
                .wal_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            wal_bytes_max: self.config.wal_bytes_max(),
            log_start: self.log_start(),
            active_segment: active,
            log_bytes: self.log.iter().map(|s| s.bytes).sum(),
            reclaimable_bytes: bytes_before(first_held),
            holders,
        }
    }
}
