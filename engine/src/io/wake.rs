//! The eventfd that wakes a sleeping shard.

use std::io;
use std::os::unix::io::RawFd;

use crate::error::{Error, Result};

/// An `eventfd` counter: callers write 1 to wake the shard; the shard keeps a
/// read of it armed in its ring (or polls it, in the portable backend).
#[derive(Debug)]
pub struct WakeFd {
    fd: RawFd,
}

impl WakeFd {
    /// Creates a blocking, close-on-exec eventfd. Blocking, so that the ring
    /// arms a poll for the read instead of completing it with `EAGAIN`.
    pub fn new() -> Result<WakeFd> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io("eventfd", None, io::Error::last_os_error()));
        }
        Ok(WakeFd { fd })
    }

    /// The descriptor, for arming a read or a poll.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Adds one to the counter, waking whoever waits on it.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a local u64 to our eventfd. The write
        // fails only if the counter would overflow u64::MAX - 1, which 2^64
        // wakes would take; a failed wake is then harmless, the shard is awake.
        unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
    }

    /// Reads and resets the counter; call only when it is known to be readable.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a local u64 from our eventfd.
        unsafe { libc::read(self.fd, (&mut v as *mut u64).cast(), 8) };
    }
}

impl Drop for WakeFd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor and close it once.
        unsafe { libc::close(self.fd) };
    }
}
