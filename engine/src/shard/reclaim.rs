//! Reclamation: the segments at the start of the log that replay no longer
//! needs go back to the preparer, to be recycled as the next segments or
//! removed.
//!
//! A segment is needed while it holds a live record (acknowledged, not
//! checkpointed, truncated or dropped) or an *anchor* — the latest entry
//! that states a channel or a dropped name whole (a registration, or a
//! state or retired entry). Records go only when the service lets them
//! go; anchors are moved by writing their channel's state again
//! (*carrying it forward*) into the segment being written. So, in steps:
//!
//! 1. **Plan**: the new log start is the oldest segment holding a live
//!    record (or the segment being written). Past `Config::wal_bytes_max`,
//!    the live records of the oldest segments, up to a quarter segment, are
//!    relocated — written again — so that the start can move past them.
//! 2. **Carry**: the anchors before the new start, and the relocations,
//!    become entries of the next commits, ahead of requests; the last
//!    commit that carries them is made durable in every durability mode.
//! 3. **Publish**: once it is durable, and nothing before the new start is
//!    pinned any more, the shard manifest records the new log start (a
//!    synced write), and only then do the files before it go to the
//!    preparer. A crash before the manifest leaves the old start (the
//!    carried entries restate what the log already says); after it, files
//!    before the start are never read and the next open recycles or
//!    removes them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::buffer::channels::{Anchor, Found, Loc, Stragglers};
use crate::error::Result;
use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq};
use crate::wal::format::{entry_bytes, EntryKind};
use crate::wal::manifest::{LogStart, ManifestRecord};

use super::admission::{Admit, Need};
use super::reads::Purpose;
use super::run::Shard;

/// Payloads of records to relocate are on their way from the WAL.
struct Waiting;

/// An entry carried forward: its channel, offset field and payload.
type CarriedEntry = (ChannelId, Offset, Vec<u8>);

/// An entry to carry forward.
#[derive(Debug)]
pub(super) enum Carry {
    /// A channel's or a dropped name's state, written whole again.
    State(Anchor),
    /// Live records written again.
    Relocate(Stragglers),
}

/// A reclamation on its way.
#[derive(Debug, Default)]
pub(super) struct Reclaim {
    /// Entries not yet in a commit, in order.
    carry: VecDeque<Carry>,
    /// The log start the carried entries make possible.
    target: Option<SegmentSeq>,
    /// The last commit carrying them, or holding a request the plan
    /// counted on: the log start moves only once it is durable.
    through: Option<CommitSeq>,
    /// The plan relocates records: the next plan goes on (past the space
    /// limit, a quarter segment at a time) once this one is done.
    relocating: bool,
    /// Something moved that may free the oldest segments (a checkpoint, a
    /// truncation, a drop, a segment change): plan again.
    pub(super) due: bool,
    /// Payloads of records to relocate are being read from the WAL: where
    /// each was when the read started (by channel and offset).
    fetching: Option<HashMap<(ChannelId, u64), Loc>>,
    /// Payloads read for relocation: by channel and offset, with where
    /// they were read (a record written again since is not this one).
    fetched: HashMap<(ChannelId, u64), (Loc, Bytes)>,
}

impl Reclaim {
    /// Nothing on its way; a plan is due (after an open).
    pub(super) fn due() -> Reclaim {
        Reclaim {
            due: true,
            ..Reclaim::default()
        }
    }

    /// Whether a reclamation is under way (planned, not yet published).
    pub(super) fn under_way(&self) -> bool {
        self.target.is_some() || self.fetching.is_some() || !self.carry.is_empty()
    }

    /// Whether carried entries wait for a commit.
    pub(super) fn has_carry(&self) -> bool {
        !self.carry.is_empty()
    }

    /// Drops the plan on its way.
    pub(super) fn abandon(&mut self) {
        self.carry.clear();
        self.target = None;
        self.through = None;
        self.relocating = false;
        self.fetched.clear();
    }
}

impl Shard {
    /// Plans a reclamation when one may be possible and none is on its way,
    /// and publishes one whose carried entries are durable.
    pub(super) fn reclaim_step(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if self.reclaim.target.is_some() {
            self.publish_when_durable();
        } else if self.reclaim.due && !self.closing && !self.snapshots.draining {
            self.reclaim.due = false;
            self.plan_reclaim();
        }
    }

    /// Step 1: where the log may start, what must be carried forward for
    /// that, and (past the space limit) which records to relocate.
    fn plan_reclaim(&mut self) {
        let start = self.log_start();
        let active = self.segment.seq;
        let oldest = self
            .table
            .pins()
            .oldest_with_records()
            .unwrap_or(active)
            .min(active);
        let mut target = oldest;
        let relocate = self.stragglers(oldest, active);
        if let Some((_, all)) = &relocate {
            if *all {
                target = self.next_held_after(oldest, active);
            }
        }
        let relocate = relocate.map(|(r, _)| r).unwrap_or_default();
        if target <= start && relocate.is_empty() {
            return;
        }
        // Relocated records first: replay holds a channel's records back
        // until the entry that states it, which must find them.
        let mut carry: VecDeque<Carry> = self.chunks(relocate).map(Carry::Relocate).collect();
        carry.extend(
            self.table
                .anchored_before(target)
                .into_iter()
                .map(Carry::State),
        );
        self.reclaim.relocating = !carry.iter().all(|c| matches!(c, Carry::State(_)));
        self.reclaim.carry = carry;
        self.reclaim.target = Some(target);
        // The plan counted on every checkpoint, truncation, drop and
        // registration accepted so far: the log start moves only once they
        // are durable, also in periodic mode.
        self.reclaim.through = Some(self.last_accepted());
        if !self.building.builder.is_empty() {
            self.building.sync_now = true;
        }
        if !self.reclaim.has_carry() {
            self.publish_when_durable();
        }
    }

    /// Past the space limit: the live records of the oldest segment that
    /// holds some, relocated when writing them again costs at most half of
    /// what it frees — the segment and the empty ones up to the next that
    /// holds records — a quarter segment at a time. Returns them, and
    /// whether they are all of that segment's.
    fn stragglers(
        &self,
        oldest: SegmentSeq,
        active: SegmentSeq,
    ) -> Option<(Vec<Stragglers>, bool)> {
        if !self.over_space_limit() || oldest >= active {
            return None;
        }
        let next = self.next_held_after(oldest, active);
        let frees: u64 = self
            .log
            .iter()
            .filter(|s| s.seq >= oldest && s.seq < next)
            .map(|s| s.bytes)
            .sum();
        let cost = self.table.pins().get(oldest).bytes;
        if cost.saturating_mul(2) > frees {
            // Live records fill the WAL: moving them frees nothing.
            return None;
        }
        let budget = self.config.segment_bytes / 4;
        let found = self.table.records_before(SegmentSeq(oldest.0 + 1), budget);
        let moved: u64 = found
            .iter()
            .flat_map(|s| s.records.iter())
            .map(|r| r.len() as u64)
            .sum();
        // `found` says where each is; admit_carry reads those not cached.
        Some((found, moved >= cost))
    }

    /// The first segment after `seq` holding a live record, or `active`.
    fn next_held_after(&self, seq: SegmentSeq, active: SegmentSeq) -> SegmentSeq {
        self.table
            .pins()
            .iter()
            .find(|(s, p)| *s > seq && p.records > 0)
            .map_or(active, |(s, _)| s)
            .min(active)
    }

    /// Relocated stretches cut into pieces that each fit a commit.
    fn chunks(&self, found: Vec<Stragglers>) -> impl Iterator<Item = Stragglers> {
        let most = self.config.commit_bytes_max / 2;
        found.into_iter().flat_map(move |s| {
            let mut pieces = Vec::new();
            let mut piece = Stragglers {
                channel: s.channel,
                from: s.from,
                records: Vec::new(),
            };
            let mut bytes = 0usize;
            for (i, r) in s.records.into_iter().enumerate() {
                let n = entry_bytes(r.len());
                if !piece.records.is_empty() && bytes + n > most {
                    let next = Offset(s.from.0 + i as u64);
                    let full = std::mem::replace(
                        &mut piece,
                        Stragglers {
                            channel: s.channel,
                            from: next,
                            records: Vec::new(),
                        },
                    );
                    pieces.push(full);
                    bytes = 0;
                }
                bytes += n;
                piece.records.push(r);
            }
            pieces.push(piece);
            pieces
        })
    }

    /// The newest commit holding an accepted request: the one being built
    /// if it holds any, else the last one started.
    fn last_accepted(&self) -> CommitSeq {
        let building = self.building.builder.commit_seq();
        if self.building.builder.is_empty() {
            CommitSeq(building.0.saturating_sub(1))
        } else {
            building
        }
    }

    /// Step 2: carried entries join the commit being built, ahead of the
    /// requests waiting in the inbox, while they fit. Each is made from the
    /// channel as it is now: what was dropped, checkpointed or truncated
    /// since the plan is not carried.
    pub(super) fn admit_carry(&mut self) {
        if self.failed.is_some() {
            return;
        }
        while let Some(item) = self.reclaim.carry.front() {
            let entries = match item {
                Carry::State(anchor) => self.table.state_entry(anchor).map(|e| vec![e]),
                Carry::Relocate(s) => {
                    let (channel, from, count) = (s.channel, s.from, s.records.len());
                    match self.relocation_payloads(channel, from, count) {
                        Ok(entries) => entries,
                        // Their payloads are on their way from the WAL.
                        Err(Waiting) => return,
                    }
                }
            };
            let Some(entries) = entries.filter(|e: &Vec<_>| !e.is_empty()) else {
                // Dropped, let go or registered again since the plan.
                self.reclaim.carry.pop_front();
                continue;
            };
            let bytes: usize = entries.iter().map(|(_, _, p)| entry_bytes(p.len())).sum();
            if !self.building.builder.could_fit(0, bytes) {
                // A state entry larger than a commit (a channel with more
                // lost ranges than one holds): this plan cannot be carried.
                // The next segment change plans again.
                self.reclaim.abandon();
                return;
            }
            if !matches!(self.admit(0, bytes, Need::Frees), Admit::Yes) {
                return;
            }
            let item = self.reclaim.carry.pop_front().expect("looked at above");
            self.push_carry(item, entries);
        }
    }

    /// Adds a carried entry (or relocated records) to the commit being
    /// built.
    fn push_carry(&mut self, item: Carry, entries: Vec<CarriedEntry>) {
        let batch = &mut self.building;
        let kind = match &item {
            Carry::State(Anchor::Channel(_)) => EntryKind::State,
            Carry::State(Anchor::Retired(..)) => EntryKind::Retired,
            Carry::Relocate(_) => EntryKind::Relocate,
        };
        for (channel, offset, payload) in &entries {
            let at = batch.builder.push(kind, *channel, *offset, payload);
            if kind == EntryKind::Relocate {
                batch.relocated_at.push((at, payload.len() as u32));
            }
        }
        match item {
            Carry::State(anchor) => {
                batch.anchors.push(anchor);
                self.metrics.entries_carried.fetch_add(1, Ordering::Relaxed);
            }
            Carry::Relocate(_) => {
                // Consecutive offsets, one relocation each.
                let mut i = 0;
                while i < entries.len() {
                    let (channel, from, _) = entries[i];
                    let mut j = i + 1;
                    while j < entries.len() && entries[j].1 .0 == from.0 + (j - i) as u64 {
                        j += 1;
                    }
                    let count = (j - i) as u64;
                    self.table.relocating(channel, count);
                    batch
                        .relocations
                        .push((channel, from, Offset(from.0 + count)));
                    i = j;
                }
                self.metrics
                    .records_relocated
                    .fetch_add(entries.len() as u64, Ordering::Relaxed);
            }
        }
        // Durable before the log start moves past what it restates, also
        // in periodic mode.
        batch.sync_now = true;
        let commit = batch.builder.commit_seq();
        self.reclaim.through = Some(self.reclaim.through.map_or(commit, |c| c.max(commit)));
    }

    /// Step 3: once the carried entries are durable and nothing before the
    /// target is pinned, the manifest records the new log start, then the
    /// files before it go to the preparer.
    fn publish_when_durable(&mut self) {
        let Some(target) = self.reclaim.target else {
            return;
        };
        if self.reclaim.has_carry()
            || self
                .reclaim
                .through
                .is_some_and(|c| self.clock.durable_through() < c)
        {
            return;
        }
        if self.reads.touches_before(target) {
            // A read of a segment about to go is on its way: its file stays
            // until it is done.
            return;
        }
        let relocated = self.reclaim.relocating;
        self.reclaim.abandon();
        let pins = self.table.pins();
        let still_pinned = pins.anchors_before(target) > 0
            || pins.oldest_with_records().is_some_and(|s| s < target);
        if still_pinned {
            // Something was carried that changed meanwhile (a channel
            // registered again, a relocation of records since truncated):
            // the next plan sees it as it is now.
            self.reclaim.due = true;
            return;
        }
        let gone: Vec<_> = self
            .log
            .iter()
            .take_while(|s| s.seq < target)
            .copied()
            .collect();
        if gone.is_empty() {
            // Part of a segment's records relocated: the next plan goes on.
            self.reclaim.due = relocated;
            return;
        }
        let Some(new_start) = self.log.iter().find(|s| s.seq == target).copied() else {
            return;
        };
        let freed: u64 = gone.iter().map(|s| s.bytes).sum();
        let record = ManifestRecord {
            log_start: Some(LogStart {
                segment: new_start.seq,
                next_channel_id: new_start.next_channel_id,
            }),
            reclaimed_bytes: self.reclaimed_bytes + freed,
            ..self.manifest_record()
        };
        if let Err(e) = self.manifest.write(record) {
            self.fail(e);
            return;
        }
        self.reclaimed_bytes += freed;
        self.reads.forget_files();
        for s in &gone {
            self.log.pop_front();
            let path = crate::wal::segment::segment_path(&self.dir, s.seq);
            self.preparer
                .reclaimed(s.seq, path, s.bytes, self.config.segment_bytes);
        }
        self.metrics
            .segments_reclaimed
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        // Space came free: a request refused for lack of it may go now.
        self.no_space = None;
        self.preparer.retry_failed();
        // Still past the limit: what more can go, or be relocated.
        self.reclaim.due = relocated || self.over_space_limit();
    }

    /// The entries relocating the records of `channel` at `from..` (`count`
    /// offsets) that it still holds as the plan found them, their payloads
    /// cached or read; `None` when none is held any more. `Err` while
    /// payloads are read from the WAL (started here when needed).
    fn relocation_payloads(
        &mut self,
        channel: ChannelId,
        from: Offset,
        count: usize,
    ) -> std::result::Result<Option<Vec<CarriedEntry>>, Waiting> {
        if self.reclaim.fetching.is_some() {
            return Err(Waiting);
        }
        let to = Offset(from.0 + count as u64);
        let Ok(held) = self.table.read(channel, from, to, u64::MAX) else {
            return Ok(None);
        };
        let missing: Vec<Found> = held
            .iter()
            .filter(|f| match f {
                Found::Cached(_) => false,
                Found::InWal { offset, loc, .. } => self
                    .reclaim
                    .fetched
                    .get(&(channel, offset.0))
                    .is_none_or(|(at, _)| at != loc),
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let places = missing
                .iter()
                .filter_map(|f| match f {
                    Found::InWal { offset, loc, .. } => Some(((channel, offset.0), *loc)),
                    Found::Cached(_) => None,
                })
                .collect();
            self.reclaim.fetching = Some(places);
            self.read_found(channel, missing, Purpose::Relocation);
            return Err(Waiting);
        }
        let entries = held
            .into_iter()
            .map(|f| match f {
                Found::Cached(r) => (channel, r.offset, r.data.to_vec()),
                Found::InWal { offset, .. } => {
                    let (_, data) = self
                        .reclaim
                        .fetched
                        .remove(&(channel, offset.0))
                        .expect("fetched above");
                    (channel, offset, data.to_vec())
                }
            })
            .collect();
        Ok(Some(entries))
    }

    /// Payloads of records to relocate arrived from the WAL (see
    /// `reads.rs`). A failed read abandons the plan: the records stay
    /// where they are and the next plan tries again.
    pub(super) fn relocation_fetched(
        &mut self,
        channel: ChannelId,
        result: Result<Vec<crate::types::Record>>,
    ) {
        let places = self.reclaim.fetching.take().unwrap_or_default();
        match result {
            Ok(records) => {
                // Each payload with the place it was read from: a record
                // moved or truncated and written again since no longer
                // matches it there (`relocation_payloads` reads it again).
                for r in records {
                    if let Some(loc) = places.get(&(channel, r.offset.0)) {
                        self.reclaim
                            .fetched
                            .insert((channel, r.offset.0), (*loc, r.data));
                    }
                }
            }
            Err(_) => {
                self.metrics
                    .relocation_reads_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.reclaim.abandon();
            }
        }
    }

    /// The oldest segment of the log.
    pub(super) fn log_start(&self) -> SegmentSeq {
        self.log.front().map_or(self.segment.seq, |s| s.seq)
    }

    /// Whether the shard's segment files leave no room for a new one
    /// within `Config::wal_bytes_max`.
    pub(super) fn over_space_limit(&self) -> bool {
        let wal_bytes = self.metrics.wal_bytes.load(Ordering::Relaxed);
        wal_bytes + self.config.segment_bytes > self.config.wal_bytes_max()
            && self.preparer.recyclable() == 0
    }

    /// What the manifest records now: where the log ends and starts.
    pub(super) fn manifest_record(&self) -> ManifestRecord {
        let start = self.log.front();
        ManifestRecord {
            generation: 0,
            active_segment: self.segment.seq,
            durable_through: self.clock.durable_through(),
            log_start: start.map(|s| LogStart {
                segment: s.seq,
                next_channel_id: s.next_channel_id,
            }),
            reclaimed_bytes: self.reclaimed_bytes,
            written_below: self.written_below,
        }
    }
}
