//! The shard's thread and its readiness: spawning it, answering its callers
//! when it starts, fails, panics or stops, and the handle callers hold.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::ShardMetrics;
use crate::recovery::Damage;
use crate::shard::inbox::{Inbox, Request};
use crate::types::ShardId;

use super::run::Shard;
use super::waiters::SHARD;

/// Everything a shard thread needs to start.
pub struct ShardSpec {
    /// The shard.
    pub id: ShardId,
    /// The core it is pinned to (`None`: not pinned).
    pub core: Option<usize>,
    /// The shard's directory.
    pub dir: PathBuf,
    /// The store's identity.
    pub store_id: u64,
    /// The block size.
    pub block: usize,
    /// Engine configuration.
    pub config: Arc<Config>,
    /// The shard's share of `Config::buffer_bytes_max`.
    pub cache_budget: u64,
}

/// The state of a shard's start-up.
#[derive(Debug, Default)]
pub(super) struct Readiness {
    pub(super) state: Mutex<Option<Result<()>>>,
    pub(super) cond: Condvar,
    /// What recovery found damaged and did about it.
    pub(super) damage: Mutex<Vec<Damage>>,
    /// Why the shard stopped serving, once it did (set when its thread ends).
    pub(super) failure: Mutex<Option<Error>>,
}

/// The caller side of a shard.
pub struct ShardHandle {
    /// The shard.
    pub id: ShardId,
    /// Its inbox.
    pub inbox: Arc<Inbox>,
    /// Its counters.
    pub metrics: Arc<ShardMetrics>,
    ready: Arc<Readiness>,
    /// Set by `close`: a shard still recovering stops its replay.
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ShardHandle {
    /// Blocks until the shard has recovered (or failed to).
    pub fn wait_ready(&self) -> Result<()> {
        let mut s = self.ready.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = &*s {
                return r.clone();
            }
            s = self.ready.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The damage recovery found and went past (empty until it finishes).
    pub fn recovery_damage(&self) -> Vec<Damage> {
        self.ready
            .damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the shard finished recovery (successfully or not).
    pub fn is_ready(&self) -> bool {
        self.ready
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Tells a shard still recovering to stop its replay (`close` does too).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Asks the shard to finish what is queued and stop, and joins its
    /// thread. A shard still recovering stops its replay at the next read.
    ///
    /// # Errors
    /// `ShardFailed` when the shard had failed (a write, a sync, its ring, a
    /// panic) — the final sync of a Periodic shard included; `Ok` when it
    /// never started (its open already returned the error).
    pub fn close(&self) -> Result<()> {
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            self.stop.store(true, Ordering::Relaxed);
            // A closed inbox means the shard already stopped.
            let _ = self.inbox.push_blocking(Request::Close);
            let _ = handle.join();
        }
        let failure = self.ready.failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*failure {
            Some(e @ Error::ShardFailed { .. }) => Err(e.clone()),
            Some(e) => Err(Error::ShardFailed {
                shard: self.id,
                cause: Arc::new(e.clone()),
            }),
            None => Ok(()),
        }
    }
}

/// Starts a shard thread. Returns at once; recovery runs on the new thread.
pub fn spawn_shard(spec: ShardSpec) -> Result<ShardHandle> {
    let inbox = Arc::new(Inbox::new(spec.config.inbox_capacity)?);
    let metrics = Arc::new(ShardMetrics::default());
    let ready = Arc::new(Readiness::default());
    let stop = Arc::new(AtomicBool::new(false));
    let id = spec.id;
    let (i, m, r, st) = (inbox.clone(), metrics.clone(), ready.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name(format!("corewal-shard-{}", id.0))
        .spawn(move || shard_main(spec, i, m, r, st))
        .map_err(|e| Error::io("spawn shard thread", None, e))?;
    Ok(ShardHandle {
        id,
        inbox,
        metrics,
        ready,
        stop,
        thread: Mutex::new(Some(thread)),
    })
}

fn set_ready(ready: &Readiness, r: Result<()>) {
    *ready.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    ready.cond.notify_all();
}

/// The error a panic on a shard thread becomes, with the panic's message.
fn panic_error(payload: &(dyn std::any::Any + Send)) -> Error {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    Error::Internal {
        what: format!("the shard thread panicked: {message}"),
    }
}

fn shard_main(
    spec: ShardSpec,
    inbox: Arc<Inbox>,
    metrics: Arc<ShardMetrics>,
    ready: Arc<Readiness>,
    stop: Arc<AtomicBool>,
) {
    let id = spec.id;
    SHARD.set(id);
    // A panic (a broken invariant) must not hang anyone: it ends the shard
    // the way a failed write does, and every waiter is answered with it.
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
        Shard::start(spec, inbox.clone(), metrics, ready.clone(), &stop)
    }));
    let failure = match started {
        Ok(Ok(mut shard)) => {
            set_ready(&ready, Ok(()));
            match std::panic::catch_unwind(AssertUnwindSafe(|| shard.run())) {
                Ok(()) => shard.failed.clone(),
                Err(payload) => {
                    let e = panic_error(&*payload);
                    // Answer everyone the shard owes; if even that panics,
                    // dropping the shard's waiters answers them.
                    let answered = std::panic::catch_unwind(AssertUnwindSafe(|| {
                        shard.fail(e.clone());
                        shard.wake_completed();
                        shard.abandon_io();
                    }));
                    if answered.is_ok() {
                        drop(shard);
                    } else {
                        // Its buffers may still be under the kernel.
                        std::mem::forget(shard);
                    }
                    Some(e)
                }
            }
        }
        Ok(Err(e)) => Some(e),
        Err(payload) => Some(Error::ShardFailed {
            shard: id,
            cause: Arc::new(panic_error(&*payload)),
        }),
    };
    // A shard told to stop while it recovered did not fail.
    let failure = match failure {
        Some(Error::Closed) => None,
        f => f,
    };
    let answered = match &failure {
        Some(e @ Error::ShardFailed { .. }) => e.clone(),
        Some(e) => Error::ShardFailed {
            shard: id,
            cause: Arc::new(e.clone()),
        },
        None => Error::Closed,
    };
    {
        let mut state = ready.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_none() {
            *state = Some(Err(failure.clone().unwrap_or(Error::Closed)));
            ready.cond.notify_all();
        }
    }
    *ready.failure.lock().unwrap_or_else(|p| p.into_inner()) = failure;
    inbox.close(answered);
}
