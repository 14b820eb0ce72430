//! The engine's safe face of a backend: operations take their buffer and
//! their file by value, and a completion hands the buffer back.
//!
//! While an operation is in flight the [`Ring`] holds its buffer (and a
//! reference to its file) in a slot; the backend sees the slot's index as the
//! operation's id, so a completion finds its slot by index. Nothing outside
//! `io/` can reach a buffer the kernel may still write into or read from;
//! when a backend fails and operations may still complete under it, their
//! buffers are leaked here ([`Ring::abandon`]), never freed.
//!
//! Every operation is checked at this boundary: a block-aligned position, a
//! length that is a non-zero multiple of the buffer's alignment and fits the
//! buffer. Breaking one is a bug in the engine, and panics.

use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::io::backend::Backend;
use crate::io::buffer::AlignedBuf;
use crate::io::file::DiskFile;
use crate::io::portable::PortableIo;
use crate::io::{new_commit_io, CommitIo, Op, OpError, OpKind, SyncKind, OPS_IN_FLIGHT_MAX};
use crate::types::ShardId;

/// An operation in flight: the caller's id, and what must outlive it.
struct Slot {
    id: u64,
    _file: Arc<DiskFile>,
    /// The buffer of a write or read; `None` for a sync, or for a read into
    /// memory its starter owns ([`crate::io::read_ahead`]).
    buf: Option<AlignedBuf>,
}

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The id the caller started it under.
    pub id: u64,
    /// Its outcome.
    pub outcome: std::result::Result<(), OpError>,
    /// The buffer it was started with (writes and reads).
    pub buf: Option<AlignedBuf>,
}

/// An operation the backend did not queue, with its buffer handed back.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: OpError,
    /// The buffer it was started with (writes and reads).
    pub buf: Option<AlignedBuf>,
}

/// A backend behind a table of in-flight operations; one per shard (or per
/// tool run), used from one thread.
pub struct Ring {
    io: Box<dyn CommitIo>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    wake_fd: RawFd,
    abandoned: bool,
}

impl Ring {
    /// The backend `backend` for shard `shard`, waiting on `wake_fd`.
    pub fn new(backend: Backend, shard: ShardId, wake_fd: RawFd) -> Result<Ring> {
        Ok(Ring::over(new_commit_io(backend, shard, wake_fd)?, wake_fd))
    }

    /// A ring over the `io_uring` backend (the device probe's).
    pub fn io_uring(wake_fd: RawFd) -> Result<Ring> {
        Ok(Ring::over(
            Box::new(crate::io::uring::UringIo::new(wake_fd)?),
            wake_fd,
        ))
    }

    /// A ring over the portable backend (the inspector's: no ring needed).
    pub fn portable(wake_fd: RawFd) -> Ring {
        Ring::over(Box::new(PortableIo::new(wake_fd)), wake_fd)
    }

    fn over(io: Box<dyn CommitIo>, wake_fd: RawFd) -> Ring {
        Ring {
            io,
            slots: (0..OPS_IN_FLIGHT_MAX).map(|_| None).collect(),
            free: (0..OPS_IN_FLIGHT_MAX).rev().collect(),
            wake_fd,
            abandoned: false,
        }
    }

    /// Operations started whose completion [`Ring::poll`] has not returned.
    pub fn in_flight(&self) -> usize {
        OPS_IN_FLIGHT_MAX - self.free.len()
    }

    /// Writes the first `len` bytes of `buf` at `position` of `file`, made
    /// durable as `sync` says. The buffer comes back with the completion,
    /// or at once in the `Err` (the write was not queued).
    pub fn write(
        &mut self,
        id: u64,
        file: &Arc<DiskFile>,
        position: u64,
        buf: AlignedBuf,
        len: usize,
        sync: SyncKind,
    ) -> std::result::Result<(), Refused> {
        check_transfer(&buf, position, len, len);
        let op = Op::Write {
            file: file.clone(),
            position,
            ptr: buf.as_ptr(),
            len,
            sync,
        };
        // SAFETY: the buffer moves into the slot, which keeps it (unchanged:
        // nothing hands out a reference to it) until `poll` returns this
        // operation's completion, or forever once the ring is abandoned; if
        // the start fails the buffer is handed back, nothing of it queued.
        unsafe { self.start(id, file, Some(buf), op) }
    }

    /// Reads `len` bytes at `position` of `file` into `buf`; exactly
    /// `expect` bytes must arrive (fewer than `len` only at the end of the
    /// file). The buffer comes back with the completion.
    pub fn read(
        &mut self,
        id: u64,
        file: &Arc<DiskFile>,
        position: u64,
        mut buf: AlignedBuf,
        len: usize,
        expect: usize,
    ) -> std::result::Result<(), Refused> {
        check_transfer(&buf, position, len, expect);
        let op = Op::Read {
            file: file.clone(),
            position,
            ptr: buf.as_mut_ptr(),
            len,
            expect,
        };
        // SAFETY: as for `write`; nothing reads the buffer before its
        // completion hands it back.
        unsafe { self.start(id, file, Some(buf), op) }
    }

    /// `fdatasync(file)`.
    pub fn sync(&mut self, id: u64, file: &Arc<DiskFile>) -> std::result::Result<(), OpError> {
        let op = Op::Sync { file: file.clone() };
        // SAFETY: a sync references no memory.
        unsafe { self.start(id, file, None, op) }.map_err(|r| r.error)
    }

    /// Starts `op` for a read into memory the caller owns.
    ///
    /// # Safety
    /// As [`CommitIo::start`]: the memory `op` points to must stay valid,
    /// and unread, until this id's completion was returned by `poll`, or be
    /// leaked if the ring is abandoned before that.
    pub(crate) unsafe fn start_into(
        &mut self,
        id: u64,
        file: &Arc<DiskFile>,
        op: Op,
    ) -> std::result::Result<(), OpError> {
        // SAFETY: passed on to the caller.
        unsafe { self.start(id, file, None, op) }.map_err(|r| r.error)
    }

    /// # Safety
    /// `op` references only `buf` (held in the slot) or memory the caller
    /// keeps as [`Ring::start_into`] says.
    unsafe fn start(
        &mut self,
        id: u64,
        file: &Arc<DiskFile>,
        buf: Option<AlignedBuf>,
        op: Op,
    ) -> std::result::Result<(), Refused> {
        if self.abandoned {
            // The backend failed earlier; whoever goes on (a lenient
            // recovery, the replay sync) gets an error, not a panic.
            let error = OpError::os(
                OpKind::Ring,
                std::io::Error::other("the I/O backend failed earlier and was abandoned"),
            );
            return Err(Refused { error, buf });
        }
        // The slot is taken only once the backend queued the operation: if
        // the start fails or panics, the table is as it was.
        let slot = *self
            .free
            .last()
            .expect("an operation started with every slot in flight");
        debug_assert!(self.slots[slot].is_none());
        // SAFETY: the caller's promise, plus the slot holding `buf` until
        // the completion of `slot` (see `poll`).
        match unsafe { self.io.start(slot as u64, op) } {
            Ok(()) => {
                self.free.pop();
                self.slots[slot] = Some(Slot {
                    id,
                    _file: file.clone(),
                    buf,
                });
                Ok(())
            }
            Err(error) => Err(Refused { error, buf }),
        }
    }

    /// Reaps one finished operation without blocking, if any.
    pub fn poll(&mut self) -> Option<Completion> {
        if self.abandoned {
            return None;
        }
        let (slot, outcome) = self.io.poll()?;
        let slot = slot as usize;
        let s = self.slots[slot]
            .take()
            .expect("a completion of an operation in flight");
        self.free.push(slot);
        Some(Completion {
            id: s.id,
            outcome,
            buf: s.buf,
        })
    }

    /// Blocks until an operation completes, the wake fd is written, or
    /// `timeout` passes (see [`CommitIo::wait`]). `Err`: the backend failed;
    /// the caller abandons the ring.
    pub fn wait(&mut self, timeout: Option<Duration>) -> std::result::Result<(), OpError> {
        self.io.wait(timeout)
    }

    /// The backend failed: what is in flight may still complete into the
    /// kernel's copy of the submission, so the buffers in flight and the
    /// backend are leaked, never freed; from now on the ring only waits on
    /// the wake fd and starts nothing.
    pub fn abandon(&mut self) {
        if self.abandoned {
            return;
        }
        self.abandoned = true;
        for s in self.slots.iter_mut().filter_map(Option::take) {
            std::mem::forget(s);
        }
        self.free = (0..OPS_IN_FLIGHT_MAX).rev().collect();
        let waiter: Box<dyn CommitIo> = Box::new(PortableIo::new(self.wake_fd));
        std::mem::forget(std::mem::replace(&mut self.io, waiter));
    }

    /// Whether [`Ring::abandon`] was called.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    /// Waits for every operation in flight, dropping their completions;
    /// abandons the ring if the backend fails meanwhile.
    fn drain(&mut self) {
        while self.in_flight() > 0 && !self.abandoned {
            if self.poll().is_none() && self.wait(None).is_err() {
                self.abandon();
            }
        }
    }
}

impl Drop for Ring {
    /// Nothing may be freed under the kernel: waits for what is in flight
    /// (the backend's own drop waits for its internal state too).
    fn drop(&mut self) {
        self.drain();
    }
}

/// The checks every transfer passes at the boundary.
fn check_transfer(buf: &AlignedBuf, position: u64, len: usize, expect: usize) {
    let align = buf.align();
    assert!(len > 0, "a transfer of 0 bytes");
    assert!(
        len <= buf.len(),
        "a transfer of {len} bytes from a {}-byte buffer",
        buf.len()
    );
    assert_eq!(len % align, 0, "transfer length {len} not {align}-aligned");
    assert_eq!(
        position % align as u64,
        0,
        "transfer position {position} not {align}-aligned"
    );
    assert!(
        expect <= len,
        "expecting {expect} bytes of a {len}-byte transfer"
    );
}
