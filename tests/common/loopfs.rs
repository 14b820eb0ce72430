//! A loop device over an image file with a filesystem on it, for the tests
//! that need a real, small or breakable filesystem (power cuts, ENOSPC).
//! Root only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Whether this process may use loop devices and mount.
pub fn can_mount() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root for loop devices and mount".into());
    }
    for tool in ["losetup", "mount", "umount", "mkfs.ext4"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is not installed"));
        }
    }
    Ok(())
}

pub fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A loop device over an image file, with a filesystem mounted from it;
/// unmounted and detached on drop.
pub struct Mounted {
    pub device: String,
    pub mountpoint: PathBuf,
    mounted: bool,
}

impl Mounted {
    pub fn new(
        image: &Path,
        mountpoint: &Path,
        fs: &str,
        sector: u32,
        size: u64,
    ) -> Result<Mounted, String> {
        std::fs::File::create(image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        let device = run(
            "losetup",
            &[
                "--find",
                "--show",
                "--sector-size",
                &sector.to_string(),
                image.to_str().unwrap(),
            ],
        )?;
        let mut m = Mounted {
            device,
            mountpoint: mountpoint.to_path_buf(),
            mounted: false,
        };
        match fs {
            "xfs" => run("mkfs.xfs", &["-q", "-f", &m.device])?,
            _ => run("mkfs.ext4", &["-q", "-F", "-b", "4096", &m.device])?,
        };
        std::fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        m.mount()?;
        Ok(m)
    }

    pub fn mount(&mut self) -> Result<(), String> {
        run("mount", &[&self.device, self.mountpoint.to_str().unwrap()])?;
        self.mounted = true;
        Ok(())
    }

    /// Unmounts, retrying while a killed process's ring still holds files.
    pub fn unmount(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            match run("umount", &[self.mountpoint.to_str().unwrap()]) {
                Ok(_) => {
                    self.mounted = false;
                    return Ok(());
                }
                Err(e) if started.elapsed() > Duration::from_secs(20) => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.unmount();
        }
        let _ = run("losetup", &["--detach", &self.device]);
    }
}
