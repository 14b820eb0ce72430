//! `corewal load`: a closed-loop load generator.
//!
//! Each writer thread appends and waits for its own acknowledgement before the
//! next append (closed loop), and measures each append call from just before
//! the call to its return. Results count only appends that started after the
//! warm-up and finished before the end of the measured window.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use corewal::{Backend, Config, Durability, Engine, SyncMethod};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::data_dir::DataDir;
use crate::host::{cpu_seconds, fingerprint, Host};

/// Arguments of `corewal load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Writer threads. Each waits for its own acknowledgement before its next append (closed loop).
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Channels. With at least as many channels as writers, writer w appends round-robin to
    /// channels w, w+writers, …; with fewer, writer w shares channel w % channels.
    #[arg(long, default_value_t = 16)]
    channels: usize,
    /// Payload bytes of each record.
    #[arg(long, default_value_t = 256)]
    record_bytes: usize,
    /// Records per append call (1: `append`; more: `append_batch`, one atomic commit).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Length of the measured window, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many records in total instead of after --duration (no warm-up then).
    #[arg(long)]
    records: Option<u64>,
    /// Time before the measured window; its appends are not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Shards (default: one per core in --cores, or per allowed core).
    #[arg(long)]
    shards: Option<usize>,
    /// Cores to pin shards to, comma-separated (default: every core the process may use).
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// Cores to pin writer threads to, comma-separated, round-robin (default: not pinned).
    #[arg(long, value_delimiter = ',')]
    writer_cores: Option<Vec<usize>>,
    /// Data directory (default: a fresh directory under /var/tmp, on the local disk, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data directory.
    #[arg(long)]
    keep: bool,
    /// `sync` (acknowledged when durable) or `periodic:INTERVAL` (acknowledged after the write,
    /// data sync every INTERVAL, e.g. `periodic:10ms`).
    #[arg(long, default_value = "sync", value_parser = parse_durability)]
    durability: Durability,
    /// I/O backend.
    #[arg(long, value_enum, default_value_t = BackendArg::IoUring)]
    backend: BackendArg,
    /// How a commit is made durable.
    #[arg(long, value_enum, default_value_t = SyncMethodArg::Dsync)]
    sync_method: SyncMethodArg,
    /// Segment file size in bytes (suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    segment_bytes: u64,
    /// Largest commit in bytes (suffixes KiB, MiB).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    commit_bytes_max: u64,
    /// Most records per commit.
    #[arg(long, default_value_t = 4096)]
    records_per_commit_max: usize,
    /// Most commits each shard has in flight at once.
    #[arg(long, default_value_t = 1)]
    commits_in_flight_max: usize,
    /// Print one JSON object (fio-like, nanosecond units) instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum BackendArg {
    /// io_uring, one ring per shard.
    IoUring,
    /// pwrite + fdatasync on the shard thread.
    Portable,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SyncMethodArg {
    /// One RWF_DSYNC write per commit.
    Dsync,
    /// A write linked to an fdatasync.
    Fdatasync,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s or 250ms"))?;
    let secs = match unit {
        "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, ms, us or m")),
    };
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{s:?} is outside 0..=24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| (&s[..i], &s[i..]));
    let v: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 64MiB"))?;
    let mul = match unit {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use B, KiB, MiB or GiB"
            ))
        }
    };
    v.checked_mul(mul)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s {
        "sync" => Ok(Durability::Sync),
        _ => match s.strip_prefix("periodic:") {
            Some(i) => Ok(Durability::Periodic {
                interval: parse_duration(i)?,
            }),
            None => Err(format!("{s:?}: use sync or periodic:INTERVAL")),
        },
    }
}

/// Latency summary in nanoseconds, with fio's key names.
#[derive(Serialize)]
struct LatNs {
    min: u64,
    max: u64,
    mean: f64,
    percentile: std::collections::BTreeMap<String, u64>,
}

/// The result of a run, printed as JSON with --json.
#[derive(Serialize)]
struct LoadResult {
    tool: &'static str,
    mode: &'static str,
    host: Host,
    dir: String,
    block_bytes: usize,
    shards: usize,
    cores: Vec<usize>,
    backend: String,
    durability: String,
    sync_method: String,
    writers: usize,
    channels: usize,
    record_bytes: usize,
    batch: usize,
    warmup_s: f64,
    measured_s: f64,
    appends: u64,
    records: u64,
    appends_per_s: f64,
    records_per_s: f64,
    payload_mb_per_s: f64,
    lat_ns: LatNs,
    cpu_s: f64,
    cpu_s_per_gb: f64,
    commits: u64,
    records_per_commit_mean: f64,
    commit_device_us_mean: f64,
    device_bytes_per_payload_byte: f64,
}

pub fn run(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.writers == 0 || args.writers > 4096 {
        return Err("--writers must be 1..=4096".into());
    }
    if args.channels == 0 || args.channels > 1_000_000 {
        return Err("--channels must be 1..=1000000".into());
    }
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if args.records == Some(0) {
        return Err("--records must be at least 1".into());
    }
    if args.duration.is_zero() && args.records.is_none() {
        return Err("--duration must be longer than 0".into());
    }
    let data = DataDir::new(args.dir.as_deref(), "corewal-load-", args.keep)?;
    let dir = data.path.clone();

    let mut config = Config::new(&dir);
    config.shards = args.shards;
    config.cores = args.cores.clone();
    config.durability = args.durability;
    config.backend = match args.backend {
        BackendArg::IoUring => Backend::IoUring,
        BackendArg::Portable => Backend::Portable,
    };
    config.sync_method = match args.sync_method {
        SyncMethodArg::Dsync => SyncMethod::DsyncWrite,
        SyncMethodArg::Fdatasync => SyncMethod::WriteThenFdatasync,
    };
    config.segment_bytes = args.segment_bytes;
    config.commit_bytes_max = usize::try_from(args.commit_bytes_max)?;
    config.records_per_commit_max = args.records_per_commit_max;
    config.commits_in_flight_max = args.commits_in_flight_max;
    config.record_bytes_max = config.record_bytes_max.max(args.record_bytes);
    let engine = Arc::new(Engine::open(config)?);

    let channels: Vec<corewal::Channel> = (0..args.channels)
        .map(|c| engine.register(&format!("load-{c}")))
        .collect::<Result<_, _>>()?;
    let channels = Arc::new(channels);
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(args.writers + 1));
    let record_limit = args.records;
    let batch = args.batch;
    let record = vec![0xA5u8; args.record_bytes];

    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let (channels, measuring, stop, issued, barrier) = (
                channels.clone(),
                measuring.clone(),
                stop.clone(),
                issued.clone(),
                barrier.clone(),
            );
            let record = record.clone();
            let writers = args.writers;
            let pin = args.writer_cores.as_ref().map(|c| c[w % c.len()]);
            std::thread::Builder::new()
                .name(format!("load-writer-{w}"))
                .spawn(move || -> Result<(Histogram<u64>, u64), corewal::Error> {
                    if let Some(core) = pin {
                        let mut set = nix::sched::CpuSet::new();
                        if set.set(core).is_ok() {
                            let _ =
                                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
                        }
                    }
                    let mine: Vec<&corewal::Channel> = if channels.len() >= writers {
                        channels.iter().skip(w).step_by(writers).collect()
                    } else {
                        vec![&channels[w % channels.len()]]
                    };
                    let batch_records: Vec<&[u8]> = vec![&record[..]; batch];
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                        .expect("valid bounds");
                    let mut counted = 0u64;
                    barrier.wait();
                    let mut k = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(limit) = record_limit {
                            if issued.fetch_add(batch as u64, Ordering::Relaxed) >= limit {
                                break;
                            }
                        }
                        let ch = mine[k % mine.len()];
                        k += 1;
                        let counting = measuring.load(Ordering::Relaxed);
                        let t0 = Instant::now();
                        if batch == 1 {
                            ch.append(&record)?;
                        } else {
                            ch.append_batch(&batch_records)?;
                        }
                        let ns = t0.elapsed().as_nanos() as u64;
                        if counting && !stop.load(Ordering::Relaxed) {
                            hist.saturating_record(ns.max(1));
                            counted += 1;
                        }
                    }
                    Ok((hist, counted))
                })
                .expect("spawn writer thread")
        })
        .collect();

    // With --records every record counts: the window opens before the
    // writers start. Otherwise it opens after the warm-up.
    let warmup = if record_limit.is_some() {
        Duration::ZERO
    } else {
        args.warmup
    };
    if record_limit.is_some() {
        measuring.store(true, Ordering::SeqCst);
    }
    let mut m0 = engine.metrics();
    let mut cpu0 = cpu_seconds();
    let mut t0 = Instant::now();
    barrier.wait();
    if record_limit.is_none() {
        std::thread::sleep(warmup);
        m0 = engine.metrics();
        cpu0 = cpu_seconds();
        t0 = Instant::now();
        measuring.store(true, Ordering::SeqCst);
    }
    if record_limit.is_some() {
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(2));
        }
    } else {
        std::thread::sleep(args.duration);
    }
    let measured = t0.elapsed();
    let cpu1 = cpu_seconds();
    let m1 = engine.metrics();
    stop.store(true, Ordering::SeqCst);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let mut appends = 0u64;
    for h in handles {
        let (h, n) = h.join().map_err(|_| "writer thread panicked")??;
        hist.add(&h)?;
        appends += n;
    }
    let block_bytes = engine.block_bytes();
    let shards = engine.shard_count();
    let cores = engine.cores().to_vec();
    let engine = Arc::try_unwrap(engine).map_err(|_| "engine still shared")?;
    drop(channels);
    engine.close()?;

    let secs = measured.as_secs_f64();
    let records = appends * batch as u64;
    let payload = records as f64 * args.record_bytes as f64;
    let commits = m1.commits - m0.commits;
    let cpu = cpu1 - cpu0;
    let pct = |q: f64| hist.value_at_quantile(q);
    let mut percentile = std::collections::BTreeMap::new();
    for q in [50.0, 90.0, 99.0, 99.9, 99.99] {
        percentile.insert(format!("{q:.6}"), pct(q / 100.0));
    }
    let result = LoadResult {
        tool: "corewal load",
        mode: "closed-loop",
        host: fingerprint(&dir),
        dir: dir.display().to_string(),
        block_bytes,
        shards,
        cores,
        backend: format!("{:?}", args.backend),
        durability: format!("{:?}", args.durability),
        sync_method: format!("{:?}", args.sync_method),
        writers: args.writers,
        channels: args.channels,
        record_bytes: args.record_bytes,
        batch,
        warmup_s: warmup.as_secs_f64(),
        measured_s: secs,
        appends,
        records,
        appends_per_s: appends as f64 / secs,
        records_per_s: records as f64 / secs,
        payload_mb_per_s: payload / secs / 1e6,
        lat_ns: LatNs {
            min: hist.min(),
            max: hist.max(),
            mean: hist.mean(),
            percentile,
        },
        cpu_s: cpu,
        cpu_s_per_gb: if payload > 0.0 {
            cpu / (payload / 1e9)
        } else {
            0.0
        },
        commits,
        records_per_commit_mean: if commits > 0 {
            (m1.records - m0.records) as f64 / commits as f64
        } else {
            0.0
        },
        commit_device_us_mean: if commits > 0 {
            (m1.commit_device_ns - m0.commit_device_ns) as f64 / commits as f64 / 1e3
        } else {
            0.0
        },
        device_bytes_per_payload_byte: if m1.payload_bytes > m0.payload_bytes {
            (m1.commit_bytes - m0.commit_bytes) as f64
                / (m1.payload_bytes - m0.payload_bytes) as f64
        } else {
            0.0
        },
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result, data.is_removed());
    }
    Ok(())
}

fn print_table(r: &LoadResult, removed: bool) {
    let us = |ns: u64| ns as f64 / 1e3;
    let p = |k: &str| r.lat_ns.percentile.get(k).copied().unwrap_or(0);
    println!(
        "corewal load: closed loop, {} writers x {} channels, {} B records x {} per call, durability {}, {} / {}",
        r.writers, r.channels, r.record_bytes, r.batch, r.durability, r.backend, r.sync_method
    );
    println!(
        "host: {} | {} cores | kernel {} | {} on {} | block {} B | {} shards on cores {:?}",
        r.host.cpu_model,
        r.host.cores_online,
        r.host.kernel,
        r.host.filesystem,
        r.host.device,
        r.block_bytes,
        r.shards,
        r.cores
    );
    println!(
        "dir: {}{}",
        r.dir,
        if removed { " (removed)" } else { " (kept)" }
    );
    println!();
    println!(
        "  measured            {:>12.2} s (after {:.2} s warm-up)",
        r.measured_s, r.warmup_s
    );
    println!("  appends/s           {:>12.0}", r.appends_per_s);
    println!("  records/s           {:>12.0}", r.records_per_s);
    println!("  payload MB/s        {:>12.2}", r.payload_mb_per_s);
    println!("  latency p50         {:>12.1} us", us(p("50.000000")));
    println!("  latency p90         {:>12.1} us", us(p("90.000000")));
    println!("  latency p99         {:>12.1} us", us(p("99.000000")));
    println!("  latency p99.9       {:>12.1} us", us(p("99.900000")));
    println!("  latency p99.99      {:>12.1} us", us(p("99.990000")));
    println!("  latency max         {:>12.1} us", us(r.lat_ns.max));
    println!(
        "  CPU s per GB        {:>12.1} (process user+sys {:.2} s)",
        r.cpu_s_per_gb, r.cpu_s
    );
    println!("  commits             {:>12}", r.commits);
    println!("  records per commit  {:>12.2}", r.records_per_commit_mean);
    println!(
        "  commit time mean    {:>12.1} us (submission to completion seen)",
        r.commit_device_us_mean
    );
    println!(
        "  device B / payload B{:>12.2}",
        r.device_bytes_per_payload_byte
    );
}
