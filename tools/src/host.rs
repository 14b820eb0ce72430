//! The host fingerprint printed with every result.

use serde::Serialize;
use std::path::Path;

/// What machine and disk a result was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub kernel: String,
    pub cpu_model: String,
    pub cores_online: usize,
    pub filesystem: String,
    pub device: String,
}

fn first_line_with(path: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
}

/// The mount that holds `dir`: (filesystem type, device).
fn mount_of(dir: &Path) -> (String, String) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return ("unknown".into(), "unknown".into());
    };
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mp = Path::new(f[1]);
        if dir.starts_with(mp) {
            let depth = mp.components().count();
            if best.as_ref().is_none_or(|b| depth > b.0) {
                best = Some((depth, f[2].to_string(), f[0].to_string()));
            }
        }
    }
    best.map_or(("unknown".into(), "unknown".into()), |b| (b.1, b.2))
}

/// Reads the fingerprint of this host for a data directory `dir`.
pub fn fingerprint(dir: &Path) -> Host {
    let (filesystem, device) = mount_of(dir);
    Host {
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into()),
        cpu_model: first_line_with("/proc/cpuinfo", "model name")
            .unwrap_or_else(|| "unknown".into()),
        cores_online: std::thread::available_parallelism().map_or(1, |n| n.get()),
        filesystem,
        device,
    }
}

/// User + system CPU seconds of this process so far (`getrusage`).
pub fn cpu_seconds() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => 0.0,
    }
}

/// The resident memory of this process (`VmRSS`), 0 where it cannot be read.
pub fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// A size field of this process's `/proc/self/status` (`key` with its
/// colon, e.g. `"VmRSS:"` or `"VmHWM:"`), in bytes; 0 where it cannot be
/// read.
pub fn status_bytes(key: &str) -> u64 {
    first_line_with("/proc/self/status", key)
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}
