//! What keeps each segment of a shard's log alive: the live records it holds
//! and the channels whose whole state it was the last to state (their
//! *anchors*). A segment that neither holds a live record nor anchors a
//! channel or a dropped name is no longer needed by replay: the segments
//! before the first one that is can be reclaimed.
//!
//! The channel table keeps these counts as it moves channels (it is the only
//! code that changes them); the shard reads them to reclaim, to carry
//! anchors forward and to say who pins the log.

use std::collections::{BTreeMap, VecDeque};

use crate::types::SegmentSeq;

use super::channel::Loc;

/// What one segment holds that is still needed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentPin {
    /// Live records (acknowledged, not checkpointed, truncated or dropped).
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Channels and dropped names whose latest whole statement (a
    /// registration, or a state or retired entry) is in the segment.
    pub anchors: u64,
}

impl SegmentPin {
    fn is_empty(&self) -> bool {
        self.records == 0 && self.anchors == 0
    }
}

/// The pins of every segment that has any, by segment.
#[derive(Debug, Default)]
pub struct SegmentPins {
    by_segment: BTreeMap<SegmentSeq, SegmentPin>,
}

impl SegmentPins {
    /// The pins of segment `seq`.
    pub fn get(&self, seq: SegmentSeq) -> SegmentPin {
        self.by_segment.get(&seq).copied().unwrap_or_default()
    }

    /// Segments with pins, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (SegmentSeq, SegmentPin)> + '_ {
        self.by_segment.iter().map(|(s, p)| (*s, *p))
    }

    /// The oldest segment that holds a live record.
    pub fn oldest_with_records(&self) -> Option<SegmentSeq> {
        self.by_segment
            .iter()
            .find(|(_, p)| p.records > 0)
            .map(|(s, _)| *s)
    }

    /// The oldest segment with any pin.
    pub fn oldest(&self) -> Option<SegmentSeq> {
        self.by_segment.keys().next().copied()
    }

    /// Whether any segment before `seq` is pinned by an anchor.
    pub fn anchors_before(&self, seq: SegmentSeq) -> u64 {
        self.by_segment.range(..seq).map(|(_, p)| p.anchors).sum()
    }

    pub(super) fn add_records(&mut self, seq: SegmentSeq, records: u64, bytes: u64) {
        let p = self.by_segment.entry(seq).or_default();
        p.records += records;
        p.bytes += bytes;
    }

    pub(super) fn remove_records(&mut self, seq: SegmentSeq, records: u64, bytes: u64) {
        let p = self
            .by_segment
            .get_mut(&seq)
            .expect("records leave a segment that holds them");
        assert!(
            p.records >= records && p.bytes >= bytes,
            "segment {seq} holds fewer live records than leave it"
        );
        p.records -= records;
        p.bytes -= bytes;
        if p.is_empty() {
            self.by_segment.remove(&seq);
        }
    }

    pub(super) fn add_anchor(&mut self, seq: SegmentSeq) {
        self.by_segment.entry(seq).or_default().anchors += 1;
    }

    pub(super) fn remove_anchor(&mut self, seq: SegmentSeq) {
        let p = self
            .by_segment
            .get_mut(&seq)
            .expect("an anchor leaves a segment that holds it");
        assert!(p.anchors > 0, "segment {seq} holds no anchor to release");
        p.anchors -= 1;
        if p.is_empty() {
            self.by_segment.remove(&seq);
        }
    }
}

/// A stretch of a channel's held records that one segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// The segment.
    pub segment: SegmentSeq,
    /// Records in the stretch.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// Which segment holds each of a channel's held records: runs in offset
/// order, beside the records themselves. Appends extend the last run;
/// checkpoints take from the front and truncations from the back; a
/// relocation moves a stretch to the segment it was written into again.
#[derive(Debug, Default)]
pub struct Runs {
    runs: VecDeque<Run>,
}

impl Runs {
    /// No runs.
    pub(super) const EMPTY: Runs = Runs {
        runs: VecDeque::new(),
    };

    /// The runs, in offset order.
    pub fn iter(&self) -> impl Iterator<Item = &Run> {
        self.runs.iter()
    }

    /// The runs, in offset order, as stored.
    pub(super) fn deque(&self) -> &VecDeque<Run> {
        &self.runs
    }

    /// The oldest segment holding one of the records.
    pub fn oldest(&self) -> Option<SegmentSeq> {
        self.runs.iter().map(|r| r.segment).min()
    }

    /// One more record of `bytes` at the end, held by `seq`.
    pub(super) fn push_back(&mut self, seq: SegmentSeq, bytes: u64, pins: &mut SegmentPins) {
        self.push_back_many(seq, 1, bytes, pins);
    }

    /// `records` more records of `bytes` in all at the end, held by `seq`.
    pub(super) fn push_back_many(
        &mut self,
        seq: SegmentSeq,
        records: u64,
        bytes: u64,
        pins: &mut SegmentPins,
    ) {
        match self.runs.back_mut() {
            Some(r) if r.segment == seq => {
                r.records += records;
                r.bytes += bytes;
            }
            _ => self.runs.push_back(Run {
                segment: seq,
                records,
                bytes,
            }),
        }
        pins.add_records(seq, records, bytes);
    }

    /// The first record (of `bytes`) leaves.
    pub(super) fn pop_front(&mut self, bytes: u64, pins: &mut SegmentPins) {
        let r = self.runs.front_mut().expect("a record leaves a run");
        pins.remove_records(r.segment, 1, bytes);
        r.records -= 1;
        r.bytes -= bytes;
        if r.records == 0 {
            self.runs.pop_front();
        }
    }

    /// The last record (of `bytes`) leaves.
    pub(super) fn pop_back(&mut self, bytes: u64, pins: &mut SegmentPins) {
        let r = self.runs.back_mut().expect("a record leaves a run");
        pins.remove_records(r.segment, 1, bytes);
        r.records -= 1;
        r.bytes -= bytes;
        if r.records == 0 {
            self.runs.pop_back();
        }
    }

    /// Every record leaves.
    pub(super) fn clear(&mut self, pins: &mut SegmentPins) {
        for r in self.runs.drain(..) {
            pins.remove_records(r.segment, r.records, r.bytes);
        }
    }

    /// The held records at indexes `from..to` (`records` are the channel's
    /// held records, whose lengths give the bytes) were written again into
    /// segment `seq`, which holds them from now on.
    pub(super) fn move_range(
        &mut self,
        from: u64,
        to: u64,
        records: &VecDeque<Loc>,
        seq: SegmentSeq,
        pins: &mut SegmentPins,
    ) {
        let len = |i: u64| u64::from(records[i as usize].len);
        let mut index = from;
        while index < to {
            // The run holding `index`, and where it starts.
            let (mut i, mut at) = (0usize, 0u64);
            while at + self.runs[i].records <= index {
                at += self.runs[i].records;
                i += 1;
            }
            let old = self.runs[i];
            let end = to.min(at + old.records);
            if old.segment == seq {
                index = end;
                continue;
            }
            let before_bytes: u64 = (at..index).map(len).sum();
            let moved_bytes: u64 = (index..end).map(len).sum();
            pins.remove_records(old.segment, end - index, moved_bytes);
            pins.add_records(seq, end - index, moved_bytes);
            let pieces = [
                (old.segment, index - at, before_bytes),
                (seq, end - index, moved_bytes),
                (
                    old.segment,
                    at + old.records - end,
                    old.bytes - before_bytes - moved_bytes,
                ),
            ];
            self.runs.remove(i);
            let mut k = i;
            for (segment, records, bytes) in pieces {
                if records > 0 {
                    self.runs.insert(
                        k,
                        Run {
                            segment,
                            records,
                            bytes,
                        },
                    );
                    k += 1;
                }
            }
            index = end;
        }
        self.merge_neighbours();
    }

    /// A record of `bytes`, held by `seq`, comes in at `index` (`records`
    /// are the channel's held records before it does).
    pub(super) fn insert(
        &mut self,
        index: u64,
        bytes: u64,
        seq: SegmentSeq,
        records: &VecDeque<Loc>,
        pins: &mut SegmentPins,
    ) {
        pins.add_records(seq, 1, bytes);
        let (mut i, mut at) = (0usize, 0u64);
        while i < self.runs.len() && at + self.runs[i].records <= index {
            at += self.runs[i].records;
            i += 1;
        }
        let new = Run {
            segment: seq,
            records: 1,
            bytes,
        };
        if i == self.runs.len() || at == index {
            self.runs.insert(i, new);
        } else {
            let old = self.runs[i];
            let before_bytes: u64 = (at..index)
                .map(|k| u64::from(records[k as usize].len))
                .sum();
            let left = Run {
                segment: old.segment,
                records: index - at,
                bytes: before_bytes,
            };
            let right = Run {
                segment: old.segment,
                records: old.records - (index - at),
                bytes: old.bytes - before_bytes,
            };
            self.runs[i] = right;
            self.runs.insert(i, new);
            self.runs.insert(i, left);
        }
        self.merge_neighbours();
    }

    /// Joins neighbouring runs held by the same segment.
    fn merge_neighbours(&mut self) {
        let mut merged: VecDeque<Run> = VecDeque::with_capacity(self.runs.len());
        for r in self.runs.drain(..) {
            match merged.back_mut() {
                Some(m) if m.segment == r.segment => {
                    m.records += r.records;
                    m.bytes += r.bytes;
                }
                _ => merged.push_back(r),
            }
        }
        self.runs = merged;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::CommitSeq;

    fn loc(len: u64) -> Loc {
        Loc {
            commit: CommitSeq(1),
            position: 0,
            len: len as u32,
        }
    }

    /// Random pushes, checkpoints, truncations, relocations and inserts:
    /// the runs and the pins always agree with each record's own segment.
    #[test]
    fn runs_and_pins_agree_with_every_record() {
        let mut state = 0x1234_5678_u64;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % n
        };
        let mut pins = SegmentPins::default();
        let mut runs = Runs::default();
        let mut records: VecDeque<Loc> = VecDeque::new();
        let mut segs: VecDeque<SegmentSeq> = VecDeque::new();
        for step in 0..5_000 {
            match next(10) {
                0..=3 => {
                    let seq = SegmentSeq(1 + step / 500);
                    let r = loc(next(100));
                    runs.push_back(seq, u64::from(r.len), &mut pins);
                    records.push_back(r);
                    segs.push_back(seq);
                }
                4 if !records.is_empty() => {
                    let r = records.pop_front().unwrap();
                    runs.pop_front(u64::from(r.len), &mut pins);
                    segs.pop_front();
                }
                5 if !records.is_empty() => {
                    let r = records.pop_back().unwrap();
                    runs.pop_back(u64::from(r.len), &mut pins);
                    segs.pop_back();
                }
                6 | 7 if !records.is_empty() => {
                    let from = next(records.len() as u64);
                    let to = from + 1 + next(records.len() as u64 - from);
                    let seq = SegmentSeq(20 + next(3));
                    runs.move_range(from, to, &records, seq, &mut pins);
                    for s in segs.range_mut(from as usize..to as usize) {
                        *s = seq;
                    }
                }
                _ => {
                    let at = next(records.len() as u64 + 1);
                    let seq = SegmentSeq(30 + next(2));
                    let r = loc(next(50));
                    runs.insert(at, u64::from(r.len), seq, &records, &mut pins);
                    records.insert(at as usize, r);
                    segs.insert(at as usize, seq);
                }
            }
            let mut want: std::collections::BTreeMap<SegmentSeq, (u64, u64)> = Default::default();
            for (r, s) in records.iter().zip(&segs) {
                let e = want.entry(*s).or_default();
                e.0 += 1;
                e.1 += u64::from(r.len);
            }
            let got: std::collections::BTreeMap<_, _> = pins
                .iter()
                .map(|(s, p)| (s, (p.records, p.bytes)))
                .collect();
            assert_eq!(got, want, "step {step}");
            let mut expanded = Vec::new();
            for run in runs.iter() {
                expanded.extend(std::iter::repeat_n(run.segment, run.records as usize));
            }
            assert_eq!(
                expanded,
                segs.iter().copied().collect::<Vec<_>>(),
                "step {step}"
            );
        }
    }
}
