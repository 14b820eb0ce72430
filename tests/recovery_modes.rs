//! `RecoveryMode::KeepPrefix` and `RecoveryMode::SkipDamaged` on damaged
//! segments, and the damage report every mode gives (`recovery_damage`).
//! The corruption matrix runs the byte-level cases in every mode; these
//! tests cover what spans segments: the bytes moved aside, a missing
//! segment, a lost registration, and writing on after each.

mod common;

use std::path::Path;

use common::{segments, small_config, tail_segment, test_dir};
use corewal::{
    Backend, Config, DamageAction, DamageKind, Engine, Error, Offset, RecoveryMode, SegmentSeq,
    ShardId,
};

fn config(dir: &Path, mode: RecoveryMode) -> Config {
    let mut c = small_config(dir, 1, Backend::IoUring);
    c.recovery_mode = mode;
    // What each mode makes of a replay: no index snapshot stands in for it
    // (the other modes never use one; the default would, after a clean
    // close).
    c.index_snapshots = false;
    c
}

/// Writes `n` records of about 4 KiB to channel "c", one commit each; with
/// 1 MiB segments, 600 of them span several segments. The store is left as a
/// crash right after the last append would leave it (the shard's manifest
/// as it was after its first write), so that damage of its last commits can
/// be a torn tail: after a clean close the manifest records them as durable
/// and their loss is refused (`tests/recovery.rs`).
fn write_records(dir: &Path, n: u64) -> usize {
    let engine = Engine::open(config(dir, RecoveryMode::TolerateTornTail)).unwrap();
    let ch = engine.register("c").unwrap();
    let manifest = common::snapshot_manifest(dir, 0);
    for i in 0..n {
        let mut r = format!("record-{i}-").into_bytes();
        r.resize(if n > 100 { 3000 } else { 20 }, b'.');
        assert_eq!(ch.append(&r).unwrap(), Offset(i));
    }
    let block = engine.block_bytes();
    engine.close().unwrap();
    common::restore_manifest(dir, 0, &manifest);
    block
}

fn offsets(engine: &Engine, name: &str) -> Vec<u64> {
    let records = engine.register(name).unwrap().read(..).unwrap();
    for r in &records {
        let want = format!("record-{}-", r.offset.0);
        assert!(
            r.data.starts_with(want.as_bytes()),
            "record {} changed",
            r.offset.0
        );
    }
    records.iter().map(|r| r.offset.0).collect()
}

fn flip(path: &Path, at: usize) {
    let mut d = std::fs::read(path).unwrap();
    d[at] ^= 0x10;
    std::fs::write(path, d).unwrap();
}

#[test]
fn keep_prefix_keeps_what_precedes_the_damage_and_moves_the_rest_aside() {
    let dir = test_dir();
    let block = write_records(dir.path(), 600);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let first = common::commits(&segs[0], block);
    // Commit 0 registers the channel; commit k holds record k - 1.
    let k = first.len() / 2;
    flip(&segs[0], first[k].pos + 100);
    let later_bytes: u64 = segs[1..]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    assert!(matches!(
        Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)),
        Err(Error::Corruption { .. })
    ));
    let engine = Engine::open(config(dir.path(), RecoveryMode::KeepPrefix)).unwrap();
    assert_eq!(offsets(&engine, "c"), (0..k as u64 - 1).collect::<Vec<_>>());
    let damage = engine.recovery_damage();
    let [d] = &damage[..] else {
        panic!("{damage:?}")
    };
    assert_eq!(
        (d.shard, d.segment, d.position),
        (ShardId(0), SegmentSeq(1), first[k].pos as u64)
    );
    let DamageAction::PrefixKept { moved_to } = &d.action else {
        panic!("{d:?}")
    };
    // Nothing after the damage is destroyed: the damaged segment's copy
    // holds the flipped commit, the later segments are all there.
    let moved: Vec<_> = std::fs::read_dir(moved_to)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(moved.len(), segs.len(), "{moved:?}");
    let copy = std::fs::read(moved_to.join(segs[0].file_name().unwrap())).unwrap();
    let live = std::fs::read(&segs[0]).unwrap();
    let at = first[k].pos;
    assert!(
        live[at..].iter().all(|&b| b == 0),
        "live segment zeroed from the damage on"
    );
    assert_eq!(copy[..at], live[..at]);
    assert_ne!(
        copy[at..at + 64],
        [0u8; 64][..],
        "the copy keeps the damaged commit"
    );
    let moved_bytes: u64 = segs[1..]
        .iter()
        .map(|p| {
            std::fs::metadata(moved_to.join(p.file_name().unwrap()))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(moved_bytes, later_bytes);

    // Writing goes on after the prefix, and the result reopens in the
    // default mode without damage.
    let ch = engine.register("c").unwrap();
    assert_eq!(ch.append(b"record-after").unwrap(), Offset(k as u64 - 1));
    engine.close().unwrap();
    let engine = Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)).unwrap();
    assert_eq!(engine.recovery_damage(), []);
    let records = engine.register("c").unwrap().read(..).unwrap();
    assert_eq!(records.len(), k);
    assert_eq!(&records[k - 1].data[..], b"record-after");
}

#[test]
fn skip_damaged_passes_over_damaged_commits_and_a_missing_segment() {
    let dir = test_dir();
    let block = write_records(dir.path(), 600);
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let first = common::commits(&segs[0], block);
    // A zeroed commit in the first segment, a bit flip in the third, and the
    // second missing altogether.
    let zeroed = first[10];
    {
        let mut d = std::fs::read(&segs[0]).unwrap();
        d[zeroed.pos..zeroed.pos + zeroed.span].fill(0);
        std::fs::write(&segs[0], d).unwrap();
    }
    let in_second = common::commits(&segs[1], block).len() as u64;
    std::fs::remove_file(&segs[1]).unwrap();
    let third = common::commits(&segs[2], block);
    flip(&segs[2], third[3].pos + 200);

    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    let got = offsets(&engine, "c");
    // Records: 0..first.len()-1 live in segment 1 (less record 9, commit
    // 10); segment 2's follow; then segment 3's less its commit 3.
    let in_first = first.len() as u64 - 1;
    let lost_third = in_first + in_second + 3;
    let want: Vec<u64> = (0..600)
        .filter(|&o| o != 9)
        .filter(|&o| !(in_first..in_first + in_second).contains(&o))
        .filter(|&o| o != lost_third)
        .collect();
    assert_eq!(got, want);
    let damage = engine.recovery_damage();
    let lost: u64 = damage
        .iter()
        .map(|d| match d.action {
            DamageAction::Skipped { records_lost, .. } => records_lost,
            _ => panic!("{d:?}"),
        })
        .sum();
    assert_eq!(lost, 1 + in_second + 1, "{damage:#?}");
    assert_eq!(
        (damage[0].segment, damage[0].position),
        (SegmentSeq(1), zeroed.pos as u64)
    );
    assert!(
        damage
            .iter()
            .any(|d| matches!(d.kind, DamageKind::CommitOutOfSequence { .. })),
        "{damage:#?}"
    );

    // Offsets never repeat: the next append follows the last record.
    let ch = engine.register("c").unwrap();
    assert_eq!(ch.append(b"record-600-").unwrap(), Offset(600));
    engine.close().unwrap();
    // The damage stays on disk: the default mode still refuses it, and
    // another SkipDamaged open finds the same records plus the new one.
    assert!(matches!(
        Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)),
        Err(Error::Corruption { .. })
    ));
    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    let mut want = want;
    want.push(600);
    assert_eq!(offsets(&engine, "c"), want);
}

#[test]
fn skip_damaged_counts_the_records_of_a_channel_whose_registration_was_lost() {
    let dir = test_dir();
    let block = {
        let engine = Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)).unwrap();
        let c = engine.register("c").unwrap();
        c.append(b"record-0-").unwrap();
        let d = engine.register("d").unwrap(); // commit 2
        for i in 0..5 {
            d.append(format!("record-{i}-").as_bytes()).unwrap();
        }
        c.append(b"record-1-").unwrap();
        let block = engine.block_bytes();
        engine.close().unwrap();
        block
    };
    let (seg, places) = tail_segment(dir.path(), block);
    flip(&seg, places[2].pos + 70);
    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    assert_eq!(offsets(&engine, "c"), [0, 1]);
    let damage = engine.recovery_damage();
    assert!(
        matches!(
            &damage[..],
            [corewal::Damage {
                action: DamageAction::Skipped {
                    records_lost: 5,
                    ..
                },
                ..
            }]
        ),
        "{damage:#?}"
    );
    // The name is free again: a new channel, whose records reopen with it.
    let d = engine.register("d").unwrap();
    assert_eq!(d.read(..).unwrap().len(), 0);
    assert_eq!(d.append(b"record-0-").unwrap(), Offset(0));
    engine.close().unwrap();
    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    assert_eq!(offsets(&engine, "d"), [0]);
    assert_eq!(offsets(&engine, "c"), [0, 1]);
}

#[test]
fn every_mode_reports_a_torn_tail_it_cuts() {
    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::KeepPrefix,
        RecoveryMode::SkipDamaged,
    ] {
        let dir = test_dir();
        let block = write_records(dir.path(), 30);
        let (seg, places) = tail_segment(dir.path(), block);
        let last = places.last().unwrap();
        flip(&seg, last.pos + 80);
        let engine = Engine::open(config(dir.path(), mode)).unwrap();
        assert_eq!(
            offsets(&engine, "c"),
            (0..29).collect::<Vec<_>>(),
            "{mode:?}"
        );
        let damage = engine.recovery_damage();
        assert!(
            matches!(
                &damage[..],
                [corewal::Damage {
                    action: DamageAction::TornTailCut,
                    ..
                }]
            ),
            "{mode:?}: {damage:?}"
        );
        assert_eq!(damage[0].position, last.pos as u64);
        assert_eq!(engine.metrics().recovery_damage, 1);
    }
}

#[test]
fn skip_damaged_keeps_the_commits_in_flight_with_a_damaged_one_when_a_later_segment_follows() {
    // With two commits in flight, the one after a damaged commit is in its
    // window; when a later segment holds commits, both were acknowledged,
    // so only the damaged commit's record may be lost.
    let dir = test_dir();
    let mut c = config(dir.path(), RecoveryMode::TolerateTornTail);
    c.commits_in_flight_max = 2;
    let engine = Engine::open(c).unwrap();
    let ch = engine.register("c").unwrap();
    for i in 0..600u64 {
        let mut r = format!("record-{i}-").into_bytes();
        r.resize(3000, b'.');
        ch.append(&r).unwrap();
    }
    let block = engine.block_bytes();
    engine.close().unwrap();
    let segs = segments(dir.path());
    let first = common::commits(&segs[0], block);
    assert!(common::commits(&segs[1], block).len() > 1);
    // The second-to-last commit of the first segment: commit k holds
    // record k - 1 (commit 0 registers the channel).
    let k = first.len() - 2;
    flip(&segs[0], first[k].pos + 100);
    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    let lost = k as u64 - 1;
    let want: Vec<u64> = (0..600).filter(|&o| o != lost).collect();
    assert_eq!(offsets(&engine, "c"), want);
    let damage = engine.recovery_damage();
    assert_eq!(damage.len(), 1, "{damage:#?}");
    assert_eq!(
        damage[0].action,
        DamageAction::Skipped {
            resumed_at: Some((SegmentSeq(1), first[k + 1].pos as u64)),
            records_lost: 1
        }
    );
}

#[test]
fn a_torn_tail_cut_also_clears_a_later_segment_without_commits_and_writes_there() {
    // The last commit of a segment torn, and the next segment (the spare)
    // holding stray non-zero bytes but no commit: the cut zeroes both,
    // writing resumes in the spare, and the store reopens cleanly after.
    let dir = test_dir();
    let block = write_records(dir.path(), 600);
    let segs = segments(dir.path());
    let last_with_commits = segs
        .iter()
        .rposition(|p| !common::commits(p, block).is_empty())
        .unwrap();
    let torn_seg = &segs[last_with_commits];
    let places = common::commits(torn_seg, block);
    let last = places.last().unwrap();
    flip(torn_seg, last.pos + 100);
    // An empty segment after it, as the preparer makes them (any spare it
    // left is replaced), with junk in its fourth block.
    use corewal_engine::types::SegmentSeq;
    use corewal_engine::wal::format::{decode_segment_header, encode_segment_header};
    for p in &segs[last_with_commits + 1..] {
        std::fs::remove_file(p).unwrap();
    }
    let torn_bytes = std::fs::read(torn_seg).unwrap();
    let mut h = decode_segment_header(&torn_bytes).unwrap();
    h.segment_seq = SegmentSeq(h.segment_seq.0 + 1);
    let spare = torn_seg.with_file_name(format!("{:016x}.wal", h.segment_seq.0));
    let mut d = vec![0u8; h.segment_bytes as usize];
    encode_segment_header(&h, &mut d);
    d[3 * block + 17] = 0x5a;
    std::fs::write(&spare, d).unwrap();
    let engine = Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)).unwrap();
    let n = offsets(&engine, "c").len() as u64;
    assert_eq!(n, 599, "only the torn commit is cut");
    let ch = engine.register("c").unwrap();
    assert_eq!(ch.append(b"record-599-after").unwrap(), Offset(599));
    engine.close().unwrap();
    // Writing resumed in that segment, after the junk was zeroed.
    assert_eq!(common::commits(&spare, block).len(), 1);
    assert_eq!(std::fs::read(&spare).unwrap()[3 * block + 17], 0);
    let engine = Engine::open(config(dir.path(), RecoveryMode::FailOnAnyDamage)).unwrap();
    assert_eq!(offsets(&engine, "c").len(), 600);
    assert_eq!(engine.recovery_damage(), []);
}
