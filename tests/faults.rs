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
use corewal::{Backend, Engine, Error, FaultPlan, Offset, SyncMethod};

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
    let dir = test_dir();
    let mut config = small_config(dir.path(), 2, Backend::IoUring);
    let names = {
        let engine = Engine::open(config.clone()).unwrap();
        let n = names_per_shard(&engine);
        engine.close().unwrap();
        n
    };
    config.sync_method = sync_method;
    config.backend = Backend::FaultInjection(FaultPlan {
        shard: Some(0),
        fail_op,
        errno,
        in_sync,
    });
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
                                assert_eq!(shard, 0);
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
        Arc::try_unwrap(engine).unwrap().close().unwrap();
    }
    // Reopen without faults: everything acknowledged is there.
    config.backend = Backend::IoUring;
    let engine = Engine::open(config).unwrap();
    for name in &names {
        let records = engine.register(name).unwrap().read(..).unwrap();
        let want = acked.lock().unwrap().get(name).cloned().unwrap_or_default();
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
fn enospc_is_reported_with_its_cause() {
    fail_stop_case(libc::ENOSPC, SyncMethod::DsyncWrite, 3, false);
}

#[test]
fn a_fault_before_anything_is_acknowledged_still_answers_everyone() {
    fail_stop_case(libc::EIO, SyncMethod::DsyncWrite, 1, false);
}
