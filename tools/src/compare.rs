//! `corewal compare A.json B.json`: two `corewal load --json` results side
//! by side, with the ratio B/A of every figure, and a warning for each
//! setting in which the runs differ (they then measure different things).

use std::path::PathBuf;

use clap::Args;
use serde_json::Value;

/// Arguments of `corewal compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// The baseline: a file written by `corewal load --json`.
    a: PathBuf,
    /// The run compared with it.
    b: PathBuf,
}

/// (label, JSON pointer, unit divisor, unit, whether higher is better)
const FIGURES: &[(&str, &str, f64, &str, bool)] = &[
    ("appends/s", "/appends_per_s", 1.0, "", true),
    ("records/s", "/records_per_s", 1.0, "", true),
    ("payload MB/s", "/payload_mb_per_s", 1.0, "", true),
    (
        "latency p50",
        "/lat_ns/percentile/50.000000",
        1e3,
        "us",
        false,
    ),
    (
        "latency p90",
        "/lat_ns/percentile/90.000000",
        1e3,
        "us",
        false,
    ),
    (
        "latency p99",
        "/lat_ns/percentile/99.000000",
        1e3,
        "us",
        false,
    ),
    (
        "latency p99.9",
        "/lat_ns/percentile/99.900000",
        1e3,
        "us",
        false,
    ),
    (
        "latency p99.99",
        "/lat_ns/percentile/99.990000",
        1e3,
        "us",
        false,
    ),
    ("latency max", "/lat_ns/max", 1e3, "us", false),
    ("CPU s per GB", "/cpu_s_per_gb", 1.0, "", false),
    (
        "records per commit",
        "/records_per_commit_mean",
        1.0,
        "",
        true,
    ),
    (
        "device B / payload B",
        "/device_bytes_per_payload_byte",
        1.0,
        "",
        false,
    ),
];

/// Settings that must match for the figures to be comparable (a setting
/// only one side records is not reported).
const SETTINGS: &[&str] = &[
    "/mode",
    "/rate_target",
    "/writers",
    "/channels",
    "/record_bytes_min",
    "/record_bytes_max",
    "/batch",
    "/durability",
    "/backend",
    "/sync_method",
    "/shards",
    "/host/cpu_model",
    "/host/kernel",
    "/host/filesystem",
    "/host/device",
];

fn load(path: &PathBuf) -> Result<Value, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
    // `corewal-peers` (peers/) prints the same figures for other logs.
    let tool = v.pointer("/tool").and_then(Value::as_str);
    if tool != Some("corewal load") && tool != Some("corewal-peers") {
        return Err(format!(
            "{}: not a `corewal load --json` (or `corewal-peers`) result",
            path.display()
        )
        .into());
    }
    Ok(v)
}

pub fn run(args: CompareArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = (load(&args.a)?, load(&args.b)?);
    let system = |v: &Value| {
        v.pointer("/system")
            .and_then(Value::as_str)
            .unwrap_or("corewal")
            .to_string()
    };
    println!("A: {} ({})", args.a.display(), system(&a));
    println!("B: {} ({})", args.b.display(), system(&b));
    for s in SETTINGS {
        let (x, y) = (a.pointer(s), b.pointer(s));
        if x.is_some() && y.is_some() && x != y {
            println!(
                "  differs: {} is {} in A, {} in B",
                &s[1..],
                x.map_or("absent".into(), Value::to_string),
                y.map_or("absent".into(), Value::to_string)
            );
        }
    }
    println!();
    println!(
        "  {:<22} {:>14} {:>14} {:>8} (better/worse: B against A)",
        "", "A", "B", "B/A"
    );
    for (label, ptr, div, unit, higher_better) in FIGURES {
        let (Some(x), Some(y)) = (
            a.pointer(ptr).and_then(Value::as_f64),
            b.pointer(ptr).and_then(Value::as_f64),
        ) else {
            continue;
        };
        let ratio = if x != 0.0 {
            format!("{:.2}", y / x)
        } else {
            "-".into()
        };
        let better = match (y > x, y < x) {
            (true, _) if *higher_better => " better",
            (_, true) if !higher_better => " better",
            _ if y == x => "",
            _ => " worse",
        };
        println!(
            "  {:<22} {:>12.1}{:<2} {:>12.1}{:<2} {:>8}{better}",
            label,
            x / div,
            unit,
            y / div,
            unit,
            ratio
        );
    }
    Ok(())
}
