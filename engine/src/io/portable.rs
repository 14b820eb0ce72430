//! The portable backend: plain system calls on the shard thread, for systems
//! where `io_uring` is disabled. Each operation completes inside `start`.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::RawFd;
use std::time::Duration;

use crate::error::Result;
use crate::io::{CommitIo, Op, OpError, OpKind, SyncKind, OPS_IN_FLIGHT_MAX};

/// `pwrite`/`pwritev2(RWF_DSYNC)` + `fdatasync`, and `poll(2)` on the wake fd.
pub struct PortableIo {
    wake_fd: RawFd,
    done: VecDeque<(u64, Result<(), OpError>)>,
}

impl PortableIo {
    /// A backend waiting on `wake_fd`. The descriptor is made non-blocking:
    /// after `poll` says it is readable, another reader (the wake read a
    /// failed ring left armed on it) may still take the count first, and the
    /// read must then not block.
    pub fn new(wake_fd: RawFd) -> Self {
        // SAFETY: F_GETFL/F_SETFL on a descriptor the caller owns; no memory.
        unsafe {
            let fl = libc::fcntl(wake_fd, libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(wake_fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        PortableIo {
            wake_fd,
            done: VecDeque::with_capacity(OPS_IN_FLIGHT_MAX),
        }
    }
}

fn os_error(kind: OpKind) -> OpError {
    OpError::os(kind, io::Error::last_os_error())
}

fn fdatasync(fd: RawFd) -> Result<(), OpError> {
    loop {
        // SAFETY: fdatasync on a descriptor the shard owns.
        if unsafe { libc::fdatasync(fd) } == 0 {
            return Ok(());
        }
        let e = os_error(OpKind::Sync);
        // EINTR is not a failed sync; anything else is final and never retried.
        if e.source.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

pub(crate) fn write(
    fd: RawFd,
    position: u64,
    ptr: *const u8,
    len: usize,
    sync: SyncKind,
) -> Result<(), OpError> {
    let flags = if sync == SyncKind::Dsync {
        libc::RWF_DSYNC
    } else {
        0
    };
    let iov = libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    };
    let n = loop {
        // SAFETY: the caller of `start` keeps the buffer valid for the call.
        let n = unsafe { libc::pwritev2(fd, &iov, 1, position as libc::off_t, flags) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        break n;
    };
    if n < 0 {
        return Err(os_error(OpKind::Write));
    }
    if n as usize != len {
        return Err(OpError::short(OpKind::Write, n as usize, len));
    }
    if sync == SyncKind::Fdatasync {
        fdatasync(fd)?;
    }
    Ok(())
}

pub(crate) fn read(
    fd: RawFd,
    position: u64,
    ptr: *mut u8,
    len: usize,
    expect: usize,
) -> Result<(), OpError> {
    let mut done = 0usize;
    while done < expect {
        // SAFETY: the caller of `start` keeps `ptr..ptr+len` valid and
        // unaliased for the call; `done < expect <= len`.
        let n = unsafe {
            libc::pread(
                fd,
                ptr.add(done).cast(),
                len - done,
                (position + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(os_error(OpKind::Read));
        }
        if n == 0 {
            return Err(OpError::short(OpKind::Read, done, expect));
        }
        done += n as usize;
    }
    Ok(())
}

impl CommitIo for PortableIo {
    unsafe fn start(&mut self, id: u64, op: Op) -> Result<(), OpError> {
        assert!(
            self.done.len() < OPS_IN_FLIGHT_MAX,
            "too many operations in flight"
        );
        let result = match op {
            Op::Write {
                file,
                position,
                ptr,
                len,
                sync,
            } => write(file.fd(), position, ptr, len, sync),
            Op::Sync { file } => fdatasync(file.fd()),
            Op::Read {
                file,
                position,
                ptr,
                len,
                expect,
            } => read(file.fd(), position, ptr, len, expect),
        };
        self.done.push_back((id, result));
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.done.len()
    }

    fn poll(&mut self) -> Option<(u64, Result<(), OpError>)> {
        self.done.pop_front()
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), OpError> {
        if !self.done.is_empty() {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: self.wake_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
        // SAFETY: one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 && pfd.revents & libc::POLLIN != 0 {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a local; the fd is non-blocking.
            unsafe { libc::read(self.wake_fd, (&mut v as *mut u64).cast(), 8) };
        }
        Ok(())
    }
}
