//! A shard's buffer table: channel name → id → the channel's acknowledged
//! records, touched only by the shard's own thread.
//!
//! Memory bound, today: every acknowledged record of every channel stays in
//! memory until the engine closes (there is no checkpoint yet), so the table
//! holds the whole WAL's payload. The budget and read-back from the WAL come
//! with checkpoints.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::shard::Record;
use crate::types::{ChannelId, CommitSeq, Offset};

/// One channel's state in its shard.
#[derive(Debug)]
pub struct ChannelState {
    /// The channel's name.
    pub name: Box<str>,
    /// Offset of `records[0]`.
    pub first_offset: Offset,
    /// Next offset to assign (one past the last record queued for a commit).
    pub next_offset: Offset,
    /// Acknowledged records, in offset order.
    pub records: VecDeque<Bytes>,
    /// Commit that carries the channel's registration.
    pub registered_in: CommitSeq,
    /// Whether the channel was dropped (its name may since name another).
    pub dropped: bool,
    /// Offsets whose records `RecoveryMode::SkipDamaged` passed over with a
    /// damaged commit, as `[from, to)` ranges in offset order; `records`
    /// holds an empty placeholder for each, and reads leave them out.
    pub lost: Vec<(Offset, Offset)>,
}

impl ChannelState {
    /// One past the last acknowledged record.
    pub fn durable_next_offset(&self) -> Offset {
        Offset(self.first_offset.0 + self.records.len() as u64)
    }
}

/// The table.
#[derive(Debug, Default)]
pub struct BufferTable {
    by_name: HashMap<Box<str>, ChannelId>,
    /// Dropped names: the next offset a re-registration starts at (so that
    /// offsets never collide with the dropped channel's), and the commit that
    /// carries the drop.
    retired: HashMap<Box<str>, (Offset, CommitSeq)>,
    channels: Vec<ChannelState>,
    payload_bytes: u64,
}

impl BufferTable {
    /// The id of `name`, if registered.
    pub fn lookup(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    /// The id the next registration gets.
    pub fn next_id(&self) -> ChannelId {
        ChannelId(u32::try_from(self.channels.len()).expect("channel count bounded by u32"))
    }

    /// Registers `name` as channel `next_id()`, with offsets starting at `first_offset`.
    pub fn insert(
        &mut self,
        name: &str,
        first_offset: Offset,
        registered_in: CommitSeq,
    ) -> ChannelId {
        let id = self.next_id();
        assert!(
            !self.by_name.contains_key(name),
            "channel {name:?} registered twice"
        );
        self.by_name.insert(name.into(), id);
        self.channels.push(ChannelState {
            name: name.into(),
            first_offset,
            next_offset: first_offset,
            records: VecDeque::new(),
            registered_in,
            dropped: false,
            lost: Vec::new(),
        });
        self.retired.remove(name);
        id
    }

    /// Takes up channel id `next_id()` for a channel whose registration was
    /// lost with a damaged commit (`RecoveryMode::SkipDamaged`): it has no
    /// name, counts as dropped, and keeps later ids where the WAL has them.
    pub fn insert_lost(&mut self, registered_in: CommitSeq) -> ChannelId {
        let id = self.next_id();
        self.channels.push(ChannelState {
            name: "".into(),
            first_offset: Offset(0),
            next_offset: Offset(0),
            records: VecDeque::new(),
            registered_in,
            dropped: true,
            lost: Vec::new(),
        });
        id
    }

    /// Marks the offsets from the channel's next offset up to `to` as lost
    /// with a damaged commit (`RecoveryMode::SkipDamaged`).
    pub fn push_lost(&mut self, id: ChannelId, to: Offset) {
        let ch = &mut self.channels[id.0 as usize];
        let from = ch.next_offset;
        assert!(from <= to, "lost offsets go backwards");
        assert_eq!(
            ch.durable_next_offset(),
            from,
            "lost offsets after queued ones"
        );
        for _ in from.0..to.0 {
            ch.records.push_back(Bytes::new());
        }
        ch.next_offset = to;
        if from < to {
            ch.lost.push((from, to));
        }
    }

    /// Where a dropped `name` left off: its next offset and the commit of the drop.
    pub fn retired(&self, name: &str) -> Option<(Offset, CommitSeq)> {
        self.retired.get(name).copied()
    }

    /// Drops channel `id`: frees its records and its name. Returns the offset
    /// a later registration of the name starts at.
    pub fn drop_channel(&mut self, id: ChannelId, dropped_in: CommitSeq) -> Offset {
        let ch = &mut self.channels[id.0 as usize];
        assert!(!ch.dropped, "channel {:?} dropped twice", ch.name);
        ch.dropped = true;
        let freed: u64 = ch.records.iter().map(|r| r.len() as u64).sum();
        ch.records = VecDeque::new();
        ch.lost = Vec::new();
        let next = ch.next_offset;
        let name = ch.name.clone();
        self.payload_bytes -= freed;
        self.by_name.remove(&name);
        self.retired.insert(name, (next, dropped_in));
        next
    }

    /// The channel `id`, if it exists.
    pub fn get(&self, id: ChannelId) -> Option<&ChannelState> {
        self.channels.get(id.0 as usize)
    }

    /// The channel `id`, mutably.
    pub fn get_mut(&mut self, id: ChannelId) -> Option<&mut ChannelState> {
        self.channels.get_mut(id.0 as usize)
    }

    /// Appends an acknowledged record at the channel's durable end.
    pub fn push(&mut self, id: ChannelId, record: Bytes) {
        self.payload_bytes += record.len() as u64;
        let ch = &mut self.channels[id.0 as usize];
        ch.records.push_back(record);
        assert!(
            ch.durable_next_offset() <= ch.next_offset,
            "acknowledged past the assigned offsets"
        );
    }

    /// Records of `id` with offsets in `from..to`, clamped to what is held.
    pub fn read(&self, id: ChannelId, from: Offset, to: Offset) -> Vec<Record> {
        let Some(ch) = self.get(id).filter(|c| !c.dropped) else {
            return Vec::new();
        };
        let start = from.max(ch.first_offset);
        let end = to.min(ch.durable_next_offset());
        if start >= end {
            return Vec::new();
        }
        let skip = (start.0 - ch.first_offset.0) as usize;
        let n = (end.0 - start.0) as usize;
        let is_lost = |o: Offset| ch.lost.iter().any(|&(a, b)| a <= o && o < b);
        ch.records
            .iter()
            .skip(skip)
            .take(n)
            .enumerate()
            .map(|(i, data)| Record {
                offset: Offset(start.0 + i as u64),
                data: data.clone(),
            })
            .filter(|r| ch.lost.is_empty() || !is_lost(r.offset))
            .collect()
    }

    /// Every channel id ever taken, dropped ones included, in id order.
    pub fn channels(&self) -> impl Iterator<Item = (ChannelId, &ChannelState)> {
        self.channels
            .iter()
            .enumerate()
            .map(|(i, c)| (ChannelId(i as u32), c))
    }

    /// Number of live (registered, not dropped) channels.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no channel is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Payload bytes held.
    pub fn payload_bytes(&self) -> u64 {
        self.payload_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_clamps_to_durable_records() {
        let mut t = BufferTable::default();
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

    #[test]
    fn lost_offsets_are_left_out_of_reads() {
        let mut t = BufferTable::default();
        let id = t.insert("a", Offset(0), CommitSeq(1));
        let append = |t: &mut BufferTable, data: &'static [u8]| {
            let ch = t.get_mut(id).unwrap();
            ch.next_offset = Offset(ch.next_offset.0 + 1);
            t.push(id, Bytes::from_static(data));
        };
        append(&mut t, b"0");
        t.push_lost(id, Offset(3));
        append(&mut t, b"3");
        let r = t.read(id, Offset(0), Offset(10));
        let offsets: Vec<u64> = r.iter().map(|r| r.offset.0).collect();
        assert_eq!(offsets, [0, 3]);
        assert_eq!(&r[1].data[..], b"3");
        assert_eq!(t.get(id).unwrap().durable_next_offset(), Offset(4));
        let lost = t.insert_lost(CommitSeq(2));
        assert!(t.get(lost).unwrap().dropped);
        assert_eq!(t.len(), 1);
    }
}
