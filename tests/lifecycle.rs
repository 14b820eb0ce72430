//! Checkpoints and truncations through the public API, on both backends:
//! what they change, what they refuse, and that a reopen rebuilds the same
//! channels from the WAL.

mod common;

use common::{block_on, payload, small_config, test_dir, BACKENDS};
use corewal::{Durability, Engine, Error, Offset};

/// The records of `ch` as (offset, payload) pairs.
fn contents(ch: &corewal::Channel) -> Vec<(u64, Vec<u8>)> {
    ch.read(..)
        .unwrap()
        .into_iter()
        .map(|r| (r.offset.0, r.data.to_vec()))
        .collect()
}

#[test]
fn checkpoints_and_truncations_survive_reopen() {
    for backend in BACKENDS {
        for durability in [
            Durability::Sync,
            Durability::Periodic {
                interval: std::time::Duration::from_secs(30),
            },
        ] {
            let dir = test_dir();
            let mut config = small_config(dir.path(), 2, backend.clone());
            config.durability = durability;
            let what = format!("{backend:?} {durability:?}");
            let expected;
            {
                let engine = Engine::open(config.clone()).unwrap();
                let a = engine.register("a").unwrap();
                // 3 KiB records over 1 MiB segments: the run crosses segments.
                for i in 0..600 {
                    assert_eq!(a.append(&payload("a", i, 3000)).unwrap(), Offset(i));
                }
                assert_eq!(a.first_offset().unwrap(), Offset(0));
                a.checkpoint(Offset(399)).unwrap();
                assert_eq!(a.first_offset().unwrap(), Offset(400), "{what}");
                a.checkpoint(Offset(10)).unwrap(); // below: nothing changes
                a.checkpoint(Offset(399)).unwrap(); // again: idempotent
                assert_eq!(a.first_offset().unwrap(), Offset(400));
                assert_eq!(a.read(..).unwrap()[0].offset, Offset(400));
                a.truncate_from(Offset(550)).unwrap();
                assert_eq!(a.next_offset().unwrap(), Offset(550));
                a.truncate_from(Offset(550)).unwrap(); // at the end: nothing
                for i in 550..560 {
                    let replacing = payload("a-again", i, 3000);
                    assert_eq!(a.append(&replacing).unwrap(), Offset(i));
                }
                // The async twins.
                block_on(a.checkpoint_async(Offset(449))).unwrap();
                assert_eq!(block_on(a.first_offset_async()).unwrap(), Offset(450));
                block_on(a.truncate_from_async(Offset(555))).unwrap();
                assert_eq!(block_on(a.next_offset_async()).unwrap(), Offset(555));
                // A channel checkpointed whole: first == next, nothing to read.
                let b = engine.register("b").unwrap();
                for i in 0..5 {
                    b.append(&payload("b", i, 100)).unwrap();
                }
                b.checkpoint(Offset(4)).unwrap();
                assert_eq!(b.first_offset().unwrap(), b.next_offset().unwrap());
                assert!(b.read(..).unwrap().is_empty());
                expected = (contents(&a), contents(&b));
                engine.close().unwrap();
            }
            let engine = Engine::open(config).unwrap();
            let (a, b) = (engine.register("a").unwrap(), engine.register("b").unwrap());
            assert_eq!(a.first_offset().unwrap(), Offset(450), "{what}");
            assert_eq!(a.next_offset().unwrap(), Offset(555), "{what}");
            assert_eq!((contents(&a), contents(&b)), expected, "{what}");
            assert_eq!(expected.0[100].1, payload("a-again", 550, 3000));
            assert_eq!(
                (b.first_offset().unwrap(), b.next_offset().unwrap()),
                (Offset(5), Offset(5))
            );
            assert_eq!(b.append(b"after").unwrap(), Offset(5), "offsets go on");
            engine.close().unwrap();
        }
    }
}

#[test]
fn offsets_out_of_range_are_refused_and_change_nothing() {
    let dir = test_dir();
    let engine = Engine::open(small_config(dir.path(), 1, BACKENDS[0].clone())).unwrap();
    let ch = engine.register("r").unwrap();
    for i in 0..4 {
        ch.append(&payload("r", i, 50)).unwrap();
    }
    ch.checkpoint(Offset(0)).unwrap();
    let before = contents(&ch);
    let refused = |r: corewal::Result<()>, op: &str, offset: u64| match r {
        Err(e @ Error::OffsetOutOfRange { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{op}({offset}) on channel \"r\" refused")),
                "{text}"
            );
            assert!(text.contains("(first offset 1, next offset 4)"), "{text}");
        }
        other => panic!("{op}({offset}): {other:?}"),
    };
    refused(ch.checkpoint(Offset(4)), "checkpoint", 4);
    refused(ch.checkpoint(Offset(u64::MAX)), "checkpoint", u64::MAX);
    refused(ch.truncate_from(Offset(0)), "truncate_from", 0);
    refused(ch.truncate_from(Offset(5)), "truncate_from", 5);
    refused(block_on(ch.checkpoint_async(Offset(9))), "checkpoint", 9);
    assert_eq!(contents(&ch), before);
    assert_eq!(ch.first_offset().unwrap(), Offset(1));
    // A dropped channel answers every call with ChannelDropped.
    engine.unregister("r").unwrap();
    for r in [ch.checkpoint(Offset(1)), ch.truncate_from(Offset(1))] {
        assert!(matches!(r, Err(Error::ChannelDropped { .. })), "{r:?}");
    }
    assert!(matches!(
        ch.first_offset(),
        Err(Error::ChannelDropped { .. })
    ));
    // Registered again, it starts where the truncated-or-not channel stopped.
    let again = engine.register("r").unwrap();
    assert_eq!(again.first_offset().unwrap(), Offset(4));
    assert_eq!(again.append(b"x").unwrap(), Offset(4));
    engine.close().unwrap();
}

#[test]
fn a_truncation_waits_for_the_channel_s_appends_in_flight_and_removes_them() {
    // Appends of other threads to the same channel race a truncation: every
    // append acknowledged before the truncation returned at or after its
    // offset is gone, every one after it continues from the offset, and
    // the reopen agrees with what was read.
    for backend in BACKENDS {
        let dir = test_dir();
        let config = small_config(dir.path(), 1, backend.clone());
        let engine = Engine::open(config.clone()).unwrap();
        let ch = engine.register("race").unwrap();
        for i in 0..100 {
            ch.append(&payload("race", i, 200)).unwrap();
        }
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let ch = ch.clone();
                s.spawn(move || {
                    for i in 0..200 {
                        ch.append(&payload("writer", t * 1000 + i, 200)).unwrap();
                    }
                });
            }
            for cut in [150u64, 120, 110] {
                std::thread::sleep(std::time::Duration::from_millis(2));
                // Only records at or below the next offset can be removed.
                let next = ch.next_offset().unwrap().0;
                ch.truncate_from(Offset(cut.min(next))).unwrap();
            }
        });
        let seen = contents(&ch);
        let writers: std::collections::HashSet<Vec<u8>> = (0..4u64)
            .flat_map(|t| (0..200).map(move |i| payload("writer", t * 1000 + i, 200)))
            .collect();
        for (k, (o, data)) in seen.iter().enumerate() {
            assert_eq!(*o, k as u64, "{backend:?}: dense offsets from 0");
            if *o < 100 {
                assert_eq!(
                    data,
                    &payload("race", *o, 200),
                    "{backend:?}: below every cut"
                );
            } else {
                assert!(
                    writers.contains(data),
                    "{backend:?}: offset {o} holds a writer's record"
                );
            }
        }
        assert_eq!(seen.len() as u64, ch.next_offset().unwrap().0);
        engine.close().unwrap();
        let engine = Engine::open(config).unwrap();
        let ch = engine.register("race").unwrap();
        assert_eq!(contents(&ch), seen, "{backend:?}: the reopen agrees");
        engine.close().unwrap();
    }
}
