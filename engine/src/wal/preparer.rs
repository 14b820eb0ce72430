//! Segments created ahead of use.
//!
//! Creating a segment means writing it whole with zeros and syncing it and
//! its directory: tens of milliseconds for 64 MiB. A shard must not stall its
//! commits for that, so each shard has a preparer thread that keeps the next
//! segment ready. The thread runs on the shard's core at a lower priority
//! (nice 10): it is mostly waiting for the device, and when the shard has
//! work the scheduler prefers the shard.
//!
//! The preparer is paced by the shard: it fills the next segment in step
//! with the current one's use, finishing when that is `1 - LEAD` full, in
//! synced 256 KiB pieces, and pauses otherwise, so that the device sees the
//! fill spread over the life of a segment instead of 64 MiB of writes and
//! syncs at once. A shard waiting for the segment makes it run flat out.
//! Measured on the project's 2-core virtio machine (docs/BENCHMARKS.md),
//! open loop at 5,000 appends/s: unpaced, each segment change was followed
//! by about a second of commits at 60–144 ms (p99 99 ms over 10 s); paced,
//! no interval's maximum passed 16 ms (p99 5.5 ms). Closed loop, 16 writers,
//! medians of 3: p99 1.96 ms and p99.9 6.1 ms paced in 256 KiB pieces,
//! against 2.23 / 9.5 ms unpaced and 3.7 / 6.6 ms paced in 1 MiB pieces.
//!
//! Segments the shard reclaimed come back here ([`SegmentPreparer::reclaimed`]):
//! up to [`RECYCLED_KEPT_MAX`] wait to become the next segments (renamed,
//! header rewritten — no zero-fill, and their blocks stay allocated, which
//! this disk syncs at about 3x the rate of fresh extents), the rest are
//! removed. A new file is created only while the shard's segment files stay
//! within `Config::wal_bytes_max` with it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access};
use crate::io::fs::Fs;
use crate::metrics::ShardMetrics;
use crate::types::{SegmentSeq, ShardId};
use crate::wal::segment::{create_segment, new_header, recycle_segment, Segment, SegmentSpec};

/// Bytes of zeros written and synced per piece while filling a segment.
const ZERO_FILL_BYTES: usize = 256 << 10;
/// Nice value of preparer threads.
const PREPARER_NICE: i32 = 10;
/// How early (as a fraction of a segment) the next segment's fill finishes
/// before the current one is full.
const LEAD: f64 = 0.25;
/// How often a paced fill looks again at how full the current segment is:
/// every `PAUSE_MIN` while the segment grows, backing off to `PAUSE_MAX`
/// while it does not (an idle shard costs its preparer few wake-ups).
const PAUSE_MIN: Duration = Duration::from_millis(2);
const PAUSE_MAX: Duration = Duration::from_millis(200);
/// Parts per million, the unit of the fill fraction the shard reports.
const PPM: u64 = 1_000_000;
/// Reclaimed segment files kept to become the next segments; more are
/// removed. Two cover a shard that reclaims a segment per segment it fills
/// (the steady state with regular checkpoints) with one to spare.
pub const RECYCLED_KEPT_MAX: usize = 2;

/// What a preparer makes segments from.
#[derive(Clone)]
pub struct PreparerSpec {
    /// The shard.
    pub shard: ShardId,
    /// The shard's directory.
    pub shard_dir: PathBuf,
    /// Commit block size.
    pub block: usize,
    /// The store's identity.
    pub store_id: u64,
    /// Segment size.
    pub segment_bytes: u64,
    /// Direct or buffered I/O.
    pub access: Access,
    /// File mode.
    pub file_mode: u32,
    /// The filesystem.
    pub fs: Fs,
    /// The shard's core, to share it.
    pub core: Option<usize>,
    /// The shard's counters: `wal_bytes` counts the shard's segment files,
    /// the preparer's and the shard's alike (a new file adds to it, a
    /// removed one takes from it).
    pub metrics: Arc<ShardMetrics>,
    /// The limit a new file must keep `wal_bytes` within.
    pub wal_bytes_max: u64,
}

/// The preparer's state. A sequence number is wanted, then being prepared,
/// then ready, then taken — each at most once, so a segment is never built
/// twice (and `create_segment` refuses to replace an existing file anyway).
#[derive(Default)]
struct State {
    wanted: Option<SegmentSeq>,
    preparing: Option<SegmentSeq>,
    ready: Option<(SegmentSeq, Result<Segment>)>,
    stop: bool,
    /// Reclaimed segment files waiting to be recycled, oldest first.
    recyclable: std::collections::VecDeque<(SegmentSeq, PathBuf)>,
    /// Reclaimed segment files to remove, with their sizes.
    doomed: Vec<(PathBuf, u64)>,
}

impl State {
    fn knows(&self, seq: SegmentSeq) -> bool {
        self.wanted == Some(seq)
            || self.preparing == Some(seq)
            || self.ready.as_ref().is_some_and(|(s, _)| *s == seq)
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
    /// How full the shard's current segment is, in parts per million.
    fill_ppm: AtomicU64,
    /// Whether the shard waits in `take` (the fill then runs unpaced).
    urgent: std::sync::atomic::AtomicBool,
}

/// The handle the shard holds.
pub struct SegmentPreparer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SegmentPreparer {
    /// Starts the preparer thread.
    pub fn spawn(spec: PreparerSpec) -> Result<SegmentPreparer> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("corewal-prep-{}", spec.shard.0))
            .spawn(move || prepare_loop(spec, s))
            .map_err(|e| Error::io("spawn segment preparer", None, e))?;
        Ok(SegmentPreparer {
            shared,
            thread: Some(thread),
        })
    }

    /// Asks for segment `seq` to be made ready.
    pub fn request(&self, seq: SegmentSeq) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if !st.knows(seq) {
            st.wanted = Some(seq);
            self.shared.cond.notify_all();
        }
    }

    /// Tells the preparer how full the current segment is (`position` of
    /// `bytes`): it paces the next segment's fill by it.
    pub fn report_fill(&self, position: u64, bytes: u64) {
        let ppm = (u128::from(position) * u128::from(PPM) / u128::from(bytes.max(1))) as u64;
        self.shared.fill_ppm.store(ppm.min(PPM), Ordering::Relaxed);
    }

    /// Returns segment `seq`, waiting for it (and requesting it if nobody did).
    pub fn take(&self, seq: SegmentSeq) -> Result<Segment> {
        let mut st = self.wait_for(seq);
        st.ready.take().expect("waited for").1
    }

    /// Waits until segment `seq` is created (requesting it if nobody did),
    /// without taking it. A failed creation is handed over and forgotten, so
    /// that the next call tries again.
    pub fn wait_ready(&self, seq: SegmentSeq) -> Result<()> {
        let mut st = self.wait_for(seq);
        if st.ready.as_ref().is_some_and(|(_, r)| r.is_ok()) {
            return Ok(());
        }
        st.ready.take().expect("waited for").1.map(drop)
    }

    /// Hands over the file of a reclaimed segment (before the durable log
    /// start): kept to be recycled when it has the size new segments have
    /// and fewer than [`RECYCLED_KEPT_MAX`] wait, else removed.
    pub fn reclaimed(&self, seq: SegmentSeq, path: PathBuf, bytes: u64, segment_bytes: u64) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if bytes == segment_bytes && st.recyclable.len() < RECYCLED_KEPT_MAX {
            st.recyclable.push_back((seq, path));
        } else {
            st.doomed.push((path, bytes));
        }
        self.shared.cond.notify_all();
    }

    /// Space came free (a reclamation): a preparation that failed for lack
    /// of it is tried again at once instead of waiting to be asked.
    pub fn retry_failed(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((seq, Err(_))) = &st.ready {
            let seq = *seq;
            st.ready = None;
            st.wanted = Some(seq);
            self.shared.cond.notify_all();
        }
    }

    /// Reclaimed files waiting to be recycled.
    pub fn recyclable(&self) -> usize {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.recyclable.len()
    }

    /// Segment `seq`'s state without waiting: `Some(Ok)` ready, `Some(Err)`
    /// its preparation failed (the error stays for the next
    /// [`SegmentPreparer::wait_ready`]), `None` not yet.
    pub fn poll(&self, seq: SegmentSeq) -> Option<std::result::Result<(), Error>> {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        match &st.ready {
            Some((s, Ok(_))) if *s == seq => Some(Ok(())),
            Some((s, Err(e))) if *s == seq => Some(Err(e.clone())),
            _ => None,
        }
    }

    /// Whether segment `seq` is created and waiting to be taken.
    pub fn is_ready(&self, seq: SegmentSeq) -> bool {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ready
            .as_ref()
            .is_some_and(|(s, r)| *s == seq && r.is_ok())
    }

    /// Waits until `ready` holds segment `seq`'s outcome.
    fn wait_for(&self, seq: SegmentSeq) -> std::sync::MutexGuard<'_, State> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.ready.as_ref().is_some_and(|(s, _)| *s == seq) {
                self.shared.urgent.store(false, Ordering::Relaxed);
                return st;
            }
            if !self.shared.urgent.swap(true, Ordering::Relaxed) {
                // A paced fill waits on the same condition: run it flat out.
                self.shared.cond.notify_all();
            }
            if !st.knows(seq) {
                // The shard asks in order; anything else ready is stale.
                st.ready = None;
                st.wanted = Some(seq);
                self.shared.cond.notify_all();
            }
            st = self.shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for SegmentPreparer {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stop = true;
            self.shared.cond.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn prepare_loop(spec: PreparerSpec, shared: Arc<Shared>) {
    if let Some(core) = spec.core {
        let _ = crate::cores::pin_current_thread(core);
    }
    crate::io::thread::lower_priority(PREPARER_NICE);
    let mut zeros = AlignedBuf::new(ZERO_FILL_BYTES, spec.block);
    loop {
        let (job, doomed) = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if st.stop {
                    return;
                }
                let doomed = std::mem::take(&mut st.doomed);
                let job = match (st.ready.is_none(), st.wanted) {
                    (true, Some(seq)) => {
                        st.wanted = None;
                        st.preparing = Some(seq);
                        Some((seq, st.recyclable.pop_front()))
                    }
                    _ => None,
                };
                if job.is_some() || !doomed.is_empty() {
                    break (job, doomed);
                }
                st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        for (path, bytes) in doomed {
            remove_reclaimed(&spec, &path, bytes);
        }
        let Some((seq, recycled)) = job else {
            continue;
        };
        let result = prepare(&spec, &shared, seq, recycled, &mut zeros);
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.preparing = None;
        st.ready = Some((seq, result));
        shared.cond.notify_all();
    }
}

/// Segment `seq`: the reclaimed file `recycled` made into it, or a new file
/// if none was at hand (or recycling it failed) and the limit allows.
fn prepare(
    spec: &PreparerSpec,
    shared: &Shared,
    seq: SegmentSeq,
    recycled: Option<(SegmentSeq, PathBuf)>,
    zeros: &mut AlignedBuf,
) -> Result<Segment> {
    let mut header = new_header(
        spec.shard,
        spec.block,
        spec.store_id,
        seq,
        spec.segment_bytes,
    );
    let segment_spec = |header| SegmentSpec {
        shard_dir: &spec.shard_dir,
        header,
        access: spec.access,
        file_mode: spec.file_mode,
        fs: &spec.fs,
    };
    if let Some((from, path)) = recycled {
        header.recycled_from = Some(from);
        match recycle_segment(&segment_spec(header), &path, zeros, &spec.metrics.wal_bytes) {
            Ok(segment) => {
                spec.metrics
                    .segments_recycled
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(segment);
            }
            Err(_) => {
                // Not renamed (or already removed): it goes, and a new
                // segment is made instead.
                remove_reclaimed(spec, &path, spec.segment_bytes);
                header.recycled_from = None;
            }
        }
    }
    let wal_bytes = spec.metrics.wal_bytes.load(Ordering::Relaxed);
    if wal_bytes + spec.segment_bytes > spec.wal_bytes_max {
        return Err(Error::WalFull {
            shard: spec.shard,
            wal_bytes,
            wal_bytes_max: spec.wal_bytes_max,
        });
    }
    let segment = create_segment(&segment_spec(header), zeros, &mut |done, total| {
        pace(shared, done, total)
    })?;
    spec.metrics
        .wal_bytes
        .fetch_add(spec.segment_bytes, Ordering::Relaxed);
    Ok(segment)
}

/// Removes a reclaimed segment file (before the durable log start, so no
/// directory sync is needed: if a crash brings the name back, the next open
/// removes it again), and stops counting its bytes.
fn remove_reclaimed(spec: &PreparerSpec, path: &std::path::Path, bytes: u64) {
    if let Ok(true) = file::remove(&spec.fs, path, "remove reclaimed segment") {
        spec.metrics.wal_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Between two pieces of a fill (`done` of `total` bytes): pauses while the
/// fill is ahead of `used / (1 - LEAD)` of the current segment, unless the
/// shard waits. No burst when a segment starts; done at `1 - LEAD` full.
/// Returns false when the preparer is stopping: the fill is abandoned, so
/// that closing an idle engine does not wait for a whole segment's fill.
fn pace(shared: &Shared, done: u64, total: u64) -> bool {
    // After the last piece nothing is left to pace: the segment is named
    // at once (a fill that waited here, ahead of `used / (1 - LEAD)` clamped
    // to 1, left the spare unnamed until the shard needed it).
    let ahead = |shared: &Shared| {
        let used = shared.fill_ppm.load(Ordering::Relaxed) as f64 / PPM as f64;
        let filled = done as f64 / total.max(1) as f64;
        done < total && filled >= (used / (1.0 - LEAD)).min(1.0)
    };
    // Look again soon while the shard writes, rarely while it idles; `take`
    // wakes the wait at once.
    let mut pause = PAUSE_MIN;
    let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    while ahead(shared) && !shared.urgent.load(Ordering::Relaxed) && !st.stop {
        let before = shared.fill_ppm.load(Ordering::Relaxed);
        st = shared
            .cond
            .wait_timeout(st, pause)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        pause = if shared.fill_ppm.load(Ordering::Relaxed) == before {
            (pause * 2).min(PAUSE_MAX)
        } else {
            PAUSE_MIN
        };
    }
    !st.stop
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path) -> PreparerSpec {
        PreparerSpec {
            shard: ShardId(0),
            shard_dir: dir.to_path_buf(),
            block: 4096,
            store_id: 7,
            segment_bytes: 1 << 20,
            access: Access::Buffered,
            file_mode: 0o600,
            fs: Fs::Real,
            core: None,
            metrics: Arc::new(ShardMetrics::default()),
            wal_bytes_max: u64::MAX,
        }
    }

    #[test]
    fn take_before_ready_then_request_next_hands_out_each_segment_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = SegmentPreparer::spawn(spec(dir.path())).unwrap();
        // The shard takes a segment nobody asked for yet, then asks ahead.
        for seq in 1..=6u64 {
            let s = p.take(SegmentSeq(seq)).unwrap();
            assert_eq!(s.seq, SegmentSeq(seq));
            p.request(SegmentSeq(seq + 1));
            // Requests repeated for the same number change nothing.
            p.request(SegmentSeq(seq + 1));
        }
        drop(p);
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // Segments 1..=6 were taken; 7 was asked for and may or may not have
        // been made before the preparer stopped. Never one twice, no leftovers.
        assert!((6..=7).contains(&names.len()), "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".wal")), "{names:?}");
    }

    #[test]
    fn a_paced_fill_names_the_spare_once_done_without_waiting_for_the_shard() {
        // The current segment is 80% full: past the 75% by which the spare's
        // fill finishes. The spare must be named without a `take`.
        let dir = tempfile::tempdir().unwrap();
        let p = SegmentPreparer::spawn(spec(dir.path())).unwrap();
        p.report_fill(800 << 10, 1 << 20);
        p.request(SegmentSeq(1));
        let path = crate::wal::segment::segment_path(dir.path(), SegmentSeq(1));
        let started = std::time::Instant::now();
        // Named, then (after its directory's sync) handed over as ready.
        while !(path.exists() && p.is_ready(SegmentSeq(1))) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the finished spare was not named and made ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_existing_segment_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = SegmentPreparer::spawn(spec(dir.path())).unwrap();
        let s = p.take(SegmentSeq(1)).unwrap();
        drop(s);
        // Asking for the same number again must fail, not zero the file.
        let again = p.take(SegmentSeq(1));
        assert!(again.is_err(), "segment 1 was created twice");
    }
}
