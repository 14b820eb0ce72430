//! Core selection and thread pinning, for the shards and their preparers.

use crate::error::{Error, Result};
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The cores in the calling thread's affinity mask, ascending.
pub fn allowed_cores() -> Result<Vec<usize>> {
    let set =
        sched_getaffinity(Pid::from_raw(0)).map_err(|e| affinity_error("sched_getaffinity", e))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .collect())
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(core)
        .map_err(|e| affinity_error("sched_setaffinity", e))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| affinity_error("sched_setaffinity", e))
}

fn affinity_error(operation: &'static str, e: nix::Error) -> Error {
    Error::io(operation, None, std::io::Error::from(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calling_thread_can_be_pinned_to_each_allowed_core() {
        let cores = allowed_cores().unwrap();
        assert!(!cores.is_empty());
        std::thread::spawn(move || {
            for &c in &cores {
                pin_current_thread(c).unwrap();
                assert_eq!(allowed_cores().unwrap(), vec![c]);
            }
        })
        .join()
        .unwrap();
        // A core beyond the set's capacity is an error, not a panic.
        assert!(pin_current_thread(CpuSet::count()).is_err());
    }
}
