//! The segment being written: rolling to the next one, syncing it, and the
//! shard manifest that records it.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Result;
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;
use crate::io::ring::Ring;
use crate::io::OpError;
use crate::metrics::ShardMetrics;
use crate::recovery::{apply_cuts, Damage, DamageAction, Recovered, Tail};
use crate::types::{CommitSeq, SegmentSeq};
use crate::wal::manifest::ManifestState;
use crate::wal::preparer::SegmentPreparer;
use crate::wal::segment::{segment_path, LogSegment, Segment};

use super::reads::READ_OP;
use super::run::Shard;

/// How far past the end of the commit that needs it a manifest generation
/// raises `written_below` at most (and at most an eighth of a segment, to
/// its end): an open after a crash reads at most this much (and 64 KiB) of
/// zero tail past the end of the log; the shard writes one more manifest
/// generation (a 4 KiB write and a data sync) per this many bytes of WAL —
/// with the default 64 MiB segments, 8 MiB.
pub(super) const WRITTEN_BELOW_STEP: u64 = 8 << 20;

impl Shard {
    /// Before the first write after open: zeroes what a torn tail left (what
    /// was replayed was synced at start), and records in the manifest where
    /// the log ends, so that the loss of anything written from now on is
    /// told from a torn tail. Then makes sure the next segment is on its way.
    pub(super) fn ready_segment(&mut self) -> Result<()> {
        if !self.written {
            apply_cuts(&self.fs, &self.cuts, self.access)?;
            self.written_below = self.bound_after(self.write_position);
            self.manifest.write(self.manifest_record())?;
            self.cuts.clear();
            self.written = true;
        }
        if !self.spare_requested {
            self.preparer.request(self.next_segment_seq);
            self.spare_requested = true;
        }
        Ok(())
    }

    /// The `written_below` that lets commits go on from `end` for a while.
    fn bound_after(&self, end: u64) -> u64 {
        let step = (self.segment.bytes / 8).clamp(self.block as u64, WRITTEN_BELOW_STEP);
        end.saturating_add(step).min(self.segment.bytes)
    }

    /// Before a commit that would end past the manifest's `written_below`:
    /// a generation that raises it, durable before the commit is written,
    /// so that an open after a crash need not look for commits past it.
    /// One data sync of the manifest per step of WAL (see
    /// [`WRITTEN_BELOW_STEP`]).
    pub(super) fn raise_written_below(&mut self) -> Result<()> {
        let end = self
            .write_position
            .saturating_add(self.building.builder.sealed_len() as u64);
        if end <= self.written_below {
            return Ok(());
        }
        self.written_below = self.bound_after(end);
        self.manifest.write(self.manifest_record())
    }

    pub(super) fn needs_new_segment(&self) -> bool {
        self.write_position
            .saturating_add(self.building.builder.sealed_len() as u64)
            > self.segment.bytes
    }

    /// A data sync of the current segment through the ring, with no commit
    /// in flight: waits for its completion (reads of the WAL that complete
    /// meanwhile are answered). If the ring fails meanwhile the shard has
    /// stopped using it (the sync may still complete there).
    pub(super) fn sync_segment(&mut self) -> Result<()> {
        debug_assert!(self.flights.is_empty());
        let id = self.next_op_id();
        self.io
            .sync(id, &self.segment.file)
            .map_err(|e| self.op_error(e))?;
        loop {
            if let Some(c) = self.io.poll() {
                if c.id != id {
                    debug_assert!(c.id & READ_OP != 0, "only reads beside the sync");
                    self.complete(c);
                    continue;
                }
                return c.outcome.map_err(|e| self.op_error(e));
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
        if self.clock.has_unsynced() {
            // Periodic mode: what was written to the old segment is synced
            // before writing moves on, so that syncs only ever need the
            // active file.
            self.sync_segment()?;
            self.metrics.syncs.fetch_add(1, Ordering::Relaxed);
            self.clock.all_synced();
        }
        let seq = self.next_segment_seq;
        let segment = self.preparer.take(seq)?;
        // The channel id next before the commit that starts the segment
        // (its registrations are the segment's).
        let next_channel_id = self
            .building
            .registered_from
            .unwrap_or(self.table.next_id());
        self.log.push_back(LogSegment {
            seq,
            bytes: segment.bytes,
            next_channel_id,
            recycled_from: segment.recycled_from,
        });
        self.segment = segment;
        self.written_below = self.bound_after(self.block as u64);
        // Before the segment's first commit: from now on a listing without
        // it, or a chain that ends before what was durable, lost commits.
        self.manifest.write(self.manifest_record())?;
        // The new segment is empty: say so before asking for the next one,
        // so that its fill is paced from the start.
        self.preparer
            .report_fill(self.block as u64, self.segment.bytes);
        self.preparer.request(SegmentSeq(seq.0 + 1));
        self.metrics
            .segments_created
            .fetch_add(1, Ordering::Relaxed);
        self.write_position = self.block as u64;
        self.next_segment_seq = SegmentSeq(seq.0 + 1);
        self.reclaim.due = true;
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
            r.active_segment == self.segment.seq
                && r.durable_through == self.clock.durable_through()
        }) {
            return;
        }
        if let Err(e) = self.manifest.write(self.manifest_record()) {
            self.fail(e);
        }
    }
}

/// Makes `path` durable through `io` (a data sync of an fd opened for it),
/// waiting for it; used at start, before the shard answers anything.
fn sync_file_through(io: &mut Ring, path: &std::path::Path) -> Result<()> {
    let f = Arc::new(DiskFile::open_read(path, Access::Buffered)?);
    let failed = |e: OpError| e.into_error(Some(path.to_path_buf()));
    io.sync(0, &f).map_err(failed)?;
    loop {
        if let Some(c) = io.poll() {
            return c.outcome.map_err(failed);
        }
        if let Err(e) = io.wait(None) {
            // The shard never starts; the ring is not used again.
            io.abandon();
            return Err(failed(e));
        }
    }
}

/// Where writing resumes after recovery.
pub(super) struct ActiveSegment {
    pub(super) segment: Segment,
    /// The first free byte (`u64::MAX`: the segment is left as it is and the
    /// first commit starts the next one).
    pub(super) write_position: u64,
    pub(super) next_segment_seq: SegmentSeq,
    /// Whether the next segment was asked of the preparer.
    pub(super) spare_requested: bool,
}

impl ActiveSegment {
    /// Continues in the recovered tail segment, or starts the first one.
    pub(super) fn resume(
        tail: Option<Tail>,
        next_segment_seq: SegmentSeq,
        block: usize,
        preparer: &SegmentPreparer,
        metrics: &ShardMetrics,
    ) -> Result<ActiveSegment> {
        let (segment, write_position, next_segment_seq) = match tail {
            // A tail segment with another block size is left as it is: the
            // first commit starts a new segment with the engine's block.
            Some(t) if t.block != block => (t.segment, u64::MAX, next_segment_seq),
            Some(t) => (t.segment, t.position, next_segment_seq),
            None => {
                let seg = preparer.take(next_segment_seq)?;
                metrics.segments_created.fetch_add(1, Ordering::Relaxed);
                (seg, block as u64, SegmentSeq(next_segment_seq.0 + 1))
            }
        };
        // A spare is prepared once the segment in use has commits; a store
        // reopened again and again without writes must not grow by a
        // segment per open.
        let spare_requested = write_position > block as u64 && write_position != u64::MAX;
        if spare_requested {
            preparer.request(next_segment_seq);
        }
        Ok(ActiveSegment {
            segment,
            write_position,
            next_segment_seq,
            spare_requested,
        })
    }
}

/// Makes what recovery accepted durable before anything is answered from it;
/// returns the last replayed commit.
///
/// A crashed process may have left its last commits (and a spare after them)
/// in the page cache only; older segments were synced before writing moved on
/// from them. Not needed when the manifest already records every replayed
/// commit as durable (after a clean close, or a crash with nothing written
/// since the last roll).
///
/// It may also have died between naming a file (a spare segment, the
/// manifest) and syncing the directory: the shard directory is synced
/// whatever the manifest says, so that no commit is written into a segment
/// whose name a power cut could still take back; and between writing a
/// manifest generation and syncing it: the manifest is synced, so that the
/// log start this open acts on cannot be taken back.
pub(super) fn sync_replayed(
    fs: &Fs,
    shard_dir: &Path,
    recovered: &Recovered,
    io: &mut Ring,
) -> Result<CommitSeq> {
    file::sync_dir(fs, shard_dir)?;
    // The manifest too: the open acts on the log start it read (files
    // before it are recycled or removed), which a crashed process may have
    // written without syncing.
    let manifest = shard_dir.join(crate::wal::manifest::MANIFEST_FILE);
    if file::exists(&manifest) {
        sync_file_through(io, &manifest)?;
    }
    let replayed_through = CommitSeq(recovered.next_commit_seq.0.saturating_sub(1));
    let all_durable = matches!(
        &recovered.manifest,
        ManifestState::Found(r) if r.durable_through >= replayed_through
    );
    if let Some(from) = recovered
        .last_commit
        .map(|c| c.segment)
        .filter(|_| !all_durable)
    {
        for seq in from.0..recovered.next_segment_seq.0 {
            let path = segment_path(shard_dir, SegmentSeq(seq));
            if file::exists(&path) {
                sync_file_through(io, &path)?;
            }
        }
    }
    Ok(replayed_through)
}

/// Whether recovery accepted damage that the manifest still contradicts (a
/// lenient mode): it is then rewritten even if nothing is written.
pub(super) fn manifest_stale(damage: &[Damage]) -> bool {
    damage.iter().any(|d| {
        matches!(
            d.action,
            DamageAction::EndLost { .. }
                | DamageAction::ManifestDamaged
                | DamageAction::PrefixKept { .. }
        )
    })
}
