//! The fault-injecting backend: another backend whose planned commit write
//! or data sync fails instead of reaching the disk. For tests of fail-stop.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use crate::config::FaultPlan;
use crate::io::{CommitIo, Op, OpError};

/// Wraps `inner`; counts writes and syncs and fails the planned one.
pub struct FaultyIo {
    inner: Box<dyn CommitIo>,
    plan: FaultPlan,
    ops: u64,
    injected: VecDeque<(u64, Result<(), OpError>)>,
    /// An operation whose write goes through but whose completion reports a
    /// failed data sync.
    failing_sync: Option<u64>,
}

impl FaultyIo {
    /// Fails `plan.fail_op` of `inner`'s writes and syncs.
    pub fn new(inner: Box<dyn CommitIo>, plan: FaultPlan) -> Self {
        FaultyIo {
            inner,
            plan,
            ops: 0,
            injected: VecDeque::new(),
            failing_sync: None,
        }
    }
}

impl CommitIo for FaultyIo {
    unsafe fn start(&mut self, id: u64, op: Op) -> Result<(), OpError> {
        if matches!(op, Op::Write { .. } | Op::Sync { .. }) {
            self.ops += 1;
            if self.ops == self.plan.fail_op && self.plan.in_sync {
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
                    // SAFETY: the caller's guarantee is passed on unchanged.
                    return unsafe { self.inner.start(id, unsynced) };
                }
            }
            if self.ops == self.plan.fail_op {
                let operation = if matches!(op, Op::Sync { .. }) {
                    "fdatasync"
                } else {
                    "write"
                };
                self.injected.push_back((
                    id,
                    Err(OpError {
                        operation,
                        source: io::Error::from_raw_os_error(self.plan.errno),
                    }),
                ));
                return Ok(());
            }
        }
        // SAFETY: the caller's guarantee is passed on unchanged.
        unsafe { self.inner.start(id, op) }
    }

    fn in_flight(&self) -> usize {
        self.inner.in_flight() + self.injected.len()
    }

    fn poll(&mut self) -> Option<(u64, Result<(), OpError>)> {
        let (id, outcome) = self.injected.pop_front().or_else(|| self.inner.poll())?;
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
        if !self.injected.is_empty() {
            return Ok(());
        }
        self.inner.wait(timeout)
    }
}
