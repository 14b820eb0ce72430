//! The scenario corewal exists for: a service restarts after a crash and,
//! while the WAL is being replayed, its start-up code registers its channels
//! again — from two components, in different orders, some names twice, plus
//! new names — and appends. No registration may fail, both components must
//! get the same channel for the same name, every acknowledged record must be
//! back at its offset, and appends made during recovery must get offsets
//! after the recovered ones.
//!
//! The writer is this test binary, running the ignored test `child_fanout`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use common::{payload, small_config, test_dir, Rng};
use corewal::{Backend, Engine, Offset};

const CHANNELS: usize = 10_000;
const RECORD_BYTES_MAX: usize = 300;

fn name(i: usize) -> String {
    format!("dml_{i}_v0")
}

#[test]
#[ignore = "helper: the writer process of the re-registration test"]
fn child_fanout() {
    let Some((dir, seed)) = common::child_args() else {
        return;
    };
    let engine = Engine::open(small_config(dir.as_ref(), 2, Backend::IoUring)).unwrap();
    let say = |line: String| common::report(&line);
    let threads = 8;
    std::thread::scope(|s| {
        for t in 0..threads {
            let (engine, say) = (&engine, &say);
            s.spawn(move || {
                // Thread t owns channels t, t+8, …: it alone appends to them,
                // so it knows each offset before appending.
                let mine: Vec<_> = (t..CHANNELS)
                    .step_by(threads)
                    .map(|i| {
                        let ch = engine.register(&name(i)).unwrap();
                        let next = ch.next_offset().unwrap().0;
                        (ch, next)
                    })
                    .collect();
                say(format!("registered {t}"));
                let mut mine = mine;
                let mut rng = Rng(seed ^ (t as u64 + 1));
                loop {
                    let k = rng.below(mine.len() as u64) as usize;
                    let (ch, next) = &mut mine[k];
                    let off = ch
                        .append(&payload(ch.name(), *next, RECORD_BYTES_MAX))
                        .unwrap();
                    assert_eq!(off, Offset(*next));
                    *next += 1;
                    say(format!("ack {} {}", ch.name(), off.0));
                }
            });
        }
    });
}

/// Runs the child until it has registered everything, lets it append for a
/// while, kills it; returns per channel the highest acknowledged offset.
fn crash_cycle(dir: &std::path::Path, seed: u64, acked: &mut HashMap<String, u64>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_fanout",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COREWAL_CHILD_DIR", dir)
        .env("COREWAL_CHILD_SEED", seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut registered = 0;
    let started = Instant::now();
    let mut kill_at = None;
    let kill_after = Duration::from_millis(50 + Rng(seed).below(300));
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if line.contains("registered ") {
            registered += 1;
            if registered == 8 {
                kill_at = Some(Instant::now() + kill_after);
            }
        } else if let Some(rest) = line.strip_prefix("ack ") {
            let mut f = rest.split(' ');
            let (n, off) = (f.next().unwrap(), f.next().unwrap().parse::<u64>().unwrap());
            let e = acked.entry(n.to_string()).or_insert(0);
            *e = (*e).max(off + 1);
        }
        if kill_at.is_some_and(|t| Instant::now() >= t) {
            child.kill().unwrap();
            kill_at = None;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "child stuck");
    }
    child.wait().unwrap();
    assert_eq!(
        registered, 8,
        "the child registered every channel before it was killed"
    );
}

#[test]
fn reregistration_during_recovery_never_fails_or_collides() {
    let seed = common::seed();
    let cycles = common::cycles("COREWAL_REREGISTER_CYCLES", 12);
    let dir = test_dir();
    let mut acked: HashMap<String, u64> = HashMap::new();
    // Offsets of the records this test appended itself (not the child).
    let mut probes_written: HashMap<String, Vec<u64>> = HashMap::new();
    let (mut registrations, mut checked) = (0u64, 0u64);
    for c in 0..cycles {
        crash_cycle(dir.path(), seed.wrapping_add(c), &mut acked);
        // Reopen without waiting for recovery, and register at once.
        let engine = Engine::start(small_config(dir.path(), 2, Backend::IoUring)).unwrap();
        let barrier = Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let registrar = |order: Vec<usize>, new_prefix: &'static str| {
                let (engine, barrier) = (&engine, &barrier);
                move || {
                    barrier.wait();
                    let mut got = HashMap::new();
                    for (k, i) in order.iter().enumerate() {
                        let n = name(*i);
                        let ch = engine.register(&n).expect("registration never fails");
                        if k % 97 == 0 {
                            // Registered twice by the same component.
                            assert_eq!(engine.register(&n).unwrap(), ch);
                        }
                        if k % 1000 == 0 {
                            let fresh = engine.register(&format!("{new_prefix}-{c}-{k}")).unwrap();
                            fresh.append(b"fresh").unwrap();
                        }
                        got.insert(n, ch);
                    }
                    got
                }
            };
            let forward: Vec<usize> = (0..CHANNELS).collect();
            let mut shuffled = forward.clone();
            let mut rng = Rng(seed ^ c);
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.below(i as u64 + 1) as usize);
            }
            let ha = s.spawn(registrar(forward, "new-a"));
            let hb = s.spawn(registrar(shuffled, "new-b"));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        for i in 0..CHANNELS {
            let n = name(i);
            assert_eq!(a[&n], b[&n], "{n}: both components got the same channel");
        }
        registrations += 2 * CHANNELS as u64;
        // Appends made now, possibly while recovery runs, come after the
        // recovered records.
        let probes: Vec<usize> = (0..CHANNELS).step_by(501).collect();
        for &i in &probes {
            let n = name(i);
            let off = a[&n]
                .append(&payload(&n, 1 << 40, RECORD_BYTES_MAX))
                .unwrap();
            let before = acked.get(&n).copied().unwrap_or(0);
            assert!(
                off.0 >= before,
                "{n}: new offset {} collides with acknowledged records (<{before})",
                off.0
            );
            probes_written.entry(n).or_default().push(off.0);
        }
        engine.wait_ready().unwrap();
        for i in 0..CHANNELS {
            let n = name(i);
            let records = a[&n].read(..).unwrap();
            let want = acked.get(&n).copied().unwrap_or(0);
            checked += want;
            assert!(
                records.len() as u64 >= want,
                "{n}: {} records, {want} acknowledged",
                records.len()
            );
            for r in &records {
                let probe = probes_written
                    .get(&n)
                    .is_some_and(|v| v.contains(&r.offset.0));
                let expect = payload(
                    &n,
                    if probe { 1 << 40 } else { r.offset.0 },
                    RECORD_BYTES_MAX,
                );
                assert_eq!(&r.data[..], &expect[..], "{n}@{}", r.offset.0);
            }
        }
        for (n, offs) in &probes_written {
            let e = acked.entry(n.clone()).or_insert(0);
            *e = (*e).max(offs.iter().max().unwrap() + 1);
        }
        engine.close().unwrap();
    }
    common::say(&format!(
        "reregister: {cycles} kill points, {registrations} registrations during recovery (0 failed, \
         both registrars got the same channel for every name), {checked} acknowledged records checked (lost 0)"
    ));
}
