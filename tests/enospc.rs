//! A full filesystem: a store on a small loop-mounted ext4 runs out of space
//! when a new segment cannot be created. The request that needed the segment
//! is refused with `Error::NoSpace` — retryable: it got no offset, the shard
//! goes on, nothing half-created is left holding space — and once space is
//! freed the same engine writes again at the next offset. Nothing
//! acknowledged is lost across a reopen. Root only (a loop device); without
//! it the test prints SKIPPED.

mod common;

use common::loopfs::{can_mount, run, Mounted};
use common::{say, small_config, test_dir};
use corewal::{Backend, Channel, Engine, Error, Offset};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A small ext4 mounted under `work` with all but `room` bytes taken by a
/// file (returned as its path); `None` (the test prints SKIPPED) without
/// the rights to mount.
fn nearly_full_filesystem(work: &Path, room: u64) -> Option<(Mounted, PathBuf)> {
    if let Err(why) = can_mount() {
        say(&format!("enospc: SKIPPED: {why}"));
        return None;
    }
    let m = Mounted::new(
        &work.join("image"),
        &work.join("mnt"),
        "ext4",
        4096,
        64 << 20,
    )
    .unwrap();
    let free = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
    let avail = free.blocks_available() * free.fragment_size();
    let filler = m.mountpoint.join("filler");
    run(
        "fallocate",
        &["-l", &(avail - room).to_string(), filler.to_str().unwrap()],
    )
    .unwrap();
    Some((m, filler))
}

/// Appends `record` until a request is refused: the number acknowledged
/// (at offsets 0, 1, …) and the refusal.
fn append_until_refused(ch: &Channel, record: &[u8]) -> (u64, Error) {
    let mut acked = 0u64;
    loop {
        match ch.append(record) {
            Ok(off) => {
                assert_eq!(off, Offset(acked));
                acked += 1;
                assert!(acked < 100_000, "the filesystem never filled");
            }
            Err(e) => return (acked, e),
        }
    }
}

/// Appends `record` once, retrying retryable refusals for up to 10 s.
fn append_once_space_returns(ch: &Channel, record: &[u8]) -> Offset {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ch.append(record) {
            Ok(off) => return off,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("after space was freed: {e}"),
        }
    }
}

#[test]
fn running_out_of_space_refuses_with_a_retryable_error_and_loses_nothing() {
    let work = test_dir();
    // Leave about 3 MiB: room for the first segments of 1 MiB, not for many.
    let Some((m, filler)) = nearly_full_filesystem(work.path(), 3 << 20) else {
        return;
    };
    let dir = m.mountpoint.join("store");
    let config = small_config(&dir, 1, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    let record = vec![0x42u8; 3000];
    let (acked, refused) = append_until_refused(&ch, &record);
    assert!(
        matches!(refused, Error::NoSpace { .. }) && refused.is_retryable(),
        "{refused}"
    );
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    // Refused again at once, the shard alive: what was acknowledged reads back.
    assert!(matches!(ch.append(&record), Err(Error::NoSpace { .. })));
    assert_eq!(ch.read(..).unwrap().len() as u64, acked);
    assert_eq!(ch.next_offset().unwrap(), Offset(acked));
    // The failed creation left no half-filled file behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("shard-000"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "creating"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Space freed: the same engine writes again, at the next offset.
    std::fs::remove_file(&filler).unwrap();
    let resumed = append_once_space_returns(&ch, &record);
    assert_eq!(resumed, Offset(acked), "a refused request used an offset");
    let mut total = acked + 1;
    for _ in 0..200 {
        assert_eq!(ch.append(&record).unwrap(), Offset(total));
        total += 1;
    }
    drop(ch);
    engine.close().unwrap();

    let engine = Engine::open(config).unwrap();
    let ch = engine.register("c").unwrap();
    let records = ch.read(..).unwrap();
    assert_eq!(records.len() as u64, total);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, Offset(i as u64));
        assert_eq!(r.data[..], record[..]);
    }
    assert_eq!(ch.append(&record).unwrap(), Offset(total));
    engine.close().unwrap();
    say(&format!(
        "enospc: {acked} records acknowledged before the filesystem filled, then refused with NoSpace \
         (retryable); {total} written after space was freed, all recovered"
    ));
}

/// A full filesystem freed by checkpoints alone: the appends refused for
/// lack of space succeed again once the records that filled it are
/// checkpointed — their segments are reclaimed and recycled, no new space
/// is needed — and a restart on the still-full disk succeeds.
#[test]
fn checkpoints_free_a_full_filesystem_without_a_restart() {
    let work = test_dir();
    // Room for about 8 segments of 1 MiB, never freed by the test.
    let Some((m, _filler)) = nearly_full_filesystem(work.path(), 8 << 20) else {
        return;
    };
    let dir = m.mountpoint.join("store");
    let config = small_config(&dir, 1, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    let record = vec![0x42u8; 3000];
    let (mut next, refused) = append_until_refused(&ch, &record);
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    // Checkpoint everything: it needs no new segment (the end of each
    // segment is kept for such requests), and it frees the old ones.
    ch.checkpoint(Offset(next - 1)).unwrap();
    let resumed = append_once_space_returns(&ch, &record);
    assert_eq!(resumed, Offset(next), "a refused request used an offset");
    next += 1;
    // Steady state on the full disk: write, checkpoint, write on.
    for round in 0..20 {
        for _ in 0..300 {
            assert_eq!(ch.append(&record).unwrap(), Offset(next), "round {round}");
            next += 1;
        }
        ch.checkpoint(Offset(next - 1)).unwrap();
    }
    let m = engine.metrics();
    assert!(m.segments_recycled >= 10, "{m:?}");
    drop(ch);
    engine.close().unwrap();
    // A restart on the full disk.
    let engine = Engine::open(config).unwrap();
    let ch = engine.register("c").unwrap();
    assert_eq!(ch.first_offset().unwrap(), Offset(next));
    assert_eq!(ch.append(&record).unwrap(), Offset(next));
    engine.close().unwrap();
    say(&format!(
        "enospc: a full filesystem freed by checkpoints: {next} records written on 8 MiB of \
         space, {} segments recycled, restart on the full disk",
        m.segments_recycled
    ));
}
