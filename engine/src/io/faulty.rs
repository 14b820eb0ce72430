//! The fault-injecting backend: any other backend, whose planned operation
//! fails instead of reaching the disk — with an errno, by breaking the
//! backend (for `io_uring`, the ring), or by panicking the shard thread. For
//! tests of fail-stop; built with the feature `testing`.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::io::{CommitIo, Op, OpError, OpKind};
use crate::types::ShardId;

/// Which operation a [`Backend::FaultInjection`](crate::io::backend::Backend::FaultInjection)
/// fails, and how.
///
/// ```
/// use corewal_engine::io::faulty::{FaultEffect, FaultPlan};
/// let mut plan = FaultPlan::new(3, libc::EIO); // the 3rd write or sync fails with EIO
/// plan.effect = FaultEffect::Panic;            // ... or the shard thread panics there
/// # let _ = plan;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// The shard whose operation fails (`None`: every shard).
    pub shard: Option<ShardId>,
    /// The 1-based index, among the shard's commit writes and data syncs
    /// (recovery reads not counted, unless `reads`), of the operation that fails.
    pub fail_op: u64,
    /// The errno it fails with, e.g. `libc::EIO`.
    pub errno: i32,
    /// Fail the operation's data sync rather than its write: the bytes are
    /// written (without being made durable) and the sync reports the error,
    /// as when a device fails a cache flush.
    pub in_sync: bool,
    /// What happens at the planned operation. Default `FaultEffect::Error`.
    pub effect: FaultEffect,
    /// Count recovery reads instead of writes and syncs. Default false.
    pub reads: bool,
    /// How long the planned operation's failed completion is held back
    /// before it is delivered (as a slow device would). Default zero.
    pub completion_delay: Duration,
}

impl FaultPlan {
    /// Fails the `fail_op`-th write or sync of every shard with `errno`.
    pub fn new(fail_op: u64, errno: i32) -> FaultPlan {
        FaultPlan {
            shard: None,
            fail_op,
            errno,
            in_sync: false,
            effect: FaultEffect::Error,
            reads: false,
            completion_delay: Duration::ZERO,
        }
    }
}

/// What a planned fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultEffect {
    /// The operation completes with the planned errno.
    Error,
    /// The backend itself fails, as a ring does when `io_uring_enter`
    /// returns `errno` (the error says `io_uring_enter` over any backend):
    /// the planned operation is never submitted and never completes, and
    /// every wait from then on fails.
    RingFails,
    /// The backend's wait fails once (as `io_uring_enter` can), with the
    /// planned operation queued: the wait after it fails, then the operation
    /// is submitted anyway and its completion arrives later.
    RingFailsOnce,
    /// The shard thread panics when it starts the operation (a broken
    /// invariant).
    Panic,
}

/// Wraps `inner`; counts writes and syncs (or reads) and fails the planned one.
pub struct FaultyIo {
    inner: Box<dyn CommitIo>,
    plan: FaultPlan,
    ops: u64,
    /// Injected completions and when each may be delivered.
    injected: VecDeque<(Instant, u64, Result<(), OpError>)>,
    /// An operation whose write goes through but whose completion reports a
    /// failed data sync.
    failing_sync: Option<u64>,
    /// `FaultEffect::RingFails`: operations swallowed by the broken ring.
    swallowed: usize,
    ring_broken: bool,
    /// `FaultEffect::RingFailsOnce`: the operation held back until the
    /// failed wait has been reported.
    held: Option<(u64, HeldOp)>,
}

/// An operation kept back by `FaultEffect::RingFailsOnce`.
struct HeldOp(Op);

// SAFETY: the operation's buffer pointer is only ever handed back to the
// inner backend by the shard that started it; the caller's guarantee that the
// buffer lives until the completion covers it wherever the backend moves.
unsafe impl Send for HeldOp {}

impl FaultyIo {
    /// Fails `plan.fail_op` of `inner`'s writes and syncs.
    pub fn new(inner: Box<dyn CommitIo>, plan: FaultPlan) -> Self {
        FaultyIo {
            inner,
            plan,
            ops: 0,
            injected: VecDeque::new(),
            failing_sync: None,
            swallowed: 0,
            ring_broken: false,
            held: None,
        }
    }

    fn ring_error(&self) -> OpError {
        OpError::os(OpKind::Ring, io::Error::from_raw_os_error(self.plan.errno))
    }
}

// SAFETY (of every `start` call below): the caller's guarantee for the
// buffer is passed on unchanged to the inner backend; an operation this
// backend swallows or fails never touches its buffer.
impl CommitIo for FaultyIo {
    unsafe fn start(&mut self, id: u64, op: Op) -> Result<(), OpError> {
        if self.ring_broken {
            self.swallowed += 1;
            return Ok(());
        }
        let counted = if self.plan.reads {
            matches!(op, Op::Read { .. })
        } else {
            matches!(op, Op::Write { .. } | Op::Sync { .. })
        };
        if counted {
            self.ops += 1;
        }
        if !counted || self.ops != self.plan.fail_op {
            // SAFETY: see above.
            return unsafe { self.inner.start(id, op) };
        }
        match self.plan.effect {
            FaultEffect::Panic => panic!(
                "fault injection: the planned panic at operation {}",
                self.ops
            ),
            FaultEffect::RingFails => {
                self.ring_broken = true;
                self.swallowed += 1;
                return Ok(());
            }
            FaultEffect::RingFailsOnce => {
                self.held = Some((id, HeldOp(op)));
                return Ok(());
            }
            FaultEffect::Error => {}
        }
        let kind = op.kind();
        if self.plan.in_sync {
            if let Op::Write {
                file,
                position,
                ptr,
                len,
                ..
            } = op
            {
                self.failing_sync = Some(id);
                let unsynced = Op::Write {
                    file,
                    position,
                    ptr,
                    len,
                    sync: crate::io::SyncKind::None,
                };
                // SAFETY: see above.
                return unsafe { self.inner.start(id, unsynced) };
            }
        }
        let due = Instant::now() + self.plan.completion_delay;
        self.injected.push_back((
            due,
            id,
            Err(OpError::os(
                kind,
                io::Error::from_raw_os_error(self.plan.errno),
            )),
        ));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.injected.len() + self.swallowed + self.held.iter().count()
    }

    fn poll(&mut self) -> Option<(u64, Result<(), OpError>)> {
        if self
            .injected
            .front()
            .is_some_and(|(due, _, _)| *due <= Instant::now())
        {
            let (_, id, outcome) = self.injected.pop_front().expect("checked");
            return Some((id, outcome));
        }
        let (id, outcome) = self.inner.poll()?;
        if Some(id) != self.failing_sync {
            return Some((id, outcome));
        }
        // Ids are slot numbers the ring reuses: only this completion of the
        // id is the failing one.
        self.failing_sync = None;
        let errno = self.plan.errno;
        Some((
            id,
            outcome.and(Err(OpError::os(
                OpKind::Sync,
                io::Error::from_raw_os_error(errno),
            ))),
        ))
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), OpError> {
        if self.ring_broken {
            return Err(self.ring_error());
        }
        if let Some((id, HeldOp(op))) = self.held.take() {
            // The failed enter is reported; the operation it carried still
            // reaches the kernel and completes later.
            // SAFETY: see above.
            let started = unsafe { self.inner.start(id, op) };
            if let Err(e) = started {
                self.injected.push_back((Instant::now(), id, Err(e)));
            }
            return Err(self.ring_error());
        }
        if let Some((due, _, _)) = self.injected.front() {
            let left = due.saturating_duration_since(Instant::now());
            if left > Duration::ZERO {
                std::thread::sleep(left.min(timeout.unwrap_or(left)));
            }
            return Ok(());
        }
        self.inner.wait(timeout)
    }
}
