//! The engine's one boundary to the disk.
//!
//! Writes, data syncs and reads go through a [`ring::Ring`], which holds
//! each operation's buffer and file while it is in flight, over a
//! [`CommitIo`] backend: the `io_uring` backend ([`uring::UringIo`]), or the
//! portable `pwrite` + `fdatasync` backend ([`portable::PortableIo`]), chosen
//! by a [`backend::Backend`]. Both also wait on the shard's wake eventfd, so
//! that a sleeping shard wakes for new requests as well as for a finished
//! operation. Files and directories are created, renamed, removed, listed
//! and synced through [`file`](mod@file), on the filesystem [`fs::Fs`] names.

pub mod backend;
pub mod buffer;
#[cfg(feature = "testing")]
pub mod faulty;
pub mod file;
pub mod fs;
pub mod portable;
pub mod read_ahead;
pub mod ring;
#[cfg(feature = "testing")]
pub mod sim;
pub mod thread;
pub mod uring;
pub mod wake;

use std::io;
use std::os::unix::io::RawFd;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::io::backend::Backend;
use crate::io::file::DiskFile;
use crate::types::ShardId;

/// How a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// No sync: the write only has to reach the device.
    None,
    /// The write carries `RWF_DSYNC`.
    Dsync,
    /// The write is followed by an `fdatasync` ordered after it.
    Fdatasync,
}

/// One operation of the commit path, on a file the operation keeps open
/// (the backends take its descriptor, the simulated disk its path).
#[derive(Debug, Clone)]
pub enum Op {
    /// Write `len` bytes from `ptr` at `position` of `file`, then sync as asked.
    Write {
        /// Open `O_DIRECT` segment.
        file: Arc<DiskFile>,
        /// Byte position, block-aligned.
        position: u64,
        /// Block-aligned buffer address.
        ptr: *const u8,
        /// Block-multiple length.
        len: usize,
        /// How the write is made durable.
        sync: SyncKind,
    },
    /// `fdatasync` of `file`.
    Sync {
        /// The file to sync.
        file: Arc<DiskFile>,
    },
    /// Read `len` bytes at `position` of `file` into `ptr`; exactly `expect`
    /// bytes must arrive (fewer than `len` only at the end of the file).
    Read {
        /// Open `O_DIRECT` segment.
        file: Arc<DiskFile>,
        /// Byte position, block-aligned.
        position: u64,
        /// Block-aligned buffer address.
        ptr: *mut u8,
        /// Block-multiple length.
        len: usize,
        /// Bytes that must be read.
        expect: usize,
    },
}

/// Which step of the I/O failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A write.
    Write,
    /// A data sync.
    Sync,
    /// A read.
    Read,
    /// The backend itself (`io_uring_enter`).
    Ring,
}

impl Op {
    /// The operation's kind, as its errors name it.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Write { .. } => OpKind::Write,
            Op::Sync { .. } => OpKind::Sync,
            Op::Read { .. } => OpKind::Read,
        }
    }
}

/// Why an operation failed: the step and the kernel's error.
#[derive(Debug)]
pub struct OpError {
    /// The step.
    pub kind: OpKind,
    /// Fewer bytes moved than were asked for.
    pub short: bool,
    /// The error.
    pub source: io::Error,
}

impl OpError {
    /// The step failed with `source`.
    pub fn os(kind: OpKind, source: io::Error) -> OpError {
        OpError {
            kind,
            short: false,
            source,
        }
    }

    /// A transfer moved `done` of `expected` bytes: the same error from
    /// every backend.
    pub fn short(kind: OpKind, done: usize, expected: usize) -> OpError {
        OpError {
            kind,
            short: true,
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("transferred {done} of {expected} bytes"),
            ),
        }
    }

    /// The step's name in the engine's errors.
    pub fn operation(&self) -> &'static str {
        match (self.kind, self.short) {
            (OpKind::Write, false) => "write",
            (OpKind::Write, true) => "short write",
            (OpKind::Sync, _) => "fdatasync",
            (OpKind::Read, false) => "read",
            (OpKind::Read, true) => "short read",
            (OpKind::Ring, _) => "io_uring_enter",
        }
    }

    /// The engine's error for it, naming the file.
    pub fn into_error(self, path: Option<std::path::PathBuf>) -> crate::error::Error {
        crate::error::Error::io(self.operation(), path, self.source)
    }
}

/// The commit path's I/O: up to [`OPS_IN_FLIGHT_MAX`] operations in flight,
/// each named by the caller's `id`, plus the wake fd.
pub trait CommitIo: Send {
    /// Starts `op` under `id` and submits it to the kernel.
    ///
    /// `Err` means the operation was not queued: nothing references its
    /// buffer and no completion will come. Once it is queued, `start`
    /// returns `Ok` even if the submission then fails; that failure comes
    /// from the next [`CommitIo::wait`].
    ///
    /// # Safety
    /// The buffer of an `Op::Write` or `Op::Read` must stay valid (and, for
    /// a write, unmodified) until [`CommitIo::poll`] has returned the
    /// completion of `id` — or forever, if the caller gives up on a backend
    /// whose `wait` failed (it must then leak the buffer, not free it).
    unsafe fn start(&mut self, id: u64, op: Op) -> Result<(), OpError>;

    /// Operations started whose completion `poll` has not yet returned.
    fn in_flight(&self) -> usize;

    /// Reaps completions without blocking; returns one finished operation
    /// (all of its steps done) at a time, in no particular order.
    fn poll(&mut self) -> Option<(u64, Result<(), OpError>)>;

    /// Blocks until an operation completes, the wake fd is written (also
    /// when that happened since the last `wait` returned), or `timeout`
    /// passes (`None`: no timeout). Spurious returns are allowed; the caller
    /// re-checks its state. `Err` means the backend itself failed: the
    /// caller stops using it, and operations in flight may never complete.
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), OpError>;
}

/// Most operations a backend holds in flight.
pub const OPS_IN_FLIGHT_MAX: usize = 16;

/// Builds the backend a shard asked for, on the shard's own thread.
/// (`shard` matters only to the test backends.)
#[cfg_attr(not(feature = "testing"), allow(unused_variables))]
pub fn new_commit_io(
    backend: Backend,
    shard: ShardId,
    wake_fd: RawFd,
) -> Result<Box<dyn CommitIo>> {
    Ok(match backend {
        Backend::IoUring => Box::new(uring::UringIo::new(wake_fd)?),
        Backend::Portable => Box::new(portable::PortableIo::new(wake_fd)),
        #[cfg(feature = "testing")]
        Backend::Simulated(disk) => Box::new(sim::SimIo::new(disk, shard.0, wake_fd)),
        #[cfg(feature = "testing")]
        Backend::FaultInjection { over, plan } => {
            let inner = new_commit_io(*over, shard, wake_fd)?;
            if plan.shard.is_none_or(|s| s == shard) {
                Box::new(faulty::FaultyIo::new(inner, plan))
            } else {
                inner
            }
        }
    })
}

/// Checks that `io_uring` can be set up here, so that `Engine::open` can name
/// the cause and the way out before any shard starts.
pub fn probe_io_uring() -> Result<()> {
    uring::probe()
}
