//! `corewal load`: the load generator.
//!
//! Closed loop (default): each writer thread appends and waits for its own
//! acknowledgement before the next append, and each append is timed from just
//! before the call to its return.
//!
//! Open loop (`--rate R`): the writers share a schedule of R appends per
//! second (writer w's k-th append is due at start + (w + k * writers) / R),
//! and each append is timed from the moment it was *due*, not the moment the
//! writer got round to it, so a stall shows as the latency of every append it
//! delayed (the coordinated-omission correction of wrk2 and HdrHistogram).
//!
//! Results count only appends that started after the warm-up and finished
//! before the end of the measured window.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use std::io::IsTerminal;
use std::sync::Mutex;

use clap::{Args, ValueEnum};
use corewal::{Backend, Config, Durability, Engine, SyncMethod};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::data_dir::DataDir;
use crate::host::{cpu_seconds, fingerprint, rss_bytes, Host};

/// Arguments of `corewal load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// A named workload (see docs/BENCHMARKS.md); flags given beside it
    /// override its values. Default: none (the flags' defaults, which are small-sync's).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Writer threads [default: 16, or the preset's]. In the closed loop each waits for its own
    /// acknowledgement before its next append.
    #[arg(long)]
    writers: Option<usize>,
    /// Channels [default: 16, or the preset's]. With at least as many channels as writers,
    /// writer w appends round-robin to channels w, w+writers, …; with fewer, writer w shares
    /// channel w % channels.
    #[arg(long)]
    channels: Option<usize>,
    /// Payload bytes of each record: a size (`256`, `4KiB`) or a range drawn uniformly per
    /// record (`128-4096`, `1KiB-64KiB`) [default: 256, or the preset's].
    #[arg(long, value_parser = parse_size_range)]
    record_bytes: Option<SizeRange>,
    /// Records per append call (1: `append`; more: `append_batch`, one atomic commit)
    /// [default: 1, or the preset's].
    #[arg(long)]
    batch: Option<usize>,
    /// Open loop: this many append calls per second in total, spread evenly over the writers;
    /// latency is measured from each append's scheduled start (coordinated-omission
    /// corrected). Default: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed of the record-size draws (the same seed gives the same sizes per writer).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the measured window, e.g. `10s`, `500ms`.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many records in total instead of after --duration (no warm-up then).
    /// Default: run for --duration.
    #[arg(long)]
    records: Option<u64>,
    /// Checkpoint each channel after every N records appended to it, through the last
    /// record this writer got back (`Channel::checkpoint`: durable, one commit with a data
    /// sync), as a service does that persisted them elsewhere: the records' memory is
    /// freed and their segments are reclaimed and recycled. The writer's time in the
    /// checkpoint is charged to its throughput, not to append latency. Default: never.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Space limit of each shard's segment files (`Config::wal_bytes_max`; suffixes KiB,
    /// MiB, GiB). Past it the engine relocates stragglers and, if what is live fills it,
    /// refuses appends with a retryable `NoSpace` (the writer retries after 1 ms and the
    /// summary counts the refusals). Default: the engine's, 64 segments.
    #[arg(long, value_parser = parse_bytes)]
    wal_bytes_max: Option<u64>,
    /// Memory for record payloads (`Config::buffer_bytes_max`, the whole
    /// engine's; suffixes KiB, MiB, GiB). Default: the engine's (256 MiB).
    /// Records beyond it are read back from the WAL.
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Reader threads beside the writers: each alternates reads of a random
    /// channel's newest records and of a random live offset, up to 64 KiB
    /// each, and the summary reports both kinds' latency, the read
    /// throughput and the engine's reads of the WAL. Default 0.
    #[arg(long, default_value_t = 0)]
    readers: usize,
    /// Subscriber threads beside the writers: subscriber i follows channel
    /// i (modulo --channels) with `Channel::subscribe` from its end at the
    /// start; the summary reports the records delivered per second, the
    /// lag from each record's acknowledgement to its writer to its
    /// delivery (p50/p99), and how many subscribers were given records
    /// read back from the WAL. 0..=1024; default 0.
    #[arg(long, default_value_t = 0)]
    subscribers: usize,
    /// Write one JSON object per --interval (throughput, latency, WAL bytes on disk, RSS)
    /// to this file, one per line; `corewal plot` draws it. Default: none.
    #[arg(long)]
    report_file: Option<PathBuf>,
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
    /// Write an HdrHistogram interval log of append latency (ns) to this file, one histogram
    /// per --interval of the measured window (readable by HistogramLogAnalyzer and hdr-plot).
    /// Default: no log.
    #[arg(long)]
    hdr_log: Option<PathBuf>,
    /// Length of an interval: a line on stderr (appends/s, latency, WAL bytes on disk,
    /// RSS), an --hdr-log entry and a --report-file line.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// No interval lines on stderr (the summary, --report-file and --hdr-log are unchanged).
    #[arg(long)]
    quiet: bool,
}

/// Named workloads; the figures in docs/BENCHMARKS.md use these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// 16 writers x 1 channel each x 256 B, one record per call.
    SmallSync,
    /// 4 writers x 64 channels x 4 KiB x 16 records per call.
    Batched,
    /// 16 writers over 10,000 channels x 1 KiB, one record per call.
    Fanout,
}

/// Record sizes: fixed (`min == max`) or uniform in `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    pub min: usize,
    pub max: usize,
}

fn parse_size_range(s: &str) -> Result<SizeRange, String> {
    let size = |t: &str| -> Result<usize, String> {
        usize::try_from(parse_bytes(t)?).map_err(|_| format!("{t:?} is too large"))
    };
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (size(a)?, size(b)?),
        None => {
            let v = size(s)?;
            (v, v)
        }
    };
    if min > max {
        return Err(format!("{s:?}: the range goes down"));
    }
    Ok(SizeRange { min, max })
}

/// The workload after the preset and the flags are combined.
#[derive(Debug, Clone, Copy)]
struct Workload {
    writers: usize,
    channels: usize,
    record: SizeRange,
    batch: usize,
}

impl Workload {
    fn resolve(a: &LoadArgs) -> Workload {
        let fixed = |b| SizeRange { min: b, max: b };
        let base = match a.preset {
            None | Some(Preset::SmallSync) => Workload {
                writers: 16,
                channels: 16,
                record: fixed(256),
                batch: 1,
            },
            Some(Preset::Batched) => Workload {
                writers: 4,
                channels: 64,
                record: fixed(4096),
                batch: 16,
            },
            Some(Preset::Fanout) => Workload {
                writers: 16,
                channels: 10_000,
                record: fixed(1024),
                batch: 1,
            },
        };
        Workload {
            writers: a.writers.unwrap_or(base.writers),
            channels: a.channels.unwrap_or(base.channels),
            record: a.record_bytes.unwrap_or(base.record),
            batch: a.batch.unwrap_or(base.batch),
        }
    }
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
    preset: Option<String>,
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
    record_bytes_min: usize,
    record_bytes_max: usize,
    batch: usize,
    seed: u64,
    rate_target: Option<f64>,
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
    /// Upper bound of the power-of-two bucket holding the 99th percentile.
    records_per_commit_p99_le: u64,
    commit_device_us_mean: f64,
    device_bytes_per_payload_byte: f64,
    /// Idle shard sleeps that ran to their 1 s safety bound with requests
    /// queued: missed wake-ups (should be 0).
    wakeups_missed: u64,
    /// `--checkpoint-every`, and the checkpoints the writers made in the measured window.
    checkpoint_every: Option<u64>,
    checkpoints: u64,
    /// Appends refused with a retryable `NoSpace` (and retried) in the measured window.
    appends_refused: u64,
    /// `--wal-bytes-max` (per shard), and the segment files' bytes (all shards) at the end
    /// and at most over the run's intervals.
    wal_bytes_max: u64,
    wal_bytes_end: u64,
    wal_bytes_peak: u64,
    /// Segments reclaimed and recycled, and records relocated, in the measured window.
    segments_reclaimed: u64,
    segments_recycled: u64,
    records_relocated: u64,
    /// Resident memory of the process at the end and at most over the run's intervals.
    rss_bytes_end: u64,
    rss_bytes_peak: u64,
    /// `Config::buffer_bytes_max`, and the payload bytes kept in memory at
    /// the end.
    memory_budget_bytes: u64,
    cached_bytes_end: u64,
    /// With --readers.
    #[serde(skip_serializing_if = "Option::is_none")]
    reads: Option<crate::readers::ReadFigures>,
    /// With --subscribers.
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<crate::subscribers::SubscriberFigures>,
    /// Open loop: how far behind its schedule the latest writer was at the end.
    schedule_lag_end_ns: Option<u64>,
    /// Open loop: whether the engine kept up with the schedule (the lag at the
    /// end stayed under a tenth of the measured window).
    rate_sustained: Option<bool>,
}

/// A latency histogram in nanoseconds (1 ns to 10 minutes, 3 digits): the
/// one every figure of the tools is recorded in.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds")
}

/// What a writer thread needs.
struct WriterPlan {
    w: usize,
    work: Workload,
    rate: Option<f64>,
    seed: u64,
    record_limit: Option<u64>,
    pin: Option<usize>,
    checkpoint_every: Option<u64>,
}

/// What a writer did in the measured window.
#[derive(Default)]
struct Counted {
    appends: u64,
    checkpoints: u64,
    refused: u64,
}

/// State shared by the writers and the main thread.
struct Shared {
    channels: Vec<corewal::Channel>,
    measuring: AtomicBool,
    stop: AtomicBool,
    issued: AtomicU64,
    /// Appends finished (counted or not), for the progress display.
    done: AtomicU64,
    /// Each writer's latencies since the main thread last collected them.
    hists: Vec<Mutex<Histogram<u64>>>,
    /// Open loop: how late (ns) each writer's latest append started against
    /// its schedule; at the end, the backlog the run left.
    lag_ns: Vec<AtomicU64>,
    barrier: Barrier,
    /// When the open-loop schedule starts (set before the barrier opens).
    epoch: Mutex<Option<Instant>>,
    /// Where writers note their acknowledgements for --subscribers.
    subscribers: Arc<crate::subscribers::Subscribers>,
}

fn writer(plan: WriterPlan, shared: Arc<Shared>) -> Result<Counted, corewal::Error> {
    if let Some(core) = plan.pin {
        let mut set = nix::sched::CpuSet::new();
        if set.set(core).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
    let WriterPlan { w, work, .. } = plan;
    let channels = &shared.channels;
    // This writer's channels, by index.
    let mine: Vec<usize> = if channels.len() >= work.writers {
        (w..channels.len()).step_by(work.writers).collect()
    } else {
        vec![w % channels.len()]
    };
    let mut rng =
        SmallRng::seed_from_u64(plan.seed ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let payload = vec![0xA5u8; work.record.max];
    let mut sizes = vec![0usize; work.batch];
    let mut counted = Counted::default();
    // Records appended to each of `mine` since its last checkpoint.
    let mut since_checkpoint = vec![0u64; mine.len()];
    shared.barrier.wait();
    let epoch = shared
        .epoch
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .expect("set before the barrier");
    // Open loop: this writer's appends are due every `period`, from `first`.
    let offset = plan
        .rate
        .map(|rate| Duration::from_secs_f64(w as f64 / rate));
    let mut schedule = plan.rate.map(|rate| {
        let period = Duration::from_secs_f64(work.writers as f64 / rate);
        (epoch + offset.unwrap_or_default(), period)
    });
    let mut k: u64 = 0;
    let mut was_counting = shared.measuring.load(Ordering::Relaxed);
    while !shared.stop.load(Ordering::Relaxed) {
        // The measured window starts on a fresh schedule: a backlog left by
        // the warm-up (engine start, first segment) is not charged to it.
        let counting = shared.measuring.load(Ordering::Relaxed);
        if counting && !was_counting {
            if let Some((first, _)) = schedule.as_mut() {
                *first = Instant::now() + offset.unwrap_or_default();
                k = 0;
            }
        }
        was_counting = counting;
        if let Some(limit) = plan.record_limit {
            if shared
                .issued
                .fetch_add(work.batch as u64, Ordering::Relaxed)
                >= limit
            {
                break;
            }
        }
        for s in sizes.iter_mut() {
            *s = if work.record.min == work.record.max {
                work.record.min
            } else {
                rng.random_range(work.record.min..=work.record.max)
            };
        }
        let slot = k as usize % mine.len();
        let ch = &channels[mine[slot]];
        let start = match schedule {
            Some((first, period)) => {
                let due = first + period.mul_f64(k as f64);
                let now = Instant::now();
                // Slices, so that a slow schedule does not hold up the end
                // of the warm-up or of the run.
                let mut left = due.saturating_duration_since(now);
                while !left.is_zero() && !shared.stop.load(Ordering::Relaxed) {
                    let slice = left.min(Duration::from_millis(20));
                    std::thread::sleep(slice);
                    left = due.saturating_duration_since(Instant::now());
                }
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
                let late = now.saturating_duration_since(due).as_nanos() as u64;
                shared.lag_ns[w].store(late, Ordering::Relaxed);
                due
            }
            None => Instant::now(),
        };
        k += 1;
        let appended = if work.batch == 1 {
            ch.append(&payload[..sizes[0]])
        } else {
            let batch: Vec<&[u8]> = sizes.iter().map(|&n| &payload[..n]).collect();
            ch.append_batch(&batch)
        };
        let first = match appended {
            Ok(first) => first,
            // A WAL at its limit (or a full filesystem): nothing was written;
            // retry, as a service would, and say so in the summary.
            Err(e) if e.is_retryable() => {
                if counting {
                    counted.refused += 1;
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(e) => return Err(e),
        };
        shared
            .subscribers
            .note(mine[slot], first, work.batch as u64, start);
        let ns = start.elapsed().as_nanos() as u64;
        shared.done.fetch_add(1, Ordering::Relaxed);
        if counting && !shared.stop.load(Ordering::Relaxed) {
            shared.hists[w]
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .saturating_record(ns.max(1));
            counted.appends += 1;
        }
        if let Some(every) = plan.checkpoint_every {
            since_checkpoint[slot] += work.batch as u64;
            if since_checkpoint[slot] >= every {
                since_checkpoint[slot] = 0;
                match ch.checkpoint(corewal::Offset(first.0 + work.batch as u64 - 1)) {
                    Ok(()) => {
                        if counting && !shared.stop.load(Ordering::Relaxed) {
                            counted.checkpoints += 1;
                        }
                    }
                    // No room even for the checkpoint: the next one covers it.
                    Err(e) if e.is_retryable() => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(counted)
}

/// Moves every writer's latencies since the last call into one histogram.
fn collect(shared: &Shared) -> Histogram<u64> {
    let mut out = new_histogram();
    for h in &shared.hists {
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        out.add(&*h).expect("same bounds");
        h.reset();
    }
    out
}

pub fn run(args: LoadArgs) -> Result<(), Box<dyn std::error::Error>> {
    let work = Workload::resolve(&args);
    check_args(&args, &work)?;
    // Open the logs before any work, so that a bad path fails at once.
    let create = |p: &PathBuf, flag: &str| {
        std::fs::File::create(p).map_err(|e| format!("{flag} {}: {e}", p.display()))
    };
    let mut hdr_log = args
        .hdr_log
        .as_ref()
        .map(|p| create(p, "--hdr-log"))
        .transpose()?;
    let report = args
        .report_file
        .as_ref()
        .map(|p| create(p, "--report-file").map(std::io::BufWriter::new))
        .transpose()?;
    let data = DataDir::new(args.dir.as_deref(), "corewal-load-", args.keep)?;
    let dir = data.path.clone();
    let config = engine_config(&args, &dir, &work)?;
    let wal_bytes_max = config.wal_bytes_max();
    let engine = Engine::open(config)?;

    let channels: Vec<corewal::Channel> = (0..work.channels)
        .map(|c| engine.register(&format!("load-{c}")))
        .collect::<Result<_, _>>()?;
    let subscribers = crate::subscribers::Subscribers::new(args.subscribers, channels.len());
    let shared = Arc::new(Shared {
        channels,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        done: AtomicU64::new(0),
        hists: (0..work.writers)
            .map(|_| Mutex::new(new_histogram()))
            .collect(),
        lag_ns: (0..work.writers).map(|_| AtomicU64::new(0)).collect(),
        barrier: Barrier::new(work.writers + 1),
        epoch: Mutex::new(None),
        subscribers: subscribers.clone(),
    });
    let subscriber_handles = subscribers.spawn(args.subscribers, &shared.channels);
    let handles = spawn_writers(&args, work, &shared);
    let readers = crate::readers::Readers::new();
    let reader_handles = readers.spawn(args.readers, &shared.channels, args.seed);

    // With --records every record counts: the window opens before the
    // writers start. Otherwise it opens after the warm-up.
    let warmup = if args.records.is_some() {
        Duration::ZERO
    } else {
        args.warmup
    };
    // The progress bar only on a terminal (and with --records); interval
    // lines on stderr otherwise, wherever it goes, unless --quiet.
    let terminal = std::io::stderr().is_terminal() && std::io::stdout().is_terminal();
    let bar = (terminal && !args.json)
        .then_some(args.records)
        .flatten()
        .map(progress_bar);
    let mut serializer = hdrhistogram::serialization::V2Serializer::new();
    let log_writer = match hdr_log.as_mut() {
        Some(f) => Some(
            hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder::new()
                .add_comment("corewal load: append latency in nanoseconds")
                .with_start_time(std::time::SystemTime::now())
                .with_max_value_divisor(1e6)
                .begin_log_with(f, &mut serializer)?,
        ),
        None => None,
    };
    let mut window = Window::open(&engine, &shared, warmup);
    let mut ticks = Ticks {
        lines: bar.is_none() && !args.quiet,
        bar,
        log: log_writer,
        report,
        last_done: 0,
        wal_bytes_peak: 0,
        rss_bytes_peak: 0,
        readers: readers.clone(),
        subscribers: subscribers.clone(),
    };
    if window.measuring {
        readers.measure(true);
        subscribers.measure(true);
    }
    window.run(&args, &engine, &shared, &handles, &mut ticks)?;
    let end = Measured::take(&engine, &window, &shared);
    readers.measure(false);
    subscribers.measure(false);
    shared.stop.store(true, Ordering::SeqCst);
    readers.stop();
    subscribers.stop();
    for h in reader_handles {
        h.join().map_err(|_| "reader thread panicked")??;
    }
    for h in subscriber_handles {
        h.join().map_err(|_| "subscriber thread panicked")??;
    }
    let mut counted = Counted::default();
    for h in handles {
        let c = h.join().map_err(|_| "writer thread panicked")??;
        counted.appends += c.appends;
        counted.checkpoints += c.checkpoints;
        counted.refused += c.refused;
    }
    let rest = collect(&shared);
    window.total.add(&rest)?;
    ticks.finish(&rest, window.started)?;
    let rss_bytes_end = rss_bytes();
    let wal_bytes_end = engine.metrics().wal_bytes;
    let memory = (
        engine.config().buffer_bytes_max,
        engine.metrics().cached_bytes,
    );
    let reads = (args.readers > 0).then(|| {
        let wal_reads = end.m1.wal_reads - window.m0.wal_reads;
        readers.figures(args.readers, end.elapsed.as_secs_f64(), wal_reads)
    });
    let subscriptions =
        (args.subscribers > 0).then(|| subscribers.figures(end.elapsed.as_secs_f64()));
    let block_bytes = engine.block_bytes();
    let shards = engine.shard_count();
    let cores = engine.cores().to_vec();
    drop(shared);
    engine.close()?;

    let result = summarize(
        &args,
        &work,
        &window,
        &end,
        &counted,
        Setup {
            host: fingerprint(&dir),
            dir: dir.display().to_string(),
            block_bytes,
            shards,
            cores,
            warmup,
            wal_bytes_max,
        },
        AtEnd {
            wal_bytes_end,
            wal_bytes_peak: ticks.wal_bytes_peak.max(wal_bytes_end),
            rss_bytes_end,
            rss_bytes_peak: ticks.rss_bytes_peak.max(rss_bytes_end),
            memory_budget_bytes: memory.0,
            cached_bytes_end: memory.1,
            reads,
            subscriptions,
        },
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_table(&result, data.is_removed());
    }
    Ok(())
}

/// Starts the writer threads; they wait at the barrier.
fn spawn_writers(
    args: &LoadArgs,
    work: Workload,
    shared: &Arc<Shared>,
) -> Vec<std::thread::JoinHandle<Result<Counted, corewal::Error>>> {
    (0..work.writers)
        .map(|w| {
            let plan = WriterPlan {
                w,
                work,
                rate: args.rate,
                seed: args.seed,
                record_limit: args.records,
                pin: args.writer_cores.as_ref().map(|c| c[w % c.len()]),
                checkpoint_every: args.checkpoint_every,
            };
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("load-writer-{w}"))
                .spawn(move || writer(plan, shared))
                .expect("spawn writer thread")
        })
        .collect()
}

/// The run's clock: when it started, when the measured window opened, and
/// the counters at that moment.
struct Window {
    started: Instant,
    t0: Instant,
    end_of_warmup: Instant,
    measuring: bool,
    m0: corewal::Metrics,
    cpu0: f64,
    total: Histogram<u64>,
}

impl Window {
    /// Opens the barrier: the writers start.
    fn open(engine: &Engine, shared: &Shared, warmup: Duration) -> Window {
        let started = Instant::now();
        *shared.epoch.lock().unwrap_or_else(|p| p.into_inner()) = Some(started);
        let measuring = warmup.is_zero();
        if measuring {
            shared.measuring.store(true, Ordering::SeqCst);
        }
        shared.barrier.wait();
        let t0 = Instant::now();
        Window {
            started,
            t0,
            end_of_warmup: t0 + warmup,
            measuring,
            m0: engine.metrics(),
            cpu0: cpu_seconds(),
            total: new_histogram(),
        }
    }

    /// Ticks every --interval until the run is over: the measured window
    /// opens after the warm-up and lasts --duration (or, with --records,
    /// until every writer is done).
    fn run(
        &mut self,
        args: &LoadArgs,
        engine: &Engine,
        shared: &Shared,
        handles: &[std::thread::JoinHandle<Result<Counted, corewal::Error>>],
        ticks: &mut Ticks<'_>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let mut last_tick = self.t0;
        loop {
            let now = Instant::now();
            let finished = if args.records.is_some() {
                handles.iter().all(|h| h.is_finished())
            } else {
                self.measuring && now >= self.t0 + args.duration
            };
            if finished {
                return Ok(());
            }
            if !self.measuring && now >= self.end_of_warmup {
                ticks.readers.measure(true);
                ticks.subscribers.measure(true);
                self.m0 = engine.metrics();
                self.cpu0 = cpu_seconds();
                self.t0 = Instant::now();
                shared.measuring.store(true, Ordering::SeqCst);
                self.measuring = true;
                last_tick = self.t0;
                continue;
            }
            // Sleep to the next tick, the end of the warm-up or of the window.
            let next_tick = last_tick + args.interval;
            let wake = if !self.measuring {
                next_tick.min(self.end_of_warmup)
            } else if args.records.is_none() {
                next_tick.min(self.t0 + args.duration)
            } else {
                next_tick.min(now + Duration::from_millis(5))
            };
            if wake > now {
                std::thread::sleep(wake - now);
            }
            if let Some(b) = &ticks.bar {
                let issued = shared.issued.load(Ordering::Relaxed);
                b.set_position(issued.min(b.length().unwrap_or(0)));
            }
            if Instant::now() < next_tick {
                continue;
            }
            let h = collect(shared);
            if self.measuring {
                self.total.add(&h)?;
            }
            let done = shared.done.load(Ordering::Relaxed);
            ticks.tick(&h, done, (self.started, last_tick), self.measuring, engine)?;
            last_tick = Instant::now();
        }
    }
}

/// Where each interval goes: a line on stderr, the HdrHistogram log, the
/// report file; and the largest WAL and RSS seen.
struct Ticks<'a> {
    lines: bool,
    bar: Option<indicatif::ProgressBar>,
    log: Option<
        hdrhistogram::serialization::interval_log::IntervalLogWriter<
            'a,
            'a,
            std::fs::File,
            hdrhistogram::serialization::V2Serializer,
        >,
    >,
    report: Option<std::io::BufWriter<std::fs::File>>,
    last_done: u64,
    wal_bytes_peak: u64,
    rss_bytes_peak: u64,
    /// The readers (--readers), told when the measured window opens.
    readers: Arc<crate::readers::Readers>,
    /// The subscribers (--subscribers), likewise.
    subscribers: Arc<crate::subscribers::Subscribers>,
}

/// One interval of a run, as `--report-file` holds it (one JSON object a
/// line) and `corewal plot` reads it.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct Interval {
    /// Seconds since the writers started, at the end of the interval.
    pub t_s: f64,
    /// Whether the interval is before the measured window.
    pub warmup: bool,
    pub appends_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Bytes of the segment files of every shard.
    pub wal_bytes: u64,
    /// Resident memory of the process.
    pub rss_bytes: u64,
}

impl Ticks<'_> {
    /// One interval, from `last` to now, with the latencies `h`.
    fn tick(
        &mut self,
        h: &Histogram<u64>,
        done: u64,
        (started, last): (Instant, Instant),
        measuring: bool,
        engine: &Engine,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let span = last.elapsed();
        if let (Some(lw), true) = (self.log.as_mut(), measuring) {
            lw.write_histogram(h, last - started, span, None)?;
        }
        let at = Interval {
            t_s: started.elapsed().as_secs_f64(),
            warmup: !measuring,
            appends_per_s: (done - self.last_done) as f64 / span.as_secs_f64(),
            p50_us: h.value_at_quantile(0.5) as f64 / 1e3,
            p99_us: h.value_at_quantile(0.99) as f64 / 1e3,
            max_us: h.max() as f64 / 1e3,
            wal_bytes: engine.metrics().wal_bytes,
            rss_bytes: rss_bytes(),
        };
        self.last_done = done;
        self.wal_bytes_peak = self.wal_bytes_peak.max(at.wal_bytes);
        self.rss_bytes_peak = self.rss_bytes_peak.max(at.rss_bytes);
        if self.lines {
            eprintln!(
                "[{:>7.1}s]{} {:>10.0} appends/s  p50 {:>9.1} us  p99 {:>9.1} us  max {:>9.1} us  WAL {:>8.1} MiB  RSS {:>7.1} MiB",
                at.t_s,
                if measuring { "          " } else { " (warm-up)" },
                at.appends_per_s,
                at.p50_us,
                at.p99_us,
                at.max_us,
                at.wal_bytes as f64 / MIB,
                at.rss_bytes as f64 / MIB,
            );
        }
        if let Some(r) = self.report.as_mut() {
            use std::io::Write;
            serde_json::to_writer(&mut *r, &at)?;
            r.write_all(b"\n")?;
        }
        Ok(())
    }

    /// The latencies after the last tick go to the log; the report and the
    /// progress bar are closed.
    fn finish(
        &mut self,
        rest: &Histogram<u64>,
        started: Instant,
    ) -> Result<(), Box<dyn std::error::Error>> {
        if let Some(lw) = self.log.as_mut() {
            lw.write_histogram(rest, started.elapsed(), Duration::ZERO, None)?;
        }
        self.log = None;
        if let Some(mut r) = self.report.take() {
            use std::io::Write;
            r.flush()?;
        }
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        Ok(())
    }
}

const MIB: f64 = (1u64 << 20) as f64;

/// The counters at the end of the measured window.
struct Measured {
    elapsed: Duration,
    lag_end_ns: u64,
    cpu1: f64,
    m1: corewal::Metrics,
}

impl Measured {
    fn take(engine: &Engine, window: &Window, shared: &Shared) -> Measured {
        Measured {
            elapsed: window.t0.elapsed(),
            lag_end_ns: shared
                .lag_ns
                .iter()
                .map(|l| l.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0),
            cpu1: cpu_seconds(),
            m1: engine.metrics(),
        }
    }
}

/// What a result says about the machine and the engine it ran on.
struct Setup {
    host: Host,
    dir: String,
    block_bytes: usize,
    shards: usize,
    cores: Vec<usize>,
    warmup: Duration,
    wal_bytes_max: u64,
}

/// The result of a run from its counters.
/// What the run left: the WAL and the resident memory at the end and at
/// most, the payloads in memory, and the readers' and subscribers' figures.
struct AtEnd {
    wal_bytes_end: u64,
    wal_bytes_peak: u64,
    rss_bytes_end: u64,
    rss_bytes_peak: u64,
    memory_budget_bytes: u64,
    cached_bytes_end: u64,
    reads: Option<crate::readers::ReadFigures>,
    subscriptions: Option<crate::subscribers::SubscriberFigures>,
}

fn summarize(
    args: &LoadArgs,
    work: &Workload,
    window: &Window,
    end: &Measured,
    counted: &Counted,
    setup: Setup,
    at_end: AtEnd,
) -> LoadResult {
    let AtEnd {
        wal_bytes_end,
        wal_bytes_peak,
        rss_bytes_end,
        rss_bytes_peak,
        memory_budget_bytes,
        cached_bytes_end,
        reads,
        subscriptions,
    } = at_end;
    let (m0, m1) = (&window.m0, &end.m1);
    let total = &window.total;
    let secs = end.elapsed.as_secs_f64();
    let appends = counted.appends;
    let records = appends * work.batch as u64;
    let payload = (m1.payload_bytes - m0.payload_bytes) as f64;
    let commits = m1.commits - m0.commits;
    let cpu = end.cpu1 - window.cpu0;
    let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let mut percentile = std::collections::BTreeMap::new();
    for q in [50.0, 90.0, 99.0, 99.9, 99.99] {
        percentile.insert(format!("{q:.6}"), total.value_at_quantile(q / 100.0));
    }
    LoadResult {
        tool: "corewal load",
        mode: if args.rate.is_some() {
            "open-loop"
        } else {
            "closed-loop"
        },
        preset: args.preset.map(|p| format!("{p:?}")),
        host: setup.host,
        dir: setup.dir,
        block_bytes: setup.block_bytes,
        shards: setup.shards,
        cores: setup.cores,
        backend: format!("{:?}", args.backend),
        durability: format!("{:?}", args.durability),
        sync_method: format!("{:?}", args.sync_method),
        writers: work.writers,
        channels: work.channels,
        record_bytes_min: work.record.min,
        record_bytes_max: work.record.max,
        batch: work.batch,
        seed: args.seed,
        rate_target: args.rate,
        warmup_s: setup.warmup.as_secs_f64(),
        measured_s: secs,
        appends,
        records,
        appends_per_s: appends as f64 / secs,
        records_per_s: records as f64 / secs,
        payload_mb_per_s: payload / secs / 1e6,
        lat_ns: LatNs {
            min: total.min(),
            max: total.max(),
            mean: total.mean(),
            percentile,
        },
        cpu_s: cpu,
        cpu_s_per_gb: per(cpu, payload / 1e9),
        commits,
        records_per_commit_mean: per((m1.records - m0.records) as f64, commits as f64),
        records_per_commit_p99_le: m1.commit_records_quantile_le(m0, 0.99),
        commit_device_us_mean: per(
            (m1.commit_device_ns - m0.commit_device_ns) as f64 / 1e3,
            commits as f64,
        ),
        device_bytes_per_payload_byte: per((m1.commit_bytes - m0.commit_bytes) as f64, payload),
        wakeups_missed: m1.wakeups_missed - m0.wakeups_missed,
        checkpoint_every: args.checkpoint_every,
        checkpoints: counted.checkpoints,
        appends_refused: counted.refused,
        wal_bytes_max: setup.wal_bytes_max,
        wal_bytes_end,
        wal_bytes_peak,
        segments_reclaimed: m1.segments_reclaimed - m0.segments_reclaimed,
        segments_recycled: m1.segments_recycled - m0.segments_recycled,
        records_relocated: m1.records_relocated - m0.records_relocated,
        rss_bytes_end,
        rss_bytes_peak,
        memory_budget_bytes,
        cached_bytes_end,
        reads,
        subscriptions,
        schedule_lag_end_ns: args.rate.map(|_| end.lag_end_ns),
        rate_sustained: args
            .rate
            .map(|_| (end.lag_end_ns as f64) < secs * 1e9 / 10.0),
    }
}

/// Refuses a workload or option out of range, naming the flag.
fn check_args(args: &LoadArgs, work: &Workload) -> Result<(), Box<dyn std::error::Error>> {
    if work.writers == 0 || work.writers > 4096 {
        return Err("--writers must be 1..=4096".into());
    }
    if work.channels == 0 || work.channels > 1_000_000 {
        return Err("--channels must be 1..=1000000".into());
    }
    if work.batch == 0 || work.batch > 65_536 {
        return Err("--batch must be 1..=65536".into());
    }
    if work.record.max == 0 {
        return Err("--record-bytes must be at least 1".into());
    }
    if args.records == Some(0) {
        return Err("--records must be at least 1".into());
    }
    if args.duration.is_zero() && args.records.is_none() {
        return Err("--duration must be longer than 0".into());
    }
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0 && rate <= 1e8) {
            return Err("--rate must be more than 0 and at most 100000000 appends/s".into());
        }
    }
    if args.checkpoint_every == Some(0) {
        return Err("--checkpoint-every must be at least 1 (records per channel)".into());
    }
    if args.interval < Duration::from_millis(10) {
        return Err("--interval must be at least 10ms".into());
    }
    if args.subscribers > 1024 {
        return Err("--subscribers must be 0..=1024".into());
    }
    if let Some(cores) = &args.writer_cores {
        if cores.is_empty() {
            return Err("--writer-cores needs at least one core".into());
        }
    }
    Ok(())
}

/// The engine's configuration for a run in `dir`.
fn engine_config(
    args: &LoadArgs,
    dir: &std::path::Path,
    work: &Workload,
) -> Result<Config, Box<dyn std::error::Error>> {
    let mut config = Config::new(dir);
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
    // What the workload needs: its largest record (a smaller --commit-bytes-max
    // than the default record bound would otherwise be refused).
    config.record_bytes_max = work.record.max;
    config.wal_bytes_max = args.wal_bytes_max;
    if let Some(b) = args.memory_budget {
        config.buffer_bytes_max = b;
    }
    Ok(config)
}

/// The progress bar of a run of `records` records.
fn progress_bar(records: u64) -> indicatif::ProgressBar {
    let b = indicatif::ProgressBar::new(records);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} records, {per_sec}, eta {eta}",
        )
        .expect("valid template"),
    );
    b
}

fn print_table(r: &LoadResult, removed: bool) {
    let us = |ns: u64| ns as f64 / 1e3;
    let p = |k: &str| r.lat_ns.percentile.get(k).copied().unwrap_or(0);
    let sizes = if r.record_bytes_min == r.record_bytes_max {
        format!("{} B", r.record_bytes_min)
    } else {
        format!(
            "{}-{} B (uniform, seed {})",
            r.record_bytes_min, r.record_bytes_max, r.seed
        )
    };
    let mode = match r.rate_target {
        Some(rate) => {
            format!("open loop at {rate:.0} appends/s (latency from each append's scheduled start)")
        }
        None => "closed loop (each writer waits for its own acknowledgement)".into(),
    };
    println!("corewal load: {mode}");
    println!(
        "  {}{} writers x {} channels, {sizes} records x {} per call, durability {}, {} / {}",
        r.preset
            .as_ref()
            .map_or(String::new(), |p| format!("preset {p}: ")),
        r.writers,
        r.channels,
        r.batch,
        r.durability,
        r.backend,
        r.sync_method
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
    if let (Some(rate), Some(lag)) = (r.rate_target, r.schedule_lag_end_ns) {
        println!(
            "  schedule lag at end {:>12.1} ms{}",
            lag as f64 / 1e6,
            if r.rate_sustained == Some(false) {
                format!(
                    "  NOT SUSTAINED: the engine fell behind {rate:.0} appends/s with {} writers; latencies include the backlog",
                    r.writers
                )
            } else {
                String::new()
            }
        );
    }
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
    println!(
        "  records per commit  {:>12.2} mean, p99 <= {}",
        r.records_per_commit_mean, r.records_per_commit_p99_le
    );
    println!(
        "  commit time mean    {:>12.1} us (submission to completion seen)",
        r.commit_device_us_mean
    );
    println!(
        "  device B / payload B{:>12.2}",
        r.device_bytes_per_payload_byte
    );
    if let Some(every) = r.checkpoint_every {
        println!(
            "  checkpoints         {:>12} (one per channel every {every} records)",
            r.checkpoints
        );
    }
    if r.appends_refused > 0 {
        println!(
            "  appends refused     {:>12} (retryable NoSpace: the WAL at its limit or a full disk; retried)",
            r.appends_refused
        );
    }
    println!(
        "  WAL on disk         {:>12.1} MiB at the end, {:.1} MiB at most (limit {:.1} MiB per shard)",
        r.wal_bytes_end as f64 / MIB,
        r.wal_bytes_peak as f64 / MIB,
        r.wal_bytes_max as f64 / MIB
    );
    if r.segments_reclaimed > 0 || r.records_relocated > 0 {
        println!(
            "  segments reclaimed  {:>12} ({} recycled, {} records relocated)",
            r.segments_reclaimed, r.segments_recycled, r.records_relocated
        );
    }
    println!(
        "  RSS                 {:>12.1} MiB at the end, {:.1} MiB at most",
        r.rss_bytes_end as f64 / MIB,
        r.rss_bytes_peak as f64 / MIB
    );
    println!(
        "  payloads in memory  {:>12.1} MiB at the end, budget {:.1} MiB",
        r.cached_bytes_end as f64 / MIB,
        r.memory_budget_bytes as f64 / MIB
    );
    if let Some(reads) = &r.reads {
        crate::readers::print(reads);
    }
    if let Some(subs) = &r.subscriptions {
        crate::subscribers::print(subs);
    }
    if r.wakeups_missed > 0 {
        println!(
            "  missed wake-ups     {:>12} (idle sleeps to the 1 s bound with requests queued)",
            r.wakeups_missed
        );
    }
}
