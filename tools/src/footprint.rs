//! `corewal footprint`: what the engine's memory costs per idle channel
//! and per live record whose payload is not in memory.
//!
//! It registers `--channels` channels (names shaped like a vector
//! database's DML channels, `by-dev-rootcoord-dml_7_451234v1`), dropping
//! every handle, and reads the process's resident set (`VmRSS`) before and
//! after; then it appends `--records` small records with a payload budget
//! of 0, so that only their index stays, and reads it again. The
//! differences, divided, are the costs (the allocator's and the tables'
//! spare capacity included: what a service would see).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use clap::Args;
use corewal::{Config, Engine};
use serde::Serialize;

use crate::data_dir::DataDir;
use crate::host::rss_bytes;

/// Arguments of `corewal footprint`.
#[derive(Args, Debug)]
pub struct FootprintArgs {
    /// Channels to register.
    #[arg(long, default_value_t = 1_000_000)]
    channels: usize,
    /// Records to append after them (16 bytes each, spread over the first
    /// 1,000 channels).
    #[arg(long, default_value_t = 4_000_000)]
    records: u64,
    /// Shards (default: one per allowed core).
    #[arg(long)]
    shards: Option<usize>,
    /// Data directory (default: a fresh directory under /var/tmp, removed
    /// afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print one JSON object instead of the lines.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Footprint {
    channels: usize,
    name_bytes_mean: f64,
    bytes_per_idle_channel: f64,
    records: u64,
    bytes_per_live_record_index: f64,
    rss_start_bytes: u64,
    rss_after_channels_bytes: u64,
    rss_after_records_bytes: u64,
}

/// The DML-channel-like name of channel `i`.
fn channel_name(i: usize) -> String {
    format!("by-dev-rootcoord-dml_{}_{}v{}", i % 16, 400_000 + i, i % 2)
}

/// Polls `f` once (a request is sent on its first poll).
fn send<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    match Pin::new(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

pub fn run(args: FootprintArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.channels < 1_000 || args.channels > 10_000_000 {
        return Err("--channels must be 1000..=10000000".into());
    }
    if args.records > 100_000_000 {
        return Err("--records must be at most 100000000".into());
    }
    let data = DataDir::new(args.dir.as_deref(), "corewal-footprint-", false)?;
    let mut config = Config::new(&data.path);
    config.shards = args.shards;
    config.buffer_bytes_max = 0;
    // Room for the registrations and records without reclamation.
    config.wal_bytes_max = Some(64 << 30);
    let engine = Engine::open(config)?;
    let rss_start = rss_bytes();
    let name_bytes = register_all(&engine, args.channels)?;
    let rss_channels = rss_bytes();
    let records = append_small(&engine, args.channels.min(1_000), args.records)?;
    let rss_records = rss_bytes();
    engine.close()?;
    let f = Footprint {
        channels: args.channels,
        name_bytes_mean: name_bytes as f64 / args.channels as f64,
        bytes_per_idle_channel: rss_channels.saturating_sub(rss_start) as f64
            / args.channels as f64,
        records,
        bytes_per_live_record_index: if records > 0 {
            rss_records.saturating_sub(rss_channels) as f64 / records as f64
        } else {
            0.0
        },
        rss_start_bytes: rss_start,
        rss_after_channels_bytes: rss_channels,
        rss_after_records_bytes: rss_records,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        print_footprint(&f);
    }
    Ok(())
}

/// Registers channels `0..n`, a few thousand in flight at a time (so that
/// they share commits), dropping every handle; returns the names' bytes.
fn register_all(engine: &Engine, n: usize) -> Result<usize, corewal::Error> {
    let mut name_bytes = 0usize;
    for chunk in (0..n).collect::<Vec<_>>().chunks(4096) {
        let mut futures = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let name = channel_name(i);
            name_bytes += name.len();
            let mut f = engine.register_async(&name)?;
            let done = send(&mut f);
            futures.push((f, done));
        }
        for (f, done) in futures {
            match done {
                Some(r) => drop(r?),
                None => drop(f.wait()?),
            }
        }
    }
    Ok(name_bytes)
}

/// Appends about `records` 16-byte records spread over channels
/// `0..channels`; returns how many.
fn append_small(engine: &Engine, channels: usize, records: u64) -> Result<u64, corewal::Error> {
    let appenders: Vec<_> = (0..channels)
        .map(|i| engine.register(&channel_name(i)))
        .collect::<Result<_, _>>()?;
    let per_channel = records / appenders.len() as u64;
    let batch: Vec<&[u8]> = vec![&[0x5Au8; 16][..]; 256];
    for ch in &appenders {
        let mut left = per_channel;
        while left > 0 {
            let n = left.min(batch.len() as u64) as usize;
            ch.append_batch(&batch[..n])?;
            left -= n as u64;
        }
    }
    Ok(per_channel * appenders.len() as u64)
}

fn print_footprint(f: &Footprint) {
    println!(
        "corewal footprint: {} channels (names of {:.1} bytes on average), {} live records of 16 bytes, payload budget 0",
        f.channels, f.name_bytes_mean, f.records
    );
    println!(
        "  per idle channel       {:>8.1} bytes of resident memory (name included)",
        f.bytes_per_idle_channel
    );
    println!(
        "  per live record index  {:>8.1} bytes of resident memory (payload in the WAL only)",
        f.bytes_per_live_record_index
    );
    println!(
        "  RSS                    {:.1} MB at the start, {:.1} MB after the channels, {:.1} MB after the records",
        f.rss_start_bytes as f64 / 1e6,
        f.rss_after_channels_bytes as f64 / 1e6,
        f.rss_after_records_bytes as f64 / 1e6
    );
}
