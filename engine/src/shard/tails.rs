//! Subscriptions: callers following a channel's acknowledged tail.
//!
//! A subscription asks with [`Request::Tail`] for the records after the
//! last ones it was given; the shard keeps, for each subscription, the
//! offset it stands at (its *position*). A request is answered at once with
//! what is there, up to its byte bound, payloads from memory or read back
//! from the WAL exactly as [`Request::Read`] answers; when nothing is there
//! yet it is *parked* on its channel and answered by the acknowledgement of
//! the channel's next commit. Writers pay nothing for channels nobody waits
//! on: an acknowledgement looks at parked requests only when there are some,
//! and a subscription that is dropped is forgotten (its handle sets a flag
//! the shard reads when it next looks at subscriptions).
//!
//! A subscription ends with an error when the records it was given stop
//! being the channel's: a truncation below its position (the answer to its
//! next request, or to the parked one, once the truncation is durable —
//! nothing more is given meanwhile), or the channel's drop (once durable,
//! as for any call on a dropped channel). A checkpoint past its
//! position does not end it: like a read, it goes on at the first live
//! record, whose offset shows the gap. A shard that fails, or closes,
//! answers parked requests with its error: nothing more will come.
//!
//! [`Request::Tail`]: crate::shard::inbox::Request::Tail
//! [`Request::Read`]: crate::shard::inbox::Request::Read

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::buffer::channel::Found;
use crate::error::Error;
use crate::shard::ack::Ack;
use crate::shard::inbox::{Follower, FollowerShared};
use crate::types::{ChannelId, CommitSeq, Offset, Record};

use super::reads::Purpose;
use super::run::Shard;
use super::waiters::{Owed, Waiter};

/// What the shard knows of one subscription.
struct Following {
    channel: ChannelId,
    /// The next offset it is given.
    position: Offset,
    /// Answered once: it has been checked against the channel.
    started: bool,
    /// Why it ended, and the commit of the change that ended it: told at
    /// its next request once that commit is durable.
    ended: Option<(Error, CommitSeq)>,
    shared: Arc<FollowerShared>,
}

/// A request waiting for its channel's next acknowledged record.
struct Parked {
    id: u64,
    bytes_max: u64,
    ack: Owed<Vec<Record>>,
}

/// The shard's subscriptions.
#[derive(Default)]
pub(super) struct Tails {
    following: HashMap<u64, Following>,
    parked: HashMap<ChannelId, Vec<Parked>>,
    /// Parked requests whose channel had a record acknowledged (or was
    /// dropped): served again by [`Shard::serve_woken_tails`].
    woken: Vec<Parked>,
}

impl Tails {
    /// Whether any request is parked (acknowledgements look further only
    /// then).
    pub(super) fn any_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// A record of `channel` was acknowledged, or the channel changed: its
    /// parked requests are served again.
    pub(super) fn wake(&mut self, channel: ChannelId) {
        if let Some(p) = self.parked.remove(&channel) {
            self.woken.extend(p);
        }
    }

    /// Subscriptions of `channel` standing beyond `first_removed` end: the
    /// records they were given from there on are gone.
    /// They hear of it once the truncation's commit is durable (and are
    /// given nothing more meanwhile).
    pub(super) fn truncated(
        &mut self,
        channel: ChannelId,
        name: &str,
        first_removed: Offset,
        commit: CommitSeq,
    ) {
        let mut ended = false;
        for f in self.following.values_mut() {
            if f.channel == channel && f.position > first_removed && f.ended.is_none() {
                let e = Error::SubscriptionTruncated {
                    channel: name.to_string(),
                    position: f.position.0,
                    first_removed: first_removed.0,
                };
                f.ended = Some((e, commit));
                ended = true;
            }
        }
        if ended {
            self.wake(channel);
        }
    }

    /// Forgets the subscriptions whose handles were dropped, and their
    /// parked requests.
    fn forget_gone(&mut self) {
        self.following
            .retain(|_, f| !f.shared.gone.load(Ordering::Acquire));
        let following = &self.following;
        self.parked.retain(|_, v| {
            v.retain(|p| following.contains_key(&p.id));
            !v.is_empty()
        });
    }

    /// Answers every parked request with `error` (the shard failed or
    /// closes: nothing more will be acknowledged).
    pub(super) fn end_parked(&mut self, error: &Error) {
        for p in self
            .parked
            .drain()
            .flat_map(|(_, v)| v)
            .chain(self.woken.drain(..))
        {
            self.following.remove(&p.id);
            p.ack.complete(Err(error.clone()));
        }
    }
}

impl Shard {
    /// A subscription's request: see the module's comment.
    pub(super) fn accept_tail(
        &mut self,
        channel: ChannelId,
        follower: Follower,
        from: Offset,
        bytes_max: u64,
        ack: Arc<Ack<Vec<Record>>>,
    ) {
        if !self.tails.following.contains_key(&follower.id) {
            // A new subscription: a good moment to forget dropped ones.
            self.tails.forget_gone();
            self.tails.following.insert(
                follower.id,
                Following {
                    channel,
                    position: from,
                    started: false,
                    ended: None,
                    shared: follower.shared,
                },
            );
        }
        self.serve_tail(follower.id, bytes_max, ack.into());
    }

    /// Answers subscription `id`'s request, or parks it.
    fn serve_tail(&mut self, id: u64, bytes_max: u64, ack: Owed<Vec<Record>>) {
        let Some(f) = self.tails.following.get_mut(&id) else {
            // Forgotten (dropped): nobody waits for the answer.
            ack.complete(Err(Error::Closed));
            return;
        };
        if f.shared.gone.load(Ordering::Acquire) {
            self.tails.following.remove(&id);
            ack.complete(Err(Error::Closed));
            return;
        }
        if let Some((e, commit)) = f.ended.take() {
            self.tails.following.remove(&id);
            self.answer_when_durable(commit, Waiter::EndedRead(ack, e));
            return;
        }
        let (channel, position, started) = (f.channel, f.position, f.started);
        if !started {
            if let Err(r) = self.table.following(channel, position) {
                self.tails.following.remove(&id);
                self.refuse(r, ack.into_ack(), Waiter::DroppedRead);
                return;
            }
        }
        let found = match self
            .table
            .read(channel, position, Offset(u64::MAX), bytes_max)
        {
            Ok(found) => found,
            Err(r) => {
                self.tails.following.remove(&id);
                self.refuse(r, ack.into_ack(), Waiter::DroppedRead);
                return;
            }
        };
        let f = self.tails.following.get_mut(&id).expect("checked above");
        f.started = true;
        if let Some(last) = found.last() {
            f.position = Offset(last.offset().0 + 1);
            let from_wal = found
                .iter()
                .filter(|r| matches!(r, Found::InWal { .. }))
                .count();
            f.shared
                .from_wal
                .fetch_add(from_wal as u64, Ordering::Relaxed);
            self.read_found(channel, found, Purpose::Caller(ack.into_ack()));
            return;
        }
        // Nothing to give yet: wait for the channel's next record, unless
        // none will come.
        let over = self
            .shard_failed()
            .or(self.closing.then_some(Error::Closed));
        if let Some(e) = over {
            self.tails.following.remove(&id);
            ack.complete(Err(e));
            return;
        }
        self.tails
            .parked
            .entry(channel)
            .or_default()
            .push(Parked { id, bytes_max, ack });
    }

    /// Serves again the parked requests that an acknowledgement, a
    /// truncation or a drop woke.
    pub(super) fn serve_woken_tails(&mut self) {
        for p in std::mem::take(&mut self.tails.woken) {
            self.serve_tail(p.id, p.bytes_max, p.ack);
        }
    }

    /// Whether woken requests wait to be served.
    pub(super) fn tails_woken(&self) -> bool {
        !self.tails.woken.is_empty()
    }
}
