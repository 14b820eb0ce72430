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
    /// `None` while the sealed commit is on its way to the device.
    buf: Option<AlignedBuf>,
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
            buf: Some(AlignedBuf::new(bytes_max, block)),
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

    /// Adds an entry; returns its byte position in the commit. The caller
    /// checked [`CommitBuilder::fits`].
    pub fn push(
        &mut self,
        kind: EntryKind,
        channel: ChannelId,
        offset: Offset,
        payload: &[u8],
    ) -> u32 {
        let n = entry_bytes(payload.len());
        assert!(
            self.used + n <= self.bytes_max,
            "commit entry past the commit buffer"
        );
        let used = self.used;
        encode_entry(
            self.commit_seq,
            kind,
            channel,
            offset,
            payload,
            &mut self.buf_mut()[used..],
        );
        self.used += n;
        self.entries += 1;
        if kind == EntryKind::Append {
            self.records += 1;
        }
        used as u32
    }

    /// Bytes the sealed commit takes on disk.
    pub fn sealed_len(&self) -> usize {
        round_up(self.used, self.block)
    }

    /// Bytes the sealed commit would take with `entry_bytes_total` more.
    pub fn sealed_len_with(&self, entry_bytes_total: usize) -> usize {
        round_up(self.used + entry_bytes_total, self.block)
    }

    fn buf_mut(&mut self) -> &mut AlignedBuf {
        self.buf
            .as_mut()
            .expect("a commit built while its buffer is in flight")
    }

    /// Writes the header for the commit's place and zero-pads to the block
    /// size. Hands out the buffer, whose first `len` bytes are the commit,
    /// until [`CommitBuilder::restore`] brings it back.
    pub fn seal(
        &mut self,
        shard: ShardId,
        store_id: u64,
        segment_seq: SegmentSeq,
        position: u64,
        in_flight_max: u16,
    ) -> Sealed {
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
        let (used, block) = (self.used, self.block);
        let buf = self.buf_mut();
        encode_commit_header(&header, &mut buf[..COMMIT_HEADER_BYTES]);
        buf[used..len].fill(0);
        if cfg!(debug_assertions) {
            check_sealed(&buf[..len], &header, block);
        }
        Sealed {
            buf: self.buf.take().expect("checked by buf_mut"),
            len,
        }
    }

    /// Takes the buffer back from the device (or from a start that failed).
    pub fn restore(&mut self, buf: AlignedBuf) {
        assert!(self.buf.is_none(), "a commit buffer restored twice");
        assert!(buf.len() >= self.bytes_max, "a foreign commit buffer");
        self.buf = Some(buf);
    }
}

/// A sealed commit: the first `len` bytes of `buf`.
#[derive(Debug)]
pub struct Sealed {
    /// The buffer.
    pub buf: AlignedBuf,
    /// The commit's bytes on disk.
    pub len: usize,
}

/// Debug builds: a sealed commit decodes back to what was encoded. (Not in
/// release builds, where it would double the cost of sealing.)
fn check_sealed(bytes: &[u8], header: &CommitHeader, block: usize) {
    let back = crate::wal::format::decode_commit_header(bytes, block)
        .expect("a sealed commit's header decodes");
    assert_eq!(&back, header, "a sealed commit decodes to another header");
    let body = &bytes[COMMIT_HEADER_BYTES..COMMIT_HEADER_BYTES + header.entries_bytes as usize];
    let mut entries = 0;
    for e in crate::wal::format::EntryIter::new(body, header.commit_seq, header.entry_count) {
        e.expect("a sealed commit's entries decode");
        entries += 1;
    }
    assert_eq!(entries, header.entry_count, "sealed entry count");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_commit_decodes_back_and_its_buffer_returns() {
        let mut b = CommitBuilder::new(64 << 10, 64, 4096);
        b.reset(CommitSeq(7));
        for i in 0..5 {
            b.push(EntryKind::Append, ChannelId(3), Offset(i), &[i as u8; 300]);
        }
        let sealed = b.seal(ShardId(1), 99, SegmentSeq(2), 8192, 4);
        assert_eq!(sealed.len, 4096);
        let header = crate::wal::format::decode_commit_header(&sealed.buf, 4096).unwrap();
        check_sealed(&sealed.buf[..sealed.len], &header, 4096);
        assert_eq!((header.entry_count, header.position), (5, 8192));
        b.restore(sealed.buf);
        b.reset(CommitSeq(8));
        b.push(EntryKind::Append, ChannelId(3), Offset(5), b"again");
        assert_eq!(b.seal(ShardId(1), 99, SegmentSeq(2), 12288, 4).len, 4096);
    }

    #[test]
    #[should_panic(expected = "in flight")]
    fn building_into_a_buffer_in_flight_is_a_bug() {
        let mut b = CommitBuilder::new(8192, 8, 4096);
        b.push(EntryKind::Append, ChannelId(1), Offset(0), b"x");
        let _in_flight = b.seal(ShardId(0), 1, SegmentSeq(1), 4096, 1);
        b.reset(CommitSeq(1));
        b.push(EntryKind::Append, ChannelId(1), Offset(1), b"y");
    }
}
