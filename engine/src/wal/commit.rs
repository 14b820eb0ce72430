//! Commit assembly: entries encoded straight into an aligned buffer, sealed
//! with a header and padded to the block size.

use crate::io::buffer::round_up;
use crate::io::buffer::AlignedBuf;
use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};
use crate::wal::format::{
    encode_commit_header, encode_entry, entry_bytes, CommitHeader, EntryKind, COMMIT_HEADER_BYTES,
};

/// An aligned buffer being filled with one commit.
pub struct CommitBuilder {
    buf: AlignedBuf,
    block: usize,
    bytes_max: usize,
    records_max: usize,
    used: usize,
    entries: u32,
    records: usize,
    commit_seq: CommitSeq,
}

impl CommitBuilder {
    /// A builder for commits of at most `bytes_max` bytes (rounded up to
    /// `block`) and `records_max` appended records.
    pub fn new(bytes_max: usize, records_max: usize, block: usize) -> Self {
        let bytes_max = round_up(bytes_max, block);
        CommitBuilder {
            buf: AlignedBuf::new(bytes_max, block),
            block,
            bytes_max,
            records_max,
            used: COMMIT_HEADER_BYTES,
            entries: 0,
            records: 0,
            commit_seq: CommitSeq(0),
        }
    }

    /// Empties the builder for commit `commit_seq`.
    pub fn reset(&mut self, commit_seq: CommitSeq) {
        self.used = COMMIT_HEADER_BYTES;
        self.entries = 0;
        self.records = 0;
        self.commit_seq = commit_seq;
    }

    /// The sequence number of the commit being built.
    pub fn commit_seq(&self) -> CommitSeq {
        self.commit_seq
    }

    /// Whether no entry was added.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Whether `records` more records with `payload_bytes` encoded entry bytes fit.
    pub fn fits(&self, records: usize, entry_bytes_total: usize) -> bool {
        self.records + records <= self.records_max
            && round_up(self.used + entry_bytes_total, self.block) <= self.bytes_max
    }

    /// Whether an empty commit could ever hold them (else the request is too large).
    pub fn could_fit(&self, records: usize, entry_bytes_total: usize) -> bool {
        records <= self.records_max
            && round_up(COMMIT_HEADER_BYTES + entry_bytes_total, self.block) <= self.bytes_max
    }

    /// Adds an entry. The caller checked [`CommitBuilder::fits`].
    pub fn push(&mut self, kind: EntryKind, channel: ChannelId, offset: Offset, payload: &[u8]) {
        let n = entry_bytes(payload.len());
        assert!(
            self.used + n <= self.bytes_max,
            "commit entry past the commit buffer"
        );
        encode_entry(
            self.commit_seq,
            kind,
            channel,
            offset,
            payload,
            &mut self.buf[self.used..],
        );
        self.used += n;
        self.entries += 1;
        if kind == EntryKind::Append {
            self.records += 1;
        }
    }

    /// Bytes the sealed commit takes on disk.
    pub fn sealed_len(&self) -> usize {
        round_up(self.used, self.block)
    }

    /// Bytes the sealed commit would take with `entry_bytes_total` more.
    pub fn sealed_len_with(&self, entry_bytes_total: usize) -> usize {
        round_up(self.used + entry_bytes_total, self.block)
    }

    /// Writes the header for the commit's place and zero-pads to the block
    /// size. Returns the bytes to write.
    pub fn seal(
        &mut self,
        shard: ShardId,
        store_id: u64,
        segment_seq: SegmentSeq,
        position: u64,
        in_flight_max: u16,
    ) -> &[u8] {
        assert!(!self.is_empty(), "sealing an empty commit");
        assert_eq!(
            position % self.block as u64,
            0,
            "commit position not block-aligned"
        );
        let len = self.sealed_len();
        let header = CommitHeader {
            shard,
            entry_count: self.entries,
            store_id,
            segment_seq,
            commit_seq: self.commit_seq,
            position,
            entries_bytes: (self.used - COMMIT_HEADER_BYTES) as u32,
            blocks: (len / self.block) as u32,
            in_flight_max,
        };
        encode_commit_header(&header, &mut self.buf[..COMMIT_HEADER_BYTES]);
        self.buf[self.used..len].fill(0);
        &self.buf[..len]
    }

    /// The buffer's address (stable for the builder's life).
    pub fn as_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }
}
