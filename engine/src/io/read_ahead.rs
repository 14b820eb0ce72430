//! Reading a whole file into one aligned buffer through a [`Ring`], in
//! chunks with several in flight, handing out the prefix that has arrived:
//! the caller verifies and decodes the first megabytes while the device
//! works on the next ones.

use std::sync::Arc;

use crate::io::buffer::{round_up, AlignedBuf};
use crate::io::file::DiskFile;
use crate::io::ring::Ring;
use crate::io::{Op, OpError, OPS_IN_FLIGHT_MAX};

/// A file being read into a buffer the reader owns.
pub struct ReadAhead<'a> {
    ring: &'a mut Ring,
    file: Arc<DiskFile>,
    /// `None` once leaked (the ring failed with reads in flight).
    buf: Option<AlignedBuf>,
    size: usize,
    chunk: usize,
    depth: usize,
    issued: usize,
    arrived: Vec<bool>,
    prefix: usize,
    in_flight: usize,
    /// Bytes before this were handed back to the kernel (read as zeros).
    released: usize,
    /// The furthest byte asked for: reads go at most `depth` chunks
    /// beyond it, so that a device faster than the caller does not fill
    /// the whole buffer ahead of it.
    wanted: usize,
    /// Bytes `[from, to)` (whole chunks) never read: the caller starts
    /// after them ([`ReadAhead::skip`]).
    skip: Option<(usize, usize)>,
    /// Reads go ahead of what was asked for only up to here
    /// ([`ReadAhead::limit_ahead`]).
    limit: usize,
}

impl<'a> ReadAhead<'a> {
    /// Reads the first `size` bytes of `file` into `buf` in `chunk`-byte
    /// reads (a multiple of the buffer's alignment), `depth` at a time. The
    /// buffer must hold `size` rounded up to `chunk`, and nothing else may
    /// be in flight on `ring`.
    pub fn new(
        ring: &'a mut Ring,
        file: Arc<DiskFile>,
        size: usize,
        buf: AlignedBuf,
        chunk: usize,
        depth: usize,
    ) -> Self {
        assert!(
            buf.len() >= round_up(size, chunk),
            "read-ahead buffer of {} bytes for {size} bytes in {chunk}-byte chunks",
            buf.len()
        );
        assert_eq!(chunk % buf.align(), 0, "read chunk not aligned");
        assert!(
            (1..=OPS_IN_FLIGHT_MAX).contains(&depth),
            "read depth {depth}"
        );
        assert_eq!(ring.in_flight(), 0, "a read-ahead beside other operations");
        ReadAhead {
            ring,
            file,
            buf: Some(buf),
            size,
            chunk,
            depth,
            issued: 0,
            arrived: vec![false; size.div_ceil(chunk)],
            prefix: 0,
            in_flight: 0,
            released: 0,
            wanted: 0,
            skip: None,
            limit: usize::MAX,
        }
    }

    /// Reads do not go ahead past `limit` (bytes the caller expects not to
    /// need); asked for, bytes past it are still read.
    pub fn limit_ahead(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Before the first [`ReadAhead::ensure`]: the caller reads the first
    /// chunk and then nothing before `upto`, so the whole chunks between
    /// are never read (they read as zeros). Replay resuming after an index
    /// snapshot's last commit reads a segment's header and its end this
    /// way.
    pub fn skip(&mut self, upto: usize) {
        assert_eq!(self.issued, 0, "a skip after reads began");
        let (from, to) = (self.chunk, upto.min(self.size) / self.chunk * self.chunk);
        if to <= from {
            return;
        }
        for a in &mut self.arrived[from / self.chunk..to / self.chunk] {
            *a = true;
        }
        if let Some(b) = self.buf.as_mut() {
            b.release(from, to);
        }
        self.skip = Some((from, to));
    }

    /// Bytes that have arrived (the length of [`ReadAhead::arrived`]).
    pub fn prefix(&self) -> usize {
        self.prefix
    }

    /// Waits until the first `upto` bytes (at most the file) have arrived,
    /// keeping the reads after them in flight; gives up early, with `Ok`,
    /// when `stop` says so.
    pub fn ensure(
        &mut self,
        upto: usize,
        stop: &dyn Fn() -> bool,
    ) -> std::result::Result<(), OpError> {
        let upto = upto.min(self.size);
        self.wanted = self.wanted.max(upto);
        loop {
            if stop() {
                return Ok(());
            }
            self.issue()?;
            if self.prefix >= upto {
                return Ok(());
            }
            let mut reaped = false;
            while let Some(c) = self.ring.poll() {
                self.in_flight -= 1;
                reaped = true;
                c.outcome?;
                self.arrived[c.id as usize] = true;
            }
            while self.prefix < self.size && self.arrived[self.prefix / self.chunk] {
                self.prefix += self.chunk.min(self.size - self.prefix);
            }
            // Block only when nothing arrived: otherwise go round and put
            // the freed slots to work first.
            if self.prefix < upto && !reaped {
                assert!(self.in_flight > 0, "waiting for reads with none in flight");
                if let Err(e) = self.ring.wait(None) {
                    self.ring.abandon();
                    return Err(e);
                }
            }
        }
    }

    /// Starts reads until `depth` are in flight or the file is covered.
    fn issue(&mut self) -> std::result::Result<(), OpError> {
        let buf = self.buf.as_mut().expect("reading into a leaked buffer");
        let ahead = self
            .wanted
            .saturating_add(self.depth * self.chunk)
            .min(self.wanted.max(self.limit));
        while self.in_flight < self.depth && self.issued < self.size && self.issued < ahead {
            if let Some((from, to)) = self.skip {
                if self.issued == from {
                    self.issued = to;
                    continue;
                }
            }
            let chunk = self.issued / self.chunk;
            let expect = self.chunk.min(self.size - self.issued);
            let op = Op::Read {
                file: self.file.clone(),
                position: self.issued as u64,
                // SAFETY: `issued + chunk` is within the buffer (checked in
                // `new`).
                ptr: unsafe { buf.as_mut_ptr().add(self.issued) },
                len: self.chunk,
                expect,
            };
            // SAFETY: the buffer is owned here and this chunk of it is
            // neither read nor handed out before its completion; Drop waits
            // for every read still in flight, or leaks the buffer when the
            // ring failed. `Err` means the read was not queued.
            unsafe { self.ring.start_into(chunk as u64, &self.file, op) }?;
            self.issued += expect;
            self.in_flight += 1;
        }
        Ok(())
    }

    /// The caller is done with the bytes before `upto`: their memory goes
    /// back to the kernel, a few chunks at a time, so that a reader going
    /// through a large file holds about its read-ahead, not the whole file.
    /// They read as zeros from now on.
    pub fn release_before(&mut self, upto: usize) {
        let upto = upto.min(self.prefix) / self.chunk * self.chunk;
        if upto < self.released + 2 * self.chunk {
            return;
        }
        if let Some(b) = self.buf.as_mut() {
            b.release(self.released, upto);
        }
        self.released = upto;
    }

    /// The bytes that have arrived (those before a
    /// [`ReadAhead::release_before`] read as zeros).
    pub fn arrived(&self) -> &[u8] {
        match &self.buf {
            // SAFETY: bytes 0..prefix were written by completed reads and no
            // read in flight targets them; no slice covers the bytes the
            // kernel may still write.
            Some(b) => unsafe { std::slice::from_raw_parts(b.as_ptr(), self.prefix) },
            None => &[],
        }
    }

    /// Waits for the reads still in flight and hands the buffer back;
    /// `None` if it had to be leaked.
    pub fn finish(mut self) -> Option<AlignedBuf> {
        self.settle();
        self.buf.take()
    }

    fn settle(&mut self) {
        while self.in_flight > 0 {
            if self.ring.poll().is_some() {
                self.in_flight -= 1;
            } else if self.ring.is_abandoned() || self.ring.wait(None).is_err() {
                // The ring failed: its reads may still complete, and
                // cancelling them is asynchronous. The buffer is leaked,
                // never freed under the kernel.
                self.ring.abandon();
                if let Some(b) = self.buf.take() {
                    std::mem::forget(b);
                }
                return;
            }
        }
    }
}

impl Drop for ReadAhead<'_> {
    fn drop(&mut self) {
        self.settle();
    }
}
