//! A full filesystem: a store on a small loop-mounted ext4 runs out of space
//! when a new segment cannot be created. The shard stops acknowledging at
//! once and says why (the cause is ENOSPC), nothing acknowledged before is
//! lost, and once space is freed a reopen recovers everything and writes
//! again. Root only (a loop device); without it the test prints SKIPPED.
//!
//! Running out of space stops the shard (fail-stop), like any failed write:
//! that it is not yet a retryable error is stated in docs/RELIABILITY.md.

mod common;

use common::loopfs::{can_mount, run, Mounted};
use common::{say, small_config, test_dir};
use corewal::{Backend, Engine, Error, Offset};

#[test]
fn running_out_of_space_stops_the_shard_and_loses_nothing_acknowledged() {
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
    let cause = loop {
        match ch.append(&record) {
            Ok(off) => {
                assert_eq!(off, Offset(acked));
                acked += 1;
                assert!(acked < 100_000, "the filesystem never filled");
            }
            Err(Error::ShardFailed { cause, .. }) => break cause,
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    assert_eq!(cause.raw_os_error(), Some(libc::ENOSPC), "{cause}");
    // Nothing is acknowledged after the failure.
    assert!(matches!(ch.append(&record), Err(Error::ShardFailed { .. })));
    drop(ch);
    let _ = engine.close();

    std::fs::remove_file(&filler).unwrap();
    let engine = Engine::open(config).unwrap();
    let ch = engine.register("c").unwrap();
    let records = ch.read(..).unwrap();
    assert!(
        records.len() as u64 >= acked,
        "{} of {acked}",
        records.len()
    );
    assert!(records.iter().all(|r| r.data[..] == record[..]));
    assert_eq!(ch.append(&record).unwrap(), Offset(records.len() as u64));
    engine.close().unwrap();
    say(&format!(
        "enospc: {acked} records acknowledged before the filesystem filled; all recovered after space was freed"
    ));
}
