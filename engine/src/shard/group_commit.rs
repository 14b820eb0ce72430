//! Group commit: the commits and data syncs in flight, their completions in
//! order, acknowledgement, and fail-stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::buffer::channels::{Anchor, Loc};
use crate::config::Config;
use crate::error::Error;
use crate::io::ring::{Completion, Refused};
use crate::io::OpError;
use crate::metrics::commit_records_bucket;
use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq};
use crate::wal::commit::CommitBuilder;
use crate::wal::format::header_crc;
use crate::wal::snapshot::CommitTie;

use super::reads::READ_OP;
use super::run::Shard;
use super::waiters::{complete_waiter, Waiter};

/// A commit: its buffer and who waits for it.
pub(super) struct Batch {
    pub(super) builder: CommitBuilder,
    pub(super) waiters: Vec<Waiter>,
    /// Appended records: the channel, the payload, and the entry's byte
    /// position in the commit.
    pub(super) records: Vec<(ChannelId, Bytes, u32)>,
    /// The commit holds a checkpoint or truncation: it is durable before it
    /// is acknowledged in every durability mode (in `Periodic`, it carries a
    /// data sync).
    pub(super) sync_now: bool,
    /// Channels and dropped names the commit states whole (registrations,
    /// entries carried forward): anchored in its segment once it is durable.
    pub(super) anchors: Vec<Anchor>,
    /// Relocated records of the commit: a channel, offsets `from..to`.
    pub(super) relocations: Vec<(ChannelId, Offset, Offset)>,
    /// Each relocated record's entry, in the order of `relocations`: its
    /// byte position in the commit and its payload length.
    pub(super) relocated_at: Vec<(u32, u32)>,
    /// The lowest channel id the commit registers: the next id before it.
    pub(super) registered_from: Option<u64>,
    /// The commit lets records go (a checkpoint, truncation or drop): the
    /// oldest segments may be reclaimable once it completes.
    pub(super) frees: bool,
}

impl Batch {
    pub(super) fn new(config: &Config, block: usize) -> Batch {
        Batch {
            builder: CommitBuilder::new(
                config.commit_bytes_max,
                config.records_per_commit_max,
                block,
            ),
            waiters: Vec::with_capacity(config.records_per_commit_max),
            records: Vec::with_capacity(config.records_per_commit_max),
            sync_now: false,
            anchors: Vec::new(),
            relocations: Vec::new(),
            relocated_at: Vec::new(),
            registered_from: None,
            frees: false,
        }
    }

    /// Forgets what the commit carried (it completed, or it never will).
    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.anchors.clear();
        self.relocations.clear();
        self.relocated_at.clear();
        self.registered_from = None;
        self.sync_now = false;
        self.frees = false;
    }

    /// The batch being built (its first commit numbered `next`) and one
    /// spare for every commit that may be in flight.
    pub(super) fn all(config: &Config, block: usize, next: CommitSeq) -> (Batch, Vec<Batch>) {
        let mut building = Batch::new(config, block);
        building.builder.reset(next);
        let spare = (0..config.commits_in_flight_max)
            .map(|_| Batch::new(config, block))
            .collect();
        (building, spare)
    }
}

/// An operation on its way to the device, in the order it was started.
pub(super) struct Flight {
    pub(super) id: u64,
    /// The commit, or `None` for a periodic data sync.
    pub(super) batch: Option<Batch>,
    /// The segment the operation writes or syncs.
    pub(super) segment: SegmentSeq,
    /// The commit's byte position in the segment (0 for a data sync).
    pub(super) position: u64,
    pub(super) payload_bytes: u64,
    /// Periodic mode: this commit was written with a data sync.
    pub(super) synced: bool,
    /// For a data sync: the last commit it makes durable.
    pub(super) covers: CommitSeq,
    pub(super) started: Instant,
    pub(super) outcome: Option<std::result::Result<(), OpError>>,
}

impl Shard {
    /// Periodic mode: a data sync is due and the shard can make it.
    pub(super) fn sync_due(&self) -> bool {
        self.clock.sync_due() && self.failed.is_none()
    }

    pub(super) fn shard_failed(&self) -> Option<Error> {
        self.failed.as_ref().map(|cause| Error::ShardFailed {
            shard: self.id,
            cause: Arc::new(cause.clone()),
        })
    }

    pub(super) fn next_op_id(&mut self) -> u64 {
        self.next_op_id += 1;
        self.next_op_id
    }

    /// Starts the commit being built, unless it has to wait for the flights
    /// (a full window, or a segment roll).
    /// Whether the commit being built can start now, in a segment with
    /// room for it (rolling to the next one if needed); fails the shard if
    /// the segment cannot be had.
    fn commit_may_start(&mut self) -> bool {
        if let Err(e) = self.ready_segment() {
            self.fail(e);
            return false;
        }
        if self.must_sync_alone() && !self.flights.is_empty() {
            // The commit must carry a data sync covering every write.
            return false;
        }
        if self.needs_new_segment() {
            if !self.flights.is_empty() {
                // Segments change only when nothing is in flight, so that a
                // torn tail never spans two segments.
                return false;
            }
            if let Err(e) = self.roll_segment() {
                self.fail(e);
                return false;
            }
        }
        if let Err(e) = self.raise_written_below() {
            self.fail(e);
            return false;
        }
        true
    }

    pub(super) fn start_commit(&mut self) {
        if let Some(err) = self.shard_failed() {
            // Fail-stop: nothing is written after a failure, whatever was
            // built since (see `fail`); whoever waits on it is answered.
            for w in self.building.waiters.drain(..) {
                complete_waiter(w, Err(err.clone()));
            }
            self.building.clear();
            let next = self.building.builder.commit_seq();
            self.building.builder.reset(next);
            return;
        }
        if !self.commit_may_start() {
            return;
        }
        let seq = self.building.builder.commit_seq();
        let spare = self
            .spare
            .pop()
            .expect("a spare batch for every commit in flight");
        let plan = self
            .clock
            .plan_write(seq, self.flights.is_empty(), self.building.sync_now);
        let mut batch = std::mem::replace(&mut self.building, spare);
        let position = self.write_position;
        // A power cut may leave a hole among the commits of the window,
        // followed by this commit; recovery cuts such a hole as a torn tail
        // only within the window.
        let sealed = batch.builder.seal(
            self.id,
            self.store_id,
            self.segment.seq,
            position,
            plan.window,
        );
        let len = sealed.len;
        let tie = CommitTie {
            seq: batch.builder.commit_seq(),
            segment: self.segment.seq,
            position,
            header_crc: header_crc(&sealed.buf),
        };
        assert!(
            position + len as u64 <= self.segment.bytes,
            "a commit of {len} bytes at {position} past its {}-byte segment",
            self.segment.bytes
        );
        let next = CommitSeq(batch.builder.commit_seq().0 + 1);
        self.building.builder.reset(next);
        let payload_bytes = batch.records.iter().map(|(_, r, _)| r.len() as u64).sum();
        let id = self.next_op_id();
        let started = self
            .io
            .write(id, &self.segment.file, position, sealed.buf, len, plan.sync);
        let started = started.map_err(|Refused { error, buf }| {
            if let Some(buf) = buf {
                batch.builder.restore(buf);
            }
            error
        });
        let flight = Flight {
            id,
            batch: Some(batch),
            segment: self.segment.seq,
            position,
            payload_bytes,
            synced: plan.synced,
            covers: CommitSeq(0),
            started: Instant::now(),
            outcome: None,
        };
        if !self.fly(flight, started) {
            return;
        }
        self.last_commit = Some(tie);
        self.snapshots.since += len as u64;
        self.write_position += len as u64;
        self.preparer
            .report_fill(self.write_position, self.segment.bytes);
        self.metrics
            .commit_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(super) fn start_sync(&mut self) {
        let id = self.next_op_id();
        let started = self.io.sync(id, &self.segment.file);
        let flight = Flight {
            id,
            batch: None,
            segment: self.segment.seq,
            position: 0,
            payload_bytes: 0,
            synced: false,
            covers: self.clock.completed(),
            started: Instant::now(),
            outcome: None,
        };
        self.fly(flight, started);
    }

    /// Lists a flight whose start returned `started`; returns whether it is
    /// on its way. A failed start fails the shard while the flight is listed
    /// (so that its callers get the error), then takes it back: nothing of it
    /// was queued, so nothing will complete.
    fn fly(&mut self, flight: Flight, started: std::result::Result<(), OpError>) -> bool {
        self.flights.push_back(flight);
        let Err(e) = started else {
            return true;
        };
        let e = self.op_error(e);
        self.fail(e);
        self.unstart_last();
        false
    }

    /// Takes back the newest flight, whose start failed (nothing of it was
    /// queued, so nothing will complete).
    fn unstart_last(&mut self) {
        if let Some(f) = self.flights.pop_back() {
            if let Some(mut batch) = f.batch {
                batch.clear();
                self.spare.push(batch);
            }
        }
    }

    /// Records operation `id`'s outcome, then acknowledges finished
    /// operations from the oldest on, stopping at the first unfinished one.
    pub(super) fn complete(&mut self, c: Completion) {
        if c.id & READ_OP != 0 {
            self.read_completed(c);
            return;
        }
        let Completion { id, outcome, buf } = c;
        // Flights are in start order and ids only grow, so the table is
        // sorted by id.
        let i = self
            .flights
            .binary_search_by_key(&id, |f| f.id)
            .expect("a completion for an operation in flight");
        let flight = &mut self.flights[i];
        flight.outcome = Some(outcome);
        if let (Some(buf), Some(batch)) = (buf, flight.batch.as_mut()) {
            batch.builder.restore(buf);
        }
        let device_ns = flight.started.elapsed().as_nanos() as u64;
        self.metrics
            .commit_device_ns
            .fetch_add(device_ns, Ordering::Relaxed);
        while self.flights.front().is_some_and(|f| f.outcome.is_some()) {
            let front = self.flights.front_mut().expect("checked");
            let outcome = front.outcome.take().expect("checked");
            if let Err(e) = outcome {
                if self.failed.is_none() {
                    // Fail while the failed flight is still in `flights`, so
                    // that its own callers are answered with the error too.
                    let e = self.op_error(e);
                    self.fail(e);
                }
            }
            let f = self.flights.pop_front().expect("checked");
            match f.batch {
                None => {
                    if self.failed.is_none() {
                        self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
                        self.clock.sync_completed(f.covers);
                    }
                }
                Some(mut batch) => {
                    if self.failed.is_none() {
                        self.acknowledge(
                            &mut batch,
                            (f.segment, f.position),
                            f.payload_bytes,
                            f.synced,
                        );
                    }
                    batch.clear();
                    assert!(
                        batch.waiters.is_empty(),
                        "a finished commit still has waiters"
                    );
                    self.spare.push(batch);
                }
            }
        }
    }

    /// Acknowledges a completed commit, written into `segment` at
    /// `position`; `synced`: it carried the periodic data sync.
    pub(super) fn acknowledge(
        &mut self,
        batch: &mut Batch,
        (segment, position): (SegmentSeq, u64),
        payload_bytes: u64,
        synced: bool,
    ) {
        let seq = batch.builder.commit_seq();
        let records = batch.records.len() as u64;
        let loc = |at: u32, len: usize| Loc {
            commit: seq,
            position: (position + u64::from(at)) as u32,
            len: len as u32,
        };
        let tailing = self.tails.any_parked();
        for (channel, record, at) in batch.records.drain(..) {
            self.table
                .acknowledge(channel, loc(at, record.len()), segment, || record);
            if tailing {
                self.tails.wake(channel);
            }
        }
        for anchor in batch.anchors.drain(..) {
            self.table.anchored(&anchor, segment);
        }
        let mut placed = batch.relocated_at.iter();
        let mut locs = Vec::new();
        for (channel, from, to) in batch.relocations.drain(..) {
            locs.clear();
            locs.extend(
                placed
                    .by_ref()
                    .take((to.0 - from.0) as usize)
                    .map(|&(at, len)| loc(at, len as usize)),
            );
            self.table.relocated(channel, from, &locs, segment);
        }
        if batch.frees {
            self.reclaim.due = true;
        }
        self.completed_waiters.append(&mut batch.waiters);
        let m = &self.metrics;
        m.commits.fetch_add(1, Ordering::Relaxed);
        m.records.fetch_add(records, Ordering::Relaxed);
        m.payload_bytes.fetch_add(payload_bytes, Ordering::Relaxed);
        m.commit_records_log2[commit_records_bucket(records)].fetch_add(1, Ordering::Relaxed);
        if self.clock.commit_completed(seq, synced) {
            m.syncs.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn op_error(&self, e: OpError) -> Error {
        e.into_error(Some(self.segment.path.clone()))
    }

    /// Fail-stop: nothing is acknowledged from now on. Everything waiting on
    /// a commit that did not complete gets the error; reads go on. Buffers of
    /// operations still in flight stay in `flights` until their completions
    /// arrive.
    pub(super) fn fail(&mut self, e: Error) {
        if self.failed.is_none() {
            self.failed = Some(e);
        }
        let err = self.shard_failed().expect("set above");
        let waiters = self
            .flights
            .iter_mut()
            .filter_map(|f| f.batch.as_mut())
            .flat_map(|b| b.waiters.drain(..))
            .chain(self.building.waiters.drain(..));
        for w in waiters {
            complete_waiter(w, Err(err.clone()));
        }
        self.building.clear();
        self.tails.end_parked(&err);
        let next = self.building.builder.commit_seq();
        self.building.builder.reset(next);
        // A reclamation on its way would carry its entries into the next
        // commits: there are none after a failure.
        self.reclaim.abandon();
        self.clock.stop();
        if let Some(r) = self.deferred.take() {
            r.fail(err);
        }
    }
}
