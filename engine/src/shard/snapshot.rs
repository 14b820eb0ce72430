//! Writing the shard's index snapshot (see `wal/snapshot.rs` and
//! `recovery/from_snapshot.rs`): at a clean close, so that the next open
//! reads no log, and while the shard runs, every
//! `Config::snapshot_every_bytes` of WAL, so that a crash reopen replays
//! only what was written since.
//!
//! A snapshot describes the table as of its last commit, so it is taken
//! when the shard is quiet: nothing in flight, nothing being built, no
//! reclamation under way, every commit durable. A running shard gets
//! there by pausing admission once a snapshot is due (callers wait in the
//! inbox about one commit's time), taking the image, and going on; the
//! file is written, synced and renamed into place by a thread of its own.
//! A failure to write one costs the next open a longer replay, nothing
//! else: it is counted, not raised.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::io::file;
use crate::io::fs::Fs;
use crate::metrics::ShardMetrics;
use crate::types::CommitSeq;
use crate::wal::snapshot::{encode, SegmentImage, SnapshotImage, TailImage, SNAPSHOT_FILE};

use super::run::Shard;

/// A running snapshot is written once this many times its predecessor's
/// size of WAL has been written since, at least: snapshots then add at
/// most a quarter to the bytes written, however large the index.
const SPACING_PER_SNAPSHOT_BYTE: u64 = 4;

/// The shard's snapshot schedule.
#[derive(Default)]
pub(super) struct Snapshots {
    /// Commit bytes written since the last snapshot.
    pub(super) since: u64,
    /// The last snapshot's size.
    last_bytes: u64,
    /// A snapshot is due: admission waits until the shard is quiet.
    pub(super) draining: bool,
    /// The thread writing the last one.
    writer: Option<JoinHandle<()>>,
}

impl Snapshots {
    /// Whether the thread writing the last one is still at it.
    fn writing(&self) -> bool {
        self.writer.as_ref().is_some_and(|w| !w.is_finished())
    }

    /// Waits for the thread writing the last one.
    fn join(&mut self) {
        if let Some(w) = self.writer.take() {
            // A panic in it (none is expected) only loses that snapshot.
            let _ = w.join();
        }
    }
}

impl Shard {
    /// Called once per turn of the shard's loop: starts pausing admission
    /// when a running snapshot is due, and takes it once the shard is
    /// quiet.
    pub(super) fn snapshot_step(&mut self) {
        let every = self.config.snapshot_every_bytes;
        if every == 0 || !self.snapshot_allowed || self.failed.is_some() || self.closing {
            self.snapshots.draining = false;
            return;
        }
        if !self.snapshots.draining {
            let spacing = every.max(SPACING_PER_SNAPSHOT_BYTE * self.snapshots.last_bytes);
            let due = self.snapshots.since >= spacing;
            if !due || self.reclaim.under_way() || self.snapshots.writing() {
                return;
            }
            self.snapshots.draining = true;
        }
        let quiet = self.flights.is_empty()
            && self.building.builder.is_empty()
            && self.deferred.is_none()
            && !self.reclaim.under_way()
            && !self.clock.has_unsynced();
        if !quiet {
            return;
        }
        self.snapshots.draining = false;
        self.snapshots.since = 0;
        let Some(bytes) = self.snapshot_bytes(false) else {
            return;
        };
        self.snapshots.last_bytes = bytes.len() as u64;
        self.snapshots.join();
        let job = self.publisher();
        if self.fs.is_simulated() {
            job.run(&bytes);
            return;
        }
        let spawned = std::thread::Builder::new()
            .name(format!("corewal-snapshot-{}", self.id.0))
            .spawn(move || job.run(&bytes));
        match spawned {
            Ok(w) => self.snapshots.writer = Some(w),
            Err(_) => {
                self.metrics
                    .snapshot_writes_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// At a clean close, once the manifest records where the log ends:
    /// the snapshot the next open reads instead of the log.
    pub(super) fn write_snapshot(&mut self) {
        self.snapshots.join();
        if let Some(bytes) = self.snapshot_bytes(true) {
            self.publisher().run(&bytes);
        }
    }

    /// What writes a snapshot file of this shard.
    fn publisher(&self) -> Publish {
        Publish {
            fs: self.fs.clone(),
            dir: self.dir.clone(),
            mode: self.config.file_mode,
            metrics: self.metrics.clone(),
        }
    }

    /// The snapshot of the table as of the last commit, if one may be
    /// taken: the shard has not failed, recovery found nothing but a torn
    /// tail, and the last commit is durable; a `clean` one also needs the
    /// manifest to record the log's end.
    fn snapshot_bytes(&self, clean: bool) -> Option<Vec<u8>> {
        if self.failed.is_some() || !self.snapshot_allowed {
            return None;
        }
        let m = self.manifest.last()?;
        let durable = self.clock.durable_through();
        let tied = self.last_commit.map_or(CommitSeq(0), |c| c.seq);
        if tied != durable {
            return None;
        }
        if clean && (m.active_segment != self.segment.seq || m.durable_through != durable) {
            return None;
        }
        let (channels, retired) = self.table.image();
        let image = SnapshotImage {
            shard: self.id,
            store_id: self.store_id,
            generation: m.generation,
            clean,
            durable_through: durable,
            tail: TailImage {
                segment: self.segment.seq,
                position: self.write_position,
                block: self.block as u32,
                next_segment: self.next_segment_seq,
                last_commit: self.last_commit,
            },
            log: self
                .log
                .iter()
                .map(|s| SegmentImage {
                    seq: s.seq,
                    bytes: s.bytes,
                    next_channel_id: s.next_channel_id,
                    recycled_from: s.recycled_from,
                })
                .collect(),
            next_id: self.table.next_id(),
            channels,
            retired,
        };
        Some(encode(&image))
    }
}

/// Writing one snapshot file: into a temporary file, synced, renamed over
/// the last, the directory synced.
struct Publish {
    fs: Fs,
    dir: PathBuf,
    mode: u32,
    metrics: Arc<ShardMetrics>,
}

impl Publish {
    fn run(self, bytes: &[u8]) {
        let path = self.dir.join(SNAPSHOT_FILE);
        let tmp = self.dir.join(format!("{SNAPSHOT_FILE}.tmp"));
        let counter = match file::publish(&self.fs, &tmp, &path, bytes, self.mode) {
            Ok(()) => &self.metrics.snapshots_written,
            Err(_) => {
                file::remove_leftover(&self.fs, &tmp);
                &self.metrics.snapshot_writes_failed
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
