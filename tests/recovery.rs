//! Reopen after damage: a torn tail is cut, damage before the tail is
//! refused with the shard, segment and byte, and a cut tail stays cut.

mod common;

use std::path::Path;

use common::{segments, small_config, tail_segment, test_dir};
use corewal::{Backend, DamageKind, Engine, Error, Offset, RecoveryMode, ShardId};

/// Writes `n` records to one channel, one commit each, on a single shard,
/// and closes the engine cleanly.
fn write_records(dir: &Path, n: u64) -> usize {
    write_records_then(dir, n, false)
}

/// Like [`write_records`], but leaves the store as a crash right after the
/// last append would (the shard's manifest as it was after its first write),
/// so that damage of the last commits can be a torn tail.
fn write_records_as_if_crashed(dir: &Path, n: u64) -> usize {
    write_records_then(dir, n, true)
}

fn write_records_then(dir: &Path, n: u64, crashed: bool) -> usize {
    let engine = Engine::open(small_config(dir, 1, Backend::IoUring)).unwrap();
    let ch = engine.register("c").unwrap();
    let manifest = common::snapshot_manifest(dir, 0);
    for i in 0..n {
        assert_eq!(
            ch.append(format!("record-{i}").as_bytes()).unwrap(),
            Offset(i)
        );
    }
    let block = engine.block_bytes();
    engine.close().unwrap();
    if crashed {
        common::restore_manifest(dir, 0, &manifest);
    }
    block
}

/// Damages the commit at (position, length) of a segment's bytes.
type Damage = fn(&mut [u8], usize, usize);

fn modify(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut data = std::fs::read(path).unwrap();
    f(&mut data);
    std::fs::write(path, data).unwrap();
}

fn read_all(dir: &Path) -> (Engine, Vec<corewal::Record>) {
    let engine = Engine::open(small_config(dir, 1, Backend::IoUring)).unwrap();
    let records = engine.register("c").unwrap().read(..).unwrap();
    (engine, records)
}

#[test]
fn a_torn_last_commit_is_cut_and_writing_resumes_there() {
    // Each way a last commit can be torn: a flipped byte in its record, its
    // second half never written, its header never written.
    let tears: [(&str, Damage); 3] = [
        ("bit flip in the record", |d, pos, _| {
            d[pos + 64 + 30] ^= 0x01
        }),
        ("tail of the commit lost", |d, pos, len| {
            d[pos + 64 + 16..pos + len].fill(0)
        }),
        ("header lost", |d, pos, _| d[pos..pos + 512].fill(0)),
    ];
    for (what, tear) in tears {
        let dir = test_dir();
        let block = write_records_as_if_crashed(dir.path(), 50);
        let (seg, c) = tail_segment(dir.path(), block);
        let last = c.last().unwrap();
        let (pos, len) = (last.pos, last.span);
        modify(&seg, |d| tear(d, pos, len));
        let (engine, records) = read_all(dir.path());
        assert_eq!(records.len(), 49, "{what}: only the torn commit is cut");
        assert_eq!(&records[48].data[..], b"record-48");
        let ch = engine.register("c").unwrap();
        assert_eq!(ch.append(b"after").unwrap(), Offset(49), "{what}");
        engine.close().unwrap();
        let (_engine, records) = read_all(dir.path());
        assert_eq!(
            records.len(),
            50,
            "{what}: the cut is stable across reopens"
        );
        assert_eq!(&records[49].data[..], b"after");
    }
}

#[test]
fn fail_on_any_damage_refuses_a_torn_tail_and_cuts_nothing() {
    let dir = test_dir();
    let block = write_records_as_if_crashed(dir.path(), 20);
    let (seg, c) = tail_segment(dir.path(), block);
    let pos = c.last().unwrap().pos;
    modify(&seg, |d| d[pos + 64 + 30] ^= 0x01);
    let mut strict = small_config(dir.path(), 1, Backend::IoUring);
    strict.recovery_mode = RecoveryMode::FailOnAnyDamage;
    match Engine::open(strict.clone()) {
        Err(Error::Corruption {
            position,
            kind,
            remedy,
            ..
        }) => {
            assert_eq!(position, pos as u64);
            assert!(matches!(kind, DamageKind::TornTail(_)), "{kind:?}");
            assert_eq!(remedy, Some(RecoveryMode::TolerateTornTail));
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
    // Nothing was cut: the strict open fails again, the default one cuts.
    assert!(Engine::open(strict).is_err());
    let (_engine, records) = read_all(dir.path());
    assert_eq!(records.len(), 19);
}

#[test]
fn damage_before_the_tail_is_refused_with_its_place() {
    let cases: [(&str, Damage); 3] = [
        ("bit flip", |d, pos, _| d[pos + 64 + 30] ^= 0x80),
        ("zeroed block", |d, pos, len| d[pos..pos + len].fill(0)),
        ("block copied from another offset", |d, pos, len| {
            let other = d[pos + len..pos + 2 * len].to_vec();
            d[pos..pos + len].copy_from_slice(&other);
        }),
    ];
    for (what, damage) in cases {
        let dir = test_dir();
        let block = write_records(dir.path(), 50);
        let (seg, c) = tail_segment(dir.path(), block);
        let (pos, len) = (c[20].pos, c[20].span);
        assert_eq!(c[21].span, len, "neighbouring commits of the same size");
        modify(&seg, |d| damage(d, pos, len));
        // Replay's check: an open from the index snapshot finds such damage
        // when the record is read (tests/snapshot.rs).
        let mut config = small_config(dir.path(), 1, Backend::IoUring);
        config.index_snapshots = false;
        match Engine::open(config) {
            Err(Error::Corruption {
                shard, position, ..
            }) => {
                assert_eq!((shard, position), (ShardId(0), pos as u64), "{what}");
            }
            other => panic!("{what}: expected Corruption, got {other:?}"),
        }
    }
}

#[test]
fn a_missing_or_truncated_segment_is_damage() {
    let dir = test_dir();
    // 1 MiB segments and ~4 KiB per commit: 600 commits span several segments.
    write_records(dir.path(), 600);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::rename(&segs[1], dir.path().join("moved-away")).unwrap();
    assert!(matches!(
        Engine::open(small_config(dir.path(), 1, Backend::IoUring)),
        Err(Error::Corruption { .. })
    ));
    std::fs::rename(dir.path().join("moved-away"), &segs[1]).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap();
    f.set_len(200 << 10).unwrap();
    assert!(matches!(
        Engine::open(small_config(dir.path(), 1, Backend::IoUring)),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn a_segment_from_another_store_is_refused() {
    let a = test_dir();
    let b = test_dir();
    write_records(a.path(), 5);
    write_records(b.path(), 5);
    let seg_a = segments(a.path()).remove(0);
    let seg_b = segments(b.path()).remove(0);
    std::fs::copy(&seg_a, &seg_b).unwrap();
    match Engine::open(small_config(b.path(), 1, Backend::IoUring)) {
        Err(Error::Corruption { kind, .. }) => {
            assert_eq!(kind, DamageKind::SegmentForeign, "{kind}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn start_returns_before_recovery_and_requests_wait_for_their_shard() {
    let dir = test_dir();
    write_records(dir.path(), 300);
    let engine = Engine::start(small_config(dir.path(), 1, Backend::IoUring)).unwrap();
    let ch = engine.register("c").unwrap();
    assert_eq!(
        ch.append(b"new").unwrap(),
        Offset(300),
        "no offset collides with a recovered one"
    );
    engine.wait_ready().unwrap();
    assert_eq!(ch.read(..).unwrap().len(), 301);
}

#[test]
fn replay_reads_many_chunks_per_segment_with_reads_in_flight() {
    // 8 MiB segments are read as 8 chunks with several reads in flight;
    // ~24 MiB of records spread over several segments and both backends.
    for backend in [Backend::IoUring, Backend::Portable] {
        let dir = test_dir();
        let mut config = small_config(dir.path(), 2, backend.clone());
        config.segment_bytes = 8 << 20;
        config.index_snapshots = false;
        let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
        {
            let engine = Engine::open(config.clone()).unwrap();
            let channels: Vec<_> = names.iter().map(|n| engine.register(n).unwrap()).collect();
            for round in 0..48u64 {
                for (k, ch) in channels.iter().enumerate() {
                    let batch: Vec<Vec<u8>> = (0..8)
                        .map(|j| vec![(round * 8 + j) as u8 ^ k as u8; 8000])
                        .collect();
                    ch.append_batch(&batch).unwrap();
                }
            }
            engine.close().unwrap();
        }
        let engine = Engine::open(config).unwrap();
        assert!(engine.metrics().recovery_bytes_read > 24 << 20);
        for (k, n) in names.iter().enumerate() {
            let r = engine.register(n).unwrap().read(..).unwrap();
            assert_eq!(r.len(), 48 * 8, "{backend:?} {n}");
            for (i, rec) in r.iter().enumerate() {
                assert_eq!(rec.data[0], i as u8 ^ k as u8, "{backend:?} {n}@{i}");
                assert_eq!(rec.data.len(), 8000);
            }
        }
    }
}

#[test]
fn a_missing_shard_directory_is_a_format_error_naming_it() {
    let dir = test_dir();
    write_records(dir.path(), 5);
    std::fs::remove_dir_all(dir.path().join("shard-000")).unwrap();
    match Engine::open(small_config(dir.path(), 1, Backend::IoUring)) {
        Err(Error::Format { path, what }) => {
            assert!(path.ends_with("shard-000"), "{path:?}");
            assert!(what.contains("missing"), "{what}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
}

#[test]
fn an_open_that_fails_cuts_nothing_and_the_next_open_reports_the_torn_tail() {
    // Shard 1 has a torn tail, shard 0 damage before its tail: the open
    // fails on shard 0. Shard 1 recovered meanwhile, but nothing of its torn
    // tail may be cut before it writes: once shard 0 is repaired, the next
    // open must find and report the torn tail itself.
    let dir = test_dir();
    let mut config = small_config(dir.path(), 2, Backend::IoUring);
    // Damage before shard 0's tail is found by replay.
    config.index_snapshots = false;
    let engine = Engine::open(config.clone()).unwrap();
    let block = engine.block_bytes();
    let names: Vec<String> = (0..64).map(|i| format!("ch-{i}")).collect();
    let on = |shard: u16| {
        names
            .iter()
            .find(|n| engine.register(n).unwrap().shard().0 == shard)
            .unwrap()
            .clone()
    };
    let (a, b) = (on(0), on(1));
    // Shard 1 is left as a crash after its last append would leave it, so
    // that its damaged last commit is a torn tail.
    let manifest1 = common::snapshot_manifest(dir.path(), 1);
    for i in 0..20u64 {
        for name in [&a, &b] {
            let ch = engine.register(name).unwrap();
            assert_eq!(
                ch.append(format!("{name}-{i}").as_bytes()).unwrap(),
                Offset(i)
            );
        }
    }
    engine.close().unwrap();
    common::restore_manifest(dir.path(), 1, &manifest1);
    let seg = |shard: &str| dir.path().join(shard).join("0000000000000001.wal");
    let (seg0, seg1) = (seg("shard-000"), seg("shard-001"));
    let c1 = common::commits(&seg1, block);
    let last = *c1.last().unwrap();
    modify(&seg1, |d| {
        d[last.pos + 64 + 16..last.pos + last.used].fill(0)
    });
    let torn = std::fs::read(&seg1).unwrap();
    let original0 = std::fs::read(&seg0).unwrap();
    let first0 = common::commits(&seg0, block)[0];
    modify(&seg0, |d| d[first0.pos + 64 + 30] ^= 0x01);

    assert!(matches!(
        Engine::open(config.clone()),
        Err(Error::Corruption { .. })
    ));
    assert_eq!(
        std::fs::read(&seg1).unwrap(),
        torn,
        "the failed open changed shard 1's segment"
    );

    std::fs::write(&seg0, &original0).unwrap();
    let engine = Engine::open(config).unwrap();
    let damage = engine.recovery_damage();
    assert!(
        matches!(
            &damage[..],
            [corewal::Damage {
                shard: ShardId(1),
                action: corewal::DamageAction::TornTailCut,
                ..
            }]
        ),
        "{damage:?}"
    );
    assert_eq!(engine.register(&a).unwrap().read(..).unwrap().len(), 20);
    let ch = engine.register(&b).unwrap();
    assert_eq!(ch.read(..).unwrap().len(), 19, "the torn commit is cut");
    // Writing resumes at the cut, over zeros.
    assert_eq!(ch.append(b"after").unwrap(), Offset(19));
    engine.close().unwrap();
    let engine = Engine::open(small_config(dir.path(), 2, Backend::IoUring)).unwrap();
    assert!(engine.recovery_damage().is_empty());
    let got = engine.register(&b).unwrap().read(..).unwrap();
    assert_eq!(got.len(), 20);
    assert_eq!(&got[19].data[..], b"after");
}

/// The recovery modes that refuse damage other than a torn tail, and those
/// that go past it and report it.
const STRICT: [RecoveryMode; 2] = [
    RecoveryMode::TolerateTornTail,
    RecoveryMode::FailOnAnyDamage,
];
const LENIENT: [RecoveryMode; 2] = [RecoveryMode::KeepPrefix, RecoveryMode::SkipDamaged];

/// Opens `dir` in `mode` and checks that a loss of acknowledged commits at
/// the end of the log is refused (strict modes) or reported (lenient ones),
/// never taken for the end of the log. Returns the records left in a
/// lenient mode.
fn lost_end_is_refused_or_reported(dir: &Path, mode: RecoveryMode, written: u64, what: &str) {
    let mut config = small_config(dir, 1, Backend::IoUring);
    config.recovery_mode = mode;
    match (STRICT.contains(&mode), Engine::open(config)) {
        (
            true,
            Err(Error::Corruption {
                shard: ShardId(0), ..
            }),
        ) => {}
        (true, Ok(engine)) => {
            let n = engine.register("c").unwrap().read(..).unwrap().len();
            panic!(
                "{what}, {mode:?}: opened with {n} of {written} acknowledged records and no error"
            );
        }
        (true, Err(e)) => panic!("{what}, {mode:?}: expected Corruption, got {e}"),
        (false, Ok(engine)) => {
            let damage = engine.recovery_damage();
            assert!(
                !damage.is_empty(),
                "{what}, {mode:?}: the loss was not reported"
            );
            let n = engine.register("c").unwrap().read(..).unwrap().len() as u64;
            assert!(n < written, "{what}, {mode:?}: {n} records");
        }
        (false, Err(e)) => panic!("{what}, {mode:?}: expected an open that reports, got {e}"),
    }
}

#[test]
fn a_lost_newest_segment_is_never_taken_for_the_end_of_the_log() {
    // Three segments of commits; the newest one (and the spare after it,
    // if one was made) removed.
    for mode in STRICT.into_iter().chain(LENIENT) {
        let dir = test_dir();
        let block = write_records(dir.path(), 600);
        let (newest, _) = tail_segment(dir.path(), block);
        let mut removed = 0;
        for seg in segments(dir.path()) {
            if seg >= newest {
                std::fs::remove_file(&seg).unwrap();
                removed += 1;
            }
        }
        assert!(removed >= 1 && !segments(dir.path()).is_empty());
        lost_end_is_refused_or_reported(dir.path(), mode, 600, "newest segment removed");
    }
}

#[test]
fn an_older_copy_of_the_newest_segment_is_refused() {
    for mode in STRICT.into_iter().chain(LENIENT) {
        let dir = test_dir();
        let block = write_records(dir.path(), 100);
        let (seg, _) = tail_segment(dir.path(), block);
        let older = std::fs::read(&seg).unwrap();
        {
            let engine = Engine::open(small_config(dir.path(), 1, Backend::IoUring)).unwrap();
            let ch = engine.register("c").unwrap();
            for i in 100..200 {
                assert_eq!(ch.append(b"more").unwrap(), Offset(i));
            }
            engine.close().unwrap();
        }
        assert_eq!(
            tail_segment(dir.path(), block).0,
            seg,
            "still the same segment"
        );
        std::fs::write(&seg, &older).unwrap();
        lost_end_is_refused_or_reported(dir.path(), mode, 200, "older copy of the newest segment");
    }
}

#[test]
fn a_zeroed_last_commit_after_a_clean_close_is_refused() {
    for mode in STRICT.into_iter().chain(LENIENT) {
        let dir = test_dir();
        let block = write_records(dir.path(), 50);
        let (seg, c) = tail_segment(dir.path(), block);
        let last = *c.last().unwrap();
        modify(&seg, |d| d[last.pos..last.pos + last.span].fill(0));
        lost_end_is_refused_or_reported(dir.path(), mode, 50, "last commit zeroed");
    }
}

#[test]
fn a_zeroed_manifest_beside_commits_is_damage_not_a_new_shard() {
    // An all-zero manifest is what a power cut leaves between the file's
    // creation and its first generation, when no commit can exist yet.
    // Beside commits it was zeroed at rest: what it recorded about the end
    // of the log is lost, and the open refuses as for a damaged manifest.
    let dir = test_dir();
    write_records(dir.path(), 5);
    let manifest = dir.path().join("shard-000").join("manifest");
    std::fs::write(&manifest, vec![0u8; 8192]).unwrap();
    match Engine::open(small_config(dir.path(), 1, Backend::IoUring)) {
        Err(Error::Corruption { kind, remedy, .. }) => {
            assert!(matches!(kind, DamageKind::ManifestDamaged(_)), "{kind:?}");
            assert_eq!(remedy, Some(RecoveryMode::KeepPrefix));
        }
        other => panic!("expected Corruption, got {other:?}"),
    }
}

/// A store of 1,000 commits of about 4 KiB in one 16 MiB segment (written
/// below a bound raised 2 MiB at a time), copied while its engine runs: what
/// a crash leaves. With the manifest taken after the first `older` records
/// put back, when given: a crash whose last manifest generations were lost.
const RECORDS: u64 = 1_000;

fn crash_image(older: Option<u64>) -> (tempfile::TempDir, corewal::Config) {
    let (dir, crashed) = (test_dir(), test_dir());
    let config = |d: &Path| {
        let mut c = small_config(d, 1, Backend::IoUring);
        c.segment_bytes = 16 << 20;
        c.index_snapshots = false;
        c
    };
    let engine = Engine::open(config(dir.path())).unwrap();
    let ch = engine.register("c").unwrap();
    let mut manifest = None;
    for i in 0..RECORDS {
        if Some(i) == older {
            manifest = common::snapshot_manifest(dir.path(), 0);
        }
        ch.append(&vec![i as u8; 4000]).unwrap();
    }
    common::copy_dir(dir.path(), crashed.path());
    engine.close().unwrap();
    common::restore_manifest(crashed.path(), 0, &manifest);
    let _ = std::fs::remove_file(crashed.path().join("LOCK"));
    let c = config(crashed.path());
    (crashed, c)
}

#[test]
fn a_crash_reopen_reads_only_where_the_manifest_lets_commits_lie() {
    let (dir, config) = crash_image(None);
    let engine = Engine::open(config).unwrap();
    let records = engine.register("c").unwrap().read(..).unwrap();
    assert_eq!(records.len(), RECORDS as usize);
    assert!(records
        .iter()
        .all(|r| r.data == vec![r.offset.0 as u8; 4000]));
    // About 4 MiB of commits; the rest of the 16 MiB segment and the spare
    // made ahead are zeros the shard never wrote into: read up to the bound
    // (at most 2 MiB past a commit) and 64 KiB, in 1 MiB reads, and the
    // spare's first megabyte.
    let read = engine.metrics().recovery_bytes_read;
    assert!(read <= 8 << 20, "read {read} bytes");
    assert!(dir.path().join("shard-000/0000000000000001.wal").exists());
}

#[test]
fn a_crash_reopen_whose_manifest_lost_its_last_generations_scans_the_segment_whole() {
    // The manifest put back is from after 10 records: its bound is about
    // 2 MiB, which the chain itself runs past.
    let (_dir, config) = crash_image(Some(10));
    let engine = Engine::open(config).unwrap();
    let records = engine.register("c").unwrap().read(..).unwrap();
    assert_eq!(records.len(), RECORDS as usize);
    let read = engine.metrics().recovery_bytes_read;
    assert!(read >= 16 << 20, "the segment read whole: {read} bytes");
}

#[test]
fn damage_before_the_last_commits_of_a_crash_image_is_still_refused() {
    // A commit in the middle zeroed: the commits after it, below the
    // bound, are found, so it is damage, not a torn tail.
    let (dir, config) = crash_image(None);
    let seg = dir.path().join("shard-000/0000000000000001.wal");
    let commits = common::commits(&seg, 4096);
    assert_eq!(commits.len(), 1_001, "the registration and the appends");
    let c = commits[200];
    modify(&seg, |d| d[c.pos..c.pos + c.used].fill(0));
    match Engine::open(config) {
        Err(Error::Corruption { .. }) => {}
        other => panic!("expected Corruption, got {other:?}"),
    }
}
