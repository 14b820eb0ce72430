//! Fail-stop (invariant 7): after a failed write or data sync a shard
//! acknowledges nothing more, every caller gets an error that names the
//! shard and the cause, other shards go on, and a reopen recovers everything
//! that was acknowledged before the failure. Faults come from the
//! fault-injecting backend (through the I/O layer, not sleeps).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{small_config, test_dir};
use corewal::{Backend, Engine, Error, FaultEffect, FaultPlan, Offset, ShardId, SyncMethod};

/// A channel name on each shard of a 2-shard engine.
fn names_per_shard(engine: &Engine) -> [String; 2] {
    let mut found: [Option<String>; 2] = [None, None];
    for i in 0.. {
        let name = format!("probe-{i}");
        let ch = engine.register(&name).unwrap();
        let s = ch.shard().0 as usize;
        if found[s].is_none() {
            found[s] = Some(name);
        }
        if found.iter().all(|f| f.is_some()) {
            break;
        }
    }
    found.map(|f| f.unwrap())
}

fn fail_stop_case(errno: i32, sync_method: SyncMethod, fail_op: u64, in_sync: bool) {
    fail_stop_case_over(Backend::IoUring, errno, sync_method, fail_op, in_sync)
}

fn fail_stop_case_over(
    over: Backend,
    errno: i32,
    sync_method: SyncMethod,
    fail_op: u64,
    in_sync: bool,
) {
    let dir = test_dir();
    let mut config = small_config(dir.path(), 2, over.clone());
    let names = {
        let engine = Engine::open(config.clone()).unwrap();
        let n = names_per_shard(&engine);
        engine.close().unwrap();
        n
    };
    config.sync_method = sync_method;
    let mut plan = FaultPlan::new(fail_op, errno);
    plan.shard = Some(ShardId(0));
    plan.in_sync = in_sync;
    config.backend = Backend::faulty(over.clone(), plan);
    let acked: Arc<Mutex<HashMap<String, Vec<u64>>>> = Arc::default();
    {
        let engine = Arc::new(Engine::open(config.clone()).unwrap());
        let failing = engine.register(&names[0]).unwrap();
        let healthy = engine.register(&names[1]).unwrap();
        // Eight threads on the failing shard: every call must return.
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (ch, acked) = (failing.clone(), acked.clone());
                std::thread::spawn(move || {
                    let mut errors = 0;
                    for i in 0..200u32 {
                        match ch.append(&[t as u8, i as u8, 7]) {
                            Ok(off) => {
                                assert_eq!(errors, 0, "an append succeeded after the shard failed");
                                acked
                                    .lock()
                                    .unwrap()
                                    .entry(ch.name().to_string())
                                    .or_default()
                                    .push(off.0);
                            }
                            Err(Error::ShardFailed { shard, cause }) => {
                                assert_eq!(shard, ShardId(0));
                                assert_eq!(cause.raw_os_error(), Some(errno), "{cause}");
                                errors += 1;
                            }
                            Err(e) => panic!("unexpected error {e}"),
                        }
                    }
                    errors
                })
            })
            .collect();
        let started = Instant::now();
        while !threads.iter().all(|t| t.is_finished()) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "callers hang after the failure"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let errors: u32 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(errors > 0, "the planned fault never happened");
        // The failed shard refuses new registrations and appends, with the cause.
        let err = engine.register("a-new-name-on-a-failed-shard-maybe");
        if let Err(e) = &err {
            assert!(matches!(e, Error::ShardFailed { .. }), "{e}");
        }
        assert!(matches!(
            failing.append(b"late"),
            Err(Error::ShardFailed { .. })
        ));
        // The other shard goes on.
        for i in 0..20u64 {
            let off = healthy.append(&[i as u8]).unwrap();
            acked
                .lock()
                .unwrap()
                .entry(names[1].clone())
                .or_default()
                .push(off.0);
        }
        // Reads of the failed shard still answer (with what was acknowledged).
        let before = failing.read(..).unwrap().len();
        assert_eq!(
            before,
            acked.lock().unwrap().get(&names[0]).map_or(0, |v| v.len())
        );
        drop((failing, healthy));
        // Close reports the failure (after stopping every shard).
        match Arc::try_unwrap(engine).unwrap().close() {
            Err(Error::ShardFailed {
                shard: ShardId(0),
                cause,
            }) => {
                assert_eq!(cause.raw_os_error(), Some(errno), "{cause}")
            }
            other => panic!("close after a failed shard: {other:?}"),
        }
    }
    // Reopen without faults: everything acknowledged is there.
    config.backend = over;
    assert_acknowledged_survive(config, &names, &acked.lock().unwrap());
}

/// Opens `config` and checks that every offset acknowledged per name is there.
fn assert_acknowledged_survive(
    config: corewal::Config,
    names: &[String],
    acked: &HashMap<String, Vec<u64>>,
) {
    let engine = Engine::open(config).unwrap();
    for name in names {
        let records = engine.register(name).unwrap().read(..).unwrap();
        let want = acked.get(name).cloned().unwrap_or_default();
        assert!(
            records.len() >= want.len(),
            "{name}: {} records, {} acknowledged",
            records.len(),
            want.len()
        );
        for off in want {
            assert_eq!(records[off as usize].offset, Offset(off));
        }
    }
}

#[test]
fn a_failed_write_stops_the_shard_and_loses_nothing_acknowledged() {
    fail_stop_case(libc::EIO, SyncMethod::DsyncWrite, 40, false);
    fail_stop_case(libc::EIO, SyncMethod::WriteThenFdatasync, 40, false);
}

#[test]
fn a_failed_data_sync_is_never_retried_or_acknowledged() {
    // The write reaches the file, its sync fails: the commit is not
    // acknowledged, and nothing after it either.
    fail_stop_case(libc::EIO, SyncMethod::WriteThenFdatasync, 40, true);
    fail_stop_case(libc::EIO, SyncMethod::DsyncWrite, 25, true);
}

#[test]
fn the_portable_backend_fails_stop_the_same_way() {
    // Fault injection wraps any backend: the same plans over the page-cache
    // backend, whose writes and syncs are system calls on the shard thread.
    fail_stop_case_over(
        Backend::Portable,
        libc::EIO,
        SyncMethod::DsyncWrite,
        40,
        false,
    );
    fail_stop_case_over(
        Backend::Portable,
        libc::EIO,
        SyncMethod::WriteThenFdatasync,
        40,
        true,
    );
}

#[test]
fn enospc_is_reported_with_its_cause() {
    fail_stop_case(libc::ENOSPC, SyncMethod::DsyncWrite, 3, false);
}

#[test]
fn a_fault_before_anything_is_acknowledged_still_answers_everyone() {
    // Operation 1 is the open's sync of the manifest (the store was opened
    // and closed once); operation 2 is the first commit's write.
    fail_stop_case(libc::EIO, SyncMethod::DsyncWrite, 2, false);
}

#[test]
fn a_failed_sync_at_open_fails_the_open_with_its_cause() {
    // The open syncs the manifest whose log start it acts on; when that
    // sync fails the open fails, naming the file, and nothing is lost.
    let dir = test_dir();
    let mut config = store_with_records(dir.path(), 10);
    let mut plan = FaultPlan::new(1, libc::EIO);
    plan.shard = Some(ShardId(0));
    config.backend = Backend::faulty(Backend::IoUring, plan);
    match common::within(HANG, {
        let config = config.clone();
        move || Engine::open(config).map(|e| e.close())
    })
    .expect("the open hangs after a failed sync")
    {
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            assert!(e.to_string().contains("manifest"), "{e}");
        }
        Ok(closed) => panic!("the open succeeded over a failed sync (close: {closed:?})"),
    }
    assert_eq!(records_after_reopen(&config, "c"), 10);
}

/// Counts a name's records after a reopen with the default backend.
fn records_after_reopen(config: &corewal::Config, name: &str) -> usize {
    let mut config = config.clone();
    config.backend = Backend::IoUring;
    let engine = Engine::open(config).unwrap();
    let n = engine.register(name).unwrap().read(..).unwrap().len();
    engine.close().unwrap();
    n
}

/// A store of one shard holding `n` records of channel "c".
fn store_with_records(dir: &std::path::Path, n: u64) -> corewal::Config {
    let config = small_config(dir, 1, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    for i in 0..n {
        ch.append(format!("record-{i}").as_bytes()).unwrap();
    }
    engine.close().unwrap();
    config
}

const HANG: Duration = Duration::from_secs(20);

#[test]
fn a_panic_on_a_shard_thread_answers_every_caller_and_close_returns() {
    let dir = test_dir();
    let mut config = small_config(dir.path(), 2, Backend::IoUring);
    let names = {
        let engine = Engine::open(config.clone()).unwrap();
        let n = names_per_shard(&engine);
        engine.close().unwrap();
        n
    };
    let mut plan = FaultPlan::new(30, libc::EIO);
    plan.shard = Some(ShardId(0));
    plan.effect = FaultEffect::Panic;
    config.backend = Backend::faulty(Backend::IoUring, plan);
    let engine = Arc::new(Engine::open(config.clone()).unwrap());
    let failing = engine.register(&names[0]).unwrap();
    let healthy = engine.register(&names[1]).unwrap();
    let callers: Vec<_> = (0..6)
        .map(|t| {
            let ch = failing.clone();
            std::thread::spawn(move || {
                let mut failed = 0;
                for i in 0..100u32 {
                    match ch.append(&[t, i as u8]) {
                        Ok(_) => assert_eq!(failed, 0, "acknowledged after the panic"),
                        Err(Error::ShardFailed {
                            shard: ShardId(0),
                            cause,
                        }) => {
                            assert!(cause.to_string().contains("panic"), "{cause}");
                            failed += 1;
                        }
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
                failed
            })
        })
        .collect();
    let failed = common::within(HANG, move || {
        callers.into_iter().map(|c| c.join().unwrap()).sum::<u32>()
    })
    .expect("callers of a panicked shard hang");
    assert!(failed > 0, "the planned panic never happened");
    // Every later request is answered too, with the panic as the cause.
    let late = common::within(HANG, {
        let f = failing.clone();
        move || f.read(..)
    })
    .expect("a read of a panicked shard hangs");
    assert!(matches!(late, Err(Error::ShardFailed { .. })), "{late:?}");
    // The other shard goes on.
    for i in 0..20u8 {
        healthy.append(&[i]).unwrap();
    }
    drop((failing, healthy));
    let engine = Arc::try_unwrap(engine).unwrap();
    let closed = common::within(HANG, move || engine.close()).expect("close hangs");
    assert!(
        matches!(closed, Err(Error::ShardFailed { .. })),
        "{closed:?}"
    );
    assert_eq!(records_after_reopen(&config, &names[1]), 20);
}

#[test]
fn a_panic_during_recovery_fails_the_open_instead_of_hanging_it() {
    let dir = test_dir();
    let mut config = store_with_records(dir.path(), 50);
    // The panic is planned on replay's reads.
    config.index_snapshots = false;
    let mut plan = FaultPlan::new(1, libc::EIO);
    plan.effect = FaultEffect::Panic;
    plan.reads = true;
    config.backend = Backend::faulty(Backend::IoUring, plan);
    let opened = common::within(HANG, move || Engine::open(config).map(drop))
        .expect("open hangs after a panic during recovery");
    match opened {
        Err(Error::ShardFailed {
            shard: ShardId(0),
            cause,
        }) => {
            assert!(cause.to_string().contains("panic"), "{cause}")
        }
        other => panic!("expected ShardFailed, got {other:?}"),
    }
}

#[test]
fn a_failed_ring_stops_the_shard_without_spinning_and_close_returns() {
    let dir = test_dir();
    let mut config = store_with_records(dir.path(), 10);
    let mut plan = FaultPlan::new(5, libc::EBADF);
    plan.effect = FaultEffect::RingFails;
    config.backend = Backend::faulty(Backend::IoUring, plan);
    let engine = Engine::open(config.clone()).unwrap();
    let ch = engine.register("c").unwrap();
    let answered = common::within(HANG, move || {
        let mut acked = 0;
        for i in 0..100u8 {
            match ch.append(&[i]) {
                Ok(_) => acked += 1,
                Err(Error::ShardFailed { .. }) => return (acked, ch),
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        panic!("the planned ring failure never happened");
    })
    .expect("an append hangs after the ring failed");
    let (acked, ch) = answered;
    // A failed shard waits for requests; it does not spin on its broken ring.
    let ticks = || common::thread_cpu_ticks("corewal-shard-0").expect("the shard thread");
    let before = ticks();
    std::thread::sleep(Duration::from_millis(500));
    let used = ticks() - before;
    let per_second = common::clock_ticks_per_second();
    assert!(
        used * 5 < per_second / 2,
        "the failed shard used {used} of {} ticks in 0.5 s",
        per_second / 2
    );
    assert!(matches!(ch.append(b"late"), Err(Error::ShardFailed { .. })));
    drop(ch);
    let closed = common::within(HANG, move || engine.close()).expect("close hangs");
    assert!(closed.is_err(), "close hid the failure");
    assert!(records_after_reopen(&config, "c") >= 10 + acked);
}

#[test]
fn a_sync_whose_wait_failed_never_meets_its_completion_later() {
    // The first operation the shard waits for alone (the sync of what
    // recovery replayed) meets a failed io_uring_enter, then completes
    // anyway: the shard must have stopped using the ring, not take the late
    // completion for a surprise.
    let dir = test_dir();
    let mut config = store_with_records(dir.path(), 10);
    // Without a manifest (a store written before manifests existed) nothing
    // says the replayed commits are durable: the open syncs them first.
    std::fs::remove_file(common::manifest_path(dir.path(), 0)).unwrap();
    let mut plan = FaultPlan::new(1, libc::EINVAL);
    plan.effect = FaultEffect::RingFailsOnce;
    config.backend = Backend::faulty(Backend::IoUring, plan);
    let outcome = common::within(HANG, move || {
        let engine = match Engine::open(config) {
            Ok(e) => e,
            Err(e) => return Err(e),
        };
        let ch = engine.register("c");
        let mut answers = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(20));
            answers.push(engine.register("c").map(drop));
        }
        let closed = engine.close();
        Ok((ch.map(drop), answers, closed))
    })
    .expect("the engine hangs after a failed wait");
    match outcome {
        // The failure surfaced at open: fine, if it names the ring.
        Err(e) => assert!(e.to_string().contains("io_uring_enter"), "{e}"),
        Ok((first, answers, closed)) => {
            for a in std::iter::once(first).chain(answers) {
                assert!(
                    matches!(a, Err(Error::ShardFailed { .. }) | Ok(())),
                    "{a:?}"
                );
            }
            assert!(closed.is_err(), "close hid the failure");
        }
    }
}

#[test]
fn close_returns_the_error_of_a_failed_final_sync() {
    use corewal::sim::{SimDisk, SimFault};
    let dir = test_dir();
    let disk = SimDisk::new(7);
    let mut config = small_config(dir.path(), 1, Backend::Simulated(disk.clone()));
    config.durability = corewal::Durability::Periodic {
        interval: Duration::from_secs(60),
    };
    let engine = Engine::open(config).unwrap();
    let ch = engine.register("c").unwrap();
    for i in 0..10u8 {
        ch.append(&[i]).unwrap();
    }
    // The next operation is close's data sync of the unsynced appends.
    disk.plan(disk.stats().ops + 1, SimFault::Error(libc::EIO));
    drop(ch);
    match engine.close() {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        Ok(()) => panic!("close returned Ok after its final sync failed"),
    }
}

#[test]
fn appends_behind_a_pending_drop_learn_of_it_only_once_it_is_durable() {
    // An unregister and an append queued behind it; the drop's commit
    // fails (slowly). The append must not have been told "dropped": after a
    // reopen the channel is there.
    let mut found = false;
    for fail_op in 1..=8 {
        let dir = test_dir();
        let mut config = small_config(dir.path(), 1, Backend::IoUring);
        let mut plan = FaultPlan::new(fail_op, libc::EIO);
        plan.completion_delay = Duration::from_millis(200);
        config.backend = Backend::faulty(Backend::IoUring, plan);
        let engine = Engine::open(config.clone()).unwrap();
        let Ok(ch) = engine.register("x") else {
            continue;
        };
        if ch.append(b"first").is_err() {
            continue;
        }
        let noop = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(noop);
        use std::future::Future;
        let mut drop_fut = engine.unregister_async("x").unwrap();
        let polled = std::pin::Pin::new(&mut drop_fut).poll(&mut cx);
        let mut append_fut = ch.append_async(b"second".to_vec()).unwrap();
        let append_polled = std::pin::Pin::new(&mut append_fut).poll(&mut cx);
        let dropped = match polled {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => drop_fut.wait(),
        };
        let appended = match append_polled {
            std::task::Poll::Ready(r) => r,
            std::task::Poll::Pending => append_fut.wait(),
        };
        let next = ch.next_offset();
        drop(ch);
        let _ = engine.close();
        if dropped.is_ok() {
            continue;
        }
        // The drop's commit failed.
        found = true;
        assert!(
            !matches!(appended, Err(Error::ChannelDropped { .. })),
            "fail_op {fail_op}: the append was told the channel is dropped, but the drop failed"
        );
        assert!(
            !matches!(next, Err(Error::ChannelDropped { .. })),
            "fail_op {fail_op}: next_offset said dropped, but the drop failed"
        );
        assert_eq!(records_after_reopen(&config, "x"), 1, "fail_op {fail_op}");
        break;
    }
    assert!(found, "no planned fault hit the drop's commit");
}

/// A reclamation whose carried state spans several commits, with the WAL
/// at its limit so that relocated records are read back from the WAL
/// (payload budget 0): a failed write anywhere in it stops the shard for
/// good. No commit may be written after the failed one — a later commit
/// beside the hole it leaves would make the next open refuse the store —
/// and the reopen finds every acknowledged record.
#[test]
fn nothing_is_written_after_a_failure_during_a_reclamation() {
    // The operations around the first relocation of a clean run: past the
    // limit, the straggler's record is read back and written again, and
    // the state of the 2,000 channels carried forward.
    let first = reclaiming_run(None).expect("the fault-free run relocates");
    for fail_op in first.saturating_sub(4)..first + 20 {
        reclaiming_run(Some(fail_op));
    }
}

/// One shard, 1 MiB segments, an 8 MiB limit, 48 KiB commits and no
/// payload in memory: 2,000 channels registered, then one channel appends
/// 8 KiB records checkpointing each, while a straggler keeps one record.
/// With `fail_op`, that operation fails; after the run the store is
/// reopened without faults and must hold every acknowledged record.
/// Returns the commit count when a relocation first read the WAL.
fn reclaiming_run(fail_op: Option<u64>) -> Option<u64> {
    let dir = test_dir();
    let mut config = small_config(dir.path(), 1, Backend::IoUring);
    config.wal_bytes_max = Some(8 << 20);
    config.commit_bytes_max = 48 << 10;
    config.record_bytes_max = 16 << 10;
    config.buffer_bytes_max = 0;
    let clean = config.clone();
    if let Some(op) = fail_op {
        let mut plan = FaultPlan::new(op, libc::EIO);
        plan.shard = Some(ShardId(0));
        config.backend = Backend::faulty(Backend::IoUring, plan);
    }
    let mut first_carry = None;
    let mut fast_acked = Vec::new();
    let mut straggler_acked = false;
    {
        let engine = Engine::open(config).unwrap();
        let registered = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let engine = &engine;
                    s.spawn(move || {
                        (0..500).all(|i| engine.register(&format!("idle-{t}-{i}")).is_ok())
                    })
                })
                .collect();
            handles.into_iter().all(|h| h.join().unwrap())
        });
        let mut run = || -> Result<(), Error> {
            let slow = engine.register("straggler")?;
            slow.append(b"kept")?;
            straggler_acked = true;
            let fast = engine.register("fast")?;
            for i in 0..1_500u32 {
                let off = fast.append(&[i as u8; 8 << 10])?;
                fast_acked.push(off.0);
                fast.checkpoint(off)?;
                let m = engine.metrics();
                if first_carry.is_none() && m.wal_reads > 0 {
                    first_carry = Some(m.commits);
                }
            }
            Ok(())
        };
        let result = if registered {
            run()
        } else {
            Err(Error::Closed)
        };
        if fail_op.is_none() {
            result.unwrap();
        }
        let _ = engine.close();
    }
    // The store opens in the default mode, with what was acknowledged.
    let engine = Engine::open(clean).unwrap_or_else(|e| {
        panic!("fault at operation {fail_op:?}: the reopen refused the store: {e}")
    });
    if straggler_acked {
        let s = engine.register("straggler").unwrap().read(..).unwrap();
        assert_eq!(s.len(), 1, "fault at {fail_op:?}");
        assert_eq!(&s[0].data[..], b"kept");
    }
    if let Some(last) = fast_acked.last() {
        let fast = engine.register("fast").unwrap();
        assert!(
            fast.next_offset().unwrap().0 > *last,
            "fault at {fail_op:?}"
        );
    }
    engine.close().unwrap();
    first_carry
}
