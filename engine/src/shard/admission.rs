//! Admission: each request is checked against the channel table and the
//! commit being built, then refused, deferred, or given its offsets and an
//! entry in the commit.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buffer::channels::{Anchor, Change, Refusal, OFFSET_MAX};
use crate::config::Config;
use crate::error::Error;
use crate::shard::ack::Ack;
use crate::shard::inbox::Request;
use crate::types::{ChannelId, CommitSeq, Offset, ShardId};
use crate::wal::format::{entry_bytes, EntryKind};

use super::reads::Purpose;
use super::run::Shard;
use super::waiters::{complete_waiter, Owed, Waiter};

pub(super) enum Accepted {
    Done,
    Full(Request),
}

/// What a request does to the WAL's space: whether it may use the end of a
/// segment kept for requests that free space ([`Config::reserve_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    /// It grows what is live (appends, registrations): it may use the
    /// reserve only with the next segment at hand.
    Grows,
    /// It frees space or lets it be freed (checkpoints, truncations, drops,
    /// entries carried forward before a reclamation): the reserve is its.
    Frees,
}

/// Whether a request's entries may join the commit being built.
pub(super) enum Admit {
    Yes,
    /// Not now: the commit is full, or the request starts the next segment
    /// and must wait for the commits in flight.
    Full,
    /// Refused with this error; nothing was assigned.
    Refused(Error),
}

/// The records of an append request: one, or a batch.
pub(super) enum Records {
    One(Bytes),
    Batch(Vec<Bytes>),
}

impl Records {
    pub(super) fn len(&self) -> usize {
        match self {
            Records::One(_) => 1,
            Records::Batch(b) => b.len(),
        }
    }

    /// Bytes their entries take in a commit.
    pub(super) fn entry_bytes(&self) -> usize {
        match self {
            Records::One(r) => entry_bytes(r.len()),
            Records::Batch(b) => b.iter().map(|r| entry_bytes(r.len())).sum(),
        }
    }

    /// The error for records that no commit can hold.
    pub(super) fn too_large(&self, config: &Config) -> Error {
        match self {
            Records::One(r) => Error::RecordTooLarge {
                len: r.len(),
                max: config.record_bytes_max,
            },
            Records::Batch(b) => Error::BatchTooLarge {
                records: b.len(),
                bytes: self.entry_bytes(),
                bytes_max: config.commit_bytes_max,
                records_max: config.records_per_commit_max,
            },
        }
    }

    pub(super) fn into_request(self, channel: ChannelId, ack: Arc<Ack<Offset>>) -> Request {
        match self {
            Records::One(record) => Request::Append {
                channel,
                record,
                ack,
            },
            Records::Batch(records) => Request::AppendBatch {
                channel,
                records,
                ack,
            },
        }
    }

    /// Calls `f` with each record and its index, in order.
    pub(super) fn for_each(self, mut f: impl FnMut(usize, Bytes)) {
        match self {
            Records::One(r) => f(0, r),
            Records::Batch(b) => b.into_iter().enumerate().for_each(|(i, r)| f(i, r)),
        }
    }
}

/// A checkpoint through an offset, or a truncation from one.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lifecycle {
    Checkpoint(Offset),
    Truncate(Offset),
}

impl Lifecycle {
    /// The request again, to wait in `deferred`.
    fn request(self, channel: ChannelId, ack: Arc<Ack<()>>) -> Request {
        match self {
            Lifecycle::Checkpoint(through) => Request::Checkpoint {
                channel,
                through,
                ack,
            },
            Lifecycle::Truncate(first_removed) => Request::Truncate {
                channel,
                first_removed,
                ack,
            },
        }
    }
}

/// After the next segment could not be created for lack of space, requests
/// that need it are refused at once for this long; the next one after it
/// tries again (a reclamation that frees space ends it at once).
pub(super) const NO_SPACE_RETRY_AFTER: Duration = Duration::from_millis(100);

/// The error for a request refused because the next segment cannot be had.
fn no_space(shard: ShardId, cause: &Error) -> Error {
    Error::NoSpace {
        shard,
        cause: Arc::new(cause.clone()),
    }
}

impl Shard {
    /// Admission of `records` records with `bytes` entry bytes into the
    /// commit being built. A commit never runs past its segment's end: when
    /// it would, what is built goes first, and the request starts the next
    /// segment — admitted only once that segment exists, so that a full
    /// filesystem (or a WAL at its space limit) refuses the request before
    /// it gets an offset, and never stops the shard. A request that grows
    /// the WAL goes into the end of a segment kept for requests that free
    /// space only while the next segment can be had, so that a checkpoint
    /// always has room to be written.
    pub(super) fn admit(&mut self, records: usize, bytes: usize, need: Need) -> Admit {
        let builder = &self.building.builder;
        if !builder.fits(records, bytes) {
            return Admit::Full;
        }
        let end = self
            .write_position
            .saturating_add(builder.sealed_len_with(bytes) as u64);
        let in_reserve = end > self.segment.bytes.saturating_sub(self.reserve_bytes);
        if end <= self.segment.bytes && (need == Need::Frees || !in_reserve) {
            return Admit::Yes;
        }
        // The next segment decides: it must exist to start it, or (growing
        // into the reserve) to be sure there is somewhere to go after.
        let seq = self.next_segment_seq;
        let ready = self.preparer.is_ready(seq);
        if ready && (end <= self.segment.bytes || builder.is_empty()) {
            return Admit::Yes;
        }
        if !builder.is_empty() {
            // What is built goes first.
            return Admit::Full;
        }
        if let Some((at, cause)) = &self.no_space {
            if at.elapsed() < NO_SPACE_RETRY_AFTER {
                return Admit::Refused(no_space(self.id, cause));
            }
        }
        if !self.flights.is_empty() {
            // Acknowledgements do not wait for the preparer: the request
            // waits for the flights first (segments change only when idle).
            return Admit::Full;
        }
        match self.preparer.wait_ready(seq) {
            Ok(()) => {
                self.no_space = None;
                Admit::Yes
            }
            Err(e) if e.is_no_space() => {
                self.metrics.no_space.fetch_add(1, Ordering::Relaxed);
                let refused = no_space(self.id, &e);
                self.no_space = Some((Instant::now(), e));
                // Reclaiming may free (or relocate past) what holds the space.
                self.reclaim.due = true;
                Admit::Refused(refused)
            }
            Err(e) => {
                self.fail(e);
                Admit::Refused(self.shard_failed().expect("failed above"))
            }
        }
    }

    pub(super) fn accept(&mut self, request: Request) -> Accepted {
        match request {
            Request::Register { name, ack } => self.accept_register(name, ack),
            Request::Unregister { name, ack } => self.accept_unregister(name, ack),
            Request::Append {
                channel,
                record,
                ack,
            } => self.accept_append(channel, Records::One(record), ack),
            Request::AppendBatch {
                channel,
                records,
                ack,
            } => self.accept_append(channel, Records::Batch(records), ack),
            Request::Read {
                channel,
                from,
                to,
                bytes_max,
                ack,
            } => {
                match self.table.read(channel, from, to, bytes_max) {
                    Ok(found) => self.read_found(channel, found, Purpose::Caller(ack)),
                    Err(r) => self.refuse(r, ack, Waiter::DroppedRead),
                }
                Accepted::Done
            }
            Request::Tail {
                channel,
                follower,
                from,
                bytes_max,
                ack,
            } => {
                self.accept_tail(channel, follower, from, bytes_max, ack);
                Accepted::Done
            }
            Request::NextOffset { channel, ack } => {
                match self.table.durable_next_offset(channel) {
                    Ok(next) => ack.complete(Ok(next)),
                    Err(r) => self.refuse(r, ack, Waiter::DroppedOffset),
                }
                Accepted::Done
            }
            Request::FirstOffset { channel, ack } => {
                match self.table.first_offset(channel) {
                    Ok(first) => ack.complete(Ok(first)),
                    Err(r) => self.refuse(r, ack, Waiter::DroppedOffset),
                }
                Accepted::Done
            }
            Request::Checkpoint {
                channel,
                through,
                ack,
            } => {
                let change = self.table.checkpointing(channel, through);
                self.accept_change(Lifecycle::Checkpoint(through), channel, change, ack)
            }
            Request::Truncate {
                channel,
                first_removed,
                ack,
            } => {
                let change = self.table.truncating(channel, first_removed);
                self.accept_change(Lifecycle::Truncate(first_removed), channel, change, ack)
            }
            Request::WalUsage { ack } => {
                ack.complete(Ok(self.wal_usage()));
                Accepted::Done
            }
            Request::Close => {
                self.closing = true;
                Accepted::Done
            }
        }
    }

    pub(super) fn accept_register(&mut self, name: Box<str>, ack: Arc<Ack<ChannelId>>) -> Accepted {
        if let Some(ch) = self.table.live(&name) {
            let w = Waiter::Channel(ack.into(), ch.id());
            self.answer_when_durable(ch.registered_in(), w);
            return Accepted::Done;
        }
        if let Some(e) = self.shard_failed() {
            ack.complete(Err(e));
            return Accepted::Done;
        }
        if let Err(r) = self.table.registration(&name) {
            self.refuse(r, ack, |_, _| {
                unreachable!("a registration is of no channel")
            });
            return Accepted::Done;
        }
        match self.admit(0, entry_bytes(name.len()), Need::Grows) {
            Admit::Yes => {}
            Admit::Full => return Accepted::Full(Request::Register { name, ack }),
            Admit::Refused(e) => {
                ack.complete(Err(e));
                return Accepted::Done;
            }
        }
        let commit = self.building.builder.commit_seq();
        let (id, first) = self.table.register(&name, commit);
        let batch = &mut self.building;
        batch
            .builder
            .push(EntryKind::Register, id, first, name.as_bytes());
        batch.registered_from.get_or_insert(u64::from(id.0));
        batch.anchors.push(Anchor::Channel(id));
        batch.waiters.push(Waiter::Channel(ack.into(), id));
        Accepted::Done
    }

    pub(super) fn accept_unregister(&mut self, name: Box<str>, ack: Arc<Ack<()>>) -> Accepted {
        let Some(id) = self.table.live(&name).map(|c| c.id()) else {
            // Never registered, or already dropped: answer once the drop (if
            // any) is durable.
            match self.table.retired(&name) {
                Some((_, dropped_in)) => {
                    self.answer_when_durable(dropped_in, Waiter::Unit(ack.into()))
                }
                None => ack.complete(Ok(())),
            }
            return Accepted::Done;
        };
        if let Some(e) = self.shard_failed() {
            ack.complete(Err(e));
            return Accepted::Done;
        }
        match self.admit(0, entry_bytes(0), Need::Frees) {
            Admit::Yes => {}
            Admit::Full => return Accepted::Full(Request::Unregister { name, ack }),
            Admit::Refused(e) => {
                ack.complete(Err(e));
                return Accepted::Done;
            }
        }
        let next = self
            .table
            .drop_channel(id, self.building.builder.commit_seq());
        // Parked subscriptions hear of the drop (once it is durable).
        self.tails.wake(id);
        let _ = self.building.builder.push(EntryKind::Drop, id, next, &[]);
        self.building.frees = true;
        self.building.waiters.push(Waiter::Unit(ack.into()));
        Accepted::Done
    }

    /// A checkpoint or truncation of `channel` that the table answered with
    /// `change`: refused, answered once what it asks is durable, or logged in
    /// the commit being built — which then carries a data sync in every
    /// durability mode, so that it is durable when it is answered.
    fn accept_change(
        &mut self,
        what: Lifecycle,
        channel: ChannelId,
        change: Result<Change, Refusal>,
        ack: Arc<Ack<()>>,
    ) -> Accepted {
        if let (Some(e), Ok(Change::To(_) | Change::AfterInFlight)) = (self.shard_failed(), &change)
        {
            // Nothing can be written, and nothing it waits for will complete.
            ack.complete(Err(e));
            return Accepted::Done;
        }
        let to = match change {
            Ok(Change::To(to)) => to,
            Ok(Change::Unchanged(commit)) => {
                self.answer_when_durable(commit, Waiter::Unit(ack.into()));
                return Accepted::Done;
            }
            // Its records in flight are acknowledged first: a truncation
            // never races the records it removes.
            Ok(Change::AfterInFlight) => return Accepted::Full(what.request(channel, ack)),
            Err(r) => {
                self.refuse(r, ack, Waiter::DroppedUnit);
                return Accepted::Done;
            }
        };
        match self.admit(0, entry_bytes(0), Need::Frees) {
            Admit::Yes => {}
            Admit::Full => return Accepted::Full(what.request(channel, ack)),
            Admit::Refused(e) => {
                ack.complete(Err(e));
                return Accepted::Done;
            }
        }
        let commit = self.building.builder.commit_seq();
        let kind = match what {
            Lifecycle::Checkpoint(_) => {
                self.table.checkpoint(channel, to, commit);
                EntryKind::Checkpoint
            }
            Lifecycle::Truncate(_) => {
                self.table.truncate(channel, to, commit);
                if let Some(ch) = self.table.get(channel) {
                    self.tails.truncated(channel, ch.name(), to, commit);
                }
                EntryKind::Truncate
            }
        };
        let _ = self.building.builder.push(kind, channel, to, &[]);
        self.building.sync_now = true;
        self.building.frees = true;
        self.building.waiters.push(Waiter::Unit(ack.into()));
        Accepted::Done
    }

    /// One append or a batch: the same checks, in the same order, and one
    /// waiter answered with the first offset.
    pub(super) fn accept_append(
        &mut self,
        channel: ChannelId,
        records: Records,
        ack: Arc<Ack<Offset>>,
    ) -> Accepted {
        if let Some(e) = self.shard_failed() {
            ack.complete(Err(e));
            return Accepted::Done;
        }
        let (count, bytes) = (records.len(), records.entry_bytes());
        if count == 0 || !self.building.builder.could_fit(count, bytes) {
            ack.complete(Err(records.too_large(&self.config)));
            return Accepted::Done;
        }
        if let Err(r) = self.table.appendable(channel, count as u64) {
            self.refuse(r, ack, Waiter::DroppedOffset);
            return Accepted::Done;
        }
        match self.admit(count, bytes, Need::Grows) {
            Admit::Yes => {}
            Admit::Full => return Accepted::Full(records.into_request(channel, ack)),
            Admit::Refused(e) => {
                ack.complete(Err(e));
                return Accepted::Done;
            }
        }
        let first = self.table.assign(channel, count as u64);
        let batch = &mut self.building;
        records.for_each(|i, record| {
            let offset = Offset(first.0 + i as u64);
            let at = batch
                .builder
                .push(EntryKind::Append, channel, offset, &record);
            batch.records.push((channel, record, at));
        });
        batch.waiters.push(Waiter::Offset(ack.into(), first));
        Accepted::Done
    }

    /// Answers a request the channel table refused. A call on a dropped
    /// channel is answered `ChannelDropped` once the drop is durable
    /// (`dropped` makes its waiter).
    pub(super) fn refuse<T>(
        &mut self,
        refusal: Refusal,
        ack: Arc<Ack<T>>,
        dropped: impl FnOnce(Owed<T>, Box<str>) -> Waiter,
    ) {
        let e = match refusal {
            Refusal::Dropped { name, dropped_in } => {
                let w = dropped(ack.into(), name);
                self.answer_when_durable(dropped_in, w);
                return;
            }
            Refusal::Unknown(channel) => Error::InvalidConfig {
                field: "channel",
                reason: format!(
                    "handle with id {} belongs to another engine instance; register the name \
                     again",
                    channel.0
                ),
            },
            Refusal::OffsetsExhausted { name } => Error::InvalidConfig {
                field: "channel",
                reason: format!("channel {name:?} has used every offset up to {OFFSET_MAX}"),
            },
            Refusal::OutOfRange {
                operation,
                name,
                offset,
                first,
                next,
                reason,
            } => Error::OffsetOutOfRange {
                operation,
                channel: name.into_string(),
                offset: offset.0,
                first: first.0,
                next: next.0,
                reason,
            },
            Refusal::IdsExhausted { registrations } => Error::InvalidConfig {
                field: "channel",
                reason: format!(
                    "shard {} has handed out every channel id (the WAL holds {registrations} \
                     registrations); no channel can be registered in it",
                    self.id.0
                ),
            },
        };
        ack.complete(Err(e));
    }

    /// Answers `waiter` once commit `registered_in` (a registration or a
    /// drop) completed, or with the shard's error if it cannot.
    pub(super) fn answer_when_durable(&mut self, registered_in: CommitSeq, waiter: Waiter) {
        if registered_in <= self.clock.completed() {
            complete_waiter(waiter, Ok(()));
        } else if let Some(e) = self.shard_failed() {
            complete_waiter(waiter, Err(e));
        } else if registered_in == self.building.builder.commit_seq() {
            self.building.waiters.push(waiter);
        } else {
            let flight = self
                .flights
                .iter_mut()
                .filter_map(|f| f.batch.as_mut())
                .find(|b| b.builder.commit_seq() == registered_in)
                .expect("an unacknowledged registration or drop is in a commit in flight");
            flight.waiters.push(waiter);
        }
    }
}
