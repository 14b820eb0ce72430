//! Scanning a segment's bytes into findings: pure, no I/O. Replay reads,
//! asks these what the bytes are, and asks the decision table what to do.

use crate::damage::DamageKind;
use crate::types::{CommitSeq, SegmentSeq, ShardId};
use crate::wal::format::{
    decode_commit_header, decode_segment_header, CommitHeader, DecodeError, EntryIter,
    SegmentHeader, COMMIT_HEADER_BYTES,
};
use crate::wal::manifest::{self, ManifestState};

use super::decision::Finding;
use super::DamageAction;

/// Whose commits a segment may hold: a header that names another store,
/// shard, segment or position is not one of its commits.
#[derive(Clone, Copy)]
pub(super) struct Identity {
    pub store_id: u64,
    pub shard: ShardId,
    pub segment: SegmentSeq,
}

impl Identity {
    /// Whether `h`, found at byte `position`, is a commit of this segment.
    pub fn owns(&self, h: &CommitHeader, position: usize) -> bool {
        h.store_id == self.store_id
            && h.shard == self.shard
            && h.segment_seq == self.segment
            && h.position == position as u64
    }
}

/// What ended a segment's chain of valid commits.
pub(super) enum ChainEnd {
    /// Zeros (never written), or the end of the file.
    Zeros,
    /// A block that is not the next valid commit.
    Damaged(DamageKind),
}

/// A commit found after the chain end.
#[derive(Clone, Copy)]
pub(super) struct Later {
    pub position: usize,
    pub commit_seq: CommitSeq,
}

/// What lies after a chain end, in the rest of its segment.
pub(super) struct AfterEnd {
    /// The first commit of this segment at or after the window's base.
    pub first_later: Option<Later>,
    /// The first of them that cannot have been in flight with the commit
    /// the chain end lost: its presence makes the chain end damage.
    pub beyond: Option<Later>,
    /// One past the last non-zero block scanned (at least the chain end).
    pub nonzero_end: usize,
}

/// Segment `seq`'s header, from the first bytes of its `size`-byte file:
/// it must decode, name this shard, store and sequence number, and not
/// claim more bytes than the file has.
pub(super) fn segment_header(
    id: &Identity,
    head: &[u8],
    size: u64,
) -> Result<SegmentHeader, DamageKind> {
    match decode_segment_header(head) {
        Ok(h)
            if h.shard != id.shard || h.store_id != id.store_id || h.segment_seq != id.segment =>
        {
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

/// The commit header in the block at `data[position..]`, or what ends the
/// chain there.
pub(super) fn commit_header(
    data: &[u8],
    position: usize,
    block: usize,
    id: &Identity,
) -> Result<CommitHeader, ChainEnd> {
    match decode_commit_header(&data[position..], block) {
        Ok(h) if id.owns(&h, position) => Ok(h),
        Ok(_) => Err(ChainEnd::Damaged(DamageKind::CommitMisplaced)),
        Err(DecodeError::Empty) => Err(ChainEnd::Zeros),
        Err(e) => Err(ChainEnd::Damaged(DamageKind::Commit(e))),
    }
}

/// A whole, valid commit header whose sequence number is not `expected`
/// is not a torn write: commits before it are missing, or it repeats one.
pub(super) fn out_of_sequence(
    found: CommitSeq,
    expected: Option<CommitSeq>,
) -> Option<(Finding, DamageKind)> {
    let expected = expected?;
    let finding = match found.cmp(&expected) {
        std::cmp::Ordering::Equal => return None,
        std::cmp::Ordering::Greater => Finding::CommitsMissing,
        std::cmp::Ordering::Less => Finding::CommitRepeated,
    };
    Some((finding, DamageKind::CommitOutOfSequence { found, expected }))
}

/// The entries of commit `h` at `data[position..]`, every checksum
/// verified, so that a damaged commit is cut or skipped whole and never
/// half-applied.
pub(super) fn commit_body<'d>(
    data: &'d [u8],
    position: usize,
    h: &CommitHeader,
) -> Result<&'d [u8], DamageKind> {
    let from = position + COMMIT_HEADER_BYTES;
    let body = &data[from..from + h.entries_bytes as usize];
    match EntryIter::new(body, h.commit_seq, h.entry_count).find_map(|e| e.err()) {
        Some(err) => Err(DamageKind::Commit(err)),
        None => Ok(body),
    }
}

/// Scans a segment's blocks after a chain end at `chain_end` for commits
/// and non-zero bytes.
///
/// When the chain is `live` (it ended in this segment) the scan starts
/// after the chain end's block, and commits within the window of the
/// first missing one, `window_base`, are in flight with it (their headers
/// say how many could be); otherwise (the chain ended in an earlier
/// segment) it starts at the first block, and every commit is beyond.
/// The scan stops at the first commit beyond.
pub(super) fn after_chain_end(
    data: &[u8],
    chain_end: usize,
    block: usize,
    id: &Identity,
    window_base: CommitSeq,
    live: bool,
) -> AfterEnd {
    let n = data.len();
    let mut after = AfterEnd {
        first_later: None,
        beyond: None,
        nonzero_end: chain_end,
    };
    let mut q = if live { chain_end + block } else { block };
    while q + block <= n && after.beyond.is_none() {
        let blk = &data[q..q + block];
        if blk.iter().any(|&x| x != 0) {
            after.nonzero_end = q + block;
            if let Ok(h) = decode_commit_header(blk, block) {
                if id.owns(&h, q) && h.commit_seq >= window_base {
                    let later = Later {
                        position: q,
                        commit_seq: h.commit_seq,
                    };
                    let in_window =
                        h.commit_seq.0 < window_base.0.saturating_add(h.in_flight_max as u64);
                    if !(live && in_window) {
                        after.beyond = Some(later);
                    }
                    after.first_later.get_or_insert(later);
                }
            }
        }
        q += block;
    }
    // The block at a live chain end may itself hold bytes past a zero
    // header.
    let end_block = &data[chain_end.min(n)..(chain_end + block).min(n)];
    if live && end_block.iter().any(|&x| x != 0) {
        after.nonzero_end = after.nonzero_end.max((chain_end + block).min(n));
    }
    after
}

/// What the shard manifest says is missing from the end of a log that
/// replays through commit `replayed_through` and whose newest segment is
/// `newest`, if anything.
pub(super) fn lost_end(
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
