//! Scanning a segment's bytes into findings: pure, no I/O. Replay reads,
//! asks these what the bytes are, and asks the decision table what to do.

use crate::damage::DamageKind;
use crate::types::{CommitSeq, SegmentSeq, ShardId};
use crate::wal::format::{
    claims_commit_of, decode_commit_header, decode_segment_header, is_zeros, CommitHeader,
    DecodeError, EntryIter, SegmentHeader, COMMIT_HEADER_BYTES,
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
    /// The segment's file was recycled: after its chain of commits it holds
    /// what its earlier life wrote, and only a block that claims to be a
    /// commit of this segment can be a torn write (see [`Identity::stale`]).
    pub recycled: bool,
}

impl Identity {
    /// Whether `h`, found at byte `position`, is a commit of this segment.
    pub fn owns(&self, h: &CommitHeader, position: usize) -> bool {
        h.store_id == self.store_id
            && h.shard == self.shard
            && h.segment_seq == self.segment
            && h.position == position as u64
    }

    /// Whether `block` is what an earlier life of a recycled segment's file
    /// left: in a recycled segment, every block that does not claim to be a
    /// commit of this segment (the commit magic with this store, shard and
    /// segment, checksum or not). A fresh segment has no earlier life: zeros
    /// are the only bytes that are not damage there.
    pub fn stale(&self, block: &[u8]) -> bool {
        self.recycled && !claims_commit_of(block, self.store_id, self.shard, self.segment)
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
    if id.stale(&data[position..position + block]) {
        return Err(ChainEnd::Zeros);
    }
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
/// and non-zero bytes, a window at a time, so that a reader can let go of
/// the bytes scanned (replay reads a segment's zero tail this way): feed it
/// the segment's bytes as they arrive, then finish.
///
/// When the chain is `live` (it ended in this segment) the scan starts
/// after the chain end's block, and commits within the window of the
/// first missing one, `window_base`, are in flight with it (their headers
/// say how many could be); otherwise (the chain ended in an earlier
/// segment) it starts at the first block, and every commit is beyond.
/// The scan stops at the first commit beyond.
pub(super) struct AfterEndScan {
    after: AfterEnd,
    /// The next block to look at.
    q: usize,
    block: usize,
    window_base: CommitSeq,
    live: bool,
}

impl AfterEndScan {
    /// A scan after the chain end at `chain_end`; `data` holds at least
    /// the segment's bytes up to the end of the chain end's block (or the
    /// whole segment when shorter).
    pub(super) fn new(
        data: &[u8],
        chain_end: usize,
        block: usize,
        id: &Identity,
        window_base: CommitSeq,
        live: bool,
    ) -> AfterEndScan {
        let n = data.len();
        let mut after = AfterEnd {
            first_later: None,
            beyond: None,
            nonzero_end: chain_end,
        };
        // The block at a live chain end may itself hold bytes past a zero
        // header.
        let end_block = &data[chain_end.min(n)..(chain_end + block).min(n)];
        if live && !is_zeros(end_block) && !id.stale(end_block) {
            after.nonzero_end = (chain_end + block).min(n);
        }
        AfterEndScan {
            after,
            q: if live { chain_end + block } else { block },
            block,
            window_base,
            live,
        }
    }

    /// The next byte the scan needs.
    pub(super) fn position(&self) -> usize {
        self.q
    }

    /// The first byte a replay may still need: that of the first commit
    /// found after the chain end (replay may resume there), else the next
    /// block to scan.
    pub(super) fn keep_from(&self) -> usize {
        self.after.first_later.map_or(self.q, |l| l.position)
    }

    /// Whether the scan found a commit beyond the window (it looks no
    /// further).
    pub(super) fn done(&self) -> bool {
        self.after.beyond.is_some()
    }

    /// Scans the whole blocks of `data` not yet scanned.
    pub(super) fn scan(&mut self, data: &[u8], id: &Identity) {
        let (block, window_base) = (self.block, self.window_base);
        let after = &mut self.after;
        while self.q + block <= data.len() && after.beyond.is_none() {
            let q = self.q;
            let blk = &data[q..q + block];
            if !is_zeros(blk) && !id.stale(blk) {
                after.nonzero_end = after.nonzero_end.max(q + block);
                if let Ok(h) = decode_commit_header(blk, block) {
                    if id.owns(&h, q) && h.commit_seq >= window_base {
                        let later = Later {
                            position: q,
                            commit_seq: h.commit_seq,
                        };
                        let in_window =
                            h.commit_seq.0 < window_base.0.saturating_add(h.in_flight_max as u64);
                        if !(self.live && in_window) {
                            after.beyond = Some(later);
                        }
                        after.first_later.get_or_insert(later);
                    }
                }
            }
            self.q += block;
        }
    }

    /// What the scan found.
    pub(super) fn finish(self) -> AfterEnd {
        self.after
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The scan over the whole of `data` at once.
    fn after_chain_end(
        data: &[u8],
        chain_end: usize,
        block: usize,
        id: &Identity,
        window_base: CommitSeq,
        live: bool,
    ) -> AfterEnd {
        let mut scan = AfterEndScan::new(data, chain_end, block, id, window_base, live);
        scan.scan(data, id);
        scan.finish()
    }
    use crate::wal::format::encode_commit_header;

    const BLOCK: usize = 4096;
    const ID: Identity = Identity {
        store_id: 7,
        shard: ShardId(1),
        segment: SegmentSeq(3),
        recycled: false,
    };

    /// A segment image of `blocks` blocks with an empty one-block commit
    /// `seq` (window `window`) at each of `commits`' block indexes.
    fn image(blocks: usize, commits: &[(usize, u64, u16)]) -> Vec<u8> {
        let mut data = vec![0u8; blocks * BLOCK];
        for &(at, seq, window) in commits {
            let h = CommitHeader {
                shard: ID.shard,
                entry_count: 0,
                store_id: ID.store_id,
                segment_seq: ID.segment,
                commit_seq: CommitSeq(seq),
                position: (at * BLOCK) as u64,
                entries_bytes: 0,
                blocks: 1,
                in_flight_max: window,
            };
            encode_commit_header(&h, &mut data[at * BLOCK..]);
        }
        data
    }

    #[test]
    fn a_commit_header_is_one_only_where_its_identity_says() {
        let data = image(3, &[(1, 5, 1)]);
        assert!(commit_header(&data, BLOCK, BLOCK, &ID).is_ok());
        assert!(matches!(
            commit_header(&data, 2 * BLOCK, BLOCK, &ID),
            Err(ChainEnd::Zeros)
        ));
        // The same bytes copied one block on name the wrong position.
        let mut moved = data.clone();
        moved.copy_within(BLOCK..2 * BLOCK, 2 * BLOCK);
        assert!(matches!(
            commit_header(&moved, 2 * BLOCK, BLOCK, &ID),
            Err(ChainEnd::Damaged(DamageKind::CommitMisplaced))
        ));
        let other = Identity {
            segment: SegmentSeq(4),
            ..ID
        };
        assert!(matches!(
            commit_header(&data, BLOCK, BLOCK, &other),
            Err(ChainEnd::Damaged(DamageKind::CommitMisplaced))
        ));
        let mut torn = data;
        torn[BLOCK + 20] ^= 1;
        assert!(matches!(
            commit_header(&torn, BLOCK, BLOCK, &ID),
            Err(ChainEnd::Damaged(DamageKind::Commit(_)))
        ));
    }

    /// In a recycled segment, what an earlier life left ends the chain like
    /// zeros; a block that claims to be this segment's commit is judged as
    /// in a fresh one.
    #[test]
    fn a_recycled_segment_s_earlier_life_ends_its_chain() {
        let recycled = Identity {
            recycled: true,
            ..ID
        };
        // Segment 2's commits, then garbage: the file's earlier life.
        let earlier = Identity {
            segment: SegmentSeq(2),
            ..ID
        };
        let mut data = image(5, &[]);
        let h = CommitHeader {
            shard: earlier.shard,
            entry_count: 0,
            store_id: earlier.store_id,
            segment_seq: earlier.segment,
            commit_seq: CommitSeq(9),
            position: BLOCK as u64,
            entries_bytes: 0,
            blocks: 1,
            in_flight_max: 1,
        };
        encode_commit_header(&h, &mut data[BLOCK..]);
        data[2 * BLOCK..3 * BLOCK].fill(0xA5);
        for at in [BLOCK, 2 * BLOCK] {
            assert!(matches!(
                commit_header(&data, at, BLOCK, &recycled),
                Err(ChainEnd::Zeros)
            ));
            // The same bytes in a fresh segment are damage.
            assert!(matches!(
                commit_header(&data, at, BLOCK, &ID),
                Err(ChainEnd::Damaged(_))
            ));
        }
        let a = after_chain_end(&data, BLOCK, BLOCK, &recycled, CommitSeq(1), true);
        assert_eq!(a.nonzero_end, BLOCK, "stale bytes are not a torn write");
        let fresh = after_chain_end(&data, BLOCK, BLOCK, &ID, CommitSeq(1), true);
        assert_eq!(fresh.nonzero_end, 3 * BLOCK);
        // A torn commit of the segment itself (its header names it, its
        // checksum fails) is still told from the rest.
        let mut torn = image(5, &[(1, 4, 1)]);
        torn[BLOCK + 50] ^= 1;
        assert!(matches!(
            commit_header(&torn, BLOCK, BLOCK, &recycled),
            Err(ChainEnd::Damaged(DamageKind::Commit(_)))
        ));
        let later = image(5, &[(3, 6, 1)]);
        let a = after_chain_end(&later, BLOCK, BLOCK, &recycled, CommitSeq(5), true);
        assert!(
            a.beyond.is_some(),
            "a later commit of its own is still seen"
        );
    }

    #[test]
    fn a_sequence_number_out_of_turn_is_missing_commits_or_a_repeat() {
        assert!(out_of_sequence(CommitSeq(4), None).is_none());
        assert!(out_of_sequence(CommitSeq(4), Some(CommitSeq(4))).is_none());
        let (f, _) = out_of_sequence(CommitSeq(6), Some(CommitSeq(4))).unwrap();
        assert_eq!(f, Finding::CommitsMissing);
        let (f, _) = out_of_sequence(CommitSeq(3), Some(CommitSeq(4))).unwrap();
        assert_eq!(f, Finding::CommitRepeated);
    }

    #[test]
    fn commits_after_a_chain_end_are_in_its_window_or_beyond_it() {
        // The chain ends at block 1 (commit 5 missing); commit 6 follows,
        // written with a window of 2: it may have been in flight with 5.
        let data = image(4, &[(2, 6, 2)]);
        let a = after_chain_end(&data, BLOCK, BLOCK, &ID, CommitSeq(5), true);
        assert_eq!(a.first_later.map(|l| l.commit_seq), Some(CommitSeq(6)));
        assert!(a.beyond.is_none());
        assert_eq!(a.nonzero_end, 3 * BLOCK);
        // With a window of 1 it cannot have been: damage, not a torn tail.
        let data = image(4, &[(2, 6, 1)]);
        let a = after_chain_end(&data, BLOCK, BLOCK, &ID, CommitSeq(5), true);
        assert_eq!(a.beyond.map(|l| l.position), Some(2 * BLOCK));
        // In a later segment (the chain ended earlier) every commit is beyond.
        let data = image(4, &[(1, 6, 4)]);
        let a = after_chain_end(&data, BLOCK, BLOCK, &ID, CommitSeq(5), false);
        assert_eq!(a.beyond.map(|l| l.position), Some(BLOCK));
        // Commits older than the window's base are no later commits.
        let data = image(4, &[(2, 3, 4)]);
        let a = after_chain_end(&data, BLOCK, BLOCK, &ID, CommitSeq(5), true);
        assert!(a.first_later.is_none() && a.beyond.is_none());
        assert_eq!(a.nonzero_end, 3 * BLOCK);
    }

    #[test]
    fn stray_bytes_in_the_chain_end_s_own_block_count_as_written() {
        let mut data = image(3, &[]);
        data[BLOCK + 100] = 1;
        let live = after_chain_end(&data, BLOCK, BLOCK, &ID, CommitSeq(1), true);
        assert_eq!(live.nonzero_end, 2 * BLOCK);
        let zeros = image(3, &[]);
        let clean = after_chain_end(&zeros, BLOCK, BLOCK, &ID, CommitSeq(1), true);
        assert_eq!(clean.nonzero_end, BLOCK);
    }
}
