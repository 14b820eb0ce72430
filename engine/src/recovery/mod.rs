//! Replay of one shard's WAL, on the shard's own thread.
//!
//! What replay finds where the chain of valid commits ends (legend: *chain
//! end* = the first block that is not the next valid commit; *later commit*
//! = a block after the chain end whose header decodes with this segment's
//! identity and a sequence number not yet replayed). What it then does, per
//! recovery mode, is the decision table in [`decision`]; the findings are
//! its rows.
//!
//! | at the chain end                        | later commit? | finding                          |
//! |-----------------------------------------|---------------|----------------------------------|
//! | zeros (never written)                   | no            | none: end of this segment's chain |
//! | a commit that fails a checksum or bound | no            | `TornTail`                       |
//! | zeros or a damaged commit               | only commits in flight with it (sequence within the window their header records) | `TornTail` |
//! | anything                                | yes, others   | `CommitAfterChainEnd`            |
//! | a whole, valid header ahead of sequence | —             | `CommitsMissing`                 |
//! | a whole, valid header behind sequence   | —             | `CommitRepeated`                 |
//! | a gap in segment file numbers, a damaged or foreign segment header | — | `SegmentUnreadable` |
//! | the log ends before the shard manifest's `durable_through`, or its newest segment is older than the manifest's `active_segment` | — | `EndLost` |
//! | neither manifest slot is whole          | —             | `EndLost`                        |
//! | an entry the channel rules refuse       | —             | `EntryContradicts`               |
//!
//! *Later commit* also looks into every later segment. Writing resumes in the
//! last segment (which may be an empty spare created ahead of use).
//!
//! A torn tail can only be among the last `in_flight_max` commits written,
//! all in one segment (a shard changes segments only with nothing in flight),
//! and none of them was acknowledged if the first is missing, because
//! acknowledgements go strictly in order. Acknowledged last commits damaged
//! at rest are told from torn ones by the shard manifest
//! (`wal/manifest.rs`) when it covers them — after a clean close, and for
//! everything before the newest segment's first commit; commits written
//! since its last generation before an unclean stop are not, and are cut
//! like a torn tail (`docs/format.md`, "Residual window").

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::buffer::channels::ChannelTable;
use crate::config::RecoveryMode;
pub use crate::damage::DamageKind;
use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;
use crate::io::ring::Ring;
use crate::metrics::ShardMetrics;
use crate::types::{CommitSeq, SegmentSeq, ShardId};
use crate::wal::manifest::{self, ManifestState};
use crate::wal::reader::READ_CHUNK_BYTES;
use crate::wal::segment::{list_segments, LogSegment, Segment};
use crate::wal::snapshot::CommitTie;

pub mod decision;
mod from_snapshot;
use from_snapshot::FromSnapshot;
mod keep_prefix;
mod replay;
mod scan;

use decision::{decide, Decision, Finding};
use keep_prefix::keep_prefix;
use replay::{Flow, Replay};

/// Where the shard goes on writing.
pub struct Tail {
    /// The last segment, open for writing.
    pub segment: Segment,
    /// The first free block in it.
    pub position: u64,
    /// The segment's block size (the engine's may differ after a config or
    /// filesystem change; the shard then starts a new segment).
    pub block: usize,
}

/// A replayed shard.
pub struct Recovered {
    /// Channels and their records.
    pub table: ChannelTable,
    /// Sequence number of the next commit.
    pub next_commit_seq: CommitSeq,
    /// The segment to continue in, if any segment exists.
    pub tail: Option<Tail>,
    /// Sequence number for the next new segment.
    pub next_segment_seq: SegmentSeq,
    /// Damage found and what was done about it (torn tails included).
    pub damage: Vec<Damage>,
    /// What a torn tail left, to be zeroed before writing resumes
    /// ([`apply_cuts`]). Not done during recovery, so that an open that
    /// fails (another shard's damage, say) changes nothing and the next open
    /// finds and reports the same torn tail.
    pub cuts: Vec<Cut>,
    /// What the shard's manifest held.
    pub manifest: ManifestState,
    /// The last replayed commit: its segment and every segment after it
    /// may hold writes a crashed process left unsynced; an index snapshot
    /// is tied to it.
    pub last_commit: Option<CommitTie>,
    /// The segments of the log, from its start, as replay found them.
    pub log: Vec<LogSegment>,
    /// Segment files before the log start: reclaimed, left by a crash
    /// before their removal or recycling. Never read.
    pub leftovers: Vec<(SegmentSeq, std::path::PathBuf)>,
}

/// A byte range of a segment file to zero before writing resumes.
#[derive(Debug, Clone)]
pub struct Cut {
    /// The segment file.
    pub path: std::path::PathBuf,
    /// Its block size.
    pub block: usize,
    /// First byte to zero.
    pub from: u64,
    /// One past the last byte to zero.
    pub to: u64,
}

/// Zeroes and syncs every range in `cuts`, so that no byte a torn write left
/// can be read as part of a later commit's place.
pub fn apply_cuts(fs: &Fs, cuts: &[Cut], access: Access) -> Result<()> {
    for c in cuts {
        let f = DiskFile::open_rw(fs, &c.path, access)?;
        let zeros = AlignedBuf::new(READ_CHUNK_BYTES, c.block);
        f.zero_fill(&zeros, c.from, c.to)?;
    }
    Ok(())
}

/// Damage recovery found and went past, in WAL order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The shard.
    pub shard: ShardId,
    /// Segment where the damage starts.
    pub segment: SegmentSeq,
    /// Byte in that segment.
    pub position: u64,
    /// What was found there.
    pub kind: DamageKind,
    /// What recovery did about it.
    pub action: DamageAction,
}

/// What recovery did about damage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DamageAction {
    /// A torn tail (an incomplete last commit, never acknowledged unless
    /// damaged at rest): cut back to the last whole commit and zeroed.
    TornTailCut,
    /// A torn tail found by a read-only examination; the next open cuts it.
    TornTailFound,
    /// `RecoveryMode::SkipDamaged`: passed over. Replay resumed at
    /// `(segment, byte)`, or nowhere if nothing whole came after it.
    Skipped {
        /// Where replay resumed.
        resumed_at: Option<(SegmentSeq, u64)>,
        /// Records of known channels lost with it (their offsets are the
        /// gaps); records of channels whose registration was lost are counted
        /// by the first commit that names them.
        records_lost: u64,
    },
    /// The shard manifest records acknowledged commits (or a segment) that
    /// the log no longer holds: its end was lost, restored from an older
    /// copy, or damaged at rest. Refused by `TolerateTornTail` and
    /// `FailOnAnyDamage`; `KeepPrefix` and `SkipDamaged` go on with what is
    /// left, and may assign the lost commits' offsets again.
    EndLost {
        /// Commits through this one had been acknowledged.
        acknowledged_through: u64,
        /// The log holds commits through this one.
        replayed_through: u64,
    },
    /// Neither copy of the shard manifest is whole: whether the end of the
    /// log is complete cannot be told. Refused like `EndLost`.
    ManifestDamaged,
    /// `RecoveryMode::KeepPrefix`: replay stopped here; the damaged segment
    /// was copied and every later segment moved into `moved_to`.
    PrefixKept {
        /// The directory now holding the bytes after the damage.
        moved_to: std::path::PathBuf,
    },
}

/// What recovery needs to know.
pub struct RecoverContext<'a> {
    /// The filesystem of the shard's files.
    pub fs: &'a Fs,
    /// The shard's directory.
    pub shard_dir: &'a Path,
    /// The shard.
    pub shard: ShardId,
    /// The store's identity.
    pub store_id: u64,
    /// Direct or buffered reads.
    pub access: Access,
    /// Progress counters.
    pub metrics: &'a ShardMetrics,
    /// What to do about damage.
    pub mode: RecoveryMode,
    /// Examine only (`corewal inspect`, `corewal verify`): change nothing
    /// on disk, report a torn tail as found rather than cut, and open no
    /// segment for writing. Requires a mode that changes nothing but a
    /// torn tail (`TolerateTornTail`, `FailOnAnyDamage`, `SkipDamaged`).
    pub read_only: bool,
    /// Bytes of payloads replay keeps in memory (the newest records'; see
    /// `buffer/cache.rs`). Examining tools keep none.
    pub cache_budget: u64,
    /// Whether an index snapshot may stand in for the replay (only in the
    /// default mode, never when examining).
    pub snapshot: bool,
    /// Set when the engine closes: replay stops at the next read and
    /// recovery returns `Error::Closed`, having changed nothing.
    pub stop: Option<&'a AtomicBool>,
}

/// A place in the shard's WAL: where the chain of commits ends or where
/// damage starts.
#[derive(Clone)]
pub(super) struct Place {
    seq: SegmentSeq,
    path: std::path::PathBuf,
    position: u64,
    block: usize,
    segment_bytes: u64,
}

/// A damaged chain end that is the torn tail unless a commit follows it.
pub(super) struct Torn {
    at: Place,
    nonzero_end: u64,
    kind: DamageKind,
}

/// Replays every segment of the shard's log in order, from the log start
/// the manifest records (or the oldest segment), reading through `io`.
pub fn recover_shard(ctx: &RecoverContext<'_>, io: &mut Ring) -> Result<Recovered> {
    assert!(
        !(ctx.read_only && ctx.mode == RecoveryMode::KeepPrefix),
        "KeepPrefix moves segments: not a read-only mode"
    );
    let mut segments = list_segments(ctx.shard_dir, (!ctx.read_only).then_some(ctx.fs))?;
    let manifest = manifest::read(ctx.shard_dir, ctx.shard, ctx.store_id)?;
    let start = match &manifest {
        ManifestState::Found(r) => r.log_start,
        _ => None,
    };
    // Segments before the log start were reclaimed: a crash left them
    // before their removal or recycling finished. Replay never reads them.
    let first_kept = start.map_or(0, |s| segments.partition_point(|(seq, _)| *seq < s.segment));
    let leftovers: Vec<_> = segments.drain(..first_kept).collect();
    // Each segment file's size, looked at once.
    let sizes: Vec<u64> = segments
        .iter()
        .map(|(_, path)| file::size_of(path).unwrap_or(0))
        .collect();
    let m = ctx.metrics;
    m.recovery_bytes_total
        .store(sizes.iter().sum(), Ordering::Relaxed);
    let reclaimed = match &manifest {
        ManifestState::Found(r) => r.reclaimed_bytes,
        _ => 0,
    };
    // Files a crash left before the log start were counted when the log
    // start moved past them.
    m.recovery_bytes_skipped.store(reclaimed, Ordering::Relaxed);
    let use_snapshot = ctx.snapshot && !ctx.read_only;
    let bytes = if use_snapshot {
        from_snapshot::read(ctx)
    } else {
        None
    };
    let snapshot = match bytes {
        Some(bytes) => from_snapshot::restore(ctx, &bytes, &manifest, &segments)?,
        None => FromSnapshot::Ignored,
    };
    let (mut replay, first) = match snapshot {
        FromSnapshot::Whole(mut recovered) => {
            m.snapshots_used.fetch_add(1, Ordering::Relaxed);
            recovered.leftovers = leftovers;
            return Ok(*recovered);
        }
        FromSnapshot::Resume(resume) => {
            m.snapshots_used.fetch_add(1, Ordering::Relaxed);
            let first = resume.first;
            (Replay::resume(ctx, &segments[first..], *resume), first)
        }
        FromSnapshot::Ignored => {
            if use_snapshot && from_snapshot::exists(ctx) {
                m.snapshots_ignored.fetch_add(1, Ordering::Relaxed);
                from_snapshot::discard(ctx);
            }
            (Replay::new(ctx, &segments, start), 0)
        }
    };
    replay.bound_scans(&manifest);
    replay.cache_newest(&manifest, &sizes[first..]);
    for index in 0..segments.len() - first {
        if replay.segment(io, index)? == Flow::Stop {
            break;
        }
    }
    let mut recovered = replay.finish(manifest)?;
    // A log whose segments are all gone (a lenient mode went on without
    // them) starts its next segment after the log start and after every
    // file a crash left before it, never on one of their numbers.
    let after_files = leftovers.last().map_or(0, |(s, _)| s.0 + 1);
    let after_start = start.map_or(0, |s| s.segment.0);
    recovered.next_segment_seq = SegmentSeq(
        recovered
            .next_segment_seq
            .0
            .max(after_files)
            .max(after_start),
    );
    recovered.leftovers = leftovers;
    Ok(recovered)
}

/// A torn tail, as the mode decides: refused, or reported and (unless
/// examining read-only) listed in `cuts` with the stray bytes of `junk`,
/// to be zeroed before writing resumes (see `Recovered::cuts`).
pub(super) fn settle_torn_tail(
    ctx: &RecoverContext<'_>,
    t: Torn,
    junk: &mut Vec<Cut>,
    cuts: &mut Vec<Cut>,
) -> Result<Damage> {
    match decide(Finding::TornTail, ctx.mode) {
        Decision::Cut => {}
        d => {
            let kind = DamageKind::TornTail(Box::new(t.kind));
            return Err(refuse(ctx, d, t.at.seq, t.at.position, kind));
        }
    }
    if !ctx.read_only {
        cuts.push(Cut {
            path: t.at.path.clone(),
            block: t.at.block,
            from: t.at.position,
            to: t.nonzero_end,
        });
        cuts.append(junk);
    }
    Ok(Damage {
        shard: ctx.shard,
        segment: t.at.seq,
        position: t.at.position,
        kind: t.kind,
        action: if ctx.read_only {
            DamageAction::TornTailFound
        } else {
            DamageAction::TornTailCut
        },
    })
}

/// The error for a finding the table refuses (`decision`, a `Fail`).
pub(super) fn refuse(
    ctx: &RecoverContext<'_>,
    decision: Decision,
    segment: SegmentSeq,
    position: u64,
    kind: DamageKind,
) -> Error {
    let Decision::Fail { remedy } = decision else {
        unreachable!("{decision:?} for {kind} is not a refusal");
    };
    Error::Corruption {
        shard: ctx.shard,
        segment,
        position,
        kind,
        remedy,
    }
}
