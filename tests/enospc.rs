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
use corewal::{Backend, Engine, Error, Offset};

#[test]
fn running_out_of_space_refuses_with_a_retryable_error_and_loses_nothing() {
    if let Err(why) = can_mount() {
        say(&format!("enospc: SKIPPED: {why}"));
        return;
    }
    let work = test_dir();
    let m = Mounted::new(
        &work.path().join("image"),
        &work.path().join("mnt"),
        "ext4",
        4096,
        64 << 20,
    )
    .unwrap();
    let dir = m.mountpoint.join("store");
    // Leave about 3 MiB: room for the first segments of 1 MiB, not for many.
    let free = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
    let avail = free.blocks_available() * free.fragment_size();
    let filler = m.mountpoint.join("filler");
    run(
        "fallocate",
        &[
            "-l",
            &(avail - (3 << 20)).to_string(),
            filler.to_str().unwrap(),
        ],
    )
    .unwrap();

    let config = small_config(&dir, 1, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    let record = vec![0x42u8; 3000];
    let mut acked = 0u64;
    let refused = loop {
        match ch.append(&record) {
            Ok(off) => {
                assert_eq!(off, Offset(acked));
                acked += 1;
                assert!(acked < 100_000, "the filesystem never filled");
            }
            Err(e) => break e,
        }
    };
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let resumed = loop {
        match ch.append(&record) {
            Ok(off) => break off,
            Err(Error::NoSpace { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("after space was freed: {e}"),
        }
    };
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
    if let Err(why) = can_mount() {
        say(&format!("enospc: SKIPPED: {why}"));
        return;
    }
    let work = test_dir();
    let m = Mounted::new(
        &work.path().join("image"),
        &work.path().join("mnt"),
        "ext4",
        4096,
        64 << 20,
    )
    .unwrap();
    let dir = m.mountpoint.join("store");
    // Room for about 8 segments of 1 MiB, never freed by the test.
    let free = nix::sys::statvfs::statvfs(&m.mountpoint).unwrap();
    let avail = free.blocks_available() * free.fragment_size();
    let filler = m.mountpoint.join("filler");
    run(
        "fallocate",
        &[
            "-l",
            &(avail - (8 << 20)).to_string(),
            filler.to_str().unwrap(),
        ],
    )
    .unwrap();
    let config = small_config(&dir, 1, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    let record = vec![0x42u8; 3000];
    let mut next = 0u64;
    let refused = loop {
        match ch.append(&record) {
            Ok(off) => {
                assert_eq!(off, Offset(next));
                next += 1;
                assert!(next < 100_000, "the filesystem never filled");
            }
            Err(e) => break e,
        }
    };
    assert_eq!(refused.raw_os_error(), Some(libc::ENOSPC), "{refused}");
    // Checkpoint everything: it needs no new segment (the end of each
    // segment is kept for such requests), and it frees the old ones.
    ch.checkpoint(Offset(next - 1)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let resumed = loop {
        match ch.append(&record) {
            Ok(off) => break off,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("after the checkpoint: {e}"),
        }
    };
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
