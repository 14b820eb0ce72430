//! Segments created ahead of use.
//!
//! Creating a segment means writing it whole with zeros and syncing it and
//! its directory: tens of milliseconds for 64 MiB. A shard must not stall its
//! commits for that, so each shard has a preparer thread that keeps the next
//! segment ready. The thread runs on the shard's core at a lower priority
//! (nice 10): it is mostly waiting for the device, and when the shard has
//! work the scheduler prefers the shard.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::Access;
use crate::types::{SegmentSeq, ShardId};
use crate::wal::segment::{create_segment, new_header, Segment, SegmentSpec};

/// Bytes of zeros written per call while filling a segment.
const ZERO_FILL_BYTES: usize = 1 << 20;
/// Nice value of preparer threads.
const PREPARER_NICE: i32 = 10;

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
    /// The shard's core, to share it.
    pub core: Option<usize>,
}

#[derive(Default)]
struct State {
    requested: Option<SegmentSeq>,
    ready: Option<(SegmentSeq, Result<Segment>)>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
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
        if st.requested.is_none() && st.ready.as_ref().is_none_or(|(s, _)| *s != seq) {
            st.requested = Some(seq);
            self.shared.cond.notify_all();
        }
    }

    /// Returns segment `seq`, waiting for it (and requesting it if nobody did).
    pub fn take(&self, seq: SegmentSeq) -> Result<Segment> {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some((s, _)) = &st.ready {
                if *s == seq {
                    let (_, r) = st.ready.take().expect("checked");
                    return r;
                }
                // A segment for another sequence number cannot be used; the
                // shard asks in order, so this is an invariant breach.
                unreachable!("prepared segment {} while {} is wanted", s.0, seq.0);
            }
            if st.requested.is_none() {
                st.requested = Some(seq);
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

fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers; a failure only leaves
    // the thread at normal priority.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, PREPARER_NICE);
    }
}

fn prepare_loop(spec: PreparerSpec, shared: Arc<Shared>) {
    if let Some(core) = spec.core {
        let _ = crate::shard::pin::pin_current_thread(core);
    }
    lower_priority();
    let mut zeros = AlignedBuf::new(ZERO_FILL_BYTES, spec.block);
    loop {
        let seq = {
            let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if st.stop {
                    return;
                }
                if st.ready.is_none() {
                    if let Some(seq) = st.requested.take() {
                        break seq;
                    }
                }
                st = shared.cond.wait(st).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = create_segment(
            &SegmentSpec {
                shard_dir: &spec.shard_dir,
                header: new_header(
                    spec.shard,
                    spec.block,
                    spec.store_id,
                    seq,
                    spec.segment_bytes,
                ),
                access: spec.access,
                file_mode: spec.file_mode,
            },
            &mut zeros,
        );
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ready = Some((seq, result));
        shared.cond.notify_all();
    }
}
