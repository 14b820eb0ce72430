//! Measures the device under a directory the way the engine uses it, for
//! `corewal probe`: direct-I/O alignment, the latency of a durable 4 KiB
//! write both ways the engine can make one (`RWF_DSYNC`, write + linked
//! `fdatasync`), and sequential `O_DIRECT` write and read bandwidth through
//! `io_uring` at several queue depths. Everything goes to one scratch file,
//! written whole first (so that overwrites hit allocated blocks, as commits
//! do) and removed at the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::SyncMethod;
use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;
use crate::io::ring::{Refused, Ring};
use crate::io::wake::WakeFd;
use crate::io::{SyncKind, OPS_IN_FLIGHT_MAX};

/// Bytes per sequential operation.
const SEQ_CHUNK_BYTES: usize = 1 << 20;

/// What to measure.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Size of the scratch file (the sequential tests read and write it whole).
    pub file_bytes: u64,
    /// How long each durable-write test runs.
    pub sync_test: Duration,
    /// Queue depths of the sequential tests (1..=16).
    pub queue_depths: Vec<usize>,
}

/// Latency of durable writes made one at a time.
#[derive(Debug, Clone, Copy)]
pub struct SyncStats {
    /// Durable writes per second.
    pub ops_per_s: f64,
    /// Median latency, microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
    /// Writes measured.
    pub ops: usize,
}

/// Bandwidth at one queue depth.
#[derive(Debug, Clone, Copy)]
pub struct Bandwidth {
    /// Operations in flight.
    pub queue_depth: usize,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
}

/// The figures and what they suggest.
#[derive(Debug, Clone)]
pub struct ProbeReport {
    /// The scratch file's directory.
    pub dir: PathBuf,
    /// Direct-I/O offset alignment (`statx` `STATX_DIOALIGN`), if reported.
    pub dio_align: Option<usize>,
    /// The block the engine would use here.
    pub block_bytes: usize,
    /// One 4 KiB write with `RWF_DSYNC` at a time.
    pub dsync_write: SyncStats,
    /// One 4 KiB write linked to an `fdatasync` at a time.
    pub write_then_fdatasync: SyncStats,
    /// Sequential 1 MiB writes, then one `fdatasync`, per queue depth.
    pub seq_write: Vec<Bandwidth>,
    /// Sequential 1 MiB reads per queue depth.
    pub seq_read: Vec<Bandwidth>,
    /// The way to make a commit durable here: the default (`DsyncWrite`)
    /// unless write + `fdatasync` did more than 10% more writes per second.
    pub sync_method: SyncMethod,
}

/// Removes the scratch file however the probe ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        file::remove_leftover(&Fs::Real, &self.0);
    }
}

/// Runs the probe in `dir` (which must exist).
pub fn probe(dir: &Path, opts: &ProbeOptions) -> Result<ProbeReport> {
    check_options(opts)?;
    let path = dir.join(format!("corewal-probe-{:016x}.tmp", file::random_u64()?));
    let f = Arc::new(DiskFile::create_new(
        &Fs::Real,
        &path,
        Access::Direct,
        0o600,
    )?);
    let _scratch = Scratch(path.clone());
    let dio_align = f.dio_offset_align();
    let block_bytes = dio_align.unwrap_or(4096).max(4096);
    let size = opts.file_bytes / SEQ_CHUNK_BYTES as u64 * SEQ_CHUNK_BYTES as u64;
    let wake = WakeFd::new()?;
    let mut io = Ring::io_uring(wake.fd())?;

    // Written whole first, untimed: every measured write then overwrites
    // allocated blocks, as the engine's commits do in zero-filled segments.
    let zeros = AlignedBuf::new(SEQ_CHUNK_BYTES, 4096);
    f.zero_fill(&zeros, 0, size)?;
    let mut seq_write = Vec::new();
    let mut seq_read = Vec::new();
    for &qd in &opts.queue_depths {
        seq_write.push(Bandwidth {
            queue_depth: qd,
            mb_per_s: sequential(&mut io, &f, size, qd, false)?,
        });
    }
    let dsync_write = durable_writes(&mut io, &f, block_bytes, SyncKind::Dsync, opts)?;
    let write_then_fdatasync = durable_writes(&mut io, &f, block_bytes, SyncKind::Fdatasync, opts)?;
    for &qd in &opts.queue_depths {
        seq_read.push(Bandwidth {
            queue_depth: qd,
            mb_per_s: sequential(&mut io, &f, size, qd, true)?,
        });
    }
    // The default unless the other way is clearly faster: a single short
    // run on a shared device is noisy.
    let sync_method = if write_then_fdatasync.ops_per_s > dsync_write.ops_per_s * 1.1 {
        SyncMethod::WriteThenFdatasync
    } else {
        SyncMethod::DsyncWrite
    };
    Ok(ProbeReport {
        dir: dir.into(),
        dio_align,
        block_bytes,
        dsync_write,
        write_then_fdatasync,
        seq_write,
        seq_read,
        sync_method,
    })
}

/// Queue depths the ring can hold, and a file large enough for the deepest.
fn check_options(opts: &ProbeOptions) -> Result<()> {
    if let Some(q) = opts
        .queue_depths
        .iter()
        .find(|&&q| q == 0 || q > OPS_IN_FLIGHT_MAX)
    {
        return Err(Error::InvalidConfig {
            field: "queue_depths",
            reason: format!("{q} is outside 1..={OPS_IN_FLIGHT_MAX}"),
        });
    }
    if opts.file_bytes < (SEQ_CHUNK_BYTES * OPS_IN_FLIGHT_MAX) as u64 {
        return Err(Error::InvalidConfig {
            field: "file_bytes",
            reason: format!(
                "{} is below the {} bytes the deepest queue needs",
                opts.file_bytes,
                SEQ_CHUNK_BYTES * OPS_IN_FLIGHT_MAX
            ),
        });
    }
    Ok(())
}

fn failed(path: &Path) -> impl Fn(crate::io::OpError) -> Error + '_ {
    move |e| e.into_error(Some(path.into()))
}

/// Waits for one completion; returns its buffer.
fn next_completion(io: &mut Ring, path: &Path) -> Result<Option<AlignedBuf>> {
    loop {
        if let Some(c) = io.poll() {
            c.outcome.map_err(failed(path))?;
            return Ok(c.buf);
        }
        if let Err(e) = io.wait(None) {
            io.abandon();
            return Err(failed(path)(e));
        }
    }
}

/// Reads or writes the first `size` bytes of `f` in 1 MiB pieces with `qd`
/// in flight; a write pass ends with one `fdatasync`. Returns MB/s.
fn sequential(io: &mut Ring, f: &Arc<DiskFile>, size: u64, qd: usize, read: bool) -> Result<f64> {
    let path = f.path();
    let mut free: Vec<AlignedBuf> = (0..qd)
        .map(|_| AlignedBuf::new(SEQ_CHUNK_BYTES, 4096))
        .collect();
    let refused = |r: Refused| failed(path)(r.error);
    let started = Instant::now();
    let mut next = 0u64;
    while next < size || io.in_flight() > 0 {
        while next < size {
            let Some(buf) = free.pop() else { break };
            let n = SEQ_CHUNK_BYTES;
            if read {
                io.read(0, f, next, buf, n, n).map_err(refused)?;
            } else {
                io.write(0, f, next, buf, n, SyncKind::None)
                    .map_err(refused)?;
            }
            next += SEQ_CHUNK_BYTES as u64;
        }
        free.extend(next_completion(io, path)?);
    }
    if !read {
        io.sync(0, f).map_err(failed(path))?;
        next_completion(io, path)?;
    }
    Ok(size as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Durable `block`-byte writes one at a time over the first MiB of the
/// file, for `opts.sync_test`.
fn durable_writes(
    io: &mut Ring,
    f: &Arc<DiskFile>,
    block: usize,
    sync: SyncKind,
    opts: &ProbeOptions,
) -> Result<SyncStats> {
    let path = f.path();
    let mut buf = AlignedBuf::new(block, block);
    buf.fill(0xA5);
    let slots = (SEQ_CHUNK_BYTES / block) as u64;
    let mut lat_ns = Vec::new();
    let started = Instant::now();
    let mut k = 0u64;
    while started.elapsed() < opts.sync_test {
        let t = Instant::now();
        io.write(k, f, (k % slots) * block as u64, buf, block, sync)
            .map_err(|r| failed(path)(r.error))?;
        buf = next_completion(io, path)?.expect("a write hands its buffer back");
        lat_ns.push(t.elapsed().as_nanos() as u64);
        k += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    lat_ns.sort_unstable();
    let pct = |q: f64| {
        lat_ns
            .get(((lat_ns.len() as f64 * q) as usize).min(lat_ns.len().saturating_sub(1)))
            .map_or(0.0, |&ns| ns as f64 / 1e3)
    };
    Ok(SyncStats {
        ops_per_s: lat_ns.len() as f64 / secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        ops: lat_ns.len(),
    })
}
