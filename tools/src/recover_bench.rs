//! `corewal recover-bench`: writes a data set, drops the page cache, reopens
//! it in a fresh process and reports how fast recovery ran and how soon and
//! how quickly channels could be registered meanwhile.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use corewal::{Config, Engine};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::data_dir::DataDir;
use crate::host::{fingerprint, Host};
use crate::load::parse_bytes;

/// Arguments of `corewal recover-bench`.
#[derive(Args, Debug)]
pub struct RecoverBenchArgs {
    /// Payload bytes to write before reopening (suffixes KiB, MiB, GiB).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    bytes: u64,
    /// Channels the data set is spread over (with --reuse: the number it was
    /// written with; the reopening process registers every one of them
    /// while recovery runs).
    #[arg(long, default_value_t = 1000)]
    channels: usize,
    /// Payload bytes of each record.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Shards (default: one per allowed core).
    #[arg(long)]
    shards: Option<usize>,
    /// After writing, checkpoint each channel so that this fraction of its
    /// records stays live (its newest), and let the engine reclaim the
    /// segments that frees before the reopen: a restart after checkpoints.
    /// 0..=1; default 1 (no checkpoint: every record is replayed).
    #[arg(long, default_value_t = 1.0)]
    live_fraction: f64,
    /// Data directory (default: a fresh directory under /var/tmp, removed afterwards).
    /// With --reuse, an existing data set to reopen.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Reopen the data set in --dir without writing one.
    #[arg(long)]
    reuse: bool,
    /// Keep the data directory.
    #[arg(long)]
    keep: bool,
    /// Do not drop the page cache before reopening (dropping needs root).
    #[arg(long)]
    no_drop_caches: bool,
    /// Memory for record payloads (`Config::buffer_bytes_max`) of the
    /// writing and the reopening engine; the report puts the peak resident
    /// set beside it. Default: the engine's default (256 MiB).
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// Index snapshots off (`Config::index_snapshots = false`) for the
    /// writing and the reopening engine: every reopen replays the whole
    /// log.
    #[arg(long)]
    no_snapshots: bool,
    /// How much WAL each shard of the writing engine writes between two
    /// running index snapshots (`Config::snapshot_every_bytes`; 0: only at
    /// a clean close). Default: the engine's default (256 MiB).
    #[arg(long, value_parser = parse_bytes)]
    snapshot_every: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the data set in a child process and SIGKILL it once every
    /// record is acknowledged, instead of closing the engine: the reopen
    /// after a crash (the engine's clean close is what a normal run
    /// measures).
    #[arg(long)]
    kill: bool,
    /// Internal: only reopen --dir and print the reopen figures as JSON.
    #[arg(long, hide = true)]
    reopen_only: bool,
    /// Internal (--kill): write the data set into --dir, say so on stdout,
    /// and wait to be killed.
    #[arg(long, hide = true)]
    write_then_wait: bool,
}

/// What the reopening process measured.
#[derive(Serialize, Deserialize, Debug)]
struct Reopen {
    shards: usize,
    open_returned_ms: f64,
    all_shards_ready_ms: f64,
    replayed_bytes: u64,
    /// Segment bytes the reopen did not read: reclaimed after checkpoints.
    #[serde(default)]
    skipped_bytes: u64,
    replay_gb_per_s: f64,
    channels_found: u64,
    first_registration_ms: f64,
    registrations: u64,
    registration_ns_p50: u64,
    registration_ns_p99: u64,
    registration_ns_max: u64,
    peak_rss_bytes: u64,
    rss_after_bytes: u64,
    /// `Config::buffer_bytes_max` of the reopening engine.
    #[serde(default)]
    memory_budget_bytes: u64,
    /// Payload bytes it kept in memory after recovery.
    #[serde(default)]
    cached_bytes: u64,
    /// Shards that opened from an index snapshot (whole, or replaying only
    /// what followed it).
    #[serde(default)]
    snapshots_used: u64,
}

#[derive(Serialize)]
struct RecoverResult {
    tool: &'static str,
    host: Host,
    dir: String,
    shards: usize,
    data_payload_bytes: u64,
    live_fraction: f64,
    channels: usize,
    record_bytes: usize,
    page_cache_dropped: bool,
    /// The writer was SIGKILLed after its last acknowledgement (--kill)
    /// rather than closed.
    writer_killed: bool,
    reopen: Reopen,
    fio_read_gb_per_s: Option<f64>,
    replay_to_fio_ratio: Option<f64>,
}

fn channel_name(i: usize) -> String {
    format!("bench-{i}")
}

/// How both engines are configured beside their defaults.
#[derive(Clone, Copy, Debug)]
struct Knobs {
    /// `buffer_bytes_max`.
    budget: Option<u64>,
    /// `index_snapshots`.
    snapshots: bool,
    /// `snapshot_every_bytes`.
    snapshot_every: Option<u64>,
}

impl Knobs {
    fn of(args: &RecoverBenchArgs) -> Knobs {
        Knobs {
            budget: args.memory_budget,
            snapshots: !args.no_snapshots,
            snapshot_every: args.snapshot_every,
        }
    }

    /// The flags that give these knobs to a child process.
    fn flags(&self) -> Vec<String> {
        let mut f = Vec::new();
        if let Some(b) = self.budget {
            f.extend(["--memory-budget".to_string(), b.to_string()]);
        }
        if !self.snapshots {
            f.push("--no-snapshots".to_string());
        }
        if let Some(e) = self.snapshot_every {
            f.extend(["--snapshot-every".to_string(), e.to_string()]);
        }
        f
    }
}

/// The configuration of both engines.
fn bench_config(dir: &Path, knobs: Knobs) -> Config {
    let mut config = Config::new(dir);
    if let Some(b) = knobs.budget {
        config.buffer_bytes_max = b;
    }
    config.index_snapshots = knobs.snapshots;
    if let Some(e) = knobs.snapshot_every {
        config.snapshot_every_bytes = e;
    }
    config
}

fn reopen(dir: &Path, channels: usize, knobs: Knobs) -> Result<Reopen, Box<dyn std::error::Error>> {
    let config = bench_config(dir, knobs);
    let memory_budget_bytes = config.buffer_bytes_max;
    let t0 = Instant::now();
    let engine = Arc::new(Engine::start(config)?);
    let open_returned = t0.elapsed();
    // A registrar registers every channel while the shards recover.
    let done = Arc::new(AtomicBool::new(false));
    let registrar = {
        let engine = engine.clone();
        std::thread::spawn(
            move || -> Result<(Histogram<u64>, Duration), corewal::Error> {
                let mut hist =
                    Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3).expect("valid bounds");
                let mut first = None;
                for i in 0..channels {
                    let t = Instant::now();
                    engine.register(&channel_name(i))?;
                    hist.saturating_record(t.elapsed().as_nanos().max(1) as u64);
                    first.get_or_insert_with(|| t0.elapsed());
                }
                Ok((hist, first.unwrap_or_default()))
            },
        )
    };
    show_recovery_progress(&engine);
    engine.wait_ready()?;
    let ready = t0.elapsed();
    done.store(true, Ordering::SeqCst);
    let (hist, first) = registrar.join().map_err(|_| "registrar panicked")??;
    let m = engine.metrics();
    let shards = engine.shard_count();
    let engine = Arc::try_unwrap(engine).map_err(|_| "engine still shared")?;
    let rss_after = crate::host::rss_bytes();
    engine.close()?;
    Ok(Reopen {
        shards,
        open_returned_ms: open_returned.as_secs_f64() * 1e3,
        all_shards_ready_ms: ready.as_secs_f64() * 1e3,
        replayed_bytes: m.recovery_bytes_read,
        skipped_bytes: m.recovery_bytes_skipped,
        replay_gb_per_s: m.recovery_bytes_read as f64 / ready.as_secs_f64() / 1e9,
        channels_found: m.recovery_channels,
        first_registration_ms: first.as_secs_f64() * 1e3,
        registrations: hist.len(),
        registration_ns_p50: hist.value_at_quantile(0.5),
        registration_ns_p99: hist.value_at_quantile(0.99),
        registration_ns_max: hist.max(),
        peak_rss_bytes: crate::host::status_bytes("VmHWM:"),
        rss_after_bytes: rss_after,
        memory_budget_bytes,
        cached_bytes: m.cached_bytes,
        snapshots_used: m.snapshots_used,
    })
}

/// Draws a progress bar of the bytes replayed by all shards on stderr while
/// recovery runs, when stderr is a terminal; returns when every shard is ready.
fn show_recovery_progress(engine: &Engine) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let total: u64 = engine
        .shard_metrics()
        .iter()
        .map(|m| m.recovery_bytes_total)
        .sum();
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "recovering {bar:40} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    loop {
        let shards = engine.shard_metrics();
        let read: u64 = shards.iter().map(|m| m.recovery_bytes_read).sum();
        let channels: u64 = shards.iter().map(|m| m.recovery_channels).sum();
        let done = engine.ready_shards();
        bar.set_position(read.min(total));
        bar.set_message(format!(
            "{done}/{} shards ready, {channels} channels",
            shards.len()
        ));
        if done == shards.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish();
}

/// Writes the data set in a child process (this program with
/// `--write-then-wait`) and SIGKILLs it once it says every record was
/// acknowledged.
fn write_and_kill(args: &RecoverBenchArgs, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["recover-bench", "--write-then-wait", "--keep"])
        .arg("--bytes")
        .arg(args.bytes.to_string())
        .arg("--channels")
        .arg(args.channels.to_string())
        .arg("--record-bytes")
        .arg(args.record_bytes.to_string())
        .arg("--live-fraction")
        .arg(args.live_fraction.to_string())
        .args(args.shards.map(|s| format!("--shards={s}")))
        .args(Knobs::of(args).flags())
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("the writer's stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let status = child.wait()?;
    if line.trim() != "written" {
        return Err(format!("the writer failed before writing everything ({status})").into());
    }
    Ok(())
}

fn write_data_set(args: &RecoverBenchArgs, dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = bench_config(dir, Knobs::of(args));
    config.shards = args.shards;
    config.record_bytes_max = config.record_bytes_max.max(args.record_bytes);
    let engine = Engine::open(config)?;
    let channels: Vec<_> = (0..args.channels)
        .map(|i| engine.register(&channel_name(i)))
        .collect::<Result<_, _>>()?;
    let record = Bytes::from(vec![0x5Au8; args.record_bytes]);
    let per_batch = 64usize;
    let batch_bytes = (per_batch * args.record_bytes) as u64;
    let batches = args.bytes.div_ceil(batch_bytes.max(1));
    let writers = 8usize;
    std::thread::scope(|s| -> Result<(), corewal::Error> {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let (channels, record) = (&channels, record.clone());
                s.spawn(move || -> Result<(), corewal::Error> {
                    let mut b = w as u64;
                    while b < batches {
                        let ch = &channels[b as usize % channels.len()];
                        ch.append_batch_async(vec![record.clone(); per_batch])?
                            .wait()?;
                        b += writers as u64;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("writer thread")?;
        }
        Ok(())
    })?;
    if args.live_fraction < 1.0 {
        checkpoint_all_but(&engine, &channels, args.live_fraction)?;
    }
    if args.write_then_wait {
        // Every record is acknowledged: the parent kills this process now.
        println!("written");
        use std::io::Write;
        std::io::stdout().flush()?;
        loop {
            std::thread::park();
        }
    }
    engine.close()?;
    Ok(())
}

/// Checkpoints each channel so that `live` of its records stay live, then
/// waits (at most a minute) until the segments that frees are reclaimed.
fn checkpoint_all_but(
    engine: &Engine,
    channels: &[corewal::Channel],
    live: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    for ch in channels {
        let next = ch.next_offset()?.0;
        let keep = (next as f64 * live).ceil() as u64;
        if keep < next {
            ch.checkpoint(corewal::Offset(next - keep - 1))?;
        }
    }
    let started = Instant::now();
    while engine.wal_usage()?.iter().any(|u| u.reclaimable_bytes > 0) {
        if started.elapsed() > Duration::from_secs(60) {
            return Err("checkpointed segments were not reclaimed within a minute".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn drop_caches() -> bool {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Sequential direct reads with fio, 1 MiB at queue depth 8, of a file of
/// the data set's size written just before (so that it is as fresh in any
/// cache below the guest as the data set is), when fio is installed.
/// Reading the data set's own files after the reopen would flatter fio: the
/// reopen has just pulled them into the host's cache.
fn fio_read_gb_per_s(dir: &Path) -> Option<f64> {
    let mut total = 0u64;
    for shard in std::fs::read_dir(dir).ok()? {
        let shard = shard.ok()?.path();
        if shard.is_dir() {
            for f in std::fs::read_dir(&shard).ok()? {
                let f = f.ok()?.path();
                if f.extension().is_some_and(|e| e == "wal") {
                    total += f.metadata().ok()?.len();
                }
            }
        }
    }
    if total == 0 {
        return None;
    }
    let probe = dir.join("fio-read-probe");
    let out = Command::new("fio")
        .args([
            "--name=seqread",
            "--rw=read",
            "--bs=1M",
            "--direct=1",
            "--ioengine=io_uring",
            "--iodepth=8",
            "--invalidate=1",
            "--output-format=json",
        ])
        .arg(format!("--size={total}"))
        .arg(format!("--filename={}", probe.display()))
        .output();
    let _ = std::fs::remove_file(&probe);
    let out = out.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(&text[text.find('{')?..]).ok()?;
    let bw = json["jobs"][0]["read"]["bw_bytes"].as_f64()?;
    Some(bw / 1e9)
}

pub fn run(args: RecoverBenchArgs) -> Result<(), Box<dyn std::error::Error>> {
    if args.reopen_only {
        let dir = args.dir.as_ref().ok_or("--reopen-only needs --dir")?;
        let r = reopen(dir, args.channels, Knobs::of(&args))?;
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if args.write_then_wait {
        let dir = args.dir.as_ref().ok_or("--write-then-wait needs --dir")?;
        return write_data_set(&args, dir);
    }
    if args.kill && args.reuse {
        return Err("--kill writes a data set: it cannot be used with --reuse".into());
    }
    if args.channels == 0 || args.channels > 10_000_000 {
        return Err("--channels must be 1..=10000000".into());
    }
    if args.record_bytes == 0 {
        return Err("--record-bytes must be at least 1".into());
    }
    if args.reuse && args.dir.is_none() {
        return Err("--reuse needs --dir".into());
    }
    if !(0.0..=1.0).contains(&args.live_fraction) {
        return Err("--live-fraction must be 0..=1".into());
    }
    if !args.reuse && args.bytes < args.record_bytes as u64 {
        return Err("--bytes must hold at least one record of --record-bytes".into());
    }
    let data = DataDir::new(args.dir.as_deref(), "corewal-recover-", args.keep)?;
    let dir = data.path.clone();
    if args.kill {
        write_and_kill(&args, &dir)?;
    } else if !args.reuse {
        write_data_set(&args, &dir)?;
    }
    let fio = fio_read_gb_per_s(&dir);
    let dropped = !args.no_drop_caches && drop_caches();
    let mut reopen = Command::new(std::env::current_exe()?);
    reopen
        .args(["recover-bench", "--reopen-only", "--channels"])
        .arg(args.channels.to_string())
        .arg("--dir")
        .arg(&dir);
    reopen.args(Knobs::of(&args).flags());
    let out = reopen
        // The reopening process draws its progress bar on our terminal.
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err("the reopening process failed (its error is above)".into());
    }
    let reopen: Reopen = serde_json::from_slice(&out.stdout)?;
    let result = RecoverResult {
        tool: "corewal recover-bench",
        host: fingerprint(&dir),
        dir: dir.display().to_string(),
        shards: reopen.shards,
        data_payload_bytes: if args.reuse { 0 } else { args.bytes },
        live_fraction: args.live_fraction,
        channels: args.channels,
        record_bytes: args.record_bytes,
        page_cache_dropped: dropped,
        writer_killed: args.kill,
        replay_to_fio_ratio: fio.map(|f| reopen.replay_gb_per_s / f),
        fio_read_gb_per_s: fio,
        reopen,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print_result(&result, args.reuse);
    }
    drop(data);
    Ok(())
}

/// The table of a result.
fn print_result(result: &RecoverResult, reuse: bool) {
    let r = &result.reopen;
    let dropped = result.page_cache_dropped;
    println!(
            "corewal recover-bench: {} B of payload over {} channels, {} B records, {} shards; writer {}; page cache {}",
            result.data_payload_bytes,
            result.channels,
            result.record_bytes,
            result.shards,
            if result.writer_killed { "SIGKILLed after its last acknowledgement" } else { "closed" },
            if dropped { "dropped" } else { "NOT dropped" }
        );
    println!(
        "host: {} | {} cores | kernel {} | {} on {}",
        result.host.cpu_model,
        result.host.cores_online,
        result.host.kernel,
        result.host.filesystem,
        result.host.device
    );
    println!();
    println!("  open returned          {:>10.1} ms", r.open_returned_ms);
    println!(
        "  all shards recovered   {:>10.1} ms",
        r.all_shards_ready_ms
    );
    println!(
        "  segment bytes read     {:>10.1} MB (whole segments, spares and zero tails included)",
        r.replayed_bytes as f64 / 1e6
    );
    println!(
        "  replay                 {:>10.3} GB/s of segment bytes",
        r.replay_gb_per_s
    );
    if r.skipped_bytes > 0 || result.live_fraction < 1.0 {
        println!(
                "  segment bytes skipped  {:>10.1} MB (reclaimed after checkpoints; {:.0}% of each channel left live)",
                r.skipped_bytes as f64 / 1e6,
                result.live_fraction * 100.0
            );
    }
    if !reuse {
        println!(
            "  payload recovered      {:>10.3} GB/s ({} B in {:.1} ms)",
            result.data_payload_bytes as f64 / (r.all_shards_ready_ms / 1e3) / 1e9,
            result.data_payload_bytes,
            r.all_shards_ready_ms
        );
    }
    match (result.fio_read_gb_per_s, result.replay_to_fio_ratio) {
        (Some(f), Some(q)) => {
            println!("  fio seq read (1M, qd8) {f:>10.3} GB/s  (replay / fio = {q:.2})")
        }
        _ => println!("  fio seq read           not measured (fio not installed)"),
    }
    println!("  channels found         {:>10}", r.channels_found);
    println!(
        "  index snapshots used   {:>10} of {} shards",
        r.snapshots_used, r.shards
    );
    println!(
        "  first registration     {:>10.1} ms after open",
        r.first_registration_ms
    );
    println!(
            "  registration latency   p50 {:.1} us, p99 {:.1} us, max {:.1} ms ({} registrations during recovery)",
            r.registration_ns_p50 as f64 / 1e3,
            r.registration_ns_p99 as f64 / 1e3,
            r.registration_ns_max as f64 / 1e6,
            r.registrations
        );
    println!(
        "  peak RSS               {:>10.1} MB (after recovery {:.1} MB)",
        r.peak_rss_bytes as f64 / 1e6,
        r.rss_after_bytes as f64 / 1e6
    );
    println!(
        "  payload memory budget  {:>10.1} MB ({:.1} MB of payloads kept; peak RSS − budget = {:.1} MB)",
        r.memory_budget_bytes as f64 / 1e6,
        r.cached_bytes as f64 / 1e6,
        (r.peak_rss_bytes as f64 - r.memory_budget_bytes as f64) / 1e6
    );
}
