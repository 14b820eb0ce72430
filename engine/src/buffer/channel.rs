//! One channel's state in its shard: its name and offsets, its held
//! records and which segment holds each, and the segment that last stated
//! it whole. Only the channel table changes it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::types::{ChannelId, CommitSeq, Offset, Record, SegmentSeq};

use super::pins::{Runs, SegmentPins};

/// One channel's state in its shard; only the table changes it.
#[derive(Debug)]
pub struct ChannelState {
    pub(super) id: ChannelId,
    pub(super) name: Box<str>,
    /// Offset of the channel's first live record (held or lost): everything
    /// below it was checkpointed (or, for a dropped channel, dropped).
    pub(super) first_offset: Offset,
    /// Next offset to assign (one past the last record queued for a commit).
    pub(super) next_offset: Offset,
    /// Acknowledged records, in offset order, lost offsets left out.
    pub(super) records: VecDeque<Bytes>,
    /// Which segment holds each of `records`.
    pub(super) runs: Runs,
    /// Commit that carries the channel's registration.
    pub(super) registered_in: CommitSeq,
    /// The commit that carries the channel's drop, once one was accepted
    /// (its name may since name another channel).
    pub(super) dropped_in: Option<CommitSeq>,
    /// The commit that carries the channel's latest checkpoint or
    /// truncation (its registration's when it has none): a checkpoint or
    /// truncation that changes nothing is answered once this one is durable.
    pub(super) changed_in: CommitSeq,
    /// Offsets whose records `RecoveryMode::SkipDamaged` passed over with a
    /// damaged commit, as `[from, to)` ranges in offset order; `records`
    /// holds nothing for them.
    pub(super) lost: Vec<(Offset, Offset)>,
    /// How many offsets `lost` spans.
    pub(super) lost_count: u64,
    /// The segment holding the latest entry that states the channel whole
    /// (its registration, or a state entry carried forward): replay needs it
    /// and everything after it. `None` until that entry is durable.
    pub(super) anchor: Option<SegmentSeq>,
    /// Relocation entries of the channel on their way to the device: a
    /// truncation waits for them, as for its records in flight.
    pub(super) relocating: u64,
}

impl ChannelState {
    pub(super) fn new(id: ChannelId, name: &str, first_offset: Offset, commit: CommitSeq) -> Self {
        ChannelState {
            id,
            name: name.into(),
            first_offset,
            next_offset: first_offset,
            records: VecDeque::new(),
            runs: Runs::default(),
            registered_in: commit,
            dropped_in: None,
            changed_in: commit,
            lost: Vec::new(),
            lost_count: 0,
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
        Offset(self.first_offset.0 + self.records.len() as u64 + self.lost_count)
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
        self.records.len() as u64
    }

    /// Payload bytes of the records held.
    pub fn held_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.bytes).sum()
    }

    /// Offsets lost with damaged commits.
    pub fn lost_offsets(&self) -> u64 {
        self.lost_count
    }

    /// The lost ranges, `[from, to)` in offset order.
    pub fn lost_ranges(&self) -> &[(Offset, Offset)] {
        &self.lost
    }

    /// The segment that last stated the channel whole, once durable.
    pub fn anchor(&self) -> Option<SegmentSeq> {
        self.anchor
    }

    /// The oldest segment holding one of its live records.
    pub fn oldest_record_segment(&self) -> Option<SegmentSeq> {
        self.runs.oldest()
    }

    /// Keeps an acknowledged record, held by segment `seq`, at the end.
    pub(super) fn push_record(&mut self, record: Bytes, seq: SegmentSeq, pins: &mut SegmentPins) {
        self.runs.push_back(seq, record.len() as u64, pins);
        self.records.push_back(record);
    }

    /// Lets go of the records below `first`, which becomes the first
    /// offset (at most the durable end).
    pub(super) fn trim_front(&mut self, first: Offset, pins: &mut SegmentPins) {
        debug_assert!(self.first_offset <= first && first <= self.durable_next_offset());
        let mut lost_below = 0;
        self.lost.retain_mut(|(from, to)| {
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
        for _ in 0..held_below {
            let r = self.records.pop_front().expect("held below the new first");
            self.runs.pop_front(r.len() as u64, pins);
        }
        self.lost_count -= lost_below;
        self.first_offset = first;
    }

    /// Lets go of the records from `next` on (nothing is in flight), which
    /// becomes the next offset.
    pub(super) fn trim_back(&mut self, next: Offset, pins: &mut SegmentPins) {
        debug_assert!(self.first_offset <= next && self.durable_next_offset() == self.next_offset);
        let mut lost_above = 0;
        self.lost.retain_mut(|(from, to)| {
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
        for _ in 0..held_above {
            let r = self.records.pop_back().expect("held above the new next");
            self.runs.pop_back(r.len() as u64, pins);
        }
        self.lost_count -= lost_above;
        self.next_offset = next;
    }

    /// Lets go of every record (the channel was dropped).
    pub(super) fn release_records(&mut self, pins: &mut SegmentPins) {
        self.runs.clear(pins);
        self.records = VecDeque::new();
        self.lost = Vec::new();
        self.lost_count = 0;
    }

    /// The index in `records` of the held record at `offset`, if it is held.
    pub(super) fn index_of(&self, offset: Offset) -> Option<u64> {
        if offset < self.first_offset || offset >= self.durable_next_offset() {
            return None;
        }
        let mut lost_below = 0;
        for &(from, to) in &self.lost {
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

    /// The held records at offsets `from..to` were written again into
    /// segment `seq` (a relocation): it holds them from now on. Offsets no
    /// longer held (checkpointed since) are passed over.
    pub(super) fn relocated(
        &mut self,
        from: Offset,
        to: Offset,
        seq: SegmentSeq,
        pins: &mut SegmentPins,
    ) {
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
            self.runs.move_range(start, end, &self.records, seq, pins);
            o = end_offset;
        }
    }

    /// The held records with offsets in `from..to`.
    pub(super) fn read(&self, from: Offset, to: Offset) -> Vec<Record> {
        let start = from.max(self.first_offset);
        let end = to.min(self.durable_next_offset());
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        // Walk the held stretches between lost ranges: `o` is the offset of
        // `records[idx]`.
        let (mut o, mut idx) = (self.first_offset.0, 0usize);
        let tail = (self.durable_next_offset(), self.durable_next_offset());
        for &(lost_from, lost_to) in self.lost.iter().chain(std::iter::once(&tail)) {
            let (lo, hi) = (start.0.max(o), end.0.min(lost_from.0));
            if lo < hi {
                let first = idx + (lo - o) as usize;
                let n = (hi - lo) as usize;
                out.extend(
                    self.records
                        .range(first..first + n)
                        .enumerate()
                        .map(|(i, data)| Record {
                            offset: Offset(lo + i as u64),
                            data: data.clone(),
                        }),
                );
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
        match self.lost.last_mut() {
            Some((_, end)) if *end == from => *end = to,
            _ => self.lost.push((from, to)),
        }
        self.lost_count += to.0 - from.0;
    }

    /// Holds `record` at the lost `offset` from now on (a relocation found
    /// it again). Returns false, changing nothing, when `offset` is not lost.
    pub(super) fn fill(
        &mut self,
        offset: Offset,
        record: Bytes,
        seq: SegmentSeq,
        pins: &mut SegmentPins,
    ) -> bool {
        let Some(i) = self
            .lost
            .iter()
            .position(|&(f, t)| f <= offset && offset < t)
        else {
            return false;
        };
        if offset < self.first_offset {
            return false;
        }
        // Its index among the held records: the offsets before it, less the
        // lost ones (of its own range, those before it).
        let lost_below: u64 = self.lost[..i].iter().map(|(f, t)| t.0 - f.0).sum::<u64>()
            + (offset.0 - self.lost[i].0 .0);
        let index = offset.0 - self.first_offset.0 - lost_below;
        let (from, to) = self.lost.remove(i);
        let mut at = i;
        for piece in [(from, offset), (Offset(offset.0 + 1), to)] {
            if piece.0 < piece.1 {
                self.lost.insert(at, piece);
                at += 1;
            }
        }
        self.lost_count -= 1;
        self.runs
            .insert(index, record.len() as u64, seq, &self.records, pins);
        self.records.insert(index as usize, record);
        debug_assert_eq!(self.index_of(offset), Some(index));
        true
    }

    /// The offset of the held record at `index` in `records`.
    pub(super) fn offset_of(&self, index: u64) -> Offset {
        let mut o = self.first_offset.0 + index;
        for &(from, to) in &self.lost {
            if from.0 > o {
                break;
            }
            o += to.0 - from.0;
        }
        Offset(o)
    }
}
