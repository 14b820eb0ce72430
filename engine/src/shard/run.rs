//! The shard thread: recovery, then the loop that turns queued requests into
//! group commits.
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
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::buffer::channels::{ChannelTable, Refusal, OFFSET_MAX};
use crate::config::{Config, Durability, SyncMethod};
use crate::cores::pin_current_thread;
use crate::error::{Error, Result};
use crate::io::file::Access;
use crate::io::portable::PortableIo;
use crate::io::{new_commit_io, CommitIo, Op, OpError, SyncKind};
use crate::metrics::{commit_records_bucket, ShardMetrics};
use crate::recovery::{apply_cuts, recover_shard, Cut, Damage, DamageAction, RecoverContext};
use crate::shard::ack::Ack;
use crate::shard::inbox::{Inbox, Request};
use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};
use crate::wal::commit::CommitBuilder;
use crate::wal::format::{entry_bytes, EntryKind};
use crate::wal::manifest::Manifest;
use crate::wal::preparer::{PreparerSpec, SegmentPreparer};
use crate::wal::segment::{segment_path, Segment};

/// Longest time an idle shard sleeps before re-checking its inbox.
///
/// Not needed for correctness: a caller wakes a shard that announced sleep
/// through its eventfd, and the backends end a wait for a wake that arrived
/// before it (`io/uring.rs` keeps the wake's completion for the next wait).
/// It is a safety net: a sleep that runs to this bound with requests queued
/// is counted in `wakeups_missed`, which tests and `corewal load` expect to
/// be 0. An idle shard wakes once a second for it; no cost shows in any
/// benchmark.
const IDLE_WAIT_MAX: Duration = Duration::from_secs(1);

/// Everything a shard thread needs to start.
pub struct ShardSpec {
    /// The shard.
    pub id: ShardId,
    /// The core it is pinned to (`None`: not pinned).
    pub core: Option<usize>,
    /// The shard's directory.
    pub dir: PathBuf,
    /// The store's identity.
    pub store_id: u64,
    /// The block size.
    pub block: usize,
    /// Engine configuration.
    pub config: Arc<Config>,
}

/// The state of a shard's start-up.
#[derive(Debug, Default)]
struct Readiness {
    state: Mutex<Option<Result<()>>>,
    cond: Condvar,
    /// What recovery found damaged and did about it.
    damage: Mutex<Vec<Damage>>,
    /// Why the shard stopped serving, once it did (set when its thread ends).
    failure: Mutex<Option<Error>>,
}

/// The caller side of a shard.
pub struct ShardHandle {
    /// The shard.
    pub id: ShardId,
    /// Its inbox.
    pub inbox: Arc<Inbox>,
    /// Its counters.
    pub metrics: Arc<ShardMetrics>,
    ready: Arc<Readiness>,
    /// Set by `close`: a shard still recovering stops its replay.
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ShardHandle {
    /// Blocks until the shard has recovered (or failed to).
    pub fn wait_ready(&self) -> Result<()> {
        let mut s = self.ready.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = &*s {
                return r.clone();
            }
            s = self.ready.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The damage recovery found and went past (empty until it finishes).
    pub fn recovery_damage(&self) -> Vec<Damage> {
        self.ready
            .damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the shard finished recovery (successfully or not).
    pub fn is_ready(&self) -> bool {
        self.ready
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Tells a shard still recovering to stop its replay (`close` does too).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Asks the shard to finish what is queued and stop, and joins its
    /// thread. A shard still recovering stops its replay at the next read.
    ///
    /// # Errors
    /// `ShardFailed` when the shard had failed (a write, a sync, its ring, a
    /// panic) — the final sync of a Periodic shard included; `Ok` when it
    /// never started (its open already returned the error).
    pub fn close(&self) -> Result<()> {
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            self.stop.store(true, Ordering::Relaxed);
            // A closed inbox means the shard already stopped.
            let _ = self.inbox.push_blocking(Request::Close);
            let _ = handle.join();
        }
        let failure = self.ready.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*failure {
            Some(e @ Error::ShardFailed { .. }) => Err(e.clone()),
            Some(e) => Err(Error::ShardFailed {
                shard: self.id,
                cause: Arc::new(e.clone()),
            }),
            None => Ok(()),
        }
    }
}

/// Starts a shard thread. Returns at once; recovery runs on the new thread.
pub fn spawn_shard(spec: ShardSpec) -> Result<ShardHandle> {
    let inbox = Arc::new(Inbox::new(spec.config.inbox_capacity)?);
    let metrics = Arc::new(ShardMetrics::default());
    let ready = Arc::new(Readiness::default());
    let stop = Arc::new(AtomicBool::new(false));
    let id = spec.id;
    let (i, m, r, st) = (inbox.clone(), metrics.clone(), ready.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name(format!("corewal-shard-{}", id.0))
        .spawn(move || shard_main(spec, i, m, r, st))
        .map_err(|e| Error::io("spawn shard thread", None, e))?;
    Ok(ShardHandle {
        id,
        inbox,
        metrics,
        ready,
        stop,
        thread: Mutex::new(Some(thread)),
    })
}

fn set_ready(ready: &Readiness, r: Result<()>) {
    *ready.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    ready.cond.notify_all();
}

/// The error a panic on a shard thread becomes, with the panic's message.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    Error::Internal {
        what: format!("the shard thread panicked: {message}"),
    }
}

fn shard_main(
    spec: ShardSpec,
    inbox: Arc<Inbox>,
    metrics: Arc<ShardMetrics>,
    ready: Arc<Readiness>,
    stop: Arc<AtomicBool>,
) {
    let id = spec.id;
    SHARD.set(id);
    // A panic (a broken invariant) must not hang anyone: it ends the shard
    // the way a failed write does, and every waiter is answered with it.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Shard::start(spec, inbox.clone(), metrics, ready.clone(), &stop)
    }));
    let failure = match started {
        Ok(Ok(mut shard)) => {
            set_ready(&ready, Ok(()));
            match std::panic::catch_unwind(AssertUnwindSafe(|| shard.run())) {
                Ok(()) => shard.failed.clone(),
                Err(payload) => {
                    let e = panic_error(&*payload);
                    // Answer everyone the shard owes; if even that panics,
                    // dropping the shard's waiters answers them.
                    let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        shard.fail(e.clone());
                        shard.wake_completed();
                        shard.abandon_io();
                    }));
                    if answered.is_ok() {
                        drop(shard);
                    } else {
                        // Its buffers may still be under the kernel.
                        std::mem::forget(shard);
                    }
                    Some(e)
                }
            }
        }
        Ok(Err(e)) => Some(e),
        Err(payload) => Some(Error::ShardFailed {
            shard: id,
            cause: Arc::new(panic_error(&*payload)),
        }),
    };
    // A shard told to stop while it recovered did not fail.
    let failure = match failure {
        Some(Error::Closed) => None,
        f => f,
    };
    let answered = match &failure {
        Some(e @ Error::ShardFailed { .. }) => e.clone(),
        Some(e) => Error::ShardFailed {
            shard: id,
            cause: Arc::new(e.clone()),
        },
        None => Error::Closed,
    };
    {
        let mut state = ready.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_none() {
            *state = Some(Err(failure.clone().unwrap_or(Error::Closed)));
            ready.cond.notify_all();
        }
    }
    *ready.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
    inbox.close(answered);
}

/// An ack the shard owes. If the shard unwinds (a broken invariant) before
/// answering, dropping it answers with `Error::Internal`, so that no caller
/// waits forever.
struct Owed<T>(Option<Arc<Ack<T>>>);

impl<T> Owed<T> {
    fn complete(mut self, r: Result<T>) {
        if let Some(ack) = self.0.take() {
            ack.complete(r);
        }
    }
}

impl<T> From<Arc<Ack<T>>> for Owed<T> {
    fn from(ack: Arc<Ack<T>>) -> Self {
        Owed(Some(ack))
    }
}

impl<T> Drop for Owed<T> {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            let e = if std::thread::panicking() {
                // Unwinding from a panic on the shard thread: the shard has
                // failed; its message goes to those answered after the unwind.
                Error::ShardFailed {
                    shard: SHARD.get(),
                    cause: Arc::new(Error::Internal {
                        what: "the shard thread panicked".into(),
                    }),
                }
            } else {
                Error::Internal {
                    what: "the shard stopped before answering".into(),
                }
            };
            ack.complete(Err(e));
        }
    }
}

thread_local! {
    /// The shard this thread runs, for answers given while unwinding.
    static SHARD: std::cell::Cell<ShardId> = const { std::cell::Cell::new(ShardId(0)) };
}

/// What a queued request waits for.
enum Waiter {
    Offset(Owed<Offset>, Offset),
    Channel(Owed<ChannelId>, ChannelId),
    Unit(Owed<()>),
    /// A call on a channel whose drop is not yet durable: answered
    /// `ChannelDropped` once it is, with the shard's error if it fails.
    DroppedOffset(Owed<Offset>, Box<str>),
    DroppedRead(Owed<Vec<crate::types::Record>>, Box<str>),
}

/// A commit: its buffer and who waits for it.
struct Batch {
    builder: CommitBuilder,
    waiters: Vec<Waiter>,
    records: Vec<(ChannelId, Bytes)>,
}

impl Batch {
    fn new(config: &Config, block: usize) -> Batch {
        Batch {
            builder: CommitBuilder::new(
                config.commit_bytes_max,
                config.records_per_commit_max,
                block,
            ),
            waiters: Vec::with_capacity(config.records_per_commit_max),
            records: Vec::with_capacity(config.records_per_commit_max),
        }
    }
}

/// An operation on its way to the device, in the order it was started.
struct Flight {
    id: u64,
    /// The commit, or `None` for a periodic data sync.
    batch: Option<Batch>,
    payload_bytes: u64,
    /// Periodic mode: this commit was written with a data sync.
    synced: bool,
    /// For a data sync: the last commit it makes durable.
    covers: CommitSeq,
    started: Instant,
    outcome: Option<std::result::Result<(), OpError>>,
}

enum Accepted {
    Done,
    Full(Request),
}

/// Whether a request's entries may join the commit being built.
enum Admit {
    Yes,
    /// Not now: the commit is full, or the request starts the next segment
    /// and must wait for the commits in flight.
    Full,
    /// Refused with this error; nothing was assigned.
    Refused(Error),
}

/// The records of an append request: one, or a batch.
enum Records {
    One(Bytes),
    Batch(Vec<Bytes>),
}

impl Records {
    fn len(&self) -> usize {
        match self {
            Records::One(_) => 1,
            Records::Batch(b) => b.len(),
        }
    }

    /// Bytes their entries take in a commit.
    fn entry_bytes(&self) -> usize {
        match self {
            Records::One(r) => entry_bytes(r.len()),
            Records::Batch(b) => b.iter().map(|r| entry_bytes(r.len())).sum(),
        }
    }

    /// The error for records that no commit can hold.
    fn too_large(&self, config: &Config) -> Error {
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

    fn into_request(self, channel: ChannelId, ack: Arc<Ack<Offset>>) -> Request {
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
    fn for_each(self, mut f: impl FnMut(usize, Bytes)) {
        match self {
            Records::One(r) => f(0, r),
            Records::Batch(b) => b.into_iter().enumerate().for_each(|(i, r)| f(i, r)),
        }
    }
}

/// After the next segment could not be created for lack of space, requests
/// that need it are refused at once for this long; the next one after it
/// tries again.
const NO_SPACE_RETRY_AFTER: Duration = Duration::from_millis(100);

struct Shard {
    id: ShardId,
    config: Arc<Config>,
    store_id: u64,
    block: usize,
    inbox: Arc<Inbox>,
    metrics: Arc<ShardMetrics>,
    io: Box<dyn CommitIo>,
    table: ChannelTable,
    segment: Segment,
    write_position: u64,
    next_segment_seq: SegmentSeq,
    /// Highest commit acknowledged (durable, or written in periodic mode).
    completed: CommitSeq,
    /// Every commit up to this one is on stable storage (a data sync
    /// completed after it).
    durable_through: CommitSeq,
    building: Batch,
    /// Started operations, oldest first; acknowledged strictly in this order.
    flights: VecDeque<Flight>,
    /// Batches not in use, allocated at start.
    spare: Vec<Batch>,
    next_op_id: u64,
    in_flight_max: usize,
    deferred: Option<Request>,
    failed: Option<Error>,
    /// When the next segment last failed for lack of space, and why.
    no_space: Option<(Instant, Error)>,
    /// What a torn tail left, zeroed before the first commit is written.
    cuts: Vec<Cut>,
    /// Whether a commit was started since recovery (the cuts and the sync
    /// of what was replayed come before the first).
    written: bool,
    /// How segment files are opened.
    access: Access,
    closing: bool,
    unsynced_since: Option<Instant>,
    preparer: SegmentPreparer,
    /// Whether the next segment was asked of the preparer.
    spare_requested: bool,
    /// Waiters of completed commits, woken at the top of the loop.
    completed_waiters: Vec<Waiter>,
    /// The shard's manifest, rewritten before the first commit after open,
    /// before the first commit of each segment and at a clean close.
    manifest: Manifest,
    /// Recovery accepted damage that the manifest still contradicts (a
    /// lenient mode): it is rewritten even if nothing is written.
    manifest_stale: bool,
    /// The backend failed and was leaked (`abandon_io`).
    io_abandoned: bool,
}

impl Shard {
    fn start(
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
        let config = spec.config;
        // The portable backend is the way out where O_DIRECT is refused too
        // (tmpfs, some network filesystems): it writes through the page cache
        // and makes every commit durable with the same data sync.
        let access = if config.backend.uses_io_uring() {
            Access::Direct
        } else {
            Access::Buffered
        };
        let mut io = new_commit_io(config.backend.clone(), spec.id, inbox.wake_fd().fd())?;
        let recovered = recover_shard(
            &RecoverContext {
                shard_dir: &spec.dir,
                shard: spec.id,
                store_id: spec.store_id,
                access,
                metrics: &metrics,
                mode: config.recovery_mode,
                read_only: false,
                stop: Some(stop),
            },
            &mut *io,
        )?;
        // What recovery accepted is made durable before anything is
        // answered from it: a crashed process may have left its last
        // commits (and a spare after them) in the page cache only. Older
        // segments were synced before writing moved on from them. Not needed
        // when the manifest already records every replayed commit as
        // durable (after a clean close, or a crash with nothing written
        // since the last roll).
        let replayed_through = CommitSeq(recovered.next_commit_seq.0.saturating_sub(1));
        let all_durable = matches!(
            &recovered.manifest,
            crate::wal::manifest::ManifestState::Found(r) if r.durable_through >= replayed_through
        );
        if let Some(from) = recovered.last_commit_segment.filter(|_| !all_durable) {
            for seq in from.0..recovered.next_segment_seq.0 {
                let path = segment_path(&spec.dir, SegmentSeq(seq));
                if path.exists() {
                    sync_file_through(&mut *io, &path)?;
                }
            }
        }
        let manifest_stale = recovered.damage.iter().any(|d| {
            matches!(
                d.action,
                DamageAction::EndLost { .. }
                    | DamageAction::ManifestDamaged
                    | DamageAction::PrefixKept { .. }
            )
        });
        let manifest = Manifest::new(
            &spec.dir,
            spec.id,
            spec.store_id,
            config.file_mode,
            &recovered.manifest,
        );
        *ready.damage.lock().unwrap_or_else(|p| p.into_inner()) = recovered.damage;
        let preparer = SegmentPreparer::spawn(PreparerSpec {
            shard: spec.id,
            shard_dir: spec.dir.clone(),
            block: spec.block,
            store_id: spec.store_id,
            segment_bytes: config.segment_bytes,
            access,
            file_mode: config.file_mode,
            core: spec.core,
        })?;
        let (segment, write_position, next_segment_seq) = match recovered.tail {
            // A tail segment with another block size is left as it is: the
            // first commit starts a new segment with the engine's block.
            Some(t) if t.block != spec.block => (t.segment, u64::MAX, recovered.next_segment_seq),
            Some(t) => (t.segment, t.position, recovered.next_segment_seq),
            None => {
                let seq = recovered.next_segment_seq;
                let seg = preparer.take(seq)?;
                metrics.segments_created.fetch_add(1, Ordering::Relaxed);
                (seg, spec.block as u64, SegmentSeq(seq.0 + 1))
            }
        };
        // A spare is prepared once the segment in use has commits; a store
        // reopened again and again without writes must not grow by a
        // segment per open.
        let spare_requested = write_position > spec.block as u64 && write_position != u64::MAX;
        if spare_requested {
            preparer.request(next_segment_seq);
        }
        let in_flight_max = config.commits_in_flight_max;
        let mut building = Batch::new(&config, spec.block);
        building.builder.reset(recovered.next_commit_seq);
        let spare = (0..in_flight_max)
            .map(|_| Batch::new(&config, spec.block))
            .collect();
        metrics
            .recovery_ns
            .store(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(Shard {
            id: spec.id,
            store_id: spec.store_id,
            block: spec.block,
            inbox,
            metrics,
            io,
            table: recovered.table,
            segment,
            write_position,
            next_segment_seq,
            completed: CommitSeq(recovered.next_commit_seq.0.saturating_sub(1)),
            durable_through: CommitSeq(recovered.next_commit_seq.0.saturating_sub(1)),
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
            closing: false,
            unsynced_since: None,
            preparer,
            spare_requested,
            completed_waiters: Vec::with_capacity(config.records_per_commit_max * in_flight_max),
            config,
            manifest,
            manifest_stale,
            io_abandoned: false,
        })
    }

    fn run(&mut self) {
        loop {
            while let Some((id, outcome)) = self.io.poll() {
                self.complete(id, outcome);
            }
            // Wake the callers of completed commits first, then give up the
            // core once: in a closed loop they append again at once, and on a
            // machine with few cores they run on this one. Measured with 16
            // writers on 2 cores: 7.5 records per commit instead of 4, and
            // 43k instead of 28k appends/s (docs/BENCHMARKS.md).
            if !self.completed_waiters.is_empty() {
                self.wake_completed();
                std::thread::yield_now();
            }
            let mut drained = 0usize;
            while !self.closing && self.deferred.is_none() {
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
            if self.flights.len() < self.in_flight_max {
                if self.building.builder.is_empty() {
                    // A request that starts the next segment waited for
                    // the flights to drain.
                    if let Some(r) = self.deferred.take() {
                        if let Accepted::Full(r) = self.accept(r) {
                            self.deferred = Some(r);
                        }
                    }
                }
                if !self.building.builder.is_empty() {
                    self.start_commit();
                    if let Some(r) = self.deferred.take() {
                        if let Accepted::Full(r) = self.accept(r) {
                            self.deferred = Some(r);
                        }
                    }
                } else if self.flights.is_empty()
                    && (self.sync_due()
                        || (self.closing && self.unsynced_since.is_some() && self.failed.is_none()))
                {
                    self.start_sync();
                }
            }
            self.wake_completed();
            let idle = self.flights.is_empty();
            if self.closing && idle && self.building.builder.is_empty() && self.deferred.is_none() {
                self.close_manifest();
                break;
            }
            let can_start = self.flights.len() < self.in_flight_max && self.failed.is_none();
            if can_start && (!self.building.builder.is_empty() || !self.inbox.is_empty()) {
                // Work we can hand to the device right now.
                if !self.building.builder.is_empty() && !self.start_blocked() {
                    continue;
                }
                if !self.inbox.is_empty() && self.deferred.is_none() && !self.closing {
                    continue;
                }
            }
            let timeout = self.wait_timeout();
            let slots_full = self.flights.len() >= self.in_flight_max
                || self.failed.is_some()
                || self.start_blocked();
            if !idle && (slots_full || self.closing || self.deferred.is_some()) {
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
            // A commit could start: ask callers to wake us for new requests.
            if !self.inbox.prepare_sleep() {
                continue;
            }
            let slept = Instant::now();
            self.wait(timeout);
            self.inbox.woke();
            // The safety net caught a sleep that no wake-up ended although
            // requests were queued: a wake-up was missed. Only the bound
            // itself counts: a shorter timeout (a periodic sync due) ends
            // sleeps on purpose.
            if timeout == Some(IDLE_WAIT_MAX)
                && slept.elapsed() >= IDLE_WAIT_MAX
                && !self.inbox.is_empty()
            {
                self.metrics.wakeups_missed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// At a clean close: records in the manifest that every commit written
    /// is durable, so that the loss of any of them is detected at the next
    /// open. Nothing is written by a shard that wrote nothing (an open that
    /// fails elsewhere changes nothing) or that failed.
    fn close_manifest(&mut self) {
        if self.failed.is_some() || !(self.written || self.manifest_stale) {
            return;
        }
        let last = self.manifest.last();
        if last.is_some_and(|r| {
            r.active_segment == self.segment.seq && r.durable_through == self.durable_through
        }) {
            return;
        }
        if let Err(e) = self.manifest.write(self.segment.seq, self.durable_through) {
            self.fail(e);
        }
    }

    /// Whether the built commit must wait for the flights to drain first:
    /// it needs a new segment (segments change only when idle), or Periodic
    /// mode's unsynced window is full (the commit must carry a data sync,
    /// which covers every write only with nothing in flight).
    fn start_blocked(&self) -> bool {
        (self.needs_new_segment() || self.window_full()) && !self.flights.is_empty()
    }

    /// Periodic mode: whether the next commit must be synced because the
    /// commits since the last data sync, and those that could be in flight
    /// with it, would no longer fit the 16-bit window of its header.
    fn window_full(&self) -> bool {
        matches!(self.config.durability, Durability::Periodic { .. })
            && self
                .building
                .builder
                .commit_seq()
                .0
                .saturating_sub(self.durable_through.0)
                + self.in_flight_max as u64
                >= u64::from(u16::MAX)
    }

    fn needs_new_segment(&self) -> bool {
        self.write_position
            .saturating_add(self.building.builder.sealed_len() as u64)
            > self.segment.bytes
    }

    fn wake_completed(&mut self) {
        for w in self.completed_waiters.drain(..) {
            complete_waiter(w, Ok(()));
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) {
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
    fn ring_failed(&mut self, e: Error) {
        self.fail(e);
        self.abandon_io();
    }

    /// Leaks the operations in flight and the backend, and waits on the
    /// eventfd from now on.
    fn abandon_io(&mut self) {
        self.io_abandoned = true;
        for f in self.flights.drain(..) {
            std::mem::forget(f);
        }
        let waiter: Box<dyn CommitIo> = Box::new(PortableIo::new(self.inbox.wake_fd().fd()));
        std::mem::forget(std::mem::replace(&mut self.io, waiter));
    }

    /// How long the shard may wait: until a periodic sync is due, and at
    /// most `IDLE_WAIT_MAX` (see there). While commits are in flight the
    /// wait ends with their completions.
    fn wait_timeout(&self) -> Option<Duration> {
        if self.io_abandoned {
            // The leaked ring may still hold a read armed on the eventfd and
            // take one wake-up: a failed shard looks at its inbox every
            // 10 ms instead (100 wake-ups a second, well under 1% of a core).
            return Some(Duration::from_millis(10));
        }
        let bound = match (self.config.durability, self.unsynced_since) {
            (Durability::Periodic { interval }, Some(since)) if self.flights.is_empty() => interval
                .saturating_sub(since.elapsed())
                .max(Duration::from_micros(50)),
            _ => IDLE_WAIT_MAX,
        };
        Some(bound.min(IDLE_WAIT_MAX))
    }

    fn sync_due(&self) -> bool {
        match (self.config.durability, self.unsynced_since) {
            (Durability::Periodic { interval }, Some(since)) => {
                since.elapsed() >= interval && self.failed.is_none()
            }
            _ => false,
        }
    }

    /// Admission of `records` records with `bytes` entry bytes into the
    /// commit being built. A commit never runs past its segment's end: when
    /// it would, what is built goes first, and the request starts the next
    /// segment — admitted only once that segment exists, so that a full
    /// filesystem refuses the request before it gets an offset, and never
    /// stops the shard.
    fn admit(&mut self, records: usize, bytes: usize) -> Admit {
        let builder = &self.building.builder;
        if !builder.fits(records, bytes) {
            return Admit::Full;
        }
        let sealed = builder.sealed_len_with(bytes) as u64;
        if self.write_position.saturating_add(sealed) <= self.segment.bytes {
            return Admit::Yes;
        }
        if !builder.is_empty() {
            return Admit::Full;
        }
        let seq = self.next_segment_seq;
        if self.preparer.is_ready(seq) {
            return Admit::Yes;
        }
        let no_space = |shard: ShardId, cause: &Error| Error::NoSpace {
            shard,
            cause: Arc::new(cause.clone()),
        };
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
                Admit::Refused(refused)
            }
            Err(e) => {
                self.fail(e);
                Admit::Refused(self.shard_failed().expect("failed above"))
            }
        }
    }

    fn shard_failed(&self) -> Option<Error> {
        self.failed.as_ref().map(|cause| Error::ShardFailed {
            shard: self.id,
            cause: Arc::new(cause.clone()),
        })
    }

    fn accept(&mut self, request: Request) -> Accepted {
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
                ack,
            } => {
                match self.table.read(channel, from, to) {
                    Ok(records) => ack.complete(Ok(records)),
                    Err(r) => self.refuse(r, ack, Waiter::DroppedRead),
                }
                Accepted::Done
            }
            Request::NextOffset { channel, ack } => {
                match self.table.durable_next_offset(channel) {
                    Ok(next) => ack.complete(Ok(next)),
                    Err(r) => self.refuse(r, ack, Waiter::DroppedOffset),
                }
                Accepted::Done
            }
            Request::Close => {
                self.closing = true;
                Accepted::Done
            }
        }
    }

    fn accept_register(&mut self, name: Box<str>, ack: Arc<Ack<ChannelId>>) -> Accepted {
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
            self.refuse(r, ack, |_, _| unreachable!("a registration is of no channel"));
            return Accepted::Done;
        }
        match self.admit(0, entry_bytes(name.len())) {
            Admit::Yes => {}
            Admit::Full => return Accepted::Full(Request::Register { name, ack }),
            Admit::Refused(e) => {
                ack.complete(Err(e));
                return Accepted::Done;
            }
        }
        let commit = self.building.builder.commit_seq();
        let (id, first) = self.table.register(&name, commit);
        self.building
            .builder
            .push(EntryKind::Register, id, first, name.as_bytes());
        self.building.waiters.push(Waiter::Channel(ack.into(), id));
        Accepted::Done
    }

    fn accept_unregister(&mut self, name: Box<str>, ack: Arc<Ack<()>>) -> Accepted {
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
        match self.admit(0, entry_bytes(0)) {
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
        self.building.builder.push(EntryKind::Drop, id, next, &[]);
        self.building.waiters.push(Waiter::Unit(ack.into()));
        Accepted::Done
    }

    /// One append or a batch: the same checks, in the same order, and one
    /// waiter answered with the first offset.
    fn accept_append(
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
        match self.admit(count, bytes) {
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
            batch
                .builder
                .push(EntryKind::Append, channel, offset, &record);
            batch.records.push((channel, record));
        });
        batch.waiters.push(Waiter::Offset(ack.into(), first));
        Accepted::Done
    }

    /// Answers a request the channel table refused. A call on a dropped
    /// channel is answered `ChannelDropped` once the drop is durable
    /// (`dropped` makes its waiter).
    fn refuse<T>(
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
    fn answer_when_durable(&mut self, registered_in: CommitSeq, waiter: Waiter) {
        if registered_in <= self.completed {
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

    fn next_op_id(&mut self) -> u64 {
        self.next_op_id += 1;
        self.next_op_id
    }

    fn start_commit(&mut self) {
        if !self.written {
            // Before the first write: zero what a torn tail left (what was
            // replayed was synced at start), and record in the manifest
            // where the log ends, so that the loss of anything written from
            // now on is told from a torn tail.
            let recorded = apply_cuts(&self.cuts, self.access)
                .and_then(|()| self.manifest.write(self.segment.seq, self.durable_through));
            if let Err(e) = recorded {
                self.fail(e);
                return;
            }
            self.cuts.clear();
            self.written = true;
        }
        if !self.spare_requested {
            self.preparer.request(self.next_segment_seq);
            self.spare_requested = true;
        }
        if self.window_full() && !self.flights.is_empty() {
            // The commit must carry a data sync covering every write.
            return;
        }
        if self.needs_new_segment() {
            if !self.flights.is_empty() {
                // Segments change only when nothing is in flight, so that a
                // torn tail never spans two segments.
                return;
            }
            if let Err(e) = self.roll_segment() {
                self.fail(e);
                return;
            }
        }
        let spare = self
            .spare
            .pop()
            .expect("a spare batch for every commit in flight");
        let mut batch = std::mem::replace(&mut self.building, spare);
        let position = self.write_position;
        // The commits before this one that may not be durable when it is: a
        // power cut may leave a hole there, followed by this commit, and
        // recovery cuts such a hole as a torn tail only within this window.
        // The commits in flight with it; in Periodic mode also every commit
        // since the last completed data sync (kept below 65,535 by forcing
        // a synced commit when the window is full: `window_full`).
        let since_sync = batch
            .builder
            .commit_seq()
            .0
            .saturating_sub(self.durable_through.0);
        let window = match self.config.durability {
            Durability::Sync => self.in_flight_max as u64,
            Durability::Periodic { .. } => since_sync.max(self.in_flight_max as u64),
        };
        let bytes = batch.builder.seal(
            self.id,
            self.store_id,
            self.segment.seq,
            position,
            window.min(u64::from(u16::MAX)) as u16,
        );
        let (ptr, len) = (bytes.as_ptr(), bytes.len());
        // Periodic mode under constant load never sees an idle moment for a
        // separate sync: when one is due, the commit itself carries it (only
        // with nothing else in flight, so that the sync covers every write).
        // An fdatasync, not RWF_DSYNC: on a device with forced-unit-access
        // writes, an O_DIRECT RWF_DSYNC write is written through on its own
        // and flushes nothing written before it.
        let synced = (self.sync_due() || self.window_full()) && self.flights.is_empty();
        let sync = match (self.config.durability, self.config.sync_method) {
            (Durability::Periodic { .. }, _) if synced => SyncKind::Fdatasync,
            (Durability::Periodic { .. }, _) => SyncKind::None,
            (Durability::Sync, SyncMethod::DsyncWrite) => SyncKind::Dsync,
            (Durability::Sync, SyncMethod::WriteThenFdatasync) => SyncKind::Fdatasync,
        };
        let op = Op::Write {
            fd: self.segment.fd(),
            position,
            ptr,
            len,
            sync,
        };
        let next = CommitSeq(batch.builder.commit_seq().0 + 1);
        self.building.builder.reset(next);
        let payload_bytes = batch.records.iter().map(|(_, r)| r.len() as u64).sum();
        let id = self.next_op_id();
        // SAFETY: the buffer belongs to `batch`, which moves into
        // `self.flights` (a move of the Batch, not of its heap buffer) and
        // stays there, untouched, until `poll` returned this id's completion
        // — or is leaked with the ring if the ring fails. `Err` means the
        // write was not queued: the batch is free again at once.
        let started = unsafe { self.io.start(id, op) };
        self.flights.push_back(Flight {
            id,
            batch: Some(batch),
            payload_bytes,
            synced,
            covers: CommitSeq(0),
            started: Instant::now(),
            outcome: None,
        });
        if let Err(e) = started {
            let e = self.op_error(e);
            // Fail while the flight is listed, so that its callers get the error.
            self.fail(e);
            self.unstart_last();
            return;
        }
        self.write_position += len as u64;
        self.preparer
            .report_fill(self.write_position, self.segment.bytes);
        self.metrics
            .commit_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    fn start_sync(&mut self) {
        let id = self.next_op_id();
        // SAFETY: a sync references no memory.
        let started = unsafe {
            self.io.start(
                id,
                Op::Sync {
                    fd: self.segment.fd(),
                },
            )
        };
        self.flights.push_back(Flight {
            id,
            batch: None,
            payload_bytes: 0,
            synced: false,
            covers: self.completed,
            started: Instant::now(),
            outcome: None,
        });
        if let Err(e) = started {
            let e = self.op_error(e);
            self.fail(e);
            self.unstart_last();
        }
    }

    /// Takes back the newest flight, whose start failed (nothing of it was
    /// queued, so nothing will complete).
    fn unstart_last(&mut self) {
        if let Some(f) = self.flights.pop_back() {
            if let Some(mut batch) = f.batch {
                batch.records.clear();
                self.spare.push(batch);
            }
        }
    }

    /// A data sync of the current segment through the ring, with nothing
    /// else in flight: waits for its completion. If the ring fails meanwhile
    /// the shard has stopped using it (the sync may still complete there).
    fn sync_segment(&mut self) -> Result<()> {
        debug_assert!(self.flights.is_empty());
        let id = self.next_op_id();
        let fd = self.segment.fd();
        // SAFETY: a sync references no memory.
        unsafe { self.io.start(id, Op::Sync { fd }) }.map_err(|e| self.op_error(e))?;
        loop {
            if let Some((done, outcome)) = self.io.poll() {
                debug_assert_eq!(done, id, "the only operation in flight");
                return outcome.map_err(|e| self.op_error(e));
            }
            if let Err(e) = self.io.wait(None) {
                let e = self.op_error(e);
                self.ring_failed(e.clone());
                return Err(e);
            }
        }
    }

    fn roll_segment(&mut self) -> Result<()> {
        debug_assert!(self.flights.is_empty());
        if self.unsynced_since.is_some() {
            // Periodic mode: what was written to the old segment is synced
            // before writing moves on, so that syncs only ever need the
            // active file.
            self.sync_segment()?;
            self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
            self.unsynced_since = None;
            self.durable_through = self.completed;
        }
        let seq = self.next_segment_seq;
        let segment = self.preparer.take(seq)?;
        // Before the segment's first commit: from now on a listing without
        // it, or a chain that ends before what was durable, lost commits.
        self.manifest.write(seq, self.durable_through)?;
        // The new segment is empty: say so before asking for the next one,
        // so that its fill is paced from the start.
        self.preparer.report_fill(self.block as u64, segment.bytes);
        self.preparer.request(SegmentSeq(seq.0 + 1));
        self.metrics
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        self.segment = segment;
        self.write_position = self.block as u64;
        self.next_segment_seq = SegmentSeq(seq.0 + 1);
        Ok(())
    }

    /// Records operation `id`'s outcome, then acknowledges finished
    /// operations from the oldest on, stopping at the first unfinished one.
    fn complete(&mut self, id: u64, outcome: std::result::Result<(), OpError>) {
        let flight = self
            .flights
            .iter_mut()
            .find(|f| f.id == id)
            .expect("a completion for an operation in flight");
        flight.outcome = Some(outcome);
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
                        self.unsynced_since = None;
                        self.durable_through = self.durable_through.max(f.covers);
                    }
                }
                Some(mut batch) => {
                    if self.failed.is_none() {
                        self.acknowledge(&mut batch, f.payload_bytes);
                        if f.synced {
                            self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
                            self.unsynced_since = None;
                            self.durable_through = self.completed;
                        }
                    }
                    batch.records.clear();
                    assert!(
                        batch.waiters.is_empty(),
                        "a finished commit still has waiters"
                    );
                    self.spare.push(batch);
                }
            }
        }
    }

    fn acknowledge(&mut self, batch: &mut Batch, payload_bytes: u64) {
        self.completed = batch.builder.commit_seq();
        let records = batch.records.len() as u64;
        for (channel, record) in batch.records.drain(..) {
            self.table.acknowledge(channel, record);
        }
        self.completed_waiters.append(&mut batch.waiters);
        let m = &self.metrics;
        m.commits.fetch_add(1, Ordering::Relaxed);
        m.records.fetch_add(records, Ordering::Relaxed);
        m.payload_bytes.fetch_add(payload_bytes, Ordering::Relaxed);
        m.commit_records_log2[commit_records_bucket(records)].fetch_add(1, Ordering::Relaxed);
        match self.config.durability {
            Durability::Sync => {
                m.syncs.fetch_add(1, Ordering::Relaxed);
                self.durable_through = self.completed;
            }
            Durability::Periodic { .. } => {
                self.unsynced_since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn op_error(&self, e: OpError) -> Error {
        Error::io(e.operation, Some(self.segment.path.clone()), e.source)
    }

    /// Fail-stop: nothing is acknowledged from now on. Everything waiting on
    /// a commit that did not complete gets the error; reads go on. Buffers of
    /// operations still in flight stay in `flights` until their completions
    /// arrive.
    fn fail(&mut self, e: Error) {
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
        self.building.records.clear();
        let next = self.building.builder.commit_seq();
        self.building.builder.reset(next);
        self.unsynced_since = None;
        if let Some(r) = self.deferred.take() {
            r.fail(err);
        }
    }
}

fn complete_waiter(w: Waiter, r: Result<()>) {
    let dropped = |name: Box<str>| Error::ChannelDropped {
        name: name.into_string(),
    };
    match (w, r) {
        (Waiter::Offset(ack, off), Ok(())) => ack.complete(Ok(off)),
        (Waiter::Channel(ack, id), Ok(())) => ack.complete(Ok(id)),
        (Waiter::Unit(ack), r) => ack.complete(r),
        (Waiter::Offset(ack, _), Err(e)) => ack.complete(Err(e)),
        (Waiter::Channel(ack, _), Err(e)) => ack.complete(Err(e)),
        (Waiter::DroppedOffset(ack, name), r) => ack.complete(r.and(Err(dropped(name)))),
        (Waiter::DroppedRead(ack, name), r) => ack.complete(r.and(Err(dropped(name)))),
    }
}

/// Makes `path` durable through `io` (a data sync of an fd opened for it),
/// waiting for it; used at start, before the shard answers anything.
fn sync_file_through(io: &mut dyn CommitIo, path: &std::path::Path) -> Result<()> {
    let f = crate::io::file::open_read(path, Access::Buffered)?;
    let failed = |e: OpError| Error::io(e.operation, Some(path.to_path_buf()), e.source);
    // SAFETY: a sync references no memory; the file outlives the wait (if
    // the wait fails the shard never starts and the sync is left to the
    // kernel; closing the fd does not disturb an in-flight sync).
    unsafe {
        io.start(
            0,
            Op::Sync {
                fd: std::os::unix::io::AsRawFd::as_raw_fd(&f),
            },
        )
    }
    .map_err(failed)?;
    loop {
        if let Some((_, outcome)) = io.poll() {
            return outcome.map_err(failed);
        }
        io.wait(None).map_err(failed)?;
    }
}
