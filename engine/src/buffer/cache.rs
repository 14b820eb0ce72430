//! The shard's payload cache: which held records keep their payload in
//! memory, within the shard's share of `Config::buffer_bytes_max`.
//!
//! Every live record has an index entry ([`Loc`](super::channel::Loc): where
//! its entry lies in the WAL); the payloads of the newest acknowledged
//! records stay in memory beside it while they fit the budget, and the rest
//! are read back from the WAL on demand. Each channel keeps its cached
//! payloads as a suffix of its held records (see `channel.rs`), so the cache
//! only needs the order records were cached in: a queue of `(channel,
//! offset)`, oldest first. Over the budget, the oldest entry's record lets
//! go of its payload if it is still its channel's oldest cached one; an entry
//! whose record went another way (checkpointed, truncated, dropped, or
//! evicted with its channel's cache) is stale and passed over. Stale entries
//! are compacted away once they outnumber the cached records, so the queue
//! stays proportional to what is cached.

use std::collections::VecDeque;

use crate::types::{ChannelId, Offset, SegmentSeq};

/// Bytes charged for a cached record beside its payload's allocation: its
/// `Bytes` handle (32) and its queue entry (16).
pub const CACHED_RECORD_OVERHEAD: u64 = 48;

/// The charge of a cached payload of `len` bytes: its allocation as the
/// allocator rounds it (a 16-byte header, 16-byte granules) and the
/// overhead.
pub fn charge(len: usize) -> u64 {
    (len as u64 + 16).div_ceil(16) * 16 + CACHED_RECORD_OVERHEAD
}

/// The cache's accounting and eviction order.
#[derive(Debug, Default)]
pub struct PayloadCache {
    /// Bytes the cached records may be charged.
    pub(super) budget: u64,
    /// Bytes they are charged.
    pub(super) bytes: u64,
    /// Records cached.
    pub(super) records: u64,
    /// Records in the order they were cached, oldest first; some stale.
    pub(super) order: VecDeque<(ChannelId, Offset)>,
    /// Compact the queue once it grows past this.
    compact_at: usize,
    /// Payloads of records in segments before this one are not cached
    /// (replay: they would be let go before it ends; see
    /// [`PayloadCache::cache_from`]).
    from: SegmentSeq,
}

impl PayloadCache {
    /// A cache of `budget` bytes.
    pub fn new(budget: u64) -> PayloadCache {
        PayloadCache {
            budget,
            compact_at: 1024,
            ..PayloadCache::default()
        }
    }

    /// Whether the payload of `len` bytes of a record in segment `seq` may
    /// be cached at all.
    pub fn admits(&self, len: usize, seq: SegmentSeq) -> bool {
        charge(len) <= self.budget && seq >= self.from
    }

    /// Caches no payload of a record in a segment before `seq` (until told
    /// otherwise). Replay reads the log oldest first and the budget keeps
    /// the newest payloads: those of segments that newer ones outweigh
    /// would be copied only to be let go before the replay ends (see
    /// `Replay::cache_newest`).
    pub fn cache_from(&mut self, seq: SegmentSeq) {
        self.from = seq;
    }

    /// A record of `len` bytes at `offset` of `channel` was cached.
    pub(super) fn cached(&mut self, channel: ChannelId, offset: Offset, len: usize) {
        self.bytes += charge(len);
        self.records += 1;
        self.order.push_back((channel, offset));
    }

    /// Cached records of `charged` bytes in all (their [`charge`]s) let
    /// go (any way).
    pub(super) fn released(&mut self, records: u64, charged: u64) {
        self.records -= records;
        self.bytes -= charged;
    }

    /// Whether the cached records are charged more than the budget.
    pub(super) fn over(&self) -> bool {
        self.bytes > self.budget
    }

    /// Whether the queue holds many more entries than cached records.
    pub(super) fn needs_compaction(&self) -> bool {
        self.order.len() > self.compact_at
    }

    /// After a compaction: compact again once the queue doubles.
    pub(super) fn compacted(&mut self) {
        self.compact_at = (2 * self.order.len()).max(1024);
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Records cached now.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// The budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }
}
