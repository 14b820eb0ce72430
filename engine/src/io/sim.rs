//! The simulated disk: a deterministic, fault-injecting [`CommitIo`] for
//! tests. Never use it for data you want to keep.
//!
//! It writes through the page cache (like the portable backend, so it runs on
//! any filesystem, tmpfs included) and keeps, apart from the files, what a
//! device would have made durable: every write since the last data sync of
//! its file is *volatile*. [`SimDisk::power_cut`] then decides, from the
//! disk's seed, what each volatile write leaves behind — all of it, none of
//! it, a torn prefix of whole 512-byte sectors, or any subset of them — and
//! rewrites the files to that state, as a power cut would.
//!
//! The model of the device, where it is stricter than Linux:
//! * a write completes into the device's volatile cache;
//! * `fdatasync(fd)` makes every completed write of that file durable;
//! * an `RWF_DSYNC` write is a forced-unit-access write: it makes itself
//!   durable and nothing else (an `O_DIRECT` `RWF_DSYNC` write on a device
//!   with FUA issues no cache flush);
//! * a write is durable only once its completion is delivered: until then
//!   (the operation in flight) a power cut may keep all, none or part of it;
//! * nothing else is ever durable — no write-back "by luck".
//!
//! Files are created, zero-filled, renamed and removed outside the commit
//! path, through `io::file` on [`crate::io::fs::Fs::Simulated`], and the
//! disk watches those too: a creation, rename or removal is volatile until
//! its directory is synced, and a write outside the ring until its file is
//! synced. At a power cut each directory keeps a prefix, picked by the seed,
//! of its name changes since its last sync (a journaling filesystem commits
//! them in order) and the rest are taken back; a removed file waits in a
//! `*.sim-removed-N` stash beside it until then. These operations count
//! among the planned ones: an error, a short write or the power cut can
//! land on any of them. Directories themselves are created durably (only
//! their syncs are counted).
//!
//! Faults are planned by operation: the n-th write or data sync of the disk
//! (counted over all shards, from 1, across sessions) fails, completes short,
//! lands elsewhere, or is where the power goes. Reads are faulted by place:
//! any read covering a planned sector of a file fails or returns it with a
//! bit flipped. With one client issuing one request at a time the sequence
//! of operations, and so every fault, repeats exactly from a seed. With
//! several requests submitted at once, how they group into commits depends
//! on thread timing, and so may the operations that follow.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::io::file::DiskFile;
use crate::io::fs::{FsFault, FsOp};
use crate::io::portable::{self, PortableIo};
use crate::io::{CommitIo, Op, OpError, OpKind, SyncKind};

/// Sector size of the simulated device: the unit of a torn write.
pub const SIM_SECTOR_BYTES: usize = 512;

/// A fault planned for one write or data sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimFault {
    /// The operation fails with `errno` (e.g. `EIO`, `ENOSPC`); a write
    /// writes nothing, a sync makes nothing durable.
    Error(i32),
    /// A write completes only its first half (whole sectors) and reports
    /// the short count.
    ShortWrite,
    /// A write lands `blocks` × 4 KiB away from where it was aimed (never
    /// before byte 4096 of the file) and reports success: the device
    /// misdirected it.
    Misdirect(i64),
    /// The power goes during this operation: a write reaches the volatile
    /// cache and is then at the mercy of [`SimDisk::power_cut`]; this and
    /// every later operation fails until [`SimDisk::power_cut`].
    PowerCut,
}

/// A fault planned for reads of one sector of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimReadFault {
    /// A latent sector error: any read covering the sector fails with `EIO`.
    Unreadable,
    /// The sector reads back with bit `bit` (0..4096) flipped.
    FlipBit(u16),
}

/// What a power cut left behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Volatile writes kept whole.
    pub kept: u64,
    /// Volatile writes lost whole.
    pub lost: u64,
    /// Volatile writes torn to a prefix or a subset of their sectors.
    pub torn: u64,
    /// Creations, renames and removals taken back (their directory was not
    /// synced).
    pub names_undone: u64,
}

/// Operation counts of the simulated disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Writes and data syncs (the counter faults are planned against).
    pub ops: u64,
    /// Reads.
    pub reads: u64,
    /// Faults that took effect (planned write/sync faults and read faults).
    pub faults: u64,
    /// Most operations one shard had in flight at once.
    pub in_flight_most: u64,
    /// Filesystem operations (creations, renames, removals, directory and
    /// file syncs, writes outside the ring), counted in `ops` too.
    pub fs_ops: u64,
    /// Power cuts that happened during a filesystem operation, per kind in
    /// the order of [`FsOp::ALL`].
    pub cuts_in_fs: [u64; 6],
}

/// A shared handle to one simulated disk; clones name the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimDisk({:?})", self.lock().stats)
    }
}

impl PartialEq for SimDisk {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
    }
}
impl Eq for SimDisk {}

struct Volatile {
    /// Order of the write on the disk.
    seq: u64,
    position: u64,
    /// What the bytes were before the write.
    before: Vec<u8>,
}

/// What delivering an operation's completion makes durable.
enum Durable {
    Nothing,
    /// One write (`RWF_DSYNC`: forced unit access).
    One(PathBuf, u64),
    /// Every write of the file up to this one (a data sync).
    UpTo(PathBuf, u64),
}

struct SimState {
    seed: u64,
    rng: SmallRng,
    stats: SimStats,
    planned: HashMap<u64, SimFault>,
    read_faults: HashMap<(PathBuf, u64), SimReadFault>,
    /// Writes not yet durable, per file, oldest first.
    volatile: HashMap<PathBuf, Vec<Volatile>>,
    /// Name changes not yet durable, per directory, oldest first.
    dirs: HashMap<PathBuf, Vec<DirOp>>,
    /// Files removed so far (names their stashes).
    stashed: u64,
    /// Writes so far (orders `Volatile::seq`).
    writes: u64,
    /// `poll` rounds an operation stays in flight.
    latency: u64,
    cut: bool,
}

fn cut_error() -> io::Error {
    io::Error::other("simulated power cut: the device is gone")
}

/// A change to a directory's names that its directory has not yet made
/// durable.
enum DirOp {
    Created(PathBuf),
    /// `to` replaced a file, moved to `replaced`'s stash.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<PathBuf>,
    },
    /// The file was moved to `stash`, from where a power cut may bring it back.
    Removed {
        path: PathBuf,
        stash: PathBuf,
    },
}

impl DirOp {
    /// The stash of a file this change removed or replaced.
    fn stash(&self) -> Option<&PathBuf> {
        match self {
            DirOp::Removed { stash, .. } => Some(stash),
            DirOp::Renamed { replaced, .. } => replaced.as_ref(),
            DirOp::Created(_) => None,
        }
    }
}

/// The directory a name is in.
fn dir_of(path: &Path) -> PathBuf {
    path.parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

impl SimDisk {
    /// Counts filesystem operation `op` and applies its planned fault: the
    /// error of a planned `Error`, or of a power cut that happened earlier.
    /// Returns whether the power goes during this operation (the caller does
    /// it, then reports the cut with [`SimDisk::fs_cut_now`]).
    pub(crate) fn fs_begin(&self, op: FsOp) -> io::Result<FsFault> {
        let mut s = self.lock();
        if s.cut {
            return Err(cut_error());
        }
        s.stats.fs_ops += 1;
        match s.next_op() {
            Some(SimFault::Error(errno)) => Err(io::Error::from_raw_os_error(errno)),
            Some(SimFault::PowerCut) => {
                s.stats.cuts_in_fs[op.index()] += 1;
                Ok(FsFault::PowerCut)
            }
            Some(SimFault::ShortWrite) if op == FsOp::Write => Ok(FsFault::ShortWrite),
            // A misdirected or short transfer is a ring fault: here the
            // operation goes ahead as asked.
            _ => Ok(FsFault::None),
        }
    }

    /// The power goes now (during a filesystem operation).
    pub(crate) fn fs_cut_now(&self) -> io::Error {
        self.lock().cut = true;
        cut_error()
    }

    /// `path` was created: its name is volatile until its directory syncs.
    pub(crate) fn fs_created(&self, path: &Path) {
        let mut s = self.lock();
        s.dirs
            .entry(dir_of(path))
            .or_default()
            .push(DirOp::Created(path.to_path_buf()));
    }

    /// `from` was renamed to `to`, replacing the file now at `replaced`.
    pub(crate) fn fs_renamed(&self, from: &Path, to: &Path, replaced: Option<PathBuf>) {
        let mut s = self.lock();
        if let Some(v) = s.volatile.remove(from) {
            s.volatile.insert(to.to_path_buf(), v);
        }
        s.dirs
            .entry(dir_of(from))
            .or_default()
            .push(DirOp::Renamed {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
                replaced,
            });
    }

    /// Renames `from` over `to` the way a power cut can take back whole:
    /// a file at `to` waits in a stash until the directory syncs.
    pub(crate) fn fs_rename_over(&self, from: &Path, to: &Path) -> io::Result<()> {
        let stash = {
            let mut s = self.lock();
            s.stashed += 1;
            to.with_extension(format!("sim-removed-{}", s.stashed))
        };
        let replaced = match std::fs::rename(to, &stash) {
            Ok(()) => Some(stash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Err(e) = std::fs::rename(from, to) {
            if let Some(stash) = &replaced {
                std::fs::rename(stash, to)?;
            }
            return Err(e);
        }
        if let Some(stash) = &replaced {
            let mut s = self.lock();
            if let Some(v) = s.volatile.remove(to) {
                s.volatile.insert(stash.clone(), v);
            }
        }
        self.fs_renamed(from, to, replaced);
        Ok(())
    }

    /// Removes `path` the way a power cut can take back: moved aside until
    /// its directory syncs.
    pub(crate) fn fs_remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.stashed += 1;
        let stash = path.with_extension(format!("sim-removed-{}", s.stashed));
        std::fs::rename(path, &stash)?;
        if let Some(v) = s.volatile.remove(path) {
            s.volatile.insert(stash.clone(), v);
        }
        s.dirs
            .entry(dir_of(path))
            .or_default()
            .push(DirOp::Removed {
                path: path.to_path_buf(),
                stash,
            });
        Ok(())
    }

    /// `dir` was synced: its names are durable.
    pub(crate) fn fs_dir_synced(&self, dir: &Path) {
        let mut s = self.lock();
        for op in s.dirs.remove(dir).unwrap_or_default() {
            if let Some(stash) = op.stash() {
                s.volatile.remove(stash);
                let _ = std::fs::remove_file(stash);
            }
        }
    }

    /// Writes `data` at `position` of `file` (at `path`) into the volatile
    /// cache.
    pub(crate) fn fs_write(
        &self,
        file: &std::fs::File,
        path: &Path,
        position: u64,
        data: &[u8],
    ) -> io::Result<()> {
        let mut s = self.lock();
        let len = file.metadata()?.len();
        // Bytes past the end read back as zeros after the cut (the size is
        // taken back with them).
        let mut before = vec![0u8; data.len()];
        if position < len {
            let n = ((len - position) as usize).min(data.len());
            file.read_exact_at(&mut before[..n], position)?;
        }
        s.record_volatile(path, position, before);
        file.write_all_at(data, position)
    }

    /// `path` was synced: its writes are durable.
    pub(crate) fn fs_file_synced(&self, path: &Path) {
        self.lock().volatile.remove(path);
    }
}

impl SimDisk {
    /// A disk whose every decision follows from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                seed,
                rng: SmallRng::seed_from_u64(seed),
                stats: SimStats::default(),
                planned: HashMap::new(),
                read_faults: HashMap::new(),
                volatile: HashMap::new(),
                dirs: HashMap::new(),
                stashed: 0,
                writes: 0,
                latency: 1,
                cut: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Plans `fault` for operation `op` (1-based, over all writes and data
    /// syncs the disk has seen, see [`SimStats::ops`]).
    pub fn plan(&self, op: u64, fault: SimFault) {
        self.lock().planned.insert(op, fault);
    }

    /// Plans `fault` for every read covering the 512-byte `sector` of `path`.
    pub fn plan_read(&self, path: &Path, sector: u64, fault: SimReadFault) {
        self.lock()
            .read_faults
            .insert((path.to_path_buf(), sector), fault);
    }

    /// How many `poll` rounds (calls that found nothing to deliver) an
    /// operation stays in flight before its completion is delivered; more
    /// rounds, more commits in flight together. Default 1.
    pub fn set_latency(&self, rounds: u64) {
        self.lock().latency = rounds.max(1);
    }

    /// Removes every planned fault that has not happened yet.
    pub fn clear_plans(&self) {
        let mut s = self.lock();
        s.planned.clear();
        s.read_faults.clear();
    }

    /// Operation counts so far.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Whether the power has gone (a planned [`SimFault::PowerCut`] happened)
    /// and [`SimDisk::power_cut`] has not yet been called.
    pub fn is_cut(&self) -> bool {
        self.lock().cut
    }

    /// Cuts the power now, or completes a cut planned earlier: every
    /// volatile write keeps all, none, a torn prefix of its sectors, or any
    /// subset of them (one quarter each, from the seed), and the files are
    /// rewritten to that state.
    /// Call it with no engine open on the disk's files. Afterwards the disk
    /// works again, with nothing volatile.
    pub fn power_cut(&self) -> io::Result<PowerCutReport> {
        let mut s = self.lock();
        let mut report = PowerCutReport::default();
        s.undo_names(&mut report)?;
        let mut files: Vec<_> = s.volatile.drain().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        for (path, writes) in files {
            let file = OpenOptions::new().write(true).open(&path)?;
            // Newest first: a sector a newer write kept is not rolled back
            // by an older write that was lost.
            let mut kept: HashSet<u64> = HashSet::new();
            for w in writes.iter().rev() {
                let sectors = w.before.len().div_ceil(SIM_SECTOR_BYTES);
                let keep: Vec<bool> = match s.rng.random_range(0..4u32) {
                    0 => {
                        report.kept += 1;
                        vec![true; sectors]
                    }
                    1 => {
                        report.lost += 1;
                        vec![false; sectors]
                    }
                    2 => {
                        report.torn += 1;
                        let prefix = s.rng.random_range(0..sectors.max(1));
                        (0..sectors).map(|i| i < prefix).collect()
                    }
                    _ => {
                        report.torn += 1;
                        (0..sectors).map(|_| s.rng.random_bool(0.5)).collect()
                    }
                };
                for (i, &keep) in keep.iter().enumerate() {
                    let sector = w.position / SIM_SECTOR_BYTES as u64 + i as u64;
                    if keep {
                        kept.insert(sector);
                        continue;
                    }
                    if kept.contains(&sector) {
                        continue;
                    }
                    let from = i * SIM_SECTOR_BYTES;
                    let to = (from + SIM_SECTOR_BYTES).min(w.before.len());
                    file.write_all_at(&w.before[from..to], w.position + from as u64)?;
                }
            }
        }
        s.cut = false;
        Ok(report)
    }

    /// Ends a session the way a process crash does, not a power cut: every
    /// write the device (or the page cache) received stays readable, and
    /// what was not yet made durable stays volatile — it survives the
    /// process, not a later [`SimDisk::power_cut`]. Call it with no engine
    /// open on the disk's files, instead of [`SimDisk::power_cut`].
    pub fn process_crash(&self) {
        let mut s = self.lock();
        s.cut = false;
    }

    /// Flips bit `bit` of byte `byte` of `path` at rest, as a device's decay would.
    pub fn flip_bit_at_rest(&self, path: &Path, byte: u64, bit: u8) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, byte)?;
        b[0] ^= 1 << (bit % 8);
        file.write_all_at(&b, byte)?;
        file.sync_all()
    }
}

impl SimState {
    /// Power cut: in each directory, the name changes since its last sync
    /// keep a prefix the seed picks (a journaling filesystem commits them in
    /// order); the rest are taken back, newest first.
    fn undo_names(&mut self, report: &mut PowerCutReport) -> io::Result<()> {
        let mut dirs: Vec<_> = self.dirs.drain().collect();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, ops) in dirs {
            let keep = self.rng.random_range(0..=ops.len());
            let (kept, undone) = ops.split_at(keep);
            for op in undone.iter().rev() {
                report.names_undone += 1;
                match op {
                    DirOp::Created(path) => {
                        self.volatile.remove(path);
                        match std::fs::remove_file(path) {
                            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                    DirOp::Renamed { from, to, replaced } => {
                        std::fs::rename(to, from)?;
                        if let Some(v) = self.volatile.remove(to) {
                            self.volatile.insert(from.clone(), v);
                        }
                        if let Some(stash) = replaced {
                            std::fs::rename(stash, to)?;
                            if let Some(v) = self.volatile.remove(stash) {
                                self.volatile.insert(to.clone(), v);
                            }
                        }
                    }
                    DirOp::Removed { path, stash } => {
                        std::fs::rename(stash, path)?;
                        if let Some(v) = self.volatile.remove(stash) {
                            self.volatile.insert(path.clone(), v);
                        }
                    }
                }
            }
            for op in kept {
                if let Some(stash) = op.stash() {
                    self.volatile.remove(stash);
                    std::fs::remove_file(stash)?;
                }
            }
        }
        Ok(())
    }

    /// Counts one write or sync and returns its planned fault.
    fn next_op(&mut self) -> Option<SimFault> {
        self.stats.ops += 1;
        let fault = self.planned.remove(&self.stats.ops);
        if fault.is_some() {
            self.stats.faults += 1;
        }
        fault
    }

    fn make_durable(&mut self, durable: &Durable) {
        match durable {
            Durable::Nothing => {}
            Durable::One(path, seq) => {
                if let Some(v) = self.volatile.get_mut(path) {
                    v.retain(|w| w.seq != *seq);
                }
            }
            Durable::UpTo(path, seq) => {
                if let Some(v) = self.volatile.get_mut(path) {
                    v.retain(|w| w.seq > *seq);
                }
            }
        }
    }

    /// Records a write at `position` of `path`, which finds the bytes
    /// `before` there, as volatile; returns its order.
    fn record_volatile(&mut self, path: &Path, position: u64, before: Vec<u8>) -> u64 {
        self.writes += 1;
        let seq = self.writes;
        self.volatile
            .entry(path.to_path_buf())
            .or_default()
            .push(Volatile {
                seq,
                position,
                before,
            });
        seq
    }

    /// Writes `data` at `position` of `file` into the volatile cache;
    /// returns the write's order.
    fn write(&mut self, file: &DiskFile, position: u64, data: &[u8]) -> Result<u64, OpError> {
        let fd = file.fd();
        let mut before = vec![0u8; data.len()];
        // Within the file: segments are created at full size, and a
        // misdirected write is kept inside.
        portable::read(fd, position, before.as_mut_ptr(), data.len(), data.len())?;
        // Recorded first: a write that fails half-way may have changed bytes.
        let seq = self.record_volatile(file.path(), position, before);
        portable::write(fd, position, data.as_ptr(), data.len(), SyncKind::None)?;
        Ok(seq)
    }
}

/// An operation done, whose completion is not yet delivered.
struct Pending {
    id: u64,
    kind: OpKind,
    result: Result<(), OpError>,
    durable: Durable,
    /// The `poll` generation it was started in.
    generation: u64,
}

/// The [`CommitIo`] of one shard on a [`SimDisk`].
///
/// Operations are done in `start` but their completions are delivered
/// [`SimDisk::set_latency`] `poll` rounds later (a round ends when `poll`
/// returns nothing), so that the
/// shard starts further commits while earlier ones are in flight — and a
/// power cut can catch several. A write becomes durable when its completion
/// is delivered; after a power cut every completion delivered is a failure.
pub struct SimIo {
    disk: SimDisk,
    /// Waits on the wake fd when nothing is in flight.
    waiter: PortableIo,
    pending: VecDeque<Pending>,
    generation: u64,
    /// Picks the completion order: the shard's own, so that shards running
    /// side by side do not take turns on one generator.
    rng: SmallRng,
}

impl SimIo {
    /// Shard `shard`'s backend on `disk`, waiting on `wake_fd`.
    pub fn new(disk: SimDisk, shard: u16, wake_fd: RawFd) -> SimIo {
        let seed = disk.lock().seed ^ (u64::from(shard) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        SimIo {
            disk,
            waiter: PortableIo::new(wake_fd),
            pending: VecDeque::new(),
            generation: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn run(&mut self, op: Op) -> (Result<(), OpError>, Durable) {
        let failed = OpError::os;
        let mut s = self.disk.lock();
        match op {
            Op::Write {
                file,
                position,
                ptr,
                len,
                sync,
            } => {
                if s.cut {
                    return (Err(failed(OpKind::Write, cut_error())), Durable::Nothing);
                }
                // SAFETY: the caller of `start` keeps the buffer valid and
                // unmodified until the completion is delivered; it is read
                // here, within `start`.
                let data = unsafe { std::slice::from_raw_parts(ptr, len) };
                Self::write(&mut s, &file, position, data, sync)
            }
            Op::Sync { file } => {
                if s.cut {
                    return (Err(failed(OpKind::Sync, cut_error())), Durable::Nothing);
                }
                let upto = s.writes;
                Self::sync(&mut s, file.path().to_path_buf(), upto)
            }
            Op::Read {
                file,
                position,
                ptr,
                len,
                expect,
            } => (
                Self::read(&mut s, &file, position, ptr, len, expect),
                Durable::Nothing,
            ),
        }
    }

    /// A write of `data` at `position` of `file`, with the planned fault
    /// if this operation has one, made durable as `sync` says.
    fn write(
        s: &mut SimState,
        file: &DiskFile,
        position: u64,
        data: &[u8],
        sync: SyncKind,
    ) -> (Result<(), OpError>, Durable) {
        let failed = OpError::os;
        let len = data.len();
        let path = file.path().to_path_buf();
        let written = match s.next_op() {
            Some(SimFault::Error(errno)) => {
                return (
                    Err(failed(OpKind::Write, io::Error::from_raw_os_error(errno))),
                    Durable::Nothing,
                );
            }
            Some(SimFault::ShortWrite) => {
                let half = (len / 2) / SIM_SECTOR_BYTES * SIM_SECTOR_BYTES;
                let short = s
                    .write(file, position, &data[..half])
                    .and(Err(OpError::short(OpKind::Write, half, len)));
                return (short, Durable::Nothing);
            }
            Some(SimFault::Misdirect(blocks)) => {
                // Never onto the segment header, never past the file.
                let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                let last = size.saturating_sub(len as u64) / 4096 * 4096;
                let to = (position as i64 + blocks * 4096).clamp(4096, last.max(4096) as i64);
                s.write(file, to as u64, data)
            }
            Some(SimFault::PowerCut) => {
                let _ = s.write(file, position, data);
                s.cut = true;
                return (Err(failed(OpKind::Write, cut_error())), Durable::Nothing);
            }
            None => s.write(file, position, data),
        };
        let seq = match written {
            Ok(seq) => seq,
            Err(e) => return (Err(e), Durable::Nothing),
        };
        match sync {
            SyncKind::None => (Ok(()), Durable::Nothing),
            SyncKind::Dsync => (Ok(()), Durable::One(path, seq)),
            SyncKind::Fdatasync => Self::sync(s, path, seq),
        }
    }

    /// A data sync of `path` covering its writes up to `upto`.
    fn sync(s: &mut SimState, path: PathBuf, upto: u64) -> (Result<(), OpError>, Durable) {
        match s.next_op() {
            Some(SimFault::Error(errno)) => (
                Err(OpError::os(
                    OpKind::Sync,
                    io::Error::from_raw_os_error(errno),
                )),
                Durable::Nothing,
            ),
            Some(SimFault::PowerCut) => {
                s.cut = true;
                (
                    Err(OpError::os(OpKind::Sync, cut_error())),
                    Durable::Nothing,
                )
            }
            // A short or misdirected sync is no fault: it syncs.
            Some(SimFault::ShortWrite | SimFault::Misdirect(_)) | None => {
                (Ok(()), Durable::UpTo(path, upto))
            }
        }
    }

    fn read(
        s: &mut SimState,
        file: &DiskFile,
        position: u64,
        ptr: *mut u8,
        len: usize,
        expect: usize,
    ) -> Result<(), OpError> {
        let failed = |source: io::Error| OpError {
            kind: OpKind::Read,
            short: false,
            source,
        };
        if s.cut {
            return Err(failed(cut_error()));
        }
        s.stats.reads += 1;
        portable::read(file.fd(), position, ptr, len, expect)?;
        if s.read_faults.is_empty() {
            return Ok(());
        }
        let path = file.path().to_path_buf();
        let first = position / SIM_SECTOR_BYTES as u64;
        let end = (position + expect as u64).div_ceil(SIM_SECTOR_BYTES as u64);
        for sector in first..end {
            match s.read_faults.get(&(path.clone(), sector)).copied() {
                None => {}
                Some(SimReadFault::Unreadable) => {
                    s.stats.faults += 1;
                    return Err(failed(io::Error::from_raw_os_error(libc::EIO)));
                }
                Some(SimReadFault::FlipBit(bit)) => {
                    s.stats.faults += 1;
                    let at = (sector - first) as usize * SIM_SECTOR_BYTES
                        + (bit as usize / 8) % SIM_SECTOR_BYTES;
                    if at < expect {
                        // SAFETY: `at < expect <= len`, inside the caller's
                        // buffer, valid for the call.
                        unsafe { *ptr.add(at) ^= 1 << (bit % 8) };
                    }
                }
            }
        }
        Ok(())
    }
}

impl CommitIo for SimIo {
    unsafe fn start(&mut self, id: u64, op: Op) -> Result<(), OpError> {
        assert!(
            self.pending.len() < crate::io::OPS_IN_FLIGHT_MAX,
            "too many operations in flight"
        );
        let kind = op.kind();
        let (result, durable) = self.run(op);
        {
            let mut s = self.disk.lock();
            let now = self.pending.len() as u64 + 1;
            s.stats.in_flight_most = s.stats.in_flight_most.max(now);
        }
        self.pending.push_back(Pending {
            id,
            kind,
            result,
            durable,
            generation: self.generation,
        });
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    fn poll(&mut self) -> Option<(u64, Result<(), OpError>)> {
        let mut s = self.disk.lock();
        // Any operation old enough may complete first, as on a device with
        // a queue: the seed picks which.
        let ready: Vec<usize> = (0..self.pending.len())
            .filter(|&i| self.generation - self.pending[i].generation >= s.latency)
            .collect();
        if ready.is_empty() {
            self.generation += 1;
            return None;
        }
        let pick = ready[self.rng.random_range(0..ready.len())];
        let p = self.pending.remove(pick).expect("an index of pending");
        let result = match p.result {
            Ok(()) if s.cut => Err(OpError::os(p.kind, cut_error())),
            Ok(()) => {
                s.make_durable(&p.durable);
                Ok(())
            }
            Err(e) => Err(e),
        };
        Some((p.id, result))
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), OpError> {
        if !self.pending.is_empty() {
            // The next poll round delivers.
            return Ok(());
        }
        self.waiter.wait(timeout)
    }
}
