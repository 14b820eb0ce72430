//! `corewal load --subscribers N`: threads that follow the writers'
//! channels with `Channel::subscribe`, and what they saw.
//!
//! Subscriber `i` follows channel `i` (modulo the channels) from its end
//! at the start of the run. The writers of followed channels note, for
//! each record, when its append returned (the moment it was acknowledged
//! durable to the writer) in a ring per followed channel; a subscriber
//! looks its records up there. *Lag* is a record's delivery to its
//! subscriber minus its writer's return: the shard answers waiting
//! subscribers before it wakes writers, so a delivery often comes first
//! (lag 0, counted apart). A record whose note was overwritten before its
//! subscriber looked (a subscriber more than [`RING`] records behind) is
//! counted unmatched. The rings (96 KiB per followed channel) count in
//! the run's resident set.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corewal::{Channel, Offset};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Appends noted per followed channel.
pub const RING: usize = 1 << 12;

/// Deliveries a subscriber keeps waiting for their writer's note.
const PENDING_MAX: usize = 4096;

/// One noted append: the offset (plus one: 0 is empty), when its append
/// started and when it returned, in ns since the run's clock started.
struct Note {
    tag: AtomicU64,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
}

/// What writers and subscribers share.
pub struct Subscribers {
    clock: Instant,
    /// Per channel: its ring when a subscriber follows it.
    rings: Vec<Option<Box<[Note]>>>,
    lag: Mutex<Histogram<u64>>,
    append_to_delivery: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    bytes: AtomicU64,
    before_writer: AtomicU64,
    unmatched: AtomicU64,
    from_wal: Vec<AtomicU64>,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// The subscribers' figures over the measured window.
#[derive(Serialize, Debug, Default)]
pub struct SubscriberFigures {
    pub subscribers: usize,
    pub delivered_records_per_s: f64,
    pub delivered_mb_per_s: f64,
    /// Delivery minus the writer's return, for records delivered after it
    /// (those delivered first count 0).
    pub lag_ns_p50: u64,
    pub lag_ns_p99: u64,
    pub lag_ns_max: u64,
    /// Deliveries that came before their writer's append returned.
    pub delivered_before_writer: u64,
    /// Append start to delivery (beside the writers' append latency).
    pub append_to_delivery_ns_p50: u64,
    pub append_to_delivery_ns_p99: u64,
    /// Deliveries whose writer's note was gone (the subscriber was more
    /// than `RING` records behind).
    pub unmatched: u64,
    /// Subscribers given records read back from the WAL, and how many.
    pub fell_back_to_wal: usize,
    pub records_from_wal: u64,
}

impl Subscribers {
    /// Shared state for `n` subscribers of `channels` channels.
    pub fn new(n: usize, channels: usize) -> Arc<Subscribers> {
        let ring = || {
            (0..RING)
                .map(|_| Note {
                    tag: AtomicU64::new(0),
                    start_ns: AtomicU64::new(0),
                    end_ns: AtomicU64::new(0),
                })
                .collect()
        };
        Arc::new(Subscribers {
            clock: Instant::now(),
            rings: (0..channels).map(|c| (c < n).then(ring)).collect(),
            lag: Mutex::new(crate::load::new_histogram()),
            append_to_delivery: Mutex::new(crate::load::new_histogram()),
            delivered: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            before_writer: AtomicU64::new(0),
            unmatched: AtomicU64::new(0),
            from_wal: (0..n).map(|_| AtomicU64::new(0)).collect(),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.clock).as_nanos() as u64
    }

    /// Writer side: `records` records of channel `channel` from `first` on
    /// were acknowledged; their append started at `start`.
    pub fn note(&self, channel: usize, first: Offset, records: u64, start: Instant) {
        let Some(Some(ring)) = self.rings.get(channel) else {
            return;
        };
        let (start_ns, end_ns) = (self.ns(start), self.ns(Instant::now()));
        for o in first.0..first.0 + records {
            let n = &ring[o as usize % RING];
            // A reader that sees a new time sees the cleared tag (or the
            // new one) on its second look.
            n.tag.store(0, Ordering::Relaxed);
            n.start_ns.store(start_ns, Ordering::Release);
            n.end_ns.store(end_ns, Ordering::Release);
            n.tag.store(o + 1, Ordering::Release);
        }
    }

    /// Starts `n` subscribers, subscriber `i` following `channels[i % len]`.
    pub fn spawn(
        self: &Arc<Self>,
        n: usize,
        channels: &[Channel],
    ) -> Vec<std::thread::JoinHandle<Result<(), corewal::Error>>> {
        (0..n)
            .map(|i| {
                let (me, ch) = (self.clone(), channels[i % channels.len()].clone());
                let ring = i % channels.len();
                std::thread::Builder::new()
                    .name(format!("load-subscriber-{i}"))
                    .spawn(move || me.follow(i, ring, ch))
                    .expect("spawn subscriber thread")
            })
            .collect()
    }

    pub fn measure(&self, on: bool) {
        self.measuring.store(on, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn follow(&self, i: usize, ring: usize, ch: Channel) -> Result<(), corewal::Error> {
        let ring = self.rings[ring]
            .as_ref()
            .expect("a followed channel has a ring");
        let mut sub = ch.subscribe(ch.next_offset()?);
        // Deliveries whose writer has not noted them yet: (offset, when).
        let mut pending: VecDeque<(u64, u64, bool)> = VecDeque::new();
        while !self.stop.load(Ordering::Relaxed) {
            let got = sub.next_timeout(Duration::from_millis(20))?;
            let now = self.ns(Instant::now());
            let measuring = self.measuring.load(Ordering::Relaxed);
            if let Some(r) = &got {
                if measuring {
                    self.delivered.fetch_add(1, Ordering::Relaxed);
                    self.bytes.fetch_add(r.data.len() as u64, Ordering::Relaxed);
                }
                pending.push_back((r.offset.0, now, measuring));
            }
            while let Some(&(o, at, counted)) = pending.front() {
                let n = &ring[o as usize % RING];
                let tag = n.tag.load(Ordering::Acquire);
                let (start, end) = (
                    n.start_ns.load(Ordering::Acquire),
                    n.end_ns.load(Ordering::Acquire),
                );
                let unmatched = tag > o + 1 || pending.len() > PENDING_MAX;
                if tag != o + 1 || n.tag.load(Ordering::Acquire) != tag {
                    if unmatched {
                        pending.pop_front();
                        if counted {
                            self.unmatched.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    // Not noted yet: its writer has not run since.
                    break;
                }
                pending.pop_front();
                if !counted {
                    continue;
                }
                if at < end {
                    self.before_writer.fetch_add(1, Ordering::Relaxed);
                }
                self.lag
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .saturating_record(at.saturating_sub(end).max(1));
                self.append_to_delivery
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .saturating_record(at.saturating_sub(start).max(1));
            }
            if got.is_none() && !pending.is_empty() {
                // Nothing new: give the writers a moment to note theirs.
                std::thread::yield_now();
            }
        }
        self.from_wal[i].store(sub.records_from_wal(), Ordering::Relaxed);
        Ok(())
    }

    /// The figures of a window of `secs` seconds (after the subscribers
    /// stopped).
    pub fn figures(&self, secs: f64) -> SubscriberFigures {
        let lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        let a2d = self
            .append_to_delivery
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let from_wal: Vec<u64> = self
            .from_wal
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        SubscriberFigures {
            subscribers: self.from_wal.len(),
            delivered_records_per_s: per_s(self.delivered.load(Ordering::Relaxed)),
            delivered_mb_per_s: per_s(self.bytes.load(Ordering::Relaxed)) / 1e6,
            lag_ns_p50: lag.value_at_quantile(0.5),
            lag_ns_p99: lag.value_at_quantile(0.99),
            lag_ns_max: lag.max(),
            delivered_before_writer: self.before_writer.load(Ordering::Relaxed),
            append_to_delivery_ns_p50: a2d.value_at_quantile(0.5),
            append_to_delivery_ns_p99: a2d.value_at_quantile(0.99),
            unmatched: self.unmatched.load(Ordering::Relaxed),
            fell_back_to_wal: from_wal.iter().filter(|&&n| n > 0).count(),
            records_from_wal: from_wal.iter().sum(),
        }
    }
}

/// The subscribers' lines of the table.
pub fn print(f: &SubscriberFigures) {
    let us = |ns: u64| ns as f64 / 1e3;
    println!(
        "  subscribers            {} threads: {:.0} records/s delivered, {:.1} MB/s",
        f.subscribers, f.delivered_records_per_s, f.delivered_mb_per_s
    );
    println!(
        "  subscription lag       p50 {:.1} us, p99 {:.1} us, max {:.1} us after the writer's return \
         ({} delivered before it, {} unmatched)",
        us(f.lag_ns_p50),
        us(f.lag_ns_p99),
        us(f.lag_ns_max),
        f.delivered_before_writer,
        f.unmatched
    );
    println!(
        "  append → delivered     p50 {:.1} us, p99 {:.1} us",
        us(f.append_to_delivery_ns_p50),
        us(f.append_to_delivery_ns_p99)
    );
    println!(
        "  subscribers from WAL   {} of {} ({} records read back)",
        f.fell_back_to_wal, f.subscribers, f.records_from_wal
    );
}
