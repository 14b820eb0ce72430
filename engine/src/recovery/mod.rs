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
use std::sync::Arc;

use bytes::Bytes;

use crate::buffer::channels::{ChannelTable, Logged};
use crate::config::RecoveryMode;
pub use crate::damage::DamageKind;
use crate::error::{Error, Result};
use crate::io::buffer::{round_up, AlignedBuf};
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;
use crate::io::read_ahead::ReadAhead;
use crate::io::ring::Ring;
use crate::metrics::ShardMetrics;
use crate::types::{CommitSeq, SegmentSeq, ShardId};
use crate::wal::format::{
    decode_commit_header, decode_segment_header, DecodeError, Entry, EntryIter, EntryKind,
    SegmentHeader, COMMIT_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::wal::manifest::{self, ManifestState};
use crate::wal::segment::{list_segments, Segment};

pub mod decision;

use decision::{decide, Decision, Finding};

/// Bytes per read while replaying.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Reads a shard keeps in flight while replaying: the device works on the
/// next megabytes while the shard verifies and decodes the last ones.
const READS_IN_FLIGHT_MAX: usize = 8;
const _: () = assert!(READS_IN_FLIGHT_MAX <= crate::io::OPS_IN_FLIGHT_MAX);

/// Reads one segment file into the shard's replay buffer through its ring,
/// in `READ_CHUNK_BYTES` pieces with up to `READS_IN_FLIGHT_MAX` in flight,
/// and hands out the prefix that has arrived; gives the buffer back to
/// `home` when dropped.
struct SegmentReader<'a> {
    ahead: Option<ReadAhead<'a>>,
    home: &'a mut Option<AlignedBuf>,
    path: &'a Path,
    metrics: &'a ShardMetrics,
    stop: Option<&'a AtomicBool>,
}

impl<'a> SegmentReader<'a> {
    fn new(
        ring: &'a mut Ring,
        path: &'a Path,
        f: DiskFile,
        home: &'a mut Option<AlignedBuf>,
        size: usize,
        metrics: &'a ShardMetrics,
        stop: Option<&'a AtomicBool>,
    ) -> Self {
        let want = round_up(size, READ_CHUNK_BYTES).max(READ_CHUNK_BYTES);
        let buf = match home.take() {
            Some(b) if b.len() >= want => b,
            _ => AlignedBuf::new(want, 4096),
        };
        let ahead = ReadAhead::new(
            ring,
            Arc::new(f),
            size,
            buf,
            READ_CHUNK_BYTES,
            READS_IN_FLIGHT_MAX,
        );
        SegmentReader {
            ahead: Some(ahead),
            home,
            path,
            metrics,
            stop,
        }
    }

    fn ahead(&mut self) -> &mut ReadAhead<'a> {
        self.ahead.as_mut().expect("a reader is used until dropped")
    }

    /// Waits until the first `upto` bytes (at most the file) have arrived,
    /// keeping the reads after them in flight.
    ///
    /// `Error::Closed` when the engine closes meanwhile.
    fn ensure(&mut self, upto: usize) -> Result<()> {
        let stop = self.stop;
        let stopped = move || stop.is_some_and(|s| s.load(Ordering::Relaxed));
        let before = self.ahead().prefix();
        let read = self.ahead().ensure(upto, &stopped);
        let got = self.ahead().prefix() - before;
        self.metrics
            .recovery_bytes_read
            .fetch_add(got as u64, Ordering::Relaxed);
        read.map_err(|e| e.into_error(Some(self.path.to_path_buf())))?;
        if stopped() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// The bytes that have arrived.
    fn view(&self) -> &[u8] {
        self.ahead
            .as_ref()
            .expect("a reader is used until dropped")
            .arrived()
    }
}

impl Drop for SegmentReader<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.ahead.take() {
            *self.home = a.finish();
        }
    }
}

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
    /// The segment holding the last replayed commit: it and every segment
    /// after it may hold writes a crashed process left unsynced.
    pub last_commit_segment: Option<SegmentSeq>,
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
    /// Set when the engine closes: replay stops at the next read and
    /// recovery returns `Error::Closed`, having changed nothing.
    pub stop: Option<&'a AtomicBool>,
}

/// A place in the shard's WAL: where the chain of commits ends or where
/// damage starts.
#[derive(Clone)]
struct Place {
    seq: SegmentSeq,
    path: std::path::PathBuf,
    position: u64,
    block: usize,
    segment_bytes: u64,
}

enum ChainEnd {
    Zeros,
    Damaged(DamageKind),
}

/// A damaged chain end that is the torn tail unless a commit follows it.
struct Torn {
    at: Place,
    nonzero_end: u64,
    kind: DamageKind,
}

/// A commit found after the chain end.
#[derive(Clone, Copy)]
struct Later {
    position: usize,
    commit_seq: CommitSeq,
}

/// Replays every segment of the shard in order, reading through `io`.
pub fn recover_shard(ctx: &RecoverContext<'_>, io: &mut Ring) -> Result<Recovered> {
    let segments = list_segments(ctx.shard_dir, (!ctx.read_only).then_some(ctx.fs))?;
    let mut total = 0u64;
    for (_, path) in &segments {
        total += file::size_of(path).unwrap_or(0);
    }
    ctx.metrics
        .recovery_bytes_total
        .store(total, Ordering::Relaxed);
    let mode = ctx.mode;
    assert!(
        !(ctx.read_only && mode == RecoveryMode::KeepPrefix),
        "KeepPrefix moves segments: not a read-only mode"
    );
    // Whether replay goes on after damage to the next whole commit.
    let skipping = decide(Finding::CommitAfterChainEnd, mode) == Decision::Skip;

    let mut table = ChannelTable::default();
    // The sequence number the next commit must carry; unknown until the first.
    let mut next: Option<CommitSeq> = None;
    let mut buf: Option<AlignedBuf> = None;
    let mut torn: Option<Torn> = None;
    let mut damage: Vec<Damage> = Vec::new();
    // Where the chain of whole commits ends so far: writing resumes there.
    let mut end_of_chain: Option<Place> = None;
    // KeepPrefix: where replay stopped, and why.
    let mut stop: Option<(Place, DamageKind)> = None;
    let mut next_segment_seq = SegmentSeq(1);
    let mut previous: Option<SegmentSeq> = None;
    let mut last_commit_segment: Option<SegmentSeq> = None;
    let manifest = manifest::read(ctx.shard_dir, ctx.shard, ctx.store_id)?;

    // Non-zero bytes without a commit in segments after a damaged chain
    // end: zeroed with the torn tail if that is what it turns out to be.
    let mut junk: Vec<(std::path::PathBuf, usize, u64, u64)> = Vec::new();
    let mut cuts: Vec<Cut> = Vec::new();
    for (i, (seq, path)) in segments.iter().enumerate() {
        next_segment_seq = SegmentSeq(seq.0.checked_add(1).ok_or_else(|| {
            let d = decide(Finding::SequenceExhausted, mode);
            refuse(ctx, d, *seq, 0, DamageKind::SegmentSeqExhausted)
        })?);
        let skip_segment = |kind: DamageKind,
                            torn: &mut Option<Torn>,
                            damage: &mut Vec<Damage>,
                            end_of_chain: &Option<Place>|
         -> Result<Option<(Place, DamageKind)>> {
            // A whole segment cannot be replayed: damage, whatever came before.
            let here = Place {
                seq: *seq,
                path: path.clone(),
                position: 0,
                block: 0,
                segment_bytes: 0,
            };
            match decide(Finding::SegmentUnreadable, mode) {
                Decision::Skip => {
                    if let Some(t) = torn.take() {
                        damage.push(skipped(ctx, &t.at, t.kind, None));
                    }
                    damage.push(skipped(ctx, &here, kind, None));
                    Ok(None)
                }
                Decision::KeepPrefix => Ok(Some(match torn.take() {
                    Some(t) => (t.at, t.kind),
                    None => (
                        end_of_chain.clone().unwrap_or(here),
                        DamageKind::InSegment {
                            segment: *seq,
                            kind: Box::new(kind),
                        },
                    ),
                })),
                d => Err(refuse(ctx, d, *seq, 0, kind)),
            }
        };
        if let Some(p) = previous {
            if p.0.checked_add(1) != Some(seq.0) {
                let kind = DamageKind::SegmentsMissing {
                    from: SegmentSeq(p.0 + 1),
                    to: SegmentSeq(seq.0 - 1),
                };
                stop = skip_segment(kind, &mut torn, &mut damage, &end_of_chain)?;
                if stop.is_some() {
                    break;
                }
            }
        }
        previous = Some(*seq);

        let f = DiskFile::open_read(path, ctx.access)?;
        let size = f.len()?;
        if size > crate::config::SEGMENT_BYTES_LIMIT {
            let kind = DamageKind::SegmentTooLarge { bytes: size };
            stop = skip_segment(kind, &mut torn, &mut damage, &end_of_chain)?;
            if stop.is_some() {
                break;
            }
            continue;
        }
        let n = size as usize;
        let mut reader = SegmentReader::new(&mut *io, path, f, &mut buf, n, ctx.metrics, ctx.stop);
        reader.ensure(SEGMENT_HEADER_BYTES)?;
        let header = segment_header(ctx, *seq, reader.view(), n as u64);
        let header = match header {
            Ok(h) => h,
            Err(kind) => {
                drop(reader);
                stop = skip_segment(kind, &mut torn, &mut damage, &end_of_chain)?;
                if stop.is_some() {
                    break;
                }
                continue;
            }
        };
        let block = header.block_bytes as usize;
        let place = |position: usize| Place {
            seq: *seq,
            path: path.clone(),
            position: position as u64,
            block,
            segment_bytes: header.segment_bytes,
        };
        let mut pos = block;
        // Whether commits here continue the chain (after a damaged chain end,
        // later segments are only scanned until a commit is found).
        let mut live = torn.is_none();
        loop {
            let end = if !live {
                ChainEnd::Zeros
            } else {
                loop {
                    if pos + block > n {
                        break ChainEnd::Zeros;
                    }
                    reader.ensure(pos + block)?;
                    let data = reader.view();
                    let h = match decode_commit_header(&data[pos..], block) {
                        Ok(h) => h,
                        Err(DecodeError::Empty) => break ChainEnd::Zeros,
                        Err(e) => break ChainEnd::Damaged(DamageKind::Commit(e)),
                    };
                    if h.store_id != ctx.store_id
                        || h.shard != ctx.shard
                        || h.segment_seq != *seq
                        || h.position != pos as u64
                    {
                        break ChainEnd::Damaged(DamageKind::CommitMisplaced);
                    }
                    if let Some(want) = next {
                        if h.commit_seq != want {
                            // A whole, valid header out of sequence is not a
                            // torn write: commits before it are missing.
                            let kind = DamageKind::CommitOutOfSequence {
                                found: h.commit_seq,
                                expected: want,
                            };
                            let finding = if h.commit_seq > want {
                                Finding::CommitsMissing
                            } else {
                                Finding::CommitRepeated
                            };
                            match decide(finding, mode) {
                                Decision::Skip => {
                                    damage.push(skipped(
                                        ctx,
                                        &place(pos),
                                        kind,
                                        Some((*seq, pos as u64)),
                                    ));
                                }
                                Decision::EndChain => break ChainEnd::Damaged(kind),
                                Decision::KeepPrefix => {
                                    stop = Some((place(pos), kind));
                                    break ChainEnd::Zeros;
                                }
                                d => return Err(refuse(ctx, d, *seq, pos as u64, kind)),
                            }
                        }
                    }
                    let span = h.blocks as usize * block;
                    if pos + span > n {
                        break ChainEnd::Damaged(DamageKind::CommitPastSegment);
                    }
                    reader.ensure(pos + span)?;
                    let data = reader.view();
                    let body = &data[pos + COMMIT_HEADER_BYTES
                        ..pos + COMMIT_HEADER_BYTES + h.entries_bytes as usize];
                    // First pass verifies every checksum, so that a damaged
                    // commit is cut or skipped whole and never half-applied.
                    if let Some(err) =
                        EntryIter::new(body, h.commit_seq, h.entry_count).find_map(|e| e.err())
                    {
                        break ChainEnd::Damaged(DamageKind::Commit(err));
                    }
                    // One copy and one allocation per commit; records are
                    // slices of it (they keep the commit's bytes alive).
                    let owned = Bytes::copy_from_slice(body);
                    // Gaps are expected only after something was skipped
                    // (only a mode that skips does); before that, an entry
                    // that contradicts the log is refused in every mode.
                    let after_skip = damage
                        .iter()
                        .any(|d| matches!(d.action, DamageAction::Skipped { .. }));
                    for e in EntryIter::verified(&owned, h.entry_count) {
                        let e = e.expect("verified in the first pass");
                        let lost = apply(&mut table, &e, &owned, h.commit_seq, after_skip)
                            .map_err(|kind| {
                                let d = decide(Finding::EntryContradicts, mode);
                                refuse(ctx, d, *seq, pos as u64, kind)
                            })?;
                        if lost > 0 {
                            count_lost(&mut damage, lost);
                        }
                    }
                    pos += span;
                    let Some(after) = h.commit_seq.0.checked_add(1) else {
                        let d = decide(Finding::SequenceExhausted, mode);
                        let kind = DamageKind::CommitSeqExhausted;
                        return Err(refuse(ctx, d, *seq, pos as u64, kind));
                    };
                    next = Some(CommitSeq(after));
                    last_commit_segment = Some(*seq);
                    ctx.metrics.recovery_commits.fetch_add(1, Ordering::Relaxed);
                }
            };
            if stop.is_some() {
                break;
            }
            if live {
                end_of_chain = Some(place(pos));
            }

            reader.ensure(n)?;
            let data = reader.view();
            // Whatever ended the chain, no commit may follow it — except, in
            // this segment, commits that were in flight with the one that is
            // missing (their headers say how many could be): none of them was
            // acknowledged, since acknowledgements go in order.
            let scan_from = if live { pos + block } else { block };
            let window_base = next.unwrap_or(CommitSeq(1));
            let mut first_later: Option<Later> = None;
            let mut beyond: Option<Later> = None;
            let mut nonzero_end = pos;
            let mut q = scan_from;
            while q + block <= n && beyond.is_none() {
                let blk = &data[q..q + block];
                if blk.iter().any(|&x| x != 0) {
                    nonzero_end = q + block;
                    if let Ok(h) = decode_commit_header(blk, block) {
                        let identity = h.store_id == ctx.store_id
                            && h.shard == ctx.shard
                            && h.segment_seq == *seq
                            && h.position == q as u64;
                        if identity && h.commit_seq >= window_base {
                            let later = || Later {
                                position: q,
                                commit_seq: h.commit_seq,
                            };
                            let in_window = h.commit_seq.0
                                < window_base.0.saturating_add(h.in_flight_max as u64);
                            if !(live && in_window) {
                                beyond = Some(later());
                            }
                            first_later.get_or_insert_with(later);
                        }
                    }
                }
                q += block;
            }
            // A mode that skips: commits in flight with a damaged one are only
            // unacknowledged if nothing follows; when a later segment holds
            // a commit, every commit here was acknowledged (segments change
            // with nothing in flight), so the damage is not a torn tail and
            // replay goes on at the first of them.
            if beyond.is_none()
                && skipping
                && live
                && first_later.is_some()
                && later_segment_has_commit(ctx, &segments[i + 1..])
            {
                beyond = first_later;
            }
            if let Some(b) = beyond {
                // Damage, not a torn tail: a commit follows the chain end.
                junk.clear();
                let (at, found) = match torn.take() {
                    Some(t) => (t.at, Some(t.kind)),
                    None => (
                        place(pos),
                        match &end {
                            ChainEnd::Damaged(k) => Some(k.clone()),
                            ChainEnd::Zeros => None,
                        },
                    ),
                };
                let kind = DamageKind::CommitAfterChainEnd {
                    end: found.map(Box::new),
                    expected: window_base,
                    found: b.commit_seq,
                    segment: *seq,
                    position: b.position as u64,
                };
                match decide(Finding::CommitAfterChainEnd, mode) {
                    Decision::Skip => {
                        let resume = first_later.expect("beyond is a later commit");
                        damage.push(skipped(
                            ctx,
                            &at,
                            kind,
                            Some((*seq, resume.position as u64)),
                        ));
                        pos = resume.position;
                        next = Some(resume.commit_seq);
                        live = true;
                        continue;
                    }
                    Decision::KeepPrefix => {
                        stop = Some((at, kind));
                        break;
                    }
                    d => return Err(refuse(ctx, d, at.seq, at.position, kind)),
                }
            }
            if live {
                // The block at the chain end itself may hold bytes past a
                // zero header.
                if pos < n && data[pos..(pos + block).min(n)].iter().any(|&x| x != 0) {
                    nonzero_end = nonzero_end.max((pos + block).min(n));
                }
                // Anything non-zero after the chain end is what a torn write
                // left (a lost header with written later blocks, say): it is
                // cut and zeroed like a damaged commit, so no byte of it
                // outlives the cut.
                let in_flight_after = first_later.is_some();
                if matches!(end, ChainEnd::Damaged(_)) || in_flight_after || nonzero_end > pos {
                    nonzero_end = nonzero_end.max((pos + block).min(n));
                    torn = Some(Torn {
                        at: place(pos),
                        nonzero_end: nonzero_end as u64,
                        kind: match end {
                            ChainEnd::Damaged(k) => k,
                            ChainEnd::Zeros => DamageKind::BytesAfterLastCommit,
                        },
                    });
                }
            } else if first_later.is_none() {
                // A segment with no commit after a damaged chain end (the
                // spare made ahead of use, or one whose only commit tore):
                // if the damage turns out to be the torn tail, whatever is
                // in it is zeroed with the tail and writing resumes in it.
                if nonzero_end > pos {
                    junk.push((path.clone(), block, pos as u64, nonzero_end as u64));
                }
                end_of_chain = Some(place(pos));
            }
            break;
        }
        if stop.is_some() {
            break;
        }
    }

    if let Some((at, kind)) = stop {
        let moved_to = keep_prefix(ctx, &segments, &at)?;
        damage.push(Damage {
            shard: ctx.shard,
            segment: at.seq,
            position: at.position,
            kind,
            action: DamageAction::PrefixKept {
                moved_to: moved_to.clone(),
            },
        });
        torn = None;
        next_segment_seq = SegmentSeq(at.seq.0 + 1);
        end_of_chain = (at.block != 0).then_some(at);
    }
    if !damage
        .iter()
        .any(|d| matches!(d.action, DamageAction::PrefixKept { .. }))
    {
        let replayed_through = next.map_or(0, |n| n.0 - 1);
        let newest = segments.last().map_or(SegmentSeq(0), |(seq, _)| *seq);
        if let Some((kind, action)) = lost_end(&manifest, replayed_through, newest) {
            let (segment, position) = end_of_chain
                .as_ref()
                .map_or((newest, 0), |p| (p.seq, p.position));
            match decide(Finding::EndLost, mode) {
                Decision::Report => damage.push(Damage {
                    shard: ctx.shard,
                    segment,
                    position,
                    kind,
                    action,
                }),
                d => return Err(refuse(ctx, d, segment, position, kind)),
            }
        }
    }
    if let Some(t) = torn {
        damage.push(settle_torn_tail(ctx, t, &mut junk, &mut cuts)?);
    }
    // Writing resumes at the chain end only if nothing was kept after it.
    let tail = match end_of_chain {
        Some(p) if SegmentSeq(p.seq.0 + 1) == next_segment_seq => Some(Tail {
            segment: Segment {
                seq: p.seq,
                file: Arc::new(if ctx.read_only {
                    DiskFile::open_read(&p.path, ctx.access)?
                } else {
                    DiskFile::open_rw(ctx.fs, &p.path, ctx.access)?
                }),
                path: p.path,
                bytes: p.segment_bytes,
            },
            position: p.position,
            block: p.block,
        }),
        _ => None,
    };
    ctx.metrics
        .recovery_channels
        .store(table.len() as u64, Ordering::Relaxed);
    ctx.metrics
        .recovery_damage
        .store(damage.len() as u64, Ordering::Relaxed);
    Ok(Recovered {
        table,
        next_commit_seq: next.unwrap_or(CommitSeq(1)),
        tail,
        next_segment_seq,
        damage,
        cuts,
        manifest,
        last_commit_segment,
    })
}

/// Segment `seq`'s header, from the first bytes of its `size`-byte file:
/// it must decode, name this shard, store and sequence number, and not
/// claim more bytes than the file has.
fn segment_header(
    ctx: &RecoverContext<'_>,
    seq: SegmentSeq,
    head: &[u8],
    size: u64,
) -> std::result::Result<SegmentHeader, DamageKind> {
    match decode_segment_header(head) {
        Ok(h) if h.shard != ctx.shard || h.store_id != ctx.store_id || h.segment_seq != seq => {
            Err(DamageKind::SegmentForeign)
        }
        Ok(h) if size < h.segment_bytes => Err(DamageKind::SegmentShort {
            bytes: size,
            header_bytes: h.segment_bytes,
        }),
        Ok(h) => Ok(h),
        Err(e) => Err(DamageKind::SegmentHeader(e)),
    }
}

/// What the shard manifest says is missing from the end of a log that
/// replays through commit `replayed_through` and whose newest segment is
/// `newest`, if anything.
fn lost_end(
    manifest: &ManifestState,
    replayed_through: u64,
    newest: SegmentSeq,
) -> Option<(DamageKind, DamageAction)> {
    let end_lost = |r: &manifest::ManifestRecord| DamageAction::EndLost {
        acknowledged_through: r.durable_through.0,
        replayed_through,
    };
    match manifest {
        ManifestState::Missing => None,
        // No generation was durable, so no commit may have been written.
        ManifestState::Unwritten if replayed_through == 0 => None,
        ManifestState::Unwritten => Some((
            DamageKind::ManifestDamaged(format!(
                "shard manifest holds no generation (all zero), yet the log holds commits \
                 through {replayed_through}"
            )),
            DamageAction::ManifestDamaged,
        )),
        ManifestState::Damaged(why) => Some((
            DamageKind::ManifestDamaged(why.clone()),
            DamageAction::ManifestDamaged,
        )),
        ManifestState::Found(r) if newest < r.active_segment => Some((
            DamageKind::NewestSegmentMissing {
                active: r.active_segment,
                newest,
                acknowledged_through: r.durable_through.0,
                replayed_through,
            },
            end_lost(r),
        )),
        ManifestState::Found(r) if replayed_through < r.durable_through.0 => Some((
            DamageKind::LogEndsEarly {
                replayed_through,
                acknowledged_through: r.durable_through.0,
                newest,
            },
            end_lost(r),
        )),
        ManifestState::Found(_) => None,
    }
}

/// A torn tail, as the mode decides: refused, or reported and (unless
/// examining read-only) listed in `cuts` with the stray bytes of `junk`,
/// to be zeroed before writing resumes (see `Recovered::cuts`).
fn settle_torn_tail(
    ctx: &RecoverContext<'_>,
    t: Torn,
    junk: &mut Vec<(std::path::PathBuf, usize, u64, u64)>,
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
        let tail = (t.at.path.clone(), t.at.block, t.at.position, t.nonzero_end);
        for (path, block, from, to) in std::iter::once(tail).chain(junk.drain(..)) {
            cuts.push(Cut {
                path,
                block,
                from,
                to,
            });
        }
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

/// Whether any of `later` segments starts with a commit of its own (a peek
/// at its header and first block, read through the page cache).
fn later_segment_has_commit(
    ctx: &RecoverContext<'_>,
    later: &[(SegmentSeq, std::path::PathBuf)],
) -> bool {
    later.iter().any(|(seq, path)| {
        let Ok(f) = DiskFile::open_read(path, Access::Buffered) else {
            return false;
        };
        let mut head = [0u8; SEGMENT_HEADER_BYTES];
        if f.read_exact_at(&mut head, 0).is_err() {
            return false;
        }
        let Ok(h) = decode_segment_header(&head) else {
            return false;
        };
        let block = h.block_bytes as usize;
        let mut first = vec![0u8; COMMIT_HEADER_BYTES];
        if f.read_exact_at(&mut first, block as u64).is_err() {
            return false;
        }
        decode_commit_header(&first, block).is_ok_and(|c| {
            c.store_id == ctx.store_id
                && c.shard == ctx.shard
                && c.segment_seq == *seq
                && c.position == block as u64
        })
    })
}

/// The error for a finding the table refuses (`decision`, a `Fail`).
fn refuse(
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

fn skipped(
    ctx: &RecoverContext<'_>,
    at: &Place,
    kind: DamageKind,
    resumed_at: Option<(SegmentSeq, u64)>,
) -> Damage {
    Damage {
        shard: ctx.shard,
        segment: at.seq,
        position: at.position,
        kind,
        action: DamageAction::Skipped {
            resumed_at,
            records_lost: 0,
        },
    }
}

/// Adds records found lost to the last skipped damage.
fn count_lost(damage: &mut [Damage], lost: u64) {
    if let Some(DamageAction::Skipped { records_lost, .. }) =
        damage.iter_mut().rev().find_map(|d| match &mut d.action {
            a @ DamageAction::Skipped { .. } => Some(a),
            _ => None,
        })
    {
        *records_lost += lost;
    }
}

/// `RecoveryMode::KeepPrefix`: moves every byte after `at` out of the WAL
/// into a fresh `damaged/<time>/` directory (the segment of `at` copied whole,
/// later segments moved, highest first so that a crash midway never leaves a
/// gap), then zeroes the segment of `at` from `at` on. Running it again after
/// a crash midway finds the same damage and finishes the job.
fn keep_prefix(
    ctx: &RecoverContext<'_>,
    segments: &[(SegmentSeq, std::path::PathBuf)],
    at: &Place,
) -> Result<std::path::PathBuf> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let damaged = ctx.shard_dir.join("damaged");
    let moved_to = damaged.join(format!(
        "{}-{:08x}",
        since_epoch.as_secs(),
        file::random_u64()? as u32
    ));
    file::create_dir(ctx.fs, &moved_to, 0o700)?;
    file::sync_dir(ctx.fs, &damaged)?;
    file::sync_dir(ctx.fs, ctx.shard_dir)?;
    let name = |p: &Path| moved_to.join(p.file_name().expect("segment paths have a file name"));
    if at.block != 0 {
        let copy = name(&at.path);
        file::copy_durably(ctx.fs, &at.path, &copy, "copy damaged segment")?;
        file::sync_dir(ctx.fs, &moved_to)?;
    }
    // Segments from `at` on when `at` is a whole segment (block 0), after it
    // otherwise.
    let first_moved = if at.block == 0 {
        at.seq.0
    } else {
        at.seq.0 + 1
    };
    for (_, path) in segments.iter().rev().filter(|(s, _)| s.0 >= first_moved) {
        let to = name(path);
        file::rename(ctx.fs, path, &to, "move segment after damage")?;
        file::sync_dir(ctx.fs, &moved_to)?;
        file::sync_dir(ctx.fs, ctx.shard_dir)?;
    }
    if at.block != 0 {
        let f = DiskFile::open_rw(ctx.fs, &at.path, ctx.access)?;
        let size = f.len()?;
        let zeros = AlignedBuf::new(READ_CHUNK_BYTES, at.block);
        f.zero_fill(&zeros, at.position, size)?;
    }
    Ok(moved_to)
}

/// Replays entry `e` of commit `commit` into the table; returns the offsets
/// lost in a gap (lenient only) or what is wrong with it.
fn apply(
    table: &mut ChannelTable,
    e: &Entry<'_>,
    commit_body: &Bytes,
    commit: CommitSeq,
    lenient: bool,
) -> std::result::Result<u64, DamageKind> {
    let logged = match e.kind {
        EntryKind::Register => Logged::Register {
            channel: e.channel,
            first: e.offset,
            name: std::str::from_utf8(e.payload).map_err(|_| DamageKind::NameNotUtf8)?,
        },
        EntryKind::Append => Logged::Append {
            channel: e.channel,
            offset: e.offset,
            record: commit_body.slice_ref(e.payload),
        },
        EntryKind::Drop => Logged::Drop {
            channel: e.channel,
            next: e.offset,
        },
    };
    table
        .replay(logged, commit, lenient)
        .map_err(DamageKind::Entry)
}
