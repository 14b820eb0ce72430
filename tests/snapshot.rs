//! Index snapshots: a clean close writes one per shard and the next open
//! uses it instead of replaying; a running shard writes them as its WAL
//! grows and a crash reopen replays only what followed the last; a stale
//! one is a start for replaying what followed it. Whichever way, the state
//! an open gives is the state a full replay of the same store gives. A
//! damaged or foreign snapshot is ignored (the log is replayed) and
//! counted. (tests/recovery.rs runs with snapshots too: a zeroed, older or
//! foreign end of the log is refused, not hidden by a snapshot.)

mod common;

use std::path::Path;

use common::writer::{read_reports, spawn_writer, Model};
use common::{copy_dir, payload, small_config, test_dir, BACKENDS};
use corewal::{Backend, Config, Engine, Offset};

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];

fn config(dir: &Path, backend: Backend) -> Config {
    let mut c = small_config(dir, 2, backend);
    c.wal_bytes_max = Some(8 << 20);
    c.buffer_bytes_max = 64 << 10;
    c
}

/// Appends, checkpoints, a truncation, a drop and a re-registration, with
/// enough records that segments are reclaimed.
fn workload(engine: &Engine, round: u64) {
    for (k, name) in NAMES.iter().enumerate() {
        let ch = engine.register(name).unwrap();
        for i in 0..300 {
            let off = ch
                .append(&payload(name, round * 1000 + i, 6 << 10))
                .unwrap();
            // All but one channel checkpoint: the log is reclaimed as it
            // grows, and one channel's records pin its oldest segments.
            if k != 3 && i % 50 == 49 {
                ch.checkpoint(Offset(off.0 - 10)).unwrap();
            }
        }
        if k == 1 {
            let next = ch.next_offset().unwrap();
            ch.truncate_from(Offset(next.0 - 7)).unwrap();
        }
    }
    engine.unregister("f").unwrap();
    if round > 0 {
        engine.register("f").unwrap().append(b"again").unwrap();
    }
}

/// A name's first and next offsets and its records, read whole.
type ChannelView = (String, u64, u64, Vec<(u64, Vec<u8>)>);

/// Every name's offsets and records, read whole.
fn state(engine: &Engine) -> Vec<ChannelView> {
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    state_of(engine, &names)
}

/// The offsets and records of `names`, read whole.
fn state_of(engine: &Engine, names: &[String]) -> Vec<ChannelView> {
    names
        .iter()
        .map(|n| {
            let ch = engine.register(n).unwrap();
            let recs = ch
                .read(..)
                .unwrap()
                .into_iter()
                .map(|r| (r.offset.0, r.data.to_vec()))
                .collect();
            (
                n.to_string(),
                ch.first_offset().unwrap().0,
                ch.next_offset().unwrap().0,
                recs,
            )
        })
        .collect()
}

fn snapshots(dir: &Path) -> Vec<std::path::PathBuf> {
    (0..2)
        .map(|s| dir.join(format!("shard-{s:03}")).join("snapshot"))
        .filter(|p| p.exists())
        .collect()
}

#[test]
fn a_clean_reopen_from_snapshots_equals_a_full_replay() {
    for backend in BACKENDS {
        let dir = test_dir();
        let replayed = test_dir();
        {
            let engine = Engine::open(config(dir.path(), backend.clone())).unwrap();
            workload(&engine, 0);
            assert!(engine.metrics().segments_reclaimed > 0);
            engine.close().unwrap();
        }
        assert_eq!(snapshots(dir.path()).len(), 2, "{backend:?}: one per shard");
        copy_dir(dir.path(), replayed.path());
        for p in snapshots(replayed.path()) {
            std::fs::remove_file(p).unwrap();
        }
        let a = Engine::open(config(dir.path(), backend.clone())).unwrap();
        let b = Engine::open(config(replayed.path(), backend.clone())).unwrap();
        let (ma, mb) = (a.metrics(), b.metrics());
        assert_eq!(a.wal_usage().unwrap(), b.wal_usage().unwrap());
        assert_eq!(
            (ma.snapshots_used, ma.recovery_bytes_read),
            (2, 0),
            "{ma:?}"
        );
        assert_eq!(mb.snapshots_used, 0);
        assert!(mb.recovery_bytes_read > 0);
        assert_eq!(state(&a), state(&b), "{backend:?}");
        // Both go on the same way, reclaiming included.
        workload(&a, 1);
        workload(&b, 1);
        assert_eq!(state(&a), state(&b), "{backend:?}");
        a.close().unwrap();
        b.close().unwrap();
        let a = Engine::open(config(dir.path(), backend.clone())).unwrap();
        let b = Engine::open(config(replayed.path(), backend)).unwrap();
        assert_eq!(state(&a), state(&b));
        a.close().unwrap();
        b.close().unwrap();
    }
}

#[test]
#[ignore = "helper: the writer process of the crash reopen test"]
fn child_writer() {
    common::writer::child_writer_main();
}

/// The same store opened from its snapshots and by a full replay (a copy
/// without them): the same state, and the former read less of the log.
fn equals_a_full_replay(dir: &Path, config: impl Fn(&Path) -> Config, names: &[String]) {
    let replayed = test_dir();
    copy_dir(dir, replayed.path());
    for p in snapshots(replayed.path()) {
        std::fs::remove_file(p).unwrap();
    }
    let a = Engine::open(config(dir)).unwrap();
    let b = Engine::open(config(replayed.path())).unwrap();
    let (ma, mb) = (a.metrics(), b.metrics());
    assert!(ma.snapshots_used > 0, "{ma:?}");
    assert_eq!((mb.snapshots_used, mb.snapshots_ignored), (0, 0));
    // (A log of a segment or two per shard is read whole either way: the
    // replay after a snapshot reads a segment's first megabyte, the
    // tied commit's and what follows, and its zero tail.)
    let fewer = mb.recovery_bytes_read > 4 * (4 << 20);
    assert!(
        ma.recovery_bytes_read < mb.recovery_bytes_read || !fewer,
        "from snapshots {} bytes read, full replay {}",
        ma.recovery_bytes_read,
        mb.recovery_bytes_read
    );
    assert_eq!(a.wal_usage().unwrap(), b.wal_usage().unwrap());
    assert_eq!(state_of(&a, names), state_of(&b, names));
    a.close().unwrap();
    b.close().unwrap();
}

/// A writer process SIGKILLed after running snapshots were written (every
/// 128 KiB of WAL): the reopen starts from the last and replays what
/// followed, and gives what a full replay gives — both backends, a writer
/// of many channels and one that checkpoints, truncates and reclaims.
#[test]
fn a_crash_reopen_from_running_snapshots_equals_a_full_replay() {
    for (backend, reclaim) in [
        (Backend::IoUring, false),
        (Backend::Portable, false),
        (Backend::IoUring, true),
    ] {
        let dir = test_dir();
        let mut writer = spawn_writer(dir.path(), backend.clone(), 7, reclaim);
        let mut model = if reclaim {
            Model::reclaiming()
        } else {
            Model::default()
        };
        let killer = std::thread::spawn({
            let pid = writer.child.id() as i32;
            move || {
                std::thread::sleep(std::time::Duration::from_millis(1500));
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
            }
        });
        let acks = read_reports(&mut writer, &mut model, None, || false);
        killer.join().unwrap();
        writer.child.wait().unwrap();
        assert!(acks > 100, "{backend:?}: {acks} acknowledgements");
        assert!(!snapshots(dir.path()).is_empty(), "no running snapshot");
        let mut names: Vec<String> = model.registered.iter().cloned().collect();
        names.extend(model.owned.keys().cloned());
        names.sort();
        names.dedup();
        equals_a_full_replay(dir.path(), |d| small_config(d, 2, backend.clone()), &names);
    }
}

/// A snapshot put back after a later session wrote (stale) is a start for
/// replaying what that session wrote; one with a flipped byte (damaged)
/// and one from another store (foreign) are ignored: the log is replayed.
/// Nothing written since is missed.
#[test]
fn stale_damaged_and_foreign_snapshots_are_ignored() {
    let dir = test_dir();
    let c = config(dir.path(), Backend::IoUring);
    let engine = Engine::open(c.clone()).unwrap();
    workload(&engine, 0);
    engine.close().unwrap();
    let old: Vec<Vec<u8>> = snapshots(dir.path())
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    // Stale: a later session wrote; its snapshot is replaced by the old.
    let engine = Engine::open(c.clone()).unwrap();
    for n in NAMES {
        engine.register(n).unwrap().append(b"later").unwrap();
    }
    engine.close().unwrap();
    for (s, bytes) in old.iter().enumerate() {
        let p = dir.path().join(format!("shard-{s:03}/snapshot"));
        std::fs::write(p, bytes).unwrap();
    }
    let names: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    equals_a_full_replay(dir.path(), |d| config(d, Backend::IoUring), &names);
    let engine = Engine::open(c.clone()).unwrap();
    let last = engine.register("a").unwrap().read(..).unwrap();
    assert_eq!(&last.last().unwrap().data[..], b"later");
    let want = state(&engine);
    engine.close().unwrap();
    // Damaged: every snapshot of this close with one byte flipped.
    for p in snapshots(dir.path()) {
        let mut b = std::fs::read(&p).unwrap();
        let at = b.len() / 2;
        b[at] ^= 0x10;
        std::fs::write(&p, b).unwrap();
    }
    let engine = Engine::open(c.clone()).unwrap();
    assert_eq!(engine.metrics().snapshots_ignored, 2);
    assert_eq!(state(&engine), want);
    engine.close().unwrap();
    // Foreign: another store's snapshots.
    let other = test_dir();
    let e = Engine::open(config(other.path(), Backend::IoUring)).unwrap();
    workload(&e, 0);
    e.close().unwrap();
    for (s, p) in snapshots(other.path()).iter().enumerate() {
        std::fs::copy(p, dir.path().join(format!("shard-{s:03}/snapshot"))).unwrap();
    }
    let engine = Engine::open(c).unwrap();
    assert_eq!(engine.metrics().snapshots_ignored, 2);
    assert_eq!(state(&engine), want);
    engine.close().unwrap();
}

/// After a clean close the open reads no log, so damage at rest in it is
/// found when the damaged record is read: the read fails with
/// `Corruption`, never returns other bytes, and the others read on.
#[test]
fn damage_after_a_clean_close_is_found_by_the_read_that_meets_it() {
    let dir = test_dir();
    let mut c = config(dir.path(), Backend::IoUring);
    c.shards = Some(1);
    let engine = Engine::open(c.clone()).unwrap();
    let ch = engine.register("a").unwrap();
    for i in 0..20u64 {
        ch.append(&vec![i as u8 + 1; 3000]).unwrap();
    }
    engine.close().unwrap();
    // Flip a byte inside the payload of record 10 (each record its own
    // commit: header 64 + entry header 24, one 4 KiB block each).
    let seg = common::segments(dir.path())[0].clone();
    let mut bytes = std::fs::read(&seg).unwrap();
    let at = 4096 * (1 + 1 + 10) + 64 + 24 + 100;
    assert_eq!(bytes[at], 11, "the payload of record 10");
    bytes[at] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let engine = Engine::open(c).unwrap();
    assert_eq!(engine.metrics().snapshots_used, 1);
    let ch = engine.register("a").unwrap();
    assert!(matches!(
        ch.read(..),
        Err(corewal::Error::Corruption { .. })
    ));
    assert!(matches!(
        ch.read(Offset(10)..Offset(11)),
        Err(corewal::Error::Corruption { .. })
    ));
    assert_eq!(ch.read(Offset(11)..).unwrap().len(), 9);
    assert_eq!(ch.read(..Offset(10)).unwrap().len(), 10);
    engine.close().unwrap();
}
