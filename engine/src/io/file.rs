//! File-system calls: direct-I/O files, alignment, directory sync, locks.
//! Everything the engine does to a file outside the commit path goes through here.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::fs::{Fs, FsFault, FsOp};

/// How a file is opened for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `O_DIRECT`: bypass the page cache (the engine's normal mode).
    Direct,
    /// Through the page cache (the inspector, and tests on tmpfs).
    Buffered,
}

/// Creates `dir` and its missing parents with `mode`, and makes each new
/// directory's entry durable (its parent is synced), so that a power cut
/// after the first acknowledged commit cannot take the directory with it.
/// (The simulated disk does not take directories back: only their syncs
/// are its operations.)
pub fn create_dir(fs: &Fs, dir: &Path, mode: u32) -> Result<()> {
    // The missing ancestors, outermost first.
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| Error::io("create directory", Some(dir.into()), e))?;
    for d in missing.iter().rev() {
        match d.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(fs, parent)?,
            _ => sync_dir(fs, Path::new("."))?,
        }
    }
    Ok(())
}

/// Refuses an existing directory that lets group or others write into it
/// beyond what `mode` allows: whoever can write there can remove, rename or
/// replace segment files, and acknowledged data would be theirs to lose.
/// Read and search bits wider than `mode` (a `mkdir` under umask 022 gives
/// 0755) are accepted: they expose no more than the files' own modes allow.
pub fn check_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(dir).map_err(|e| Error::io("stat directory", Some(dir.into()), e))?;
    if !meta.is_dir() {
        return Err(Error::InvalidConfig {
            field: "dir",
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    let have = meta.permissions().mode() & 0o7777;
    let wider = have & !mode & 0o022;
    if wider != 0 {
        return Err(Error::InvalidConfig {
            field: "dir_mode",
            reason: format!(
                "{} has mode {have:o}: group or others may write into it, which dir_mode \
                 {mode:o} does not allow; narrow it (chmod go-w {}) or widen Config::dir_mode",
                dir.display(),
                dir.display()
            ),
        });
    }
    Ok(())
}

/// `fsync` of a directory, so that entries created, renamed or removed in it are durable.
pub fn sync_dir(fs: &Fs, dir: &Path) -> Result<()> {
    let operation = "fsync directory";
    let fault = begin(fs, FsOp::SyncDir, operation, dir)?;
    let f = File::open(dir).map_err(|e| Error::io("open directory", Some(dir.into()), e))?;
    f.sync_all()
        .map_err(|e| Error::io(operation, Some(dir.into()), e))?;
    end(fs, fault, operation, dir)?;
    #[cfg(feature = "testing")]
    if let Fs::Simulated(disk) = fs {
        disk.fs_dir_synced(dir);
    }
    Ok(())
}

/// Counts `op` on the simulated disk, if any: `Err` for a planned error or
/// when the power is gone; otherwise what the operation must do.
fn begin(fs: &Fs, op: FsOp, operation: &'static str, path: &Path) -> Result<FsFault> {
    match fs {
        Fs::Real => {
            let _ = (op, operation, path);
            Ok(FsFault::None)
        }
        #[cfg(feature = "testing")]
        Fs::Simulated(disk) => disk
            .fs_begin(op)
            .map_err(|e| Error::io(operation, Some(path.into()), e)),
    }
}

/// After an operation was done, or failed: the power went during it if so
/// planned (a planned cut is never lost to the operation's own error).
fn end(fs: &Fs, fault: FsFault, operation: &'static str, path: &Path) -> Result<()> {
    match (fs, fault) {
        #[cfg(feature = "testing")]
        (Fs::Simulated(disk), FsFault::PowerCut) => {
            Err(Error::io(operation, Some(path.into()), disk.fs_cut_now()))
        }
        _ => {
            let _ = (operation, path);
            Ok(())
        }
    }
}

fn direct_flag(access: Access) -> i32 {
    match access {
        Access::Direct => libc::O_DIRECT,
        Access::Buffered => 0,
    }
}

/// A file the engine reads and writes: the open file and the path it was
/// opened at (for errors, and for the simulated disk). The descriptor never
/// leaves `io/`.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    fs: Fs,
}

impl DiskFile {
    /// Opens an existing regular file of `fs` for reading and writing.
    pub fn open_rw(fs: &Fs, path: &Path, access: Access) -> Result<DiskFile> {
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        open_regular(path, access, &mut o).map(|file| DiskFile::at(file, path, fs))
    }

    /// Opens an existing regular file read-only.
    pub fn open_read(path: &Path, access: Access) -> Result<DiskFile> {
        let mut o = OpenOptions::new();
        o.read(true);
        open_regular(path, access, &mut o).map(|file| DiskFile::at(file, path, &Fs::Real))
    }

    /// Creates a new file of `fs` (failing if it exists) with `mode`; its
    /// name is durable once its directory is synced.
    pub fn create_new(fs: &Fs, path: &Path, access: Access, mode: u32) -> Result<DiskFile> {
        let fault = begin(fs, FsOp::Create, "create", path)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(direct_flag(access) | libc::O_CLOEXEC)
            .open(path)
            .map(|file| DiskFile::at(file, path, fs))
            .map_err(|e| open_error(path, access, e));
        end(fs, fault, "create", path)?;
        let f = f?;
        #[cfg(feature = "testing")]
        if let Fs::Simulated(disk) = fs {
            disk.fs_created(path);
        }
        Ok(f)
    }

    fn at(file: File, path: &Path, fs: &Fs) -> DiskFile {
        DiskFile {
            file,
            path: path.into(),
            fs: fs.clone(),
        }
    }

    /// The path it was opened at, or renamed to ([`DiskFile::renamed`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The same open file, known by `path` after it was renamed there: the
    /// simulated disk keys a file's writes by its path.
    pub fn renamed(mut self, path: &Path) -> DiskFile {
        self.path = path.to_path_buf();
        self
    }

    pub(in crate::io) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Its size.
    pub fn len(&self) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| Error::io("stat", Some(self.path.clone()), e))
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|n| n == 0)
    }

    /// Writes all of `buf` at `position`.
    pub fn write_all_at(&self, buf: &[u8], position: u64, operation: &'static str) -> Result<()> {
        let fault = begin(&self.fs, FsOp::Write, operation, &self.path)?;
        let buf = match fault {
            FsFault::ShortWrite => &buf[..buf.len() / 2],
            _ => buf,
        };
        self.write_through(buf, position, operation)?;
        if fault == FsFault::ShortWrite {
            return Err(Error::io(
                operation,
                Some(self.path.clone()),
                io::ErrorKind::WriteZero.into(),
            ));
        }
        end(&self.fs, fault, operation, &self.path)
    }

    fn write_through(&self, buf: &[u8], position: u64, operation: &'static str) -> Result<()> {
        #[cfg(feature = "testing")]
        if let Fs::Simulated(disk) = &self.fs {
            return disk
                .fs_write(&self.file, &self.path, position, buf)
                .map_err(|e| Error::io(operation, Some(self.path.clone()), e));
        }
        let mut done = 0;
        while done < buf.len() {
            match self.file.write_at(&buf[done..], position + done as u64) {
                Ok(0) => {
                    return Err(Error::io(
                        operation,
                        Some(self.path.clone()),
                        io::ErrorKind::WriteZero.into(),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(operation, Some(self.path.clone()), e)),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `position`.
    pub fn read_exact_at(&self, buf: &mut [u8], position: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, position)
            .map_err(|e| Error::io("read", Some(self.path.clone()), e))
    }

    /// Reads the whole file if it holds at most `max` bytes: a larger file
    /// is refused from its size alone, and never more than `max + 1` bytes
    /// are read (the file may grow meanwhile). `Ok(None)`: it is larger.
    pub fn read_bounded(&self, max: usize) -> Result<Option<Vec<u8>>> {
        use std::io::Read;
        if self.len()? > max as u64 {
            return Ok(None);
        }
        let mut b = Vec::with_capacity(max + 1);
        (&self.file)
            .take(max as u64 + 1)
            .read_to_end(&mut b)
            .map_err(|e| Error::io("read", Some(self.path.clone()), e))?;
        Ok((b.len() <= max).then_some(b))
    }

    /// `fdatasync`, outside any ring (files other than segments, and
    /// segments before the shard uses them).
    pub fn sync_data(&self, operation: &'static str) -> Result<()> {
        self.sync(operation, false)
    }

    fn sync(&self, operation: &'static str, all: bool) -> Result<()> {
        let fault = begin(&self.fs, FsOp::SyncFile, operation, &self.path)?;
        let synced = if all {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        };
        synced.map_err(|e| Error::io(operation, Some(self.path.clone()), e))?;
        end(&self.fs, fault, operation, &self.path)?;
        #[cfg(feature = "testing")]
        if let Fs::Simulated(disk) = &self.fs {
            disk.fs_file_synced(&self.path);
        }
        Ok(())
    }

    /// `fsync`: data and metadata (the size of a file just written).
    pub fn sync_all(&self, operation: &'static str) -> Result<()> {
        self.sync(operation, true)
    }

    /// Fills the file with zeros from `from` to `to` (block-aligned) using
    /// `zeros`, an all-zero aligned buffer, and makes them durable.
    pub fn zero_fill(&self, zeros: &AlignedBuf, from: u64, to: u64) -> Result<()> {
        debug_assert!(zeros.iter().all(|&b| b == 0));
        let mut at = from;
        while at < to {
            let n = (zeros.len() as u64).min(to - at) as usize;
            self.write_all_at(&zeros[..n], at, "zero-fill segment")?;
            at += n as u64;
        }
        self.sync_data("fdatasync segment")
    }

    /// The direct-I/O offset alignment of the file as the kernel reports it
    /// (`statx` with `STATX_DIOALIGN`), or `None` when the kernel does not say.
    pub fn dio_offset_align(&self) -> Option<usize> {
        // SAFETY: statx writes into the zeroed struct we own; the path is an
        // empty C string used with AT_EMPTY_PATH, so the call looks only at
        // the fd.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        let empty = c"";
        // SAFETY: as above.
        let rc = unsafe {
            libc::statx(
                self.fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
            return None;
        }
        Some(stx.stx_dio_offset_align as usize)
    }
}

/// Opens `path`, which must be a regular file: opened with `O_NONBLOCK` so
/// that a FIFO or device put where the engine expects its own file cannot
/// block the open, checked with `fstat`, then switched back to blocking.
fn open_regular(path: &Path, access: Access, o: &mut OpenOptions) -> Result<File> {
    let f = o
        .custom_flags(direct_flag(access) | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| open_error(path, access, e))?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io("stat", Some(path.into()), e))?;
    if !meta.file_type().is_file() {
        return Err(Error::Format {
            path: path.into(),
            what: format!(
                "is not a regular file ({}); corewal only reads files it wrote",
                file_kind(&meta.file_type())
            ),
        });
    }
    set_blocking(&f, path)?;
    Ok(f)
}

/// Clears `O_NONBLOCK` on `f`.
fn set_blocking(f: &File, path: &Path) -> Result<()> {
    let fd = f.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor `f` owns; no memory passed.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0 {
        return Err(Error::io(
            "fcntl",
            Some(path.into()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A file type's name, for messages.
pub fn file_kind(t: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

fn open_error(path: &Path, access: Access, e: io::Error) -> Error {
    if access == Access::Direct && e.raw_os_error() == Some(libc::EINVAL) {
        Error::DirectIoUnsupported {
            path: path.into(),
            source: e.into(),
        }
    } else {
        Error::io("open", Some(path.into()), e)
    }
}

/// An exclusive `flock` on `DIR/LOCK`, held for the engine's life.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock, retrying for `wait` while another holder has it.
    pub fn acquire(dir: &Path, mode: u32, wait: Duration) -> Result<DirLock> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::io("open lock file", Some(path.clone()), e))?;
        Self::lock(file, dir, &path, libc::LOCK_EX, wait)
    }

    /// Takes a shared lock for a reader that must not run beside a writer
    /// (inspection, verification), without creating anything: `None` when
    /// the directory has no lock file (it never held an engine, or is a copy).
    pub fn acquire_shared(dir: &Path, wait: Duration) -> Result<Option<DirLock>> {
        let path = dir.join("LOCK");
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("open lock file", Some(path), e)),
        };
        Self::lock(file, dir, &path, libc::LOCK_SH, wait).map(Some)
    }

    fn lock(
        file: File,
        dir: &Path,
        path: &Path,
        op: libc::c_int,
        wait: Duration,
    ) -> Result<DirLock> {
        let started = Instant::now();
        loop {
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(DirLock { _file: file });
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {}
                Some(libc::EINTR) => continue,
                _ => return Err(Error::io("lock directory", Some(path.into()), e)),
            }
            // A SIGKILLed holder's lock can outlive it while the kernel tears
            // down its io_uring; retry for a bounded time.
            if started.elapsed() >= wait {
                return Err(Error::DirectoryLocked {
                    path: dir.into(),
                    waited_ms: started.elapsed().as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Renames `from` to `to`, failing if `to` exists (`RENAME_NOREPLACE`), so
/// that a file holding data is never replaced.
pub fn rename_no_replace(fs: &Fs, from: &Path, to: &Path) -> Result<()> {
    let operation = "rename segment";
    let fault = begin(fs, FsOp::Rename, operation, to)?;
    let (f, t) = (c_path(from)?, c_path(to)?);
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        end(fs, fault, operation, to)?;
        return Err(Error::io(operation, Some(to.into()), e));
    }
    #[cfg(feature = "testing")]
    if let Fs::Simulated(disk) = fs {
        disk.fs_renamed(from, to, None);
    }
    end(fs, fault, operation, to)
}

/// Removes `path`; `Ok(false)` when it was not there. The removal is
/// durable only once its directory is synced ([`sync_dir`]).
pub fn remove(fs: &Fs, path: &Path, operation: &'static str) -> Result<bool> {
    let fault = begin(fs, FsOp::Remove, operation, path)?;
    let removed = match fs {
        Fs::Real => fs::remove_file(path),
        #[cfg(feature = "testing")]
        Fs::Simulated(disk) => disk.fs_remove(path),
    };
    end(fs, fault, operation, path)?;
    match removed {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(operation, Some(path.into()), e)),
    }
}

/// Removes a leftover that never held data (a temporary file of an
/// interrupted creation), if it is there; a failure is left for the
/// creation that follows to report.
pub fn remove_leftover(fs: &Fs, path: &Path) {
    let _ = remove(fs, path, "remove");
}

/// Renames `from` to `to`, replacing `to` (only for files whose every
/// version is whole: a manifest, a meta file, a segment moved aside).
pub fn rename(fs: &Fs, from: &Path, to: &Path, operation: &'static str) -> Result<()> {
    let fault = begin(fs, FsOp::Rename, operation, to)?;
    let renamed = match fs {
        Fs::Real => fs::rename(from, to),
        // One change of names: taken back whole, the file it replaced too.
        #[cfg(feature = "testing")]
        Fs::Simulated(disk) => disk.fs_rename_over(from, to),
    };
    end(fs, fault, operation, to)?;
    renamed.map_err(|e| Error::io(operation, Some(to.into()), e))
}

/// Writes `bytes` as the whole new content of `path`, never seen half-made:
/// into `tmp` (created with `mode`), synced, renamed over `path`, and the
/// directory synced.
pub fn publish(fs: &Fs, tmp: &Path, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    remove_leftover(fs, tmp);
    let f = DiskFile::create_new(fs, tmp, Access::Buffered, mode)?;
    f.write_all_at(bytes, 0, "write")?;
    f.sync_all("sync")?;
    drop(f);
    rename(fs, tmp, path, "rename")?;
    sync_dir(fs, parent_dir(path))
}

/// The directory holding `path` (`.` for a bare name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Copies `from` to the new file `to` (mode 0600) and makes the copy
/// durable (its directory is left to the caller to sync).
pub fn copy_durably(fs: &Fs, from: &Path, to: &Path, operation: &'static str) -> Result<()> {
    const PIECE: usize = 1 << 20;
    let source = DiskFile::open_read(from, Access::Buffered)?;
    let copy = DiskFile::create_new(fs, to, Access::Buffered, 0o600)?;
    let size = source.len()?;
    let mut piece = vec![0u8; PIECE];
    let mut at = 0u64;
    while at < size {
        let n = (PIECE as u64).min(size - at) as usize;
        source.read_exact_at(&mut piece[..n], at)?;
        copy.write_all_at(&piece[..n], at, operation)?;
        at += n as u64;
    }
    copy.sync_all(operation)
}

/// The size of the file at `path`, or `None` if it cannot be looked at.
pub fn size_of(path: &Path) -> Option<u64> {
    fs::metadata(path).ok().map(|m| m.len())
}

/// Whether something is at `path`.
pub fn exists(path: &Path) -> bool {
    path.exists()
}

/// An entry of a directory listing.
#[derive(Debug)]
pub struct Listed {
    /// Its path.
    pub path: PathBuf,
    /// What it is.
    pub kind: fs::FileType,
}

/// Lists `dir`; `Ok(None)` when it does not exist.
pub fn list_dir(dir: &Path, operation: &'static str) -> Result<Option<Vec<Listed>>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(operation, Some(dir.into()), e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(operation, Some(dir.into()), e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| Error::io("stat", Some(path.clone()), e))?;
        out.push(Listed { path, kind });
    }
    Ok(Some(out))
}

/// Reads 8 random bytes from the kernel.
pub fn random_u64() -> Result<u64> {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        return Err(Error::io("getrandom", None, io::Error::last_os_error()));
    }
    Ok(u64::from_le_bytes(b))
}

/// A path as a C string, for system calls that take one.
pub fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Format {
        path: path.into(),
        what: "path holds a NUL byte".into(),
    })
}

/// Cuts the filesystem holding `path` off its device as a power cut would
/// (`FS_IOC_SHUTDOWN` with `FS_GOING_DOWN_NOLOGFLUSH`, supported by ext4 and
/// xfs): from this moment nothing reaches the device, and whatever was not
/// made durable is lost; every later operation on the filesystem fails until
/// it is unmounted and mounted again. Needs `CAP_SYS_ADMIN`. For the
/// power-cut tests; never used by the engine.
pub fn shutdown_filesystem(path: &Path) -> Result<()> {
    /// `_IOR('X', 125, __u32)`.
    const FS_IOC_SHUTDOWN: libc::c_ulong = 0x8004_587d;
    const FS_GOING_DOWN_NOLOGFLUSH: u32 = 2;
    let f = File::open(path).map_err(|e| Error::io("open for shutdown", Some(path.into()), e))?;
    let mut flags = FS_GOING_DOWN_NOLOGFLUSH;
    // SAFETY: the ioctl reads one u32 through the pointer, which outlives
    // the call; the descriptor is ours.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SHUTDOWN, &mut flags as *mut u32) };
    if rc != 0 {
        return Err(Error::io(
            "FS_IOC_SHUTDOWN",
            Some(path.into()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}
