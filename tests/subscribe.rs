//! Subscriptions: a channel's records from an offset on, then each new one
//! once acknowledged — keeping up, far behind (from the WAL), across a
//! reopen, and ending with a clear error when the channel is truncated
//! below them or dropped.

mod common;

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use common::{payload, small_config, test_dir, within, BACKENDS};
use corewal::{Backend, Channel, Config, Engine, Error, Offset, Record, Subscription};
use futures_core::Stream;

const LIMIT: Duration = Duration::from_secs(60);

fn config(dir: &std::path::Path, backend: Backend) -> Config {
    small_config(dir, 2, backend)
}

/// Takes `n` records from `sub`, checking offsets are dense from `first`.
fn take(sub: &mut Subscription, first: u64, n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let r = sub.next().expect("a subscription does not end").unwrap();
            assert_eq!(r.offset, Offset(first + i), "records in offset order");
            r
        })
        .collect()
}

fn check_payloads(name: &str, records: &[Record], max: usize) {
    for r in records {
        assert_eq!(
            r.data[..],
            payload(name, r.offset.0, max)[..],
            "record {}",
            r.offset.0
        );
    }
}

#[test]
fn a_subscriber_that_keeps_up_gets_every_record_in_order_once_durable() {
    for backend in BACKENDS {
        let dir = test_dir();
        let engine = Engine::open(config(dir.path(), backend)).unwrap();
        let ch = engine.register("dml_0").unwrap();
        for i in 0..10 {
            ch.append(&payload("dml_0", i, 300)).unwrap();
        }
        let mut sub = ch.subscribe(Offset(0));
        let writer = {
            let ch = ch.clone();
            std::thread::spawn(move || {
                for i in 10..2_000u64 {
                    let o = ch.append(&payload("dml_0", i, 300)).unwrap();
                    assert_eq!(o, Offset(i));
                }
            })
        };
        let got = within(LIMIT, move || {
            let got = take(&mut sub, 0, 2_000);
            (got, sub)
        })
        .expect("the subscriber got every record without polling");
        writer.join().unwrap();
        check_payloads("dml_0", &got.0, 300);
        // Nothing more until the next append.
        let mut sub = got.1;
        assert!(sub
            .next_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none());
        ch.append(b"late").unwrap();
        let r = sub.next_timeout(LIMIT).unwrap().unwrap();
        assert_eq!((r.offset, &r.data[..]), (Offset(2_000), &b"late"[..]));
        assert_eq!(sub.position(), Offset(2_001));
        engine.close().unwrap();
    }
}

#[test]
fn a_subscriber_never_sees_a_record_before_its_append_is_acknowledged() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    let ch = engine.register("dml_1").unwrap();
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (ch, acked) = (ch.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0..3_000u64 {
                // Durable (acknowledged by the shard) before it returns; the
                // subscriber may see it a moment before this thread runs
                // again, never before the shard acknowledged it — which
                // the read of `next_offset` below orders.
                ch.append(&i.to_le_bytes()).unwrap();
                acked.store(i + 1, std::sync::atomic::Ordering::Release);
            }
        })
    };
    let mut sub = ch.subscribe(Offset(0));
    for i in 0..3_000u64 {
        let r = sub.next().unwrap().unwrap();
        assert_eq!(r.offset, Offset(i));
        // The shard that gave it has it acknowledged: its next offset is past it.
        assert!(ch.next_offset().unwrap() > r.offset);
    }
    writer.join().unwrap();
    assert_eq!(acked.load(std::sync::atomic::Ordering::Acquire), 3_000);
    engine.close().unwrap();
}

#[test]
fn a_subscriber_far_behind_the_memory_budget_reads_on_from_the_wal() {
    let dir = test_dir();
    let mut c = config(dir.path(), Backend::IoUring);
    c.shards = Some(1);
    c.segment_bytes = 4 << 20;
    c.buffer_bytes_max = 256 << 10;
    let engine = Engine::open(c).unwrap();
    let ch = engine.register("dml_2").unwrap();
    const MAX: usize = 8 << 10;
    const N: u64 = 4_000; // ~16 MiB, 64 times the budget
    for i in 0..N / 2 {
        ch.append(&payload("dml_2", i, MAX)).unwrap();
    }
    let before = engine.metrics().wal_reads;
    let sub = ch.subscribe(Offset(0)).read_ahead(32 << 10);
    let writer = {
        let ch = ch.clone();
        std::thread::spawn(move || {
            for i in N / 2..N {
                ch.append(&payload("dml_2", i, MAX)).unwrap();
            }
        })
    };
    let (got, from_wal) = within(LIMIT, move || {
        let mut sub = sub;
        let got = take(&mut sub, 0, N);
        (got, sub.records_from_wal())
    })
    .expect("the subscriber caught up");
    writer.join().unwrap();
    check_payloads("dml_2", &got, MAX);
    let m = engine.metrics();
    assert!(
        m.wal_reads > before,
        "records the budget let go came from the WAL: {m:?}"
    );
    assert!(m.cached_bytes <= 256 << 10, "{m:?}");
    // At least the first half, written before it started, was let go.
    assert!(
        (N / 4..=N).contains(&from_wal),
        "{from_wal} of {N} from the WAL"
    );
    engine.close().unwrap();
}

#[test]
fn a_subscription_resumes_after_a_reopen_from_the_position_it_stored() {
    let dir = test_dir();
    let stored = {
        let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
        let ch = engine.register("dml_3").unwrap();
        for i in 0..100 {
            ch.append(&payload("dml_3", i, 500)).unwrap();
        }
        let mut sub = ch.subscribe(Offset(0));
        check_payloads("dml_3", &take(&mut sub, 0, 60), 500);
        let stored = sub.position();
        drop(sub);
        engine.close().unwrap();
        stored
    };
    assert_eq!(stored, Offset(60));
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    let ch = engine.register("dml_3").unwrap();
    let mut sub = ch.subscribe(stored);
    check_payloads("dml_3", &take(&mut sub, 60, 40), 500);
    ch.append(&payload("dml_3", 100, 500)).unwrap();
    check_payloads("dml_3", &take(&mut sub, 100, 1), 500);
    engine.close().unwrap();
}

/// A subscriber parked waiting on `ch` (on its own thread), and what ended it.
fn parked_subscriber(
    ch: &Channel,
    from: Offset,
) -> std::sync::mpsc::Receiver<Vec<Result<Record, Error>>> {
    let mut sub = ch.subscribe(from);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let items: Vec<_> = sub.by_ref().collect();
        assert!(sub.next().is_none(), "an ended subscription stays ended");
        let _ = tx.send(items);
    });
    rx
}

#[test]
fn a_truncation_below_a_subscription_ends_it_one_at_or_after_it_does_not() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    let ch = engine.register("dml_4").unwrap();
    for i in 0..10u64 {
        ch.append(&i.to_le_bytes()).unwrap();
    }
    // Parked at 10, having seen everything: truncating below it ends it at once.
    let parked = parked_subscriber(&ch, Offset(0));
    std::thread::sleep(Duration::from_millis(50));
    // Busy (between fetches) at 5: it learns at its next fetch.
    let mut busy = ch.subscribe(Offset(0)).read_ahead(0);
    take(&mut busy, 0, 5);
    // Made before the truncations, read only after them.
    let mut at = ch.subscribe(Offset(8));
    // Given 0..8: a truncation from 8 removes nothing it was given.
    let mut at8 = ch.subscribe(Offset(0)).read_ahead(0);
    take(&mut at8, 0, 8);
    ch.truncate_from(Offset(8)).unwrap();
    let items = parked
        .recv_timeout(LIMIT)
        .expect("the parked subscriber was told");
    assert_eq!(items.len(), 11, "ten records, then the end");
    match items.last().unwrap() {
        Err(Error::SubscriptionTruncated {
            channel,
            position,
            first_removed,
        }) => {
            assert_eq!(
                (channel.as_str(), *position, *first_removed),
                ("dml_4", 10, 8)
            );
        }
        other => panic!("expected SubscriptionTruncated, got {other:?}"),
    }
    ch.append(b"eight").unwrap();
    let r = at8.next().unwrap().unwrap();
    assert_eq!((r.offset, &r.data[..]), (Offset(8), &b"eight"[..]));
    ch.truncate_from(Offset(3)).unwrap();
    // `busy` had 0..5 in hand; the answer of its next fetch is the end.
    assert!(matches!(
        busy.next(),
        Some(Err(Error::SubscriptionTruncated {
            position: 5,
            first_removed: 3,
            ..
        }))
    ));
    assert!(busy.next().is_none());
    // `at` was never read: its shard hears of it at its first fetch, from
    // 8 when the channel ends at 3 — a start past the end.
    assert!(matches!(
        at.next(),
        Some(Err(Error::OffsetOutOfRange {
            operation: "subscribe",
            offset: 8,
            next: 3,
            ..
        }))
    ));
    // A fresh subscription from the truncation point sees the new records.
    let mut fresh = ch.subscribe(Offset(3));
    ch.append(b"new").unwrap();
    let r = fresh.next().unwrap().unwrap();
    assert_eq!((r.offset, &r.data[..]), (Offset(3), &b"new"[..]));
    engine.close().unwrap();
}

#[test]
fn a_checkpoint_past_a_subscription_moves_it_on_to_the_first_live_record() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    let ch = engine.register("dml_5").unwrap();
    for i in 0..10u64 {
        ch.append(&i.to_le_bytes()).unwrap();
    }
    let mut sub = ch.subscribe(Offset(0)).read_ahead(0);
    take(&mut sub, 0, 2);
    ch.checkpoint(Offset(6)).unwrap();
    let r = sub.next().unwrap().unwrap();
    assert_eq!(r.offset, Offset(7), "the gap shows in the offsets");
    // From below the first live offset: starts there.
    let mut low = ch.subscribe(Offset(1));
    assert_eq!(low.next().unwrap().unwrap().offset, Offset(7));
    engine.close().unwrap();
}

#[test]
fn dropping_the_channel_ends_its_subscriptions_and_a_start_past_the_end_is_refused() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    let ch = engine.register("dml_6").unwrap();
    ch.append(b"x").unwrap();
    let mut beyond = ch.subscribe(Offset(5));
    assert!(matches!(
        beyond.next(),
        Some(Err(Error::OffsetOutOfRange {
            operation: "subscribe",
            offset: 5,
            next: 1,
            ..
        }))
    ));
    assert!(beyond.next().is_none());
    let parked = parked_subscriber(&ch, Offset(0));
    std::thread::sleep(Duration::from_millis(50));
    let mut busy = ch.subscribe(Offset(0));
    assert_eq!(&busy.next().unwrap().unwrap().data[..], b"x");
    engine.unregister("dml_6").unwrap();
    let items = parked
        .recv_timeout(LIMIT)
        .expect("the parked subscriber was told");
    assert_eq!(items.len(), 2);
    assert!(matches!(items[1], Err(Error::ChannelDropped { ref name }) if name == "dml_6"));
    assert!(matches!(
        busy.next(),
        Some(Err(Error::ChannelDropped { .. }))
    ));
    engine.close().unwrap();
}

#[test]
fn closing_the_engine_ends_a_waiting_subscription_and_dropped_ones_cost_nothing() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    let ch = engine.register("dml_7").unwrap();
    // Subscriptions dropped while waiting, never read, or read once.
    for i in 0..100u64 {
        let mut s = ch.subscribe(Offset(0));
        if i % 2 == 0 {
            assert!(s.next_timeout(Duration::from_millis(1)).unwrap().is_none());
        }
    }
    for i in 0..50u64 {
        ch.append(&i.to_le_bytes()).unwrap();
    }
    let parked = parked_subscriber(&ch, Offset(50));
    std::thread::sleep(Duration::from_millis(50));
    engine.close().unwrap();
    let items = parked.recv_timeout(LIMIT).expect("the subscriber was told");
    assert!(matches!(items[..], [Err(Error::Closed)]), "{items:?}");
}

/// The next item of a stream, under any executor.
async fn next<S: Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}

/// Appends `n` records on a thread while a task follows them.
async fn follow(ch: Channel, n: u64) -> Vec<Record> {
    let mut sub = ch.subscribe(Offset(0)).read_ahead(1 << 10);
    let writer = {
        let ch = ch.clone();
        std::thread::spawn(move || {
            for i in 0..n {
                ch.append(&payload(ch.name(), i, 200)).unwrap();
            }
        })
    };
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        got.push(next(&mut sub).await.unwrap().unwrap());
    }
    writer.join().unwrap();
    got
}

#[test]
fn a_subscription_is_a_stream_under_tokio_and_smol() {
    let dir = test_dir();
    let engine = Engine::open(config(dir.path(), Backend::IoUring)).unwrap();
    type Run = Box<dyn Fn(Channel) -> Vec<Record>>;
    let runs: [(&str, Run); 3] = [
        (
            "tokio-current-thread",
            Box::new(|ch| {
                tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap()
                    .block_on(follow(ch, 500))
            }),
        ),
        (
            "tokio-multi-thread",
            Box::new(|ch| {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .build()
                    .unwrap();
                rt.block_on(async move { rt_spawned(ch).await })
            }),
        ),
        ("smol", Box::new(|ch| smol::block_on(follow(ch, 500)))),
    ];
    for (name, run) in runs {
        let ch = engine.register(name).unwrap();
        let got = run(ch);
        assert_eq!(got.len(), 500, "{name}");
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.offset, Offset(i as u64), "{name}");
        }
        check_payloads(name, &got, 200);
    }
    engine.close().unwrap();
}

/// `follow` on a worker of the multi-thread runtime (the stream moves
/// between threads: it is `Send`).
async fn rt_spawned(ch: Channel) -> Vec<Record> {
    tokio::spawn(follow(ch, 500)).await.unwrap()
}

#[test]
fn subscriptions_are_send() {
    fn send<T: Send + 'static>() {}
    send::<Subscription>();
}

#[test]
fn a_failed_commit_is_never_yielded_and_the_shard_s_failure_ends_the_subscription() {
    // The twelfth write or data sync fails — its write, or (the bytes
    // written, not made durable) its sync: the records of that commit are
    // never acknowledged, so no subscriber may see them.
    for in_sync in [false, true] {
        let dir = test_dir();
        let mut c = small_config(dir.path(), 1, Backend::IoUring);
        c.sync_method = corewal::SyncMethod::WriteThenFdatasync;
        let mut plan = corewal::FaultPlan::new(12, libc::EIO);
        plan.in_sync = in_sync;
        c.backend = Backend::faulty(Backend::IoUring, plan);
        let engine = Engine::open(c).unwrap();
        let ch = engine.register("dml_8").unwrap();
        let parked = parked_subscriber(&ch, Offset(0));
        let mut acked = 0u64;
        loop {
            match ch.append(&acked.to_le_bytes()) {
                Ok(o) => {
                    assert_eq!(o, Offset(acked));
                    acked += 1;
                }
                Err(Error::ShardFailed { .. }) => break,
                Err(e) => panic!("{e}"),
            }
            assert!(acked < 100, "the planned fault never came");
        }
        let items = parked.recv_timeout(LIMIT).expect("the subscriber was told");
        assert_eq!(
            items.len() as u64,
            acked + 1,
            "in_sync {in_sync}: {items:?}"
        );
        for (i, item) in items[..acked as usize].iter().enumerate() {
            let r = item.as_ref().unwrap();
            assert_eq!(
                (r.offset, &r.data[..]),
                (Offset(i as u64), &(i as u64).to_le_bytes()[..])
            );
        }
        assert!(
            matches!(items.last(), Some(Err(Error::ShardFailed { .. }))),
            "{items:?}"
        );
        let _ = engine.close();
    }
}
