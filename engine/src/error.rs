//! The one error type of corewal.
//!
//! Every variant carries structured context (operation, path, shard, segment,
//! position) instead of a formatted string, and its message says what the user
//! can do about it. `Error` is `Clone` because one failure (a failed data sync,
//! a shard whose recovery failed) is delivered to every caller waiting on it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::damage::{DamageKind, RecoveryMode};
use crate::types::{SegmentSeq, ShardId};

/// The result type of corewal.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in corewal.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{operation} failed{}: {source}", path_suffix(path))]
    Io {
        /// What corewal was doing, e.g. `"create segment"`.
        operation: &'static str,
        /// The file or directory involved, when there is one.
        path: Option<PathBuf>,
        /// The error the kernel returned.
        #[source]
        source: Arc<io::Error>,
    },

    /// A `Config` field is out of its limits.
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it and what is allowed.
        reason: String,
    },

    /// A channel name is empty, too long or holds a byte outside the allowed set.
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidChannelName {
        /// The name as given (lossily decoded, cut to 64 characters).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A record is larger than `Config::record_bytes_max`.
    #[error("record of {len} bytes exceeds record_bytes_max = {max}; raise Config::record_bytes_max or split the record")]
    RecordTooLarge {
        /// The record's length.
        len: usize,
        /// The configured limit.
        max: usize,
    },

    /// A batch does not fit in one commit.
    #[error("batch of {records} records / {bytes} encoded bytes does not fit in one commit (commit_bytes_max = {bytes_max}, records_per_commit_max = {records_max}); split the batch")]
    BatchTooLarge {
        /// Records in the batch.
        records: usize,
        /// Encoded bytes of the batch.
        bytes: usize,
        /// The configured commit size limit.
        bytes_max: usize,
        /// The configured records-per-commit limit.
        records_max: usize,
    },

    /// Another engine (in this or another process) holds the directory.
    #[error("directory {path} is in use by another corewal engine (lock held for {waited_ms} ms); close that engine first")]
    DirectoryLocked {
        /// The data directory.
        path: PathBuf,
        /// How long `open` retried before giving up.
        waited_ms: u64,
    },

    /// The directory was created with another shard count than the one requested.
    #[error("directory {path} holds {recorded} shards but Config::shards asks for {requested}; leave Config::shards unset (or set it to {recorded}) to open it — channels are routed by the recorded shard count")]
    ShardCountMismatch {
        /// The data directory.
        path: PathBuf,
        /// The shard count recorded in the directory.
        recorded: usize,
        /// The shard count in the `Config`.
        requested: usize,
    },

    /// `io_uring` cannot be used on this system.
    #[error("io_uring is unavailable ({source}); check kernel.io_uring_disabled and the container's seccomp profile, or set Config::backend = Backend::Portable")]
    IoUringUnavailable {
        /// The error from `io_uring_setup`.
        #[source]
        source: Arc<io::Error>,
    },

    /// The filesystem refuses `O_DIRECT`.
    #[error("the filesystem under {path} refuses O_DIRECT ({source}); put the directory on a local disk filesystem (ext4, xfs), or set Config::backend = Backend::Portable (buffered writes, each commit made durable by a data sync)")]
    DirectIoUnsupported {
        /// The file that could not be opened.
        path: PathBuf,
        /// The error from `open`.
        #[source]
        source: Arc<io::Error>,
    },

    /// A shard stopped acknowledging after an I/O error (fail-stop) or a failed recovery.
    #[error("shard {shard} has failed and acknowledges nothing more: {cause}; reopen the engine to recover what was acknowledged")]
    ShardFailed {
        /// The failed shard.
        shard: ShardId,
        /// The first error the shard met.
        cause: Arc<Error>,
    },

    /// The shard's next segment could not be created for lack of space
    /// (`ENOSPC` or `EDQUOT`). Retryable: nothing of the refused request was
    /// written or assigned an offset, the shard goes on, and the request
    /// succeeds once space is freed. Requests that fit the current segment
    /// are not affected.
    #[error("shard {shard} has no space for its next segment ({cause}); nothing of this request was written — free space and retry")]
    NoSpace {
        /// The shard.
        shard: ShardId,
        /// The error from creating the segment.
        cause: Arc<Error>,
    },

    /// The shard's segment files would pass `Config::wal_bytes_max` with a
    /// new segment, and no reclaimed one can be recycled: live records pin
    /// every segment (the cause of an [`Error::NoSpace`]).
    #[error("shard {shard}'s WAL holds {wal_bytes} bytes of segments and a new one would pass Config::wal_bytes_max = {wal_bytes_max}; every segment holds live records — checkpoint the channels that pin the oldest segments (Engine::wal_usage names them), or raise the limit")]
    WalFull {
        /// The shard.
        shard: ShardId,
        /// Bytes of its segment files.
        wal_bytes: u64,
        /// The limit.
        wal_bytes_max: u64,
    },

    /// The WAL holds damage that is not a torn tail.
    #[error("WAL damage in shard {shard}, segment {segment}, byte {position}: {kind}{}; run `corewal verify` on the directory", remedy_text(remedy))]
    Corruption {
        /// The shard whose WAL is damaged.
        shard: ShardId,
        /// The segment.
        segment: SegmentSeq,
        /// Byte position in the segment file.
        position: u64,
        /// What was found.
        kind: DamageKind,
        /// The recovery mode that would open the directory anyway, if one
        /// would (and what it does is the caller's to accept).
        remedy: Option<RecoveryMode>,
    },

    /// A file corewal wrote does not have the expected format.
    #[error("{path}: {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What does not match.
        what: String,
    },

    /// A checkpoint or truncation names an offset the channel's live records
    /// do not allow; nothing was changed.
    #[error("{operation}({offset}) on channel {channel:?} refused: {reason} (first offset {first}, next offset {next})")]
    OffsetOutOfRange {
        /// `"checkpoint"`, `"truncate_from"` or `"subscribe"`.
        operation: &'static str,
        /// The channel's name.
        channel: String,
        /// The offset given.
        offset: u64,
        /// The channel's first live offset (`Channel::first_offset`).
        first: u64,
        /// One past its last acknowledged record (`Channel::next_offset`).
        next: u64,
        /// Why.
        reason: &'static str,
    },

    /// The channel was dropped.
    #[error("channel {name:?} was dropped; register it again for a fresh channel")]
    ChannelDropped {
        /// The channel's name.
        name: String,
    },

    /// A subscription's channel was truncated below where the subscription
    /// stands: records it delivered are no longer the channel's. The
    /// subscription has ended.
    #[error("channel {channel:?} was truncated from offset {first_removed}, below the subscription's position {position}: records it delivered from there on are gone; subscribe again from the offset the service's state agrees on")]
    SubscriptionTruncated {
        /// The channel's name.
        channel: String,
        /// The offset the subscription would have delivered next.
        position: u64,
        /// The truncation's first removed offset.
        first_removed: u64,
    },

    /// The engine is closed.
    #[error("the engine is closed")]
    Closed,

    /// An internal invariant broke and the shard stopped.
    #[error("internal error: {what}; the shard stopped — reopen the engine (acknowledged data is on disk) and report this")]
    Internal {
        /// What broke (a panic on a shard thread carries its message).
        what: String,
    },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" on {}", p.display()),
        None => String::new(),
    }
}

impl Error {
    /// Wraps an `io::Error` with the operation and path it came from.
    pub fn io(operation: &'static str, path: Option<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            operation,
            path,
            source: Arc::new(source),
        }
    }

    /// The raw OS error code, when the error comes from a system call.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::ShardFailed { cause, .. } | Error::NoSpace { cause, .. } => cause.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the same request may succeed if retried later on the same
    /// engine (today: [`Error::NoSpace`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }

    /// Whether this is a full filesystem, an exhausted quota or a WAL at
    /// its space limit (`Error::WalFull`).
    pub fn is_no_space(&self) -> bool {
        match self {
            Error::WalFull { .. } => true,
            Error::NoSpace { cause, .. } => cause.is_no_space(),
            _ => matches!(self.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT)),
        }
    }
}

/// How a `Corruption` error names its way out.
fn remedy_text(remedy: &Option<RecoveryMode>) -> &'static str {
    match remedy {
        Some(RecoveryMode::TolerateTornTail) => {
            "; RecoveryMode::FailOnAnyDamage cuts nothing — open with \
             RecoveryMode::TolerateTornTail to cut it"
        }
        Some(RecoveryMode::KeepPrefix) => {
            "; open with RecoveryMode::KeepPrefix to go on with what is left"
        }
        Some(RecoveryMode::SkipDamaged) => {
            "; open with RecoveryMode::SkipDamaged to replay past it"
        }
        Some(RecoveryMode::FailOnAnyDamage) | None => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_is_send_sync_static_and_messages_say_what_to_do() {
        fn assert_traits<T: Send + Sync + 'static + std::error::Error>() {}
        assert_traits::<Error>();
        let e = Error::ShardCountMismatch {
            path: "/d".into(),
            recorded: 4,
            requested: 2,
        };
        assert!(e.to_string().contains("leave Config::shards unset"));
        let e = Error::io(
            "create segment",
            Some("/d/x".into()),
            io::Error::from_raw_os_error(28),
        );
        assert_eq!(e.raw_os_error(), Some(28));
        assert!(e.to_string().contains("create segment failed on /d/x"));
    }
}
