//! The calling thread's scheduling priority (no safe wrapper for
//! `setpriority` on a thread exists in `nix`).

/// Lowers the calling thread's priority to `nice` (higher is lower); a
/// failure only leaves the thread where it was.
pub fn lower_priority(nice: i32) {
    // SAFETY: gettid and setpriority take no pointers.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
    }
}
