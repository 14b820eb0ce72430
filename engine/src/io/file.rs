//! File-system calls: direct-I/O files, alignment, directory sync, locks.
//! Everything the engine does to a file outside the commit path goes through here.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;

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
pub fn create_dir(dir: &Path, mode: u32) -> Result<()> {
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
            Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent)?,
            _ => sync_dir(Path::new("."))?,
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
pub fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| Error::io("open directory", Some(dir.into()), e))?;
    f.sync_all()
        .map_err(|e| Error::io("fsync directory", Some(dir.into()), e))
}

fn direct_flag(access: Access) -> i32 {
    match access {
        Access::Direct => libc::O_DIRECT,
        Access::Buffered => 0,
    }
}

/// Opens an existing file for reading and writing.
pub fn open_rw(path: &Path, access: Access) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    open_regular(path, access, &mut o)
}

/// Opens an existing file read-only.
pub fn open_read(path: &Path, access: Access) -> Result<File> {
    let mut o = OpenOptions::new();
    o.read(true);
    open_regular(path, access, &mut o)
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

/// Creates a new file (failing if it exists) with `mode`.
pub fn create_new(path: &Path, access: Access, mode: u32) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(direct_flag(access) | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| open_error(path, access, e))
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

/// The direct-I/O offset alignment of `file` as the kernel reports it
/// (`statx` with `STATX_DIOALIGN`), or `None` when the kernel does not say.
pub fn dio_offset_align(file: &File) -> Option<usize> {
    // SAFETY: statx writes into the zeroed struct we own; the path is an empty
    // C string used with AT_EMPTY_PATH, so the call looks only at the fd.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = c"";
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
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

/// Writes all of `buf` at `position`.
pub fn write_all_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    position: u64,
    operation: &'static str,
) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], position + done as u64) {
            Ok(0) => {
                return Err(Error::io(
                    operation,
                    Some(path.into()),
                    io::ErrorKind::WriteZero.into(),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(operation, Some(path.into()), e)),
        }
    }
    Ok(())
}

/// Fills `file` with zeros from `from` to `to` (block-aligned) using `zeros`,
/// an all-zero aligned buffer, and makes them durable.
pub fn zero_fill(file: &File, path: &Path, zeros: &AlignedBuf, from: u64, to: u64) -> Result<()> {
    debug_assert!(zeros.iter().all(|&b| b == 0));
    let sync_data = || {
        file.sync_data()
            .map_err(|e| Error::io("fdatasync segment", Some(path.into()), e))
    };
    let mut at = from;
    while at < to {
        let n = (zeros.len() as u64).min(to - at) as usize;
        write_all_at(file, path, &zeros[..n], at, "zero-fill segment")?;
        at += n as u64;
    }
    sync_data()
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
pub fn rename_no_replace(from: &Path, to: &Path) -> Result<()> {
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
        return Err(Error::io(
            "rename segment",
            Some(to.into()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
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
