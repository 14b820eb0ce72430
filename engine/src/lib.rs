//! corewal-engine: the machinery behind the `corewal` crate — shard threads
//! and pinning, the `io_uring` and portable I/O backends, the segment format,
//! group commit, buffer tables and recovery.
//!
//! Services embed the `corewal` crate; this crate's API is for it and for the
//! tools, and may change between releases. It is the only crate of the
//! workspace with `unsafe`, each block next to a `// SAFETY:` comment.
//!
//! ```no_run
//! use corewal_engine::{config::Config, runtime::Runtime};
//! let rt = Runtime::start(Config::new("/tmp/corewal-doc"))?;
//! rt.wait_ready()?;
//! # Ok::<(), corewal_engine::error::Error>(())
//! ```

pub mod buffer;
pub mod config;
pub mod cores;
pub mod damage;
pub mod error;
pub mod inspect;
pub mod io;
pub mod metrics;
pub mod probe;
pub mod recovery;
pub mod runtime;
pub mod shard;
pub mod store;
pub mod types;
pub mod wal;

pub use error::{Error, Result};

use wal::format::CHANNEL_NAME_BYTES_MAX;

/// Checks a channel name: 1 to 255 bytes of visible ASCII (`!` to `~`).
/// Names never become paths, so `/` and `.` are allowed.
///
/// # Errors
/// `Error::InvalidChannelName` saying why.
pub fn validate_channel_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > CHANNEL_NAME_BYTES_MAX {
        Some("is longer than 255 bytes")
    } else if !name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
        Some("holds a byte outside visible ASCII ('!' to '~'); spaces and control characters are not allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidChannelName {
            name: name.chars().take(64).collect(),
            reason,
        }),
    }
}
