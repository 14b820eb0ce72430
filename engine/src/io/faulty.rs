//! The fault-injecting backend: another backend whose planned operation
//! fails instead of reaching the disk — with an errno, by breaking the ring,
//! or by panicking the shard thread. For tests of fail-stop.

use std::collections::VecDeque;
use std::io;
use std::time::{Duration, Instant};

use crate::config::{FaultEffect, FaultPlan};
use crate::io::{CommitIo, Op, OpError};

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
        OpError {
            operation: "io_uring_enter",
            source: io::Error::from_raw_os_error(self.plan.errno),
        }
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
        if self.plan.in_sync {
            if let Op::Write {
                fd,
                position,
                ptr,
                len,
                ..
            } = op
            {
                self.failing_sync = Some(id);
                let unsynced = Op::Write {
                    fd,
                    position,
                    ptr,
                    len,
                    sync: crate::io::SyncKind::None,
                };
                // SAFETY: see above.
                return unsafe { self.inner.start(id, unsynced) };
            }
        }
        let operation = match op {
            Op::Sync { .. } => "fdatasync",
            Op::Read { .. } => "read",
            Op::Write { .. } => "write",
        };
        let due = Instant::now() + self.plan.completion_delay;
        self.injected.push_back((
            due,
            id,
            Err(OpError {
                operation,
                source: io::Error::from_raw_os_error(self.plan.errno),
            }),
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
        if Some(id) == self.failing_sync && outcome.is_ok() {
            return Some((
                id,
                Err(OpError {
                    operation: "fdatasync",
                    source: io::Error::from_raw_os_error(self.plan.errno),
                }),
            ));
        }
        Some((id, outcome))
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
