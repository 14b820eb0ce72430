//! One channel's state in its shard: its name and offsets, where each of
//! its held records lies in the WAL and which segment holds it, the payloads
//! of its newest records that the cache keeps, and the segment that last
//! stated it whole. Only the channel table changes it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::types::{ChannelId, CommitSeq, Offset, Record, SegmentSeq};

use super::pins::{Runs, SegmentPins};

/// Where a held record's entry lies in the WAL: 16 bytes per live record.
/// The segment comes from the channel's runs; the commit sequence number
/// seeds the entry's checksum, so a read back verifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    /// The commit that holds the entry.
    pub commit: CommitSeq,
    /// The entry's byte position in its segment (segments are at most
    /// 1 GiB).
    pub position: u32,
    /// The record's payload length.
    pub len: u32,
}

impl Loc {
    /// A record of `len` bytes placed nowhere in particular (unit tests of
    /// the table, which never read the WAL).
    #[cfg(test)]
    pub(crate) fn unplaced(len: usize) -> Loc {
        Loc {
            commit: CommitSeq(0),
            position: 0,
            len: len as u32,
        }
    }
}

/// A held record as a read finds it: its payload in memory, or where to
/// read it from.
#[derive(Debug, Clone)]
pub enum Found {
    /// The payload is cached.
    Cached(Record),
    /// The payload is only in the WAL.
    InWal {
        /// The record's offset.
        offset: Offset,
        /// The segment holding it.
        segment: SegmentSeq,
        /// Where in it.
        loc: Loc,
    },
}

impl Found {
    /// The record's offset.
    pub fn offset(&self) -> Offset {
        match self {
            Found::Cached(r) => r.offset,
            Found::InWal { offset, .. } => *offset,
        }
    }

    /// The record's payload length.
    pub fn len(&self) -> usize {
        match self {
            Found::Cached(r) => r.data.len(),
            Found::InWal { loc, .. } => loc.len as usize,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One channel's state in its shard; only the table changes it.
#[derive(Debug)]
pub struct ChannelState {
    pub(super) id: ChannelId,
    /// Its name, shared with the table's index of live names.
    pub(super) name: Arc<str>,
    /// Offset of the channel's first live record (held or lost): everything
    /// below it was checkpointed (or, for a dropped channel, dropped).
    pub(super) first_offset: Offset,
    /// Next offset to assign (one past the last record queued for a commit).
    pub(super) next_offset: Offset,
    /// Its records and lost offsets; `None` while it has neither (an idle
    /// channel costs 8 bytes here).
    pub(super) held: Option<Box<Held>>,
    /// Commit that carries the channel's registration.
    pub(super) registered_in: CommitSeq,
    /// The commit that carries the channel's drop, once one was accepted
    /// (its name may since name another channel).
    pub(super) dropped_in: Option<CommitSeq>,
    /// The commit that carries the channel's latest checkpoint or
    /// truncation (its registration's when it has none): a checkpoint or
    /// truncation that changes nothing is answered once this one is durable.
    pub(super) changed_in: CommitSeq,
    /// The segment holding the latest entry that states the channel whole
    /// (its registration, or a state entry carried forward): replay needs it
    /// and everything after it. `None` until that entry is durable.
    pub(super) anchor: Option<SegmentSeq>,
    /// Relocation entries of the channel on their way to the device: a
    /// truncation waits for them, as for its records in flight.
    pub(super) relocating: u64,
}

/// A channel's records and lost offsets: boxed apart from its state, so
/// that an idle channel (nothing live) does not carry them.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Where each acknowledged record lies, in offset order, lost offsets
    /// left out.
    pub(super) records: VecDeque<Loc>,
    /// The payloads of the last `cached.len()` of `records` (a suffix: the
    /// newest records), as the shard's [`PayloadCache`](super::cache::PayloadCache)
    /// allows.
    pub(super) cached: VecDeque<Bytes>,
    /// Which segment holds each of `records`.
    pub(super) runs: Runs,
    /// Offsets whose records `RecoveryMode::SkipDamaged` passed over with a
    /// damaged commit, as `[from, to)` ranges in offset order; `records`
    /// holds nothing for them.
    pub(super) lost: Vec<(Offset, Offset)>,
    /// How many offsets `lost` spans.
    pub(super) lost_count: u64,
}

impl Held {
    const EMPTY: Held = Held {
        records: VecDeque::new(),
        cached: VecDeque::new(),
        runs: Runs::EMPTY,
        lost: Vec::new(),
        lost_count: 0,
    };

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.lost.is_empty()
    }
}

/// What an idle channel's records are.
static NOTHING_HELD: Held = Held::EMPTY;

impl ChannelState {
    /// Its records and lost offsets (none while idle).
    pub(super) fn h(&self) -> &Held {
        self.held.as_deref().unwrap_or(&NOTHING_HELD)
    }

    /// Its records and lost offsets, to change.
    pub(super) fn hm(&mut self) -> &mut Held {
        self.held.get_or_insert_with(Box::default)
    }

    /// Frees the records' box once nothing is held.
    fn shrink(&mut self) {
        if self.held.as_ref().is_some_and(|h| h.is_empty()) {
            self.held = None;
        }
    }
}

impl ChannelState {
    pub(super) fn new(
        id: ChannelId,
        name: Arc<str>,
        first_offset: Offset,
        commit: CommitSeq,
    ) -> Self {
        ChannelState {
            id,
            name,
            first_offset,
            next_offset: first_offset,
            held: None,
            registered_in: commit,
            dropped_in: None,
            changed_in: commit,
            anchor: None,
            relocating: 0,
        }
    }

    /// The channel's id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Offset of the channel's first live record: the first one not
    /// checkpointed.
    pub fn first_offset(&self) -> Offset {
        self.first_offset
    }

    /// Next offset to assign.
    pub fn next_offset(&self) -> Offset {
        self.next_offset
    }

    /// One past the last acknowledged record.
    pub fn durable_next_offset(&self) -> Offset {
        Offset(self.first_offset.0 + self.h().records.len() as u64 + self.h().lost_count)
    }

    /// Commit that carries the channel's registration.
    pub fn registered_in(&self) -> CommitSeq {
        self.registered_in
    }

    /// Whether a drop of the channel was accepted.
    pub fn dropped(&self) -> bool {
        self.dropped_in.is_some()
    }

    /// Acknowledged records held.
    pub fn held_records(&self) -> u64 {
        self.h().records.len() as u64
    }

    /// Payload bytes of the records held.
    pub fn held_bytes(&self) -> u64 {
        self.h().runs.iter().map(|r| r.bytes).sum()
    }

    /// Offsets lost with damaged commits.
    pub fn lost_offsets(&self) -> u64 {
        self.h().lost_count
    }

    /// The lost ranges, `[from, to)` in offset order.
    pub fn lost_ranges(&self) -> &[(Offset, Offset)] {
        &self.h().lost
    }

    /// The segment that last stated the channel whole, once durable.
    pub fn anchor(&self) -> Option<SegmentSeq> {
        self.anchor
    }

    /// The oldest segment holding one of its live records.
    pub fn oldest_record_segment(&self) -> Option<SegmentSeq> {
        self.h().runs.oldest()
    }

    /// Keeps an acknowledged record, held by segment `seq` at `loc`, at the
    /// end, with its payload when the cache takes it (`None`: the cached
    /// suffix ends before it, so the cache lets go of it all, returned).
    pub(super) fn push_record(
        &mut self,
        loc: Loc,
        payload: Option<Bytes>,
        seq: SegmentSeq,
        pins: &mut SegmentPins,
    ) -> Released {
        self.hm().runs.push_back(seq, u64::from(loc.len), pins);
        self.hm().records.push_back(loc);
        match payload {
            Some(p) => {
                self.hm().cached.push_back(p);
                Released::default()
            }
            None => {
                let n = self.h().cached.len();
                self.uncache_front(n)
            }
        }
    }

    /// Lets the oldest `n` cached payloads go (the records stay held).
    pub(super) fn uncache_front(&mut self, n: usize) -> Released {
        let mut r = Released::default();
        for _ in 0..n {
            let p = self.hm().cached.pop_front().expect("n cached payloads");
            r.add(p.len());
        }
        r
    }

    /// The offset of the oldest cached payload's record.
    pub(super) fn first_cached_offset(&self) -> Option<Offset> {
        let first = self.h().records.len().checked_sub(self.h().cached.len())?;
        (!self.h().cached.is_empty()).then(|| self.offset_of(first as u64))
    }

    /// The index in `records` of the first one whose payload is cached.
    fn first_cached_index(&self) -> usize {
        self.h().records.len() - self.h().cached.len()
    }

    /// Lets go of the records below `first`, which becomes the first
    /// offset (at most the durable end).
    pub(super) fn trim_front(&mut self, first: Offset, pins: &mut SegmentPins) -> Released {
        debug_assert!(self.first_offset <= first && first <= self.durable_next_offset());
        let mut lost_below = 0;
        self.hm().lost.retain_mut(|(from, to)| {
            if *to <= first {
                lost_below += to.0 - from.0;
                false
            } else {
                if *from < first {
                    lost_below += first.0 - from.0;
                    *from = first;
                }
                true
            }
        });
        let held_below = first.0 - self.first_offset.0 - lost_below;
        let mut released = Released::default();
        for _ in 0..held_below {
            if self.hm().cached.len() == self.hm().records.len() {
                released.add(self.hm().cached.pop_front().expect("cached").len());
            }
            let r = self
                .hm()
                .records
                .pop_front()
                .expect("held below the new first");
            self.hm().runs.pop_front(u64::from(r.len), pins);
        }
        self.hm().lost_count -= lost_below;
        self.first_offset = first;
        self.shrink();
        released
    }

    /// Lets go of the records from `next` on (nothing is in flight), which
    /// becomes the next offset.
    pub(super) fn trim_back(&mut self, next: Offset, pins: &mut SegmentPins) -> Released {
        debug_assert!(self.first_offset <= next && self.durable_next_offset() == self.next_offset);
        let mut lost_above = 0;
        self.hm().lost.retain_mut(|(from, to)| {
            if *from >= next {
                lost_above += to.0 - from.0;
                false
            } else {
                if *to > next {
                    lost_above += to.0 - next.0;
                    *to = next;
                }
                true
            }
        });
        let held_above = self.next_offset.0 - next.0 - lost_above;
        let mut released = Released::default();
        for _ in 0..held_above {
            if let Some(p) = self.hm().cached.pop_back() {
                released.add(p.len());
            }
            let r = self
                .hm()
                .records
                .pop_back()
                .expect("held above the new next");
            self.hm().runs.pop_back(u64::from(r.len), pins);
        }
        self.hm().lost_count -= lost_above;
        self.next_offset = next;
        self.shrink();
        released
    }

    /// Lets go of every record (the channel was dropped).
    pub(super) fn release_records(&mut self, pins: &mut SegmentPins) -> Released {
        let released = self.uncache_front(self.h().cached.len());
        if let Some(mut h) = self.held.take() {
            h.runs.clear(pins);
        }
        released
    }

    /// The index in `records` of the held record at `offset`, if it is held.
    pub(super) fn index_of(&self, offset: Offset) -> Option<u64> {
        if offset < self.first_offset || offset >= self.durable_next_offset() {
            return None;
        }
        let mut lost_below = 0;
        for &(from, to) in &self.h().lost {
            if offset < from {
                break;
            }
            if offset < to {
                return None;
            }
            lost_below += to.0 - from.0;
        }
        Some(offset.0 - self.first_offset.0 - lost_below)
    }

    /// The held records at offsets `from..` were written again into
    /// segment `seq` at `locs` (a relocation): it holds them from now on.
    /// Offsets no longer held (checkpointed since) are passed over.
    pub(super) fn relocated(
        &mut self,
        from: Offset,
        locs: &[Loc],
        seq: SegmentSeq,
        pins: &mut SegmentPins,
    ) {
        let all = from.0..from.0 + locs.len() as u64;
        for (o, loc) in all.zip(locs) {
            if let Some(i) = self.index_of(Offset(o)) {
                self.hm().records[i as usize] = *loc;
            }
        }
        let to = Offset(from.0 + locs.len() as u64);
        let from = from.max(self.first_offset);
        let to = to.min(self.durable_next_offset());
        let mut o = from;
        // Held stretches between lost ranges, each moved at once.
        while o < to {
            let Some(start) = self.index_of(o) else {
                o = Offset(o.0 + 1);
                continue;
            };
            let mut end_offset = Offset(o.0 + 1);
            while end_offset < to && self.index_of(end_offset).is_some() {
                end_offset = Offset(end_offset.0 + 1);
            }
            let end = start + (end_offset.0 - o.0);
            let h = self.hm();
            h.runs.move_range(start, end, &h.records, seq, pins);
            o = end_offset;
        }
    }

    /// The held records with offsets in `from..to`, their payloads in
    /// memory or where to read them, as many as fit `bytes_max` payload
    /// bytes (at least one, so that a large record is never out of reach).
    pub(super) fn read(&self, from: Offset, to: Offset, bytes_max: u64) -> Vec<Found> {
        let start = from.max(self.first_offset);
        let end = to.min(self.durable_next_offset());
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let mut bytes = 0u64;
        let cached_from = self.first_cached_index();
        let mut runs = RunCursor::new(&self.h().runs);
        // Walk the held stretches between lost ranges: `o` is the offset of
        // `records[idx]`.
        let (mut o, mut idx) = (self.first_offset.0, 0usize);
        let tail = (self.durable_next_offset(), self.durable_next_offset());
        for &(lost_from, lost_to) in self.h().lost.iter().chain(std::iter::once(&tail)) {
            let (lo, hi) = (start.0.max(o), end.0.min(lost_from.0));
            if lo < hi {
                let first = idx + (lo - o) as usize;
                for i in first..first + (hi - lo) as usize {
                    let loc = self.h().records[i];
                    if !out.is_empty() && bytes + u64::from(loc.len) > bytes_max {
                        return out;
                    }
                    bytes += u64::from(loc.len);
                    let offset = Offset(lo + (i - first) as u64);
                    out.push(if i >= cached_from {
                        Found::Cached(Record {
                            offset,
                            data: self.h().cached[i - cached_from].clone(),
                        })
                    } else {
                        Found::InWal {
                            offset,
                            segment: runs.segment_of(i as u64),
                            loc,
                        }
                    });
                }
            }
            idx += (lost_from.0 - o) as usize;
            o = lost_to.0;
            if o >= end.0 {
                break;
            }
        }
        out
    }
}

impl ChannelState {
    /// Marks `from..to`, at the channel's end, as lost (no records held).
    pub(super) fn push_lost(&mut self, from: Offset, to: Offset) {
        debug_assert!(from < to && from >= self.durable_next_offset());
        match self.hm().lost.last_mut() {
            Some((_, end)) if *end == from => *end = to,
            _ => self.hm().lost.push((from, to)),
        }
        self.hm().lost_count += to.0 - from.0;
    }

    /// Holds the record at `loc` at the lost `offset` from now on (a
    /// relocation found it again), its payload not cached. Returns `None`,
    /// changing nothing, when `offset` is not lost; else what the cache let
    /// go (the cached payloads before it, so that they stay a suffix).
    pub(super) fn fill(
        &mut self,
        offset: Offset,
        loc: Loc,
        seq: SegmentSeq,
        pins: &mut SegmentPins,
    ) -> Option<Released> {
        let i = self
            .h()
            .lost
            .iter()
            .position(|&(f, t)| f <= offset && offset < t)?;
        if offset < self.first_offset {
            return None;
        }
        // Its index among the held records: the offsets before it, less the
        // lost ones (of its own range, those before it).
        let lost_below: u64 = self.hm().lost[..i]
            .iter()
            .map(|(f, t)| t.0 - f.0)
            .sum::<u64>()
            + (offset.0 - self.hm().lost[i].0 .0);
        let index = offset.0 - self.first_offset.0 - lost_below;
        let (from, to) = self.hm().lost.remove(i);
        let mut at = i;
        for piece in [(from, offset), (Offset(offset.0 + 1), to)] {
            if piece.0 < piece.1 {
                self.hm().lost.insert(at, piece);
                at += 1;
            }
        }
        self.hm().lost_count -= 1;
        // Cached payloads at or before the new record go: the rest stay
        // the suffix after it.
        let cached_from = self.first_cached_index() as u64;
        let released = if cached_from <= index {
            self.uncache_front((index - cached_from) as usize)
        } else {
            Released::default()
        };
        let h = self.hm();
        h.runs
            .insert(index, u64::from(loc.len), seq, &h.records, pins);
        self.hm().records.insert(index as usize, loc);
        debug_assert_eq!(self.index_of(offset), Some(index));
        Some(released)
    }

    /// The offset of the held record at `index` in `records`.
    pub(super) fn offset_of(&self, index: u64) -> Offset {
        let mut o = self.first_offset.0 + index;
        for &(from, to) in &self.h().lost {
            if from.0 > o {
                break;
            }
            o += to.0 - from.0;
        }
        Offset(o)
    }
}

/// Cached payloads a change let go: the cache's accounting follows.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Released {
    /// Records whose payload went.
    pub records: u64,
    /// What they were charged (see `cache::charge`).
    pub bytes: u64,
}

impl Released {
    fn add(&mut self, len: usize) {
        self.records += 1;
        self.bytes += super::cache::charge(len);
    }
}

/// Finds the segment of held records by index, walking the runs forward
/// (reads ask in increasing index order).
struct RunCursor<'a> {
    runs: std::collections::vec_deque::Iter<'a, super::pins::Run>,
    current: Option<&'a super::pins::Run>,
    /// Index of the current run's first record.
    start: u64,
}

impl<'a> RunCursor<'a> {
    fn new(runs: &'a Runs) -> RunCursor<'a> {
        let mut it = runs.deque().iter();
        let current = it.next();
        RunCursor {
            runs: it,
            current,
            start: 0,
        }
    }

    /// The segment of the record at `index` (at or after the last asked).
    fn segment_of(&mut self, index: u64) -> SegmentSeq {
        loop {
            let run = self.current.expect("a run for every held record");
            if index < self.start + run.records {
                return run.segment;
            }
            self.start += run.records;
            self.current = self.runs.next();
        }
    }
}
