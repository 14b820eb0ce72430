//! A shard's channel table: channel name → id → the channel's state and
//! acknowledged records, touched only by the shard's own thread.
//!
//! The table is the only code that moves a channel's state, and it holds the
//! channel rules once: a registration takes the next id and starts where a
//! dropped channel of the same name stopped, offsets are dense and bounded by
//! [`OFFSET_MAX`], a drop frees the name. The shard asks it what a request
//! gets ([`ChannelTable::registration`], [`ChannelTable::appendable`]) before
//! anything is assigned, then applies it ([`ChannelTable::register`],
//! [`ChannelTable::assign`], [`ChannelTable::drop_channel`],
//! [`ChannelTable::checkpoint`], [`ChannelTable::truncate`]); recovery hands
//! it each logged entry ([`ChannelTable::replay`], in `replay.rs`), which
//! must be exactly what those calls would have written, or it is a
//! [`Contradiction`].
//!
//! The table also knows what each segment of the log holds that is still
//! needed ([`SegmentPins`]): the live records, and the *anchors* — for each
//! channel and each dropped name, the segment of the latest entry that
//! states it whole (a registration, or a state or retired entry carried
//! forward). The shard reclaims the segments before the first pinned one,
//! after carrying the anchors in them forward ([`ChannelTable::anchored_before`],
//! [`ChannelTable::state_entry`]) and, past the WAL space limit,
//! relocating the few live records that pin the oldest
//! ([`ChannelTable::records_before`]).
//!
//! Memory: every live record (acknowledged, not checkpointed, truncated or
//! dropped) has a 16-byte index entry ([`Loc`]: where its entry lies in the
//! WAL); the payloads of the newest ones stay in memory within the shard's
//! share of `Config::buffer_bytes_max` ([`PayloadCache`]), and the rest are
//! read back from the WAL by the shard ([`Found::InWal`]). Besides, the table keeps one
//! small [`ChannelState`] (name, counters; about 200 bytes) per channel
//! registered since the engine opened or found live by recovery, dropped ones
//! included (until the engine closes), and one entry per dropped name not
//! registered again (carried forward with the log, so that its offsets never
//! repeat). Lost ranges (offsets that `RecoveryMode::SkipDamaged` passed
//! over) cost one entry per range, never one per missing offset.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq};
use crate::wal::format::{encode_state_payload, StatePayload};

use super::cache::PayloadCache;
pub use super::channel::{ChannelState, Found, Loc, Released};
use super::pins::SegmentPins;
use super::replay::Deferred;
pub use super::replay::{Contradiction, EntryWord, Logged};
use super::slots::Slots;

/// The bound of offsets: a channel's next offset is at most this, so records
/// have offsets below it. Appends stop there and larger offsets from the WAL
/// are damage (a crafted or corrupted commit), so that offset arithmetic
/// never wraps. At a billion appends a second, 146 years.
pub const OFFSET_MAX: u64 = (1 << 62) - 1;

/// The largest channel id: ids from the WAL above it are damage, and a shard
/// refuses registrations past it.
pub const CHANNEL_ID_MAX: u32 = u32::MAX - 1;

/// Why the table refuses a request on a channel; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This shard never handed out the id: a handle from another engine.
    Unknown(ChannelId),
    /// A drop of the channel was accepted, in this commit.
    Dropped {
        /// The dropped channel's name.
        name: Box<str>,
        /// The commit that carries the drop.
        dropped_in: CommitSeq,
    },
    /// The records would pass [`OFFSET_MAX`].
    OffsetsExhausted {
        /// The channel's name.
        name: Box<str>,
    },
    /// Every channel id was handed out.
    IdsExhausted {
        /// Registrations the shard's WAL holds.
        registrations: u64,
    },
    /// A checkpoint or truncation at an offset the channel's live records
    /// do not allow.
    OutOfRange {
        /// `"checkpoint"` or `"truncate_from"`.
        operation: &'static str,
        /// The channel's name.
        name: Box<str>,
        /// The offset asked for.
        offset: Offset,
        /// The channel's first live offset.
        first: Offset,
        /// One past its last acknowledged record.
        next: Offset,
        /// Why the offset is refused.
        reason: &'static str,
    },
}

/// What a checkpoint or truncation asked of a live channel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the channel is already there. The answer waits for this
    /// commit, the one that put it there, to be durable.
    Unchanged(CommitSeq),
    /// Moves the channel's first offset (a checkpoint) or its next offset
    /// (a truncation) to this offset.
    To(Offset),
    /// Not yet: records of the channel are in commits not yet acknowledged
    /// (a truncation waits for them).
    AfterInFlight,
}

/// A channel or a dropped name whose whole state an entry states: what a
/// registration or a carried-forward entry anchors once it is durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// The channel (registered, or restated by a state entry).
    Channel(ChannelId),
    /// The dropped name, last held by the channel id (restated by a
    /// retired entry).
    Retired(Box<str>, ChannelId),
}

/// A dropped name not registered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// The channel that last had the name.
    pub id: ChannelId,
    /// Where a registration of the name starts: the dropped channel's next
    /// offset, so that offsets never collide with its.
    pub next: Offset,
    /// The commit that carries the drop (or the retired entry recovery
    /// found).
    pub dropped_in: CommitSeq,
    /// The segment of the latest entry that states the name whole.
    pub anchor: Option<SegmentSeq>,
}

/// Live records that sit in segments before a bound: a channel's held
/// records at offsets `from..`, to be written again (relocated).
#[derive(Debug, Clone)]
pub struct Stragglers {
    /// The channel.
    pub channel: ChannelId,
    /// The offset of the first record.
    pub from: Offset,
    /// The records, at `from`, `from + 1`, … (lost offsets are never among
    /// them: each run is a held stretch), cached or to be read.
    pub records: Vec<Found>,
}

/// One channel's hold on the log, for the report of who pins it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelHold {
    /// The channel's name.
    pub name: Box<str>,
    /// The oldest segment holding one of its live records.
    pub oldest_segment: SegmentSeq,
    /// Its live records.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Its first live offset.
    pub first_offset: Offset,
}

/// The table.
#[derive(Debug)]
pub struct ChannelTable {
    /// Live channels by name (the name shared with the channel's state).
    pub(super) by_name: HashMap<Arc<str>, ChannelId>,
    /// Dropped names, by name.
    pub(super) retired: HashMap<Box<str>, Retired>,
    /// Every channel with state, dropped ones included.
    pub(super) channels: Slots,
    /// The id the next registration gets (may exceed [`CHANNEL_ID_MAX`]:
    /// then no registration is possible).
    pub(super) next_id: u64,
    /// What each segment holds that is still needed.
    pub(super) pins: SegmentPins,
    /// Replay from a log start after reclamation: entries of channels whose
    /// state is restated later in the log.
    pub(super) deferred: Deferred,
    /// Which payloads stay in memory (unbounded unless set).
    pub(super) cache: PayloadCache,
}

impl Default for ChannelTable {
    fn default() -> ChannelTable {
        ChannelTable {
            by_name: HashMap::new(),
            retired: HashMap::new(),
            channels: Slots::default(),
            next_id: 0,
            pins: SegmentPins::default(),
            deferred: Deferred::default(),
            cache: PayloadCache::new(u64::MAX),
        }
    }
}

impl ChannelTable {
    /// Keeps payloads in memory within `budget` bytes from now on (see
    /// [`PayloadCache`]), letting the oldest go at once if over it.
    pub fn set_cache_budget(&mut self, budget: u64) {
        self.cache.budget = budget;
        self.evict();
    }

    /// Caches no payload of a record in a segment before `seq` (see
    /// [`PayloadCache::cache_from`]); `SegmentSeq(0)`: every one.
    pub fn cache_from(&mut self, seq: SegmentSeq) {
        self.cache.cache_from(seq);
    }

    /// The payload cache's accounting.
    pub fn cache(&self) -> &PayloadCache {
        &self.cache
    }

    /// A table for replaying a log that starts after reclaimed segments:
    /// ids below `next_id` were handed out before the log start, and their
    /// channels' entries wait for the state entries that restate them.
    pub fn for_log_start(next_id: u64) -> ChannelTable {
        ChannelTable {
            next_id,
            deferred: Deferred::below(next_id),
            ..ChannelTable::default()
        }
    }

    /// The live (registered, not dropped) channel named `name`.
    pub fn live(&self, name: &str) -> Option<&ChannelState> {
        self.get(*self.by_name.get(name)?)
    }

    /// Where a dropped `name` left off: its next offset and the commit of the drop.
    pub fn retired(&self, name: &str) -> Option<(Offset, CommitSeq)> {
        self.retired.get(name).map(|r| (r.next, r.dropped_in))
    }

    /// The channel `id`, dropped or not, if it has state.
    pub fn get(&self, id: ChannelId) -> Option<&ChannelState> {
        self.channels.get(&id)
    }

    /// Every channel with state, dropped ones included, in id order.
    pub fn channels(&self) -> Vec<&ChannelState> {
        let mut all: Vec<&ChannelState> = self.channels.values().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// Every dropped name not registered again, in name order.
    pub fn retired_names(&self) -> Vec<(&str, &Retired)> {
        let mut all: Vec<(&str, &Retired)> = self.retired.iter().map(|(n, r)| (&**n, r)).collect();
        all.sort_by_key(|(n, _)| *n);
        all
    }

    /// Number of live channels.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no channel is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The id the next registration gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// What each segment holds that is still needed.
    pub fn pins(&self) -> &SegmentPins {
        &self.pins
    }

    /// The id and first offset a registration of `name` (not live) gets: the
    /// next id, and offsets from where a dropped channel of the name stopped
    /// (so that its offsets never repeat), or 0.
    pub fn registration(&self, name: &str) -> Result<(ChannelId, Offset), Refusal> {
        debug_assert!(!self.by_name.contains_key(name), "{name:?} is live");
        let id = u32::try_from(self.next_id)
            .ok()
            .filter(|&i| i <= CHANNEL_ID_MAX)
            .ok_or(Refusal::IdsExhausted {
                registrations: self.next_id,
            })?;
        let first = self.retired.get(name).map_or(Offset(0), |r| r.next);
        Ok((ChannelId(id), first))
    }

    /// Registers `name` in commit `commit` as [`ChannelTable::registration`]
    /// says; the caller asked it first. The registration anchors the channel
    /// once it is durable ([`ChannelTable::anchored`]).
    pub fn register(&mut self, name: &str, commit: CommitSeq) -> (ChannelId, Offset) {
        let (id, first) = self
            .registration(name)
            .expect("the caller asked for the registration first");
        self.insert(name, id, first, commit);
        (id, first)
    }

    /// The offset the first of `count` new records of `id` gets.
    pub fn appendable(&self, id: ChannelId, count: u64) -> Result<Offset, Refusal> {
        let ch = self.open(id)?;
        if ch.next_offset.0.saturating_add(count) > OFFSET_MAX {
            return Err(Refusal::OffsetsExhausted {
                name: ch.name[..].into(),
            });
        }
        Ok(ch.next_offset)
    }

    /// Assigns offsets to `count` new records of `id`; returns the first.
    /// The caller asked [`ChannelTable::appendable`] first.
    pub fn assign(&mut self, id: ChannelId, count: u64) -> Offset {
        let ch = self
            .channels
            .get_mut(&id)
            .expect("the caller asked whether the records are appendable");
        let first = ch.next_offset;
        assert!(
            !ch.dropped() && first.0 + count <= OFFSET_MAX,
            "offsets assigned to a dropped channel or past OFFSET_MAX"
        );
        ch.next_offset = Offset(first.0 + count);
        first
    }

    /// Keeps an acknowledged record, written into segment `seq` at `loc`,
    /// at the channel's durable end, its payload (`payload()`) in memory if
    /// the cache takes it. A channel dropped while its commit was in flight
    /// keeps nothing.
    pub fn acknowledge(
        &mut self,
        id: ChannelId,
        loc: Loc,
        seq: SegmentSeq,
        payload: impl FnOnce() -> Bytes,
    ) {
        let ch = self.channels.get_mut(&id).expect("a channel of this table");
        if ch.dropped() {
            return;
        }
        let offset = ch.durable_next_offset();
        let keep = self.cache.admits(loc.len as usize, seq);
        let released = ch.push_record(loc, keep.then(payload), seq, &mut self.pins);
        assert!(
            ch.durable_next_offset() <= ch.next_offset,
            "acknowledged past the assigned offsets"
        );
        self.release(released);
        if keep {
            self.cache.cached(id, offset, loc.len as usize);
            self.evict();
        }
    }

    /// The cache's accounting follows payloads a change let go.
    pub(super) fn release(&mut self, r: Released) {
        if r.records > 0 {
            self.cache.released(r.records, r.bytes);
        }
    }

    /// Lets the oldest cached payloads go while the cache is over its
    /// budget (see [`PayloadCache`]).
    pub(super) fn evict(&mut self) {
        while self.cache.over() {
            let Some((id, offset)) = self.cache.order.pop_front() else {
                debug_assert_eq!(self.cache.records, 0, "cached records without an entry");
                break;
            };
            let Some(ch) = self.channels.get_mut(&id) else {
                continue;
            };
            if ch.first_cached_offset() == Some(offset) {
                let r = ch.uncache_front(1);
                self.release(r);
            }
        }
        if self.cache.needs_compaction() {
            let channels = &self.channels;
            self.cache.order.retain(|(id, offset)| {
                channels.get(id).is_some_and(|ch| {
                    ch.first_cached_offset().is_some_and(|f| f <= *offset)
                        && *offset < ch.durable_next_offset()
                })
            });
            self.cache.compacted();
        }
    }

    /// Drops the live channel `id` in commit `dropped_in`: frees its records
    /// and its name. Returns its next offset, where a later registration of
    /// the name starts. The name stays anchored where the channel was.
    pub fn drop_channel(&mut self, id: ChannelId, dropped_in: CommitSeq) -> Offset {
        let ch = self.channels.get_mut(&id).expect("a channel of this table");
        assert!(!ch.dropped(), "channel {:?} dropped twice", ch.name);
        ch.dropped_in = Some(dropped_in);
        let released = ch.release_records(&mut self.pins);
        let next = ch.next_offset;
        // What stays of a dropped channel is its durable end, for the calls
        // that arrive before the drop is durable.
        ch.first_offset = next;
        let anchor = ch.anchor.take();
        let name = ch.name.clone();
        self.release(released);
        self.by_name.remove(&name);
        let retired = Retired {
            id,
            next,
            dropped_in,
            anchor,
        };
        assert!(
            self.retired.insert(name[..].into(), retired).is_none(),
            "a live name was retired"
        );
        next
    }

    /// What a checkpoint of `id` through `through` does: it moves the first
    /// offset to `through + 1`, which must not pass the last acknowledged
    /// record; one at or below an earlier checkpoint changes nothing.
    pub fn checkpointing(&self, id: ChannelId, through: Offset) -> Result<Change, Refusal> {
        let ch = self.open(id)?;
        let first = Offset(through.0.saturating_add(1));
        if first <= ch.first_offset {
            return Ok(Change::Unchanged(ch.changed_in));
        }
        if first > ch.durable_next_offset() {
            return Err(ch.out_of_range(
                "checkpoint",
                through,
                "a checkpoint names an acknowledged record: an offset below the next offset",
            ));
        }
        Ok(Change::To(first))
    }

    /// Checkpoints `id` in commit `commit`: its records below `first` go.
    /// The caller asked [`ChannelTable::checkpointing`] first.
    pub fn checkpoint(&mut self, id: ChannelId, first: Offset, commit: CommitSeq) {
        let ch = self.channels.get_mut(&id).expect("a channel of this table");
        assert!(
            !ch.dropped() && ch.first_offset < first && first <= ch.durable_next_offset(),
            "a checkpoint outside the live records"
        );
        let released = ch.trim_front(first, &mut self.pins);
        ch.changed_in = commit;
        self.release(released);
    }

    /// What a truncation of `id` from `first_removed` on does: it moves the
    /// next offset back to `first_removed`, which must not be below the first
    /// live offset (checkpointed records stay gone) nor past the next
    /// offset. Records of the channel still in flight (or being relocated)
    /// make it wait.
    pub fn truncating(&self, id: ChannelId, first_removed: Offset) -> Result<Change, Refusal> {
        let ch = self.open(id)?;
        if first_removed < ch.first_offset {
            return Err(ch.out_of_range(
                "truncate_from",
                first_removed,
                "truncating there would remove checkpointed records",
            ));
        }
        if first_removed > ch.next_offset {
            return Err(ch.out_of_range(
                "truncate_from",
                first_removed,
                "nothing was written there: truncate at or below the next offset",
            ));
        }
        if ch.durable_next_offset() < ch.next_offset || ch.relocating > 0 {
            return Ok(Change::AfterInFlight);
        }
        if first_removed == ch.next_offset {
            return Ok(Change::Unchanged(ch.changed_in));
        }
        Ok(Change::To(first_removed))
    }

    /// Truncates `id` in commit `commit`: its records from `next` on go, and
    /// `next` is its next offset. The caller asked
    /// [`ChannelTable::truncating`] first.
    pub fn truncate(&mut self, id: ChannelId, next: Offset, commit: CommitSeq) {
        let ch = self.channels.get_mut(&id).expect("a channel of this table");
        assert!(
            !ch.dropped()
                && ch.first_offset <= next
                && next < ch.next_offset
                && ch.durable_next_offset() == ch.next_offset
                && ch.relocating == 0,
            "a truncation outside the live records, or with records in flight"
        );
        let released = ch.trim_back(next, &mut self.pins);
        ch.changed_in = commit;
        self.release(released);
    }

    /// Whether a subscription of `id` may start at `from`: not beyond the
    /// records handed out (below the first live one it starts there).
    pub fn following(&self, id: ChannelId, from: Offset) -> Result<(), Refusal> {
        let ch = self.open(id)?;
        if from > ch.durable_next_offset() {
            return Err(ch.out_of_range(
                "subscribe",
                from,
                "a subscription starts at or before the channel's next offset",
            ));
        }
        Ok(())
    }

    /// The first live offset of `id`.
    pub fn first_offset(&self, id: ChannelId) -> Result<Offset, Refusal> {
        Ok(self.open(id)?.first_offset)
    }

    /// Records of `id` with offsets in `from..to`, clamped to what is
    /// held, up to `bytes_max` payload bytes (at least one record): their
    /// payloads, or where to read them.
    pub fn read(
        &self,
        id: ChannelId,
        from: Offset,
        to: Offset,
        bytes_max: u64,
    ) -> Result<Vec<Found>, Refusal> {
        Ok(self.open(id)?.read(from, to, bytes_max))
    }

    /// One past the last acknowledged record of `id`.
    pub fn durable_next_offset(&self, id: ChannelId) -> Result<Offset, Refusal> {
        Ok(self.open(id)?.durable_next_offset())
    }

    /// Channels and dropped names anchored in segments before `seq` (in id
    /// order, then name order): what must be carried forward before those
    /// segments can go.
    pub fn anchored_before(&self, seq: SegmentSeq) -> Vec<Anchor> {
        let below = |a: Option<SegmentSeq>| a.is_some_and(|a| a < seq);
        let mut out: Vec<Anchor> = self
            .channels()
            .into_iter()
            .filter(|c| !c.dropped() && below(c.anchor))
            .map(|c| Anchor::Channel(c.id))
            .collect();
        out.extend(
            self.retired_names()
                .into_iter()
                .filter(|(_, r)| below(r.anchor))
                .map(|(name, r)| Anchor::Retired(name.into(), r.id)),
        );
        out
    }

    /// The entry that states `anchor` whole as it stands now: its kind's
    /// channel id, offset and payload (see `wal/format.rs`). `None` when the
    /// channel was dropped or the name registered again since.
    pub fn state_entry(&self, anchor: &Anchor) -> Option<(ChannelId, Offset, Vec<u8>)> {
        match anchor {
            Anchor::Channel(id) => {
                let ch = self.open(*id).ok()?;
                let payload = encode_state_payload(&StatePayload {
                    next: ch.next_offset,
                    lost: ch.h().lost.clone(),
                    name: &ch.name,
                });
                Some((ch.id, ch.first_offset, payload))
            }
            Anchor::Retired(name, id) => {
                let r = self.retired.get(name).filter(|r| r.id == *id)?;
                Some((r.id, r.next, name.as_bytes().to_vec()))
            }
        }
    }

    /// An entry stating `anchor` whole was made durable in segment `seq`:
    /// it is anchored there from now on (if it still stands as stated).
    pub fn anchored(&mut self, anchor: &Anchor, seq: SegmentSeq) {
        let slot = match anchor {
            Anchor::Channel(id) => {
                let Some(ch) = self.channels.get_mut(id) else {
                    return;
                };
                match ch.dropped_in {
                    None => &mut ch.anchor,
                    // Dropped since: the name's retired entry took its anchor.
                    Some(_) => match self.retired.get_mut(&ch.name[..]) {
                        Some(r) if r.id == *id => &mut r.anchor,
                        _ => return,
                    },
                }
            }
            Anchor::Retired(name, id) => match self.retired.get_mut(name) {
                Some(r) if r.id == *id => &mut r.anchor,
                _ => return,
            },
        };
        if let Some(old) = slot.replace(seq) {
            self.pins.remove_anchor(old);
        }
        self.pins.add_anchor(seq);
    }

    /// Live records held by segments before `seq`, a held stretch of a
    /// channel at a time, up to about `bytes_max` payload bytes (at least
    /// one stretch, so that a large record cannot stall relocation).
    pub fn records_before(&self, seq: SegmentSeq, bytes_max: u64) -> Vec<Stragglers> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for ch in self.channels() {
            if ch.dropped() || ch.oldest_record_segment().is_none_or(|s| s >= seq) {
                continue;
            }
            let mut index = 0u64;
            for run in ch.h().runs.iter() {
                let (from, to) = (index, index + run.records);
                index = to;
                if run.segment >= seq {
                    continue;
                }
                if !out.is_empty() && bytes + run.bytes > bytes_max {
                    return out;
                }
                bytes += run.bytes;
                // A run lies within one held stretch? Not when lost ranges
                // cut it: split it at each.
                let mut i = from;
                while i < to {
                    let offset = ch.offset_of(i);
                    let mut j = i + 1;
                    while j < to && ch.offset_of(j).0 == offset.0 + (j - i) {
                        j += 1;
                    }
                    let to = Offset(offset.0 + (j - i));
                    out.push(Stragglers {
                        channel: ch.id,
                        from: offset,
                        records: ch.read(offset, to, u64::MAX),
                    });
                    i = j;
                }
            }
        }
        out
    }

    /// `count` relocation entries of `id` were added to a commit: a
    /// truncation of the channel waits until they are acknowledged.
    pub fn relocating(&mut self, id: ChannelId, count: u64) {
        if let Some(ch) = self.channels.get_mut(&id) {
            ch.relocating += count;
        }
    }

    /// The relocation entries of `id` for offsets `from..` were made
    /// durable in segment `seq` at `locs`: it holds those records from now
    /// on.
    pub fn relocated(&mut self, id: ChannelId, from: Offset, locs: &[Loc], seq: SegmentSeq) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        ch.relocating -= locs.len() as u64;
        if !ch.dropped() {
            ch.relocated(from, locs, seq, &mut self.pins);
        }
    }

    /// Live channels whose records pin segments before `before`, the
    /// oldest first (ties by name), at most `max`.
    pub fn holds_before(&self, before: SegmentSeq, max: usize) -> Vec<ChannelHold> {
        let mut holds: Vec<ChannelHold> = self
            .channels
            .values()
            .filter(|c| !c.dropped())
            .filter_map(|c| {
                let oldest = c.oldest_record_segment().filter(|&s| s < before)?;
                Some(ChannelHold {
                    name: c.name[..].into(),
                    oldest_segment: oldest,
                    records: c.held_records(),
                    bytes: c.held_bytes(),
                    first_offset: c.first_offset,
                })
            })
            .collect();
        holds.sort_by(|a, b| (a.oldest_segment, &a.name).cmp(&(b.oldest_segment, &b.name)));
        holds.truncate(max);
        holds
    }

    pub(super) fn insert(
        &mut self,
        name: &str,
        id: ChannelId,
        first_offset: Offset,
        commit: CommitSeq,
    ) {
        assert_eq!(u64::from(id.0), self.next_id, "ids are handed out in order");
        assert!(
            !self.by_name.contains_key(name),
            "channel {name:?} registered twice"
        );
        let shared: Arc<str> = name.into();
        self.by_name.insert(shared.clone(), id);
        self.channels
            .insert(id, ChannelState::new(id, shared, first_offset, commit));
        self.next_id += 1;
        if let Some(r) = self.retired.remove(name) {
            if let Some(a) = r.anchor {
                self.pins.remove_anchor(a);
            }
        }
    }

    /// The channel `id` if it is live.
    pub(super) fn open(&self, id: ChannelId) -> Result<&ChannelState, Refusal> {
        let ch = self.get(id).ok_or(Refusal::Unknown(id))?;
        match ch.dropped_in {
            Some(dropped_in) => Err(Refusal::Dropped {
                name: ch.name[..].into(),
                dropped_in,
            }),
            None => Ok(ch),
        }
    }
}

impl ChannelState {
    /// The refusal of a checkpoint or truncation at `offset`.
    fn out_of_range(
        &self,
        operation: &'static str,
        offset: Offset,
        reason: &'static str,
    ) -> Refusal {
        Refusal::OutOfRange {
            operation,
            name: self.name[..].into(),
            offset,
            first: self.first_offset,
            next: self.durable_next_offset(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Record;

    /// The table's read, every payload cached (tables here cache all).
    fn read(
        t: &ChannelTable,
        id: ChannelId,
        from: Offset,
        to: Offset,
    ) -> Result<Vec<Record>, Refusal> {
        Ok(t.read(id, from, to, u64::MAX)?
            .into_iter()
            .map(|f| match f {
                Found::Cached(r) => r,
                Found::InWal { .. } => panic!("an unbounded cache holds every payload"),
            })
            .collect())
    }

    fn offsets_of(r: &[Record]) -> Vec<u64> {
        r.iter().map(|r| r.offset.0).collect()
    }

    fn register(t: &mut ChannelTable, name: &str, commit: u64) -> ChannelId {
        t.registration(name).expect("registrable");
        t.register(name, CommitSeq(commit)).0
    }

    fn append(t: &mut ChannelTable, id: ChannelId, data: &'static [u8]) -> Offset {
        t.appendable(id, 1).expect("appendable");
        let o = t.assign(id, 1);
        t.acknowledge(id, Loc::unplaced(data.len()), SegmentSeq(1), || {
            Bytes::from_static(data)
        });
        o
    }

    #[test]
    fn read_clamps_to_durable_records() {
        let mut t = ChannelTable::default();
        let id = register(&mut t, "a", 1);
        t.appendable(id, 3).unwrap();
        assert_eq!(t.assign(id, 3), Offset(0));
        t.acknowledge(id, Loc::unplaced(b"0".len()), SegmentSeq(1), || {
            Bytes::from_static(b"0")
        });
        t.acknowledge(id, Loc::unplaced(b"1".len()), SegmentSeq(1), || {
            Bytes::from_static(b"1")
        });
        let r = read(&t, id, Offset(1), Offset(100)).unwrap();
        assert_eq!(offsets_of(&r), [1]);
        assert_eq!(&r[0].data[..], b"1");
        assert!(read(&t, id, Offset(5), Offset(2)).unwrap().is_empty());
        assert_eq!(t.live("a").map(ChannelState::id), Some(id));
        assert_eq!(t.durable_next_offset(id), Ok(Offset(2)));
    }

    /// What the shard logs for each call, replayed into a second table,
    /// gives the same channels: accept and replay share the rules.
    #[test]
    fn what_accept_logs_replays_to_the_same_table() {
        let mut live = ChannelTable::default();
        let mut log: Vec<(u64, Logged<'static>)> = Vec::new();
        let reg = |t: &mut ChannelTable, log: &mut Vec<_>, name: &'static str, c| {
            let (id, first) = t.registration(name).unwrap();
            assert_eq!(t.register(name, CommitSeq(c)), (id, first));
            log.push((
                c,
                Logged::Register {
                    channel: id,
                    first,
                    name,
                },
            ));
            id
        };
        let a = reg(&mut live, &mut log, "a", 1);
        let b = reg(&mut live, &mut log, "b", 1);
        for (c, id, data) in [(2, a, &b"x"[..]), (2, b, b"y"), (3, a, b"z")] {
            let offset = append(&mut live, id, data);
            log.push((
                c,
                Logged::Append {
                    channel: id,
                    offset,
                    record: data,
                    at: Loc::unplaced(data.len()),
                },
            ));
        }
        let next = live.drop_channel(a, CommitSeq(4));
        log.push((4, Logged::Drop { channel: a, next }));
        let a2 = reg(&mut live, &mut log, "a", 5);
        assert_eq!(
            live.get(a2).unwrap().first_offset(),
            Offset(2),
            "no offset repeats"
        );

        let mut replayed = ChannelTable::default();
        for (c, e) in log {
            assert_eq!(
                replayed.replay(e, CommitSeq(c), SegmentSeq(1), false),
                Ok(0)
            );
        }
        let view = |t: &ChannelTable| -> Vec<_> {
            t.channels()
                .into_iter()
                .map(|c| {
                    let read = read(t, c.id(), Offset(0), Offset(u64::MAX));
                    (
                        (
                            c.id(),
                            c.name().to_string(),
                            c.first_offset(),
                            c.next_offset(),
                        ),
                        (
                            c.durable_next_offset(),
                            c.registered_in(),
                            c.dropped(),
                            read,
                        ),
                    )
                })
                .collect()
        };
        assert_eq!(view(&live), view(&replayed));
        assert_eq!(live.retired("a"), replayed.retired("a"));
        assert_eq!(replayed.len(), 2);
    }

    #[test]
    fn refusals_change_nothing() {
        let mut t = ChannelTable::default();
        let a = register(&mut t, "a", 1);
        assert_eq!(
            t.appendable(ChannelId(7), 1),
            Err(Refusal::Unknown(ChannelId(7)))
        );
        t.drop_channel(a, CommitSeq(2));
        let dropped = Err(Refusal::Dropped {
            name: "a".into(),
            dropped_in: CommitSeq(2),
        });
        assert_eq!(t.appendable(a, 1), dropped.clone().map(|_: ()| Offset(0)));
        assert_eq!(
            read(&t, a, Offset(0), Offset(1)),
            dropped.clone().map(|_: ()| vec![])
        );
        assert_eq!(t.durable_next_offset(a), dropped.map(|_: ()| Offset(0)));

        // A channel registered near the offset bound (possible only as a
        // lenient replay) takes exactly the offsets below it.
        let near = Logged::Register {
            channel: ChannelId(1),
            first: Offset(OFFSET_MAX - 1),
            name: "b",
        };
        assert_eq!(t.replay(near, CommitSeq(3), SegmentSeq(1), true), Ok(0));
        let b = t.live("b").unwrap().id();
        let exhausted = Err(Refusal::OffsetsExhausted { name: "b".into() });
        assert_eq!(t.appendable(b, 2), exhausted);
        assert_eq!(t.appendable(b, 1), Ok(Offset(OFFSET_MAX - 1)));

        let last = Logged::Register {
            channel: ChannelId(CHANNEL_ID_MAX),
            first: Offset(0),
            name: "c",
        };
        assert_eq!(t.replay(last, CommitSeq(4), SegmentSeq(1), true), Ok(0));
        let registrations = u64::from(CHANNEL_ID_MAX) + 1;
        assert_eq!(
            t.registration("d"),
            Err(Refusal::IdsExhausted { registrations })
        );
    }

    #[test]
    fn lost_offsets_and_ids_cost_one_entry_per_range() {
        let mut t = ChannelTable::default();
        let id = register(&mut t, "a", 1);
        append(&mut t, id, b"0");
        let jump = Logged::Append {
            channel: id,
            offset: Offset(3),
            record: b"3",
            at: Loc::unplaced(b"3".len()),
        };
        assert_eq!(
            t.replay(jump, CommitSeq(3), SegmentSeq(1), true),
            Ok(2),
            "offsets 1 and 2 lost"
        );
        let r = read(&t, id, Offset(0), Offset(10)).unwrap();
        assert_eq!(offsets_of(&r), [0, 3]);
        assert_eq!(&r[1].data[..], b"3");
        let ch = t.get(id).unwrap();
        assert_eq!(ch.durable_next_offset(), Offset(4));
        assert_eq!(
            (ch.held_records(), ch.lost_offsets()),
            (2, 2),
            "no placeholders"
        );
        assert_eq!(
            offsets_of(&read(&t, id, Offset(1), Offset(4)).unwrap()),
            [3]
        );

        let far = Logged::Register {
            channel: ChannelId(1 << 30),
            first: Offset(0),
            name: "b",
        };
        assert_eq!(t.replay(far, CommitSeq(4), SegmentSeq(1), true), Ok(0));
        assert!(t.get(ChannelId(5)).is_none());
        assert_eq!(t.get(ChannelId(1 << 30)).unwrap().name(), "b");
        assert_eq!(t.get(id).unwrap().name(), "a");
        assert_eq!(t.len(), 2);
        let orphan = Logged::Append {
            channel: ChannelId(9),
            offset: Offset(0),
            record: &[],
            at: Loc::unplaced(0),
        };
        assert_eq!(
            t.replay(orphan, CommitSeq(5), SegmentSeq(1), true),
            Ok(1),
            "its registration was lost"
        );
    }

    /// One row per contradiction: the entry, then what the table says.
    #[test]
    fn entries_that_contradict_the_rules_are_refused() {
        let mut t = ChannelTable::default();
        let a = register(&mut t, "a", 1);
        append(&mut t, a, b"0");
        let d = register(&mut t, "d", 1);
        t.drop_channel(d, CommitSeq(2));
        let rec = |channel, offset| Logged::Append {
            channel,
            offset: Offset(offset),
            record: &[],
            at: Loc::unplaced(0),
        };
        let reg = |channel, first, name| Logged::Register {
            channel: ChannelId(channel),
            first: Offset(first),
            name,
        };
        let name = |n: &str| Box::<str>::from(n);
        let out_of_range = |entry, offset| Contradiction::OutOfRange {
            entry,
            name: name("a"),
            offset: Offset(offset),
            first: Offset(0),
            next: Offset(1),
        };
        let rows: Vec<(Logged<'static>, Contradiction)> = vec![
            (
                rec(a, OFFSET_MAX),
                Contradiction::OffsetBeyondMax {
                    channel: a,
                    offset: Offset(OFFSET_MAX),
                },
            ),
            (
                rec(ChannelId(u32::MAX), 0),
                Contradiction::IdBeyondMax(ChannelId(u32::MAX)),
            ),
            (
                reg(2, 0, "a b"),
                Contradiction::InvalidName(
                    crate::validate_channel_name("a b").unwrap_err().to_string(),
                ),
            ),
            (
                reg(3, 0, "c"),
                Contradiction::IdOutOfOrder {
                    channel: ChannelId(3),
                    next: 2,
                },
            ),
            (reg(2, 0, "a"), Contradiction::RegisteredTwice(name("a"))),
            (
                reg(2, 5, "e"),
                Contradiction::FirstOffset {
                    name: name("e"),
                    offset: Offset(5),
                    expected: Offset(0),
                },
            ),
            (
                rec(d, 0),
                Contradiction::NoChannel {
                    entry: EntryWord::Record,
                    channel: d,
                },
            ),
            (
                Logged::Drop {
                    channel: ChannelId(2),
                    next: Offset(0),
                },
                Contradiction::NoChannel {
                    entry: EntryWord::Drop,
                    channel: ChannelId(2),
                },
            ),
            (
                rec(a, 0),
                Contradiction::OffsetOutOfOrder {
                    entry: EntryWord::Record,
                    name: name("a"),
                    offset: Offset(0),
                    expected: Offset(1),
                },
            ),
            (
                Logged::Drop {
                    channel: a,
                    next: Offset(2),
                },
                Contradiction::OffsetOutOfOrder {
                    entry: EntryWord::Drop,
                    name: name("a"),
                    offset: Offset(2),
                    expected: Offset(1),
                },
            ),
            (
                Logged::Checkpoint {
                    channel: a,
                    first: Offset(0),
                },
                out_of_range(EntryWord::Checkpoint, 0),
            ),
            (
                Logged::Checkpoint {
                    channel: a,
                    first: Offset(2),
                },
                out_of_range(EntryWord::Checkpoint, 2),
            ),
            (
                Logged::Truncate {
                    channel: a,
                    next: Offset(1),
                },
                out_of_range(EntryWord::Truncate, 1),
            ),
            (
                Logged::Truncate {
                    channel: d,
                    next: Offset(0),
                },
                Contradiction::NoChannel {
                    entry: EntryWord::Truncate,
                    channel: d,
                },
            ),
        ];
        for (entry, expected) in rows {
            let shown = format!("{entry:?}");
            assert_eq!(
                t.replay(entry, CommitSeq(3), SegmentSeq(1), false),
                Err(expected),
                "{shown}"
            );
        }
        assert_eq!(t.get(a).unwrap().next_offset(), Offset(1), "nothing moved");
        assert_eq!(read(&t, a, Offset(0), Offset(9)).unwrap().len(), 1);
    }

    /// Checkpoints and truncations: what the shard asks, what it applies,
    /// and the same table again from the log.
    #[test]
    fn checkpoints_and_truncations_replay_to_the_same_table() {
        let mut live = ChannelTable::default();
        let a = register(&mut live, "a", 1);
        let mut log: Vec<(u64, Logged<'static>)> = vec![(
            1,
            Logged::Register {
                channel: a,
                first: Offset(0),
                name: "a",
            },
        )];
        let put = |t: &mut ChannelTable, log: &mut Vec<_>, data: &'static [u8]| {
            let offset = append(t, a, data);
            log.push((
                2,
                Logged::Append {
                    channel: a,
                    offset,
                    record: data,
                    at: Loc::unplaced(data.len()),
                },
            ));
        };
        for d in [&b"0"[..], b"1", b"2", b"3", b"4"] {
            put(&mut live, &mut log, d);
        }
        assert_eq!(live.checkpointing(a, Offset(1)), Ok(Change::To(Offset(2))));
        live.checkpoint(a, Offset(2), CommitSeq(3));
        log.push((
            3,
            Logged::Checkpoint {
                channel: a,
                first: Offset(2),
            },
        ));
        assert_eq!(
            live.checkpointing(a, Offset(0)),
            Ok(Change::Unchanged(CommitSeq(3))),
            "below the checkpoint: nothing to do once commit 3 is durable"
        );
        assert_eq!(live.first_offset(a), Ok(Offset(2)));
        assert_eq!(live.truncating(a, Offset(4)), Ok(Change::To(Offset(4))));
        live.truncate(a, Offset(4), CommitSeq(4));
        log.push((
            4,
            Logged::Truncate {
                channel: a,
                next: Offset(4),
            },
        ));
        assert_eq!(
            live.truncating(a, Offset(4)),
            Ok(Change::Unchanged(CommitSeq(4)))
        );
        put(&mut live, &mut log, b"4 again");
        let got = read(&live, a, Offset(0), Offset(9)).unwrap();
        assert_eq!(offsets_of(&got), [2, 3, 4]);
        assert_eq!(
            &got[2].data[..],
            b"4 again",
            "offset 4 names its second record"
        );

        let mut replayed = ChannelTable::default();
        for (c, e) in log {
            assert_eq!(
                replayed.replay(e, CommitSeq(c), SegmentSeq(1), false),
                Ok(0)
            );
        }
        assert_eq!(read(&replayed, a, Offset(0), Offset(9)), Ok(got));
        let ends = |t: &ChannelTable| {
            let c = t.get(a).unwrap();
            (c.first_offset(), c.next_offset(), c.durable_next_offset())
        };
        assert_eq!(ends(&live), ends(&replayed));
        assert_eq!(ends(&live), (Offset(2), Offset(5), Offset(5)));

        // Records assigned but not acknowledged hold a truncation back.
        live.appendable(a, 1).unwrap();
        live.assign(a, 1);
        assert_eq!(live.truncating(a, Offset(3)), Ok(Change::AfterInFlight));
        live.acknowledge(a, Loc::unplaced(b"5".len()), SegmentSeq(1), || {
            Bytes::from_static(b"5")
        });
        assert_eq!(live.truncating(a, Offset(3)), Ok(Change::To(Offset(3))));
    }

    #[test]
    fn checkpoints_and_truncations_outside_the_live_records_are_refused() {
        let mut t = ChannelTable::default();
        let a = register(&mut t, "a", 1);
        append(&mut t, a, b"0");
        append(&mut t, a, b"1");
        t.checkpoint(a, Offset(1), CommitSeq(2));
        let refused = |operation, offset, reason| {
            Err(Refusal::OutOfRange {
                operation,
                name: "a".into(),
                offset: Offset(offset),
                first: Offset(1),
                next: Offset(2),
                reason,
            })
        };
        let Err(Refusal::OutOfRange { reason: beyond, .. }) = t.checkpointing(a, Offset(2)) else {
            panic!("a checkpoint of an offset not written");
        };
        assert_eq!(
            t.checkpointing(a, Offset(2)),
            refused("checkpoint", 2, beyond)
        );
        assert_eq!(
            t.checkpointing(a, Offset(u64::MAX)),
            refused("checkpoint", u64::MAX, beyond)
        );
        let Err(Refusal::OutOfRange { reason: below, .. }) = t.truncating(a, Offset(0)) else {
            panic!("a truncation of checkpointed records");
        };
        assert_eq!(
            t.truncating(a, Offset(0)),
            refused("truncate_from", 0, below)
        );
        assert!(matches!(
            t.truncating(a, Offset(3)),
            Err(Refusal::OutOfRange {
                offset: Offset(3),
                ..
            })
        ));
        assert_eq!(t.first_offset(a), Ok(Offset(1)), "nothing moved");
        assert_eq!(t.durable_next_offset(a), Ok(Offset(2)));
        t.drop_channel(a, CommitSeq(3));
        assert!(matches!(
            t.checkpointing(a, Offset(0)),
            Err(Refusal::Dropped { .. })
        ));
    }

    /// Offsets `SkipDamaged` found lost are cut by checkpoints and
    /// truncations like held ones; a checkpoint past the next offset (the
    /// records between lost) counts them lost.
    #[test]
    fn checkpoints_and_truncations_cut_lost_ranges() {
        let mut t = ChannelTable::default();
        let a = register(&mut t, "a", 1);
        append(&mut t, a, b"0");
        let at = |offset: u64, data: &'static [u8]| Logged::Append {
            channel: a,
            offset: Offset(offset),
            record: data,
            at: Loc::unplaced(data.len()),
        };
        assert_eq!(
            t.replay(at(3, b"3"), CommitSeq(2), SegmentSeq(1), true),
            Ok(2)
        );
        assert_eq!(
            t.replay(at(6, b"6"), CommitSeq(3), SegmentSeq(1), true),
            Ok(2)
        );
        // Held 0, lost 1..3, held 3, lost 4..6, held 6.
        t.checkpoint(a, Offset(2), CommitSeq(4));
        let ch = t.get(a).unwrap();
        assert_eq!((ch.held_records(), ch.lost_offsets()), (2, 3));
        assert_eq!(
            offsets_of(&read(&t, a, Offset(0), Offset(9)).unwrap()),
            [3, 6]
        );
        t.truncate(a, Offset(5), CommitSeq(5));
        let ch = t.get(a).unwrap();
        assert_eq!((ch.held_records(), ch.lost_offsets()), (1, 2));
        assert_eq!(ch.durable_next_offset(), Offset(5));
        assert_eq!(offsets_of(&read(&t, a, Offset(0), Offset(9)).unwrap()), [3]);
        let past = Logged::Checkpoint {
            channel: a,
            first: Offset(8),
        };
        assert_eq!(
            t.replay(past, CommitSeq(6), SegmentSeq(1), true),
            Ok(3),
            "offsets 5..8 lost"
        );
        let ch = t.get(a).unwrap();
        assert_eq!(
            (ch.first_offset(), ch.next_offset()),
            (Offset(8), Offset(8))
        );
        assert_eq!((ch.held_records(), ch.lost_offsets()), (0, 0));
    }
}
