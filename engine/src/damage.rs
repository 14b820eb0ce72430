//! Damage in a WAL: the recovery modes that decide what to do about it,
//! and the kinds of damage recovery finds, typed — each names what was
//! found, and its `Display` is the description tools and errors show.

use crate::buffer::channels::Contradiction;
use crate::types::{CommitSeq, SegmentSeq};
use crate::wal::format::DecodeError;

/// How `Engine::open` treats damage found in the WAL during recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Cut a torn tail (an incomplete last commit); refuse to open on any
    /// other damage, naming the shard, segment and byte. The default.
    #[default]
    TolerateTornTail,
    /// Refuse to open on any damage, a torn tail included: for a store that
    /// was closed cleanly and must come back exactly. Nothing is cut.
    FailOnAnyDamage,
    /// Replay up to the first damage and keep that prefix: every commit
    /// before it comes back, nothing after it does. The bytes after it are
    /// not destroyed: the damaged segment is copied whole, and every later
    /// segment moved, into `shard-NNN/damaged/<time>/`; then the damaged
    /// segment is zeroed from the damage on and writing resumes there.
    /// A torn tail is cut as in `TolerateTornTail`. Each stop is reported by
    /// `Engine::recovery_damage`. For a service that prefers losing a suffix
    /// to not starting.
    KeepPrefix,
    /// Pass over damaged commits and replay every whole commit after them;
    /// report each damaged region through `Engine::recovery_damage`. A commit
    /// is skipped whole (its checksums are per entry, but one bad entry makes
    /// the lengths after it untrustworthy, and a commit is all or nothing).
    /// The offsets of the records lost leave a gap in their channel: reads
    /// leave them out. Only a later record reveals a gap: when the lost
    /// records were a channel's last, its next appends take their offsets
    /// again. A channel whose registration was lost cannot be named: its
    /// records are counted as lost, and its name can be registered anew (a
    /// skipped drop followed by a re-registration is refused as a name
    /// registered twice). Gaps are accepted only after something was
    /// skipped; before that, an entry that contradicts the log is refused. Nothing on disk is changed except a torn tail, which is cut as
    /// in `TolerateTornTail`; a later open in another mode finds the same
    /// damage again.
    SkipDamaged,
}

/// A kind of damage, where [`crate::recovery::Damage`] or
/// `Error::Corruption` says it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DamageKind {
    /// Segment numbers `from..=to` are missing before this segment.
    #[error("segments {}..{} are missing before it", .from.0, .to.0 + 1)]
    SegmentsMissing {
        /// The first missing number.
        from: SegmentSeq,
        /// The last missing number.
        to: SegmentSeq,
    },
    /// The segment file is larger than any segment corewal writes.
    #[error("segment file of {bytes} bytes is larger than any corewal writes")]
    SegmentTooLarge {
        /// Its size.
        bytes: u64,
    },
    /// The segment header does not decode.
    #[error("segment header: {0}")]
    SegmentHeader(DecodeError),
    /// The segment header names another shard, store or file.
    #[error("segment header belongs to another shard, store or file name")]
    SegmentForeign,
    /// The segment file is shorter than its header says.
    #[error("segment file is {bytes} bytes, its header says {header_bytes}")]
    SegmentShort {
        /// The file's size.
        bytes: u64,
        /// The size its header records.
        header_bytes: u64,
    },
    /// A segment's sequence number is at its maximum.
    #[error("segment sequence number at its maximum")]
    SegmentSeqExhausted,
    /// A commit's header or one of its entries does not decode.
    #[error("{0}")]
    Commit(DecodeError),
    /// A whole commit header written for another place or file.
    #[error("commit header from another place or file")]
    CommitMisplaced,
    /// A commit runs past the end of its segment.
    #[error("commit runs past the end of the segment")]
    CommitPastSegment,
    /// A whole, valid commit header out of sequence.
    #[error("commit {} found where commit {} was next", .found.0, .expected.0)]
    CommitOutOfSequence {
        /// The sequence number found.
        found: CommitSeq,
        /// The one that was next.
        expected: CommitSeq,
    },
    /// A commit's sequence number is at its maximum.
    #[error("commit sequence number at its maximum")]
    CommitSeqExhausted,
    /// An entry the channel rules refuse.
    #[error("{0}")]
    Entry(Contradiction),
    /// A registration whose name is not UTF-8.
    #[error("channel name is not UTF-8")]
    NameNotUtf8,
    /// Non-zero bytes after the last whole commit.
    #[error("bytes after the last whole commit")]
    BytesAfterLastCommit,
    /// The chain of commits ended (in `end`, or in zeros), yet a later
    /// commit follows: not a torn tail.
    #[error(
        "{} where commit {} was next, yet commit {} follows in segment {} at byte {position}",
        chain_end(.end), .expected.0, .found.0, .segment.0
    )]
    CommitAfterChainEnd {
        /// What ended the chain; `None`: zeros.
        end: Option<Box<DamageKind>>,
        /// The commit that was next.
        expected: CommitSeq,
        /// The commit that follows.
        found: CommitSeq,
        /// Where it is: its segment…
        segment: SegmentSeq,
        /// …and byte.
        position: u64,
    },
    /// Damage found in segment `segment`, reported where replay stopped
    /// before it (`KeepPrefix`).
    #[error("segment {}: {kind}", .segment.0)]
    InSegment {
        /// The segment.
        segment: SegmentSeq,
        /// What was found there.
        kind: Box<DamageKind>,
    },
    /// The shard manifest records a newer segment than the newest there is.
    #[error(
        "the shard manifest records segment {} as written to, yet the newest segment is {}: \
         acknowledged commits through {acknowledged_through} are missing from the end of the \
         log (it ends at commit {replayed_through})",
        .active.0, .newest.0
    )]
    NewestSegmentMissing {
        /// The segment the manifest records as written to.
        active: SegmentSeq,
        /// The newest segment found.
        newest: SegmentSeq,
        /// Commits through this one had been acknowledged.
        acknowledged_through: u64,
        /// The log holds commits through this one.
        replayed_through: u64,
    },
    /// The log ends before the commits the shard manifest records as
    /// durable.
    #[error(
        "the log ends at commit {replayed_through}, yet the shard manifest records commits \
         through {acknowledged_through} as durable: acknowledged commits are missing from the \
         end of the log (a lost, older or damaged copy of segment {})",
        .newest.0
    )]
    LogEndsEarly {
        /// The log holds commits through this one.
        replayed_through: u64,
        /// Commits through this one had been acknowledged.
        acknowledged_through: u64,
        /// The newest segment.
        newest: SegmentSeq,
    },
    /// Neither copy of the shard manifest is whole (why, per copy).
    #[error("{0}")]
    ManifestDamaged(String),
    /// A torn tail, refused by `RecoveryMode::FailOnAnyDamage`.
    #[error("torn tail ({0})")]
    TornTail(Box<DamageKind>),
}

/// What ended a chain of commits, for [`DamageKind::CommitAfterChainEnd`].
fn chain_end(end: &Option<Box<DamageKind>>) -> String {
    end.as_ref()
        .map_or_else(|| "zeros".to_string(), |k| k.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_reads_as_a_sentence() {
        let after = |end| DamageKind::CommitAfterChainEnd {
            end,
            expected: CommitSeq(5),
            found: CommitSeq(9),
            segment: SegmentSeq(2),
            position: 8192,
        };
        assert_eq!(
            after(None).to_string(),
            "zeros where commit 5 was next, yet commit 9 follows in segment 2 at byte 8192"
        );
        assert_eq!(
            after(Some(Box::new(DamageKind::CommitMisplaced))).to_string(),
            "commit header from another place or file where commit 5 was next, yet commit 9 \
             follows in segment 2 at byte 8192"
        );
        let missing = DamageKind::SegmentsMissing {
            from: SegmentSeq(3),
            to: SegmentSeq(4),
        };
        assert_eq!(missing.to_string(), "segments 3..5 are missing before it");
        let newest = DamageKind::NewestSegmentMissing {
            active: SegmentSeq(2),
            newest: SegmentSeq(1),
            acknowledged_through: 59,
            replayed_through: 51,
        };
        assert_eq!(
            newest.to_string(),
            "the shard manifest records segment 2 as written to, yet the newest segment is 1: \
             acknowledged commits through 59 are missing from the end of the log (it ends at \
             commit 51)"
        );
        let torn = DamageKind::TornTail(Box::new(DamageKind::BytesAfterLastCommit));
        assert_eq!(
            torn.to_string(),
            "torn tail (bytes after the last whole commit)"
        );
    }
}
