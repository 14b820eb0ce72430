//! Following a channel: [`Channel::subscribe`] and [`Subscription`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use corewal_engine::shard::inbox::{Follower, FollowerShared, Request};

use crate::{Channel, Error, Offset, Record, Result, Submit};

/// Payload bytes a [`Subscription`] fetches from its shard at a time unless
/// told otherwise ([`Subscription::read_ahead`]): what it holds at most
/// besides one record larger than this.
pub const SUBSCRIPTION_READ_AHEAD_BYTES: u64 = 1 << 20;

/// Subscription ids, unique in the process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A channel's records from an offset on, then each new one as soon as it is
/// acknowledged, in offset order, without polling. Made by
/// [`Channel::subscribe`].
///
/// A blocking [`Iterator`] (each `next` waits for the next record) and an
/// async [`futures_core::Stream`] (no runtime needed: the shard wakes the
/// task), both of `Result<Record>`; [`Subscription::next_timeout`] waits a
/// bounded time.
///
/// * **What it yields.** What a read would: records acknowledged by their
///   shard — durable, in [`Durability::Sync`](crate::Durability::Sync) —
///   never one on its way to the device, nor one checkpointed or truncated
///   away before it is fetched. Records below the channel's first live
///   offset are gone: a subscription from below it starts at it, and one
///   whose next records are checkpointed away meanwhile goes on at the
///   first live one (each record carries its offset, so the gap shows).
/// * **Memory.** It fetches at most [`Subscription::read_ahead`] payload
///   bytes at a time (at least one record) and holds nothing else; the
///   shard keeps only where it stands. A subscriber far behind the writers
///   reads records the memory budget let go back from the WAL, as
///   [`Channel::read`] does, and holds no more for it.
/// * **Cost to writers.** None for a subscription that is busy elsewhere or
///   dropped; one waiting for new records is answered by the
///   acknowledgement of the commit that holds them.
/// * **How it ends.** With an error, after which the iterator and the
///   stream end: [`Error::SubscriptionTruncated`] once a truncation of
///   the channel below the subscription's position is durable (records it
///   delivered are gone; it is given nothing after the truncation, and
///   records it fetched before it come first), [`Error::ChannelDropped`] once the channel's drop is durable,
///   [`Error::OffsetOutOfRange`] when it was asked to start beyond the
///   channel's next offset, [`Error::ShardFailed`] or [`Error::Closed`] when
///   the shard fails or the engine closes, and the errors of
///   [`Channel::read`] for a payload that cannot be read back.
/// * **Restarts.** A subscription does not outlive its engine: after a
///   reopen, subscribe again from the offset the service stored (one past
///   the last record it processed, [`Subscription::position`]).
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
/// use corewal::Offset;
/// let ch = engine.register("dml")?;
/// ch.append(b"a")?;
/// let mut sub = ch.subscribe(Offset(0));
/// let writer = {
///     let ch = ch.clone();
///     std::thread::spawn(move || ch.append(b"b"))
/// };
/// assert_eq!(&sub.next().unwrap()?.data[..], b"a");
/// assert_eq!(&sub.next().unwrap()?.data[..], b"b"); // waits for the writer
/// assert_eq!(sub.position(), Offset(2));
/// writer.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Subscription {
    channel: Channel,
    follower: Follower,
    read_ahead: u64,
    /// Where it was asked to start (its shard's position once it asked).
    from: Offset,
    /// One past the last record yielded (`from` before the first).
    position: Offset,
    fetched: VecDeque<Record>,
    /// The request on its way, kept across a timed-out wait or a pending
    /// poll.
    pending: Option<Submit<Vec<Record>>>,
    ended: Option<Error>,
    /// The end was yielded: the iterator and the stream are done.
    finished: bool,
}

impl Channel {
    /// Follows the channel from `from` on: see [`Subscription`]. Nothing is
    /// sent to the shard until the subscription is first read; errors
    /// (a start beyond the channel's next offset, a dropped channel) come
    /// from there.
    pub fn subscribe(&self, from: Offset) -> Subscription {
        Subscription {
            channel: self.clone(),
            follower: Follower {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                shared: Arc::new(FollowerShared::default()),
            },
            read_ahead: SUBSCRIPTION_READ_AHEAD_BYTES,
            from,
            position: from,
            fetched: VecDeque::new(),
            pending: None,
            ended: None,
            finished: false,
        }
    }
}

impl Subscription {
    /// Fetches at most `bytes` payload bytes from the shard at a time
    /// (default [`SUBSCRIPTION_READ_AHEAD_BYTES`]; at least one record is
    /// always fetched, so 0 fetches one at a time).
    #[must_use]
    pub fn read_ahead(mut self, bytes: u64) -> Self {
        self.read_ahead = bytes;
        self
    }

    /// The channel followed.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// One past the offset of the last record yielded; before the first,
    /// the offset it was asked to start at. Store it to subscribe again
    /// from there after a restart.
    pub fn position(&self) -> Offset {
        self.position
    }

    /// How many of the records given so far its shard read back from the
    /// WAL, the memory budget having let their payloads go: a subscriber
    /// that fell that far behind the writers.
    pub fn records_from_wal(&self) -> u64 {
        self.follower.shared.from_wal.load(Ordering::Relaxed)
    }

    /// The next record, waiting at most `timeout` for it: `Ok(None)` when
    /// none came in time (the subscription goes on; call again). The wait
    /// is for the shard's answer; a request that finds its shard's inbox
    /// full waits for room first, as every call does (backpressure).
    ///
    /// # Errors
    /// The error that ended the subscription (see [`Subscription`]), again
    /// on every later call.
    pub fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Record>> {
        if let Some(r) = self.take_fetched() {
            return Ok(Some(r));
        }
        if let Some(e) = &self.ended {
            self.finished = true;
            return Err(e.clone());
        }
        let mut submit = self.pending.take().unwrap_or_else(|| self.request());
        match submit.wait_timeout(timeout) {
            None => {
                self.pending = Some(submit);
                Ok(None)
            }
            Some(answer) => match self.answered(answer) {
                Ok(()) => Ok(self.take_fetched()),
                Err(e) => {
                    self.finished = true;
                    Err(e)
                }
            },
        }
    }

    fn request(&self) -> Submit<Vec<Record>> {
        let ch = &self.channel.inner;
        Submit::to(&ch.inbox, |ack| Request::Tail {
            channel: ch.id,
            follower: self.follower.clone(),
            from: self.from,
            bytes_max: self.read_ahead,
            ack,
        })
    }

    fn take_fetched(&mut self) -> Option<Record> {
        let r = self.fetched.pop_front()?;
        self.position = Offset(r.offset.0 + 1);
        Some(r)
    }

    /// Takes the shard's answer: records (never none), or the end.
    fn answered(&mut self, answer: Result<Vec<Record>>) -> Result<()> {
        match answer {
            Ok(records) => {
                debug_assert!(!records.is_empty(), "a subscription answered with nothing");
                self.fetched.extend(records);
                Ok(())
            }
            Err(e) => Err(self.end(e)),
        }
    }

    fn end(&mut self, e: Error) -> Error {
        self.ended = Some(e.clone());
        e
    }

    /// The iterator's and the stream's item once nothing is fetched:
    /// the end, once, then nothing.
    fn ended_item(&mut self) -> Option<Result<Record>> {
        if self.finished {
            return None;
        }
        self.finished = true;
        self.ended.clone().map(Err)
    }
}

impl Iterator for Subscription {
    type Item = Result<Record>;

    /// Waits for the next record; after the error that ended the
    /// subscription, `None`.
    fn next(&mut self) -> Option<Result<Record>> {
        if let Some(r) = self.take_fetched() {
            return Some(Ok(r));
        }
        if self.ended.is_none() {
            let submit = self.pending.take().unwrap_or_else(|| self.request());
            let answer = submit.wait();
            if self.answered(answer).is_ok() {
                return self.take_fetched().map(Ok);
            }
        }
        self.ended_item()
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Record>;

    /// The next record once acknowledged; after the error that ended the
    /// subscription, `None`. Dropping the stream while it waits costs the
    /// writers nothing: its shard forgets it at the channel's next record
    /// or the shard's next new subscription.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Record>>> {
        let this = self.get_mut();
        if let Some(r) = this.take_fetched() {
            return Poll::Ready(Some(Ok(r)));
        }
        if this.ended.is_none() {
            let mut submit = this.pending.take().unwrap_or_else(|| this.request());
            match submit.poll(cx) {
                Poll::Pending => {
                    this.pending = Some(submit);
                    return Poll::Pending;
                }
                Poll::Ready(answer) => {
                    if this.answered(answer).is_ok() {
                        return Poll::Ready(this.take_fetched().map(Ok));
                    }
                }
            }
        }
        Poll::Ready(this.ended_item())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The shard forgets the subscription when it next looks (a request
        // of it still parked is answered into nothing).
        self.follower.shared.gone.store(true, Ordering::Release);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel.name())
            .field("position", &self.position)
            .field("fetched", &self.fetched.len())
            .field("ended", &self.ended)
            .finish()
    }
}
