//! A corruption matrix over a generated WAL. Every case must end in the
//! documented outcome of `RecoveryMode::TolerateTornTail`: a torn tail is
//! cut back to the last whole commit (and the records before it are intact),
//! anything else is refused as damage — zero false accepts, zero panics.
//! The middle-commit flips also run in `KeepPrefix` (the records before the
//! damaged commit, nothing after) and `SkipDamaged` (every record but the
//! damaged commit's, at their own offsets).
//!
//! Cases: the written region zeroed from every 16th byte of the last two
//! commits on (a write torn there); every bit of the last commit's headers
//! and every 29th bit of its record flipped (torn); every 7th bit of a middle
//! commit flipped (damage); a block copied from another offset; a segment
//! replaced by an older copy of itself. The same torn writes and flips again
//! in a *recycled* segment, whose bytes after its chain of commits are its
//! earlier life's commits — of the same channel: none is ever read as a
//! record, and a commit whose identity bytes did not land reads as the end
//! of the log (after a crash; after a clean close it is refused).
//!
//! The store is left as a crash right after its last append would leave it
//! (its shard manifest as it was after the first write), so that its last
//! commits may be a torn tail. After a clean close the manifest records the
//! last commit as durable: the same damage of the last commits is then a
//! loss of acknowledged data, refused (`tests/recovery.rs` and the cases
//! marked "after a clean close" below).

mod common;

use std::path::{Path, PathBuf};

use common::{small_config, tail_segment, test_dir};
use corewal::{Backend, Engine, Error, RecoveryMode};

const RECORDS: u64 = 40;

/// A damage case: its name, the outcome it must have, and the damage.
type Case = (String, RecoveryMode, Expect, Box<dyn Fn(&mut Vec<u8>)>);

/// A generated store: its directory, its tail segment, the (position, used
/// bytes) of the commits in it, and every record's bytes.
type Built = (
    tempfile::TempDir,
    PathBuf,
    Vec<(usize, usize)>,
    Vec<Vec<u8>>,
    Manifests,
);

/// The shard manifest of the store as a crash after the last append would
/// leave it, and as the clean close left it.
#[derive(Clone)]
struct Manifests {
    crashed: Option<Vec<u8>>,
    closed: Option<Vec<u8>>,
}

/// Which end of the store's life a case damages.
#[derive(Clone, Copy)]
enum Ending {
    Crashed,
    Closed,
}

/// A store with `RECORDS` records of varied size in one channel, one commit
/// each. Returns the directory, the tail segment, the commits in it and
/// every record's bytes.
fn build() -> Built {
    let dir = test_dir();
    let engine = Engine::open(small_config(dir.path(), 1, Backend::IoUring)).unwrap();
    append_matrix_records(dir, engine)
}

/// Appends the `RECORDS` records of the matrix to channel "m" of `engine`,
/// one commit each, and closes it: the store of [`build`] from there on.
fn append_matrix_records(dir: tempfile::TempDir, engine: Engine) -> Built {
    let ch = engine.register("m").unwrap();
    let crashed = common::snapshot_manifest(dir.path(), 0);
    let mut records = Vec::new();
    for i in 0..RECORDS {
        let r: Vec<u8> = (0..(100 + i * 97 % 3000)).map(|k| (k ^ i) as u8).collect();
        ch.append(&r).unwrap();
        records.push(r);
    }
    drop(ch);
    let block = engine.block_bytes();
    engine.close().unwrap();
    let closed = common::snapshot_manifest(dir.path(), 0);
    let (seg, places) = tail_segment(dir.path(), block);
    let commits = places.iter().map(|c| (c.pos, c.used)).collect();
    (dir, seg, commits, records, Manifests { crashed, closed })
}

enum Expect {
    /// Recovery cuts a torn tail (or keeps a prefix): this many records
    /// survive, byte for byte.
    Torn(u64),
    /// Recovery finds no damage: this many records, byte for byte.
    Clean(u64),
    /// Recovery skips the record at this offset; every other one survives.
    Without(u64),
    /// Recovery refuses to open.
    Damage,
}

/// Removes the index snapshot a clean close left, so that the open
/// replays the log: these cases are about what replay accepts (a clean
/// reopen from a snapshot reads no log; `tests/snapshot.rs` covers damage
/// found by reads then).
fn without_snapshot(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("shard-000").join("snapshot"));
}

fn check(dir: &Path, mode: RecoveryMode, expect: Expect, records: &[Vec<u8>], case: &str) {
    without_snapshot(dir);
    let mut config = small_config(dir, 1, Backend::IoUring);
    config.recovery_mode = mode;
    let result = Engine::open(config);
    match (&expect, result) {
        (Expect::Torn(n) | Expect::Clean(n), Ok(engine)) => {
            let damaged = usize::from(matches!(expect, Expect::Torn(_)));
            let got = engine.register("m").unwrap().read(..).unwrap();
            assert_eq!(got.len() as u64, *n, "{case}: records after the cut");
            for (k, r) in got.iter().enumerate() {
                assert_eq!(r.offset.0, k as u64, "{case}: record {k} moved");
                assert_eq!(&r.data[..], &records[k][..], "{case}: record {k} changed");
            }
            assert_eq!(
                engine.recovery_damage().len(),
                damaged,
                "{case}: damage reported"
            );
        }
        (Expect::Without(skipped), Ok(engine)) => {
            let got = engine.register("m").unwrap().read(..).unwrap();
            let offsets: Vec<u64> = got.iter().map(|r| r.offset.0).collect();
            let want: Vec<u64> = (0..records.len() as u64).filter(|o| o != skipped).collect();
            assert_eq!(offsets, want, "{case}: offsets after the skip");
            for r in &got {
                assert_eq!(
                    &r.data[..],
                    &records[r.offset.0 as usize][..],
                    "{case}: record changed"
                );
            }
            let damage = engine.recovery_damage();
            assert!(
                matches!(
                    &damage[..],
                    [corewal::Damage {
                        action: corewal::DamageAction::Skipped {
                            resumed_at: Some(_),
                            records_lost: 1
                        },
                        ..
                    }]
                ),
                "{case}: {damage:?}"
            );
        }
        (Expect::Damage, Err(Error::Corruption { .. })) => {}
        (Expect::Torn(n) | Expect::Clean(n), Err(e)) => {
            panic!("{case}: expected a cut to {n} records, got {e}")
        }
        (Expect::Without(k), Err(e)) => panic!("{case}: expected record {k} skipped, got {e}"),
        (Expect::Damage, Ok(engine)) => {
            let n = engine.register("m").unwrap().read(..).unwrap().len();
            panic!("{case}: damage accepted ({n} records)")
        }
        (Expect::Damage, Err(e)) => panic!("{case}: expected Corruption, got {e}"),
    }
}

/// Runs every case on a fresh copy of the store as a crash left it.
fn each_case(cases: impl IntoIterator<Item = Case>) -> usize {
    each_case_after(Ending::Crashed, cases)
}

/// Runs every case on a fresh copy of the store, ended as `ending` says.
fn each_case_after(ending: Ending, cases: impl IntoIterator<Item = Case>) -> usize {
    each_case_of(build(), ending, cases)
}

/// Runs every case on a fresh copy of the store `built`.
fn each_case_of(built: Built, ending: Ending, cases: impl IntoIterator<Item = Case>) -> usize {
    let (dir, seg, _, records, manifests) = built;
    let original = std::fs::read(&seg).unwrap();
    let manifest = match ending {
        Ending::Crashed => manifests.crashed,
        Ending::Closed => manifests.closed,
    };
    let mut n = 0;
    for (case, mode, expect, damage) in cases {
        let mut d = original.clone();
        damage(&mut d);
        std::fs::write(&seg, &d).unwrap();
        common::restore_manifest(dir.path(), 0, &manifest);
        check(dir.path(), mode, expect, &records, &case);
        // Recovery may have zeroed a torn region, and a close rewrites the
        // manifest: start the next case clean.
        std::fs::write(&seg, &original).unwrap();
        n += 1;
    }
    n
}

#[test]
fn torn_writes_at_every_16th_byte_of_the_last_two_commits_are_cut() {
    let (_, _, c, _, _) = build();
    let (last, prev) = (c[c.len() - 1], c[c.len() - 2]);
    let mut cases: Vec<Case> = Vec::new();
    for (which, (pos, used), survivors) in
        [("last", last, RECORDS - 1), ("previous", prev, RECORDS - 2)]
    {
        for b in (pos..pos + used).step_by(16) {
            let end = last.0 + last.1;
            cases.push((
                format!("{which} commit written up to byte {b}"),
                RecoveryMode::TolerateTornTail,
                // Zeros from a commit's first byte on: a log that ends
                // earlier, with nothing torn.
                if b == pos {
                    Expect::Clean(survivors)
                } else {
                    Expect::Torn(survivors)
                },
                Box::new(move |d: &mut Vec<u8>| d[b..end].fill(0)),
            ));
        }
    }
    let n = each_case(cases);
    common::say(&format!(
        "corruption matrix: {n} torn-write cases, all cut to the valid prefix"
    ));
    assert!(n > 100, "{n} cases");
}

#[test]
fn bit_flips_of_the_last_commit_are_cut_never_accepted() {
    // Every bit of the header and of the first entry's header, then every
    // 29th bit of the rest (every bit of a commit is checked by the decoder's
    // own unit test; here each case is a whole reopen).
    let (_, _, c, _, _) = build();
    let (pos, used) = c[c.len() - 1];
    let bits = (0..(64 + 24) * 8).chain(((64 + 24) * 8..used * 8).step_by(29));
    let cases = bits.map(move |bit| {
        let at = pos + bit / 8;
        (
            format!("bit {bit} of the last commit"),
            RecoveryMode::TolerateTornTail,
            Expect::Torn(RECORDS - 1),
            Box::new(move |d: &mut Vec<u8>| d[at] ^= 1 << (bit % 8)) as Box<dyn Fn(&mut Vec<u8>)>,
        )
    });
    let n = each_case(cases);
    common::say(&format!(
        "corruption matrix: {n} last-commit bit flips, all cut"
    ));
    assert!(n >= 512, "{n} cases");
}

#[test]
fn bit_flips_in_a_middle_commit_are_refused_kept_before_or_skipped() {
    let (_, _, c, _, _) = build();
    let middle = c.len() / 2;
    let (pos, used) = c[middle];
    // Commit 0 registers the channel; commit k holds record k - 1.
    let record = middle as u64 - 1;
    let modes = [
        (RecoveryMode::TolerateTornTail, 7),
        (RecoveryMode::KeepPrefix, 31),
        (RecoveryMode::SkipDamaged, 31),
    ];
    let cases = modes.into_iter().flat_map(move |(mode, step)| {
        (0..used * 8).step_by(step).map(move |bit| {
            let at = pos + bit / 8;
            let expect = match mode {
                RecoveryMode::KeepPrefix => Expect::Torn(record),
                RecoveryMode::SkipDamaged => Expect::Without(record),
                _ => Expect::Damage,
            };
            (
                format!("bit {bit} of a middle commit, {mode:?}"),
                mode,
                expect,
                Box::new(move |d: &mut Vec<u8>| d[at] ^= 1 << (bit % 8))
                    as Box<dyn Fn(&mut Vec<u8>)>,
            )
        })
    });
    let n = each_case(cases);
    common::say(&format!(
        "corruption matrix: {n} middle-commit bit flips, each refused, kept before or skipped by its mode"
    ));
    assert!(n >= 100, "{n} cases");
}

#[test]
fn a_block_from_another_offset_or_an_older_segment_is_refused() {
    let (_, _, c, _, _) = build();
    let (a, b) = (c[3], c[10]);
    let mut cases: Vec<Case> = vec![(
        "commit 10's first block copied over commit 3's".into(),
        RecoveryMode::TolerateTornTail,
        Expect::Damage,
        Box::new(move |d: &mut Vec<u8>| {
            let src = d[b.0..b.0 + 4096].to_vec();
            d[a.0..a.0 + 4096].copy_from_slice(&src);
        }),
    )];
    // An older copy of the segment after a crash: the last commits are
    // missing but every commit in it is whole, and none of them was written
    // before the shard last recorded what is durable — indistinguishable
    // from a store that stopped earlier, and recovered as such (the residual
    // window of docs/format.md).
    let older_len = c[20].0;
    cases.push((
        "segment replaced by its state after 20 commits".into(),
        RecoveryMode::TolerateTornTail,
        // Commit 0 registers the channel; commits 1..20 hold records 0..19.
        Expect::Clean(19),
        Box::new(move |d: &mut Vec<u8>| d[older_len..].fill(0)),
    ));
    each_case(cases);
    // After a clean close the manifest knows every commit was durable: the
    // older copy is a loss, refused.
    let older: Vec<Case> = vec![(
        "segment replaced by its state after 20 commits, after a clean close".into(),
        RecoveryMode::TolerateTornTail,
        Expect::Damage,
        Box::new(move |d: &mut Vec<u8>| d[older_len..].fill(0)),
    )];
    each_case_after(Ending::Closed, older);
}

#[test]
fn damage_of_the_last_commits_after_a_clean_close_is_refused() {
    // The torn-write and bit-flip cases of the last commit, on the store as
    // its clean close left it: acknowledged and recorded durable, so never
    // cut as a torn tail.
    let (_, _, c, _, _) = build();
    let (pos, used) = c[c.len() - 1];
    let end = pos + used;
    let torn = (pos..end).step_by(64).map(move |b| {
        (
            format!("last commit written up to byte {b}, after a clean close"),
            RecoveryMode::TolerateTornTail,
            Expect::Damage,
            Box::new(move |d: &mut Vec<u8>| d[b..end].fill(0)) as Box<dyn Fn(&mut Vec<u8>)>,
        )
    });
    let flips = (0..used * 8).step_by(37).map(move |bit| {
        let at = pos + bit / 8;
        (
            format!("bit {bit} of the last commit, after a clean close"),
            RecoveryMode::TolerateTornTail,
            Expect::Damage,
            Box::new(move |d: &mut Vec<u8>| d[at] ^= 1 << (bit % 8)) as Box<dyn Fn(&mut Vec<u8>)>,
        )
    });
    let n = each_case_after(Ending::Closed, torn.chain(flips));
    common::say(&format!(
        "corruption matrix: {n} damages of the last commit after a clean close, all refused"
    ));
    assert!(n > 50, "{n} cases");
}

#[test]
fn truncation_at_every_byte_of_the_last_two_commits_is_refused() {
    // Segments are created at their full size, zero-filled, before any
    // commit goes in: a crash never shortens one. A segment file cut short
    // (a copy that stopped, a tool, a filesystem fault) is damage at every
    // byte, whole commits or not.
    let (_, _, c, _, _) = build();
    let (last, prev) = (c[c.len() - 1], c[c.len() - 2]);
    let cases = (prev.0..last.0 + last.1 + 1).map(|at| {
        (
            format!("segment truncated to {at} bytes"),
            RecoveryMode::TolerateTornTail,
            Expect::Damage,
            Box::new(move |d: &mut Vec<u8>| d.truncate(at)) as Box<dyn Fn(&mut Vec<u8>)>,
        )
    });
    let started = std::time::Instant::now();
    let n = each_case(cases);
    common::say(&format!(
        "corruption matrix: {n} truncations, every byte of the last two commits, all refused ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));
    assert!(n > 1000, "{n} cases");
}

/// The store of [`build`], written into a *recycled* segment: the channel
/// first fills segments and checkpoints them (with the smallest space
/// limit, so that they are reclaimed and recycled), and its last `RECORDS`
/// records — one commit each, at offsets `base..` — start the first
/// recycled segment. That segment's earlier life holds the same channel's
/// older commits after them. Returns the store and `base`.
fn build_recycled() -> (Built, u64) {
    let dir = test_dir();
    let mut config = small_config(dir.path(), 1, Backend::IoUring);
    config.wal_bytes_max = Some(4 << 20);
    let engine = Engine::open(config).unwrap();
    let ch = engine.register("m").unwrap();
    let active = || engine.wal_usage().unwrap()[0].active_segment;
    let recycled = |seq: corewal::SegmentSeq| {
        let path = dir.path().join(format!("shard-000/{:016x}.wal", seq.0));
        let head = std::fs::read(path).unwrap();
        corewal_engine::wal::format::decode_segment_header(&head)
            .unwrap()
            .recycled_from
            .is_some()
    };
    let filler = vec![0x5Au8; 30_000];
    let base = loop {
        let before = active();
        let off = ch.append(&filler).unwrap();
        ch.checkpoint(off).unwrap();
        let now = active();
        // Rolled into a recycled segment: it holds only this append's
        // commit and the checkpoint's so far.
        if now != before && recycled(now) {
            break off.0 + 1;
        }
        assert!(off.0 < 2000, "no segment was recycled");
    };
    drop(ch);
    (append_matrix_records(dir, engine), base)
}

/// Checks a recycled store's channel: `n` records from `base`, byte for
/// byte, and (`damaged`) whether recovery reported damage.
fn check_recycled(dir: &Path, base: u64, n: u64, records: &[Vec<u8>], damaged: bool, case: &str) {
    without_snapshot(dir);
    let engine = Engine::open(small_config(dir, 1, Backend::IoUring))
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let got = engine.register("m").unwrap().read(..).unwrap();
    assert_eq!(got.len() as u64, n, "{case}: records");
    for (k, r) in got.iter().enumerate() {
        assert_eq!(r.offset.0, base + k as u64, "{case}: record {k} moved");
        assert_eq!(&r.data[..], &records[k][..], "{case}: record {k} changed");
    }
    assert_eq!(
        !engine.recovery_damage().is_empty(),
        damaged,
        "{case}: damage reported"
    );
}

#[test]
fn a_recycled_segment_s_earlier_life_is_never_read_as_records() {
    let ((dir, seg, c, records, manifests), base) = build_recycled();
    let original = std::fs::read(&seg).unwrap();
    let (last_pos, last_used) = c[c.len() - 1];
    let chain_end = last_pos + last_used.div_ceil(4096) * 4096;
    let earlier_commits = (chain_end..original.len())
        .step_by(4096)
        .filter(|&at| original[at..at + 4] == *b"CWCM")
        .count();
    assert!(
        earlier_commits > 5,
        "the earlier life's commits follow: {earlier_commits}"
    );
    let restore = |d: &[u8], m: &Option<Vec<u8>>| {
        std::fs::write(&seg, d).unwrap();
        common::restore_manifest(dir.path(), 0, m);
    };
    let mut n = 0;
    for manifest in [&manifests.crashed, &manifests.closed] {
        restore(&original, manifest);
        check_recycled(dir.path(), base, RECORDS, &records, false, "as written");
        // Bits flipped in the earlier life change nothing.
        for at in (chain_end..original.len()).step_by(4099) {
            let mut d = original.clone();
            d[at] ^= 1;
            restore(&d, manifest);
            check_recycled(
                dir.path(),
                base,
                RECORDS,
                &records,
                false,
                "flip after the chain",
            );
            n += 1;
        }
    }
    restore(&original, &manifests.crashed);
    common::say(&format!(
        "corruption matrix: a recycled segment with {earlier_commits} commits of its earlier life \
         after its chain (the same channel's): never read; {n} bit flips there change nothing"
    ));
}

#[test]
fn torn_writes_and_bit_flips_in_a_recycled_segment_are_cut_or_refused() {
    let (built, base) = build_recycled();
    let c = built.2.clone();
    let (last, prev) = (c[c.len() - 1], c[c.len() - 2]);
    let end = last.0 + last.1;
    // A commit whose magic or identity bytes (store, shard, segment) did
    // not land does not claim to be this segment's: the end of the chain,
    // nothing torn to report (after a crash: it was never acknowledged, or
    // it is in the manifest's residual window).
    let identity = |k: usize| k < 4 || (10..12).contains(&k) || (16..32).contains(&k);
    let mut cases: Vec<Case> = Vec::new();
    for (which, (pos, used), survivors) in
        [("last", last, RECORDS - 1), ("previous", prev, RECORDS - 2)]
    {
        for b in (pos..pos + used).step_by(16) {
            let clean = b - pos < 32;
            cases.push((
                format!("recycled: {which} commit written up to byte {b}"),
                RecoveryMode::TolerateTornTail,
                if clean {
                    Expect::Clean(survivors)
                } else {
                    Expect::Torn(survivors)
                },
                Box::new(move |d: &mut Vec<u8>| d[b..end].fill(0)),
            ));
        }
    }
    let (pos, used) = last;
    for bit in (0..(64 + 24) * 8).chain(((64 + 24) * 8..used * 8).step_by(29)) {
        let at = pos + bit / 8;
        cases.push((
            format!("recycled: bit {bit} of the last commit"),
            RecoveryMode::TolerateTornTail,
            if identity(bit / 8) {
                Expect::Clean(RECORDS - 1)
            } else {
                Expect::Torn(RECORDS - 1)
            },
            Box::new(move |d: &mut Vec<u8>| d[at] ^= 1 << (bit % 8)),
        ));
    }
    // Records are offsets `base..`: check them through a wrapper that
    // shifts. The generic check reads offsets from 0, so compare here.
    let n = each_recycled_case(built, base, Ending::Crashed, cases);
    common::say(&format!(
        "corruption matrix: {n} torn writes and bit flips in a recycled segment: cut, or the end \
         of the chain where the commit's identity did not land; never an earlier life's record"
    ));
    assert!(n > 600, "{n} cases");
    // After a clean close every one of them is a loss of acknowledged
    // commits: refused.
    let (built, base) = build_recycled();
    let (pos, used) = built.2[built.2.len() - 1];
    let refused = (0..used * 8).step_by(37).map(move |bit| {
        let at = pos + bit / 8;
        (
            format!("recycled: bit {bit} of the last commit, after a clean close"),
            RecoveryMode::TolerateTornTail,
            Expect::Damage,
            Box::new(move |d: &mut Vec<u8>| d[at] ^= 1 << (bit % 8)) as Box<dyn Fn(&mut Vec<u8>)>,
        )
    });
    each_recycled_case(built, base, Ending::Closed, refused);
}

/// [`each_case_of`] for a recycled store, whose records start at `base`.
fn each_recycled_case(
    built: Built,
    base: u64,
    ending: Ending,
    cases: impl IntoIterator<Item = Case>,
) -> usize {
    let (dir, seg, _, records, manifests) = built;
    let original = std::fs::read(&seg).unwrap();
    let manifest = match ending {
        Ending::Crashed => manifests.crashed,
        Ending::Closed => manifests.closed,
    };
    let mut n = 0;
    for (case, mode, expect, damage) in cases {
        let mut d = original.clone();
        damage(&mut d);
        std::fs::write(&seg, &d).unwrap();
        common::restore_manifest(dir.path(), 0, &manifest);
        without_snapshot(dir.path());
        let mut config = small_config(dir.path(), 1, Backend::IoUring);
        config.recovery_mode = mode;
        match (&expect, Engine::open(config)) {
            (Expect::Damage, Err(Error::Corruption { .. })) => {}
            (Expect::Damage, other) => {
                panic!("{case}: expected Corruption, got {:?}", other.map(|_| ()))
            }
            (Expect::Torn(k) | Expect::Clean(k), Ok(engine)) => {
                let torn = matches!(expect, Expect::Torn(_));
                drop(engine);
                check_recycled(dir.path(), base, *k, &records, torn, &case);
            }
            (_, r) => panic!("{case}: {:?}", r.map(|_| ())),
        }
        std::fs::write(&seg, &original).unwrap();
        n += 1;
    }
    n
}
