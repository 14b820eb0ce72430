//! The channel table's replay: each entry logged in the WAL, applied by the
//! same rules that accepted it ([`ChannelTable::replay`]), or refused as a
//! [`Contradiction`].
//!
//! After segments were reclaimed, the log starts at a later segment, and a
//! channel registered before it is stated whole again by a *state* entry
//! somewhere in the log (a dropped name by a *retired* entry). Entries of
//! such a channel that come before its state entry — its records, a
//! relocation, a checkpoint, a truncation — are held back ([`Deferred`])
//! until the state entry says which of its records are live, the latest
//! entry of an offset winning. A drop ends them. Only channel ids handed
//! out before the log start can be held back; one left without its state
//! entry at the end of the log is damage.
//!
//! A state entry says which records were live *when it was written*; some
//! of them may have been checkpointed (or truncated) since and their
//! segments reclaimed, and some relocated by a later entry. So an offset
//! the state entry names live but the log does not hold is a *hole*: lost
//! for now, filled by a later relocation of it, or let go by a later
//! checkpoint or truncation. A hole still live at the end of the log is
//! damage: a record the log should hold is gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use bytes::Bytes;

use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq};

use super::channel::{ChannelState, Loc, Released};
use super::channels::{ChannelTable, Retired, CHANNEL_ID_MAX, OFFSET_MAX};

/// A channel entry read back from the WAL.
#[derive(Debug)]
pub enum Logged<'a> {
    /// Channel `channel` was registered as `name`, its offsets from `first`.
    Register {
        /// The id.
        channel: ChannelId,
        /// Its first offset.
        first: Offset,
        /// Its name.
        name: &'a str,
    },
    /// A record at `offset`.
    Append {
        /// The channel.
        channel: ChannelId,
        /// The record's offset.
        offset: Offset,
        /// The payload (a slice of the commit's bytes).
        record: &'a [u8],
        /// Where the entry lies in the WAL.
        at: Loc,
    },
    /// Channel `channel` was dropped with `next` as its next offset.
    Drop {
        /// The channel.
        channel: ChannelId,
        /// Its next offset at the drop.
        next: Offset,
    },
    /// The records of `channel` below `first` were checkpointed.
    Checkpoint {
        /// The channel.
        channel: ChannelId,
        /// Its first live offset from then on.
        first: Offset,
    },
    /// The records of `channel` from `next` on were removed; its next
    /// record gets `next`.
    Truncate {
        /// The channel.
        channel: ChannelId,
        /// Its next offset from then on.
        next: Offset,
    },
    /// The live channel `channel` stated whole (carried forward).
    State {
        /// The id.
        channel: ChannelId,
        /// Its name.
        name: &'a str,
        /// Its first live offset.
        first: Offset,
        /// Its next offset.
        next: Offset,
        /// Offsets in `first..next` whose records were lost, `[from, to)`.
        lost: Vec<(Offset, Offset)>,
    },
    /// The dropped name `name`, last of channel `channel`, stated whole:
    /// a registration of it starts at `next`.
    Retired {
        /// The channel that last had the name.
        channel: ChannelId,
        /// The name.
        name: &'a str,
        /// Where its offsets go on.
        next: Offset,
    },
    /// The live record at `offset` written again (relocated).
    Relocate {
        /// The channel.
        channel: ChannelId,
        /// The record's offset.
        offset: Offset,
        /// The payload (a slice of the commit's bytes).
        record: &'a [u8],
        /// Where the entry lies in the WAL.
        at: Loc,
    },
}

impl Logged<'_> {
    /// The channel the entry names, and its offset field.
    fn channel_and_offset(&self) -> (ChannelId, Offset) {
        match self {
            Logged::Register { channel, first, .. }
            | Logged::Checkpoint { channel, first }
            | Logged::State { channel, first, .. } => (*channel, *first),
            Logged::Append {
                channel, offset, ..
            }
            | Logged::Relocate {
                channel, offset, ..
            } => (*channel, *offset),
            Logged::Drop { channel, next }
            | Logged::Truncate { channel, next }
            | Logged::Retired { channel, next, .. } => (*channel, *next),
        }
    }
}

/// Which kind of entry names a channel it cannot (used in messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryWord {
    /// An append.
    Record,
    /// A drop.
    Drop,
    /// A checkpoint.
    Checkpoint,
    /// A truncation.
    Truncate,
    /// A state entry.
    State,
    /// A relocation.
    Relocate,
}

impl EntryWord {
    fn noun(self) -> &'static str {
        match self {
            EntryWord::Record => "record",
            EntryWord::Drop => "drop",
            EntryWord::Checkpoint => "checkpoint",
            EntryWord::Truncate => "truncation",
            EntryWord::State => "state entry",
            EntryWord::Relocate => "relocation",
        }
    }
}

/// A logged entry that the channel rules refuse: the WAL is damaged (or
/// crafted). Its `Display` is the damage's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contradiction {
    /// A record at [`OFFSET_MAX`] or above, or a next offset above it.
    OffsetBeyondMax {
        /// The channel.
        channel: ChannelId,
        /// The offset.
        offset: Offset,
    },
    /// A channel id above [`CHANNEL_ID_MAX`].
    IdBeyondMax(ChannelId),
    /// A registered name that corewal refuses.
    InvalidName(String),
    /// A registration with another id than the next.
    IdOutOfOrder {
        /// The id logged.
        channel: ChannelId,
        /// The id that was next.
        next: u64,
    },
    /// A registration of a name that is registered.
    RegisteredTwice(Box<str>),
    /// A registration from another offset than where the name starts.
    FirstOffset {
        /// The name.
        name: Box<str>,
        /// The offset logged.
        offset: Offset,
        /// Where the name starts.
        expected: Offset,
    },
    /// A record or drop of a channel that is not registered.
    NoChannel {
        /// Record or drop.
        entry: EntryWord,
        /// The id logged.
        channel: ChannelId,
    },
    /// A checkpoint or truncation outside the channel's live records (a
    /// checkpoint must move the first offset forward, no further than the
    /// next offset; a truncation must keep the checkpointed records and
    /// remove at least one record).
    OutOfRange {
        /// Checkpoint or truncation.
        entry: EntryWord,
        /// The channel's name.
        name: Box<str>,
        /// The offset logged.
        offset: Offset,
        /// The channel's first live offset.
        first: Offset,
        /// The channel's next offset.
        next: Offset,
    },
    /// A record or drop at another offset than the channel's next.
    OffsetOutOfOrder {
        /// Record or drop.
        entry: EntryWord,
        /// The channel's name.
        name: Box<str>,
        /// The offset logged.
        offset: Offset,
        /// The channel's next offset.
        expected: Offset,
    },
    /// A state or retired entry that says otherwise than the log before it
    /// (another name, other offsets, a name that is live).
    StateDiffers {
        /// The name logged.
        name: Box<str>,
        /// What the entry says.
        logged: String,
        /// What the log before it says.
        known: String,
    },
    /// A state entry whose live offsets lack a record the log should hold.
    RecordMissing {
        /// The channel's name.
        name: Box<str>,
        /// The offset without a record.
        offset: Offset,
    },
    /// Entries of a channel registered before the log start that no state
    /// entry restated by the end of the log: its registration is gone.
    NeverStated {
        /// The channel id.
        channel: ChannelId,
        /// Records of it held back.
        records: u64,
    },
}

impl fmt::Display for Contradiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contradiction::OffsetBeyondMax { channel, offset } => write!(
                f,
                "offset {offset} of channel id {} is beyond what corewal assigns (records \
                 below {OFFSET_MAX})",
                channel.0
            ),
            Contradiction::IdBeyondMax(channel) => write!(
                f,
                "channel id {} is beyond the largest corewal assigns ({CHANNEL_ID_MAX})",
                channel.0
            ),
            Contradiction::InvalidName(reason) => f.write_str(reason),
            Contradiction::IdOutOfOrder { channel, next } => {
                write!(
                    f,
                    "channel id {} registered where {next} was next",
                    channel.0
                )
            }
            Contradiction::RegisteredTwice(name) => write!(f, "channel {name:?} registered twice"),
            Contradiction::FirstOffset {
                name,
                offset,
                expected,
            } => write!(
                f,
                "channel {name:?} registered from offset {offset} where {expected} was next"
            ),
            Contradiction::NoChannel { entry, channel } => write!(
                f,
                "{} for unregistered or dropped channel id {}",
                entry.noun(),
                channel.0
            ),
            Contradiction::OutOfRange {
                entry,
                name,
                offset,
                first,
                next,
            } => write!(
                f,
                "{} of channel {name:?} at offset {offset} outside what its live records \
                 [{first}, {next}) allow",
                entry.noun()
            ),
            Contradiction::OffsetOutOfOrder {
                entry,
                name,
                offset,
                expected,
            } => write!(
                f,
                "{} at offset {offset} of channel {name:?} where offset {expected} was next",
                entry.noun()
            ),
            Contradiction::StateDiffers {
                name,
                logged,
                known,
            } => write!(
                f,
                "channel {name:?} restated as {logged} where the log before says {known}"
            ),
            Contradiction::RecordMissing { name, offset } => write!(
                f,
                "channel {name:?} restated with a live record at offset {offset} that the log \
                 does not hold"
            ),
            Contradiction::NeverStated { channel, records } => write!(
                f,
                "channel id {} (registered before the log start) has entries ({records} \
                 records) but is never restated: its registration is gone",
                channel.0
            ),
        }
    }
}

/// A record held back: where it lies, its payload while the cache could
/// take it, and its segment.
type HeldBack = (Loc, Option<Bytes>, SegmentSeq);

/// Entries held back during a replay that starts after reclaimed segments
/// (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Deferred {
    /// Ids below this were handed out before the log start: their entries
    /// may come before the entry that states their channel.
    below: u64,
    /// Held-back records of each such channel: by offset, the latest entry
    /// of each offset, and the segment holding it.
    /// (Their payloads too while the cache could take them; they are
    /// charged to it when the state entry adopts them.)
    records: HashMap<ChannelId, BTreeMap<u64, HeldBack>>,
    /// Such channels whose drop came before any state entry.
    ended: HashSet<ChannelId>,
    /// Offsets such channels' state entries named live without a record in
    /// the log (see the module docs), `[from, to)` in order.
    holes: HashMap<ChannelId, Vec<(Offset, Offset)>>,
}

impl Deferred {
    /// Holding back the entries of ids below `below`.
    pub(crate) fn below(below: u64) -> Deferred {
        Deferred {
            below,
            ..Deferred::default()
        }
    }

    /// Whether entries of `id`, unknown to the table, are held back.
    fn holds(&self, id: ChannelId) -> bool {
        u64::from(id.0) < self.below && !self.ended.contains(&id)
    }
}

impl ChannelTable {
    /// Applies an entry replayed from commit `commit`, in segment `seq`, of
    /// the WAL: it must be what the shard's calls would have logged.
    /// `lenient` (after `RecoveryMode::SkipDamaged` passed over a commit)
    /// accepts the gaps a skipped commit leaves: ids and offsets that jump
    /// ahead, records and drops of channels whose registration was lost.
    /// Returns the offsets lost in such a gap.
    pub fn replay(
        &mut self,
        entry: Logged<'_>,
        commit: CommitSeq,
        seq: SegmentSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let (channel, offset) = entry.channel_and_offset();
        let is_record = matches!(entry, Logged::Append { .. } | Logged::Relocate { .. });
        if offset.0 > OFFSET_MAX || (is_record && offset.0 == OFFSET_MAX) {
            return Err(Contradiction::OffsetBeyondMax { channel, offset });
        }
        if channel.0 > CHANNEL_ID_MAX {
            return Err(Contradiction::IdBeyondMax(channel));
        }
        if !self.channels.contains_key(&channel) && self.deferred.holds(channel) {
            return self.replay_deferred(entry, commit, seq, lenient);
        }
        match entry {
            Logged::Register { name, .. } => {
                self.replay_register(channel, offset, name, commit, lenient)?;
                self.anchored(&super::channels::Anchor::Channel(channel), seq);
                Ok(0)
            }
            Logged::Append { record, at, .. } => {
                if self
                    .replayed_channel(channel, EntryWord::Record, lenient)?
                    .is_none()
                {
                    return Ok(1);
                }
                let lost = self.replay_gap(EntryWord::Record, channel, offset, lenient)?;
                self.assign(channel, 1);
                self.acknowledge(channel, at, seq, || Bytes::copy_from_slice(record));
                Ok(lost)
            }
            Logged::Drop { .. } => {
                if self
                    .replayed_channel(channel, EntryWord::Drop, lenient)?
                    .is_none()
                {
                    return Ok(0);
                }
                let lost = self.replay_gap(EntryWord::Drop, channel, offset, lenient)?;
                self.drop_channel(channel, commit);
                Ok(lost)
            }
            Logged::Checkpoint { .. } => self.replay_checkpoint(channel, offset, commit, lenient),
            Logged::Truncate { .. } => self.replay_truncate(channel, offset, commit, lenient),
            Logged::State {
                name,
                first,
                next,
                lost,
                ..
            } => self.replay_state_of_known(channel, name, (first, next, &lost), seq, lenient),
            Logged::Retired { name, next, .. } => {
                self.replay_retired(channel, name, next, (commit, seq), lenient)?;
                Ok(0)
            }
            Logged::Relocate { at, .. } => {
                let Some(ch) = self.replayed_channel(channel, EntryWord::Relocate, lenient)? else {
                    return Ok(0);
                };
                if ch.index_of(offset).is_none() {
                    if self.fill_hole(channel, offset, at, seq) {
                        return Ok(0);
                    }
                    if lenient {
                        return Ok(0);
                    }
                    let ch = self.open(channel).expect("open above");
                    return Err(ch.contradicts(EntryWord::Relocate, offset));
                }
                // As the shard does: the entry is on its way, then durable.
                self.relocating(channel, 1);
                self.relocated(channel, offset, &[at], seq);
                Ok(0)
            }
        }
    }

    /// Ends a replay: a channel whose entries were held back but that no
    /// state entry restated lost its registration with reclaimed segments
    /// — damage; `lenient` counts its records lost instead. Returns the
    /// records so lost.
    pub fn finish_replay(&mut self, lenient: bool) -> Result<u64, Contradiction> {
        let deferred = std::mem::take(&mut self.deferred);
        let mut lost = 0u64;
        let mut holes: Vec<_> = deferred.holes.into_iter().collect();
        holes.sort_by_key(|(id, _)| *id);
        for (channel, ranges) in holes {
            let Some(ch) = self.channels.get(&channel).filter(|c| !c.dropped()) else {
                continue;
            };
            // A hole is settled once a checkpoint or truncation let it go
            // or a relocation filled it: only what is still lost of it (a
            // truncation may have removed it and appends filled its offsets
            // anew) is missing.
            for (from, to) in ranges {
                for &(lost_from, lost_to) in &ch.h().lost {
                    let (f, t) = (from.max(lost_from), to.min(lost_to));
                    if f >= t {
                        continue;
                    }
                    if !lenient {
                        return Err(Contradiction::RecordMissing {
                            name: ch.name[..].into(),
                            offset: f,
                        });
                    }
                    lost += t.0 - f.0;
                }
            }
        }
        let mut left: Vec<_> = deferred.records.into_iter().collect();
        left.sort_by_key(|(id, _)| *id);
        for (channel, records) in left {
            if !lenient {
                return Err(Contradiction::NeverStated {
                    channel,
                    records: records.len() as u64,
                });
            }
            lost += records.len() as u64;
        }
        Ok(lost)
    }

    /// An entry of a channel registered before the log start, whose state
    /// entry has not come yet: held back, ended by a drop, or (the state or
    /// retired entry itself) the channel's state from now on.
    fn replay_deferred(
        &mut self,
        entry: Logged<'_>,
        commit: CommitSeq,
        seq: SegmentSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let (channel, _) = entry.channel_and_offset();
        match entry {
            Logged::Append {
                offset, at, record, ..
            }
            | Logged::Relocate {
                offset, at, record, ..
            } => {
                let payload = self
                    .cache
                    .admits(record.len(), seq)
                    .then(|| Bytes::copy_from_slice(record));
                let held = self.deferred.records.entry(channel).or_default();
                held.insert(offset.0, (at, payload, seq));
                Ok(0)
            }
            // The state entry to come says where the channel stands after
            // these; the records they removed are left out by its offsets.
            Logged::Checkpoint { .. } | Logged::Truncate { .. } => Ok(0),
            Logged::Drop { .. } => {
                self.deferred.records.remove(&channel);
                self.deferred.ended.insert(channel);
                Ok(0)
            }
            Logged::Register { .. } => Err(Contradiction::IdOutOfOrder {
                channel,
                next: self.next_id,
            }),
            Logged::Retired { name, next, .. } => {
                // Refused, it changes nothing.
                self.replay_retired(channel, name, next, (commit, seq), lenient)?;
                self.deferred.records.remove(&channel);
                self.deferred.ended.insert(channel);
                Ok(0)
            }
            Logged::State {
                name,
                first,
                next,
                lost,
                ..
            } => self.adopt(channel, name, (first, next, lost), commit, seq, lenient),
        }
    }

    /// The state entry of a channel registered before the log start: the
    /// channel as it states, with its held-back records.
    fn adopt(
        &mut self,
        channel: ChannelId,
        name: &str,
        (first, next, lost): (Offset, Offset, Vec<(Offset, Offset)>),
        commit: CommitSeq,
        seq: SegmentSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        crate::validate_channel_name(name)
            .map_err(|err| Contradiction::InvalidName(err.to_string()))?;
        check_state_offsets(name, first, next, &lost)?;
        if self.by_name.contains_key(name) {
            return Err(Contradiction::RegisteredTwice(name.into()));
        }
        let mut held = self.deferred.records.remove(&channel).unwrap_or_default();
        let shared_name: std::sync::Arc<str> = name.into();
        let mut ch = ChannelState::new(channel, shared_name.clone(), first, commit);
        ch.next_offset = next;
        // Walk the held records and the lost ranges, not every offset: a
        // crafted state entry may span 2^62 offsets. What lies between them
        // is a hole (module docs).
        let mut holes: Vec<(Offset, Offset)> = Vec::new();
        let mut at = first.0;
        let mut mark_hole = |ch: &mut ChannelState, from: u64, to: u64| {
            if from < to {
                ch.push_lost(Offset(from), Offset(to));
                holes.push((Offset(from), Offset(to)));
            }
        };
        let mut ranges = lost.iter().copied().peekable();
        // The payloads held back, charged to the cache once adopted (those
        // still cached then: a record without one ends the cached suffix).
        let mut cached: Vec<(Offset, usize)> = Vec::new();
        for (o, (at_loc, payload, seg)) in held.range_mut(first.0..next.0) {
            while let Some(&(from, to)) = ranges.peek().filter(|(f, _)| f.0 <= *o) {
                mark_hole(&mut ch, at, from.0);
                ch.push_lost(from, to);
                at = to.0;
                ranges.next();
            }
            if *o < at {
                // Inside a lost range the entry names: not the channel's.
                continue;
            }
            mark_hole(&mut ch, at, *o);
            let payload = payload.take();
            if payload.is_some() {
                cached.push((Offset(*o), at_loc.len as usize));
            } else {
                cached.clear();
            }
            // Not charged yet, so nothing to release.
            let _ = ch.push_record(*at_loc, payload, *seg, &mut self.pins);
            at = o + 1;
        }
        for (from, to) in ranges {
            mark_hole(&mut ch, at, from.0);
            ch.push_lost(from, to);
            at = to.0;
        }
        mark_hole(&mut ch, at, next.0);
        held.clear();
        if !holes.is_empty() {
            self.deferred.holes.insert(channel, holes);
        }
        self.by_name.insert(shared_name, channel);
        if let Some(r) = self.retired.remove(name) {
            if let Some(a) = r.anchor {
                self.pins.remove_anchor(a);
            }
        }
        self.channels.insert(channel, ch);
        for (offset, len) in cached {
            self.cache.cached(channel, offset, len);
        }
        self.evict();
        self.anchored(&super::channels::Anchor::Channel(channel), seq);
        let _ = lenient;
        Ok(0)
    }

    /// A relocation of an offset that a state entry named live without a
    /// record (a hole): the record is found again. Returns whether it was
    /// such an offset.
    fn fill_hole(&mut self, channel: ChannelId, offset: Offset, at: Loc, seq: SegmentSeq) -> bool {
        let Some(ranges) = self.deferred.holes.get_mut(&channel) else {
            return false;
        };
        let Some(i) = ranges.iter().position(|&(f, t)| f <= offset && offset < t) else {
            return false;
        };
        let (from, to) = ranges.remove(i);
        for piece in [(from, offset), (Offset(offset.0 + 1), to)] {
            if piece.0 < piece.1 {
                ranges.insert(i, piece);
            }
        }
        ranges.sort();
        let ch = self
            .channels
            .get_mut(&channel)
            .expect("a hole of a known channel");
        match ch.fill(offset, at, seq, &mut self.pins) {
            Some(released) => {
                self.release(released);
                true
            }
            None => false,
        }
    }

    /// The state entry of a channel the log already stated: it must say
    /// what the log says, and anchors the channel where it is.
    fn replay_state_of_known(
        &mut self,
        channel: ChannelId,
        name: &str,
        (first, next, lost): (Offset, Offset, &[(Offset, Offset)]),
        seq: SegmentSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let ch = match self.open(channel) {
            Ok(ch) => ch,
            Err(_) if lenient => return Ok(0),
            Err(_) => {
                return Err(Contradiction::NoChannel {
                    entry: EntryWord::State,
                    channel,
                })
            }
        };
        // Lost ranges are not compared: holes (module docs) may stand where
        // the entry names records, and are settled at the end of the log.
        let _ = lost;
        let same = *ch.name == *name && ch.first_offset == first && ch.next_offset == next;
        if !same && lenient && *ch.name == *name {
            // A commit skipped as damaged held what moved the channel
            // there (records, a checkpoint, a truncation): the state entry
            // says where it stands, and what is missing is lost.
            return Ok(self.reconcile(channel, first, next, seq));
        }
        if !same {
            return Err(Contradiction::StateDiffers {
                name: name.into(),
                logged: format!("id {} at offsets [{first}, {next})", channel.0),
                known: format!(
                    "{:?} at offsets [{}, {})",
                    ch.name, ch.first_offset, ch.next_offset
                ),
            });
        }
        self.anchored(&super::channels::Anchor::Channel(channel), seq);
        Ok(0)
    }

    /// `RecoveryMode::SkipDamaged`: moves a known channel to the offsets a
    /// later state entry gives it — checkpointed up to `first`, truncated or
    /// extended (the offsets between lost) to `next`. Returns the offsets
    /// counted lost.
    fn reconcile(
        &mut self,
        channel: ChannelId,
        first: Offset,
        next: Offset,
        seq: SegmentSeq,
    ) -> u64 {
        let ch = self.channels.get_mut(&channel).expect("open above");
        let mut lost = 0;
        let mut released = Released::default();
        if next < ch.next_offset && next >= ch.first_offset {
            released = ch.trim_back(next, &mut self.pins);
        } else if next > ch.next_offset {
            // Counted lost: those still live after the checkpoint below.
            lost += next.0 - ch.next_offset.max(first).0.min(next.0);
            let from = ch.next_offset;
            ch.push_lost(from, next);
            ch.next_offset = next;
        }
        if first > ch.first_offset && first <= ch.durable_next_offset() {
            let r = ch.trim_front(first, &mut self.pins);
            released.records += r.records;
            released.bytes += r.bytes;
        }
        self.release(released);
        self.anchored(&super::channels::Anchor::Channel(channel), seq);
        lost
    }

    /// A retired entry: the dropped name `name` starts at `next`. A name
    /// already known retired must agree; a live one contradicts it.
    fn replay_retired(
        &mut self,
        channel: ChannelId,
        name: &str,
        next: Offset,
        (commit, seq): (CommitSeq, SegmentSeq),
        lenient: bool,
    ) -> Result<(), Contradiction> {
        crate::validate_channel_name(name)
            .map_err(|err| Contradiction::InvalidName(err.to_string()))?;
        let differs = |known: String| Contradiction::StateDiffers {
            name: name.into(),
            logged: format!("dropped at offset {next} (id {})", channel.0),
            known,
        };
        if u64::from(channel.0) >= self.next_id {
            return Err(differs(format!("ids below {}", self.next_id)));
        }
        let live = self.by_name.get(name).copied();
        if lenient && live == Some(channel) {
            // Its drop was in a commit skipped as damaged.
            self.drop_channel(channel, commit);
        } else if live.is_some() {
            return Err(differs("live".into()));
        }
        if lenient {
            if let Some(r) = self.retired.get_mut(name).filter(|r| r.id == channel) {
                r.next = r.next.max(next);
            }
        }
        match self.retired.get(name) {
            Some(r) if !lenient && (r.next != next || r.id != channel) => {
                return Err(differs(format!(
                    "dropped at offset {} (id {})",
                    r.next, r.id.0
                )))
            }
            Some(_) => {}
            None => {
                self.retired.insert(
                    name.into(),
                    Retired {
                        id: channel,
                        next,
                        dropped_in: commit,
                        anchor: None,
                    },
                );
            }
        }
        self.anchored(&super::channels::Anchor::Retired(name.into(), channel), seq);
        Ok(())
    }

    /// The open channel a logged entry names. Not open: a contradiction, or
    /// with `lenient` `None` — the entry is passed over (the channel's
    /// registration was lost with a skipped commit, or its drop survived
    /// while a later registration was lost).
    fn replayed_channel(
        &self,
        channel: ChannelId,
        entry: EntryWord,
        lenient: bool,
    ) -> Result<Option<&ChannelState>, Contradiction> {
        match self.open(channel) {
            Ok(ch) => Ok(Some(ch)),
            Err(_) if lenient => Ok(None),
            Err(_) => Err(Contradiction::NoChannel { entry, channel }),
        }
    }

    /// A logged truncation moves the next offset back, no further than the
    /// first live offset; `lenient` accepts one at or past the next offset
    /// (the records it removed were lost with a skipped commit).
    fn replay_truncate(
        &mut self,
        channel: ChannelId,
        next: Offset,
        commit: CommitSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let Some(ch) = self.replayed_channel(channel, EntryWord::Truncate, lenient)? else {
            return Ok(0);
        };
        if lenient && next >= ch.next_offset {
            return self.replay_gap(EntryWord::Truncate, channel, next, lenient);
        }
        if next < ch.first_offset || next >= ch.next_offset {
            return Err(ch.contradicts(EntryWord::Truncate, next));
        }
        self.truncate(channel, next, commit);
        Ok(0)
    }

    /// A logged checkpoint moves the first offset forward, no further than
    /// the next offset; `lenient` accepts one further (the records between
    /// were lost with a skipped commit) and counts them lost.
    fn replay_checkpoint(
        &mut self,
        channel: ChannelId,
        first: Offset,
        commit: CommitSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let Some(ch) = self.replayed_channel(channel, EntryWord::Checkpoint, lenient)? else {
            return Ok(0);
        };
        if first <= ch.first_offset || (first > ch.next_offset && !lenient) {
            return Err(ch.contradicts(EntryWord::Checkpoint, first));
        }
        let lost = if first > ch.next_offset {
            self.replay_gap(EntryWord::Checkpoint, channel, first, lenient)?
        } else {
            0
        };
        self.checkpoint(channel, first, commit);
        Ok(lost)
    }

    fn replay_register(
        &mut self,
        channel: ChannelId,
        first: Offset,
        name: &str,
        commit: CommitSeq,
        lenient: bool,
    ) -> Result<(), Contradiction> {
        crate::validate_channel_name(name)
            .map_err(|err| Contradiction::InvalidName(err.to_string()))?;
        if lenient && u64::from(channel.0) > self.next_id {
            // Registrations lost with a skipped commit took the ids between.
            self.next_id = u64::from(channel.0);
        }
        if self.next_id != u64::from(channel.0) {
            return Err(Contradiction::IdOutOfOrder {
                channel,
                next: self.next_id,
            });
        }
        if self.by_name.contains_key(name) {
            return Err(Contradiction::RegisteredTwice(name.into()));
        }
        let (id, expected) = self
            .registration(name)
            .expect("the id was checked against the bound");
        // After reclaimed segments, a registration of a dropped name may
        // follow a drop the log no longer holds: its first offset is then
        // the name's whole statement (the drop's retired entry went with
        // the registration, which took it over).
        let drop_reclaimed = self.deferred.below > 0 && !self.retired.contains_key(name);
        if first != expected && !(lenient && first > expected) && !drop_reclaimed {
            return Err(Contradiction::FirstOffset {
                name: name.into(),
                offset: first,
                expected,
            });
        }
        self.insert(name, id, first, commit);
        Ok(())
    }

    /// Checks that a logged record or drop of `id` comes at its next offset;
    /// `lenient` accepts a jump ahead, whose offsets are marked lost.
    fn replay_gap(
        &mut self,
        entry: EntryWord,
        id: ChannelId,
        offset: Offset,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let ch = self
            .open(id)
            .map_err(|_| Contradiction::NoChannel { entry, channel: id })?;
        let expected = ch.next_offset;
        if expected == offset {
            return Ok(0);
        }
        if !(lenient && expected < offset) {
            return Err(Contradiction::OffsetOutOfOrder {
                entry,
                name: ch.name[..].into(),
                offset,
                expected,
            });
        }
        self.push_lost(id, offset);
        Ok(offset.0 - expected.0)
    }

    /// Marks the offsets from the channel's next offset up to `to` as lost
    /// with a damaged commit (`RecoveryMode::SkipDamaged`).
    fn push_lost(&mut self, id: ChannelId, to: Offset) {
        let ch = self.channels.get_mut(&id).expect("a channel of this table");
        let from = ch.next_offset;
        assert!(from <= to, "lost offsets go backwards");
        assert_eq!(
            ch.durable_next_offset(),
            from,
            "lost offsets after queued ones"
        );
        if from < to {
            ch.hm().lost.push((from, to));
            ch.hm().lost_count += to.0 - from.0;
        }
        ch.next_offset = to;
    }
}

/// A state entry's offsets: its lost ranges in order, apart, inside
/// `first..next`, none empty.
fn check_state_offsets(
    name: &str,
    first: Offset,
    next: Offset,
    lost: &[(Offset, Offset)],
) -> Result<(), Contradiction> {
    let mut at = first;
    let sound = first <= next
        && next.0 <= OFFSET_MAX
        && lost.iter().all(|&(from, to)| {
            let ok = at <= from && from < to && to <= next;
            at = to;
            ok
        });
    if sound {
        return Ok(());
    }
    Err(Contradiction::StateDiffers {
        name: name.into(),
        logged: format!("offsets [{first}, {next}) with lost ranges {lost:?}"),
        known: "lost ranges in order inside the live offsets".into(),
    })
}

impl ChannelState {
    /// The contradiction of a logged checkpoint, truncation or relocation at
    /// `offset`.
    pub(super) fn contradicts(&self, entry: EntryWord, offset: Offset) -> Contradiction {
        Contradiction::OutOfRange {
            entry,
            name: self.name[..].into(),
            offset,
            first: self.first_offset,
            next: self.next_offset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::channel::Found;
    use crate::buffer::channels::Anchor;

    const S: SegmentSeq = SegmentSeq(7);

    fn rec(channel: u32, offset: u64, data: &'static [u8]) -> Logged<'static> {
        Logged::Append {
            channel: ChannelId(channel),
            offset: Offset(offset),
            record: data,
            at: Loc::unplaced(data.len()),
        }
    }

    fn moved(channel: u32, offset: u64, data: &'static [u8]) -> Logged<'static> {
        Logged::Relocate {
            channel: ChannelId(channel),
            offset: Offset(offset),
            record: data,
            at: Loc::unplaced(data.len()),
        }
    }

    fn state(channel: u32, name: &'static str, first: u64, next: u64) -> Logged<'static> {
        Logged::State {
            channel: ChannelId(channel),
            name,
            first: Offset(first),
            next: Offset(next),
            lost: Vec::new(),
        }
    }

    fn replay(t: &mut ChannelTable, e: Logged<'_>) -> Result<u64, Contradiction> {
        t.replay(e, CommitSeq(9), S, false)
    }

    fn offsets(t: &ChannelTable, id: u32) -> Vec<(u64, Vec<u8>)> {
        t.read(ChannelId(id), Offset(0), Offset(u64::MAX), u64::MAX)
            .unwrap()
            .into_iter()
            .map(|r| match r {
                Found::Cached(r) => (r.offset.0, r.data.to_vec()),
                // A relocation that fills a hole is not cached.
                Found::InWal { offset, .. } => (offset.0, b"(in the WAL)".to_vec()),
            })
            .collect()
    }

    /// A log that starts after reclaimed segments: a channel registered
    /// before it has its records held back until its state entry, the
    /// latest entry of an offset winning.
    #[test]
    fn records_before_a_state_entry_wait_for_it() {
        let mut t = ChannelTable::for_log_start(3);
        assert_eq!(replay(&mut t, rec(1, 5, b"5")), Ok(0));
        assert_eq!(replay(&mut t, moved(1, 4, b"4")), Ok(0));
        assert_eq!(replay(&mut t, rec(1, 3, b"gone")), Ok(0));
        assert!(t.live("a").is_none(), "not yet stated");
        assert_eq!(replay(&mut t, state(1, "a", 4, 6)), Ok(0));
        assert_eq!(offsets(&t, 1), [(4, b"4".to_vec()), (5, b"5".to_vec())]);
        assert_eq!(replay(&mut t, rec(1, 6, b"6")), Ok(0));
        // A registration after the log start takes the next id.
        let reg = Logged::Register {
            channel: ChannelId(3),
            first: Offset(0),
            name: "b",
        };
        assert_eq!(replay(&mut t, reg), Ok(0));
        assert_eq!(t.finish_replay(false), Ok(0));
        let a = t.live("a").unwrap();
        assert_eq!((a.first_offset(), a.next_offset()), (Offset(4), Offset(7)));
        assert_eq!(a.anchor(), Some(S));
        assert_eq!(t.pins().get(S).anchors, 2, "a and b anchored here");
        assert_eq!(t.pins().get(S).records, 3);
    }

    /// A state entry may name records whose segments were reclaimed since:
    /// a later checkpoint, truncation or relocation settles them; one still
    /// missing at the end is damage.
    #[test]
    fn holes_a_state_entry_leaves_are_settled_by_the_end() {
        let start = |t: &mut ChannelTable| {
            assert_eq!(replay(t, rec(0, 2, b"2")), Ok(0));
            assert_eq!(replay(t, state(0, "a", 1, 4)), Ok(0));
        };
        // Checkpointed since: fine.
        let mut t = ChannelTable::for_log_start(1);
        start(&mut t);
        let ckpt = Logged::Checkpoint {
            channel: ChannelId(0),
            first: Offset(4),
        };
        assert_eq!(replay(&mut t, ckpt), Ok(0));
        assert_eq!(t.finish_replay(false), Ok(0));
        // Relocated later: found again, in order.
        let mut t = ChannelTable::for_log_start(1);
        start(&mut t);
        assert_eq!(replay(&mut t, moved(0, 3, b"3")), Ok(0));
        assert_eq!(replay(&mut t, moved(0, 1, b"1")), Ok(0));
        assert_eq!(t.finish_replay(false), Ok(0));
        let got: Vec<u64> = offsets(&t, 0).iter().map(|(o, _)| *o).collect();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(t.pins().get(S).records, 3);
        // Truncated and written again: fine.
        let mut t = ChannelTable::for_log_start(1);
        start(&mut t);
        let trunc = Logged::Truncate {
            channel: ChannelId(0),
            next: Offset(1),
        };
        assert_eq!(replay(&mut t, trunc), Ok(0));
        assert_eq!(replay(&mut t, rec(0, 1, b"1 again")), Ok(0));
        assert_eq!(t.finish_replay(false), Ok(0));
        // Nothing settles offset 1: damage, or lost in a lenient mode.
        let mut t = ChannelTable::for_log_start(1);
        start(&mut t);
        assert_eq!(replay(&mut t, moved(0, 3, b"3")), Ok(0));
        assert_eq!(
            t.finish_replay(false),
            Err(Contradiction::RecordMissing {
                name: "a".into(),
                offset: Offset(1)
            })
        );
        let mut t = ChannelTable::for_log_start(1);
        start(&mut t);
        assert_eq!(t.finish_replay(true), Ok(2), "offsets 1 and 3 lost");
    }

    /// One row per contradiction the new entries can meet.
    #[test]
    fn carried_entries_that_contradict_the_log_are_refused() {
        let mut t = ChannelTable::for_log_start(2);
        assert_eq!(replay(&mut t, state(0, "a", 0, 0)), Ok(0));
        let differs =
            |r: Result<u64, Contradiction>| matches!(r, Err(Contradiction::StateDiffers { .. }));
        // Known channel, other offsets or name.
        assert!(differs(replay(&mut t, state(0, "a", 0, 2))));
        assert!(differs(replay(&mut t, state(0, "b", 0, 0))));
        // A retired entry for a live name, or for an id not yet handed out.
        let retired = |channel: u32, name: &'static str| Logged::Retired {
            channel: ChannelId(channel),
            name,
            next: Offset(4),
        };
        assert!(differs(replay(&mut t, retired(1, "a"))));
        assert!(differs(replay(&mut t, retired(5, "z"))));
        // A registration of an id from before the log start.
        let reg = Logged::Register {
            channel: ChannelId(1),
            first: Offset(0),
            name: "c",
        };
        assert!(matches!(
            replay(&mut t, reg),
            Err(Contradiction::IdOutOfOrder { .. })
        ));
        // Entries of an id after the log start that was never registered.
        assert!(matches!(
            replay(&mut t, rec(4, 0, b"x")),
            Err(Contradiction::NoChannel { .. })
        ));
        // Lost ranges out of order.
        let bad = Logged::State {
            channel: ChannelId(1),
            name: "d",
            first: Offset(5),
            next: Offset(9),
            lost: vec![(Offset(7), Offset(8)), (Offset(6), Offset(7))],
        };
        assert!(differs(replay(&mut t, bad)));
        // Held back for ever: its registration is gone.
        assert_eq!(replay(&mut t, rec(1, 0, b"y")), Ok(0));
        assert_eq!(
            t.finish_replay(false),
            Err(Contradiction::NeverStated {
                channel: ChannelId(1),
                records: 1
            })
        );
    }

    /// A drop ends a channel's held-back entries; its retired entry, or a
    /// registration that took its name over, keeps the name's offsets.
    #[test]
    fn a_drop_before_the_state_entry_ends_the_channel() {
        let mut t = ChannelTable::for_log_start(2);
        assert_eq!(replay(&mut t, rec(0, 7, b"7")), Ok(0));
        let drop = Logged::Drop {
            channel: ChannelId(0),
            next: Offset(8),
        };
        assert_eq!(replay(&mut t, drop), Ok(0));
        let retired = Logged::Retired {
            channel: ChannelId(0),
            name: "a",
            next: Offset(8),
        };
        assert_eq!(replay(&mut t, retired), Ok(0));
        assert_eq!(t.retired("a").map(|r| r.0), Some(Offset(8)));
        // A name whose drop the log no longer holds: its registration says
        // where it goes on.
        let reg = Logged::Register {
            channel: ChannelId(2),
            first: Offset(12),
            name: "b",
        };
        assert_eq!(replay(&mut t, reg), Ok(0));
        assert_eq!(t.finish_replay(false), Ok(0));
        assert_eq!(t.live("b").unwrap().first_offset(), Offset(12));
        assert_eq!(t.pins().get(S).anchors, 2);
        let a = Anchor::Retired("a".into(), ChannelId(0));
        assert_eq!(
            t.anchored_before(SegmentSeq(8)),
            [Anchor::Channel(ChannelId(2)), a],
            "what a reclamation would carry forward"
        );
    }

    /// A crafted state entry naming 2^61 live offsets costs one range, not
    /// one step per offset, and is damage at the end.
    #[test]
    fn a_crafted_state_entry_costs_its_ranges_not_its_offsets() {
        let mut t = ChannelTable::for_log_start(1);
        let huge = state(0, "a", 0, 1 << 61);
        let started = std::time::Instant::now();
        assert_eq!(replay(&mut t, rec(0, 5, b"5")), Ok(0));
        assert_eq!(replay(&mut t, huge), Ok(0));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let a = t.live("a").unwrap();
        assert_eq!((a.held_records(), a.lost_ranges().len()), (1, 2));
        assert_eq!(
            t.finish_replay(false),
            Err(Contradiction::RecordMissing {
                name: "a".into(),
                offset: Offset(0)
            })
        );
    }

    /// `SkipDamaged`: a commit skipped as damaged held what moved a channel
    /// (its records, its drop); the carried entries after it say where the
    /// channel stands, and what is missing is lost, not refused.
    #[test]
    fn a_lenient_replay_follows_carried_entries_past_a_skipped_commit() {
        let mut t = ChannelTable::default();
        let reg = |channel, name| Logged::Register {
            channel: ChannelId(channel),
            first: Offset(0),
            name,
        };
        let lenient = |t: &mut ChannelTable, e| t.replay(e, CommitSeq(9), S, true);
        assert_eq!(lenient(&mut t, reg(0, "a")), Ok(0));
        assert_eq!(lenient(&mut t, rec(0, 0, b"0")), Ok(0));
        // Records 1..4 and a checkpoint to 2 were in the skipped commit.
        assert_eq!(lenient(&mut t, state(0, "a", 2, 4)), Ok(2));
        let a = t.live("a").unwrap();
        assert_eq!((a.first_offset(), a.next_offset()), (Offset(2), Offset(4)));
        assert_eq!(lenient(&mut t, rec(0, 4, b"4")), Ok(0));
        // b's drop was in the skipped commit; its retired entry follows.
        assert_eq!(lenient(&mut t, reg(1, "b")), Ok(0));
        let retired = Logged::Retired {
            channel: ChannelId(1),
            name: "b",
            next: Offset(3),
        };
        assert_eq!(lenient(&mut t, retired), Ok(0));
        assert!(t.live("b").is_none());
        assert_eq!(t.retired("b").map(|r| r.0), Some(Offset(3)));
        assert_eq!(t.finish_replay(true), Ok(0));
    }
}
