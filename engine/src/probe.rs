//! Measures the device under a directory the way the engine uses it, for
//! `corewal probe`: direct-I/O alignment, the latency of a durable 4 KiB
//! write both ways the engine can make one (`RWF_DSYNC`, write + linked
//! `fdatasync`), and sequential `O_DIRECT` write and read bandwidth through
//! `io_uring` at several queue depths. Everything goes to one scratch file,
//! written whole first (so that overwrites hit allocated blocks, as commits
//! do) and removed at the end.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::SyncMethod;
use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access};
use crate::io::uring::UringIo;
use crate::io::wake::WakeFd;
use crate::io::{CommitIo, Op, SyncKind, OPS_IN_FLIGHT_MAX};

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
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs the probe in `dir` (which must exist).
pub fn probe(dir: &Path, opts: &ProbeOptions) -> Result<ProbeReport> {
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
    let path = dir.join(format!("corewal-probe-{:016x}.tmp", file::random_u64()?));
    let f = file::create_new(&path, Access::Direct, 0o600)?;
    let _scratch = Scratch(path.clone());
    let dio_align = file::dio_offset_align(&f);
    let block_bytes = dio_align.unwrap_or(4096).max(4096);
    let size = opts.file_bytes / SEQ_CHUNK_BYTES as u64 * SEQ_CHUNK_BYTES as u64;
    let wake = WakeFd::new()?;
    let mut io = UringIo::new(wake.fd())?;

    // Written whole first, untimed: every measured write then overwrites
    // allocated blocks, as the engine's commits do in zero-filled segments.
    let zeros = AlignedBuf::new(SEQ_CHUNK_BYTES, 4096);
    file::zero_fill(&f, &path, &zeros, 0, size)?;
    let mut seq_write = Vec::new();
    let mut seq_read = Vec::new();
    for &qd in &opts.queue_depths {
        seq_write.push(Bandwidth {
            queue_depth: qd,
            mb_per_s: sequential(&mut io, &f, &path, size, qd, false)?,
        });
    }
    let dsync_write = durable_writes(&mut io, &f, &path, block_bytes, SyncKind::Dsync, opts)?;
    let write_then_fdatasync =
        durable_writes(&mut io, &f, &path, block_bytes, SyncKind::Fdatasync, opts)?;
    for &qd in &opts.queue_depths {
        seq_read.push(Bandwidth {
            queue_depth: qd,
            mb_per_s: sequential(&mut io, &f, &path, size, qd, true)?,
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

fn failed(path: &Path) -> impl Fn(crate::io::OpError) -> Error + '_ {
    move |e| e.into_error(Some(path.into()))
}

/// Waits for one completion and returns its id.
fn next_completion(io: &mut dyn CommitIo, path: &Path) -> Result<u64> {
    loop {
        if let Some((id, r)) = io.poll() {
            r.map_err(failed(path))?;
            return Ok(id);
        }
        io.wait(None).map_err(failed(path))?;
    }
}

/// Waits until no operation is in flight, so that buffers they use may be
/// freed; called when a measurement stops early on an error. Aborts if the
/// ring itself fails, rather than free memory the kernel may still write.
fn drain(io: &mut dyn CommitIo) {
    while io.in_flight() > 0 {
        if io.poll().is_none() && io.wait(None).is_err() {
            std::process::abort();
        }
    }
}

/// Reads or writes the first `size` bytes of `f` in 1 MiB pieces with `qd`
/// in flight; a write pass ends with one `fdatasync`. Returns MB/s.
fn sequential(
    io: &mut dyn CommitIo,
    f: &File,
    path: &Path,
    size: u64,
    qd: usize,
    read: bool,
) -> Result<f64> {
    let mut bufs: Vec<AlignedBuf> = (0..qd)
        .map(|_| AlignedBuf::new(SEQ_CHUNK_BYTES, 4096))
        .collect();
    let r = sequential_with(io, f, path, size, &mut bufs, read);
    // On an early error, operations may still use `bufs`.
    drain(io);
    r
}

fn sequential_with(
    io: &mut dyn CommitIo,
    f: &File,
    path: &Path,
    size: u64,
    bufs: &mut [AlignedBuf],
    read: bool,
) -> Result<f64> {
    let qd = bufs.len();
    let fd = f.as_raw_fd();
    let started = Instant::now();
    let mut next = 0u64;
    let mut in_flight = 0usize;
    let mut free: Vec<usize> = (0..qd).collect();
    while next < size || in_flight > 0 {
        while next < size {
            let Some(slot) = free.pop() else { break };
            let ptr = bufs[slot].as_mut_ptr();
            let op = if read {
                Op::Read {
                    fd,
                    position: next,
                    ptr,
                    len: SEQ_CHUNK_BYTES,
                    expect: SEQ_CHUNK_BYTES,
                }
            } else {
                Op::Write {
                    fd,
                    position: next,
                    ptr,
                    len: SEQ_CHUNK_BYTES,
                    sync: SyncKind::None,
                }
            };
            // SAFETY: buffer `slot` is used by this operation only until its
            // completion comes back below; `bufs` outlives every operation:
            // `sequential` drains the ring before dropping them, whether this
            // returns early or not.
            unsafe { io.start(slot as u64, op) }.map_err(failed(path))?;
            in_flight += 1;
            next += SEQ_CHUNK_BYTES as u64;
        }
        let slot = next_completion(io, path)?;
        in_flight -= 1;
        free.push(slot as usize);
    }
    if !read {
        // SAFETY: a sync reads no buffer.
        unsafe { io.start(OPS_IN_FLIGHT_MAX as u64, Op::Sync { fd }) }.map_err(failed(path))?;
        next_completion(io, path)?;
    }
    Ok(size as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// Durable `block`-byte writes one at a time over the first MiB of the
/// file, for `opts.sync_test`.
fn durable_writes(
    io: &mut dyn CommitIo,
    f: &File,
    path: &Path,
    block: usize,
    sync: SyncKind,
    opts: &ProbeOptions,
) -> Result<SyncStats> {
    let mut buf = AlignedBuf::new(block, block);
    buf.fill(0xA5);
    let r = durable_writes_with(io, f, path, &buf, sync, opts);
    // On an early error, the write may still use `buf`.
    drain(io);
    r
}

fn durable_writes_with(
    io: &mut dyn CommitIo,
    f: &File,
    path: &Path,
    buf: &AlignedBuf,
    sync: SyncKind,
    opts: &ProbeOptions,
) -> Result<SyncStats> {
    let block = buf.len();
    let slots = (SEQ_CHUNK_BYTES / block) as u64;
    let mut lat_ns = Vec::new();
    let started = Instant::now();
    let mut k = 0u64;
    while started.elapsed() < opts.sync_test {
        let op = Op::Write {
            fd: f.as_raw_fd(),
            position: (k % slots) * block as u64,
            ptr: buf.as_ptr(),
            len: block,
            sync,
        };
        let t = Instant::now();
        // SAFETY: `buf` is neither changed nor dropped before the completion,
        // which is awaited right here (and `durable_writes` drains the ring
        // before dropping it if this returns early).
        unsafe { io.start(k, op) }.map_err(failed(path))?;
        next_completion(io, path)?;
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
