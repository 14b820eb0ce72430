//! Crafted input (invariant 8): files made by someone other than corewal —
//! commits with valid checksums and impossible numbers, a huge or special
//! `corewal.meta`, a FIFO named like a segment, segment names a strict
//! parser refuses. Each must get an error or a bounded, correct recovery:
//! never a hang, a panic or an allocation sized by the input.

mod common;

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::{peak_rss_bytes, reset_peak_rss, test_dir, within};
use corewal::{Backend, Config, DamageKind, Engine, Error, Offset, RecoveryMode};
use corewal_engine::types::{ChannelId, CommitSeq, Offset as RawOffset};
use corewal_engine::wal::format::{
    decode_segment_header, encode_commit_header, encode_entry, entry_bytes, CommitHeader,
    EntryKind, COMMIT_HEADER_BYTES,
};

/// Memory is measured per process: the tests that measure it take turns.
static MEMORY: Mutex<()> = Mutex::new(());

/// Growth of the peak RSS a bounded recovery may show.
const BOUNDED_BYTES: u64 = 256 << 20;

fn config(dir: &Path, mode: RecoveryMode) -> Config {
    let mut c = common::small_config(dir, 1, Backend::Portable);
    c.recovery_mode = mode;
    c
}

/// A store with channel "a" holding three records; returns its segment,
/// the block size and the byte after its last commit.
fn store(dir: &Path) -> (PathBuf, usize, usize) {
    let engine = Engine::open(config(dir, RecoveryMode::TolerateTornTail)).unwrap();
    let ch = engine.register("a").unwrap();
    for r in [&b"r0"[..], b"r1", b"r2"] {
        ch.append(r).unwrap();
    }
    let block = engine.block_bytes();
    engine.close().unwrap();
    let seg = common::segments(dir).remove(0);
    let end = common::commits(&seg, block)
        .last()
        .map(|c| c.pos + c.span)
        .unwrap();
    (seg, block, end)
}

/// Appends to the segment, at `end`, a damaged block and then a whole
/// commit (valid checksums) holding `entries`: in `SkipDamaged` the damaged
/// block is passed over and the crafted commit applied after it.
fn craft_after_damage(
    seg: &Path,
    block: usize,
    end: usize,
    entries: &[(EntryKind, u32, u64, &[u8])],
) {
    let mut data = std::fs::read(seg).unwrap();
    let header = decode_segment_header(&data).unwrap();
    // Commit 1 registered "a", commits 2..=4 hold its records.
    let next = common::commits(seg, block).len() as u64 + 1;
    data[end..end + block].fill(0xa5);
    let at = end + block;
    let mut commit = vec![0u8; block];
    let mut used = COMMIT_HEADER_BYTES;
    for &(kind, channel, offset, payload) in entries {
        used += encode_entry(
            CommitSeq(next + 1),
            kind,
            ChannelId(channel),
            RawOffset(offset),
            payload,
            &mut commit[used..],
        );
    }
    assert!(used <= block);
    let h = CommitHeader {
        shard: header.shard,
        entry_count: entries.len() as u32,
        store_id: header.store_id,
        segment_seq: header.segment_seq,
        commit_seq: CommitSeq(next + 1),
        position: at as u64,
        entries_bytes: entries.iter().map(|e| entry_bytes(e.3.len()) as u32).sum(),
        blocks: 1,
        in_flight_max: 1,
    };
    encode_commit_header(&h, &mut commit);
    data[at..at + block].copy_from_slice(&commit);
    std::fs::write(seg, data).unwrap();
}

#[test]
fn a_crafted_offset_far_ahead_costs_no_memory_per_missing_offset() {
    let _turn = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    let dir = test_dir();
    let (seg, block, end) = store(dir.path());
    let far = 1u64 << 25;
    craft_after_damage(&seg, block, end, &[(EntryKind::Append, 0, far, b"far")]);
    reset_peak_rss();
    let before = peak_rss_bytes();
    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(
        grown < BOUNDED_BYTES,
        "recovery grew the peak RSS by {} MiB for one crafted offset",
        grown >> 20
    );
    let ch = engine.register("a").unwrap();
    let offsets: Vec<u64> = ch.read(..).unwrap().iter().map(|r| r.offset.0).collect();
    assert_eq!(offsets, [0, 1, 2, far]);
    assert_eq!(ch.next_offset().unwrap(), Offset(far + 1));
    assert_eq!(ch.read(Offset(far)..).unwrap().len(), 1);
    assert!(ch.read(Offset(3)..Offset(far)).unwrap().is_empty());
}

#[test]
fn a_crafted_channel_id_far_ahead_costs_no_memory_per_missing_id() {
    let _turn = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    let dir = test_dir();
    let (seg, block, end) = store(dir.path());
    let far = 1u32 << 23;
    craft_after_damage(
        &seg,
        block,
        end,
        &[
            (EntryKind::Register, far, 0, b"b"),
            (EntryKind::Append, far, 0, b"b0"),
        ],
    );
    reset_peak_rss();
    let before = peak_rss_bytes();
    let engine = Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)).unwrap();
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(
        grown < BOUNDED_BYTES,
        "recovery grew the peak RSS by {} MiB for one crafted channel id",
        grown >> 20
    );
    let b = engine.register("b").unwrap();
    assert_eq!(&b.read(..).unwrap()[0].data[..], b"b0");
    assert_eq!(engine.register("a").unwrap().read(..).unwrap().len(), 3);
    // A new registration gets an id after the crafted one.
    let c = engine.register("c").unwrap();
    assert_eq!(c.append(b"c0").unwrap(), Offset(0));
}

#[test]
fn a_crafted_offset_at_the_top_of_the_range_never_wraps() {
    let dir = test_dir();
    let (seg, block, end) = store(dir.path());
    craft_after_damage(
        &seg,
        block,
        end,
        &[(EntryKind::Append, 0, u64::MAX, b"top")],
    );
    match Engine::open(config(dir.path(), RecoveryMode::SkipDamaged)) {
        Err(Error::Corruption { kind, .. }) => {
            assert!(matches!(kind, DamageKind::Entry(_)), "{kind:?}");
            assert!(kind.to_string().contains("offset"), "{kind}");
        }
        Ok(engine) => {
            let ch = engine.register("a").unwrap();
            let highest = ch.read(..).unwrap().last().unwrap().offset;
            match ch.append(b"next") {
                Ok(at) => assert!(at > highest, "offset {at} handed out again"),
                Err(e) => assert!(!matches!(e, Error::Internal { .. }), "{e}"),
            }
        }
        Err(e) => panic!("expected Corruption, got {e}"),
    }
}

#[test]
fn a_huge_sparse_meta_file_is_refused_at_once() {
    let _turn = MEMORY.lock().unwrap_or_else(|p| p.into_inner());
    let dir = test_dir();
    store(dir.path());
    let meta = dir.path().join("corewal.meta");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&meta)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    reset_peak_rss();
    let before = peak_rss_bytes();
    match Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)) {
        Err(Error::Format { path, .. }) => assert_eq!(path, meta),
        other => panic!("expected Format, got {other:?}"),
    }
    let grown = peak_rss_bytes().saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "reading the meta file took {} MiB",
        grown >> 20
    );
}

/// Makes a FIFO at `path`.
fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

/// Lets a reader stuck opening the FIFO go (a writer's open releases it).
fn release(path: &Path) {
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path);
}

#[test]
fn special_files_where_the_engine_expects_its_own_are_refused_not_waited_on() {
    for (what, name) in [
        (
            "a FIFO named like the next segment",
            "shard-000/0000000000000002.wal",
        ),
        ("a FIFO as corewal.meta", "corewal.meta"),
    ] {
        let dir = test_dir();
        store(dir.path());
        let path = dir.path().join(name);
        let _ = std::fs::remove_file(&path);
        mkfifo(&path);
        let d = dir.path().to_path_buf();
        let opened = within(Duration::from_secs(10), move || {
            Engine::open(config(&d, RecoveryMode::TolerateTornTail)).map(drop)
        });
        release(&path);
        match opened {
            None => panic!("{what}: open hangs"),
            Some(Err(Error::Format { path: p, .. })) => assert_eq!(p, path, "{what}"),
            Some(other) => panic!("{what}: expected Format, got {other:?}"),
        }
    }
}

#[test]
fn segment_names_are_parsed_strictly() {
    for bad in [
        "000000000000000A.wal",
        "+000000000000003.wal",
        "00000000000003.wal",
    ] {
        let dir = test_dir();
        store(dir.path());
        let path = dir.path().join("shard-000").join(bad);
        std::fs::write(&path, b"").unwrap();
        match Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)) {
            Err(Error::Format { path: p, what }) => {
                assert_eq!(p, path, "{bad}");
                assert!(what.contains("16"), "{bad}: {what}");
            }
            other => panic!("{bad}: expected Format, got {other:?}"),
        }
    }
}

#[test]
fn a_lost_meta_file_is_refused_unless_the_store_never_held_anything() {
    // Shard directories without corewal.meta: a crash during the store's
    // creation leaves them empty (the meta comes last, and nothing is
    // written before it) and the next open creates the store again; once
    // a shard holds a file, the meta was lost and the open refuses.
    let dir = test_dir();
    for s in 0..2 {
        std::fs::create_dir(dir.path().join(format!("shard-{s:03}"))).unwrap();
    }
    let engine = Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)).unwrap();
    engine.register("a").unwrap().append(b"x").unwrap();
    engine.close().unwrap();
    std::fs::remove_file(dir.path().join("corewal.meta")).unwrap();
    match Engine::open(config(dir.path(), RecoveryMode::TolerateTornTail)) {
        Err(Error::Format { path, what }) => {
            assert!(path.ends_with("corewal.meta"), "{path:?}");
            assert!(what.contains("missing"), "{what}");
        }
        other => panic!("expected Format, got {other:?}"),
    }
}
