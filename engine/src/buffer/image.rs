//! The channel table as an index snapshot holds it (`wal/snapshot.rs`),
//! and back: every live channel with its lost ranges and its records'
//! places, every dropped name, and the next id. Payloads are not part of
//! it; a table made from an image holds none in memory until they are
//! read. (Work in progress: not yet used by the engine.)

use std::collections::VecDeque;
use std::sync::Arc;

use crate::wal::snapshot::{ChannelImage, PlaceImage, RetiredImage};

use super::channel::{ChannelState, Held, Loc};
use super::channels::{ChannelTable, Retired, CHANNEL_ID_MAX, OFFSET_MAX};
use super::pins::Runs;

impl ChannelTable {
    /// The live channels (in id order) and the dropped names (in name
    /// order), as a snapshot holds them.
    pub fn image(&self) -> (Vec<ChannelImage>, Vec<RetiredImage>) {
        let channels = self
            .channels()
            .into_iter()
            .filter(|c| !c.dropped())
            .map(|c| {
                let h = c.h();
                ChannelImage {
                    id: c.id,
                    name: c.name.to_string(),
                    first: c.first_offset,
                    next: c.next_offset,
                    registered_in: c.registered_in,
                    changed_in: c.changed_in,
                    anchor: c.anchor,
                    lost: h.lost.clone(),
                    runs: h.runs.iter().map(|r| (r.segment, r.records)).collect(),
                    records: h
                        .records
                        .iter()
                        .map(|l| PlaceImage {
                            commit: l.commit,
                            position: l.position,
                            len: l.len,
                        })
                        .collect(),
                }
            })
            .collect();
        let retired = self
            .retired_names()
            .into_iter()
            .map(|(name, r)| RetiredImage {
                name: name.to_string(),
                id: r.id,
                next: r.next,
                dropped_in: r.dropped_in,
                anchor: r.anchor,
            })
            .collect();
        (channels, retired)
    }

    /// The table an image describes, with a payload cache of `budget`
    /// bytes (empty). `Err` names what does not hold together: ids at or
    /// past `next_id`, a name twice, offsets that do not add up, lost
    /// ranges outside the live offsets, runs that do not cover the records.
    pub fn from_image(
        next_id: u64,
        channels: Vec<ChannelImage>,
        retired: Vec<RetiredImage>,
        budget: u64,
    ) -> Result<ChannelTable, &'static str> {
        let mut t = ChannelTable::default();
        t.set_cache_budget(budget);
        if next_id > u64::from(CHANNEL_ID_MAX) + 1 {
            return Err("next id beyond the largest");
        }
        t.next_id = next_id;
        for c in channels {
            t.adopt_image(c)?;
        }
        for r in retired {
            if u64::from(r.id.0) >= next_id || r.next.0 > OFFSET_MAX {
                return Err("a dropped name's id or offset");
            }
            if t.by_name.contains_key(r.name.as_str()) || t.retired.contains_key(r.name.as_str()) {
                return Err("a dropped name also live, or twice");
            }
            if let Some(a) = r.anchor {
                t.pins.add_anchor(a);
            }
            t.retired.insert(
                r.name.into(),
                Retired {
                    id: r.id,
                    next: r.next,
                    dropped_in: r.dropped_in,
                    anchor: r.anchor,
                },
            );
        }
        Ok(t)
    }

    fn adopt_image(&mut self, c: ChannelImage) -> Result<(), &'static str> {
        let ChannelImage {
            id,
            name,
            first,
            next,
            registered_in,
            changed_in,
            anchor,
            lost,
            runs,
            records,
        } = c;
        if u64::from(id.0) >= self.next_id || self.channels.contains_key(&id) {
            return Err("a channel id at or past the next, or twice");
        }
        if self.by_name.contains_key(name.as_str()) {
            return Err("a channel name twice");
        }
        if first > next || next.0 > OFFSET_MAX {
            return Err("a channel's offsets");
        }
        let mut at = first;
        let mut lost_count = 0u64;
        for &(from, to) in &lost {
            if from < at || to <= from || to > next {
                return Err("a lost range outside the live offsets");
            }
            lost_count += to.0 - from.0;
            at = to;
        }
        if next.0 - first.0 != records.len() as u64 + lost_count {
            return Err("records and lost offsets do not fill the live offsets");
        }
        let mut held = Held {
            records: records
                .iter()
                .map(|p| Loc {
                    commit: p.commit,
                    position: p.position,
                    len: p.len,
                })
                .collect::<VecDeque<Loc>>(),
            cached: VecDeque::new(),
            runs: Runs::default(),
            lost,
            lost_count,
        };
        let mut index = 0usize;
        for (segment, n) in runs.into_iter().filter(|&(_, n)| n > 0) {
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| index.checked_add(n))
                .filter(|&end| end <= records.len())
                .ok_or("runs past the records")?;
            let bytes = records[index..end].iter().map(|p| u64::from(p.len)).sum();
            held.runs.push_back_many(segment, n, bytes, &mut self.pins);
            index = end;
        }
        if index != held.records.len() {
            return Err("runs short of the records");
        }
        let shared: Arc<str> = name.into();
        let mut ch = ChannelState::new(id, shared.clone(), first, registered_in);
        ch.next_offset = next;
        ch.changed_in = changed_in;
        if !held.records.is_empty() || !held.lost.is_empty() {
            ch.held = Some(Box::new(held));
        }
        if let Some(a) = anchor {
            self.pins.add_anchor(a);
        }
        ch.anchor = anchor;
        self.by_name.insert(shared, id);
        self.channels.insert(id, ch);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::buffer::channels::{Found, Logged};
    use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq};

    fn places(t: &ChannelTable, id: ChannelId) -> Vec<(u64, Loc)> {
        t.read(id, Offset(0), Offset(u64::MAX), u64::MAX)
            .unwrap()
            .into_iter()
            .map(|f| match f {
                Found::InWal { offset, loc, .. } => (offset.0, loc),
                Found::Cached(_) => panic!("a budget of 0 caches nothing"),
            })
            .collect()
    }

    /// A table with records in two segments, a checkpoint, a lost range,
    /// a dropped name and anchors: its image makes the same table.
    #[test]
    fn a_table_made_from_its_image_is_the_same_table() {
        let mut t = ChannelTable::default();
        t.set_cache_budget(0);
        let reg = |t: &mut ChannelTable, name: &str, c| {
            t.registration(name).unwrap();
            let (id, _) = t.register(name, CommitSeq(c));
            t.anchored(&super::super::channels::Anchor::Channel(id), SegmentSeq(1));
            id
        };
        let a = reg(&mut t, "a", 1);
        let b = reg(&mut t, "b", 1);
        let gone = reg(&mut t, "gone", 2);
        for i in 0..6u32 {
            let id = if i % 2 == 0 { a } else { b };
            t.appendable(id, 1).unwrap();
            t.assign(id, 1);
            let at = Loc {
                commit: CommitSeq(3 + u64::from(i)),
                position: 4096 * (1 + i),
                len: 10 + i,
            };
            let seg = SegmentSeq(1 + u64::from(i / 3));
            t.acknowledge(id, at, seg, || Bytes::from(vec![0; 10 + i as usize]));
        }
        t.checkpoint(a, Offset(1), CommitSeq(9));
        let jump = Logged::Append {
            channel: b,
            offset: Offset(5),
            record: b"x",
            at: Loc::unplaced(1),
        };
        assert_eq!(t.replay(jump, CommitSeq(10), SegmentSeq(2), true), Ok(2));
        t.drop_channel(gone, CommitSeq(11));
        let (channels, retired) = t.image();
        let u = ChannelTable::from_image(t.next_id(), channels, retired, 0).unwrap();
        for id in [a, b] {
            let (x, y) = (t.get(id).unwrap(), u.get(id).unwrap());
            assert_eq!(
                (
                    x.name(),
                    x.first_offset(),
                    x.next_offset(),
                    x.durable_next_offset()
                ),
                (
                    y.name(),
                    y.first_offset(),
                    y.next_offset(),
                    y.durable_next_offset()
                )
            );
            assert_eq!(x.lost_ranges(), y.lost_ranges());
            assert_eq!(x.anchor(), y.anchor());
            assert_eq!(places(&t, id), places(&u, id));
        }
        assert_eq!(
            t.pins().iter().collect::<Vec<_>>(),
            u.pins().iter().collect::<Vec<_>>()
        );
        assert_eq!(t.retired("gone"), u.retired("gone"));
        assert_eq!(u.live("gone").map(|c| c.id()), None);
        assert_eq!(u.next_id(), t.next_id());
        // The image of the rebuilt table is the image it was built from.
        assert_eq!(u.image(), t.image());
    }

    /// Images that do not hold together are refused.
    #[test]
    fn images_that_do_not_add_up_are_refused() {
        let ok = ChannelImage {
            id: ChannelId(0),
            name: "a".into(),
            first: Offset(0),
            next: Offset(1),
            registered_in: CommitSeq(1),
            changed_in: CommitSeq(1),
            anchor: Some(SegmentSeq(1)),
            lost: vec![],
            runs: vec![(SegmentSeq(1), 1)],
            records: vec![PlaceImage {
                commit: CommitSeq(2),
                position: 4096,
                len: 3,
            }],
        };
        assert!(ChannelTable::from_image(1, vec![ok.clone()], vec![], 0).is_ok());
        let bad = [
            ChannelImage {
                next: Offset(2),
                ..ok.clone()
            },
            ChannelImage {
                runs: vec![(SegmentSeq(1), 2)],
                ..ok.clone()
            },
            ChannelImage {
                runs: vec![],
                ..ok.clone()
            },
            ChannelImage {
                lost: vec![(Offset(1), Offset(3))],
                ..ok.clone()
            },
            ChannelImage {
                id: ChannelId(1),
                ..ok.clone()
            },
        ];
        for c in bad {
            assert!(
                ChannelTable::from_image(1, vec![c.clone()], vec![], 0).is_err(),
                "{c:?}"
            );
        }
        assert!(ChannelTable::from_image(2, vec![ok.clone(), ok.clone()], vec![], 0).is_err());
    }
}
