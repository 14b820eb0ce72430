//! Core selection and thread pinning.

use std::io;

use crate::error::{Error, Result};

/// The cores in the calling thread's affinity mask, ascending.
pub fn allowed_cores() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills the zeroed set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(Error::io(
            "sched_getaffinity",
            None,
            io::Error::last_os_error(),
        ));
    }
    let max = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads the set for cores below its capacity.
    Ok((0..max)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Pins the calling thread to `core`.
pub fn pin_current_thread(core: usize) -> Result<()> {
    // SAFETY: as above; CPU_SET writes bit `core`, which the caller checked is
    // below the set's capacity (it came from `allowed_cores`).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(core, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(Error::io(
            "sched_setaffinity",
            None,
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}
