//! A shard's bounded inbox: how callers on any thread reach the shard.
//!
//! Callers push onto a lock-free bounded queue. A busy shard drains it without
//! any syscall on either side; only a shard that announced it is about to
//! sleep is woken, through its eventfd, by the first caller that sees the
//! announcement. A full queue is backpressure: blocking callers wait, futures
//! stay pending, nothing is buffered beyond the bound.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;

use crate::error::{Error, Result};
use crate::io::wake::WakeFd;
use crate::shard::ack::Ack;
use crate::shard::usage::WalUsage;
use crate::types::Record;
use crate::types::{ChannelId, Offset};

/// What a caller asks of a shard.
pub enum Request {
    /// Register `name` (idempotent); answer with the channel's id.
    Register {
        /// Validated channel name.
        name: Box<str>,
        /// Answer.
        ack: Arc<Ack<ChannelId>>,
    },
    /// Drop the channel `name` (idempotent); answer once the drop is durable.
    Unregister {
        /// Validated channel name.
        name: Box<str>,
        /// Answer.
        ack: Arc<Ack<()>>,
    },
    /// Append one record; answer with its offset once durable.
    Append {
        /// Target channel.
        channel: ChannelId,
        /// The record.
        record: Bytes,
        /// Answer.
        ack: Arc<Ack<Offset>>,
    },
    /// Append records atomically in one commit; answer with the first offset.
    AppendBatch {
        /// Target channel.
        channel: ChannelId,
        /// The records, in order.
        records: Vec<Bytes>,
        /// Answer.
        ack: Arc<Ack<Offset>>,
    },
    /// Read the channel's records with offsets in `from..to`.
    Read {
        /// Source channel.
        channel: ChannelId,
        /// First offset wanted.
        from: Offset,
        /// One past the last offset wanted.
        to: Offset,
        /// Most payload bytes to return (at least one record is).
        bytes_max: u64,
        /// Answer.
        ack: Arc<Ack<Vec<Record>>>,
    },
    /// Follow the channel: the records from where `follower` stands on (at
    /// its first request, `from`), up to `bytes_max`; when there are none
    /// yet, answered as soon as one is acknowledged (see `shard/tails.rs`).
    Tail {
        /// Source channel.
        channel: ChannelId,
        /// The subscription asking.
        follower: Follower,
        /// Where a new subscription starts.
        from: Offset,
        /// Most payload bytes to return (at least one record is).
        bytes_max: u64,
        /// Answer.
        ack: Arc<Ack<Vec<Record>>>,
    },
    /// The channel's next offset (one past its last acknowledged record).
    NextOffset {
        /// The channel.
        channel: ChannelId,
        /// Answer.
        ack: Arc<Ack<Offset>>,
    },
    /// The channel's first live offset (the first not checkpointed).
    FirstOffset {
        /// The channel.
        channel: ChannelId,
        /// Answer.
        ack: Arc<Ack<Offset>>,
    },
    /// Checkpoint the channel's records through `through`; answer once the
    /// checkpoint is durable.
    Checkpoint {
        /// The channel.
        channel: ChannelId,
        /// The last offset no longer needed.
        through: Offset,
        /// Answer.
        ack: Arc<Ack<()>>,
    },
    /// Remove the channel's records from `first_removed` on; answer once the
    /// truncation is durable.
    Truncate {
        /// The channel.
        channel: ChannelId,
        /// The first offset removed (the next append gets it).
        first_removed: Offset,
        /// Answer.
        ack: Arc<Ack<()>>,
    },
    /// What the shard's WAL holds on disk, and which channels hold it.
    WalUsage {
        /// Answer.
        ack: Arc<Ack<WalUsage>>,
    },
    /// Finish everything queued before this request, then stop.
    Close,
}

impl Request {
    /// Answers the request with `error` without running it.
    pub fn fail(self, error: Error) {
        match self {
            Request::Register { ack, .. } => ack.complete(Err(error)),
            Request::Append { ack, .. }
            | Request::AppendBatch { ack, .. }
            | Request::NextOffset { ack, .. }
            | Request::FirstOffset { ack, .. } => ack.complete(Err(error)),
            Request::Read { ack, .. } | Request::Tail { ack, .. } => ack.complete(Err(error)),
            Request::WalUsage { ack } => ack.complete(Err(error)),
            Request::Unregister { ack, .. }
            | Request::Checkpoint { ack, .. }
            | Request::Truncate { ack, .. } => ack.complete(Err(error)),
            Request::Close => {}
        }
    }
}

/// A subscription as its shard knows it: an id unique in the process, and
/// what the handle and the shard share.
#[derive(Clone, Debug)]
pub struct Follower {
    /// Unique among the process's subscriptions.
    pub id: u64,
    /// Shared with the handle.
    pub shared: Arc<FollowerShared>,
}

/// What a subscription's handle and its shard share.
#[derive(Debug, Default)]
pub struct FollowerShared {
    /// Set once the handle is dropped (the shard then forgets it).
    pub gone: AtomicBool,
    /// Records the subscription was given that its shard read back from
    /// the WAL (the payload budget had let them go).
    pub from_wal: AtomicU64,
}

/// One shard's inbox, shared by every caller and the shard.
pub struct Inbox {
    queue: ArrayQueue<Request>,
    /// Set by the shard just before it sleeps; cleared by the caller that wakes it.
    sleeping: AtomicBool,
    /// Wake-ups sent, for telling a lost wake-up from a late one.
    wakes_sent: AtomicU64,
    /// Set by the shard once it has stopped for good.
    closed: AtomicBool,
    /// Why the inbox closed: what requests pushed after it are answered.
    closed_with: Mutex<Option<Error>>,
    wake: WakeFd,
    space_waiters: AtomicUsize,
    space_lock: Mutex<Vec<Waker>>,
    space_cond: Condvar,
}

impl Inbox {
    /// An inbox holding at most `capacity` requests.
    pub fn new(capacity: usize) -> Result<Inbox> {
        Ok(Inbox {
            queue: ArrayQueue::new(capacity),
            sleeping: AtomicBool::new(false),
            wakes_sent: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            closed_with: Mutex::new(None),
            wake: WakeFd::new()?,
            space_waiters: AtomicUsize::new(0),
            space_lock: Mutex::new(Vec::new()),
            space_cond: Condvar::new(),
        })
    }

    /// The eventfd the shard waits on.
    pub fn wake_fd(&self) -> &WakeFd {
        &self.wake
    }

    /// Pushes `request`, waiting while the queue is full.
    pub fn push_blocking(&self, mut request: Request) -> Result<()> {
        loop {
            match self.try_push(request) {
                Ok(()) => return Ok(()),
                Err(r) => request = r?,
            }
            self.space_waiters.fetch_add(1, Ordering::SeqCst);
            let guard = self.space_lock.lock().unwrap_or_else(|p| p.into_inner());
            if self.queue.is_full() && !self.closed.load(Ordering::SeqCst) {
                // The timeout bounds a lost notification; the shard notifies
                // after every drain that found waiters.
                let _ = self
                    .space_cond
                    .wait_timeout(guard, Duration::from_millis(10));
            }
            self.space_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Tries to push without waiting. `Err(Ok(request))` hands the request
    /// back when the queue is full; `Err(Err(_))` when the shard has stopped.
    pub fn try_push(&self, request: Request) -> std::result::Result<(), Result<Request>> {
        if self.closed.load(Ordering::SeqCst) {
            let e = self.close_error();
            request.fail(e.clone());
            return Err(Err(e));
        }
        if let Err(request) = self.queue.push(request) {
            return Err(Ok(request));
        }
        // Pairs with the fence in `prepare_sleep`: either the shard sees our
        // request, or we see its announcement and wake it.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.wakes_sent.fetch_add(1, Ordering::Relaxed);
            self.wake.wake();
        }
        if self.closed.load(Ordering::SeqCst) {
            // The shard stopped after our check: it may not have seen the
            // request. Fail whatever is left; any thread may.
            self.fail_all(self.close_error());
        }
        Ok(())
    }

    /// Registers a waker for space (async callers facing a full queue).
    pub fn wait_for_space(&self, waker: &Waker) {
        let mut wakers = self.space_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.space_waiters.fetch_add(1, Ordering::SeqCst);
        wakers.push(waker.clone());
    }

    /// Shard side: takes the next request.
    pub fn pop(&self) -> Option<Request> {
        self.queue.pop()
    }

    /// Shard side: whether requests are queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Shard side: wakes callers waiting for space, if any.
    pub fn notify_space(&self) {
        if self.space_waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        let wakers = {
            let mut w = self.space_lock.lock().unwrap_or_else(|p| p.into_inner());
            let taken = std::mem::take(&mut *w);
            self.space_waiters.fetch_sub(taken.len(), Ordering::SeqCst);
            taken
        };
        self.space_cond.notify_all();
        for w in wakers {
            w.wake();
        }
    }

    /// Shard side: announces sleep. Returns false (and withdraws the
    /// announcement) when requests arrived meanwhile.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.queue.is_empty() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Wake-ups sent so far.
    pub fn wakes_sent(&self) -> u64 {
        self.wakes_sent.load(Ordering::Relaxed)
    }

    /// Shard side: the shard is awake again.
    pub fn woke(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Shard side: stop accepting requests and fail the queued ones.
    pub fn close(&self, error: Error) {
        *self.closed_with.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.clone());
        self.closed.store(true, Ordering::SeqCst);
        self.fail_all(error);
        self.notify_space();
        self.space_cond.notify_all();
    }

    /// The error requests get once the inbox closed (`Error::Closed` after
    /// a clean stop, `ShardFailed` after a failure).
    fn close_error(&self) -> Error {
        self.closed_with
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(Error::Closed)
    }

    fn fail_all(&self, error: Error) {
        while let Some(r) = self.queue.pop() {
            r.fail(error.clone());
        }
    }
}
