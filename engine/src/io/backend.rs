//! Which I/O backend the shards use: the choice `Config::backend` makes,
//! owned by the layer that implements it.

/// Which I/O backend the shards use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Backend {
    /// Each shard submits its writes and data syncs through its own `io_uring`,
    /// one `io_uring_enter` per commit. The default.
    #[default]
    IoUring,
    /// Portable fallback: plain `pwritev2(RWF_DSYNC)` (or `pwrite` +
    /// `fdatasync`) through the page cache on the shard thread, for kernels
    /// or sandboxes where `io_uring` is off and filesystems that refuse
    /// `O_DIRECT`. Same format, same guarantees, more syscalls and no overlap
    /// of I/O with the assembly of the next commit.
    Portable,
    /// Fault injection, for tests (feature `testing`): the backend `over`,
    /// except that the planned operation fails as `plan` says instead of
    /// reaching the disk. Never use it for data you want to keep.
    #[cfg(feature = "testing")]
    FaultInjection {
        /// The backend whose operations are counted and failed.
        over: Box<Backend>,
        /// Which operation fails, and how.
        plan: crate::io::faulty::FaultPlan,
    },
    /// The simulated disk, for tests (feature `testing`): the portable
    /// backend's calls, with a device model that tracks what is durable,
    /// cuts the power, and fails, shortens, misdirects or corrupts planned
    /// operations (see [`crate::io::sim`]). Never use it for data you want
    /// to keep.
    #[cfg(feature = "testing")]
    Simulated(crate::io::sim::SimDisk),
}

impl Backend {
    /// Whether the backend writes with `O_DIRECT` through `io_uring`.
    pub fn uses_io_uring(&self) -> bool {
        match self {
            Backend::IoUring => true,
            Backend::Portable => false,
            #[cfg(feature = "testing")]
            Backend::FaultInjection { over, .. } => over.uses_io_uring(),
            #[cfg(feature = "testing")]
            Backend::Simulated(_) => false,
        }
    }

    /// `over` with the fault `plan` injected (feature `testing`).
    #[cfg(feature = "testing")]
    pub fn faulty(over: Backend, plan: crate::io::faulty::FaultPlan) -> Backend {
        Backend::FaultInjection {
            over: Box::new(over),
            plan,
        }
    }
}
