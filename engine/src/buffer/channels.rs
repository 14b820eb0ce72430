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
//! it each logged entry ([`ChannelTable::replay`]), which must be exactly
//! what those calls would have written, or it is a [`Contradiction`].
//!
//! Memory bound, today: every acknowledged record of every channel stays in
//! memory until it is checkpointed, truncated or dropped, so the table holds
//! the payload of every live record. Besides the records, the table keeps one
//! small [`ChannelState`] (name, counters; about 150 bytes) per channel
//! registration the shard's WAL holds, dropped ones included, and one entry
//! per dropped name not registered again; both are bounded by the WAL's
//! registrations and shrink only with segment reclamation (to come). Lost ranges
//! (offsets or channel ids that `RecoveryMode::SkipDamaged` passed over) cost
//! one entry per range, never one per missing offset or id.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use bytes::Bytes;

use crate::types::Record;
use crate::types::{ChannelId, CommitSeq, Offset};

/// The bound of offsets: a channel's next offset is at most this, so records
/// have offsets below it. Appends stop there and larger offsets from the WAL
/// are damage (a crafted or corrupted commit), so that offset arithmetic
/// never wraps. At a billion appends a second, 146 years.
pub const OFFSET_MAX: u64 = (1 << 62) - 1;

/// The largest channel id: ids from the WAL above it are damage, and a shard
/// refuses registrations past it.
pub const CHANNEL_ID_MAX: u32 = u32::MAX - 1;

/// One channel's state in its shard; only the table changes it.
#[derive(Debug)]
pub struct ChannelState {
    id: ChannelId,
    name: Box<str>,
    /// Offset of the channel's first live record (held or lost): everything
    /// below it was checkpointed (or, for a dropped channel, dropped).
    first_offset: Offset,
    /// Next offset to assign (one past the last record queued for a commit).
    next_offset: Offset,
    /// Acknowledged records, in offset order, lost offsets left out.
    records: VecDeque<Bytes>,
    /// Commit that carries the channel's registration.
    registered_in: CommitSeq,
    /// The commit that carries the channel's drop, once one was accepted
    /// (its name may since name another channel).
    dropped_in: Option<CommitSeq>,
    /// The commit that carries the channel's latest checkpoint or
    /// truncation (its registration's when it has none): a checkpoint or
    /// truncation that changes nothing is answered once this one is durable.
    changed_in: CommitSeq,
    /// Offsets whose records `RecoveryMode::SkipDamaged` passed over with a
    /// damaged commit, as `[from, to)` ranges in offset order; `records`
    /// holds nothing for them.
    lost: Vec<(Offset, Offset)>,
    /// How many offsets `lost` spans.
    lost_count: u64,
}

impl ChannelState {
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
        self.records.iter().map(|r| r.len() as u64).sum()
    }

    /// Offsets lost with damaged commits.
    pub fn lost_offsets(&self) -> u64 {
        self.lost_count
    }

    /// Lets go of the records below `first`, which becomes the first
    /// offset (at most the durable end).
    fn trim_front(&mut self, first: Offset) {
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
        let held_below = (first.0 - self.first_offset.0 - lost_below) as usize;
        self.records.drain(..held_below);
        self.lost_count -= lost_below;
        self.first_offset = first;
    }

    /// Lets go of the records from `next` on (nothing is in flight), which
    /// becomes the next offset.
    fn trim_back(&mut self, next: Offset) {
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
        let held_above = (self.next_offset.0 - next.0 - lost_above) as usize;
        self.records.truncate(self.records.len() - held_above);
        self.lost_count -= lost_above;
        self.next_offset = next;
    }

    /// The refusal of a checkpoint or truncation at `offset`.
    fn out_of_range(
        &self,
        operation: &'static str,
        offset: Offset,
        reason: &'static str,
    ) -> Refusal {
        Refusal::OutOfRange {
            operation,
            name: self.name.clone(),
            offset,
            first: self.first_offset,
            next: self.durable_next_offset(),
            reason,
        }
    }

    /// The contradiction of a logged checkpoint or truncation at `offset`.
    fn contradicts(&self, entry: EntryWord, offset: Offset) -> Contradiction {
        Contradiction::OutOfRange {
            entry,
            name: self.name.clone(),
            offset,
            first: self.first_offset,
            next: self.next_offset,
        }
    }
}

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
        record: Bytes,
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
}

impl EntryWord {
    fn noun(self) -> &'static str {
        match self {
            EntryWord::Record => "record",
            EntryWord::Drop => "drop",
            EntryWord::Checkpoint => "checkpoint",
            EntryWord::Truncate => "truncation",
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
        }
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
}

impl ChannelTable {
    /// The live (registered, not dropped) channel named `name`.
    pub fn live(&self, name: &str) -> Option<&ChannelState> {
        self.get(*self.by_name.get(name)?)
    }

    /// Where a dropped `name` left off: its next offset and the commit of the drop.
    pub fn retired(&self, name: &str) -> Option<(Offset, CommitSeq)> {
        self.retired.get(name).copied()
    }

    /// The channel `id`, dropped or not, if it has state.
    pub fn get(&self, id: ChannelId) -> Option<&ChannelState> {
        self.channels.get(self.index(id)?)
    }

    /// Every channel with state, dropped ones included, in id order.
    pub fn channels(&self) -> impl Iterator<Item = &ChannelState> {
        self.channels.iter()
    }

    /// Number of live channels.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no channel is registered.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The id and first offset a registration of `name` (not live) gets: the
    /// next id, and offsets from where a dropped channel of the name stopped
    /// (so that its offsets never repeat), or 0.
    pub fn registration(&self, name: &str) -> Result<(ChannelId, Offset), Refusal> {
        debug_assert!(!self.by_name.contains_key(name), "{name:?} is live");
        let id = u32::try_from(self.next_id())
            .ok()
            .filter(|&i| i <= CHANNEL_ID_MAX)
            .ok_or(Refusal::IdsExhausted {
                registrations: self.next_id(),
            })?;
        let first = self.retired(name).map_or(Offset(0), |(next, _)| next);
        Ok((ChannelId(id), first))
    }

    /// Registers `name` in commit `commit` as [`ChannelTable::registration`]
    /// says; the caller asked it first.
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
                name: ch.name.clone(),
            });
        }
        Ok(ch.next_offset)
    }

    /// Assigns offsets to `count` new records of `id`; returns the first.
    /// The caller asked [`ChannelTable::appendable`] first.
    pub fn assign(&mut self, id: ChannelId, count: u64) -> Offset {
        let ch = self
            .state_mut(id)
            .expect("the caller asked whether the records are appendable");
        let first = ch.next_offset;
        assert!(
            !ch.dropped() && first.0 + count <= OFFSET_MAX,
            "offsets assigned to a dropped channel or past OFFSET_MAX"
        );
        ch.next_offset = Offset(first.0 + count);
        first
    }

    /// Keeps an acknowledged record at the channel's durable end. A channel
    /// dropped while its commit was in flight keeps nothing.
    pub fn acknowledge(&mut self, id: ChannelId, record: Bytes) {
        let ch = self.state_mut(id).expect("a channel of this table");
        if ch.dropped() {
            return;
        }
        ch.records.push_back(record);
        assert!(
            ch.durable_next_offset() <= ch.next_offset,
            "acknowledged past the assigned offsets"
        );
    }

    /// Drops the live channel `id` in commit `dropped_in`: frees its records
    /// and its name. Returns its next offset, where a later registration of
    /// the name starts.
    pub fn drop_channel(&mut self, id: ChannelId, dropped_in: CommitSeq) -> Offset {
        let ch = self.state_mut(id).expect("a channel of this table");
        assert!(!ch.dropped(), "channel {:?} dropped twice", ch.name);
        ch.dropped_in = Some(dropped_in);
        ch.records = VecDeque::new();
        ch.lost = Vec::new();
        let next = ch.next_offset;
        // What stays of a dropped channel is its durable end, for the calls
        // that arrive before the drop is durable.
        ch.first_offset = next;
        ch.lost_count = 0;
        let name = ch.name.clone();
        self.by_name.remove(&name);
        self.retired.insert(name, (next, dropped_in));
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
        let ch = self.state_mut(id).expect("a channel of this table");
        assert!(
            !ch.dropped() && ch.first_offset < first && first <= ch.durable_next_offset(),
            "a checkpoint outside the live records"
        );
        ch.trim_front(first);
        ch.changed_in = commit;
    }

    /// What a truncation of `id` from `first_removed` on does: it moves the
    /// next offset back to `first_removed`, which must not be below the first
    /// live offset (checkpointed records stay gone) nor past the next
    /// offset. Records of the channel still in flight make it wait.
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
        if ch.durable_next_offset() < ch.next_offset {
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
        let ch = self.state_mut(id).expect("a channel of this table");
        assert!(
            !ch.dropped()
                && ch.first_offset <= next
                && next < ch.next_offset
                && ch.durable_next_offset() == ch.next_offset,
            "a truncation outside the live records, or with records in flight"
        );
        ch.trim_back(next);
        ch.changed_in = commit;
    }

    /// The first live offset of `id`.
    pub fn first_offset(&self, id: ChannelId) -> Result<Offset, Refusal> {
        Ok(self.open(id)?.first_offset)
    }

    /// Records of `id` with offsets in `from..to`, clamped to what is held.
    pub fn read(&self, id: ChannelId, from: Offset, to: Offset) -> Result<Vec<Record>, Refusal> {
        let ch = self.open(id)?;
        let start = from.max(ch.first_offset);
        let end = to.min(ch.durable_next_offset());
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
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
        Ok(out)
    }

    /// One past the last acknowledged record of `id`.
    pub fn durable_next_offset(&self, id: ChannelId) -> Result<Offset, Refusal> {
        Ok(self.open(id)?.durable_next_offset())
    }

    /// Applies an entry replayed from commit `commit` of the WAL: it must be
    /// what the calls above would have logged. `lenient` (after
    /// `RecoveryMode::SkipDamaged` passed over a commit) accepts the gaps a
    /// skipped commit leaves: ids and offsets that jump ahead, records and
    /// drops of channels whose registration was lost. Returns the offsets
    /// lost in such a gap.
    pub fn replay(
        &mut self,
        entry: Logged<'_>,
        commit: CommitSeq,
        lenient: bool,
    ) -> Result<u64, Contradiction> {
        let (channel, offset) = match &entry {
            Logged::Register { channel, first, .. } => (*channel, *first),
            Logged::Append {
                channel, offset, ..
            } => (*channel, *offset),
            Logged::Drop { channel, next } => (*channel, *next),
            Logged::Checkpoint { channel, first } => (*channel, *first),
            Logged::Truncate { channel, next } => (*channel, *next),
        };
        let record = matches!(entry, Logged::Append { .. });
        if offset.0 > OFFSET_MAX || (record && offset.0 == OFFSET_MAX) {
            return Err(Contradiction::OffsetBeyondMax { channel, offset });
        }
        if channel.0 > CHANNEL_ID_MAX {
            return Err(Contradiction::IdBeyondMax(channel));
        }
        match entry {
            Logged::Register { name, .. } => {
                self.replay_register(channel, offset, name, commit, lenient)?;
                Ok(0)
            }
            Logged::Append { record, .. } => {
                if lenient && self.open(channel).is_err() {
                    // The channel's registration was lost (or its drop
                    // survived while a later registration was lost).
                    return Ok(1);
                }
                let lost = self.replay_gap(EntryWord::Record, channel, offset, lenient)?;
                self.assign(channel, 1);
                self.acknowledge(channel, record);
                Ok(lost)
            }
            Logged::Drop { .. } => {
                if lenient && self.open(channel).is_err() {
                    return Ok(0);
                }
                let lost = self.replay_gap(EntryWord::Drop, channel, offset, lenient)?;
                self.drop_channel(channel, commit);
                Ok(lost)
            }
            Logged::Checkpoint { .. } => self.replay_checkpoint(channel, offset, commit, lenient),
            Logged::Truncate { .. } => {
                if lenient && self.open(channel).is_err() {
                    return Ok(0);
                }
                let ch = self.open(channel).map_err(|_| Contradiction::NoChannel {
                    entry: EntryWord::Truncate,
                    channel,
                })?;
                if lenient && offset >= ch.next_offset {
                    // The records it removed were lost with a skipped commit.
                    return self.replay_gap(EntryWord::Truncate, channel, offset, lenient);
                }
                if offset < ch.first_offset || offset >= ch.next_offset {
                    return Err(ch.contradicts(EntryWord::Truncate, offset));
                }
                self.truncate(channel, offset, commit);
                Ok(0)
            }
        }
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
        if lenient && self.open(channel).is_err() {
            return Ok(0);
        }
        let ch = self.open(channel).map_err(|_| Contradiction::NoChannel {
            entry: EntryWord::Checkpoint,
            channel,
        })?;
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
        if lenient {
            self.skip_ids(channel);
        }
        if self.next_id() != u64::from(channel.0) {
            return Err(Contradiction::IdOutOfOrder {
                channel,
                next: self.next_id(),
            });
        }
        if self.by_name.contains_key(name) {
            return Err(Contradiction::RegisteredTwice(name.into()));
        }
        let (id, expected) = self
            .registration(name)
            .expect("the id was checked against the bound");
        if first != expected && !(lenient && first > expected) {
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
                name: ch.name.clone(),
                offset,
                expected,
            });
        }
        self.push_lost(id, offset);
        Ok(offset.0 - expected.0)
    }

    /// The id the next registration gets (may exceed [`CHANNEL_ID_MAX`]:
    /// then no registration is possible).
    fn next_id(&self) -> u64 {
        self.channels.len() as u64 + self.lost_id_count
    }

    fn insert(&mut self, name: &str, id: ChannelId, first_offset: Offset, commit: CommitSeq) {
        assert_eq!(
            u64::from(id.0),
            self.next_id(),
            "ids are handed out in order"
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
            registered_in: commit,
            dropped_in: None,
            changed_in: commit,
            lost: Vec::new(),
            lost_count: 0,
        });
        self.retired.remove(name);
    }

    /// Marks channel ids from `next_id()` up to `to` (exclusive) as taken by
    /// channels whose registrations were lost with a damaged commit
    /// (`RecoveryMode::SkipDamaged`): they have no state, and later ids stay
    /// where the WAL has them. One entry for the whole range.
    fn skip_ids(&mut self, to: ChannelId) {
        let from = self.next_id();
        if u64::from(to.0) <= from {
            return;
        }
        self.lost_ids.push((from as u32, to.0));
        self.lost_id_count += u64::from(to.0) - from;
    }

    /// Marks the offsets from the channel's next offset up to `to` as lost
    /// with a damaged commit (`RecoveryMode::SkipDamaged`).
    fn push_lost(&mut self, id: ChannelId, to: Offset) {
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

    /// The channel `id` if it is live.
    fn open(&self, id: ChannelId) -> Result<&ChannelState, Refusal> {
        let ch = self.get(id).ok_or(Refusal::Unknown(id))?;
        match ch.dropped_in {
            Some(dropped_in) => Err(Refusal::Dropped {
                name: ch.name.clone(),
                dropped_in,
            }),
            None => Ok(ch),
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        t.acknowledge(id, Bytes::from_static(data));
        o
    }

    #[test]
    fn read_clamps_to_durable_records() {
        let mut t = ChannelTable::default();
        let id = register(&mut t, "a", 1);
        t.appendable(id, 3).unwrap();
        assert_eq!(t.assign(id, 3), Offset(0));
        t.acknowledge(id, Bytes::from_static(b"0"));
        t.acknowledge(id, Bytes::from_static(b"1"));
        let r = t.read(id, Offset(1), Offset(100)).unwrap();
        assert_eq!(offsets_of(&r), [1]);
        assert_eq!(&r[0].data[..], b"1");
        assert!(t.read(id, Offset(5), Offset(2)).unwrap().is_empty());
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
                    record: Bytes::from_static(data),
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
            assert_eq!(replayed.replay(e, CommitSeq(c), false), Ok(0));
        }
        let view = |t: &ChannelTable| -> Vec<_> {
            t.channels()
                .map(|c| {
                    let read = t.read(c.id(), Offset(0), Offset(u64::MAX));
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
            t.read(a, Offset(0), Offset(1)),
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
        assert_eq!(t.replay(near, CommitSeq(3), true), Ok(0));
        let b = t.live("b").unwrap().id();
        let exhausted = Err(Refusal::OffsetsExhausted { name: "b".into() });
        assert_eq!(t.appendable(b, 2), exhausted);
        assert_eq!(t.appendable(b, 1), Ok(Offset(OFFSET_MAX - 1)));

        let last = Logged::Register {
            channel: ChannelId(CHANNEL_ID_MAX),
            first: Offset(0),
            name: "c",
        };
        assert_eq!(t.replay(last, CommitSeq(4), true), Ok(0));
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
            record: Bytes::from_static(b"3"),
        };
        assert_eq!(
            t.replay(jump, CommitSeq(3), true),
            Ok(2),
            "offsets 1 and 2 lost"
        );
        let r = t.read(id, Offset(0), Offset(10)).unwrap();
        assert_eq!(offsets_of(&r), [0, 3]);
        assert_eq!(&r[1].data[..], b"3");
        let ch = t.get(id).unwrap();
        assert_eq!(ch.durable_next_offset(), Offset(4));
        assert_eq!(
            (ch.held_records(), ch.lost_offsets()),
            (2, 2),
            "no placeholders"
        );
        assert_eq!(offsets_of(&t.read(id, Offset(1), Offset(4)).unwrap()), [3]);

        let far = Logged::Register {
            channel: ChannelId(1 << 30),
            first: Offset(0),
            name: "b",
        };
        assert_eq!(t.replay(far, CommitSeq(4), true), Ok(0));
        assert!(t.get(ChannelId(5)).is_none());
        assert_eq!(t.get(ChannelId(1 << 30)).unwrap().name(), "b");
        assert_eq!(t.get(id).unwrap().name(), "a");
        assert_eq!(t.len(), 2);
        let orphan = Logged::Append {
            channel: ChannelId(9),
            offset: Offset(0),
            record: Bytes::new(),
        };
        assert_eq!(
            t.replay(orphan, CommitSeq(5), true),
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
            record: Bytes::new(),
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
                t.replay(entry, CommitSeq(3), false),
                Err(expected),
                "{shown}"
            );
        }
        assert_eq!(t.get(a).unwrap().next_offset(), Offset(1), "nothing moved");
        assert_eq!(t.read(a, Offset(0), Offset(9)).unwrap().len(), 1);
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
                    record: Bytes::from_static(data),
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
        let read = live.read(a, Offset(0), Offset(9)).unwrap();
        assert_eq!(offsets_of(&read), [2, 3, 4]);
        assert_eq!(
            &read[2].data[..],
            b"4 again",
            "offset 4 names its second record"
        );

        let mut replayed = ChannelTable::default();
        for (c, e) in log {
            assert_eq!(replayed.replay(e, CommitSeq(c), false), Ok(0));
        }
        assert_eq!(replayed.read(a, Offset(0), Offset(9)), Ok(read));
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
        live.acknowledge(a, Bytes::from_static(b"5"));
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
            record: Bytes::from_static(data),
        };
        assert_eq!(t.replay(at(3, b"3"), CommitSeq(2), true), Ok(2));
        assert_eq!(t.replay(at(6, b"6"), CommitSeq(3), true), Ok(2));
        // Held 0, lost 1..3, held 3, lost 4..6, held 6.
        t.checkpoint(a, Offset(2), CommitSeq(4));
        let ch = t.get(a).unwrap();
        assert_eq!((ch.held_records(), ch.lost_offsets()), (2, 3));
        assert_eq!(
            offsets_of(&t.read(a, Offset(0), Offset(9)).unwrap()),
            [3, 6]
        );
        t.truncate(a, Offset(5), CommitSeq(5));
        let ch = t.get(a).unwrap();
        assert_eq!((ch.held_records(), ch.lost_offsets()), (1, 2));
        assert_eq!(ch.durable_next_offset(), Offset(5));
        assert_eq!(offsets_of(&t.read(a, Offset(0), Offset(9)).unwrap()), [3]);
        let past = Logged::Checkpoint {
            channel: a,
            first: Offset(8),
        };
        assert_eq!(
            t.replay(past, CommitSeq(6), true),
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
