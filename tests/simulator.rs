//! The model-based checker on the simulated disk (`Backend::Simulated`).
//!
//! Each seed runs a few sessions against one store. A session opens the
//! engine, checks every channel against a simple model, runs a random
//! workload (register, append, batch append, unregister, reopen) with a
//! fault planned at a random write or sync — a power cut, `EIO`, `ENOSPC`, a
//! short write, a misdirected write — then closes and cuts the power (every
//! write not yet synced keeps all, none or a torn prefix of its sectors).
//! Between sessions a bit may decay at rest, or a sector may become
//! unreadable or read back wrong.
//!
//! After every recovery the promises must hold: every acknowledged record is
//! there with its offset and bytes; records whose append failed appear at most
//! once, in order, after the acknowledged ones, or not at all; nothing else
//! appears; a dropped channel stays dropped and its name's offsets go on.
//! Damage of acknowledged data (decay, a bad read, a misdirected write) must
//! make the open fail or be reported by `Engine::recovery_damage` — a loss
//! with neither is a failure; after a power cut alone the open must succeed
//! and lose nothing.
//!
//! `COREWAL_SIM_SEEDS` (default 2,000) sets the number of seeds;
//! `COREWAL_SEED=S COREWAL_SIM_SEEDS=1` replays seed `S` alone.

mod common;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{cycles, say, seed, Rng};
use corewal::sim::{FsOp, SimDisk, SimFault, SimReadFault, SIM_SECTOR_BYTES};
use corewal::{
    Backend, Channel, Config, Durability, Engine, Error, Offset, Subscription, SyncMethod,
};
use corewal_engine::store::route;

const NAMES: [&str; 12] = [
    "orders", "audit", "dml_1_v0", "dml_2_v0", "dml_3_v0", "metrics", "events", "tmp", "a", "b",
    "c", "ledger",
];

/// What the model knows of one name.
#[derive(Debug, Default, Clone)]
struct Chan {
    /// A register or unregister of the name failed: either state may hold.
    unsure: bool,
    /// Registered (as far as the acknowledged operations go).
    live: bool,
    /// Offset of the first record of the current incarnation.
    base: u64,
    /// Acknowledged records of the current incarnation, from `base`.
    acked: Vec<Vec<u8>>,
    /// Records whose append failed, in order of submission.
    pending: Vec<Vec<u8>>,
    /// Records (acknowledged or not) that the last recovery did not return
    /// while their shard has written nothing since: what recovery found
    /// torn is zeroed only before the shard's next write, so a damage that
    /// was only in the reading may let them come back — at their offsets,
    /// in order — until then.
    lost: Vec<Vec<u8>>,
    /// Every record ever written to the name, by offset (acknowledged or
    /// not; an offset can hold different records after a cut of damaged
    /// acknowledged ones).
    written: HashMap<u64, Vec<Vec<u8>>>,
    /// A recovery rolled the name back past what the model can follow (a
    /// damaged last commit held a drop, say): until the shard writes, only
    /// "nothing invented" is checked.
    loose: bool,
    /// A checkpoint through this offset minus one failed: the first offset
    /// may have moved up to here, or not.
    maybe_first: Option<u64>,
}

impl Chan {
    fn next(&self) -> u64 {
        self.base + self.acked.len() as u64
    }

    fn wrote(&mut self, offset: u64, data: &[u8]) {
        self.written.entry(offset).or_default().push(data.to_vec());
    }

    /// Records failed from the next offset on.
    fn failed(&mut self, records: impl IntoIterator<Item = Vec<u8>>) {
        for r in records {
            let at = self.next() + self.pending.len() as u64;
            self.wrote(at, &r);
            self.pending.push(r);
        }
    }

    /// A checkpoint through `through` returned: the records up to it are
    /// gone, for good.
    fn checkpointed(&mut self, through: u64) {
        let n = (through + 1).saturating_sub(self.base) as usize;
        self.acked.drain(..n.min(self.acked.len()));
        self.base = self.base.max(through + 1);
    }

    /// A truncation from `from` returned: the records from it on are gone
    /// for good (their old contents stay in `written`, so that only the
    /// excused checks, after reported damage, would let them back).
    fn truncated(&mut self, from: u64) {
        self.acked.truncate((from - self.base) as usize);
        self.lost.clear();
        self.pending.clear();
    }

    /// A truncation from `from` failed: it may have been written, so the
    /// records from it on may exist, or not.
    fn truncate_failed(&mut self, from: u64) {
        let mut maybe = self.acked.split_off((from - self.base) as usize);
        maybe.append(&mut self.lost);
        maybe.append(&mut self.pending);
        self.pending = maybe;
    }

    /// Records acknowledged from offset `first` on.
    fn acknowledged(&mut self, first: u64, records: impl IntoIterator<Item = Vec<u8>>) {
        for (i, r) in records.into_iter().enumerate() {
            self.wrote(first + i as u64, &r);
            self.acked.push(r);
        }
    }
}

#[derive(Debug, Default)]
struct Totals {
    sessions: u64,
    /// Index snapshots written, used by an open, ignored by one (damaged,
    /// or not matching the log).
    snapshots_written: u64,
    snapshots_used: u64,
    snapshots_ignored: u64,
    snapshots_damaged: u64,
    acked: u64,
    checked: u64,
    power_cuts: u64,
    torn: u64,
    faults: u64,
    damage_injected: u64,
    detected_open: u64,
    reported_loss: u64,
    pending_appeared: u64,
    /// Appends refused with `NoSpace` (a fault in making the next segment):
    /// nothing written, no offset taken, the shard goes on.
    no_space: u64,
    /// Checkpoints and truncations that returned.
    checkpoints: u64,
    truncations: u64,
    in_flight_most: u64,
    process_crashes: u64,
    unsynced_loss: u64,
    periodic_seeds: u64,
    /// Sessions opened after a process crash whose power cut came after
    /// they had acknowledged on top of what the crash left unsynced.
    crash_then_cut: u64,
    /// Filesystem operations (creations, renames, removals, syncs, writes
    /// outside the ring) the disk watched.
    fs_ops: u64,
    /// Power cuts during them, per kind (`FsOp::ALL` order).
    cuts_in_fs: [u64; 6],
    /// Creations, renames and removals the power cuts took back.
    names_undone: u64,
    /// Segments reclaimed and recycled, records relocated and state entries
    /// carried forward, over every session.
    reclaimed: u64,
    recycled: u64,
    relocated: u64,
    carried: u64,
    /// Reads checked while sessions ran, and the reads of the WAL the
    /// sessions made (payloads not in memory).
    reads: u64,
    wal_reads: u64,
    /// Records subscriptions yielded (each checked against the model), and
    /// subscriptions ended as the model said: truncated below them, or
    /// their channel dropped.
    subscribed: u64,
    subscriptions_truncated: u64,
    subscriptions_dropped: u64,
}

/// A subscription while a session runs. `clean`: nothing of it is on its
/// way or fetched and not yielded (it fetches one record at a time, and its
/// last call yielded one), so the shard's position is its own.
struct Sub {
    sub: Subscription,
    clean: bool,
    /// It has asked its shard (a subscription not yet read is unknown
    /// there: a start past the channel's end is refused as such).
    started: bool,
}

/// Longest a subscription is waited on for a record the model says is there.
const SUB_WAIT: Duration = Duration::from_secs(20);

impl Sub {
    /// A subscription of `ch` from a random live offset of `m`, fetching
    /// one record at a time.
    fn new(ch: &Channel, m: &Chan, rng: &mut Rng) -> Sub {
        let from = m.base + rng.below(m.acked.len() as u64 + 1);
        Sub {
            sub: ch.subscribe(Offset(from)).read_ahead(0),
            clean: true,
            started: false,
        }
    }

    /// A step: it yields exactly the acknowledged records from where it
    /// stands, in order, each as the model has it, and none more; caught up,
    /// it may be left waiting in the shard. `Ok(false)`: an error after the
    /// planned fault (`faulted`) ended it.
    fn step(
        &mut self,
        name: &str,
        m: &Chan,
        rng: &mut Rng,
        faulted: &dyn Fn() -> bool,
        totals: &mut Totals,
    ) -> Result<bool, String> {
        for _ in 0..1 + rng.below(64) {
            let expect = self.sub.position().0.max(m.base);
            let there = expect < m.next();
            if !there && self.clean && rng.below(2) == 0 {
                // Caught up, and not waiting in the shard.
                break;
            }
            let wait = if there { SUB_WAIT } else { Duration::ZERO };
            self.started = true;
            match self.sub.next_timeout(wait) {
                Ok(Some(r)) => {
                    self.clean = true;
                    let want = m.acked.get((expect - m.base) as usize);
                    if r.offset.0 != expect || want.is_none_or(|w| w[..] != r.data[..]) {
                        return Err(format!(
                            "{name}: a subscription yielded offset {} with {} bytes, \
                             expected offset {expect} with {:?} bytes",
                            r.offset.0,
                            r.data.len(),
                            want.map(|w| w.len())
                        ));
                    }
                    totals.subscribed += 1;
                }
                Ok(None) if there => {
                    return Err(format!(
                        "{name}: a subscription at {expect} got nothing in {SUB_WAIT:?} \
                         with records to {}",
                        m.next()
                    ));
                }
                Ok(None) => {
                    // Parked in the shard until the next record.
                    self.clean = false;
                    break;
                }
                Err(_) if faulted() => return Ok(false),
                Err(e) => return Err(format!("{name}: a subscription: {e}")),
            }
        }
        Ok(true)
    }

    /// The channel was dropped: records answered before the drop may come
    /// first, then the end.
    fn after_drop(
        mut self,
        name: &str,
        faulted: &dyn Fn() -> bool,
        totals: &mut Totals,
    ) -> Result<(), String> {
        loop {
            match self.sub.next_timeout(SUB_WAIT) {
                Ok(Some(_)) => {}
                Err(Error::ChannelDropped { .. }) => {
                    totals.subscriptions_dropped += 1;
                    return Ok(());
                }
                Err(_) if faulted() => return Ok(()),
                other => return Err(format!("{name}: a subscription after the drop: {other:?}")),
            }
        }
    }

    /// The channel was truncated from `from`: one standing past it with
    /// nothing on its way ends, naming both; one at or before it goes on
    /// (returned); one with a record on its way is not followed further.
    fn after_truncation(
        mut self,
        name: &str,
        from: u64,
        faulted: &dyn Fn() -> bool,
        totals: &mut Totals,
    ) -> Result<Option<Sub>, String> {
        let pos = self.sub.position().0;
        if !self.clean {
            return Ok(None);
        }
        if pos <= from {
            return Ok(Some(self));
        }
        match self.sub.next_timeout(SUB_WAIT) {
            Err(Error::SubscriptionTruncated {
                position,
                first_removed,
                ..
            }) if position == pos && first_removed == from => {
                totals.subscriptions_truncated += 1;
            }
            Err(Error::OffsetOutOfRange {
                operation: "subscribe",
                offset,
                ..
            }) if !self.started && offset == pos => {}
            Err(_) if faulted() => {}
            other => {
                return Err(format!(
                    "{name}: a subscription at {pos} after a truncation from {from}: {other:?}"
                ))
            }
        }
        Ok(None)
    }
}

/// A temporary directory: tmpfs when there is one (the simulated disk writes
/// through the page cache, so nothing needs a real device), else the
/// system's temporary directory.
fn sim_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("corewal-sim-");
    if shm.is_dir() {
        b.tempdir_in(shm)
    } else {
        b.tempdir()
    }
    .expect("create a temporary directory")
}

/// What a seed varies in the configuration.
#[derive(Clone, Copy)]
struct Shape {
    shards: usize,
    sync: SyncMethod,
    in_flight: usize,
    /// Records per commit at most (small: a burst becomes several commits,
    /// in flight together).
    per_commit: Option<usize>,
    /// `Durability::Periodic` with this interval, or `Durability::Sync`.
    periodic: Option<Duration>,
    /// `Config::wal_bytes_max` at its least (4 segments), so that the
    /// shards reclaim, recycle and relocate stragglers often; else the
    /// default.
    tight_wal: bool,
    /// Checkpoints through each channel's last acknowledged record often,
    /// so that whole segments come free.
    checkpoint_often: bool,
    /// `Config::buffer_bytes_max`, when not the default: small budgets send
    /// reads (and relocations) to the WAL.
    payload_budget: Option<u64>,
    /// `Config::snapshot_every_bytes`, when not the default: index
    /// snapshots written as sessions run (and power-cut or failed while
    /// they are written), the next open replaying only what followed.
    snapshot_every: Option<u64>,
}

impl Shape {
    /// One shard, one commit in flight, `Periodic` syncs too rare to
    /// happen by themselves: the shape of the deterministic tests.
    fn one_periodic_shard() -> Shape {
        Shape {
            shards: 1,
            sync: SyncMethod::DsyncWrite,
            in_flight: 1,
            per_commit: None,
            periodic: Some(Duration::from_secs(60)),
            tight_wal: false,
            checkpoint_often: false,
            payload_budget: None,
            snapshot_every: None,
        }
    }
}

fn config(dir: &Path, shape: Shape, disk: &SimDisk) -> Config {
    let mut c = Config::new(dir);
    c.shards = Some(shape.shards);
    c.sync_method = shape.sync;
    c.commits_in_flight_max = shape.in_flight;
    if let Some(n) = shape.per_commit {
        c.records_per_commit_max = n;
    }
    if let Some(interval) = shape.periodic {
        c.durability = Durability::Periodic { interval };
    }
    c.backend = Backend::Simulated(disk.clone());
    c.segment_bytes = 1 << 20;
    c.commit_bytes_max = 256 << 10;
    c.record_bytes_max = 64 << 10;
    if shape.tight_wal {
        c.wal_bytes_max = Some(4 << 20);
    }
    if let Some(budget) = shape.payload_budget {
        c.buffer_bytes_max = budget;
    }
    if let Some(every) = shape.snapshot_every {
        c.snapshot_every_bytes = every;
    }
    c
}

/// Segment files of every shard, with the byte after their last non-zero byte.
fn segment_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut shards: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    shards.sort();
    for shard in shards {
        let mut segs: Vec<_> = std::fs::read_dir(&shard)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segs.sort();
        for seg in segs {
            let bytes = std::fs::read(&seg).unwrap();
            let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            out.push((seg, end as u64));
        }
    }
    out
}

fn record(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.below(max as u64 + 1) as usize;
    let tag = rng.next_u64();
    (0..len)
        .map(|i| (tag.wrapping_add(i as u64 * 131) >> 3) as u8)
        .collect()
}

/// Checks every name against the model after an open; adopts what was
/// found. `damaged` says whether damage of stored data was injected since
/// the last check (then a loss is allowed if the engine reported damage).
fn check(
    engine: &Engine,
    model: &mut HashMap<&'static str, Chan>,
    damaged_in: &HashSet<u16>,
    unsynced_lost: bool,
    totals: &mut Totals,
) -> Result<(), String> {
    let damage = engine.recovery_damage();
    // Shards the check itself wrote to (registering a dropped name): their
    // torn tails are zeroed, so nothing unreturned can come back there. A
    // shard started a commit if its commit bytes grew (the disk's operation
    // count is no witness: other shards still recovering, or a preparer,
    // move it too).
    let mut wrote: HashSet<u16> = HashSet::new();
    let mut shard_of: HashMap<&'static str, u16> = HashMap::new();
    for name in NAMES {
        let Some(m) = model.get_mut(name) else {
            continue;
        };
        // Every name the workload touched is looked at, dropped ones too
        // (registering a dropped name must give a fresh, empty channel).
        let before = commit_bytes(engine);
        let ch = match engine.register(name) {
            Ok(ch) => ch,
            // A WAL at its limit has no room for a new registration (of a
            // dropped name, or one the crash may have lost): nothing to check
            // of it this time. A live channel's registration writes nothing.
            Err(Error::NoSpace { .. }) if !m.live || m.unsure => {
                totals.no_space += 1;
                continue;
            }
            Err(e) => return Err(format!("register {name} after recovery: {e}")),
        };
        let shard = ch.shard().0;
        shard_of.insert(name, shard);
        if commit_bytes(engine)[shard as usize] != before[shard as usize] {
            wrote.insert(shard);
        }
        // Only damage injected in the name's own shard, and reported there,
        // excuses a loss; a damaged last commit may have undone anything in
        // it, a drop too.
        let damaged = damaged_in.contains(&shard);
        let reported = damage.iter().any(|d| d.shard.0 == shard);
        // In Periodic mode a power cut may take what was acknowledged since
        // the last sync, whatever it was: a loss is excused like reported
        // damage (only a loss: nothing invented, nothing out of order).
        let excused = damaged && reported || unsynced_lost;
        let rollback = excused || m.loose;
        let first = ch
            .first_offset()
            .map_err(|e| format!("first_offset {name}: {e}"))?
            .0;
        if let Some(most) = m.maybe_first.take() {
            // A checkpoint answered with an error may have been written.
            if first > m.base && first <= most {
                m.checkpointed(first - 1);
            }
        }
        let recs = ch.read(..).map_err(|e| format!("read {name}: {e}"))?;
        let next = ch
            .next_offset()
            .map_err(|e| format!("next_offset {name}: {e}"))?
            .0;
        let all: Vec<&Vec<u8>> = m.acked.iter().chain(&m.lost).chain(&m.pending).collect();
        let want = m.acked.len();
        // Recovery returned a prefix of everything that may exist, each at
        // its offset, byte for byte; nothing else.
        let prefix = || -> Result<(), String> {
            if first != m.base {
                return Err(format!("{name}: first offset {first}, expected {}", m.base));
            }
            if recs.len() > all.len() {
                return Err(format!(
                    "{name}: {} records, at most {} may exist",
                    recs.len(),
                    all.len()
                ));
            }
            for (i, r) in recs.iter().enumerate() {
                if r.offset != Offset(m.base + i as u64) || r.data[..] != all[i][..] {
                    return Err(format!(
                        "{name}: record {i} is offset {} with {} bytes, expected offset {} with {} bytes",
                        r.offset.0,
                        r.data.len(),
                        m.base + i as u64,
                        all[i].len()
                    ));
                }
            }
            if next != m.base + recs.len() as u64 {
                return Err(format!(
                    "{name}: next offset {next} after {} records from {}",
                    recs.len(),
                    m.base
                ));
            }
            Ok(())
        };
        // A drop whose acknowledgement was lost to the fault may have
        // happened: the name is then a fresh channel after the old one.
        let dropped = m.unsure && recs.is_empty() && next >= m.next();
        let mut was_dropped = false;
        let mut rolled_back = false;
        // Nothing invented: dense offsets, each record one that was written there.
        let invented = || {
            let dense = recs.windows(2).all(|w| w[1].offset.0 == w[0].offset.0 + 1);
            let known = recs.iter().all(|r| {
                m.written
                    .get(&r.offset.0)
                    .is_some_and(|c| c.iter().any(|d| d[..] == r.data[..]))
            });
            let next_ok = recs.last().is_none_or(|r| next == r.offset.0 + 1);
            !(dense && known && next_ok)
        };
        match prefix() {
            Ok(()) if recs.len() >= want => {
                totals.pending_appeared += (recs.len() - want) as u64;
                totals.checked += want as u64;
            }
            _ if dropped => was_dropped = true,
            Ok(()) if excused => {
                if unsynced_lost {
                    totals.unsynced_loss += 1;
                } else {
                    totals.reported_loss += 1;
                }
                trace(|| {
                    format!(
                        "{name}: {} of {want} acknowledged records after reported damage {:?}",
                        recs.len(),
                        engine.recovery_damage()
                    )
                });
            }
            Ok(()) => {
                return Err(format!(
                    "{name}: {} records, expected {want} acknowledged (damage injected: {damaged}, damage reported: {reported})",
                    recs.len()
                ))
            }
            Err(_) if rollback && !invented() => {
                rolled_back = true;
                if unsynced_lost {
                    totals.unsynced_loss += 1;
                } else {
                    totals.reported_loss += 1;
                }
                trace(|| format!("{name}: rolled back to {} records after reported damage", recs.len()));
            }
            Err(e) => return Err(format!("{e} (damage injected: {damaged}, damage reported: {reported})")),
        }
        // Adopt what recovery rebuilt: it is the store's state from now on.
        let lost: Vec<Vec<u8>> = if was_dropped || rolled_back {
            Vec::new()
        } else {
            all[recs.len()..].iter().map(|r| r.to_vec()).collect()
        };
        m.base = recs.first().map_or(next, |r| r.offset.0);
        m.acked = recs.iter().map(|r| r.data.to_vec()).collect();
        m.lost = lost;
        m.pending.clear();
        m.live = true;
        m.unsure = false;
        m.loose = rolled_back;
    }
    for (name, m) in model.iter_mut() {
        if shard_of.get(name).is_some_and(|s| wrote.contains(s)) {
            m.lost.clear();
            m.loose = false;
        }
    }
    Ok(())
}

/// Each shard's commit bytes so far.
fn commit_bytes(engine: &Engine) -> Vec<u64> {
    engine
        .shard_metrics()
        .iter()
        .map(|m| m.commit_bytes)
        .collect()
}

/// A commit a shard started since `seen` (its commit bytes grew) ends the
/// chance of its channels' unreturned records: the first commit after
/// recovery zeroes what recovery found torn. A write merely attempted does
/// not: the zeroing itself may have failed, leaving the bytes in place.
fn forget_lost(
    engine: &Engine,
    model: &mut HashMap<&'static str, Chan>,
    shards: usize,
    seen: &mut Vec<u64>,
) {
    let now = commit_bytes(engine);
    for (shard, (then, now)) in seen.iter().zip(&now).enumerate() {
        if now == then {
            continue;
        }
        for (name, m) in model.iter_mut() {
            if route(name, shards) == shard as u16 {
                m.lost.clear();
                m.loose = false;
            }
        }
    }
    *seen = now;
}

/// Prints the story of a seed when `COREWAL_SIM_VERBOSE` is set.
fn trace(what: impl FnOnce() -> String) {
    if std::env::var_os("COREWAL_SIM_VERBOSE").is_some() {
        eprintln!("sim: {}", what());
    }
}

/// The shard whose directory holds the segment file `path`.
fn shard_of_path(path: &Path) -> u16 {
    let dir = path
        .parent()
        .and_then(|d| d.file_name())
        .unwrap()
        .to_string_lossy();
    dir.trim_start_matches("shard-")
        .parse()
        .expect("a shard-NNN directory")
}

/// Whether an open's error is injected damage detected: a checksum or
/// format refusal, or the read error of an unreadable sector.
fn detected(e: &Error) -> bool {
    matches!(e, Error::Corruption { .. } | Error::Format { .. })
        || e.raw_os_error() == Some(libc::EIO)
}

/// Damage injected into the stored data since the last check.
#[derive(Default)]
struct Injected {
    /// Shards whose stored data was damaged.
    shards: HashSet<u16>,
    /// A misdirected write: it cannot be undone.
    misdirect: bool,
    /// A misdirected write in any session of the seed: a refused open then
    /// ends the seed.
    ever_misdirected: bool,
    /// The bit decayed at rest, to flip back if the open refuses it.
    undo: Option<(PathBuf, u64, u8)>,
}

/// Opens the store. When damage was injected and the open refuses it, the
/// refusal is counted, the damage undone where it can be (a read fault is
/// lifted, decay flipped back, a misdirected write stays), and the store
/// opened again. Read faults are lifted either way. `Ok(None)`: a
/// misdirected write was refused and cannot be undone.
fn open_after(
    dir: &Path,
    shape: Shape,
    disk: &SimDisk,
    injected: &mut Injected,
    totals: &mut Totals,
) -> Result<Option<Engine>, String> {
    let damaged = !injected.shards.is_empty();
    let engine = match Engine::open(config(dir, shape, disk)) {
        Ok(e) => e,
        Err(e) if damaged && detected(&e) => {
            totals.detected_open += 1;
            trace(|| format!("open refused: {e}"));
            disk.clear_plans();
            if let Some((path, byte, bit)) = injected.undo.take() {
                disk.flip_bit_at_rest(&path, byte, bit).unwrap();
            }
            if !injected.misdirect {
                injected.shards.clear();
            }
            match Engine::open(config(dir, shape, disk)) {
                Ok(e) => e,
                Err(Error::Corruption { .. }) if injected.ever_misdirected => return Ok(None),
                Err(e) => return Err(format!("reopen after detected damage: {e}")),
            }
        }
        Err(e) => return Err(format!("open (damage injected: {damaged}): {e}")),
    };
    disk.clear_plans();
    injected.undo = None;
    let m = engine.metrics();
    totals.snapshots_used += m.snapshots_used;
    totals.snapshots_ignored += m.snapshots_ignored;
    Ok(Some(engine))
}

/// Runs one seed: sessions of workload, fault, power cut and check.
fn run_seed(s: u64, totals: &mut Totals) -> Result<(), String> {
    let disk = SimDisk::new(s);
    let r = run_seed_on(s, &disk, totals);
    let stats = disk.stats();
    totals.fs_ops += stats.fs_ops;
    for (t, n) in totals.cuts_in_fs.iter_mut().zip(stats.cuts_in_fs) {
        *t += n;
    }
    r
}

fn run_seed_on(s: u64, disk: &SimDisk, totals: &mut Totals) -> Result<(), String> {
    let mut rng = Rng(s);
    disk.set_latency(1 + rng.below(4));
    let dir = sim_dir();
    let shards = 1 + rng.below(2) as usize;
    let max_record = [64, 600, 5000, 40_000][rng.below(4) as usize];
    let sync = if rng.below(2) == 0 {
        SyncMethod::DsyncWrite
    } else {
        SyncMethod::WriteThenFdatasync
    };
    let shape = Shape {
        shards,
        sync,
        in_flight: [1, 2, 4][rng.below(3) as usize],
        per_commit: [None, Some(1), Some(2)][rng.below(3) as usize],
        periodic: (rng.below(4) == 0).then(|| Duration::from_millis(1 + rng.below(10))),
        tight_wal: rng.below(2) == 0,
        checkpoint_often: rng.below(2) == 0,
        payload_budget: [None, Some(0), Some(48 << 10)][rng.below(3) as usize],
        snapshot_every: [None, Some(64 << 10), Some(512 << 10)][rng.below(3) as usize],
    };
    // A tight WAL's seeds write large records and checkpoint often, so that
    // their sessions fill, reclaim and recycle segments before their fault.
    let max_record = if shape.tight_wal { 40_000 } else { max_record };
    let shape = Shape {
        checkpoint_often: shape.checkpoint_often || shape.tight_wal,
        ..shape
    };
    totals.periodic_seeds += u64::from(shape.periodic.is_some());
    let mut model: HashMap<&'static str, Chan> = HashMap::new();
    let mut injected = Injected::default();
    // Periodic mode, and a power cut caught acknowledged writes unsynced.
    let mut unsynced_lost = false;
    // The last session ended in a process crash, not yet followed by a
    // power cut.
    let mut crashed_before = false;
    let sessions = 2 + rng.below(3);
    for session in 0..sessions {
        totals.sessions += 1;
        let opened = open_after(dir.path(), shape, disk, &mut injected, totals)
            .map_err(|e| format!("session {session}: {e}"))?;
        let Some(engine) = opened else {
            return Ok(());
        };
        trace(|| {
            format!(
                "session {session}: opened; damage {:?}",
                engine.recovery_damage()
            )
        });
        check(&engine, &mut model, &injected.shards, unsynced_lost, totals)
            .map_err(|e| format!("session {session}: {e}"))?;
        injected.shards.clear();
        injected.misdirect = false;
        unsynced_lost = false;

        // Plan this session's fault.
        // A tight WAL's sessions run longer before their fault, so that
        // they fill and reclaim segments first.
        let window = if shape.tight_wal { 3000 } else { 40 };
        let at = disk.stats().ops + 1 + rng.below(window);
        let fault = match rng.below(20) {
            0..=7 => Some(SimFault::PowerCut),
            8..=10 => Some(SimFault::Error(libc::EIO)),
            11..=12 => Some(SimFault::Error(libc::ENOSPC)),
            13..=14 => Some(SimFault::ShortWrite),
            15..=16 => Some(SimFault::Misdirect(
                [-3, -2, -1, 1, 2, 3][rng.below(6) as usize],
            )),
            _ => None,
        };
        if let Some(f) = fault {
            disk.plan(at, f);
        }
        trace(|| format!("session {session}: {fault:?} planned at operation {at}"));

        let mut handles: HashMap<&'static str, Channel> = HashMap::new();
        let mut subs: HashMap<&'static str, Sub> = HashMap::new();
        // Whether this session's planned fault has happened (an error from
        // then on may be its doing).
        let faulted = || fault.is_some() && disk.stats().ops >= at;
        let ops = if shape.tight_wal {
            200 + rng.below(400)
        } else {
            10 + rng.below(120)
        };
        let mut seen = commit_bytes(&engine);
        for _ in 0..ops {
            forget_lost(&engine, &mut model, shards, &mut seen);
            let name = NAMES[rng.below(NAMES.len() as u64) as usize];
            let op = rng.below(100);
            let m = model.entry(name).or_default();
            match op {
                0..=11 => match engine.register(name) {
                    Ok(ch) => {
                        if !m.live && !m.unsure {
                            // Fresh, or after a drop: empty, offsets go on.
                            let next = ch.next_offset().map_err(|e| e.to_string())?.0;
                            let old = ch.read(..).map_err(|e| e.to_string())?;
                            if !old.is_empty() {
                                return Err(format!(
                                    "{name}: registered fresh with {} records",
                                    old.len()
                                ));
                            }
                            if next != m.next() {
                                return Err(format!(
                                    "{name}: registered again at offset {next}, expected {}",
                                    m.next()
                                ));
                            }
                            m.base = next;
                            m.acked.clear();
                        }
                        m.live = true;
                        handles.insert(name, ch);
                    }
                    // Maybe registered, maybe not: the check accepts both.
                    Err(_) if !m.live => m.unsure = true,
                    Err(_) => {}
                },
                12..=16 => {
                    handles.remove(name);
                    match engine.unregister(name) {
                        Ok(()) => {
                            if let Some(s) = subs.remove(name) {
                                s.after_drop(name, &faulted, totals)?;
                            }
                            if m.live || m.unsure {
                                // Offsets go on after every record that may exist.
                                m.base = m.next() + m.pending.len() as u64;
                            }
                            m.live = false;
                            m.unsure = false;
                            m.acked.clear();
                            m.pending.clear();
                        }
                        // Maybe dropped, maybe not: the check accepts both.
                        Err(_) if m.live => m.unsure = true,
                        Err(_) => {}
                    }
                }
                17..=18 if !shape.tight_wal || rng.below(10) == 0 => {
                    // A clean reopen ends the session early (a tight WAL's
                    // sessions, which need their length, seldom).
                    break;
                }
                31..=33 | 36..=45 if op <= 33 || shape.checkpoint_often => {
                    // A checkpoint of some acknowledged records (often all
                    // of them); the shard has not failed (else nothing is
                    // pending).
                    let Some(ch) = handles.get(name) else {
                        continue;
                    };
                    if !m.pending.is_empty() || m.acked.is_empty() {
                        continue;
                    }
                    let through = if op > 33 {
                        m.base + m.acked.len() as u64 - 1
                    } else {
                        m.base + rng.below(m.acked.len() as u64)
                    };
                    let result = ch.checkpoint(Offset(through));
                    trace(|| format!("{name}: checkpoint through {through}: {result:?}"));
                    match result {
                        Ok(()) => {
                            totals.checkpoints += 1;
                            m.checkpointed(through);
                            // One with a record on its way may yield it
                            // (fetched before the checkpoint): not followed.
                            if subs.get(name).is_some_and(|s| !s.clean) {
                                subs.remove(name);
                            }
                        }
                        Err(Error::NoSpace { .. }) => totals.no_space += 1,
                        // It may have been written: any of the failed ones
                        // may stand, the furthest included.
                        Err(_) => m.maybe_first = Some(m.maybe_first.unwrap_or(0).max(through + 1)),
                    }
                }
                34..=35 => {
                    let Some(ch) = handles.get(name) else {
                        continue;
                    };
                    if !m.pending.is_empty() {
                        continue;
                    }
                    let from = m.base + rng.below(m.acked.len() as u64 + 1);
                    let result = ch.truncate_from(Offset(from));
                    trace(|| format!("{name}: truncate from {from}: {result:?}"));
                    match result {
                        Ok(()) => {
                            totals.truncations += 1;
                            m.truncated(from);
                            if let Some(s) = subs.remove(name) {
                                if let Some(s) = s.after_truncation(name, from, &faulted, totals)? {
                                    subs.insert(name, s);
                                }
                            }
                        }
                        Err(Error::NoSpace { .. }) => totals.no_space += 1,
                        // Refused, nothing changed: below a first offset
                        // that a checkpoint which failed with its shard
                        // moved anyway (`maybe_first`).
                        Err(Error::OffsetOutOfRange { .. }) if m.maybe_first.is_some() => {}
                        Err(_) => m.truncate_failed(from),
                    }
                }
                19..=30 => {
                    // Appends to several channels in flight at once, so that
                    // they share commits; acknowledged in order per channel.
                    let mut flying = Vec::new();
                    for _ in 0..2 + rng.below(6) {
                        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
                        let Some(ch) = handles.get(name) else {
                            continue;
                        };
                        let data = record(&mut rng, max_record / 2);
                        // Polled once: that submits it (an append future
                        // submits on its first poll), so the burst is in the
                        // shard's inbox before any answer is awaited.
                        let future = ch.append_async(data.clone()).map(|mut f| {
                            match Pin::new(&mut f).poll(&mut Context::from_waker(Waker::noop())) {
                                Poll::Ready(r) => Err(r),
                                Poll::Pending => Ok(f),
                            }
                        });
                        flying.push((name, data, future));
                    }
                    for (name, data, future) in flying {
                        let m = model.get_mut(name).expect("a handle has a model");
                        let result = match future {
                            Ok(Ok(f)) => f.wait(),
                            Ok(Err(done)) => done,
                            Err(e) => Err(e),
                        };
                        match result {
                            Ok(_) if !m.pending.is_empty() => {
                                return Err(format!(
                                    "{name}: an append was acknowledged after a failed one"
                                ));
                            }
                            Ok(at) => {
                                if at.0 != m.next() {
                                    return Err(format!(
                                        "{name}: acknowledged at offset {}, expected {}",
                                        at.0,
                                        m.next()
                                    ));
                                }
                                totals.acked += 1;
                                m.acknowledged(at.0, [data]);
                            }
                            // Refused before it got an offset: the shard goes on.
                            Err(Error::NoSpace { .. }) => totals.no_space += 1,
                            Err(_) => m.failed([data]),
                        }
                    }
                }
                48..=49 => {
                    // A subscription's step: it yields exactly the
                    // acknowledged records from where it stands, in order,
                    // each as the model has it, and none more.
                    let Some(ch) = handles.get(name) else {
                        continue;
                    };
                    if m.unsure
                        || m.loose
                        || !m.lost.is_empty()
                        || m.maybe_first.is_some()
                        || !m.pending.is_empty()
                    {
                        subs.remove(name);
                        continue;
                    }
                    let s = subs
                        .entry(name)
                        .or_insert_with(|| Sub::new(ch, m, &mut rng));
                    if !s.step(name, m, &mut rng, &faulted, totals)? {
                        subs.remove(name);
                    }
                }
                46..=47 => {
                    // A read while the session runs: exactly what was
                    // acknowledged and not checkpointed or truncated, from
                    // memory or the WAL — never a record still in flight.
                    let Some(ch) = handles.get(name) else {
                        continue;
                    };
                    if m.unsure || m.loose || !m.lost.is_empty() || m.maybe_first.is_some() {
                        continue;
                    }
                    let from = m.base + rng.below(m.acked.len() as u64 + 1);
                    let got = match ch.read_limited(Offset(from).., 1 + rng.below(64 << 10)) {
                        Ok(got) => got,
                        // A planned fault may fail the read, or the shard.
                        Err(_) if fault.is_some() => continue,
                        Err(e) => return Err(format!("{name}: read from {from}: {e}")),
                    };
                    totals.reads += 1;
                    if got.is_empty() && from < m.next() {
                        return Err(format!("{name}: read from {from} returned nothing"));
                    }
                    // After a failure, what may stand after the acknowledged
                    // records: those of a failed truncation, never those of
                    // a failed append (not acknowledged, so never readable).
                    let all: Vec<&Vec<u8>> = m.acked.iter().chain(&m.pending).collect();
                    for (i, r) in got.iter().enumerate() {
                        let o = from + i as u64;
                        let want = all.get((o - m.base) as usize);
                        if r.offset.0 != o || want.is_none_or(|w| w[..] != r.data[..]) {
                            return Err(format!(
                                "{name}: read from {from}: offset {} with {} bytes, expected \
                                 offset {o} with {:?} bytes",
                                r.offset.0,
                                r.data.len(),
                                want.map(|w| w.len())
                            ));
                        }
                    }
                }
                r => {
                    let Some(ch) = handles.get(name) else {
                        continue;
                    };
                    if !m.pending.is_empty() {
                        // The shard has failed; nothing more is acknowledged.
                        if ch.append(b"after").is_ok() {
                            return Err(format!(
                                "{name}: an append was acknowledged after a failed one"
                            ));
                        }
                        continue;
                    }
                    let batch: Vec<Vec<u8>> = if r < 70 {
                        vec![record(&mut rng, max_record)]
                    } else {
                        // A tight WAL takes batches of up to ~200 KiB.
                        let most = if shape.tight_wal { 20 } else { 5 };
                        (0..2 + rng.below(most))
                            .map(|_| record(&mut rng, max_record / 4))
                            .collect()
                    };
                    let result = if batch.len() == 1 {
                        ch.append(&batch[0])
                    } else {
                        ch.append_batch(batch.iter())
                    };
                    match result {
                        Ok(first) => {
                            if first.0 != m.next() {
                                return Err(format!(
                                    "{name}: acknowledged at offset {}, expected {}",
                                    first.0,
                                    m.next()
                                ));
                            }
                            totals.acked += batch.len() as u64;
                            m.acknowledged(first.0, batch);
                        }
                        // Refused before anything was written.
                        Err(Error::BatchTooLarge { .. }) => {}
                        // Refused before it got an offset, for lack of space
                        // for the next segment: the shard goes on.
                        Err(Error::NoSpace { .. }) => totals.no_space += 1,
                        Err(_) => m.failed(batch),
                    }
                }
            }
        }
        // A failed register or unregister leaves the name unsure; so does a
        // failed append's shard for every later operation, which the check
        // treats the same way.
        forget_lost(&engine, &mut model, shards, &mut seen);
        drop(subs);
        let metrics = engine.metrics();
        trace(|| format!("session {session}: metrics {metrics:?}"));
        totals.reclaimed += metrics.segments_reclaimed;
        totals.recycled += metrics.segments_recycled;
        totals.relocated += metrics.records_relocated;
        totals.wal_reads += metrics.wal_reads;
        totals.snapshots_written += metrics.snapshots_written;
        totals.carried += metrics.entries_carried;
        let _ = engine.close();
        disk.clear_plans();
        let happened = disk.stats().ops >= at;
        if happened {
            totals.faults += u64::from(fault.is_some());
        }
        if happened && matches!(fault, Some(SimFault::Misdirect(_))) {
            // Which shard's write it was is not known here: all of them.
            injected.shards.extend(0..shards as u16);
            for s in 0..shards {
                let _ = std::fs::remove_file(dir.path().join(format!("shard-{s:03}/snapshot")));
            }
            injected.misdirect = true;
            injected.ever_misdirected = true;
            totals.damage_injected += 1;
        }
        totals.in_flight_most = totals.in_flight_most.max(disk.stats().in_flight_most);
        // Periodic mode: a session that ended in a fault (its shard stopped
        // without the sync of a clean close) ends in a process crash, which
        // loses nothing acknowledged, or in a power cut, which may lose what
        // was acknowledged since the last sync.
        // In either mode, a session that ended in a fault ends half the
        // time in a process crash: what the shard wrote and did not sync
        // stays volatile (in the page cache or the device's cache), so the
        // next session must make it durable before acknowledging on top of
        // it — its own power cut checks that.
        let faulted = happened && fault.is_some();
        let process_crash = faulted && rng.below(2) == 0;
        if process_crash {
            disk.process_crash();
            totals.process_crashes += 1;
            crashed_before = true;
        } else if shape.periodic.is_some() && faulted {
            unsynced_lost = true;
        }
        if crashed_before && !process_crash {
            // crash → reopen → acknowledge (this session) → power cut.
            totals.crash_then_cut += 1;
            crashed_before = false;
        }
        let cut = if process_crash {
            Default::default()
        } else {
            disk.power_cut().map_err(|e| format!("power cut: {e}"))?
        };
        trace(|| {
            let chains: Vec<String> = segment_files(dir.path())
                .iter()
                .map(|(p, end)| {
                    let c: Vec<usize> = common::commits(p, 4096).iter().map(|c| c.pos).collect();
                    format!("{}: commits at {c:?}, non-zero to {end}", p.display())
                })
                .collect();
            format!(
                "session {session}: {} operations, fault happened: {happened}; power cut {cut:?}; {chains:?}",
                disk.stats().ops
            )
        });
        totals.power_cuts += u64::from(!process_crash);
        totals.torn += cut.torn;
        totals.names_undone += cut.names_undone;

        if let Some(keep) = std::env::var_os("COREWAL_SIM_KEEP") {
            let to = PathBuf::from(keep).join(format!("session-{session}"));
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(dir.path())
                .arg(&to)
                .status();
        }
        // A damaged index snapshot, one time in five: it must be ignored
        // (counted), the log replayed, nothing lost or invented.
        let snaps: Vec<PathBuf> = (0..shards)
            .map(|s| dir.path().join(format!("shard-{s:03}/snapshot")))
            .filter(|p| p.exists())
            .collect();
        if !snaps.is_empty() && rng.below(5) == 0 {
            let path = &snaps[rng.below(snaps.len() as u64) as usize];
            let mut bytes = std::fs::read(path).unwrap();
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            std::fs::write(path, bytes).unwrap();
            totals.snapshots_damaged += 1;
            trace(|| format!("snapshot damaged at {} byte {at}", path.display()));
        }
        // Damage at rest or on read, before the next open.
        let files = segment_files(dir.path());
        let used: Vec<_> = files.into_iter().filter(|(_, end)| *end > 0).collect();
        if !used.is_empty() && rng.below(5) == 0 {
            let (path, end) = used[rng.below(used.len() as u64) as usize].clone();
            let byte = rng.below(end);
            injected.shards.insert(shard_of_path(&path));
            totals.damage_injected += 1;
            // Damage is checked against what replay finds: the shard's
            // index snapshot goes (a clean reopen from one reads no log
            // and finds damage at rest by reads, `tests/snapshot.rs`).
            let _ = std::fs::remove_file(path.with_file_name("snapshot"));
            let kind = rng.below(3);
            trace(|| {
                format!(
                    "damage {kind} (0 decay, 1 unreadable, 2 bad read) at {} byte {byte}",
                    path.display()
                )
            });
            match kind {
                0 => {
                    let bit = rng.below(8) as u8;
                    disk.flip_bit_at_rest(&path, byte, bit).unwrap();
                    injected.undo = Some((path, byte, bit));
                }
                1 => disk.plan_read(
                    &path,
                    byte / SIM_SECTOR_BYTES as u64,
                    SimReadFault::Unreadable,
                ),
                _ => disk.plan_read(
                    &path,
                    byte / SIM_SECTOR_BYTES as u64,
                    SimReadFault::FlipBit(rng.below(4096) as u16),
                ),
            }
        }
    }
    // A last open with no fault planned checks the final state.
    let opened = open_after(dir.path(), shape, disk, &mut injected, totals)
        .map_err(|e| format!("final open: {e}"))?;
    let Some(engine) = opened else {
        return Ok(());
    };
    check(&engine, &mut model, &injected.shards, unsynced_lost, totals)
        .map_err(|e| format!("final check: {e}"))?;
    engine.close().map_err(|e| format!("final close: {e}"))
}

#[test]
fn simulated_disk_keeps_every_promise_across_seeds() {
    let base = seed();
    let seeds = cycles("COREWAL_SIM_SEEDS", 2000);
    let mut totals = Totals::default();
    let started = std::time::Instant::now();
    for i in 0..seeds {
        let s = base.wrapping_add(i);
        if let Err(e) = run_seed(s, &mut totals) {
            panic!("seed {s} failed: {e}\nreplay: COREWAL_SEED={s} COREWAL_SIM_SEEDS=1 cargo test --release --test simulator");
        }
    }
    say(&format!(
        "simulator: {seeds} seeds, {} sessions, {} acknowledged records, {} checks of acknowledged records, lost 0; \
         {} power cuts ({} writes torn), {} write/sync faults, {} damage injections: {} refused at open, {} losses reported; \
         {} failed appends found durable; {} appends refused for lack of space (no offset taken); \
         {} checkpoints and {} truncations acknowledged; up to {} operations in flight in a shard; \
         {} process crashes (nothing acknowledged lost), {} crash → reopen → acknowledge → power cut sequences; \
         {} seeds in Periodic mode: {} channels that lost acknowledged records unsynced at a power cut (allowed there); \
         {} filesystem operations, power cuts during them: {}; {} creations, renames or removals taken back; \
         {} segments reclaimed, {} recycled, {} state entries carried forward, {} records relocated; \
         {} reads checked while sessions ran ({} reads of the WAL); \
         {} records yielded by subscriptions checked, {} subscriptions ended by a truncation below them, {} by a drop; \
         index snapshots: {} written, {} used by an open, {} ignored ({} damaged on purpose); {:.1} s",
        totals.sessions,
        totals.acked,
        totals.checked,
        totals.power_cuts,
        totals.torn,
        totals.faults,
        totals.damage_injected,
        totals.detected_open,
        totals.reported_loss,
        totals.pending_appeared,
        totals.no_space,
        totals.checkpoints,
        totals.truncations,
        totals.in_flight_most,
        totals.process_crashes,
        totals.crash_then_cut,
        totals.periodic_seeds,
        totals.unsynced_loss,
        totals.fs_ops,
        FsOp::ALL
            .iter()
            .zip(totals.cuts_in_fs)
            .map(|(op, n)| format!("{n} in a {}", op.name()))
            .collect::<Vec<_>>()
            .join(", "),
        totals.names_undone,
        totals.reclaimed,
        totals.recycled,
        totals.carried,
        totals.relocated,
        totals.reads,
        totals.wal_reads,
        totals.subscribed,
        totals.subscriptions_truncated,
        totals.subscriptions_dropped,
        totals.snapshots_written,
        totals.snapshots_used,
        totals.snapshots_ignored,
        totals.snapshots_damaged,
        started.elapsed().as_secs_f64()
    ));
}

#[test]
fn what_recovery_replays_is_durable_before_anything_is_acknowledged_on_top_of_it() {
    // A process in Periodic mode leaves segment 1 written but unsynced and
    // the spare segment 2 made ahead; it crashes. The next process resumes
    // in segment 2 and acknowledges an append there; then the power goes.
    // Every record the second process recovered (and so answered reads
    // with) and its acknowledged append must survive: the open after the
    // cut may neither refuse a hole nor lose them.
    for seed in 0..8u64 {
        let dir = common::test_dir();
        let disk = SimDisk::new(seed);
        let written: u64;
        let shape = Shape::one_periodic_shard();
        {
            let engine = Engine::open(config(dir.path(), shape, &disk)).unwrap();
            let ch = engine.register("a").unwrap();
            // One block per commit in 1 MiB segments: 200 commits fill 80%
            // of segment 1, past the point (75%) by which the spare's paced
            // fill finishes; then wait for the spare to be there.
            let spare = dir.path().join("shard-000/0000000000000002.wal");
            written = 200;
            for i in 0..written {
                ch.append(&vec![i as u8; 4000]).unwrap();
            }
            let started = std::time::Instant::now();
            while !spare.exists() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "seed {seed}: the spare segment never appeared"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            // Stop the shard without a sync: its next write fails.
            disk.plan(disk.stats().ops + 1, SimFault::Error(libc::EIO));
            assert!(ch.append(b"fails").is_err());
            drop(ch);
            let _ = engine.close();
        }
        disk.process_crash();
        let recovered;
        {
            let sync = Shape {
                periodic: None,
                ..shape
            };
            let engine = Engine::open(config(dir.path(), sync, &disk)).unwrap();
            let ch = engine.register("a").unwrap();
            recovered = ch.read(..).unwrap().len() as u64;
            assert_eq!(recovered, written, "seed {seed}: the crash lost nothing");
            assert_eq!(ch.append(b"after").unwrap(), Offset(written));
            drop(ch);
            engine.close().unwrap();
        }
        disk.power_cut().unwrap();
        let engine = match Engine::open(config(dir.path(), shape, &disk)) {
            Ok(e) => e,
            Err(e) => panic!("seed {seed}: open after the power cut: {e}"),
        };
        let got = engine.register("a").unwrap().read(..).unwrap();
        assert_eq!(
            got.len() as u64,
            recovered + 1,
            "seed {seed}: records lost by the power cut"
        );
        assert_eq!(&got[written as usize].data[..], b"after");
    }
}

#[test]
fn periodic_mode_syncs_before_its_unsynced_window_outgrows_its_header_field() {
    // Each commit header records how many commits before it may not be
    // durable (at most 65,535); recovery cuts a hole within that window as
    // a torn tail. More unsynced commits than that in a row would let a
    // power cut leave a hole outside every window: refused as damage, where
    // Periodic mode promises a shorter log.
    let dir = common::test_dir();
    let disk = SimDisk::new(11);
    let mut c = config(
        dir.path(),
        Shape {
            per_commit: Some(1),
            ..Shape::one_periodic_shard()
        },
        &disk,
    );
    // Small blocks and a large segment keep 66,000 commits in one segment,
    // so that no segment change syncs on the way.
    c.block_bytes = Some(512);
    c.segment_bytes = 64 << 20;
    c.commit_bytes_max = 64 << 10;
    c.record_bytes_max = 1024;
    let total = 66_000u64;
    {
        let engine = match Engine::open(c.clone()) {
            Err(Error::InvalidConfig {
                field: "block_bytes",
                ..
            }) => {
                eprintln!("SKIPPED: the filesystem's direct-I/O alignment is above 512");
                return;
            }
            other => other.unwrap(),
        };
        let ch = engine.register("p").unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let mut sent = 0u64;
        while sent < total {
            // 64 appends in the inbox at a time: one commit each, no waits
            // in between.
            let mut futures = Vec::new();
            for _ in 0..64.min(total - sent) {
                let mut f = ch.append_async(sent.to_le_bytes().to_vec()).unwrap();
                match Pin::new(&mut f).poll(&mut cx) {
                    Poll::Ready(r) => {
                        r.unwrap();
                    }
                    Poll::Pending => futures.push(f),
                }
                sent += 1;
            }
            for f in futures {
                f.wait().unwrap();
            }
        }
        // The power goes before close could sync.
        disk.plan(disk.stats().ops + 1, SimFault::PowerCut);
        let _ = ch.append(b"cut");
        drop(ch);
        let _ = engine.close();
    }
    disk.power_cut().unwrap();
    let engine = match Engine::open(c) {
        Ok(e) => e,
        Err(e) => panic!("the power cut's hole was refused: {e}"),
    };
    let got = engine.register("p").unwrap().read(..).unwrap();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(&r.data[..], &(i as u64).to_le_bytes(), "record {i}");
    }
    assert!(
        got.len() as u64 >= total - 65_535,
        "only {} of {total} records survived, fewer than the synced ones",
        got.len()
    );
}

#[test]
fn a_power_cut_in_any_operation_of_a_store_s_first_session_loses_nothing_acknowledged() {
    // One client writes 32 KiB records through two segment rolls of a new
    // store: the session's operations are the store's creation (corewal.meta
    // written, synced, renamed, its directory synced), the shard manifest's
    // creation and generations, segment creations (leftover removed, file
    // created, header and zero-fill written and synced, renamed, directory
    // synced) and the commits. The power goes in the k-th operation, for
    // every k up to the session's last: the next open must succeed and keep
    // every acknowledged record.
    let shape = Shape {
        shards: 1,
        sync: SyncMethod::DsyncWrite,
        in_flight: 1,
        per_commit: None,
        periodic: None,
        tight_wal: false,
        checkpoint_often: false,
        payload_budget: None,
        snapshot_every: None,
    };
    let records = 40u64;
    let record = |i: u64| vec![i as u8; 32 << 10];
    let mut cuts_in_fs = [0u64; 6];
    let mut undone = 0;
    let mut k = 1;
    loop {
        let dir = sim_dir();
        let disk = SimDisk::new(k);
        disk.plan(k, SimFault::PowerCut);
        let mut acked = 0u64;
        if let Ok(engine) = Engine::open(config(dir.path(), shape, &disk)) {
            if let Ok(ch) = engine.register("a") {
                while acked < records && ch.append(&record(acked)).is_ok() {
                    acked += 1;
                }
            }
            let _ = engine.close();
        }
        let stats = disk.stats();
        let cut_happened = stats.ops >= k;
        disk.clear_plans();
        for (t, n) in cuts_in_fs.iter_mut().zip(stats.cuts_in_fs) {
            *t += n;
        }
        undone += disk.power_cut().unwrap().names_undone;
        let engine = match Engine::open(config(dir.path(), shape, &disk)) {
            Ok(e) => e,
            Err(e) => panic!("cut in operation {k}: the next open failed: {e}"),
        };
        let got = engine.register("a").unwrap().read(..).unwrap();
        assert!(
            got.len() as u64 >= acked,
            "cut in operation {k}: {acked} acknowledged, {} recovered",
            got.len()
        );
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.offset, Offset(i as u64), "cut in operation {k}");
            assert_eq!(&r.data[..], &record(i as u64)[..], "cut in operation {k}");
        }
        engine.close().unwrap();
        if !cut_happened {
            // The whole session ran before operation k: every operation
            // was cut in once.
            break;
        }
        k += 1;
    }
    say(&format!(
        "power cut in each of the {} operations of a first session: nothing acknowledged \
         lost; in filesystem operations: {}; {undone} creations, renames or removals taken back",
        k - 1,
        FsOp::ALL
            .iter()
            .zip(cuts_in_fs)
            .map(|(op, n)| format!("{n} in a {}", op.name()))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    for op in [
        FsOp::Create,
        FsOp::Rename,
        FsOp::SyncDir,
        FsOp::Write,
        FsOp::SyncFile,
    ] {
        assert!(
            cuts_in_fs[op.index()] > 0,
            "no power cut landed in a {}",
            op.name()
        );
    }
}

/// The reclaiming session of the two every-operation tests below: one
/// client appends 32 KiB records to two channels and checkpoints each
/// through its last record every 8, with the smallest space limit, while a
/// third channel holds one record it never checkpoints. The session
/// reclaims segments (state carried forward, the manifest's log start
/// moved, files handed back), recycles them as new segments (renamed,
/// header rewritten) and relocates the straggler's record.
const RECLAIMING: Shape = Shape {
    shards: 1,
    sync: SyncMethod::DsyncWrite,
    in_flight: 1,
    per_commit: None,
    periodic: None,
    tight_wal: true,
    checkpoint_often: false,
    payload_budget: None,
    snapshot_every: None,
};
const RECLAIMING_NAMES: [&str; 2] = ["a", "b"];

fn reclaiming_record(name: &str, i: u64) -> Vec<u8> {
    let mut r = vec![i as u8; 32 << 10];
    r[..name.len()].copy_from_slice(name.as_bytes());
    r
}

/// What a reclaiming session was told, per channel: acknowledged through,
/// a checkpoint returned through, a checkpoint begun through; and whether
/// the straggler's record was acknowledged.
#[derive(Default, Clone, Copy)]
struct Told {
    acked: [Option<u64>; 2],
    ckpt: [Option<u64>; 2],
    asked: [Option<u64>; 2],
    straggler: bool,
}

/// Runs the reclaiming session until it ends or a fault stops it; returns
/// what it was told and, when it ran to its end, its metrics.
fn reclaiming_session(dir: &Path, disk: &SimDisk) -> (Told, Option<corewal::Metrics>) {
    let mut told = Told::default();
    let Ok(engine) = Engine::open(config(dir, RECLAIMING, disk)) else {
        return (told, None);
    };
    if let Ok(s) = engine.register("straggler") {
        told.straggler = s.append(b"never checkpointed").is_ok();
    }
    let Ok(chans) = RECLAIMING_NAMES
        .iter()
        .map(|n| engine.register(n))
        .collect::<Result<Vec<_>, _>>()
    else {
        return (told, None);
    };
    for i in 0..120u64 {
        for (c, ch) in chans.iter().enumerate() {
            match ch.append(&reclaiming_record(RECLAIMING_NAMES[c], i)) {
                Ok(o) => told.acked[c] = Some(o.0),
                Err(Error::NoSpace { .. }) => continue,
                Err(_) => return (told, None),
            }
            if i % 8 == 7 {
                let through = told.acked[c].expect("appended above");
                told.asked[c] = Some(through);
                match ch.checkpoint(Offset(through)) {
                    Ok(()) => told.ckpt[c] = Some(through),
                    Err(Error::NoSpace { .. }) => {}
                    Err(_) => return (told, None),
                }
            }
        }
    }
    let metrics = engine.metrics();
    drop(chans);
    let _ = engine.close();
    (told, Some(metrics))
}

/// Opens the store after a reclaiming session and checks every promise
/// against what the session was told; then appends one record to each
/// channel (and closes). Returns what is now acknowledged.
fn check_reclaiming(dir: &Path, disk: &SimDisk, told: &Told, what: &str) -> Told {
    let engine = Engine::open(config(dir, RECLAIMING, disk))
        .unwrap_or_else(|e| panic!("{what}: the open failed: {e}"));
    let mut now = *told;
    for (c, name) in RECLAIMING_NAMES.iter().enumerate() {
        let ch = engine.register(name).unwrap();
        let first = ch.first_offset().unwrap().0;
        let next = ch.next_offset().unwrap().0;
        let returned = told.ckpt[c].map_or(0, |t| t + 1);
        let at_most = told.asked[c].map_or(0, |t| t + 1).max(returned);
        assert!(
            (returned..=at_most).contains(&first),
            "{what}: {name} starts at {first}, checkpointed through {returned}..={at_most}"
        );
        let must = told.acked[c].map_or(0, |a| a + 1);
        assert!(next >= must, "{what}: {name} next {next} < {must}");
        let got = ch.read(..).unwrap();
        assert_eq!(got.len() as u64, next - first, "{what}: {name}");
        for r in &got {
            assert_eq!(
                &r.data[..],
                &reclaiming_record(name, r.offset.0)[..],
                "{what}: {name} at {}",
                r.offset
            );
        }
        let on = ch.append(&reclaiming_record(name, next)).unwrap().0;
        assert_eq!(on, next, "{what}: {name}");
        // What this open found is what the next one must find.
        now.acked[c] = Some(on);
        now.ckpt[c] = Some(first.saturating_sub(1)).filter(|_| first > 0);
        now.asked[c] = now.ckpt[c];
    }
    let s = engine.register("straggler").unwrap().read(..).unwrap();
    if told.straggler {
        assert_eq!(s.len(), 1, "{what}: the straggler's record");
        assert_eq!(&s[0].data[..], b"never checkpointed");
    }
    now.straggler = !s.is_empty();
    engine.close().unwrap();
    now
}

#[test]
fn a_power_cut_in_any_operation_of_a_reclaiming_session_keeps_every_promise() {
    // The power goes in the reclaiming session's k-th operation, for every
    // k: the next open must succeed, keep every acknowledged record above
    // the last returned checkpoint, bring back nothing checkpointed, and go
    // on at the next offset.
    let mut cuts_in_fs = [0u64; 6];
    let whole;
    // `COREWAL_SIM_CUT_FROM=K` starts at the K-th operation (to replay one).
    let mut k = cycles("COREWAL_SIM_CUT_FROM", 1);
    loop {
        let dir = sim_dir();
        let disk = SimDisk::new(k);
        disk.plan(k, SimFault::PowerCut);
        let (told, metrics) = reclaiming_session(dir.path(), &disk);
        let stats = disk.stats();
        let cut_happened = stats.ops >= k;
        disk.clear_plans();
        for (t, n) in cuts_in_fs.iter_mut().zip(stats.cuts_in_fs) {
            *t += n;
        }
        disk.power_cut().unwrap();
        check_reclaiming(dir.path(), &disk, &told, &format!("cut in operation {k}"));
        if !cut_happened {
            whole = metrics;
            break;
        }
        k += 1;
    }
    let m = whole.expect("the last session ran to its end");
    say(&format!(
        "power cut in each of the {} operations of a reclaiming session: nothing acknowledged \
         lost, nothing checkpointed back; the whole session reclaims {} segments, recycles {} \
         and relocates {} records; in filesystem operations: {}",
        k - 1,
        m.segments_reclaimed,
        m.segments_recycled,
        m.records_relocated,
        FsOp::ALL
            .iter()
            .zip(cuts_in_fs)
            .map(|(op, n)| format!("{n} in a {}", op.name()))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    assert!(m.segments_reclaimed > 0 && m.segments_recycled > 0 && m.records_relocated > 0);
}

#[test]
fn a_crash_in_any_operation_of_a_reclaiming_session_then_a_power_cut_keeps_every_promise() {
    // The process dies in the reclaiming session's k-th operation (what it
    // left unsynced stays in the page cache: a manifest generation written
    // but not synced, say); the next session recovers — recycling or
    // removing files before the log start it read — appends and closes;
    // then the power goes. Every promise must hold after both opens.
    let mut k = cycles("COREWAL_SIM_CUT_FROM", 1);
    loop {
        let dir = sim_dir();
        let disk = SimDisk::new(k);
        disk.plan(k, SimFault::PowerCut);
        let (told, _) = reclaiming_session(dir.path(), &disk);
        let cut_happened = disk.stats().ops >= k;
        disk.clear_plans();
        disk.process_crash();
        let what = format!("crash in operation {k}");
        // A session that only opens — it recycles or removes files before
        // the log start it read, and makes the next spare — and closes
        // without writing; then the power goes.
        if let Ok(engine) = Engine::open(config(dir.path(), RECLAIMING, &disk)) {
            std::thread::sleep(Duration::from_millis(20));
            let _ = engine.close();
        }
        disk.power_cut().unwrap();
        let now = check_reclaiming(
            dir.path(),
            &disk,
            &told,
            &format!("{what}, a reopen, a cut"),
        );
        disk.power_cut().unwrap();
        check_reclaiming(
            dir.path(),
            &disk,
            &now,
            &format!("{what}, then a power cut"),
        );
        if !cut_happened {
            break;
        }
        k += 1;
    }
    say(&format!(
        "a crash in each of the {} operations of a reclaiming session, then a power cut after \
         the next session: every promise held",
        k - 1
    ));
}

#[test]
fn a_crash_in_any_operation_then_a_power_cut_loses_nothing_the_next_session_acknowledged() {
    // The first session's process dies in its k-th operation: whatever it
    // had not made durable stays in the page cache only (a file renamed but
    // its directory not yet synced, say). The next session recovers from
    // that, answers reads, acknowledges appends and closes; then the power
    // goes. Everything that session read or acknowledged must survive, for
    // every k up to the first session's last operation. The next session
    // appends once and closes, so its own spare segment is seldom named
    // (its directory sync would cover the names the crash left) before
    // the cut.
    let shape = Shape {
        shards: 1,
        sync: SyncMethod::DsyncWrite,
        in_flight: 1,
        per_commit: None,
        periodic: None,
        tight_wal: false,
        checkpoint_often: false,
        payload_budget: None,
        snapshot_every: None,
    };
    let records = 40u64;
    let after = 1u64;
    let record = |i: u64| vec![i as u8; 32 << 10];
    let mut k = 1;
    loop {
        let dir = sim_dir();
        let disk = SimDisk::new(k);
        disk.plan(k, SimFault::PowerCut);
        if let Ok(engine) = Engine::open(config(dir.path(), shape, &disk)) {
            if let Ok(ch) = engine.register("a") {
                let mut i = 0;
                while i < records && ch.append(&record(i)).is_ok() {
                    i += 1;
                }
            }
            let _ = engine.close();
        }
        let cut_happened = disk.stats().ops >= k;
        disk.clear_plans();
        disk.process_crash();
        let recovered;
        {
            let engine = match Engine::open(config(dir.path(), shape, &disk)) {
                Ok(e) => e,
                Err(e) => panic!("crash in operation {k}: the next open failed: {e}"),
            };
            let ch = engine.register("a").unwrap();
            recovered = ch.read(..).unwrap().len() as u64;
            for i in recovered..recovered + after {
                assert_eq!(ch.append(&record(i)).unwrap(), Offset(i));
            }
            drop(ch);
            engine.close().unwrap();
        }
        disk.power_cut().unwrap();
        let engine = match Engine::open(config(dir.path(), shape, &disk)) {
            Ok(e) => e,
            Err(e) => panic!("crash in operation {k}, then a power cut: the open failed: {e}"),
        };
        let got = engine.register("a").unwrap().read(..).unwrap();
        assert_eq!(
            got.len() as u64,
            recovered + after,
            "crash in operation {k}, then a power cut: records lost"
        );
        for (i, r) in got.iter().enumerate() {
            assert_eq!(&r.data[..], &record(i as u64)[..], "crash in operation {k}");
        }
        engine.close().unwrap();
        if !cut_happened {
            break;
        }
        k += 1;
    }
    say(&format!(
        "a crash in each of the {} operations of a first session, then a power cut after the \
         next session: nothing that session read or acknowledged lost",
        k - 1
    ));
}

#[test]
fn checkpoints_and_truncations_are_durable_when_they_return_in_every_durability_mode() {
    // A checkpoint and a truncation return; the power goes before anything
    // else is synced. In Periodic mode too (60 s interval: no periodic sync
    // comes in between), the next open must keep both: the checkpointed
    // records stay gone, the truncated ones never come back, and what was
    // acknowledged before them survives (their sync covers it).
    for periodic in [None, Some(Duration::from_secs(60))] {
        for seed in 0..6u64 {
            let dir = common::test_dir();
            let disk = SimDisk::new(seed);
            let shape = Shape {
                shards: 1,
                sync: SyncMethod::DsyncWrite,
                in_flight: 1 + seed as usize % 2,
                per_commit: None,
                periodic,
                tight_wal: false,
                checkpoint_often: false,
                payload_budget: None,
                snapshot_every: None,
            };
            let c = config(dir.path(), shape, &disk);
            let old = |i: u64| format!("old {i}").into_bytes();
            let new = |i: u64| format!("new {i}").into_bytes();
            {
                let engine = Engine::open(c.clone()).unwrap();
                let ch = engine.register("p").unwrap();
                for i in 0..20 {
                    assert_eq!(ch.append(&old(i)).unwrap(), Offset(i));
                }
                ch.checkpoint(Offset(4)).unwrap();
                ch.truncate_from(Offset(15)).unwrap();
                for i in 15..18 {
                    assert_eq!(ch.append(&new(i)).unwrap(), Offset(i));
                }
                disk.plan(disk.stats().ops + 1, SimFault::PowerCut);
                let _ = ch.append(b"cut");
                drop(ch);
                let _ = engine.close();
            }
            disk.power_cut().unwrap();
            let engine = Engine::open(c).unwrap();
            let ch = engine.register("p").unwrap();
            let what = format!("{periodic:?}, seed {seed}");
            assert_eq!(ch.first_offset().unwrap(), Offset(5), "{what}: checkpoint");
            let got = ch.read(..).unwrap();
            assert!(got.len() >= 10, "{what}: {} records", got.len());
            for r in &got {
                let o = r.offset.0;
                // The append the cut answered may have been written.
                let want = match o {
                    ..15 => old(o),
                    15..18 => new(o),
                    _ => b"cut".to_vec(),
                };
                assert_eq!(&r.data[..], &want[..], "{what}: offset {o}");
            }
            if periodic.is_none() {
                assert!(ch.next_offset().unwrap() >= Offset(18), "{what}");
            }
        }
    }
}

#[test]
fn a_reclamation_waits_for_the_drop_that_let_its_segments_go() {
    // Periodic mode (no periodic sync within the test): a drop is
    // acknowledged before it is durable. Channel x holds records in segment
    // 2 and is stated whole (carried forward) in segment 3; busy holds
    // records from segment 3 on. Dropping x lets segment 2 go with nothing
    // left to carry — but only once the drop is durable: a power cut before
    // that brings x back, with the records it had in segment 2.
    let dir = common::test_dir();
    let disk = SimDisk::new(7);
    let shape = Shape::one_periodic_shard();
    let c = config(dir.path(), shape, &disk);
    let record = |name: &str, i: u64| {
        let mut r = vec![i as u8; 32 << 10];
        r[..name.len()].copy_from_slice(name.as_bytes());
        r
    };
    {
        let engine = Engine::open(c.clone()).unwrap();
        let active = || engine.wal_usage().unwrap()[0].active_segment.0;
        let start = || engine.wal_usage().unwrap()[0].log_start.0;
        let busy = engine.register("busy").unwrap();
        let x = engine.register("x").unwrap();
        // x: 28 records fill segment 1 (with the registrations), 12 more
        // start segment 2.
        for i in 0..40 {
            x.append(&record("x", i)).unwrap();
        }
        let mut b = 0;
        while active() < 3 {
            busy.append(&record("busy", b)).unwrap();
            b += 1;
        }
        busy.checkpoint(Offset(b - 1)).unwrap();
        // Segment 1 holds no live record: x and busy are carried forward
        // into segment 3, and the log starts at 2.
        x.checkpoint(Offset(27)).unwrap();
        let started = std::time::Instant::now();
        while start() < 2 {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "segment 1 never went"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(active(), 3);
        for _ in 0..3 {
            busy.append(&record("busy", b)).unwrap();
            b += 1;
        }
        engine.unregister("x").unwrap();
        // Give a reclamation that would not wait for the drop the time to
        // publish a log start past segment 2.
        std::thread::sleep(Duration::from_millis(300));
        disk.plan(disk.stats().ops + 1, SimFault::PowerCut);
        let _ = busy.append(b"cut");
        drop((busy, x));
        let _ = engine.close();
    }
    disk.power_cut().unwrap();
    let engine = Engine::open(c).unwrap_or_else(|e| panic!("the reopen failed: {e}"));
    // The drop was not durable: x is back, with every record it held.
    let x = engine.register("x").unwrap();
    assert_eq!(x.first_offset().unwrap(), Offset(28));
    let got = x.read(..).unwrap();
    assert_eq!(got.len(), 12);
    for r in got {
        assert_eq!(&r.data[..], &record("x", r.offset.0)[..]);
    }
    engine.close().unwrap();
}
