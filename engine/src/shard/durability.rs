//! The shard's durability clock: which commits are acknowledged, which are on
//! stable storage, how the next commit is written, and when a periodic data
//! sync is due. The only code of the shard that looks at the durability mode.

use std::time::{Duration, Instant};

use crate::config::{Durability, SyncMethod};
use crate::io::SyncKind;
use crate::types::CommitSeq;

/// How a commit is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WritePlan {
    /// The sync the write carries.
    pub(super) sync: SyncKind,
    /// Periodic mode: the write carries the data sync that makes every
    /// acknowledged commit durable.
    pub(super) synced: bool,
    /// The commits before this one that may not be durable when it is (its
    /// header's window: recovery cuts a hole inside it as a torn tail).
    pub(super) window: u16,
}

/// The clock.
#[derive(Debug)]
pub(super) struct DurabilityClock {
    mode: Durability,
    sync_method: SyncMethod,
    in_flight_max: u64,
    /// Highest commit acknowledged (durable, or written in periodic mode).
    completed: CommitSeq,
    /// Every commit up to this one is on stable storage (a data sync
    /// completed after it).
    durable_through: CommitSeq,
    /// Periodic mode: since when an acknowledged commit waits for a sync.
    unsynced_since: Option<Instant>,
}

impl DurabilityClock {
    /// A clock for a shard whose replayed commits, through `replayed`, are
    /// durable (the shard syncs them before it answers anything).
    pub(super) fn new(
        mode: Durability,
        sync_method: SyncMethod,
        in_flight_max: usize,
        replayed: CommitSeq,
    ) -> DurabilityClock {
        DurabilityClock {
            mode,
            sync_method,
            in_flight_max: in_flight_max as u64,
            completed: replayed,
            durable_through: replayed,
            unsynced_since: None,
        }
    }

    /// Highest commit acknowledged.
    pub(super) fn completed(&self) -> CommitSeq {
        self.completed
    }

    /// Every commit through this one is on stable storage.
    pub(super) fn durable_through(&self) -> CommitSeq {
        self.durable_through
    }

    /// Whether acknowledged commits wait for a data sync (periodic mode).
    pub(super) fn has_unsynced(&self) -> bool {
        self.unsynced_since.is_some()
    }

    /// Periodic mode: whether commit `next` must carry a data sync because
    /// the commits since the last one, and those that could be in flight with
    /// it, would no longer fit the 16-bit window of its header.
    pub(super) fn window_full(&self, next: CommitSeq) -> bool {
        matches!(self.mode, Durability::Periodic { .. })
            && next.0.saturating_sub(self.durable_through.0) + self.in_flight_max
                >= u64::from(u16::MAX)
    }

    /// Periodic mode: whether commit `next` must carry a data sync — its
    /// window is full, or `wanted` (it holds a checkpoint or truncation,
    /// which are durable before they are acknowledged in every mode).
    pub(super) fn sync_forced(&self, next: CommitSeq, wanted: bool) -> bool {
        matches!(self.mode, Durability::Periodic { .. }) && (wanted || self.window_full(next))
    }

    /// Periodic mode: whether the interval since the first unsynced
    /// acknowledgement has passed.
    pub(super) fn sync_due(&self) -> bool {
        match (self.mode, self.unsynced_since) {
            (Durability::Periodic { interval }, Some(since)) => since.elapsed() >= interval,
            _ => false,
        }
    }

    /// How long the shard may sleep before a periodic sync is due (`None`:
    /// no sync is pending). Never less than 50 µs.
    pub(super) fn until_sync_due(&self) -> Option<Duration> {
        match (self.mode, self.unsynced_since) {
            (Durability::Periodic { interval }, Some(since)) => Some(
                interval
                    .saturating_sub(since.elapsed())
                    .max(Duration::from_micros(50)),
            ),
            _ => None,
        }
    }

    /// How commit `seq` is written; `alone`: nothing else is in flight;
    /// `wanted`: it must be durable before it is acknowledged, also in
    /// periodic mode (see [`DurabilityClock::sync_forced`]).
    ///
    /// Periodic mode under constant load never sees an idle moment for a
    /// separate sync: when one is due (or the window is full), the commit
    /// itself carries it — only alone, so that the sync covers every write.
    /// An fdatasync, not `RWF_DSYNC`: on a device with forced-unit-access
    /// writes, an `O_DIRECT` `RWF_DSYNC` write is written through on its own
    /// and flushes nothing written before it.
    pub(super) fn plan_write(&self, seq: CommitSeq, alone: bool, wanted: bool) -> WritePlan {
        // The window: the commits in flight with this one; in periodic mode
        // also every commit since the last completed data sync (kept below
        // 65,535 by `window_full`).
        let since_sync = seq.0.saturating_sub(self.durable_through.0);
        let (sync, synced, window) = match self.mode {
            Durability::Sync => {
                let sync = match self.sync_method {
                    SyncMethod::DsyncWrite => SyncKind::Dsync,
                    SyncMethod::WriteThenFdatasync => SyncKind::Fdatasync,
                };
                (sync, false, self.in_flight_max)
            }
            Durability::Periodic { .. } => {
                let synced = alone && (self.sync_due() || self.sync_forced(seq, wanted));
                let sync = if synced {
                    SyncKind::Fdatasync
                } else {
                    SyncKind::None
                };
                (sync, synced, since_sync.max(self.in_flight_max))
            }
        };
        WritePlan {
            sync,
            synced,
            window: window.min(u64::from(u16::MAX)) as u16,
        }
    }

    /// Commit `seq` was written as `plan` said; returns whether a data sync
    /// came with it.
    pub(super) fn commit_completed(&mut self, seq: CommitSeq, plan_synced: bool) -> bool {
        self.completed = seq;
        match self.mode {
            Durability::Sync => {
                self.durable_through = seq;
                true
            }
            Durability::Periodic { .. } if plan_synced => {
                self.all_synced();
                true
            }
            Durability::Periodic { .. } => {
                self.unsynced_since.get_or_insert_with(Instant::now);
                false
            }
        }
    }

    /// A separate data sync, started when commits through `covers` were
    /// acknowledged, completed.
    pub(super) fn sync_completed(&mut self, covers: CommitSeq) {
        self.unsynced_since = None;
        self.durable_through = self.durable_through.max(covers);
    }

    /// Everything acknowledged is on stable storage (a data sync completed
    /// with nothing in flight).
    pub(super) fn all_synced(&mut self) {
        self.unsynced_since = None;
        self.durable_through = self.completed;
    }

    /// The shard failed: nothing is pending a sync any more.
    pub(super) fn stop(&mut self) {
        self.unsynced_since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(mode: Durability) -> DurabilityClock {
        DurabilityClock::new(mode, SyncMethod::WriteThenFdatasync, 2, CommitSeq(10))
    }

    #[test]
    fn sync_mode_makes_each_commit_durable_with_its_write() {
        let mut c = clock(Durability::Sync);
        let plan = c.plan_write(CommitSeq(11), false, false);
        assert_eq!(
            (plan.sync, plan.synced, plan.window),
            (SyncKind::Fdatasync, false, 2)
        );
        assert!(c.commit_completed(CommitSeq(11), plan.synced));
        assert_eq!(
            (c.completed(), c.durable_through()),
            (CommitSeq(11), CommitSeq(11))
        );
        assert!(!c.has_unsynced() && !c.sync_due() && c.until_sync_due().is_none());
        let dsync = DurabilityClock::new(Durability::Sync, SyncMethod::DsyncWrite, 1, CommitSeq(0));
        assert_eq!(
            dsync.plan_write(CommitSeq(1), true, false).sync,
            SyncKind::Dsync
        );
    }

    #[test]
    fn periodic_mode_syncs_when_due_or_when_the_window_would_overflow() {
        let interval = Duration::from_millis(20);
        let mut c = clock(Durability::Periodic { interval });
        let plan = c.plan_write(CommitSeq(11), true, false);
        assert_eq!((plan.sync, plan.synced), (SyncKind::None, false));
        assert!(!c.commit_completed(CommitSeq(11), false));
        assert!(c.has_unsynced());
        assert_eq!(c.durable_through(), CommitSeq(10));
        assert!(c.until_sync_due().is_some_and(|d| d <= interval));
        std::thread::sleep(interval);
        assert!(c.sync_due());
        assert!(
            !c.plan_write(CommitSeq(12), false, false).synced,
            "not with others in flight"
        );
        let plan = c.plan_write(CommitSeq(12), true, false);
        assert_eq!(
            (plan.sync, plan.synced, plan.window),
            (SyncKind::Fdatasync, true, 2)
        );
        assert!(c.commit_completed(CommitSeq(12), true));
        assert_eq!(c.durable_through(), CommitSeq(12));
        assert!(!c.has_unsynced());

        let edge = CommitSeq(12 + u64::from(u16::MAX) - 2);
        assert!(c.window_full(edge) && !c.window_full(CommitSeq(edge.0 - 1)));
        let plan = c.plan_write(edge, true, false);
        assert!(plan.synced, "a full window forces the sync");
        assert_eq!(plan.window, u16::MAX - 2);
        c.sync_completed(CommitSeq(20));
        assert_eq!(c.durable_through(), CommitSeq(20));
    }

    #[test]
    fn a_commit_that_must_be_durable_carries_a_sync_in_periodic_mode_only_alone() {
        let interval = Duration::from_secs(60);
        let c = clock(Durability::Periodic { interval });
        assert!(c.sync_forced(CommitSeq(11), true) && !c.sync_forced(CommitSeq(11), false));
        let plan = c.plan_write(CommitSeq(11), true, true);
        assert_eq!((plan.sync, plan.synced), (SyncKind::Fdatasync, true));
        assert!(!c.plan_write(CommitSeq(11), false, true).synced);
        let s = clock(Durability::Sync);
        assert!(
            !s.sync_forced(CommitSeq(11), true),
            "every commit is durable anyway"
        );
        assert_eq!(
            s.plan_write(CommitSeq(11), false, true).sync,
            SyncKind::Fdatasync
        );
    }
}
