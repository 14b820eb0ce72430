//! A real writer process killed with SIGKILL at a random moment; every
//! acknowledgement it reported must survive the reopen, byte for byte, at
//! the same offset. The writer and the checks are in `common/writer.rs`.

mod common;

use std::time::{Duration, Instant};

use common::writer::{read_reports, spawn_writer, verify, Model};
use common::{test_dir, Rng};
use corewal::Backend;

#[test]
#[ignore = "helper: the writer process of the SIGKILL tests"]
fn child_writer() {
    common::writer::child_writer_main();
}

fn run_cycle(
    dir: &std::path::Path,
    backend: Backend,
    seed: u64,
    model: &mut Model,
    reclaim: bool,
) -> usize {
    let mut rng = Rng(seed);
    let mut writer = spawn_writer(dir, backend, seed, reclaim);
    // Let the child run 0–150 ms more, then kill it.
    let kill_at = Instant::now() + Duration::from_millis(rng.below(150));
    let killer = std::thread::spawn({
        let pid = writer.child.id() as i32;
        move || {
            std::thread::sleep(kill_at.saturating_duration_since(Instant::now()));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
    });
    // A process crash loses nothing acknowledged: every report must survive.
    let acks = read_reports(&mut writer, model, None, || false);
    killer.join().unwrap();
    writer.child.wait().unwrap();
    acks
}

#[test]
fn sigkill_during_load_loses_no_acknowledged_append() {
    let seed = common::seed();
    let cycles = common::cycles("COREWAL_SIGKILL_CYCLES", 300);
    // A fresh store every 50 cycles: each reopen replays the whole WAL, so
    // one store across hundreds of cycles would spend the time replaying.
    let mut dir = test_dir();
    let mut model = Model::default();
    let (mut total_acks, mut checked, mut changes) = (0, 0, 0);
    for c in 0..cycles {
        if c > 0 && c % 50 == 0 {
            checked += model.acked.values().map(|m| m.len()).sum::<usize>()
                + model.owned.values().map(|o| o.acked.len()).sum::<usize>();
            changes += model.changes;
            dir = test_dir();
            model = Model::default();
        }
        let backend = if c % 3 == 2 {
            Backend::Portable
        } else {
            Backend::IoUring
        };
        total_acks += run_cycle(
            dir.path(),
            backend.clone(),
            seed.wrapping_add(c),
            &mut model,
            false,
        );
        verify(dir.path(), backend, &mut model);
    }
    checked += model.acked.values().map(|m| m.len()).sum::<usize>()
        + model.owned.values().map(|o| o.acked.len()).sum::<usize>();
    changes += model.changes;
    common::say(&format!(
        "sigkill: {cycles} cycles, {total_acks} acknowledgements reported, {checked} distinct acknowledged records checked after every cycle of their store, {changes} checkpoints and truncations held (lost: 0)"
    ));
    assert!(total_acks > 0, "the child never acknowledged anything");
}

#[test]
fn sigkill_during_reclamation_loses_nothing_and_brings_nothing_back() {
    // The writer checkpoints its two channels through their last record
    // one time in eight, with records of up to 30 KB and the smallest space
    // limit: each cycle reclaims and recycles segments, relocates, carries
    // state forward — and is killed at any point of it. After every reopen:
    // each channel's first offset is that of a checkpoint that returned (or
    // one begun), every acknowledged record above it is there, nothing
    // checkpointed or truncated is back, and the offsets go on.
    let seed = common::seed();
    let cycles = common::cycles("COREWAL_SIGKILL_RECLAIM_CYCLES", 100);
    let mut dir = test_dir();
    let mut model = Model::reclaiming();
    let (mut acks, mut changes, mut reclaimed) = (0, 0, 0u64);
    for c in 0..cycles {
        if c > 0 && c % 50 == 0 {
            changes += model.changes;
            reclaimed += first_segment(dir.path()) - 1;
            dir = test_dir();
            model = Model::reclaiming();
        }
        let backend = if c % 3 == 2 {
            Backend::Portable
        } else {
            Backend::IoUring
        };
        let rng_seed = seed.wrapping_add(c);
        run_cycle(dir.path(), backend.clone(), rng_seed, &mut model, true);
        acks += model.owned.values().map(|o| o.acked.len()).sum::<usize>();
        verify(dir.path(), backend, &mut model);
    }
    changes += model.changes;
    reclaimed += first_segment(dir.path()) - 1;
    common::say(&format!(
        "sigkill during reclamation: {cycles} cycles, {changes} checkpoints and truncations held, \
         {reclaimed} segments reclaimed (counted by the first segment left on disk per store), \
         lost: 0"
    ));
    assert!(
        acks > 0 && reclaimed > 0,
        "{acks} records, {reclaimed} segments reclaimed"
    );
}

/// The lowest segment number left in shard 0 of the store in `dir`: the
/// segments before it were reclaimed (and removed or recycled).
fn first_segment(dir: &std::path::Path) -> u64 {
    common::segments(dir)
        .first()
        .and_then(|p| p.file_stem()?.to_str().map(|s| u64::from_str_radix(s, 16)))
        .and_then(|n| n.ok())
        .unwrap_or(1)
}
