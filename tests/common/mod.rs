//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use corewal::{Backend, Config};

pub mod image;
pub mod loopfs;
pub mod writer;

/// A directory on the local disk (inside `target/`), where `O_DIRECT` works;
/// `/tmp` may be a tmpfs elsewhere.
pub fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corewal-test-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("create a test directory under target/")
}

/// A small configuration: 1 MiB segments so that tests cross segment
/// boundaries, `shards` shards on whatever cores there are. No space limit
/// a test would reach (the default, 64 segments, would stop the crash
/// tests' writers, which never checkpoint most of their channels, within a
/// few dozen cycles on the same store); `tests/reclaim.rs` and the
/// simulator test the limit.
pub fn small_config(dir: &Path, shards: usize, backend: Backend) -> Config {
    let mut c = Config::new(dir);
    c.shards = Some(shards);
    c.backend = backend;
    c.wal_bytes_max = Some(1 << 40);
    c.segment_bytes = 1 << 20;
    c.commit_bytes_max = 256 << 10;
    c.record_bytes_max = 64 << 10;
    c.lock_wait = std::time::Duration::from_secs(10);
    c
}

/// Both backends, for tests that must pass on each.
pub const BACKENDS: [Backend; 2] = [Backend::IoUring, Backend::Portable];

struct ThreadWaker(Thread);
impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A minimal executor: polls `f` on this thread, parking between polls.
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The seed of a randomized test: `COREWAL_SEED` when set, else from the clock.
/// Printed so that a failure can be replayed.
pub fn seed() -> u64 {
    let s = std::env::var("COREWAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("COREWAL_SEED={s}");
    s
}

/// How many cycles a long-running test runs: `var` when set to a number,
/// else `default` (each test documents its variable).
pub fn cycles(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// splitmix64: a small deterministic generator for test workloads.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The deterministic payload of record `i` of channel `name`: its length and
/// bytes both depend on both, so a record in the wrong place is caught.
pub fn payload(name: &str, i: u64, max: usize) -> Vec<u8> {
    let h = crc32c::crc32c(name.as_bytes()) as u64 ^ i.wrapping_mul(0x9E37_79B9);
    let len = (h % max as u64) as usize;
    (0..len)
        .map(|k| (h.wrapping_add(k as u64) % 251) as u8)
        .collect()
}

/// Where a commit sits in a segment file: its byte position, the bytes its
/// header and entries use, and the bytes it spans with its padding.
#[derive(Debug, Clone, Copy)]
pub struct CommitPlace {
    pub pos: usize,
    pub used: usize,
    pub span: usize,
}

/// The segment files of shard 0, in sequence order.
pub fn segments(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir.join("shard-000"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

/// The chain of valid commit headers at the start of a segment file (of
/// this segment: in a recycled one, what its earlier life left follows).
pub fn commits(path: &Path, block: usize) -> Vec<CommitPlace> {
    let data = std::fs::read(path).unwrap();
    let Ok(segment) = corewal_engine::wal::format::decode_segment_header(&data) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut pos = block;
    while pos + block <= data.len() {
        match corewal_engine::wal::format::decode_commit_header(&data[pos..], block) {
            Ok(h) if h.position == pos as u64 && h.segment_seq == segment.segment_seq => {
                let span = h.blocks as usize * block;
                out.push(CommitPlace {
                    pos,
                    used: 64 + h.entries_bytes as usize,
                    span,
                });
                pos += span;
            }
            _ => break,
        }
    }
    out
}

/// Shard 0's last segment holding commits (a spare segment created ahead of
/// use may follow it) and its commits.
pub fn tail_segment(dir: &Path, block: usize) -> (std::path::PathBuf, Vec<CommitPlace>) {
    segments(dir)
        .into_iter()
        .rev()
        .map(|p| {
            let c = commits(&p, block);
            (p, c)
        })
        .find(|(_, c)| !c.is_empty())
        .expect("a segment with commits")
}

/// In a writer child process: the directory and seed its parent passed in
/// `COREWAL_CHILD_DIR` and `COREWAL_CHILD_SEED`, or `None` when this test
/// binary runs as the parent (the child test then returns at once).
pub fn child_args() -> Option<(String, u64)> {
    let dir = std::env::var("COREWAL_CHILD_DIR").ok()?;
    let seed = std::env::var("COREWAL_CHILD_SEED").ok()?.parse().ok()?;
    Some((dir, seed))
}

/// A figure of a test run, written past the test harness's output capture
/// so that it shows in every `cargo test` (docs/RELIABILITY.md quotes them).
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A child's report to its parent: one whole line on stdout, flushed at
/// once. Safe from any thread: the stdout lock keeps lines whole.
pub fn report(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Runs `f` on its own thread and waits at most `limit` for it: `None` when
/// it has not returned by then (it is left running; a hang is what the
/// caller tests for).
pub fn within<T: Send + 'static>(
    limit: std::time::Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).ok()
}

/// CPU time (user + system) used so far by this process's thread named
/// `name`, in clock ticks (`sysconf(_SC_CLK_TCK)` per second), from
/// `/proc/self/task/*/stat`; `None` when no thread has that name.
pub fn thread_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        return Some(utime + stime);
    }
    None
}

/// Clock ticks per second, for [`thread_cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The process's peak resident set since the last [`reset_peak_rss`], in
/// bytes (`VmHWM` of `/proc/self/status`).
pub fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("a number of kB");
    kib << 10
}

/// Resets the process's peak resident set to its current one (writing `5`
/// to `/proc/self/clear_refs`, Linux 4.0 and later).
pub fn reset_peak_rss() {
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak RSS");
}

/// The file where shard `shard` records what its log holds (the segment it
/// writes and the commits known durable), beside its segments.
pub fn manifest_path(dir: &Path, shard: u16) -> std::path::PathBuf {
    dir.join(format!("shard-{shard:03}"))
        .join(corewal_engine::wal::manifest::MANIFEST_FILE)
}

/// Copies the directory tree `from` to `to` (a store copied while its
/// engine runs, every append returned, is what a crash then leaves).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// Shard `shard`'s manifest as it is now (`None` if there is none), to be
/// put back with [`restore_manifest`]: a store whose manifest was taken
/// after its first write and put back after more writes is what a crash
/// after those writes leaves (the manifest is rewritten only at a shard's
/// first write, at a segment change and at a clean close).
pub fn snapshot_manifest(dir: &Path, shard: u16) -> Option<Vec<u8>> {
    std::fs::read(manifest_path(dir, shard)).ok()
}

/// Puts back a manifest taken by [`snapshot_manifest`].
pub fn restore_manifest(dir: &Path, shard: u16, snapshot: &Option<Vec<u8>>) {
    if let Some(bytes) = snapshot {
        std::fs::write(manifest_path(dir, shard), bytes).unwrap();
    }
}
