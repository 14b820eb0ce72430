//! The writer child process of the crash and power-cut tests, and the
//! parent's model of what it acknowledged.
//!
//! The child is the test binary itself, running its ignored test
//! `child_writer` with `COREWAL_CHILD_DIR` set. It reports on stdout:
//! `reg NAME` when a registration returned and `ack NAME OFFSET GUESS` when
//! an append returned. Payloads are a function of (name, offset), so the
//! parent checks every record it reads back, acknowledged or not.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use corewal::{Backend, Engine, Offset};

use super::{payload, report, small_config, Rng};

/// Largest payload the writer appends.
pub const RECORD_BYTES_MAX: usize = 2000;

/// The child's body: six threads registering channels now and then and
/// appending to them, reporting every answer, until killed.
pub fn child_writer_main() {
    let Some((dir, seed)) = super::child_args() else {
        return;
    };
    let backend = match std::env::var("COREWAL_CHILD_BACKEND").as_deref() {
        Ok("portable") => Backend::Portable,
        _ => Backend::IoUring,
    };
    let engine = Engine::open(small_config(dir.as_ref(), 2, backend.clone())).unwrap();
    let say = |line: String| report(&line);
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

/// What the parent knows: per channel, offset → the offset whose payload was
/// written there (the writer guessed the offset; see `child_writer_main`).
#[derive(Default)]
pub struct Model {
    /// Channels whose registration returned.
    pub registered: HashSet<String>,
    /// Acknowledgements that must survive.
    pub acked: HashMap<String, HashMap<u64, u64>>,
    /// Acknowledgements read after a power cut began: they may or may not
    /// have reached the disk (counted apart, as Jepsen does).
    pub indeterminate: HashMap<String, HashMap<u64, u64>>,
}

/// A running writer child and its report lines.
pub struct Writer {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

/// Starts the writer child on `dir` and waits until its engine is open.
pub fn spawn_writer(dir: &Path, backend: Backend, seed: u64) -> Writer {
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
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
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
    Writer { child, lines }
}

/// Reads the child's reports until its stdout closes. `after_cut()` tells
/// whether a power cut had begun when a line was read: such
/// acknowledgements go to `indeterminate`. Returns the acknowledgements read.
pub fn read_reports(writer: &mut Writer, model: &mut Model, after_cut: impl Fn() -> bool) -> usize {
    let mut acks = 0;
    for line in writer.lines.by_ref() {
        let Ok(line) = line else { break };
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["reg", name] => {
                model.registered.insert(name.to_string());
            }
            ["ack", name, off, guessed] => {
                let (off, guessed) = (off.parse().unwrap(), guessed.parse().unwrap());
                let into = if after_cut() {
                    &mut model.indeterminate
                } else {
                    &mut model.acked
                };
                into.entry(name.to_string())
                    .or_default()
                    .insert(off, guessed);
                acks += 1;
            }
            // A line cut by the kill.
            _ => {}
        }
    }
    acks
}

/// What a verification found of the indeterminate acknowledgements.
#[derive(Debug, Default, Clone, Copy)]
pub struct Indeterminate {
    pub present: usize,
    pub absent: usize,
}

/// Reopens `dir` and checks every acknowledged record, byte for byte, at its
/// offset; every record read back must be one the writer wrote there.
/// Indeterminate acknowledgements found present become acknowledged (later
/// cycles must keep them); absent ones are forgotten.
pub fn verify(dir: &Path, backend: Backend, model: &mut Model) -> Indeterminate {
    let engine = Engine::open(small_config(dir, 2, backend.clone())).unwrap();
    let mut found = Indeterminate::default();
    let mut survived = Vec::new();
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
        if let Some(maybe) = model.indeterminate.get(name) {
            for (&off, &guessed) in maybe {
                match records.get(off as usize) {
                    Some(r) => {
                        assert_eq!(
                            &r.data[..],
                            &payload(name, guessed, RECORD_BYTES_MAX)[..],
                            "{name}@{off} (indeterminate)"
                        );
                        found.present += 1;
                        survived.push((name.clone(), off, guessed));
                    }
                    None => found.absent += 1,
                }
            }
        }
    }
    engine.close().unwrap();
    // What survived now must survive every later cut; what did not is gone
    // and its offsets may be taken by later appends.
    model.indeterminate.clear();
    for (name, off, guessed) in survived {
        model.acked.entry(name).or_default().insert(off, guessed);
    }
    found
}
