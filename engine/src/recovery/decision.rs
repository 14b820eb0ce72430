//! Recovery's decision table: what replay does about each finding, in each
//! [`RecoveryMode`]. Replay finds; this table decides; nothing else in
//! recovery matches the mode.
//!
//! | finding                  | `TolerateTornTail` | `FailOnAnyDamage` | `KeepPrefix` | `SkipDamaged` |
//! |--------------------------|--------------------|-------------------|--------------|---------------|
//! | `TornTail`               | cut                | fail (→ `TolerateTornTail`) | cut  | cut           |
//! | `SegmentUnreadable`      | fail               | fail              | keep prefix  | skip          |
//! | `CommitsMissing`         | fail               | fail              | keep prefix  | skip          |
//! | `CommitRepeated`         | fail               | fail              | keep prefix  | end the chain |
//! | `CommitAfterChainEnd`    | fail               | fail              | keep prefix  | skip          |
//! | `EndLost`                | fail (→ `KeepPrefix`) | fail (→ `KeepPrefix`) | report | report      |
//! | `EntryContradicts`       | fail               | fail              | fail         | fail          |
//! | `SequenceExhausted`      | fail               | fail              | fail         | fail          |
//!
//! (→ M): the error names mode M as the way to open anyway. The table above
//! is [`TABLE`], with one test per row.

use crate::config::RecoveryMode;

/// What replay found where the recovery mode decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finding {
    /// The chain of commits ends in a damaged commit or in stray bytes, and
    /// no commit follows except those that were in flight with it.
    TornTail,
    /// A whole segment cannot be replayed: numbers missing before it, a
    /// size no segment has, or a header that is damaged, foreign or longer
    /// than the file.
    SegmentUnreadable,
    /// A whole, valid commit header carries a later sequence number than
    /// the next one: the commits between are missing.
    CommitsMissing,
    /// A whole, valid commit header carries an earlier sequence number than
    /// the next one.
    CommitRepeated,
    /// A commit follows the chain end that was not in flight with it: the
    /// end is damage, not a torn tail.
    CommitAfterChainEnd,
    /// The shard manifest records acknowledged commits (or a segment) that
    /// the log no longer holds, or neither of its copies is whole.
    EndLost,
    /// A whole commit holds an entry the channel rules refuse (before any
    /// skip, or one no skip explains).
    EntryContradicts,
    /// A segment or commit sequence number at its maximum.
    SequenceExhausted,
}

/// What replay does about a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Refuse the open with `Error::Corruption`, naming the mode that would
    /// open anyway, if one would.
    Fail {
        /// The mode to suggest.
        remedy: Option<RecoveryMode>,
    },
    /// Cut the torn tail back to the last whole commit and zero what it
    /// left (a read-only examination only reports it).
    Cut,
    /// Stop replay here; move every byte after it aside (`KeepPrefix`).
    KeepPrefix,
    /// Report it as skipped and replay on after it.
    Skip,
    /// Treat it as a damaged end of the chain (a torn tail, unless a commit
    /// follows).
    EndChain,
    /// Report it and open with what the log holds.
    Report,
}

use Decision::*;
use Finding::*;
use RecoveryMode::{FailOnAnyDamage, KeepPrefix as Keep, SkipDamaged, TolerateTornTail};

const FAIL: Decision = Fail { remedy: None };

/// Every finding × mode, exactly once.
pub const TABLE: &[(Finding, RecoveryMode, Decision)] = &[
    (TornTail, TolerateTornTail, Cut),
    (
        TornTail,
        FailOnAnyDamage,
        Fail {
            remedy: Some(TolerateTornTail),
        },
    ),
    (TornTail, Keep, Cut),
    (TornTail, SkipDamaged, Cut),
    (SegmentUnreadable, TolerateTornTail, FAIL),
    (SegmentUnreadable, FailOnAnyDamage, FAIL),
    (SegmentUnreadable, Keep, KeepPrefix),
    (SegmentUnreadable, SkipDamaged, Skip),
    (CommitsMissing, TolerateTornTail, FAIL),
    (CommitsMissing, FailOnAnyDamage, FAIL),
    (CommitsMissing, Keep, KeepPrefix),
    (CommitsMissing, SkipDamaged, Skip),
    (CommitRepeated, TolerateTornTail, FAIL),
    (CommitRepeated, FailOnAnyDamage, FAIL),
    (CommitRepeated, Keep, KeepPrefix),
    (CommitRepeated, SkipDamaged, EndChain),
    (CommitAfterChainEnd, TolerateTornTail, FAIL),
    (CommitAfterChainEnd, FailOnAnyDamage, FAIL),
    (CommitAfterChainEnd, Keep, KeepPrefix),
    (CommitAfterChainEnd, SkipDamaged, Skip),
    (EndLost, TolerateTornTail, Fail { remedy: Some(Keep) }),
    (EndLost, FailOnAnyDamage, Fail { remedy: Some(Keep) }),
    (EndLost, Keep, Report),
    (EndLost, SkipDamaged, Report),
    (EntryContradicts, TolerateTornTail, FAIL),
    (EntryContradicts, FailOnAnyDamage, FAIL),
    (EntryContradicts, Keep, FAIL),
    (EntryContradicts, SkipDamaged, FAIL),
    (SequenceExhausted, TolerateTornTail, FAIL),
    (SequenceExhausted, FailOnAnyDamage, FAIL),
    (SequenceExhausted, Keep, FAIL),
    (SequenceExhausted, SkipDamaged, FAIL),
];

/// The table's decision for `finding` in `mode`.
pub fn decide(finding: Finding, mode: RecoveryMode) -> Decision {
    TABLE
        .iter()
        .find(|(f, m, _)| *f == finding && *m == mode)
        .map(|(_, _, d)| *d)
        .unwrap_or_else(|| panic!("no decision for {finding:?} in {mode:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINDINGS: [Finding; 8] = [
        TornTail,
        SegmentUnreadable,
        CommitsMissing,
        CommitRepeated,
        CommitAfterChainEnd,
        EndLost,
        EntryContradicts,
        SequenceExhausted,
    ];
    const MODES: [RecoveryMode; 4] = [TolerateTornTail, FailOnAnyDamage, Keep, SkipDamaged];

    /// One row: the decisions for `TolerateTornTail`, `FailOnAnyDamage`,
    /// `KeepPrefix`, `SkipDamaged`.
    fn row(finding: Finding, want: [Decision; 4]) {
        for (mode, want) in MODES.into_iter().zip(want) {
            assert_eq!(decide(finding, mode), want, "{finding:?} in {mode:?}");
        }
    }

    #[test]
    fn every_finding_has_one_decision_per_mode() {
        assert_eq!(TABLE.len(), FINDINGS.len() * MODES.len());
        for f in FINDINGS {
            for m in MODES {
                let n = TABLE.iter().filter(|r| r.0 == f && r.1 == m).count();
                assert_eq!(n, 1, "{f:?} in {m:?} has {n} rows");
            }
        }
    }

    #[test]
    fn a_torn_tail_is_cut_unless_no_damage_is_tolerated() {
        let fail = Fail {
            remedy: Some(TolerateTornTail),
        };
        row(TornTail, [Cut, fail, Cut, Cut]);
    }

    #[test]
    fn an_unreadable_segment_is_kept_before_or_skipped() {
        row(SegmentUnreadable, [FAIL, FAIL, KeepPrefix, Skip]);
    }

    #[test]
    fn missing_commits_are_kept_before_or_skipped() {
        row(CommitsMissing, [FAIL, FAIL, KeepPrefix, Skip]);
    }

    #[test]
    fn a_repeated_commit_ends_a_skipping_chain() {
        row(CommitRepeated, [FAIL, FAIL, KeepPrefix, EndChain]);
    }

    #[test]
    fn a_commit_after_the_chain_end_is_kept_before_or_skipped() {
        row(CommitAfterChainEnd, [FAIL, FAIL, KeepPrefix, Skip]);
    }

    #[test]
    fn a_lost_end_fails_naming_keep_prefix_or_is_reported() {
        let fail = Fail { remedy: Some(Keep) };
        row(EndLost, [fail, fail, Report, Report]);
    }

    #[test]
    fn a_contradicting_entry_fails_in_every_mode() {
        row(EntryContradicts, [FAIL; 4]);
    }

    #[test]
    fn an_exhausted_sequence_fails_in_every_mode() {
        row(SequenceExhausted, [FAIL; 4]);
    }
}
