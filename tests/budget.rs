//! The memory budget for payloads (`Config::buffer_bytes_max`): reads
//! return the same records whether their payloads are in memory or only in
//! the WAL, within and across that boundary, bounded by `read_limited`,
//! before and after a reopen — checked against a model of every channel.

mod common;

use std::collections::BTreeMap;

use common::{block_on, payload, small_config, test_dir, Rng, BACKENDS};
use corewal::{Channel, Config, Engine, Offset, Record};

/// What each channel holds: its first live offset, and its records by
/// offset (those at or after it).
#[derive(Default, Clone)]
struct Model {
    first: u64,
    records: BTreeMap<u64, Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        self.records
            .keys()
            .next_back()
            .map_or(self.first, |o| (o + 1).max(self.first))
    }

    /// What a read of `from..to` returns, up to `max` payload bytes (at
    /// least one record).
    fn read(&self, from: u64, to: u64, max: u64) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let from = from.max(self.first);
        if from >= to {
            return out;
        }
        for (o, r) in self.records.range(from..to) {
            if !out.is_empty() && bytes + r.len() as u64 > max {
                break;
            }
            bytes += r.len() as u64;
            out.push((*o, r.clone()));
        }
        out
    }
}

fn pairs(records: Vec<Record>) -> Vec<(u64, Vec<u8>)> {
    records
        .into_iter()
        .map(|r| (r.offset.0, r.data.to_vec()))
        .collect()
}

/// Reads every channel whole and compares it with the model.
fn check_all(chans: &[Channel], models: &[Model], what: &str) {
    for (ch, m) in chans.iter().zip(models) {
        assert_eq!(ch.first_offset().unwrap(), Offset(m.first), "{what}");
        assert_eq!(ch.next_offset().unwrap(), Offset(m.next()), "{what}");
        let got = pairs(ch.read(..).unwrap());
        assert_eq!(got, m.read(0, u64::MAX, u64::MAX), "{what}: {}", ch.name());
    }
}

fn config(dir: &std::path::Path, backend: corewal::Backend, budget: u64) -> Config {
    let mut c = small_config(dir, 2, backend);
    c.buffer_bytes_max = budget;
    c
}

/// Random appends, checkpoints, truncations and reads of random ranges on
/// six channels, with budgets that keep no payload, a few, and all of them:
/// every read returns what the model says, before and after a reopen.
#[test]
fn reads_across_the_memory_and_wal_boundary_match_a_model() {
    let seed = common::seed();
    for backend in BACKENDS {
        for budget in [0, 96 << 10, 1 << 30] {
            let mut rng = Rng(seed ^ budget);
            let dir = test_dir();
            let names: Vec<String> = (0..6).map(|i| format!("ch-{i}")).collect();
            let mut models = vec![Model::default(); names.len()];
            let what = format!("{backend:?}, budget {budget}, seed {seed}");
            {
                let engine = Engine::open(config(dir.path(), backend.clone(), budget)).unwrap();
                let chans: Vec<Channel> =
                    names.iter().map(|n| engine.register(n).unwrap()).collect();
                for step in 0..2_500u64 {
                    let k = rng.below(names.len() as u64) as usize;
                    let (ch, m) = (&chans[k], &mut models[k]);
                    match rng.below(100) {
                        0..=64 => {
                            let data = payload(&names[k], step, 6 << 10);
                            let off = ch.append(&data).unwrap();
                            assert_eq!(off.0, m.next(), "{what}");
                            m.records.insert(off.0, data);
                        }
                        65..=69 if m.next() > m.first => {
                            let through = m.first + rng.below(m.next() - m.first);
                            ch.checkpoint(Offset(through)).unwrap();
                            m.first = through + 1;
                            m.records = m.records.split_off(&m.first);
                        }
                        70..=72 if m.next() > m.first => {
                            let from = m.first + rng.below(m.next() - m.first + 1);
                            ch.truncate_from(Offset(from)).unwrap();
                            m.records.split_off(&from);
                        }
                        73..=89 => {
                            let from = rng.below(m.next() + 2);
                            let to = from + rng.below(64);
                            let got = pairs(ch.read(Offset(from)..Offset(to)).unwrap());
                            assert_eq!(got, m.read(from, to, u64::MAX), "{what}: step {step}");
                        }
                        90..=96 => {
                            let from = rng.below(m.next() + 1);
                            let max = rng.below(24 << 10);
                            let got = pairs(ch.read_limited(Offset(from).., max).unwrap());
                            assert_eq!(got, m.read(from, u64::MAX, max), "{what}: step {step}");
                        }
                        _ => {
                            let got = block_on(ch.read_limited_async(.., 1 << 20)).unwrap();
                            assert_eq!(pairs(got), m.read(0, u64::MAX, 1 << 20), "{what}");
                        }
                    }
                }
                check_all(&chans, &models, &what);
                let metrics = engine.metrics();
                assert!(
                    metrics.cached_bytes <= budget,
                    "{what}: {} bytes cached",
                    metrics.cached_bytes
                );
                if budget < 1 << 20 {
                    assert!(metrics.wal_reads > 0, "{what}: nothing read from the WAL");
                } else {
                    assert_eq!(metrics.wal_reads, 0, "{what}: everything fits");
                }
                engine.close().unwrap();
            }
            // Replay keeps the newest payloads within the budget; the rest
            // are read from the WAL.
            let engine = Engine::open(config(dir.path(), backend.clone(), budget)).unwrap();
            let chans: Vec<Channel> = names.iter().map(|n| engine.register(n).unwrap()).collect();
            check_all(&chans, &models, &format!("{what}, reopened"));
            assert!(engine.metrics().cached_bytes <= budget, "{what}");
            engine.close().unwrap();
        }
    }
}

/// A record larger than the whole budget is never cached, yet read back;
/// `read_limited` returns it alone even when it exceeds `max_bytes`.
#[test]
fn a_record_larger_than_the_budget_is_read_from_the_wal() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), corewal::Backend::IoUring, 4 << 10)).unwrap();
    let ch = engine.register("big").unwrap();
    let big = payload("big", 7, 20 << 10);
    let big = [big.as_slice(), &[1u8; 40 << 10]].concat();
    ch.append(&big).unwrap();
    ch.append(b"small").unwrap();
    let first = ch.read_limited(.., 1).unwrap();
    assert_eq!(pairs(first), vec![(0, big.clone())]);
    let both = ch.read(..).unwrap();
    assert_eq!(pairs(both), vec![(0, big), (1, b"small".to_vec())]);
    let m = engine.metrics();
    assert!(m.wal_reads >= 2, "{m:?}");
    assert!(m.cached_bytes <= 4 << 10, "{m:?}");
    engine.close().unwrap();
}

#[test]
fn a_replay_leaves_the_newest_payloads_in_memory_and_reads_the_older_from_the_wal() {
    // 16 MiB of 4 KiB records in 1 MiB segments under a 1 MiB budget:
    // replay caches only what the newest segments hold, and that is what
    // stays — the newest records read from memory, the oldest from the WAL.
    let dir = test_dir();
    let mut c = config(dir.path(), corewal::Backend::IoUring, 1 << 20);
    c.shards = Some(1);
    c.index_snapshots = false;
    {
        let engine = Engine::open(c.clone()).unwrap();
        let ch = engine.register("c").unwrap();
        for i in 0..4096u64 {
            ch.append(&payload("c", i, 4096)).unwrap();
        }
        engine.close().unwrap();
    }
    let engine = Engine::open(c).unwrap();
    let ch = engine.register("c").unwrap();
    let m = engine.metrics();
    assert!(
        m.cached_bytes > 1 << 19 && m.cached_bytes <= 1 << 20,
        "the budget filled after the replay: {m:?}"
    );
    let newest = ch.read(Offset(4000)..).unwrap();
    assert_eq!(newest.len(), 96);
    assert_eq!(
        engine.metrics().wal_reads,
        m.wal_reads,
        "the newest from memory"
    );
    let oldest = ch.read(..Offset(96)).unwrap();
    assert!(
        engine.metrics().wal_reads > m.wal_reads,
        "the oldest from the WAL"
    );
    for r in newest.iter().chain(&oldest) {
        assert_eq!(r.data[..], payload("c", r.offset.0, 4096)[..]);
    }
    engine.close().unwrap();
}

#[test]
fn a_crash_replay_fills_the_budget_though_the_spare_and_the_active_tail_are_zeros() {
    // A per-shard budget of one segment: the spare made ahead and the
    // active segment's unwritten tail are log bytes no payload lies in, so
    // they must not count as "newer payloads" that outweigh the segments
    // before them.
    let (dir, crashed) = (test_dir(), test_dir());
    let mut c = config(dir.path(), corewal::Backend::IoUring, 1 << 20);
    c.shards = Some(1);
    c.index_snapshots = false;
    let engine = Engine::open(c.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    // 4,000-byte records, one 4 KiB block each: four segments of 255, and
    // 150 records into the next (far enough for its spare to be made).
    let record = |i: u64| vec![i as u8; 4000];
    for i in 0..1170u64 {
        ch.append(&record(i)).unwrap();
    }
    // The spare made ahead of the next segment is made by a thread of its
    // own: give it time, then copy the store as a crash would leave it.
    let spare = dir.path().join("shard-000/0000000000000006.wal");
    for _ in 0..500 {
        if spare.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(spare.exists(), "the spare was made");
    common::copy_dir(dir.path(), crashed.path());
    engine.close().unwrap();
    let _ = std::fs::remove_file(crashed.path().join("LOCK"));
    c.dir = crashed.path().to_path_buf();
    let engine = Engine::open(c).unwrap();
    let m = engine.metrics();
    assert!(
        m.cached_bytes > (1 << 20) * 9 / 10,
        "the budget filled after the replay: {m:?}"
    );
    let all = engine.register("c").unwrap().read(..).unwrap();
    assert_eq!(all.len(), 1170);
    assert!(all.iter().all(|r| r.data[..] == record(r.offset.0)[..]));
    engine.close().unwrap();
}
