//! corewal keeps **channels** — named, append-only streams of records —
//! durable on local NVMe, for services that need a write-ahead log per stream
//! without a global lock, a syscall per record or a recovery that blocks on
//! itself.
//!
//! One shard per core owns a disjoint set of channels (by a stable hash of the
//! name) and group-commits their appends into its own `O_DIRECT` WAL segments
//! through its own `io_uring`. An append returns when its bytes, and every
//! byte before them in the shard, are on stable storage. On open every shard
//! replays its own WAL on its own thread; registering a channel is idempotent
//! and never fails because the channel already exists.
//!
//! ```
//! use corewal::{Config, Engine, Offset};
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(Config::new(dir.path()))?;   // recovers in parallel
//! let ch = engine.register("dml_3_v0")?;                 // idempotent
//! let first = ch.append(b"record")?;                     // durable on return
//! assert_eq!(first, Offset(0));
//! let records = ch.read(..)?;
//! assert_eq!(&records[0].data[..], b"record");
//! engine.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::ops::{Bound, RangeBounds};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use corewal_engine::runtime::Runtime;
use corewal_engine::shard::ack::Ack;
use corewal_engine::shard::inbox::{Inbox, Request};
use corewal_engine::types::ChannelId;

pub use bytes;
pub use corewal_engine::config::{Backend, Config, Durability, RecoveryMode, SyncMethod};
pub use corewal_engine::error::{Error, Result};
#[cfg(feature = "testing")]
pub use corewal_engine::io::faulty::{FaultEffect, FaultPlan};
pub use corewal_engine::metrics::ShardMetricsSnapshot as Metrics;
pub use corewal_engine::recovery::{Damage, DamageAction, DamageKind};
pub use corewal_engine::shard::usage::{WalHolder, WalUsage, WAL_HOLDERS_REPORTED};
pub use corewal_engine::types::{Offset, Record, SegmentSeq, ShardId};
pub use subscribe::{Subscription, SUBSCRIPTION_READ_AHEAD_BYTES};

mod subscribe;

/// The simulated disk behind [`Backend::Simulated`], for tests of what
/// survives power cuts and device faults (feature `testing`). Never for data
/// you want to keep.
#[cfg(feature = "testing")]
pub mod sim {
    pub use corewal_engine::io::fs::FsOp;
    pub use corewal_engine::io::sim::{
        PowerCutReport, SimDisk, SimFault, SimReadFault, SimStats, SIM_SECTOR_BYTES,
    };
}

/// An open data directory and its running shards.
///
/// Dropping the engine closes it like [`Engine::close`], ignoring errors.
pub struct Engine {
    runtime: Runtime,
}

impl Engine {
    /// Opens (or creates) the data directory, starts one shard per selected
    /// core and waits until every shard has replayed its WAL.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// An invalid `Config`; a directory locked by another engine
    /// (`Error::DirectoryLocked`); another shard count than the directory's
    /// (`Error::ShardCountMismatch`); `io_uring` or `O_DIRECT` unavailable
    /// (the error names the cause and `Config::backend`); damage in the WAL
    /// (`Error::Corruption`); any I/O error.
    pub fn open(config: Config) -> Result<Engine> {
        let engine = Engine::start(config)?;
        engine.runtime.wait_ready()?;
        Ok(engine)
    }

    /// Like [`Engine::open`] but returns as soon as the shards have started;
    /// each shard replays its WAL on its own thread meanwhile. Requests for a
    /// channel wait for that channel's shard only.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// let engine = corewal::Engine::start(corewal::Config::new(dir.path()))?;
    /// let ch = engine.register("ready-when-its-shard-is")?;
    /// engine.wait_ready()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Engine::open`], except that WAL damage is reported by
    /// [`Engine::wait_ready`] and by requests to the damaged shard.
    pub fn start(config: Config) -> Result<Engine> {
        Ok(Engine {
            runtime: Runtime::start(config)?,
        })
    }

    /// Waits until every shard has replayed its WAL.
    ///
    /// # Errors
    /// The first shard's recovery error, if any.
    pub fn wait_ready(&self) -> Result<()> {
        self.runtime.wait_ready()
    }

    /// Returns the channel called `name`, creating it if needed. Idempotent:
    /// the same name always yields the same channel — registered before a
    /// crash, found by recovery, or registered a moment ago by another thread.
    /// A new channel is durable when this returns.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// let a = engine.register("orders")?;
    /// let b = engine.register("orders")?;
    /// assert_eq!(a, b);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::InvalidChannelName` for an empty name, one over 255 bytes, or
    /// one with a byte outside visible ASCII; `Error::NoSpace` (retryable)
    /// when a new channel's registration needs a segment that cannot be
    /// created for lack of space; `Error::ShardFailed` when the channel's
    /// shard has failed; `Error::Closed` after close.
    pub fn register(&self, name: &str) -> Result<Channel> {
        self.register_async(name)?.wait()
    }

    /// [`Engine::register`] as a future. The name is checked at once.
    ///
    /// # Errors
    /// `Error::InvalidChannelName` at once; the rest through the future.
    pub fn register_async(&self, name: &str) -> Result<RegisterFuture> {
        corewal_engine::validate_channel_name(name)?;
        let shard = self.runtime.shard_for(name);
        Ok(RegisterFuture {
            submit: Submit::to(&shard.inbox, |ack| Request::Register {
                name: name.into(),
                ack,
            }),
            name: name.into(),
            shard: shard.id,
            record_bytes_max: self.runtime.config().record_bytes_max,
        })
    }

    /// Drops the channel called `name`: its records are gone and its handles
    /// fail with `Error::ChannelDropped`. Durable when this returns, and
    /// idempotent: dropping a name that is not registered succeeds and writes
    /// nothing. Registering the name again creates a fresh channel whose
    /// offsets continue after the dropped channel's last one, so an offset
    /// never names two different records. (The one exception is
    /// [`Channel::truncate_from`]: an offset it removed names the record
    /// appended in its place.)
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// let old = engine.register("tmp")?;
    /// old.append(b"x")?;
    /// engine.unregister("tmp")?;
    /// engine.unregister("tmp")?;                    // idempotent
    /// let new = engine.register("tmp")?;
    /// assert_eq!(new.append(b"y")?, corewal::Offset(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::InvalidChannelName`; `Error::NoSpace` (retryable, as for
    /// [`Channel::append`]); `Error::ShardFailed`; `Error::Closed`.
    pub fn unregister(&self, name: &str) -> Result<()> {
        self.unregister_async(name)?.wait()
    }

    /// [`Engine::unregister`] as a future. The name is checked at once.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// engine.register("tmp")?;
    /// let dropped = engine.unregister_async("tmp")?;
    /// # dropped.wait()?;
    /// // in async code: dropped.await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::InvalidChannelName` at once; the rest through the future.
    pub fn unregister_async(&self, name: &str) -> Result<UnregisterFuture> {
        corewal_engine::validate_channel_name(name)?;
        let shard = self.runtime.shard_for(name);
        Ok(UnregisterFuture {
            submit: Submit::to(&shard.inbox, |ack| Request::Unregister {
                name: name.into(),
                ack,
            }),
        })
    }

    /// How many shards have finished recovery (successfully or not); with
    /// [`Engine::shard_metrics`] this is what a progress display needs.
    pub fn ready_shards(&self) -> usize {
        self.runtime
            .shards()
            .iter()
            .filter(|s| s.is_ready())
            .count()
    }

    /// Damage that recovery found and went past, in shard and WAL order:
    /// torn tails cut (every mode), commits skipped
    /// (`RecoveryMode::SkipDamaged`), the place replay stopped
    /// (`RecoveryMode::KeepPrefix`). Shards still recovering contribute
    /// nothing yet; call it after [`Engine::wait_ready`] for the whole list.
    pub fn recovery_damage(&self) -> Vec<Damage> {
        self.runtime
            .shards()
            .iter()
            .flat_map(|s| s.recovery_damage())
            .collect()
    }

    /// The number of shards (fixed when the directory was created).
    pub fn shard_count(&self) -> usize {
        self.runtime.shards().len()
    }

    /// The block size commits are aligned to (from the filesystem's direct-I/O
    /// alignment unless configured).
    pub fn block_bytes(&self) -> usize {
        self.runtime.block_bytes()
    }

    /// The cores the shards are pinned to (round-robin).
    pub fn cores(&self) -> &[usize] {
        self.runtime.cores()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        self.runtime.config()
    }

    /// Counters summed over all shards.
    pub fn metrics(&self) -> Metrics {
        self.runtime.metrics()
    }

    /// Counters of each shard.
    pub fn shard_metrics(&self) -> Vec<Metrics> {
        self.runtime
            .shards()
            .iter()
            .map(|s| s.metrics.snapshot())
            .collect()
    }

    /// What each shard's WAL holds on disk and which channels hold it: its
    /// segment files' bytes beside `Config::wal_bytes_max`, where its log
    /// starts, and the channels whose live records pin its oldest segments,
    /// oldest first (at most [`WAL_HOLDERS_REPORTED`] per shard), each with
    /// what checkpointing it (and those before it) would free. The shards
    /// answer in turn, each between two of its commits.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// let ch = engine.register("orders")?;
    /// let last = ch.append(b"x")?;
    /// for shard in engine.wal_usage()? {
    ///     for h in &shard.holders {
    ///         println!("{} holds segment {} and after", h.channel, h.oldest_segment);
    ///     }
    /// }
    /// ch.checkpoint(last)?; // the records are persisted elsewhere: let them go
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::ShardFailed` for a shard that failed before it could answer
    /// (a shard that failed after its start still answers); `Error::Closed`
    /// after close.
    pub fn wal_usage(&self) -> Result<Vec<WalUsage>> {
        self.runtime
            .shards()
            .iter()
            .map(|s| Submit::to(&s.inbox, |ack| Request::WalUsage { ack }).wait())
            .collect()
    }

    /// Finishes every queued and in-flight commit, stops the shards and
    /// releases the directory. Requests made after this fail with `Error::Closed`.
    /// Called while shards still recover (after [`Engine::start`]), it stops
    /// their replay at the next read and leaves the store as it was.
    ///
    /// # Errors
    /// `Error::ShardFailed` when a shard had failed — a write, a data sync
    /// (in `Durability::Periodic`, the final sync of what was acknowledged
    /// unsynced included: those records may not be durable), its ring, or a
    /// panic on its thread. Every shard is stopped either way.
    pub fn close(self) -> Result<()> {
        self.runtime.close()
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("dir", &self.runtime.config().dir)
            .field("shards", &self.shard_count())
            .finish()
    }
}

/// A handle to one channel. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct Channel {
    inner: Arc<ChannelInner>,
}

struct ChannelInner {
    name: Box<str>,
    shard: ShardId,
    id: ChannelId,
    inbox: Arc<Inbox>,
    record_bytes_max: usize,
}

impl PartialEq for Channel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner.inbox, &other.inner.inbox) && self.inner.id == other.inner.id
    }
}
impl Eq for Channel {}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.inner.name)
            .field("shard", &self.inner.shard.0)
            .finish()
    }
}

impl Channel {
    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The shard that owns the channel.
    pub fn shard(&self) -> ShardId {
        self.inner.shard
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len > self.inner.record_bytes_max {
            return Err(Error::RecordTooLarge {
                len,
                max: self.inner.record_bytes_max,
            });
        }
        Ok(())
    }

    /// Appends one record; returns its offset once it is durable (in
    /// `Durability::Sync`). Offsets are dense and increasing per channel.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// let ch = engine.register("log")?;
    /// assert_eq!(ch.append(b"a")?.0 + 1, ch.append(b"b")?.0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::RecordTooLarge`; `Error::NoSpace` when the record needs the
    /// shard's next segment and it cannot be created for lack of space — the
    /// record was not written and got no offset; retrying appends it after
    /// whatever other callers appended meanwhile (requests that fit the
    /// current segment still succeed); `Error::ShardFailed` after an I/O
    /// error in the channel's shard (nothing more is acknowledged);
    /// `Error::Closed`.
    pub fn append(&self, record: &[u8]) -> Result<Offset> {
        self.check_len(record.len())?;
        self.submit_append(Bytes::copy_from_slice(record)).wait()
    }

    /// [`Channel::append`] as a future that works under any executor. Takes
    /// the record by value (a `Vec<u8>` or `Bytes` is not copied).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// let ch = engine.register("log")?;
    /// let fut = ch.append_async(b"record".to_vec())?;
    /// # let off = fut.wait()?;
    /// // in async code: let off = fut.await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::RecordTooLarge` at once; the rest through the future.
    pub fn append_async(&self, record: impl Into<Bytes>) -> Result<AppendFuture> {
        let record = record.into();
        self.check_len(record.len())?;
        Ok(self.submit_append(record))
    }

    /// The append request of a record whose length was checked.
    fn submit_append(&self, record: Bytes) -> AppendFuture {
        AppendFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::Append {
                channel: self.inner.id,
                record,
                ack,
            }),
        }
    }

    /// Appends `records` atomically in one commit; returns the first one's
    /// offset (the others follow densely).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// let ch = engine.register("log")?;
    /// let first = ch.append_batch([b"a".as_slice(), b"b", b"c"])?;
    /// assert_eq!(ch.read(first..)?.len(), 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// `Error::RecordTooLarge` for any record; `Error::BatchTooLarge` when the
    /// batch cannot fit in one commit; as [`Channel::append`] otherwise.
    pub fn append_batch<I, R>(&self, records: I) -> Result<Offset>
    where
        I: IntoIterator<Item = R>,
        R: AsRef<[u8]>,
    {
        let records = records
            .into_iter()
            .map(|r| {
                let r = r.as_ref();
                self.check_len(r.len()).map(|_| Bytes::copy_from_slice(r))
            })
            .collect::<Result<Vec<_>>>()?;
        self.submit_batch(records)?.wait()
    }

    /// [`Channel::append_batch`] as a future, taking owned records.
    ///
    /// # Errors
    /// As [`Channel::append_batch`].
    pub fn append_batch_async(&self, records: Vec<Bytes>) -> Result<AppendFuture> {
        for r in &records {
            self.check_len(r.len())?;
        }
        self.submit_batch(records)
    }

    /// The batch request of records whose lengths were checked.
    fn submit_batch(&self, records: Vec<Bytes>) -> Result<AppendFuture> {
        if records.is_empty() {
            return Err(Error::BatchTooLarge {
                records: 0,
                bytes: 0,
                bytes_max: 0,
                records_max: 0,
            });
        }
        Ok(AppendFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::AppendBatch {
                channel: self.inner.id,
                records,
                ack,
            }),
        })
    }

    /// The acknowledged records with offsets in `range`, in order, all of
    /// them: their payloads from memory, or read back from the WAL by the
    /// channel's shard when the memory budget
    /// ([`Config::buffer_bytes_max`]) let them go. A range over many
    /// records takes as much memory as they hold: use
    /// [`Channel::read_limited`] to bound what one call returns.
    ///
    /// A read sees what was acknowledged when its shard took the request,
    /// never a record still on its way to the device, nor one checkpointed
    /// or truncated away. Records below [`Channel::first_offset`] are gone:
    /// a range that starts below it starts there (each record carries its
    /// offset, so a caller sees the gap).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// # let ch = engine.register("log")?;
    /// # ch.append(b"a")?; ch.append(b"b")?;
    /// use corewal::Offset;
    /// let tail = ch.read(Offset(1)..)?;
    /// assert_eq!(&tail[0].data[..], b"b");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// * `Error::ChannelDropped` once the channel's drop is durable (a call
    ///   queued behind a drop not yet durable waits for it);
    /// * `Error::ShardFailed` when the channel's shard failed before a
    ///   pending drop became durable, or never started;
    /// * `Error::Io` when a payload could not be read back from the WAL,
    ///   and `Error::Corruption` when what was read back is not the record
    ///   (the call fails; the engine goes on);
    /// * `Error::InvalidConfig { field: "channel" }` for a handle of another
    ///   engine instance;
    /// * `Error::Closed` after close.
    pub fn read(&self, range: impl RangeBounds<Offset>) -> Result<Vec<Record>> {
        self.read_async(range).wait()
    }

    /// [`Channel::read`] as a future.
    pub fn read_async(&self, range: impl RangeBounds<Offset>) -> ReadFuture {
        self.read_limited_async(range, u64::MAX)
    }

    /// The first acknowledged records with offsets in `range`, in order,
    /// up to `max_bytes` payload bytes — at least one record when the range
    /// holds any, however large, so that a reader always moves on. To read
    /// on, ask again from one past the last offset returned; an empty
    /// answer means the range holds no more records.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// # let ch = engine.register("log")?;
    /// use corewal::Offset;
    /// for _ in 0..10 { ch.append(&[0u8; 100][..])?; }
    /// let mut from = Offset(0);
    /// loop {
    ///     let page = ch.read_limited(from.., 250)?;
    ///     let Some(last) = page.last() else { break };
    ///     assert!(page.len() <= 2);
    ///     from = Offset(last.offset.0 + 1);
    /// }
    /// assert_eq!(from, Offset(10));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// As [`Channel::read`].
    pub fn read_limited(
        &self,
        range: impl RangeBounds<Offset>,
        max_bytes: u64,
    ) -> Result<Vec<Record>> {
        self.read_limited_async(range, max_bytes).wait()
    }

    /// [`Channel::read_limited`] as a future.
    pub fn read_limited_async(
        &self,
        range: impl RangeBounds<Offset>,
        max_bytes: u64,
    ) -> ReadFuture {
        let from = match range.start_bound() {
            Bound::Included(o) => *o,
            Bound::Excluded(o) => Offset(o.0.saturating_add(1)),
            Bound::Unbounded => Offset(0),
        };
        let to = match range.end_bound() {
            Bound::Included(o) => Offset(o.0.saturating_add(1)),
            Bound::Excluded(o) => *o,
            Bound::Unbounded => Offset(u64::MAX),
        };
        ReadFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::Read {
                channel: self.inner.id,
                from,
                to,
                bytes_max: max_bytes,
                ack,
            }),
        }
    }

    /// One past the offset of the last acknowledged record: the offset the
    /// next append gets when no other append is under way.
    ///
    /// # Errors
    /// As [`Channel::read`].
    pub fn next_offset(&self) -> Result<Offset> {
        self.next_offset_async().wait()
    }

    /// [`Channel::next_offset`] as a future.
    pub fn next_offset_async(&self) -> OffsetFuture {
        OffsetFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::NextOffset {
                channel: self.inner.id,
                ack,
            }),
        }
    }

    /// The first offset not checkpointed: the channel's first live record,
    /// or [`Channel::next_offset`] when it has none (everything written was
    /// checkpointed, or nothing was written).
    ///
    /// # Errors
    /// As [`Channel::read`].
    pub fn first_offset(&self) -> Result<Offset> {
        self.first_offset_async().wait()
    }

    /// [`Channel::first_offset`] as a future.
    pub fn first_offset_async(&self) -> OffsetFuture {
        OffsetFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::FirstOffset {
                channel: self.inner.id,
                ack,
            }),
        }
    }

    /// Tells the WAL that the records at or below `through` are no longer
    /// needed (the service persisted them elsewhere): they are no longer
    /// read, nor replayed into memory at the next open, and their memory is
    /// freed at once. Durable when this returns, in every durability mode
    /// (in `Durability::Periodic` the checkpoint's commit carries a data
    /// sync). Idempotent: a checkpoint at or below an earlier one changes
    /// nothing and returns once the earlier one is durable.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// use corewal::Offset;
    /// let ch = engine.register("log")?;
    /// for r in [b"a", b"b", b"c"] { ch.append(r)?; }
    /// ch.checkpoint(Offset(1))?;
    /// assert_eq!(ch.first_offset()?, Offset(2));
    /// assert_eq!(ch.read(..)?.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// * `Error::OffsetOutOfRange` when `through` is at or beyond
    ///   [`Channel::next_offset`] (only acknowledged records can be
    ///   checkpointed); nothing changes;
    /// * `Error::NoSpace` (retryable, as for [`Channel::append`]);
    /// * `Error::ShardFailed`: the checkpoint may or may not have been
    ///   written; the next open tells (by [`Channel::first_offset`]);
    /// * otherwise as [`Channel::read`].
    pub fn checkpoint(&self, through: Offset) -> Result<()> {
        self.checkpoint_async(through).wait()
    }

    /// [`Channel::checkpoint`] as a future.
    pub fn checkpoint_async(&self, through: Offset) -> DoneFuture {
        DoneFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::Checkpoint {
                channel: self.inner.id,
                through,
                ack,
            }),
        }
    }

    /// Removes the records at `first_removed` and after, durably: no crash
    /// or power cut brings them back, and the next append gets
    /// `first_removed`. This is the one case where an offset names a second
    /// record — the one appended in place of the removed one (a replicated
    /// log discarding a conflicting suffix relies on it). Durable when this
    /// returns, in every durability mode. Appends of the channel still on
    /// their way to the device when it arrives are acknowledged first (and
    /// removed if at or after `first_removed`). Truncating at
    /// [`Channel::next_offset`] removes nothing and writes nothing.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let engine = corewal::Engine::open(corewal::Config::new(dir.path()))?;
    /// use corewal::Offset;
    /// let ch = engine.register("log")?;
    /// for r in [b"a", b"b", b"c"] { ch.append(r)?; }
    /// ch.truncate_from(Offset(1))?;
    /// assert_eq!(ch.append(b"B")?, Offset(1));
    /// assert_eq!(&ch.read(..)?[1].data[..], b"B");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    /// * `Error::OffsetOutOfRange` when `first_removed` is below
    ///   [`Channel::first_offset`] (checkpointed records cannot be removed
    ///   again) or beyond the offsets handed out; nothing changes;
    /// * `Error::NoSpace` (retryable);
    /// * `Error::ShardFailed`: the truncation may or may not have been
    ///   written; the next open tells (by [`Channel::next_offset`]);
    /// * otherwise as [`Channel::read`].
    pub fn truncate_from(&self, first_removed: Offset) -> Result<()> {
        self.truncate_from_async(first_removed).wait()
    }

    /// [`Channel::truncate_from`] as a future.
    pub fn truncate_from_async(&self, first_removed: Offset) -> DoneFuture {
        DoneFuture {
            submit: Submit::to(&self.inner.inbox, |ack| Request::Truncate {
                channel: self.inner.id,
                first_removed,
                ack,
            }),
        }
    }
}

/// A request on its way to a shard: pushed when first polled (or waited on),
/// answered through its ack.
struct Submit<T> {
    inbox: Arc<Inbox>,
    request: Option<Request>,
    ack: Arc<Ack<T>>,
}

impl<T> Submit<T> {
    /// The request `make` builds around a fresh acknowledgement, bound for
    /// `inbox`: the one way every call of the API reaches a shard.
    fn to(inbox: &Arc<Inbox>, make: impl FnOnce(Arc<Ack<T>>) -> Request) -> Self {
        let ack = Arc::new(Ack::new());
        Submit {
            inbox: inbox.clone(),
            request: Some(make(ack.clone())),
            ack,
        }
    }

    fn wait(mut self) -> Result<T> {
        if let Some(r) = self.request.take() {
            self.inbox.push_blocking(r)?;
        }
        self.ack.wait()
    }

    /// Like [`Submit::wait`], giving up after `timeout` with `None` (the
    /// request stays sent: wait again). Room in a full inbox is waited for
    /// first, as by every blocking call.
    fn wait_timeout(&mut self, timeout: std::time::Duration) -> Option<Result<T>> {
        if let Some(r) = self.request.take() {
            if let Err(e) = self.inbox.push_blocking(r) {
                return Some(Err(e));
            }
        }
        self.ack.wait_timeout(timeout)
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<T>> {
        if let Some(r) = self.request.take() {
            match self.inbox.try_push(r) {
                Ok(()) => {}
                Err(Err(e)) => return Poll::Ready(Err(e)),
                Err(Ok(r)) => {
                    // Full: wait for space, then retry once so that space made
                    // between the push and the registration is not missed.
                    self.inbox.wait_for_space(cx.waker());
                    match self.inbox.try_push(r) {
                        Ok(()) => {}
                        Err(Err(e)) => return Poll::Ready(Err(e)),
                        Err(Ok(r)) => {
                            self.request = Some(r);
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
        self.ack.poll(cx)
    }
}

/// The future of [`Channel::append_async`]: the record's offset once durable.
/// [`AppendFuture::wait`] blocks on it instead.
///
/// The request is sent to the shard when the future is first polled (or
/// waited on). Dropping a future that was already polled does not cancel
/// the append: the record is still written and made durable, only nobody
/// learns its offset. Dropping one never polled sends nothing.
#[must_use = "an append is sent when the future is polled or waited on"]
pub struct AppendFuture {
    submit: Submit<Offset>,
}

impl AppendFuture {
    /// Blocks the calling thread until the append is acknowledged.
    ///
    /// # Errors
    /// As [`Channel::append`].
    pub fn wait(self) -> Result<Offset> {
        self.submit.wait()
    }
}

impl Future for AppendFuture {
    type Output = Result<Offset>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().submit.poll(cx)
    }
}

/// The future of [`Engine::unregister_async`]: done once the drop is durable.
#[must_use = "an unregistration is sent when the future is polled or waited on"]
pub struct UnregisterFuture {
    submit: Submit<()>,
}

impl UnregisterFuture {
    /// Blocks the calling thread until the drop is durable.
    ///
    /// # Errors
    /// As [`Engine::unregister`].
    pub fn wait(self) -> Result<()> {
        self.submit.wait()
    }
}

impl Future for UnregisterFuture {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().submit.poll(cx)
    }
}

/// The future of [`Channel::read_async`] and
/// [`Channel::read_limited_async`]. Sent when first polled (or waited on);
/// dropping it changes nothing (a read on its way is finished by the shard
/// and its answer dropped).
#[must_use = "the read is sent when the future is polled or waited on"]
pub struct ReadFuture {
    submit: Submit<Vec<Record>>,
}

impl ReadFuture {
    /// Blocks the calling thread for the records.
    ///
    /// # Errors
    /// As [`Channel::read`].
    pub fn wait(self) -> Result<Vec<Record>> {
        self.submit.wait()
    }
}

impl Future for ReadFuture {
    type Output = Result<Vec<Record>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().submit.poll(cx)
    }
}

/// The future of [`Channel::next_offset_async`] and
/// [`Channel::first_offset_async`]. Sent when first polled (or waited on);
/// dropping it changes nothing.
#[must_use = "the request is sent when the future is polled or waited on"]
pub struct OffsetFuture {
    submit: Submit<Offset>,
}

impl OffsetFuture {
    /// Blocks the calling thread for the answer.
    ///
    /// # Errors
    /// As [`Channel::next_offset`].
    pub fn wait(self) -> Result<Offset> {
        self.submit.wait()
    }
}

impl Future for OffsetFuture {
    type Output = Result<Offset>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().submit.poll(cx)
    }
}

/// The future of [`Channel::checkpoint_async`] and
/// [`Channel::truncate_from_async`]: done once the change is durable.
///
/// Sent when first polled (or waited on). Dropping a future that was already
/// polled does not cancel the change: it is still made durable, only nobody
/// learns when. Dropping one never polled sends nothing.
#[must_use = "the change is sent when the future is polled or waited on"]
pub struct DoneFuture {
    submit: Submit<()>,
}

impl DoneFuture {
    /// Blocks the calling thread until the change is durable.
    ///
    /// # Errors
    /// As [`Channel::checkpoint`] or [`Channel::truncate_from`].
    pub fn wait(self) -> Result<()> {
        self.submit.wait()
    }
}

impl Future for DoneFuture {
    type Output = Result<()>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().submit.poll(cx)
    }
}

/// The future of [`Engine::register_async`].
#[must_use = "a registration is sent when the future is polled or waited on"]
pub struct RegisterFuture {
    submit: Submit<ChannelId>,
    name: Box<str>,
    shard: ShardId,
    record_bytes_max: usize,
}

impl RegisterFuture {
    fn channel(&self, id: ChannelId) -> Channel {
        Channel {
            inner: Arc::new(ChannelInner {
                name: self.name.clone(),
                shard: self.shard,
                id,
                inbox: self.submit.inbox.clone(),
                record_bytes_max: self.record_bytes_max,
            }),
        }
    }

    /// Blocks the calling thread until the channel is registered.
    ///
    /// # Errors
    /// As [`Engine::register`].
    pub fn wait(self) -> Result<Channel> {
        let name = self.name.clone();
        let (shard, max, inbox) = (self.shard, self.record_bytes_max, self.submit.inbox.clone());
        let id = self.submit.wait()?;
        Ok(Channel {
            inner: Arc::new(ChannelInner {
                name,
                shard,
                id,
                inbox,
                record_bytes_max: max,
            }),
        })
    }
}

impl Future for RegisterFuture {
    type Output = Result<Channel>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.submit.poll(cx) {
            Poll::Ready(Ok(id)) => Poll::Ready(Ok(this.channel(id))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}
