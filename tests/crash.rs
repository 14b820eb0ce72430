//! A real writer process killed with SIGKILL at a random moment; every
//! acknowledgement it reported must survive the reopen, byte for byte, at
//! the same offset.
//!
//! The child is this test binary itself, running the ignored test
//! `child_writer` with `COREWAL_CHILD_DIR` set. It reports on stdout:
//! `reg NAME` when a registration returned and `ack NAME OFFSET` when an
//! append returned. Payloads are a function of (name, offset), so the parent
//! checks every record it reads back, acknowledged or not.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{payload, small_config, test_dir, Rng};
use corewal::{Backend, Engine, Offset};

const RECORD_BYTES_MAX: usize = 2000;

fn backend_from_env() -> Backend {
    match std::env::var("COREWAL_CHILD_BACKEND").as_deref() {
        Ok("portable") => Backend::Portable,
        _ => Backend::IoUring,
    }
}

#[test]
#[ignore = "helper: the writer process of the SIGKILL tests"]
fn child_writer() {
    let Some((dir, seed)) = common::child_args() else {
        return;
    };
    let engine = Engine::open(small_config(dir.as_ref(), 2, backend_from_env())).unwrap();
    let say = |line: String| common::report(&line);
    say("ready".into());
    std::thread::scope(|s| {
        for t in 0..6u64 {
            let (engine, say) = (&engine, &say);
            s.spawn(move || {
                let mut rng = Rng(seed ^ ((t + 1) * 0x9E37));
                let mut mine = Vec::new();
                loop {
                    // Now and then a channel is registered mid-run; some
                    // names are shared with other threads.
                    if mine.is_empty() || rng.below(50) == 0 {
                        let name = format!("ch-{}", rng.below(40));
                        let ch = engine.register(&name).unwrap();
                        say(format!("reg {name}"));
                        mine.push(ch);
                    }
                    let ch = &mine[rng.below(mine.len() as u64) as usize];
                    let next = ch.next_offset().unwrap().0;
                    // The payload depends on the offset, which is only known
                    // after the append; other threads may append to the same
                    // channel, so append what the offset will most likely be
                    // and report what it was.
                    let data = payload(ch.name(), next, RECORD_BYTES_MAX);
                    let off = ch.append(&data).unwrap();
                    say(format!("ack {} {} {}", ch.name(), off.0, next));
                }
            });
        }
    });
}

/// The expected state: per channel, offset → the offset whose payload was
/// written there (the writer guessed the offset; see `child_writer`).
#[derive(Default)]
struct Model {
    registered: std::collections::HashSet<String>,
    acked: HashMap<String, HashMap<u64, u64>>,
}

fn run_cycle(dir: &std::path::Path, backend: Backend, seed: u64, model: &mut Model) -> usize {
    let mut rng = Rng(seed);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COREWAL_CHILD_DIR", dir)
        .env("COREWAL_CHILD_SEED", seed.to_string())
        .env(
            "COREWAL_CHILD_BACKEND",
            if backend == Backend::Portable {
                "portable"
            } else {
                "io_uring"
            },
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // Wait for the child to be up, then let it run 0–150 ms more.
    let started = Instant::now();
    for line in lines.by_ref() {
        // The test harness may print "test child_writer ... " before it.
        if line.unwrap().ends_with("ready") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "child never became ready"
        );
    }
    let kill_after = Duration::from_millis(rng.below(150));
    let kill_at = Instant::now() + kill_after;
    let killer = std::thread::spawn({
        let pid = child.id() as i32;
        move || {
            std::thread::sleep(kill_at.saturating_duration_since(Instant::now()));
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        }
    });
    let mut acks = 0;
    for line in lines {
        let Ok(line) = line else { break };
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["reg", name] => {
                model.registered.insert(name.to_string());
            }
            ["ack", name, off, guessed] => {
                let (off, guessed) = (off.parse().unwrap(), guessed.parse().unwrap());
                model
                    .acked
                    .entry(name.to_string())
                    .or_default()
                    .insert(off, guessed);
                acks += 1;
            }
            // A line cut by the kill.
            _ => {}
        }
    }
    killer.join().unwrap();
    child.wait().unwrap();
    acks
}

fn verify(dir: &std::path::Path, backend: Backend, model: &Model) {
    let engine = Engine::open(small_config(dir, 2, backend)).unwrap();
    for name in &model.registered {
        let ch = engine.register(name).unwrap();
        let records = ch.read(..).unwrap();
        for (k, r) in records.iter().enumerate() {
            assert_eq!(r.offset, Offset(k as u64), "{name}: offsets are dense");
        }
        if let Some(acked) = model.acked.get(name) {
            for (&off, &guessed) in acked {
                let r = records.get(off as usize).unwrap_or_else(|| {
                    panic!(
                        "{name}: acknowledged offset {off} lost ({} records)",
                        records.len()
                    )
                });
                assert_eq!(
                    &r.data[..],
                    &payload(name, guessed, RECORD_BYTES_MAX)[..],
                    "{name}@{off}"
                );
            }
        }
    }
    engine.close().unwrap();
}

#[test]
fn sigkill_during_load_loses_no_acknowledged_append() {
    let seed = common::seed();
    let cycles: u64 = std::env::var("COREWAL_SIGKILL_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let dir = test_dir();
    let mut model = Model::default();
    let mut total_acks = 0;
    for c in 0..cycles {
        let backend = if c % 3 == 2 {
            Backend::Portable
        } else {
            Backend::IoUring
        };
        total_acks += run_cycle(dir.path(), backend, seed.wrapping_add(c), &mut model);
        verify(dir.path(), backend, &model);
    }
    eprintln!(
        "sigkill: {cycles} cycles, {total_acks} acknowledgements checked, {} channels",
        model.registered.len()
    );
    assert!(total_acks > 0, "the child never acknowledged anything");
}
