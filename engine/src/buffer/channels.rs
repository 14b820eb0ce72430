//! A shard's buffer table: channel name → id → the channel's acknowledged
//! records, touched only by the shard's own thread.
//!
//! Memory bound, today: every acknowledged record of every channel stays in
//! memory until the engine closes (there is no checkpoint yet), so the table
//! holds the whole WAL's payload. Besides the records, the table keeps one
//! small [`ChannelState`] (name, counters; about 150 bytes) per channel
//! registration the shard's WAL holds, dropped ones included, and one entry
//! per dropped name not registered again; both are bounded by the WAL's
//! registrations and shrink only with the checkpoints to come. Lost ranges
//! (offsets or channel ids that `RecoveryMode::SkipDamaged` passed over) cost
//! one entry per range, never one per missing offset or id.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::types::Record;
use crate::types::{ChannelId, CommitSeq, Offset};

/// The largest offset a record may have: offsets from the WAL above it are
/// damage (a crafted or corrupted commit), and appends stop before it, so that
/// offset arithmetic never wraps. At a billion appends a second, 146 years.
pub const OFFSET_MAX: u64 = (1 << 62) - 1;

/// The largest channel id: ids from the WAL above it are damage, and a shard
/// refuses registrations past it.
pub const CHANNEL_ID_MAX: u32 = u32::MAX - 1;

/// One channel's state in its shard.
#[derive(Debug)]
pub struct ChannelState {
    /// The channel's id.
    pub id: ChannelId,
    /// The channel's name.
    pub name: Box<str>,
    /// Offset of the channel's first record (held or lost).
    pub first_offset: Offset,
    /// Next offset to assign (one past the last record queued for a commit).
    pub next_offset: Offset,
    /// Acknowledged records, in offset order, lost offsets left out.
    pub records: VecDeque<Bytes>,
    /// Commit that carries the channel's registration.
    pub registered_in: CommitSeq,
    /// The commit that carries the channel's drop, once one was accepted
    /// (its name may since name another channel). Calls on the channel are
    /// answered `ChannelDropped` once that commit completed.
    pub dropped_in: Option<CommitSeq>,
    /// Offsets whose records `RecoveryMode::SkipDamaged` passed over with a
    /// damaged commit, as `[from, to)` ranges in offset order; `records`
    /// holds nothing for them.
    pub lost: Vec<(Offset, Offset)>,
    /// How many offsets `lost` spans.
    pub lost_count: u64,
}

impl ChannelState {
    /// One past the last acknowledged record.
    pub fn durable_next_offset(&self) -> Offset {
        Offset(self.first_offset.0 + self.records.len() as u64 + self.lost_count)
    }

    /// Whether a drop of the channel was accepted.
    pub fn dropped(&self) -> bool {
        self.dropped_in.is_some()
    }
}

/// The table.
#[derive(Debug, Default)]
pub struct ChannelTable {
    by_name: HashMap<Box<str>, ChannelId>,
    /// Dropped names: the next offset a re-registration starts at (so that
    /// offsets never collide with the dropped channel's), and the commit that
    /// carries the drop.
    retired: HashMap<Box<str>, (Offset, CommitSeq)>,
    /// Channels in id order, lost ids left out.
    channels: Vec<ChannelState>,
    /// Channel ids whose registrations `RecoveryMode::SkipDamaged` passed
    /// over, as `[from, to)` ranges in id order.
    lost_ids: Vec<(u32, u32)>,
    lost_id_count: u64,
    payload_bytes: u64,
}

impl ChannelTable {
    /// The id of `name`, if registered.
    pub fn lookup(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    /// The id the next registration gets (may exceed [`CHANNEL_ID_MAX`]:
    /// then no registration is possible).
    pub fn next_id(&self) -> u64 {
        self.channels.len() as u64 + self.lost_id_count
    }

    /// Registers `name` as channel `next_id()`, with offsets starting at
    /// `first_offset`. The caller checked `next_id() <= CHANNEL_ID_MAX`.
    pub fn insert(
        &mut self,
        name: &str,
        first_offset: Offset,
        registered_in: CommitSeq,
    ) -> ChannelId {
        let id = ChannelId(
            u32::try_from(self.next_id())
                .ok()
                .filter(|&i| i <= CHANNEL_ID_MAX)
                .expect("the caller checked the channel id bound"),
        );
        assert!(
            !self.by_name.contains_key(name),
            "channel {name:?} registered twice"
        );
        self.by_name.insert(name.into(), id);
        self.channels.push(ChannelState {
            id,
            name: name.into(),
            first_offset,
            next_offset: first_offset,
            records: VecDeque::new(),
            registered_in,
            dropped_in: None,
            lost: Vec::new(),
            lost_count: 0,
        });
        self.retired.remove(name);
        id
    }

    /// Marks channel ids from `next_id()` up to `to` (exclusive) as taken by
    /// channels whose registrations were lost with a damaged commit
    /// (`RecoveryMode::SkipDamaged`): they have no state, and later ids stay
    /// where the WAL has them. One entry for the whole range.
    pub fn skip_ids(&mut self, to: ChannelId) {
        let from = self.next_id();
        if u64::from(to.0) <= from {
            return;
        }
        self.lost_ids.push((from as u32, to.0));
        self.lost_id_count += u64::from(to.0) - from;
    }

    /// Marks the offsets from the channel's next offset up to `to` as lost
    /// with a damaged commit (`RecoveryMode::SkipDamaged`).
    pub fn push_lost(&mut self, id: ChannelId, to: Offset) {
        let ch = self.state_mut(id).expect("a channel of this table");
        let from = ch.next_offset;
        assert!(from <= to, "lost offsets go backwards");
        assert_eq!(
            ch.durable_next_offset(),
            from,
            "lost offsets after queued ones"
        );
        if from < to {
            ch.lost.push((from, to));
            ch.lost_count += to.0 - from.0;
        }
        ch.next_offset = to;
    }

    /// Where a dropped `name` left off: its next offset and the commit of the drop.
    pub fn retired(&self, name: &str) -> Option<(Offset, CommitSeq)> {
        self.retired.get(name).copied()
    }

    /// Drops channel `id`: frees its records and its name. Returns the offset
    /// a later registration of the name starts at.
    pub fn drop_channel(&mut self, id: ChannelId, dropped_in: CommitSeq) -> Offset {
        let ch = self.state_mut(id).expect("a channel of this table");
        assert!(!ch.dropped(), "channel {:?} dropped twice", ch.name);
        ch.dropped_in = Some(dropped_in);
        let freed: u64 = ch.records.iter().map(|r| r.len() as u64).sum();
        ch.records = VecDeque::new();
        ch.lost = Vec::new();
        let next = ch.next_offset;
        // What stays of a dropped channel is its durable end, for the calls
        // that arrive before the drop is durable.
        ch.first_offset = next;
        ch.lost_count = 0;
        let name = ch.name.clone();
        self.payload_bytes -= freed;
        self.by_name.remove(&name);
        self.retired.insert(name, (next, dropped_in));
        next
    }

    fn index(&self, id: ChannelId) -> Option<usize> {
        let mut below = 0u64;
        for &(a, b) in &self.lost_ids {
            if id.0 < a {
                break;
            }
            if id.0 < b {
                return None;
            }
            below += u64::from(b - a);
        }
        let i = (u64::from(id.0) - below) as usize;
        (i < self.channels.len()).then_some(i)
    }

    fn state_mut(&mut self, id: ChannelId) -> Option<&mut ChannelState> {
        let i = self.index(id)?;
        self.channels.get_mut(i)
    }

    /// The channel `id`, if it exists.
    pub fn get(&self, id: ChannelId) -> Option<&ChannelState> {
        self.channels.get(self.index(id)?)
    }

    /// The channel `id`, mutably.
    pub fn get_mut(&mut self, id: ChannelId) -> Option<&mut ChannelState> {
        self.state_mut(id)
    }

    /// Appends an acknowledged record at the channel's durable end.
    pub fn push(&mut self, id: ChannelId, record: Bytes) {
        self.payload_bytes += record.len() as u64;
        let ch = self.state_mut(id).expect("a channel of this table");
        ch.records.push_back(record);
        assert!(
            ch.durable_next_offset() <= ch.next_offset,
            "acknowledged past the assigned offsets"
        );
    }

    /// Records of `id` with offsets in `from..to`, clamped to what is held.
    pub fn read(&self, id: ChannelId, from: Offset, to: Offset) -> Vec<Record> {
        let Some(ch) = self.get(id).filter(|c| !c.dropped()) else {
            return Vec::new();
        };
        let start = from.max(ch.first_offset);
        let end = to.min(ch.durable_next_offset());
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        // Walk the held stretches between lost ranges: `o` is the offset of
        // `records[idx]`.
        let (mut o, mut idx) = (ch.first_offset.0, 0usize);
        let tail = (ch.durable_next_offset(), ch.durable_next_offset());
        for &(lost_from, lost_to) in ch.lost.iter().chain(std::iter::once(&tail)) {
            let (lo, hi) = (start.0.max(o), end.0.min(lost_from.0));
            if lo < hi {
                let first = idx + (lo - o) as usize;
                let n = (hi - lo) as usize;
                out.extend(
                    ch.records
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

    /// Every channel with state, dropped ones included, in id order.
    pub fn channels(&self) -> impl Iterator<Item = (ChannelId, &ChannelState)> {
        self.channels.iter().map(|c| (c.id, c))
    }

    /// Number of live (registered, not dropped) channels.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no channel is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_clamps_to_durable_records() {
        let mut t = ChannelTable::default();
        let id = t.insert("a", Offset(0), CommitSeq(1));
        t.get_mut(id).unwrap().next_offset = Offset(3);
        t.push(id, Bytes::from_static(b"0"));
        t.push(id, Bytes::from_static(b"1"));
        let r = t.read(id, Offset(1), Offset(100));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].offset, Offset(1));
        assert_eq!(&r[0].data[..], b"1");
        assert!(t.read(id, Offset(5), Offset(2)).is_empty());
        assert_eq!(t.lookup("a"), Some(id));
    }

    fn offsets_of(r: &[Record]) -> Vec<u64> {
        r.iter().map(|r| r.offset.0).collect()
    }

    #[test]
    fn lost_offsets_are_left_out_of_reads() {
        let mut t = ChannelTable::default();
        let id = t.insert("a", Offset(0), CommitSeq(1));
        let append = |t: &mut ChannelTable, data: &'static [u8]| {
            let ch = t.get_mut(id).unwrap();
            ch.next_offset = Offset(ch.next_offset.0 + 1);
            t.push(id, Bytes::from_static(data));
        };
        append(&mut t, b"0");
        t.push_lost(id, Offset(3));
        append(&mut t, b"3");
        let r = t.read(id, Offset(0), Offset(10));
        assert_eq!(offsets_of(&r), [0, 3]);
        assert_eq!(&r[1].data[..], b"3");
        assert_eq!(t.get(id).unwrap().durable_next_offset(), Offset(4));
        assert_eq!(offsets_of(&t.read(id, Offset(1), Offset(4))), [3]);
        assert_eq!(
            t.get(id).unwrap().records.len(),
            2,
            "no placeholder per lost offset"
        );
        t.skip_ids(ChannelId(1 << 30));
        assert!(t.get(ChannelId(5)).is_none());
        let b = t.insert("b", Offset(0), CommitSeq(2));
        assert_eq!(b, ChannelId(1 << 30));
        assert_eq!(t.get(b).unwrap().name.as_ref(), "b");
        assert_eq!(t.get(id).unwrap().name.as_ref(), "a");
        assert_eq!(t.len(), 2);
    }
}
