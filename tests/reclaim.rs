//! Segment reclamation and recycling through the public API: a log that
//! checkpoints stays within its space limit, offsets and names outlive the
//! segments that held them, stragglers are relocated, and a WAL at its
//! limit refuses appends until checkpoints free space.

mod common;

use common::{payload, segments, small_config, test_dir, BACKENDS};
use corewal::{Backend, Config, Engine, Error, Offset};

/// One shard, 1 MiB segments and an 8 MiB limit: reclamation and recycling
/// happen every few hundred records. A 64 KiB payload budget: the records
/// relocated are long gone from memory and read back from the WAL.
fn tight(dir: &std::path::Path, backend: Backend) -> Config {
    let mut c = small_config(dir, 1, backend);
    c.wal_bytes_max = Some(8 << 20);
    c.buffer_bytes_max = 64 << 10;
    c
}

/// Bytes of the shard's segment files on disk.
fn wal_bytes_on_disk(dir: &std::path::Path) -> u64 {
    segments(dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

/// Appends `n` records of up to 8 KiB to each of `channels`, checkpointing
/// each channel every `every` records; returns each channel's next offset.
fn run(engine: &Engine, channels: &[&str], n: u64, every: u64) -> Vec<Offset> {
    let chans: Vec<_> = channels
        .iter()
        .map(|c| engine.register(c).unwrap())
        .collect();
    let mut next = vec![Offset(0); chans.len()];
    for i in 0..n {
        for (k, ch) in chans.iter().enumerate() {
            let off = ch.append(&payload(channels[k], i, 8 << 10)).unwrap();
            next[k] = Offset(off.0 + 1);
            if every > 0 && (off.0 + 1) % every == 0 {
                ch.checkpoint(off).unwrap();
            }
        }
    }
    next
}

#[test]
fn a_long_run_with_steady_checkpoints_stays_within_its_limit() {
    for backend in BACKENDS {
        let dir = test_dir();
        let config = tight(dir.path(), backend.clone());
        let names = ["a", "b", "c", "d"];
        let next;
        {
            let engine = Engine::open(config.clone()).unwrap();
            // About 64 MiB of records: eight times the limit.
            let mut largest = 0;
            next = (0..8)
                .map(|_| {
                    let n = run(&engine, &names, 500, 100);
                    largest = largest.max(wal_bytes_on_disk(dir.path()));
                    n
                })
                .last()
                .unwrap();
            assert!(
                largest <= 8 << 20,
                "{backend:?}: {largest} bytes of segments on disk"
            );
            let m = engine.metrics();
            assert!(m.segments_reclaimed >= 40, "{m:?}");
            assert!(m.segments_recycled >= 30, "{backend:?}: {m:?}");
            assert_eq!(m.records_relocated, 0, "no straggler: nothing relocated");
            assert!(m.wal_bytes <= 8 << 20);
            engine.close().unwrap();
        }
        let engine = Engine::open(config).unwrap();
        let m = engine.metrics();
        assert!(
            m.recovery_bytes_skipped >= 40 << 20,
            "the reopen skips what was reclaimed: {m:?}"
        );
        assert!(m.recovery_bytes_read <= 8 << 20, "{m:?}");
        for (k, name) in names.iter().enumerate() {
            let ch = engine.register(name).unwrap();
            // 8 runs × 500 records, checkpointed every 100 within a run's
            // own count: the offsets go on across runs.
            assert_eq!(ch.next_offset().unwrap(), next[k], "{name}");
            let first = ch.first_offset().unwrap();
            assert_eq!(first, Offset(next[k].0 / 100 * 100), "{name}");
            let held = ch.read(..).unwrap();
            assert_eq!(held.len() as u64, next[k].0 - first.0);
            for r in held {
                assert_eq!(&r.data[..], &payload(name, r.offset.0 % 500, 8 << 10)[..]);
            }
            assert_eq!(ch.append(b"after").unwrap(), next[k]);
        }
        engine.close().unwrap();
    }
}

#[test]
fn offsets_and_dropped_names_outlive_every_segment_that_held_them() {
    let dir = test_dir();
    let config = tight(dir.path(), Backend::IoUring);
    {
        let engine = Engine::open(config.clone()).unwrap();
        let quiet = engine.register("quiet").unwrap();
        for i in 0..10 {
            quiet.append(&payload("quiet", i, 100)).unwrap();
        }
        quiet.checkpoint(Offset(9)).unwrap();
        let gone = engine.register("gone").unwrap();
        for i in 0..5 {
            gone.append(&payload("gone", i, 100)).unwrap();
        }
        engine.unregister("gone").unwrap();
        let idle = engine.register("idle").unwrap();
        drop(idle);
        // Many segments' worth of another channel, checkpointed: the first
        // segments — and with them every entry of the three — are reclaimed.
        run(&engine, &["busy"], 3000, 50);
        assert!(engine.metrics().segments_reclaimed >= 10);
        assert!(
            !segments(dir.path())
                .iter()
                .any(|p| p.ends_with("0000000000000001.wal")),
            "the first segment was reclaimed (or recycled under another name)"
        );
        engine.close().unwrap();
    }
    let engine = Engine::open(config).unwrap();
    let quiet = engine.register("quiet").unwrap();
    assert_eq!(quiet.first_offset().unwrap(), Offset(10));
    assert_eq!(quiet.next_offset().unwrap(), Offset(10));
    assert_eq!(quiet.append(b"q").unwrap(), Offset(10), "never from 0");
    let idle = engine.register("idle").unwrap();
    assert_eq!(idle.next_offset().unwrap(), Offset(0));
    let again = engine.register("gone").unwrap();
    assert_eq!(
        again.append(b"g").unwrap(),
        Offset(5),
        "a dropped name goes on after its last offset"
    );
    engine.close().unwrap();
}

#[test]
fn a_straggler_is_relocated_instead_of_holding_the_log() {
    let dir = test_dir();
    let config = tight(dir.path(), Backend::IoUring);
    {
        let engine = Engine::open(config.clone()).unwrap();
        let slow = engine.register("slow").unwrap();
        slow.append(b"kept while everything else moves on").unwrap();
        // Sixteen times the limit of another channel that checkpoints: the
        // straggler's one record would pin the first segment for ever.
        run(&engine, &["fast"], 16_000, 100);
        let m = engine.metrics();
        assert!(m.records_relocated >= 1, "{m:?}");
        assert!(wal_bytes_on_disk(dir.path()) <= 8 << 20);
        let usage = engine.wal_usage().unwrap();
        assert_eq!(usage.len(), 1);
        assert!(usage[0].wal_bytes <= usage[0].wal_bytes_max);
        engine.close().unwrap();
    }
    let engine = Engine::open(config).unwrap();
    let slow = engine.register("slow").unwrap();
    let r = slow.read(..).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(&r[0].data[..], b"kept while everything else moves on");
    assert_eq!(slow.append(b"next").unwrap(), Offset(1));
    engine.close().unwrap();
}

#[test]
fn a_wal_at_its_limit_refuses_appends_until_checkpoints_free_space() {
    let dir = test_dir();
    let config = tight(dir.path(), Backend::IoUring);
    let engine = Engine::open(config).unwrap();
    let ch = engine.register("full").unwrap();
    let record = vec![7u8; 32 << 10];
    let mut last = None;
    let refused = loop {
        match ch.append(&record) {
            Ok(o) => last = Some(o),
            Err(e) => break e,
        }
        assert!(last.unwrap().0 < 10_000, "the limit was never reached");
    };
    assert!(refused.is_retryable(), "{refused}");
    let Error::NoSpace { cause, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert!(matches!(**cause, Error::WalFull { .. }), "{cause:?}");
    assert!(wal_bytes_on_disk(dir.path()) <= 8 << 20);
    // Reads go on; the holder is named.
    let last = last.unwrap();
    assert_eq!(ch.read(last..).unwrap().len(), 1);
    let usage = engine.wal_usage().unwrap();
    assert_eq!(usage[0].holders[0].channel, "full");
    assert!(usage[0].holders[0].wal_bytes_released >= 4 << 20);
    // A checkpoint needs no new segment, and frees the space.
    ch.checkpoint(last).unwrap();
    let started = std::time::Instant::now();
    let next = loop {
        match ch.append(&record) {
            Ok(o) => break o,
            Err(e) if e.is_retryable() => {
                assert!(started.elapsed().as_secs() < 10, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(
        next,
        Offset(last.0 + 1),
        "the refused appends took no offset"
    );
    // What is live again stays within the limit: 3 MiB of records.
    for _ in 0..100 {
        ch.append(&record).unwrap();
    }
    engine.close().unwrap();
}

#[test]
fn wal_usage_names_the_channels_that_hold_the_oldest_segments() {
    let dir = test_dir();
    let mut config = tight(dir.path(), Backend::IoUring);
    config.wal_bytes_max = Some(64 << 20);
    let engine = Engine::open(config).unwrap();
    let old = engine.register("old").unwrap();
    old.append(&[1u8; 1000]).unwrap();
    // Two segments' worth of a channel that lets its records go.
    run(&engine, &["passing"], 300, 300);
    let newer = engine.register("newer").unwrap();
    for i in 0..300 {
        newer.append(&payload("newer", i, 8 << 10)).unwrap();
    }
    let usage = &engine.wal_usage().unwrap()[0];
    let names: Vec<_> = usage.holders.iter().map(|h| h.channel.as_str()).collect();
    assert_eq!(names, ["old", "newer"], "{usage:?}");
    let (first, second) = (&usage.holders[0], &usage.holders[1]);
    assert_eq!((first.live_records, first.live_bytes), (1, 1000));
    assert!(first.oldest_segment <= second.oldest_segment);
    assert!(second.wal_bytes_released >= first.wal_bytes_released);
    assert!(usage.log_bytes >= 1 << 20 && usage.wal_bytes >= usage.log_bytes);
    old.checkpoint(Offset(0)).unwrap();
    // Once nothing holds it, the oldest segment goes.
    let started = std::time::Instant::now();
    while engine.wal_usage().unwrap()[0].log_start == usage.log_start {
        assert!(started.elapsed().as_secs() < 10, "never reclaimed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    engine.close().unwrap();
}

#[test]
fn a_large_straggler_is_relocated_a_piece_at_a_time() {
    // The straggler holds about 600 KB in the first segment: more than a
    // commit (256 KiB here) and more than a quarter segment, the most a
    // relocation moves at once. It is still worth moving (it frees that
    // segment and the empty ones after it), so it moves in pieces.
    let dir = test_dir();
    let config = tight(dir.path(), Backend::IoUring);
    {
        let engine = Engine::open(config.clone()).unwrap();
        let slow = engine.register("slow").unwrap();
        for i in 0..20u8 {
            slow.append(&[i; 30_000]).unwrap();
        }
        run(&engine, &["fast"], 6_000, 100);
        let m = engine.metrics();
        assert!(m.records_relocated >= 20, "{m:?}");
        assert!(m.wal_reads > 0, "relocated from the WAL: {m:?}");
        assert_eq!(m.relocation_reads_failed, 0, "{m:?}");
        assert!(wal_bytes_on_disk(dir.path()) <= 8 << 20);
        engine.close().unwrap();
    }
    let engine = Engine::open(config).unwrap();
    let slow = engine.register("slow").unwrap();
    let got = slow.read(..).unwrap();
    assert_eq!(got.len(), 20);
    for r in got {
        assert_eq!(&r.data[..], &[r.offset.0 as u8; 30_000][..]);
    }
    engine.close().unwrap();
}
