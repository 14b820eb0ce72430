//! The filesystem part of the disk boundary: which filesystem the engine's
//! files are on, so that the operations of `io::file` that change a
//! directory's names (create, rename, remove, directory sync) or write a
//! file outside the ring (segment headers and zero-fill, the shard manifest,
//! `corewal.meta`) can be watched.
//!
//! [`Fs::Real`] only makes the system calls. Under the test feature,
//! `Fs::Simulated` (feature `testing`) makes the same calls and tells the simulated disk what
//! is not yet durable — a name until its directory is synced, a write until
//! its file is synced — so that a power cut takes those back like any ring
//! write, and a planned fault can land on them (`io/sim.rs`).

use crate::io::backend::Backend;
#[cfg(feature = "testing")]
use crate::io::sim::SimDisk;

/// Which filesystem the engine's files live on.
#[derive(Debug, Clone, Default)]
pub enum Fs {
    /// The operating system's.
    #[default]
    Real,
    /// The operating system's, watched by a simulated disk.
    #[cfg(feature = "testing")]
    Simulated(SimDisk),
}

impl Fs {
    /// The filesystem `backend` writes to.
    pub fn of(backend: &Backend) -> Fs {
        match backend {
            #[cfg(feature = "testing")]
            Backend::Simulated(disk) => Fs::Simulated(disk.clone()),
            #[cfg(feature = "testing")]
            Backend::FaultInjection { over, .. } => Fs::of(over),
            _ => Fs::Real,
        }
    }

    /// Whether a simulated disk watches it (work it would do on a thread
    /// of its own is then done in order, so that a seed replays the same).
    pub fn is_simulated(&self) -> bool {
        !matches!(self, Fs::Real)
    }
}

/// A filesystem operation, as the simulated disk counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsOp {
    /// A new file's name.
    Create,
    /// A name changed.
    Rename,
    /// A name removed.
    Remove,
    /// A directory synced.
    SyncDir,
    /// A write outside the ring.
    Write,
    /// A file synced outside the ring.
    SyncFile,
}

impl FsOp {
    /// Every operation, in the order of [`FsOp::index`].
    pub const ALL: [FsOp; 6] = [
        FsOp::Create,
        FsOp::Rename,
        FsOp::Remove,
        FsOp::SyncDir,
        FsOp::Write,
        FsOp::SyncFile,
    ];

    /// Its place in [`FsOp::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            FsOp::Create => "create",
            FsOp::Rename => "rename",
            FsOp::Remove => "remove",
            FsOp::SyncDir => "directory sync",
            FsOp::Write => "write",
            FsOp::SyncFile => "file sync",
        }
    }
}

/// What a planned fault does to a filesystem operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsFault {
    /// Nothing: the operation goes ahead.
    None,
    /// The power goes during it: it happens, but nothing makes it durable,
    /// and it and everything after it fail.
    PowerCut,
    /// A write writes only its first half and fails.
    ShortWrite,
}
