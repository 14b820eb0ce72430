//! What the shard owes its callers: the acks of queued requests, answered
//! exactly once, also when the shard thread unwinds.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::shard::ack::Ack;
use crate::types::{ChannelId, Offset, ShardId};

/// An ack the shard owes. If the shard unwinds (a broken invariant) before
/// answering, dropping it answers with `Error::Internal`, so that no caller
/// waits forever.
pub(super) struct Owed<T>(Option<Arc<Ack<T>>>);

impl<T> Owed<T> {
    pub(super) fn complete(mut self, r: Result<T>) {
        if let Some(ack) = self.0.take() {
            ack.complete(r);
        }
    }

    /// The ack itself, for a path that answers it (or owes it again).
    pub(super) fn into_ack(mut self) -> Arc<Ack<T>> {
        self.0.take().expect("an owed ack is taken once")
    }
}

impl<T> From<Arc<Ack<T>>> for Owed<T> {
    fn from(ack: Arc<Ack<T>>) -> Self {
        Owed(Some(ack))
    }
}

impl<T> Drop for Owed<T> {
    fn drop(&mut self) {
        if let Some(ack) = self.0.take() {
            let e = if std::thread::panicking() {
                // Unwinding from a panic on the shard thread: the shard has
                // failed; its message goes to those answered after the unwind.
                Error::ShardFailed {
                    shard: SHARD.get(),
                    cause: Arc::new(Error::Internal {
                        what: "the shard thread panicked".into(),
                    }),
                }
            } else {
                Error::Internal {
                    what: "the shard stopped before answering".into(),
                }
            };
            ack.complete(Err(e));
        }
    }
}

thread_local! {
    /// The shard this thread runs, for answers given while unwinding.
    pub(super) static SHARD: std::cell::Cell<ShardId> = const { std::cell::Cell::new(ShardId(0)) };
}

/// What a queued request waits for.
pub(super) enum Waiter {
    Offset(Owed<Offset>, Offset),
    Channel(Owed<ChannelId>, ChannelId),
    Unit(Owed<()>),
    /// A call on a channel whose drop is not yet durable: answered
    /// `ChannelDropped` once it is, with the shard's error if it fails.
    DroppedOffset(Owed<Offset>, Box<str>),
    DroppedRead(Owed<Vec<crate::types::Record>>, Box<str>),
    DroppedUnit(Owed<()>, Box<str>),
    /// A subscription's request, ended by a change (a truncation below it):
    /// answered with the error once the change is durable, with the
    /// shard's error if it fails.
    EndedRead(Owed<Vec<crate::types::Record>>, Error),
}

pub(super) fn complete_waiter(w: Waiter, r: Result<()>) {
    let dropped = |name: Box<str>| Error::ChannelDropped {
        name: name.into_string(),
    };
    match (w, r) {
        (Waiter::Offset(ack, off), Ok(())) => ack.complete(Ok(off)),
        (Waiter::Channel(ack, id), Ok(())) => ack.complete(Ok(id)),
        (Waiter::Unit(ack), r) => ack.complete(r),
        (Waiter::Offset(ack, _), Err(e)) => ack.complete(Err(e)),
        (Waiter::Channel(ack, _), Err(e)) => ack.complete(Err(e)),
        (Waiter::DroppedOffset(ack, name), r) => ack.complete(r.and(Err(dropped(name)))),
        (Waiter::DroppedRead(ack, name), r) => ack.complete(r.and(Err(dropped(name)))),
        (Waiter::DroppedUnit(ack, name), r) => ack.complete(r.and(Err(dropped(name)))),
        (Waiter::EndedRead(ack, ended), r) => ack.complete(r.and(Err(ended))),
    }
}
