//! The writer child process of the crash and power-cut tests, and the
//! parent's model of what it acknowledged.
//!
//! The child is the test binary itself, running its ignored test
//! `child_writer` with `COREWAL_CHILD_DIR` set. It reports on stdout:
//! `reg NAME` when a registration returned and `ack NAME OFFSET GUESS` when
//! an append returned. Payloads are a function of (name, offset), so the
//! parent checks every record it reads back, acknowledged or not.
//!
//! One more thread owns the channels `own-0` and `own-1` alone and also
//! checkpoints and truncates them. It says what it is about to do before
//! doing it (`put? NAME OFFSET KEY`, `ckpt? NAME THROUGH`, `trunc? NAME
//! FROM`) and what returned after (`put …`, `ckpt …`, `trunc …`), so that
//! the parent knows which changes are certain and which are in doubt. Its
//! payloads are a function of (name, key), with a key used once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use corewal::{Backend, Engine, Offset};

use super::{payload, report, small_config, Rng};

/// Largest payload the writer appends.
pub const RECORD_BYTES_MAX: usize = 2000;
/// Largest payload of the owner thread in a reclaiming writer (see
/// [`spawn_writer`]): records large enough to fill segments quickly.
pub const RECLAIM_RECORD_BYTES_MAX: usize = 30_000;

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
    // A reclaiming writer: only the owner thread, which checkpoints its
    // channels through their last record often, with the smallest space
    // limit, so that segments are reclaimed and recycled (and the kill
    // lands in the middle of that) every few dozen records.
    let reclaim = std::env::var_os("COREWAL_CHILD_RECLAIM").is_some();
    let mut config = small_config(dir.as_ref(), 2, backend.clone());
    // Index snapshots every 128 KiB of WAL: the kill lands before, during
    // and after writing them, and the reopen replays from the last.
    config.snapshot_every_bytes = 128 << 10;
    if reclaim {
        config.wal_bytes_max = Some(4 << 20);
    }
    let engine = Engine::open(config).unwrap();
    let say = |line: String| report(&line);
    say("ready".into());
    std::thread::scope(|s| {
        for t in 0..if reclaim { 0 } else { 6u64 } {
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
        s.spawn(|| owner_thread(&engine, seed, reclaim, &say));
    });
}

/// The channels the owner thread alone writes.
const OWNED: [&str; 2] = ["own-0", "own-1"];

/// Appends to, checkpoints and truncates the owned channels, saying before
/// and after each change (see the module docs). `reclaim`: larger records,
/// and a checkpoint through the last record one time in eight.
fn owner_thread(engine: &Engine, seed: u64, reclaim: bool, say: &impl Fn(String)) {
    let mut rng = Rng(seed ^ 0x0DD5);
    let channels: Vec<_> = OWNED.iter().map(|n| engine.register(n).unwrap()).collect();
    // Keys unique across the writer processes of a store: the seed differs
    // per process.
    let mut key = (seed & 0xFFFF_FFFF) << 24;
    loop {
        let ch = &channels[rng.below(2) as usize];
        let (first, next) = (ch.first_offset().unwrap().0, ch.next_offset().unwrap().0);
        let max = if reclaim {
            RECLAIM_RECORD_BYTES_MAX
        } else {
            RECORD_BYTES_MAX
        };
        match rng.below(if reclaim { 8 } else { 24 }) {
            0 if next > first => {
                let through = if reclaim {
                    next - 1
                } else {
                    first + rng.below(next - first)
                };
                say(format!("ckpt? {} {through}", ch.name()));
                ch.checkpoint(Offset(through)).unwrap();
                say(format!("ckpt {} {through}", ch.name()));
            }
            1 if !reclaim || rng.below(3) == 0 => {
                // Up to the last 8 records.
                let from = next - rng.below((next - first).min(8) + 1);
                say(format!("trunc? {} {from}", ch.name()));
                ch.truncate_from(Offset(from)).unwrap();
                say(format!("trunc {} {from}", ch.name()));
            }
            _ => {
                key += 1;
                say(format!("put? {} {next} {key}", ch.name()));
                let off = ch.append(&payload(ch.name(), key, max)).unwrap();
                assert_eq!(off.0, next, "the owner is the channel's only writer");
                say(format!("put {} {next} {key}", ch.name()));
            }
        }
    }
}

/// What the parent knows of an owned channel.
#[derive(Default, Debug)]
pub struct Owned {
    /// Offset → key of the records whose append returned (before any cut):
    /// each must be there unless checkpointed.
    pub acked: BTreeMap<u64, u64>,
    /// Offset → keys that may be there: appends begun but not known to have
    /// returned, and records a truncation in doubt may have removed.
    pub maybe: BTreeMap<u64, Vec<u64>>,
    /// The first offset is at least this (checkpoints that returned) …
    pub first_at_least: u64,
    /// … and at most this (checkpoints begun).
    pub first_at_most: u64,
}

impl Owned {
    /// Applies one report line; `certain`: it was read before any cut.
    fn report(&mut self, what: &str, offset: u64, key: Option<u64>, certain: bool) {
        match (what, key) {
            ("put?", Some(k)) => self.maybe.entry(offset).or_default().push(k),
            ("put", Some(k)) if certain => {
                self.acked.insert(offset, k);
            }
            ("ckpt?", _) => self.first_at_most = self.first_at_most.max(offset + 1),
            ("ckpt", _) if certain => {
                self.first_at_least = self.first_at_least.max(offset + 1);
                self.acked = self.acked.split_off(&self.first_at_least);
            }
            ("trunc?", _) => {
                // Removed or not: the records from `offset` on are in doubt.
                for (o, k) in self.acked.split_off(&offset) {
                    self.maybe.entry(o).or_default().push(k);
                }
            }
            ("trunc", _) if certain => {
                self.acked.split_off(&offset);
                self.maybe.split_off(&offset);
            }
            _ => {}
        }
    }
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
    /// The owned channels, with their checkpoints and truncations.
    pub owned: HashMap<String, Owned>,
    /// Checkpoints and truncations that returned before any cut.
    pub changes: usize,
    /// The owned channels' largest payload (0: `RECORD_BYTES_MAX`).
    pub owned_record_max: usize,
}

impl Model {
    /// The model of a reclaiming writer (see [`spawn_writer`]).
    pub fn reclaiming() -> Model {
        Model {
            owned_record_max: RECLAIM_RECORD_BYTES_MAX,
            ..Model::default()
        }
    }
}

/// A running writer child and its report lines.
pub struct Writer {
    pub child: Child,
    pub lines: Lines<BufReader<ChildStdout>>,
}

/// Starts the writer child on `dir` and waits until its engine is open.
/// `reclaim`: only the owner thread, checkpointing often under the smallest
/// space limit, so that segments are reclaimed and recycled as it runs.
pub fn spawn_writer(dir: &Path, backend: Backend, seed: u64, reclaim: bool) -> Writer {
    let mut command = Command::new(std::env::current_exe().unwrap());
    if reclaim {
        command.env("COREWAL_CHILD_RECLAIM", "1");
    }
    let mut child = command
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
/// acknowledgements go to `indeterminate`. `acked`, when given, is set once
/// the first acknowledgement was read. Returns the acknowledgements read.
pub fn read_reports(
    writer: &mut Writer,
    model: &mut Model,
    acked: Option<&AtomicBool>,
    after_cut: impl Fn() -> bool,
) -> usize {
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
            [what @ ("put?" | "put" | "ckpt?" | "ckpt" | "trunc?" | "trunc"), name, offset, rest @ ..] =>
            {
                let (Ok(offset), key) = (offset.parse(), rest.first().map(|k| k.parse())) else {
                    continue;
                };
                let key = match key {
                    Some(Ok(k)) => Some(k),
                    Some(Err(_)) => continue,
                    None => None,
                };
                if key.is_none() != what.starts_with(['c', 't']) {
                    continue; // a line cut by the kill
                }
                let certain = !after_cut();
                model.changes += usize::from(certain && matches!(*what, "ckpt" | "trunc"));
                acks += usize::from(*what == "put");
                model
                    .owned
                    .entry(name.to_string())
                    .or_default()
                    .report(what, offset, key, certain);
            }
            // A line cut by the kill.
            _ => {}
        }
        if acks > 0 {
            if let Some(a) = acked {
                a.store(true, Ordering::SeqCst);
            }
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
    let record_max = match model.owned_record_max {
        0 => RECORD_BYTES_MAX,
        n => n,
    };
    for (name, owned) in &mut model.owned {
        verify_owned(&engine, name, owned, record_max);
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

/// Checks an owned channel after a reopen: its first offset within what the
/// checkpoints allow, every acknowledged record above it, and nothing that
/// was not written there (a truncated record that came back is caught: its
/// key is in neither map). Then adopts what was found.
fn verify_owned(engine: &Engine, name: &str, owned: &mut Owned, record_max: usize) {
    let ch = engine.register(name).unwrap();
    let first = ch.first_offset().unwrap().0;
    assert!(
        (owned.first_at_least..=owned.first_at_most.max(owned.first_at_least)).contains(&first),
        "{name}: first offset {first}, checkpoints allow {}..={}",
        owned.first_at_least,
        owned.first_at_most
    );
    let records = ch.read(..).unwrap();
    let mut found = BTreeMap::new();
    for (k, r) in records.iter().enumerate() {
        let o = r.offset.0;
        assert_eq!(
            o,
            first + k as u64,
            "{name}: offsets are dense from the first"
        );
        let is = |key: &u64| r.data[..] == payload(name, *key, record_max)[..];
        let key = owned
            .acked
            .get(&o)
            .filter(|k| is(k))
            .or_else(|| owned.maybe.get(&o).and_then(|ks| ks.iter().find(|k| is(k))))
            .unwrap_or_else(|| {
                panic!("{name}@{o}: a record that was not written there (or was truncated)")
            });
        found.insert(o, *key);
    }
    for (&o, &k) in owned.acked.range(first..) {
        assert_eq!(
            found.get(&o),
            Some(&k),
            "{name}@{o}: acknowledged record lost"
        );
    }
    owned.acked = found;
    owned.maybe.clear();
    owned.first_at_least = first;
    owned.first_at_most = first;
}
