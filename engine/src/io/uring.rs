//! The `io_uring` backend: one ring per shard, created on the shard's thread.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};

use crate::error::{Error, Result};
use crate::io::{CommitIo, Op, OpError, OpKind, SyncKind, OPS_IN_FLIGHT_MAX};

/// `user_data` of the eventfd read. Operation ids are shifted left by one
/// (the low bit tells a write from its data sync), so they never reach it.
const USER_DATA_WAKE: u64 = u64::MAX;
/// `user_data` of the cancellation of the eventfd read, when the ring drops.
const USER_DATA_CANCEL: u64 = u64::MAX - 1;

/// A ring with the features the backend relies on: timed waits
/// (`IORING_FEAT_EXT_ARG`, Linux 5.11) — without it the first idle wait
/// would fail with `EINVAL` and stop the shard.
fn new_ring(entries: u32) -> Result<IoUring> {
    let ring = IoUring::new(entries).map_err(|e| Error::IoUringUnavailable { source: e.into() })?;
    check_features(ring.params().is_feature_ext_arg())?;
    Ok(ring)
}

/// Refuses a kernel whose rings lack `IORING_FEAT_EXT_ARG`.
fn check_features(ext_arg: bool) -> Result<()> {
    if ext_arg {
        return Ok(());
    }
    Err(Error::IoUringUnavailable {
        source: std::sync::Arc::new(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel's io_uring lacks IORING_FEAT_EXT_ARG (timed waits, Linux 5.11 and later)",
        )),
    })
}

/// Checks that `io_uring` can be set up here with the features the backend
/// needs, so that `Engine::open` can name the cause before any shard starts.
pub fn probe() -> Result<()> {
    new_ring(2).map(drop)
}

/// Submission entries: each operation takes at most two (a write and its
/// linked data sync), plus the wake read. The completion queue gets twice as
/// many (the kernel's default), so it cannot overflow.
const RING_ENTRIES: u32 = 64;
const _: () = assert!(2 * (OPS_IN_FLIGHT_MAX as u32) < RING_ENTRIES);

/// An operation the kernel holds, in the slot of its id.
struct InFlight {
    completions_left: u8,
    /// Bytes the write or read must transfer.
    expect_len: usize,
    is_read: bool,
    error: Option<OpError>,
}

/// `io_uring` commit I/O.
pub struct UringIo {
    ring: IoUring,
    wake_fd: RawFd,
    /// Target of the armed eventfd read; boxed so that its address is stable.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// The wake read completed since the last wait returned: the next wait
    /// returns at once. (A wake that lands between the shard announcing
    /// sleep and entering the ring is reaped by the `wait` that follows;
    /// without this it would be consumed there and the wait would sleep.)
    woken: bool,
    /// `io_uring_enter` failed after entries were queued: they stay queued
    /// (their buffers are the caller's until it gives up on the ring), and
    /// the error is returned by the next `wait`.
    broken: Option<io::Error>,
    in_flight: InFlightTable,
    done: VecDeque<(u64, Result<(), OpError>)>,
}

impl UringIo {
    /// Sets up a ring and arms the wake read.
    pub fn new(wake_fd: RawFd) -> Result<UringIo> {
        let ring = new_ring(RING_ENTRIES)?;
        let mut io = UringIo {
            ring,
            wake_fd,
            wake_buf: Box::new(0),
            wake_armed: false,
            woken: false,
            broken: None,
            in_flight: InFlightTable {
                slots: std::array::from_fn(|_| None),
                queued: 0,
            },
            done: VecDeque::with_capacity(OPS_IN_FLIGHT_MAX),
        };
        io.arm_wake();
        io.ring
            .submit()
            .map_err(|e| Error::io("io_uring_enter", None, e))?;
        Ok(io)
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let ptr: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.wake_fd), ptr.cast(), 8)
            .build()
            .user_data(USER_DATA_WAKE);
        // SAFETY: wake_buf is boxed and is freed only after the read's
        // completion was reaped (`Drop` cancels the read and waits for it)
        // or never (it is leaked when that fails, or with the whole backend
        // when the ring broke).
        unsafe { self.ring.submission().push(&sqe) }.expect("ring has room for the wake read");
        self.wake_armed = true;
    }

    fn reap(&mut self) {
        let mut rearm = false;
        for cqe in self.ring.completion() {
            let (res, user_data) = (cqe.result(), cqe.user_data());
            if user_data == USER_DATA_WAKE {
                self.wake_armed = false;
                self.woken = true;
                rearm = true;
                continue;
            }
            if user_data == USER_DATA_CANCEL {
                continue;
            }
            let (id, is_sync) = (user_data >> 1, user_data & 1 == 1);
            let f = self.in_flight.get(id);
            if f.error.is_none() {
                let kind = match (is_sync, f.is_read) {
                    (true, _) => OpKind::Sync,
                    (false, true) => OpKind::Read,
                    (false, false) => OpKind::Write,
                };
                if res < 0 {
                    f.error = Some(OpError::os(kind, io::Error::from_raw_os_error(-res)));
                } else if !is_sync && res as usize != f.expect_len {
                    // A short write also breaks the link: its sync is cancelled.
                    f.error = Some(OpError::short(kind, res as usize, f.expect_len));
                }
            }
            if let Some(f) = self.in_flight.complete_one(id) {
                self.done.push_back((id, f.error.map_or(Ok(()), Err)));
            }
        }
        if rearm {
            self.arm_wake();
        }
    }
}

/// The operations the kernel holds, indexed by operation id (the ring's
/// slot numbers).
struct InFlightTable {
    slots: [Option<InFlight>; OPS_IN_FLIGHT_MAX],
    /// Slots in use.
    queued: usize,
}

impl InFlightTable {
    /// Operation `id`, in flight.
    fn get(&mut self, id: u64) -> &mut InFlight {
        self.slots
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .expect("a completion of an operation in flight")
    }

    /// Counts one completion of operation `id`; returns the operation once
    /// its last completion arrived (or it is not in flight).
    fn complete_one(&mut self, id: u64) -> Option<InFlight> {
        let slot = self.slots.get_mut(id as usize)?;
        let f = slot.as_mut()?;
        f.completions_left = f.completions_left.saturating_sub(1);
        if f.completions_left > 0 {
            return None;
        }
        self.queued -= 1;
        slot.take()
    }
}

/// The data sync of operation `id` on `fd`.
fn sync_entry(id: u64, fd: RawFd) -> squeue::Entry {
    opcode::Fsync::new(types::Fd(fd))
        .flags(types::FsyncFlags::DATASYNC)
        .build()
        .user_data(id << 1 | 1)
}

impl UringIo {
    /// Queues the write of operation `id`, with its data sync linked after
    /// it if `sync` asks; returns the completions it will have.
    ///
    /// # Safety
    /// `ptr` stays valid for `len` bytes until the completions are reaped.
    unsafe fn push_write(
        &mut self,
        id: u64,
        fd: RawFd,
        position: u64,
        ptr: *const u8,
        len: usize,
        sync: SyncKind,
    ) -> u8 {
        let rw_flags = if sync == SyncKind::Dsync {
            libc::RWF_DSYNC
        } else {
            0
        };
        let mut write = opcode::Write::new(types::Fd(fd), ptr, len as u32)
            .offset(position)
            .rw_flags(rw_flags)
            .build()
            .user_data(id << 1);
        if sync == SyncKind::Fdatasync {
            // The data sync must not start before the write completed.
            write = write.flags(squeue::Flags::IO_LINK);
        }
        let mut sq = self.ring.submission();
        // SAFETY: the caller keeps the buffer alive until completion.
        unsafe { sq.push(&write) }.expect("ring has room for a write");
        if sync != SyncKind::Fdatasync {
            return 1;
        }
        // SAFETY: fsync references no memory.
        unsafe { sq.push(&sync_entry(id, fd)) }.expect("ring has room for a data sync");
        2
    }

    /// Enters the ring with what is queued. Completions may have to be
    /// reaped first (`EBUSY`, `EAGAIN`): the entries stay queued and go with
    /// the next enter (in `wait`); any other failure is kept for `wait`.
    fn submit_queued(&mut self) {
        loop {
            match self.ring.submit() {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return
                }
                Err(e) => {
                    self.broken.get_or_insert(e);
                    return;
                }
            }
        }
    }
}

impl CommitIo for UringIo {
    unsafe fn start(&mut self, id: u64, op: Op) -> Result<(), OpError> {
        let slot = id as usize;
        assert!(slot < OPS_IN_FLIGHT_MAX, "operation id {id} is not a slot");
        assert!(
            self.in_flight.slots[slot].is_none(),
            "operation id {id} in flight"
        );
        let (completions, expect_len, is_read) = match op {
            Op::Write {
                file,
                position,
                ptr,
                len,
                sync,
            } => {
                // SAFETY: the caller keeps the buffer alive until completion.
                let n = unsafe { self.push_write(id, file.fd(), position, ptr, len, sync) };
                (n, len, false)
            }
            Op::Sync { file } => {
                // SAFETY: fsync references no memory.
                unsafe { self.ring.submission().push(&sync_entry(id, file.fd())) }
                    .expect("ring has room for a data sync");
                (1, 0, false)
            }
            Op::Read {
                file,
                position,
                ptr,
                len,
                expect,
            } => {
                let read = opcode::Read::new(types::Fd(file.fd()), ptr, len as u32)
                    .offset(position)
                    .build()
                    .user_data(id << 1);
                // SAFETY: the caller keeps the buffer alive and unread
                // until the completion was returned.
                unsafe { self.ring.submission().push(&read) }.expect("ring has room for a read");
                (1, expect, true)
            }
        };
        self.in_flight.slots[slot] = Some(InFlight {
            completions_left: completions,
            expect_len,
            is_read,
            error: None,
        });
        self.in_flight.queued += 1;
        // From here on the operation is queued: `start` returns `Ok` even if
        // the enter fails, so that the caller keeps its buffer as long as
        // the kernel may use it; the failure comes from the next `wait`.
        self.submit_queued();
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.queued + self.done.len()
    }

    fn poll(&mut self) -> Option<(u64, Result<(), OpError>)> {
        if self.done.is_empty() {
            self.reap();
        }
        self.done.pop_front()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), OpError> {
        if let Some(e) = self.broken.take() {
            return Err(OpError::os(OpKind::Ring, e));
        }
        self.reap();
        if !self.done.is_empty() || std::mem::take(&mut self.woken) {
            return Ok(());
        }
        let res = match timeout {
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        // What ended the wait is reaped now; a wake among it ended this wait
        // and is not carried to the next one.
        self.reap();
        self.woken = false;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(OpError::os(OpKind::Ring, e)),
        }
    }
}

impl Drop for UringIo {
    /// Cancels the wake read and waits for it and for every operation still
    /// in flight, so that no completion can land in freed memory; if the
    /// ring does not let that finish, the wake buffer is leaked instead.
    fn drop(&mut self) {
        let mut settled = false;
        if self.broken.is_none() {
            let cancel = opcode::AsyncCancel::new(USER_DATA_WAKE)
                .build()
                .user_data(USER_DATA_CANCEL);
            // SAFETY: a cancellation references no memory.
            let queued =
                !self.wake_armed || unsafe { self.ring.submission().push(&cancel) }.is_ok();
            for _ in 0..1000 {
                self.reap_for_drop();
                if !self.wake_armed && self.in_flight.queued == 0 {
                    settled = true;
                    break;
                }
                if !queued {
                    break;
                }
                let ts = types::Timespec::from(Duration::from_millis(10));
                let args = types::SubmitArgs::new().timespec(&ts);
                match self.ring.submitter().submit_with_args(1, &args) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                        ) => {}
                    Err(_) => break,
                }
            }
        }
        if !settled {
            Box::leak(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        }
    }
}

impl UringIo {
    /// Reaps completions while dropping: no re-arming of the wake read.
    fn reap_for_drop(&mut self) {
        for cqe in self.ring.completion() {
            let user_data = cqe.user_data();
            if user_data == USER_DATA_WAKE {
                self.wake_armed = false;
            } else if user_data != USER_DATA_CANCEL {
                self.in_flight.complete_one(user_data >> 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::io::wake::WakeFd;

    #[test]
    fn a_wake_that_completed_before_the_wait_ends_the_wait_at_once() {
        let wake = WakeFd::new().unwrap();
        let mut io = UringIo::new(wake.fd()).unwrap();
        wake.wake();
        // Let the armed eventfd read complete: its task work runs when this
        // thread comes back from a system call.
        std::thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        io.wait(Some(Duration::from_secs(2))).unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the wake was swallowed: the wait took {:?}",
            started.elapsed()
        );
        // And the wake read is armed again: the next wake ends the next wait.
        wake.wake();
        let started = Instant::now();
        io.wait(Some(Duration::from_secs(2))).unwrap();
        assert!(started.elapsed() < Duration::from_millis(500));
        // With no wake, a timed wait sleeps its time (the wake was not
        // counted twice).
        let started = Instant::now();
        io.wait(Some(Duration::from_millis(100))).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    #[test]
    fn a_ring_without_timed_waits_is_refused_by_name() {
        assert!(check_features(true).is_ok());
        let e = check_features(false).unwrap_err();
        assert!(matches!(e, Error::IoUringUnavailable { .. }));
        assert!(e.to_string().contains("IORING_FEAT_EXT_ARG"), "{e}");
    }
}
