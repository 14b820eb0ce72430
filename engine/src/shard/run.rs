//! The shard: its start (recovery, then the state it serves from) and the
//! loop that turns queued requests into group commits.
//!
//! Up to `commits_in_flight_max` commits are on their way to the device at
//! once (default 1), each one durable write; they are acknowledged strictly in
//! order. When one completes, its callers are woken in one pass, the shard
//! yields its core once so that they can append again, and then everything
//! that queued (up to the commit limits) becomes the next commit, submitted at
//! once with one `io_uring_enter`. While commits are in flight
//! the shard waits in the ring for completions and callers never need to wake
//! it; only an idle shard announces sleep and is woken through its eventfd.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::channels::ChannelTable;
use crate::config::Config;
use crate::config::RecoveryMode;
use crate::cores::pin_current_thread;
use crate::error::{Error, Result};
use crate::io::file::{self, Access};
use crate::io::fs::Fs;
use crate::io::ring::Ring;
use crate::metrics::ShardMetrics;
use crate::recovery::DamageAction;
use crate::recovery::{recover_shard, Cut, RecoverContext, Recovered};
use crate::shard::inbox::{Inbox, Request};
use crate::types::{CommitSeq, SegmentSeq, ShardId};
use crate::wal::manifest::{Manifest, ManifestState};
use crate::wal::preparer::{PreparerSpec, SegmentPreparer};
use crate::wal::segment::{LogSegment, Segment};
use crate::wal::snapshot::CommitTie;

use super::active_segment::{manifest_stale, sync_replayed, ActiveSegment};
use super::admission::Accepted;
use super::durability::DurabilityClock;
use super::group_commit::{Batch, Flight};
use super::reads::Reads;
use super::reclaim::Reclaim;
use super::snapshot::Snapshots;
use super::tails::Tails;
use super::thread::{Readiness, ShardSpec};
use super::waiters::{complete_waiter, Waiter};

/// Longest time an idle shard sleeps before re-checking its inbox.
///
/// Not needed for correctness: a caller wakes a shard that announced sleep
/// through its eventfd, and the backends end a wait for a wake that arrived
/// before it (`io/uring.rs` keeps the wake's completion for the next wait).
/// It is a safety net: a sleep that runs to this bound with requests queued
/// is counted in `wakeups_missed`, which tests and `corewal load` expect to
/// be 0. An idle shard wakes once a second for it; no cost shows in any
/// benchmark.
pub(super) const IDLE_WAIT_MAX: Duration = Duration::from_secs(1);

pub(super) struct Shard {
    pub(super) id: ShardId,
    pub(super) config: Arc<Config>,
    pub(super) store_id: u64,
    pub(super) block: usize,
    pub(super) inbox: Arc<Inbox>,
    pub(super) metrics: Arc<ShardMetrics>,
    pub(super) io: Ring,
    pub(super) table: ChannelTable,
    pub(super) segment: Segment,
    pub(super) write_position: u64,
    pub(super) next_segment_seq: SegmentSeq,
    /// Acknowledged and durable commits, and when a sync is due.
    pub(super) clock: DurabilityClock,
    pub(super) building: Batch,
    /// Started operations, oldest first; acknowledged strictly in this order.
    pub(super) flights: VecDeque<Flight>,
    /// Batches not in use, allocated at start.
    pub(super) spare: Vec<Batch>,
    pub(super) next_op_id: u64,
    pub(super) in_flight_max: usize,
    pub(super) deferred: Option<Request>,
    pub(super) failed: Option<Error>,
    /// When the next segment last failed for lack of space, and why.
    pub(super) no_space: Option<(Instant, Error)>,
    /// What a torn tail left, zeroed before the first commit is written.
    pub(super) cuts: Vec<Cut>,
    /// Whether a commit was started since recovery (the cuts and the sync
    /// of what was replayed come before the first).
    pub(super) written: bool,
    /// How segment files are opened.
    pub(super) access: Access,
    /// The filesystem of the shard's files.
    pub(super) fs: Fs,
    pub(super) closing: bool,
    pub(super) preparer: SegmentPreparer,
    /// Whether the next segment was asked of the preparer.
    pub(super) spare_requested: bool,
    /// Waiters of completed commits, woken at the top of the loop.
    pub(super) completed_waiters: Vec<Waiter>,
    /// The shard's manifest, rewritten before the first commit after open,
    /// before the first commit of each segment and at a clean close.
    pub(super) manifest: Manifest,
    /// Recovery accepted damage that the manifest still contradicts (a
    /// lenient mode): it is rewritten even if nothing is written.
    pub(super) manifest_stale: bool,
    /// Recovery found no damage: a clean close may leave a snapshot. After
    /// damage (even a torn tail cut) the next open replays, so that what a
    /// stricter recovery mode would refuse is looked at again.
    pub(super) snapshot_allowed: bool,
    /// The last commit started (durable once no commit is in flight): an
    /// index snapshot is tied to it.
    pub(super) last_commit: Option<CommitTie>,
    /// When the next running snapshot is due, and its writer.
    pub(super) snapshots: Snapshots,
    /// The shard's directory.
    pub(super) dir: PathBuf,
    /// The segments of the log, from its start to the one being written.
    pub(super) log: VecDeque<LogSegment>,
    /// Segment bytes reclaimed over the shard's life (the manifest keeps it).
    pub(super) reclaimed_bytes: u64,
    /// A reclamation on its way.
    pub(super) reclaim: Reclaim,
    /// Reads of payloads from the WAL on their way.
    pub(super) reads: Reads,
    /// Subscriptions following channels.
    pub(super) tails: Tails,
    /// The manifest's `written_below`: no commit of the segment being
    /// written goes at or past it before a generation raises it
    /// (`active_segment.rs`).
    pub(super) written_below: u64,
    /// The end of each segment kept for requests that free space
    /// (`Config::reserve_bytes`).
    pub(super) reserve_bytes: u64,
}

impl Shard {
    pub(super) fn start(
        spec: ShardSpec,
        inbox: Arc<Inbox>,
        metrics: Arc<ShardMetrics>,
        ready: Arc<Readiness>,
        stop: &AtomicBool,
    ) -> Result<Shard> {
        let started = Instant::now();
        if let Some(core) = spec.core {
            pin_current_thread(core)?;
        }
        let config = spec.config.clone();
        // The portable backend is the way out where O_DIRECT is refused too
        // (tmpfs, some network filesystems): it writes through the page cache
        // and makes every commit durable with the same data sync.
        let access = if config.backend.uses_io_uring() {
            Access::Direct
        } else {
            Access::Buffered
        };
        let mut io = Ring::new(config.backend.clone(), spec.id, inbox.wake_fd().fd())?;
        let fs = Fs::of(&config.backend);
        let recovered = recover_shard(
            &RecoverContext {
                cache_budget: spec.cache_budget,
                fs: &fs,
                shard_dir: &spec.dir,
                shard: spec.id,
                store_id: spec.store_id,
                access,
                metrics: &metrics,
                mode: config.recovery_mode,
                read_only: false,
                snapshot: config.index_snapshots
                    && config.recovery_mode == RecoveryMode::TolerateTornTail,
                stop: Some(stop),
            },
            &mut io,
        )?;
        let replayed_through = sync_replayed(&fs, &spec.dir, &recovered, &mut io)?;
        let shard = Shard::serve(spec, inbox, metrics, io, access, recovered, &ready)?;
        shard
            .metrics
            .recovery_ns
            .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        debug_assert_eq!(shard.clock.completed(), replayed_through);
        Ok(shard)
    }

    /// The shard that serves from what recovery found (synced already).
    fn serve(
        spec: ShardSpec,
        inbox: Arc<Inbox>,
        metrics: Arc<ShardMetrics>,
        io: Ring,
        access: Access,
        recovered: Recovered,
        ready: &Readiness,
    ) -> Result<Shard> {
        let config = spec.config.clone();
        let replayed_through = CommitSeq(recovered.next_commit_seq.0.saturating_sub(1));
        let manifest_stale = manifest_stale(&recovered.damage);
        // After damage other than a torn tail cut, the next open replays,
        // so that it is looked at again.
        let snapshot_allowed = config.index_snapshots
            && recovered
                .damage
                .iter()
                .all(|d| matches!(d.action, DamageAction::TornTailCut));
        let fs = Fs::of(&config.backend);
        let reclaimed_bytes = match &recovered.manifest {
            ManifestState::Found(r) => r.reclaimed_bytes,
            _ => 0,
        };
        let manifest = Manifest::new(
            &fs,
            &spec.dir,
            spec.id,
            spec.store_id,
            config.file_mode,
            &recovered.manifest,
        );
        *ready.damage.lock().unwrap_or_else(|p| p.into_inner()) = recovered.damage;
        let files = recovered.log.iter().map(|s| s.bytes).sum::<u64>()
            + recovered
                .leftovers
                .iter()
                .map(|(_, p)| file::size_of(p).unwrap_or(0))
                .sum::<u64>();
        metrics.wal_bytes.store(files, Ordering::Relaxed);
        let preparer = SegmentPreparer::spawn(preparer_spec(&spec, access, &fs, &metrics))?;
        // Files a crash left before the log start: recycled or removed.
        for (seq, path) in recovered.leftovers {
            let bytes = file::size_of(&path).unwrap_or(0);
            preparer.reclaimed(seq, path, bytes, config.segment_bytes);
        }
        let mut log: VecDeque<LogSegment> = recovered.log.into_iter().collect();
        let active = ActiveSegment::resume(
            recovered.tail,
            recovered.next_segment_seq,
            spec.block,
            &preparer,
            &metrics,
        )?;
        if log.back().is_none_or(|s| s.seq != active.segment.seq) {
            log.push_back(LogSegment {
                seq: active.segment.seq,
                bytes: active.segment.bytes,
                next_channel_id: recovered.table.next_id(),
                recycled_from: active.segment.recycled_from,
            });
        }
        let in_flight_max = config.commits_in_flight_max;
        let (building, spare) = Batch::all(&config, spec.block, recovered.next_commit_seq);
        Ok(Shard {
            id: spec.id,
            store_id: spec.store_id,
            block: spec.block,
            inbox,
            metrics,
            io,
            table: recovered.table,
            segment: active.segment,
            write_position: active.write_position,
            next_segment_seq: active.next_segment_seq,
            clock: DurabilityClock::new(
                config.durability,
                config.sync_method,
                in_flight_max,
                replayed_through,
            ),
            building,
            flights: VecDeque::with_capacity(in_flight_max),
            spare,
            next_op_id: 0,
            in_flight_max,
            deferred: None,
            failed: None,
            no_space: None,
            cuts: recovered.cuts,
            written: false,
            access,
            fs,
            closing: false,
            preparer,
            spare_requested: active.spare_requested,
            completed_waiters: Vec::with_capacity(config.records_per_commit_max * in_flight_max),
            reserve_bytes: config.reserve_bytes(spec.block),
            config,
            manifest,
            manifest_stale,
            snapshot_allowed,
            last_commit: recovered.last_commit,
            snapshots: Snapshots::default(),
            dir: spec.dir.clone(),
            log,
            reclaimed_bytes,
            reclaim: Reclaim::due(),
            reads: Reads::default(),
            tails: Tails::default(),
            written_below: 0,
        })
    }

    pub(super) fn run(&mut self) {
        loop {
            while let Some(c) = self.io.poll() {
                self.complete(c);
            }
            self.metrics
                .cached_bytes
                .store(self.table.cache().bytes(), Ordering::Relaxed);
            // Wake the callers of completed commits first, then give up the
            // core once: in a closed loop they append again at once, and on a
            // machine with few cores they run on this one. Measured with 16
            // writers on 2 cores: 7.5 records per commit instead of 4, and
            // 43k instead of 28k appends/s (docs/BENCHMARKS.md).
            if self.tails_woken() {
                self.serve_woken_tails();
            }
            if !self.completed_waiters.is_empty() {
                self.wake_completed();
                std::thread::yield_now();
            }
            self.reclaim_step();
            self.snapshot_step();
            self.admit_carry();
            self.admit_queued();
            // A truncation or a drop just taken wakes parked subscriptions.
            if self.tails_woken() {
                self.serve_woken_tails();
            }
            if self.flights.len() < self.in_flight_max {
                self.start_next();
            }
            self.wake_completed();
            let idle = self.flights.is_empty();
            if self.closing
                && idle
                && self.reads.is_idle()
                && self.building.builder.is_empty()
                && self.deferred.is_none()
            {
                // A reclamation whose entries are durable is published; one
                // still carrying is left for the next open to plan again.
                self.reclaim_step();
                self.close_manifest();
                self.write_snapshot();
                self.tails.end_parked(&Error::Closed);
                break;
            }
            let can_start = self.flights.len() < self.in_flight_max && self.failed.is_none();
            if can_start && (!self.building.builder.is_empty() || !self.inbox.is_empty()) {
                // Work we can hand to the device right now.
                if !self.building.builder.is_empty() && !self.start_blocked() {
                    continue;
                }
                if !self.inbox.is_empty()
                    && self.deferred.is_none()
                    && !self.closing
                    && !self.snapshots.draining
                {
                    continue;
                }
            }
            let timeout = self.wait_timeout();
            let slots_full = self.flights.len() >= self.in_flight_max
                || self.failed.is_some()
                || self.start_blocked();
            let admitting = !self.closing && !self.snapshots.draining && self.deferred.is_none();
            if !idle && (slots_full || !admitting) {
                // Nothing new could start before a completion: requests that
                // arrive meanwhile wait in the inbox and batch up, and nobody
                // needs to wake the shard for them.
                self.wait(timeout);
                continue;
            }
            if !self.building.builder.is_empty()
                || self.deferred.is_some()
                || !self.inbox.is_empty()
            {
                continue;
            }
            self.sleep(timeout);
        }
    }

    /// Takes queued requests into the commit being built until one does not
    /// fit (it waits in `deferred`).
    fn admit_queued(&mut self) {
        let mut drained = 0usize;
        while !self.closing && !self.snapshots.draining && self.deferred.is_none() {
            let Some(request) = self.inbox.pop() else {
                break;
            };
            drained += 1;
            if let Accepted::Full(r) = self.accept(request) {
                self.deferred = Some(r);
            }
        }
        if drained > 0 {
            self.inbox.notify_space();
        }
    }

    /// Offers the deferred request again.
    fn retry_deferred(&mut self) {
        if let Some(r) = self.deferred.take() {
            if let Accepted::Full(r) = self.accept(r) {
                self.deferred = Some(r);
            }
        }
    }

    /// With a slot free: starts the commit built (and lets the deferred
    /// request begin the next), or a periodic or final data sync.
    fn start_next(&mut self) {
        if self.building.builder.is_empty() {
            // A request that starts the next segment waited for the flights
            // to drain.
            self.retry_deferred();
        }
        if !self.building.builder.is_empty() {
            self.start_commit();
            self.retry_deferred();
        } else if self.flights.is_empty()
            && (self.sync_due()
                || ((self.closing || self.snapshots.draining)
                    && self.clock.has_unsynced()
                    && self.failed.is_none()))
        {
            self.start_sync();
        }
    }

    /// Sleeps until a completion, a wake-up or `timeout`, once callers were
    /// asked to wake the shard for new requests.
    fn sleep(&mut self, timeout: Option<Duration>) {
        if !self.inbox.prepare_sleep() {
            return;
        }
        let slept = Instant::now();
        self.wait(timeout);
        self.inbox.woke();
        // The safety net caught a sleep that no wake-up ended although
        // requests were queued: a wake-up was missed. Only the bound itself
        // counts: a shorter timeout (a periodic sync due) ends sleeps on
        // purpose.
        if timeout == Some(IDLE_WAIT_MAX)
            && slept.elapsed() >= IDLE_WAIT_MAX
            && !self.inbox.is_empty()
        {
            self.metrics.wakeups_missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the built commit must wait for the flights to drain first:
    /// it needs a new segment (segments change only when idle), or it must
    /// carry a data sync (see [`Shard::must_sync_alone`]).
    pub(super) fn start_blocked(&self) -> bool {
        (self.needs_new_segment() || self.must_sync_alone()) && !self.flights.is_empty()
    }

    /// Periodic mode: the built commit must carry a data sync, which covers
    /// every write only with nothing in flight — its unsynced window is
    /// full, or it holds a checkpoint or truncation.
    pub(super) fn must_sync_alone(&self) -> bool {
        self.clock
            .sync_forced(self.building.builder.commit_seq(), self.building.sync_now)
    }

    pub(super) fn wake_completed(&mut self) {
        for w in self.completed_waiters.drain(..) {
            complete_waiter(w, Ok(()));
        }
    }

    pub(super) fn wait(&mut self, timeout: Option<Duration>) {
        if let Err(e) = self.io.wait(timeout) {
            let e = self.op_error(e);
            self.ring_failed(e);
        }
    }

    /// The ring itself failed (`io_uring_enter` returned an error): the
    /// shard fails, answers everyone, and never touches the ring again. What
    /// was in flight may still complete into the kernel's copy of the
    /// submission, so its buffers and the ring are leaked, not freed; the
    /// shard goes on waiting for requests (to answer them) on its eventfd.
    pub(super) fn ring_failed(&mut self, e: Error) {
        self.fail(e);
        self.abandon_io();
    }

    /// Leaks the operations in flight and the backend, and waits on the
    /// eventfd from now on.
    pub(super) fn abandon_io(&mut self) {
        self.io.abandon();
        let e = self.shard_failed().unwrap_or(Error::Closed);
        self.abandon_reads(&e);
        // Their buffers were leaked with the ring; the flights only name
        // their waiters, answered by `fail`.
        self.flights.clear();
    }

    /// How long the shard may wait: until a periodic sync is due, and at
    /// most `IDLE_WAIT_MAX` (see there). While commits are in flight the
    /// wait ends with their completions.
    pub(super) fn wait_timeout(&self) -> Option<Duration> {
        if self.io.is_abandoned() {
            // The leaked ring may still hold a read armed on the eventfd and
            // take one wake-up: a failed shard looks at its inbox every
            // 10 ms instead (100 wake-ups a second, well under 1% of a core).
            return Some(Duration::from_millis(10));
        }
        let bound = match self.clock.until_sync_due() {
            Some(due) if self.flights.is_empty() => due,
            _ => IDLE_WAIT_MAX,
        };
        Some(bound.min(IDLE_WAIT_MAX))
    }
}

/// What the segment preparer of the shard `spec` describes needs.
fn preparer_spec(
    spec: &ShardSpec,
    access: Access,
    fs: &Fs,
    metrics: &Arc<ShardMetrics>,
) -> PreparerSpec {
    PreparerSpec {
        shard: spec.id,
        shard_dir: spec.dir.clone(),
        block: spec.block,
        store_id: spec.store_id,
        segment_bytes: spec.config.segment_bytes,
        access,
        file_mode: spec.config.file_mode,
        fs: fs.clone(),
        core: spec.core,
        metrics: metrics.clone(),
        wal_bytes_max: spec.config.wal_bytes_max(),
    }
}
