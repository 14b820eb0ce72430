//! The data directory a tool run writes to.

use std::path::{Path, PathBuf};

/// The directory given on the command line, or a fresh one under /var/tmp
/// (local disk by convention; /tmp may be a tmpfs), removed when this drops
/// unless kept.
pub struct DataDir {
    pub path: PathBuf,
    temp: Option<tempfile::TempDir>,
}

impl DataDir {
    pub fn new(given: Option<&Path>, prefix: &str, keep: bool) -> std::io::Result<DataDir> {
        if let Some(d) = given {
            return Ok(DataDir {
                path: d.to_path_buf(),
                temp: None,
            });
        }
        let t = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/var/tmp")?;
        let path = t.path().to_path_buf();
        // With --keep the temporary directory is released from removal.
        let temp = if keep {
            let _ = t.keep();
            None
        } else {
            Some(t)
        };
        Ok(DataDir { path, temp })
    }

    /// Whether the directory is removed when the run ends.
    pub fn is_removed(&self) -> bool {
        self.temp.is_some()
    }
}
