//! `corewal probe DIR`: measures the device under DIR the way the engine
//! uses it and prints the `Config` it suggests (in the spirit of `rpk iotune`).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use corewal_engine::probe::{probe, ProbeOptions};
use serde_json::json;

use crate::host::fingerprint;
use crate::load::{parse_bytes, parse_duration};

/// Arguments of `corewal probe`.
#[derive(Args, Debug)]
pub struct ProbeArgs {
    /// A directory on the device to measure (a scratch file is written there and removed).
    dir: PathBuf,
    /// Size of the scratch file; the sequential tests write and read it whole (suffixes KiB,
    /// MiB, GiB).
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    file_bytes: u64,
    /// How long each durable-write test runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    sync_test: Duration,
    /// Queue depths of the sequential tests, comma-separated, each 1..=16.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    queue_depths: Vec<usize>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProbeArgs) -> Result<(), Box<dyn std::error::Error>> {
    if !args.dir.is_dir() {
        return Err(format!("{}: not a directory", args.dir.display()).into());
    }
    let r = probe(
        &args.dir,
        &ProbeOptions {
            file_bytes: args.file_bytes,
            sync_test: args.sync_test,
            queue_depths: args.queue_depths.clone(),
        },
    )?;
    let host = fingerprint(&args.dir);
    // The variant's name, as `Config::sync_method` spells it.
    let method = format!("{:?}", r.sync_method);
    if args.json {
        let bw = |v: &[corewal_engine::probe::Bandwidth]| {
            v.iter()
                .map(|b| json!({"queue_depth": b.queue_depth, "mb_per_s": b.mb_per_s}))
                .collect::<Vec<_>>()
        };
        let sync = |s: &corewal_engine::probe::SyncStats| json!({"ops_per_s": s.ops_per_s, "p50_us": s.p50_us, "p99_us": s.p99_us, "ops": s.ops});
        let v = json!({
            "tool": "corewal probe",
            "host": host,
            "dir": r.dir.display().to_string(),
            "dio_align": r.dio_align,
            "block_bytes": r.block_bytes,
            "dsync_write_4k": sync(&r.dsync_write),
            "write_then_fdatasync_4k": sync(&r.write_then_fdatasync),
            "seq_write_1m": bw(&r.seq_write),
            "seq_read_1m": bw(&r.seq_read),
            "recommended": {"sync_method": method},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "corewal probe: {} ({} on {}, kernel {}, {})",
        r.dir.display(),
        host.filesystem,
        host.device,
        host.kernel,
        host.cpu_model
    );
    println!(
        "  direct-I/O alignment     {}",
        r.dio_align
            .map_or("not reported (statx DIOALIGN)".into(), |a| format!("{a} B"))
    );
    println!("  engine block             {} B", r.block_bytes);
    for (label, s) in [
        ("4 KiB RWF_DSYNC write", &r.dsync_write),
        ("4 KiB write + fdatasync", &r.write_then_fdatasync),
    ] {
        println!(
            "  {label:<24} {:>9.0} /s   p50 {:>8.1} us   p99 {:>8.1} us   ({} writes, one at a time)",
            s.ops_per_s, s.p50_us, s.p99_us, s.ops
        );
    }
    for b in &r.seq_write {
        println!(
            "  sequential write qd {:<4} {:>9.1} MB/s (1 MiB O_DIRECT, one fdatasync at the end)",
            b.queue_depth, b.mb_per_s
        );
    }
    for b in &r.seq_read {
        println!(
            "  sequential read  qd {:<4} {:>9.1} MB/s (1 MiB O_DIRECT)",
            b.queue_depth, b.mb_per_s
        );
    }
    println!();
    println!("Suggested configuration for this device:");
    println!("    config.sync_method = SyncMethod::{method};");
    println!(
        "    // a commit costs one durable write here: about {:.0} us at the median,",
        r.dsync_write.p50_us.min(r.write_then_fdatasync.p50_us)
    );
    println!(
        "    // so a shard does at most ~{:.0} commits/s; group commit carries the rest.",
        r.dsync_write
            .ops_per_s
            .max(r.write_then_fdatasync.ops_per_s)
    );
    println!("    // Other settings: keep the defaults (docs/BENCHMARKS.md shows why).");
    Ok(())
}
