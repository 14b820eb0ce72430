//! `corewal-peers`: the workloads of `corewal load --preset` driven against
//! other durable logs, measured the same way (closed loop, each writer waits
//! for its own durable acknowledgement; latency from just before the call to
//! its return; CPU seconds of the process per GB of payload), printed as
//! JSON that `corewal compare` reads beside `corewal load --json`.
//!
//! Systems:
//! * `pwrite` — the baseline a storage engineer would write first: one file,
//!   a leader/follower group commit (records appended to a shared buffer;
//!   whoever finds no write in progress writes everything buffered with one
//!   `pwrite` and one `fdatasync`, and wakes the writers it covered).
//! * `raft-engine` — TiKV's multi-raft log engine: a raft group per channel,
//!   one `LogBatch` per append call with a put per record, written with
//!   `sync = true`.
//! * `okaywal` — one WAL entry per append call with a chunk per record,
//!   committed (okaywal acknowledges a commit after its group's fsync);
//!   64 MiB segments.
//!
//! raft-engine's LZ4 batch compression is off: the payloads are constant
//! bytes, which it would compress to nothing.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Drive the corewal load presets against peer logs")]
struct Args {
    /// The log under test.
    #[arg(long, value_enum)]
    system: System,
    /// The workload (same values as `corewal load --preset`).
    #[arg(long, value_enum, required_unless_present = "recover")]
    preset: Option<Preset>,
    /// raft-engine only, the recovery benchmark beside `corewal
    /// recover-bench`: `write` fills --data with --bytes of --record-bytes
    /// records over --channels raft groups (64 per batch, 8 writer threads,
    /// each batch synced); `open` reopens it and prints the open time (the
    /// engine is usable when `open` returns: that is also its time to a
    /// first handle) and the peak resident set.
    #[arg(long, value_enum)]
    recover: Option<Recover>,
    /// The data directory of --recover.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// --recover write: payload bytes.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// --recover write: raft groups.
    #[arg(long, default_value_t = 1000)]
    channels: u64,
    /// --recover write: payload bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before the window, seconds (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Directory under which a fresh data directory is made (local disk).
    #[arg(long, default_value = "/var/tmp")]
    dir: std::path::PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Recover {
    Write,
    Open,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum System {
    Pwrite,
    RaftEngine,
    Okaywal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Preset {
    /// 16 writers x 1 channel each x 256 B, one record per call.
    SmallSync,
    /// 4 writers x 64 channels x 4 KiB x 16 records per call.
    Batched,
    /// 16 writers over 10,000 channels x 1 KiB, one record per call.
    Fanout,
}

impl Preset {
    /// (writers, channels, record bytes, records per call)
    fn shape(self) -> (usize, usize, usize, usize) {
        match self {
            Preset::SmallSync => (16, 16, 256, 1),
            Preset::Batched => (4, 64, 4096, 16),
            Preset::Fanout => (16, 10_000, 1024, 1),
        }
    }
}

/// A durable log as the driver sees it: append these records to this
/// channel and return once they are durable.
trait Log: Send + Sync {
    fn append(&self, channel: u64, offset: u64, records: &[&[u8]]);
}

/// The leader/follower group commit over one file.
struct PwriteLog {
    file: File,
    state: Mutex<GroupState>,
    cond: Condvar,
}

#[derive(Default)]
struct GroupState {
    buf: Vec<u8>,
    /// Sequence number of the last append buffered.
    buffered: u64,
    /// Sequence number up to which everything is durable.
    durable: u64,
    writing: bool,
    position: u64,
}

impl Log for PwriteLog {
    fn append(&self, channel: u64, offset: u64, records: &[&[u8]]) {
        let mut st = self.state.lock().unwrap();
        for r in records {
            st.buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            st.buf.extend_from_slice(&channel.to_le_bytes());
            st.buf.extend_from_slice(&offset.to_le_bytes());
            st.buf.extend_from_slice(r);
        }
        st.buffered += 1;
        let mine = st.buffered;
        loop {
            if st.durable >= mine {
                return;
            }
            if !st.writing {
                // Lead: write everything buffered, sync once, wake the rest.
                st.writing = true;
                let buf = std::mem::take(&mut st.buf);
                let upto = st.buffered;
                let at = st.position;
                st.position += buf.len() as u64;
                drop(st);
                self.file.write_all_at(&buf, at).expect("pwrite");
                self.file.sync_data().expect("fdatasync");
                st = self.state.lock().unwrap();
                st.durable = upto;
                st.writing = false;
                self.cond.notify_all();
                continue;
            }
            st = self.cond.wait(st).unwrap();
        }
    }
}

struct RaftEngineLog(raft_engine::Engine);

impl Log for RaftEngineLog {
    fn append(&self, channel: u64, offset: u64, records: &[&[u8]]) {
        let mut batch = raft_engine::LogBatch::default();
        for (k, r) in records.iter().enumerate() {
            let key = (offset + k as u64).to_be_bytes().to_vec();
            batch.put(channel, key, r.to_vec()).expect("raft-engine put");
        }
        self.0.write(&mut batch, true).expect("raft-engine write");
    }
}

struct OkayWalLog(okaywal::WriteAheadLog);

impl Log for OkayWalLog {
    fn append(&self, _channel: u64, _offset: u64, records: &[&[u8]]) {
        let mut entry = self.0.begin_entry().expect("okaywal begin_entry");
        for r in records {
            entry.write_chunk(r).expect("okaywal write_chunk");
        }
        entry.commit().expect("okaywal commit");
    }
}

fn open(system: System, dir: &Path) -> Box<dyn Log> {
    match system {
        System::Pwrite => Box::new(PwriteLog {
            file: std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .read(true)
                .write(true)
                .open(dir.join("log"))
                .expect("open log file"),
            state: Mutex::new(GroupState::default()),
            cond: Condvar::new(),
        }),
        System::RaftEngine => {
            let cfg = raft_engine::Config {
                dir: dir.to_str().expect("UTF-8 path").to_string(),
                // The payloads are constant bytes: LZ4 would shrink them to
                // nothing and measure compression, not the log. corewal
                // does not compress either.
                batch_compression_threshold: raft_engine::ReadableSize(0),
                ..Default::default()
            };
            Box::new(RaftEngineLog(
                raft_engine::Engine::open(cfg).expect("raft-engine open"),
            ))
        }
        // Segments of 64 MiB like corewal's (okaywal's default starts a new
        // file, with a directory sync, every 768 KiB); LogVoid keeps nothing.
        System::Okaywal => Box::new(OkayWalLog(
            okaywal::Configuration::default_for(dir)
                .checkpoint_after_bytes(64 << 20)
                .open(okaywal::LogVoid)
                .expect("okaywal open"),
        )),
    }
}

fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// raft-engine's log entries: raft's own entry type, indexed by its index.
struct RaftEntries;

impl raft_engine::MessageExt for RaftEntries {
    type Entry = raft_proto::eraftpb::Entry;
    fn index(e: &Self::Entry) -> u64 {
        e.index
    }
}

/// raft-engine's configuration for the recovery benchmark's directory.
fn raft_engine_config(dir: &Path) -> raft_engine::Config {
    raft_engine::Config {
        dir: dir.to_str().expect("UTF-8 path").to_string(),
        batch_compression_threshold: raft_engine::ReadableSize(0),
        ..Default::default()
    }
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with(key))?.to_string();
            l.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// `--recover write|open` (raft-engine).
fn recover(args: &Args, mode: Recover) {
    assert_eq!(args.system, System::RaftEngine, "--recover is for raft-engine");
    let dir = args.data.as_ref().expect("--recover needs --data");
    match mode {
        Recover::Write => {
            std::fs::create_dir_all(dir).expect("create --data");
            let engine = Arc::new(
                raft_engine::Engine::open(raft_engine_config(dir)).expect("raft-engine open"),
            );
            assert!(
                args.channels % 8 == 0,
                "--channels must be a multiple of the 8 writers"
            );
            let per_batch = 64u64;
            let batches = args.bytes.div_ceil(per_batch * args.record_bytes as u64);
            let writers = 8u64;
            let handles: Vec<_> = (0..writers)
                .map(|w| {
                    let engine = engine.clone();
                    let (channels, record_bytes) = (args.channels, args.record_bytes);
                    std::thread::spawn(move || {
                        let record = vec![0x5Au8; record_bytes];
                        let mut next = vec![0u64; channels as usize];
                        let mut b = w;
                        while b < batches {
                            // Each writer owns the groups g ≡ w (mod writers)
                            // (--channels is a multiple of 8): a group's
                            // indexes stay contiguous.
                            let g = b % channels;
                            let entries: Vec<raft_proto::eraftpb::Entry> = (0..per_batch)
                                .map(|_| {
                                    next[g as usize] += 1;
                                    let mut e = raft_proto::eraftpb::Entry::default();
                                    e.set_index(next[g as usize]);
                                    e.set_term(1);
                                    e.set_data(record.clone().into());
                                    e
                                })
                                .collect();
                            let mut batch = raft_engine::LogBatch::default();
                            batch
                                .add_entries::<RaftEntries>(g + 1, &entries)
                                .expect("add_entries");
                            engine.write(&mut batch, true).expect("raft-engine write");
                            b += writers;
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().expect("writer thread");
            }
        }
        Recover::Open => {
            let t0 = Instant::now();
            let engine =
                raft_engine::Engine::open(raft_engine_config(dir)).expect("raft-engine open");
            let open_s = t0.elapsed().as_secs_f64();
            let rss_after = status_kib("VmRSS:") * 1024;
            let groups = engine.raft_groups().len();
            let v = json!({
                "tool": "corewal-peers",
                "system": "RaftEngine",
                "recover": "open",
                "open_ms": open_s * 1e3,
                "raft_groups": groups,
                "peak_rss_bytes": status_kib("VmHWM:") * 1024,
                "rss_after_bytes": rss_after,
            });
            drop(engine);
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Some(mode) = args.recover {
        recover(&args, mode);
        return;
    }
    let preset = args.preset.expect("--preset");
    let (writers, channels, record_bytes, batch) = preset.shape();
    let data = tempfile::Builder::new()
        .prefix("corewal-peers-")
        .tempdir_in(&args.dir)
        .expect("create the data directory");
    let log: Arc<dyn Log> = Arc::from(open(args.system, data.path()));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(writers + 1));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (log, measuring, stop, barrier) =
                (log.clone(), measuring.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                let record = vec![0xA5u8; record_bytes];
                let records: Vec<&[u8]> = vec![&record[..]; batch];
                // The same channel assignment as `corewal load`.
                let mine: Vec<u64> = if channels >= writers {
                    (w..channels).step_by(writers).map(|c| c as u64).collect()
                } else {
                    vec![(w % channels) as u64]
                };
                let mut next = vec![0u64; mine.len()];
                let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
                barrier.wait();
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let i = k % mine.len();
                    k += 1;
                    let counting = measuring.load(Ordering::Relaxed);
                    let t = Instant::now();
                    // Channel ids start at 1: raft-engine reserves none, but
                    // 0 reads as "no group" in some of its tools.
                    log.append(mine[i] + 1, next[i], &records);
                    next[i] += batch as u64;
                    let ns = t.elapsed().as_nanos() as u64;
                    if counting && !stop.load(Ordering::Relaxed) {
                        hist.saturating_record(ns.max(1));
                    }
                }
                hist
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(Duration::from_secs_f64(args.warmup));
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    measuring.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    stop.store(true, Ordering::SeqCst);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).unwrap();
    for h in handles {
        hist.add(h.join().expect("writer thread")).unwrap();
    }
    let appends = hist.len();
    let records = appends * batch as u64;
    let payload = records as f64 * record_bytes as f64;
    let mut pct = serde_json::Map::new();
    for q in [50.0, 90.0, 99.0, 99.9, 99.99] {
        pct.insert(format!("{q:.6}"), json!(hist.value_at_quantile(q / 100.0)));
    }
    let v = json!({
        "tool": "corewal-peers",
        "system": format!("{:?}", args.system),
        "preset": format!("{preset:?}"),
        "mode": "closed-loop",
        "writers": writers,
        "channels": channels,
        "record_bytes_min": record_bytes,
        "record_bytes_max": record_bytes,
        "batch": batch,
        "durability": "Sync",
        "measured_s": secs,
        "appends": appends,
        "records": records,
        "appends_per_s": appends as f64 / secs,
        "records_per_s": records as f64 / secs,
        "payload_mb_per_s": payload / secs / 1e6,
        "lat_ns": {"min": hist.min(), "max": hist.max(), "mean": hist.mean(), "percentile": pct},
        "cpu_s": cpu,
        "cpu_s_per_gb": if payload > 0.0 { cpu / (payload / 1e9) } else { 0.0 },
    });
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
}
