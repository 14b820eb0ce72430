//! Reading a segment file back: whole, through the shard's ring, for
//! replay; or a peek at its first commit's header, for recovery's look
//! ahead.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::io::buffer::{round_up, AlignedBuf};
use crate::io::file::{Access, DiskFile};
use crate::io::read_ahead::ReadAhead;
use crate::io::ring::Ring;
use crate::wal::format::{
    decode_commit_header, decode_segment_header, CommitHeader, COMMIT_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
};

/// Bytes per read while replaying.
pub const READ_CHUNK_BYTES: usize = 1 << 20;
/// Reads a shard keeps in flight while replaying: the device works on the
/// next megabytes while the shard verifies and decodes the last ones.
const READS_IN_FLIGHT_MAX: usize = 8;
const _: () = assert!(READS_IN_FLIGHT_MAX <= crate::io::OPS_IN_FLIGHT_MAX);

/// Reads one segment file into a replay buffer through a ring, in
/// `READ_CHUNK_BYTES` pieces with up to `READS_IN_FLIGHT_MAX` in flight,
/// and hands out the prefix that has arrived.
pub struct SegmentReader<'a> {
    ahead: ReadAhead<'a>,
    path: &'a Path,
    bytes_read: &'a AtomicU64,
    stop: Option<&'a AtomicBool>,
}

impl<'a> SegmentReader<'a> {
    /// Starts reading the first `size` bytes of `file` (at `path`) into
    /// `buf` when it is large enough, else into a new buffer; counts the
    /// bytes that arrive in `bytes_read`, and gives up when `stop` is set.
    pub fn new(
        ring: &'a mut Ring,
        path: &'a Path,
        file: DiskFile,
        buf: Option<AlignedBuf>,
        size: usize,
        bytes_read: &'a AtomicU64,
        stop: Option<&'a AtomicBool>,
    ) -> Self {
        let want = round_up(size, READ_CHUNK_BYTES).max(READ_CHUNK_BYTES);
        let buf = match buf {
            Some(b) if b.len() >= want => b,
            _ => AlignedBuf::new(want, 4096),
        };
        let ahead = ReadAhead::new(
            ring,
            Arc::new(file),
            size,
            buf,
            READ_CHUNK_BYTES,
            READS_IN_FLIGHT_MAX,
        );
        SegmentReader {
            ahead,
            path,
            bytes_read,
            stop,
        }
    }

    /// Waits until the first `upto` bytes (at most the file) have arrived,
    /// keeping the reads after them in flight.
    ///
    /// `Error::Closed` when `stop` is set meanwhile.
    pub fn ensure(&mut self, upto: usize) -> Result<()> {
        let stop = self.stop;
        let stopped = move || stop.is_some_and(|s| s.load(Ordering::Relaxed));
        let before = self.ahead.prefix();
        let read = self.ahead.ensure(upto, &stopped);
        let got = self.ahead.prefix() - before;
        self.bytes_read.fetch_add(got as u64, Ordering::Relaxed);
        read.map_err(|e| e.into_error(Some(self.path.to_path_buf())))?;
        if stopped() {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Before the first [`SegmentReader::ensure`]: only the first chunk
    /// (the segment header) and the bytes from about `upto` on are read
    /// (see [`ReadAhead::skip`]).
    pub fn skip_to(&mut self, upto: usize) {
        self.ahead.skip(upto);
    }

    /// Reads do not go ahead past `limit` (see [`ReadAhead::limit_ahead`]).
    pub fn limit_ahead(&mut self, limit: usize) {
        self.ahead.limit_ahead(limit);
    }

    /// Releases the bytes before `upto` (see [`ReadAhead::release_before`]).
    pub fn release_before(&mut self, upto: usize) {
        self.ahead.release_before(upto);
    }

    /// The bytes that have arrived.
    pub fn view(&self) -> &[u8] {
        self.ahead.arrived()
    }

    /// Waits for the reads still in flight and hands the buffer back for
    /// the next segment (`None` if the ring failed and it was leaked).
    pub fn finish(self) -> Option<AlignedBuf> {
        self.ahead.finish()
    }
}

/// The header of the commit in the first block of the segment at `path`,
/// if its segment header and that commit header decode (read through the
/// page cache; any error reads as no commit).
pub fn first_commit_header(path: &Path) -> Option<(usize, CommitHeader)> {
    let f = DiskFile::open_read(path, Access::Buffered).ok()?;
    let mut head = [0u8; SEGMENT_HEADER_BYTES];
    f.read_exact_at(&mut head, 0).ok()?;
    let block = decode_segment_header(&head).ok()?.block_bytes as usize;
    let mut first = [0u8; COMMIT_HEADER_BYTES];
    f.read_exact_at(&mut first, block as u64).ok()?;
    decode_commit_header(&first, block).ok().map(|h| (block, h))
}
