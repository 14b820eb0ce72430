//! `corewal load --readers N`: threads that read the writers' channels
//! while they write, and what they saw.
//!
//! Each reader alternates two kinds of read, each a `read_limited` of up to
//! 64 KiB from a random channel: a *tail* read of the channel's newest
//! records (in memory while the payload budget holds them), and a *random*
//! read from a uniformly chosen live offset (from the WAL once the live data
//! outgrows the budget). The engine's count of WAL reads says how many went
//! to the device.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use corewal::{Channel, Offset};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

/// Bytes one read asks for at most.
pub const READ_BYTES_MAX: u64 = 64 << 10;

/// Records a tail read starts before the channel's end.
const TAIL_RECORDS: u64 = 16;

/// What the readers share with the main thread.
pub struct Readers {
    /// Latencies (ns) of tail and random reads in the measured window.
    tail: Mutex<Histogram<u64>>,
    random: Mutex<Histogram<u64>>,
    records: AtomicU64,
    bytes: AtomicU64,
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// The readers' figures over the measured window.
#[derive(Serialize, Debug, Default)]
pub struct ReadFigures {
    pub readers: usize,
    pub reads_tail: u64,
    pub reads_random: u64,
    pub read_records_per_s: f64,
    pub read_mb_per_s: f64,
    pub read_tail_ns_p50: u64,
    pub read_tail_ns_p99: u64,
    pub read_random_ns_p50: u64,
    pub read_random_ns_p99: u64,
    /// Reads the engine made of the WAL (block-aligned spans of up to 1 MiB).
    pub wal_reads: u64,
}

impl Readers {
    pub fn new() -> Arc<Readers> {
        Arc::new(Readers {
            tail: Mutex::new(crate::load::new_histogram()),
            random: Mutex::new(crate::load::new_histogram()),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// Starts `n` readers over `channels`.
    pub fn spawn(
        self: &Arc<Self>,
        n: usize,
        channels: &[Channel],
        seed: u64,
    ) -> Vec<std::thread::JoinHandle<Result<(), corewal::Error>>> {
        (0..n)
            .map(|r| {
                let (me, channels) = (self.clone(), channels.to_vec());
                std::thread::Builder::new()
                    .name(format!("load-reader-{r}"))
                    .spawn(move || me.read(channels, seed ^ (r as u64 + 1) << 32))
                    .expect("spawn reader thread")
            })
            .collect()
    }

    /// Opens (or closes) the measured window.
    pub fn measure(&self, on: bool) {
        self.measuring.store(on, Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn read(&self, channels: Vec<Channel>, seed: u64) -> Result<(), corewal::Error> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut tail = true;
        while !self.stop.load(Ordering::Relaxed) {
            let ch = &channels[rng.random_range(0..channels.len())];
            let (first, next) = (ch.first_offset()?.0, ch.next_offset()?.0);
            if next == first {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let from = if tail {
                next.saturating_sub(TAIL_RECORDS).max(first)
            } else {
                rng.random_range(first..next)
            };
            let started = Instant::now();
            let got = ch.read_limited(Offset(from).., READ_BYTES_MAX)?;
            let ns = started.elapsed().as_nanos() as u64;
            if self.measuring.load(Ordering::Relaxed) {
                let h = if tail { &self.tail } else { &self.random };
                h.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .saturating_record(ns.max(1));
                self.records.fetch_add(got.len() as u64, Ordering::Relaxed);
                let bytes: usize = got.iter().map(|r| r.data.len()).sum();
                self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            }
            tail = !tail;
        }
        Ok(())
    }

    /// The figures of a window of `secs` seconds in which the engine made
    /// `wal_reads` reads of the WAL.
    pub fn figures(&self, readers: usize, secs: f64, wal_reads: u64) -> ReadFigures {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let random = self.random.lock().unwrap_or_else(|p| p.into_inner());
        let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        ReadFigures {
            readers,
            reads_tail: tail.len(),
            reads_random: random.len(),
            read_records_per_s: per_s(self.records.load(Ordering::Relaxed)),
            read_mb_per_s: per_s(self.bytes.load(Ordering::Relaxed)) / 1e6,
            read_tail_ns_p50: tail.value_at_quantile(0.5),
            read_tail_ns_p99: tail.value_at_quantile(0.99),
            read_random_ns_p50: random.value_at_quantile(0.5),
            read_random_ns_p99: random.value_at_quantile(0.99),
            wal_reads,
        }
    }
}

/// The readers' lines of the table.
pub fn print(f: &ReadFigures) {
    let us = |ns: u64| ns as f64 / 1e3;
    println!(
        "  readers                {} threads: {:.0} records/s, {:.1} MB/s, {} WAL reads",
        f.readers, f.read_records_per_s, f.read_mb_per_s, f.wal_reads
    );
    println!(
        "  read tail (memory)     {} reads, p50 {:.1} us, p99 {:.1} us",
        f.reads_tail,
        us(f.read_tail_ns_p50),
        us(f.read_tail_ns_p99)
    );
    println!(
        "  read random (WAL)      {} reads, p50 {:.1} us, p99 {:.1} us",
        f.reads_random,
        us(f.read_random_ns_p50),
        us(f.read_random_ns_p99)
    );
}
