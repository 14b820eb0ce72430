//! The segment being written: rolling to the next one, syncing it, and the
//! shard manifest that records it.

use std::sync::atomic::Ordering;

use crate::error::{Error, Result};
use crate::io::file::Access;
use crate::io::{CommitIo, Op, OpError};
use crate::types::SegmentSeq;

use super::run::Shard;

impl Shard {
    pub(super) fn needs_new_segment(&self) -> bool {
        self.write_position
            .saturating_add(self.building.builder.sealed_len() as u64)
            > self.segment.bytes
    }

    /// A data sync of the current segment through the ring, with nothing
    /// else in flight: waits for its completion. If the ring fails meanwhile
    /// the shard has stopped using it (the sync may still complete there).
    pub(super) fn sync_segment(&mut self) -> Result<()> {
        debug_assert!(self.flights.is_empty());
        let id = self.next_op_id();
        let fd = self.segment.fd();
        // SAFETY: a sync references no memory.
        unsafe { self.io.start(id, Op::Sync { fd }) }.map_err(|e| self.op_error(e))?;
        loop {
            if let Some((done, outcome)) = self.io.poll() {
                debug_assert_eq!(done, id, "the only operation in flight");
                return outcome.map_err(|e| self.op_error(e));
            }
            if let Err(e) = self.io.wait(None) {
                let e = self.op_error(e);
                self.ring_failed(e.clone());
                return Err(e);
            }
        }
    }

    pub(super) fn roll_segment(&mut self) -> Result<()> {
        debug_assert!(self.flights.is_empty());
        if self.unsynced_since.is_some() {
            // Periodic mode: what was written to the old segment is synced
            // before writing moves on, so that syncs only ever need the
            // active file.
            self.sync_segment()?;
            self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
            self.unsynced_since = None;
            self.durable_through = self.completed;
        }
        let seq = self.next_segment_seq;
        let segment = self.preparer.take(seq)?;
        // Before the segment's first commit: from now on a listing without
        // it, or a chain that ends before what was durable, lost commits.
        self.manifest.write(seq, self.durable_through)?;
        // The new segment is empty: say so before asking for the next one,
        // so that its fill is paced from the start.
        self.preparer.report_fill(self.block as u64, segment.bytes);
        self.preparer.request(SegmentSeq(seq.0 + 1));
        self.metrics
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        self.segment = segment;
        self.write_position = self.block as u64;
        self.next_segment_seq = SegmentSeq(seq.0 + 1);
        Ok(())
    }

    /// At a clean close: records in the manifest that every commit written
    /// is durable, so that the loss of any of them is detected at the next
    /// open. Nothing is written by a shard that wrote nothing (an open that
    /// fails elsewhere changes nothing) or that failed.
    pub(super) fn close_manifest(&mut self) {
        if self.failed.is_some() || !(self.written || self.manifest_stale) {
            return;
        }
        let last = self.manifest.last();
        if last.is_some_and(|r| {
            r.active_segment == self.segment.seq && r.durable_through == self.durable_through
        }) {
            return;
        }
        if let Err(e) = self.manifest.write(self.segment.seq, self.durable_through) {
            self.fail(e);
        }
    }
}

/// Makes `path` durable through `io` (a data sync of an fd opened for it),
/// waiting for it; used at start, before the shard answers anything.
pub(super) fn sync_file_through(io: &mut dyn CommitIo, path: &std::path::Path) -> Result<()> {
    let f = crate::io::file::open_read(path, Access::Buffered)?;
    let failed = |e: OpError| Error::io(e.operation, Some(path.to_path_buf()), e.source);
    // SAFETY: a sync references no memory; the file outlives the wait (if
    // the wait fails the shard never starts and the sync is left to the
    // kernel; closing the fd does not disturb an in-flight sync).
    unsafe {
        io.start(
            0,
            Op::Sync {
                fd: std::os::unix::io::AsRawFd::as_raw_fd(&f),
            },
        )
    }
    .map_err(failed)?;
    loop {
        if let Some((_, outcome)) = io.poll() {
            return outcome.map_err(failed);
        }
        io.wait(None).map_err(failed)?;
    }
}
