//! A whole data directory as bytes, damaged on purpose and recovered: the
//! harness shared by the bounded property test (`tests/fuzz_bounded.rs`) and
//! the libFuzzer target (`fuzz/fuzz_targets/recover_dir.rs`).
//!
//! The promise checked: whatever the damage, `Engine::open` either refuses
//! with `Error::Corruption` (or `Error::Format`) or opens — without a panic —
//! and then every record it returns is the one written at that offset. No
//! mode may invent, move or alter a record.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use corewal::{Backend, Config, Engine, Error, Offset, RecoveryMode};

/// The channels of the image.
pub const CHANNELS: [&str; 3] = ["a", "b", "c"];

/// A store's files (paths relative to its directory) and what was written.
pub struct Image {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// Per channel: offset → record.
    pub records: HashMap<String, HashMap<u64, Vec<u8>>>,
}

fn config(dir: &Path, mode: RecoveryMode) -> Config {
    let mut c = Config::new(dir);
    c.shards = Some(1);
    // The portable backend works on any filesystem (the fuzzer may run on
    // a tmpfs) and its replay logic is the same.
    c.backend = Backend::Portable;
    c.segment_bytes = 1 << 20;
    c.commit_bytes_max = 256 << 10;
    c.record_bytes_max = 64 << 10;
    c.recovery_mode = mode;
    c
}

fn read_tree(root: &Path, at: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in std::fs::read_dir(at).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            read_tree(root, &p, out);
        } else {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            out.push((rel, std::fs::read(&p).unwrap()));
        }
    }
}

/// Writes a small store in `dir` — three channels, records of varied sizes
/// in commits of one to five, a drop and a re-registration, across two
/// segments — and returns its bytes.
pub fn build(dir: &Path) -> Image {
    let engine = Engine::open(config(dir, RecoveryMode::TolerateTornTail)).unwrap();
    let mut records: HashMap<String, HashMap<u64, Vec<u8>>> = HashMap::new();
    for round in 0..120u64 {
        let name = CHANNELS[(round % 3) as usize];
        // A drop: the channel's records stay in `records` (the check is that
        // nothing is invented or moved; drops are tested in tests/api.rs),
        // and the re-registered channel's offsets continue after them.
        if round == 60 {
            engine.unregister("b").unwrap();
        }
        let ch = engine.register(name).unwrap();
        let batch: Vec<Vec<u8>> = (0..1 + round % 5)
            .map(|k| vec![(round * 7 + k) as u8; 50 + ((round * 131 + k * 17) % 3000) as usize])
            .collect();
        let first = ch.append_batch(&batch).unwrap();
        for (k, r) in batch.into_iter().enumerate() {
            records
                .entry(name.to_string())
                .or_default()
                .insert(first.0 + k as u64, r);
        }
    }
    engine.close().unwrap();
    let mut files = Vec::new();
    read_tree(dir, dir, &mut files);
    files.sort();
    Image { files, records }
}

/// One way to damage the image.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flip one bit of a file.
    FlipBit { file: usize, bit: u64 },
    /// Zero `len` bytes from `at`.
    Zero { file: usize, at: u64, len: u64 },
    /// Copy `len` bytes from `from` to `to` within a file.
    Copy {
        file: usize,
        from: u64,
        to: u64,
        len: u64,
    },
    /// Cut a file to `len` bytes.
    Truncate { file: usize, len: u64 },
    /// Remove a file.
    Remove { file: usize },
}

impl Mutation {
    /// Decodes mutations from arbitrary bytes, 17 bytes each: the shape the
    /// fuzzer explores.
    pub fn list_from_bytes(data: &[u8]) -> Vec<Mutation> {
        data.chunks_exact(17)
            .map(|c| {
                let u = |i: usize| u64::from_le_bytes(c[i..i + 8].try_into().unwrap());
                let (file, a, b) = (c[0] as usize >> 3, u(1), u(9));
                match c[0] & 7 {
                    0..=2 => Mutation::FlipBit { file, bit: a },
                    3 => Mutation::Zero {
                        file,
                        at: a,
                        len: b % 65536,
                    },
                    4 => Mutation::Copy {
                        file,
                        from: a,
                        to: b,
                        len: (a ^ b) % 65536,
                    },
                    5 | 6 => Mutation::Truncate { file, len: a },
                    _ => Mutation::Remove { file },
                }
            })
            .collect()
    }

    fn apply(&self, files: &mut [(PathBuf, Option<Vec<u8>>)]) {
        let n = files.len();
        let pick = |f: usize| f % n;
        match *self {
            Mutation::FlipBit { file, bit } => {
                if let Some(d) = files[pick(file)].1.as_mut().filter(|d| !d.is_empty()) {
                    let bit = bit % (d.len() as u64 * 8);
                    d[(bit / 8) as usize] ^= 1 << (bit % 8);
                }
            }
            Mutation::Zero { file, at, len } => {
                if let Some(d) = files[pick(file)].1.as_mut().filter(|d| !d.is_empty()) {
                    let at = (at % d.len() as u64) as usize;
                    let end = (at + len as usize).min(d.len());
                    d[at..end].fill(0);
                }
            }
            Mutation::Copy {
                file,
                from,
                to,
                len,
            } => {
                if let Some(d) = files[pick(file)].1.as_mut().filter(|d| !d.is_empty()) {
                    let l = d.len();
                    let (from, to) = ((from % l as u64) as usize, (to % l as u64) as usize);
                    let len = (len as usize).min(l - from).min(l - to);
                    d.copy_within(from..from + len, to);
                }
            }
            Mutation::Truncate { file, len } => {
                if let Some(d) = files[pick(file)].1.as_mut() {
                    let keep = (len % (d.len() as u64 + 1)) as usize;
                    d.truncate(keep);
                }
            }
            Mutation::Remove { file } => files[pick(file)].1 = None,
        }
    }
}

/// Writes the image with `mutations` applied into the empty directory
/// `scratch`, opens it in `mode` and checks the promise. Panics on a
/// broken promise (and on an engine panic, which the engine reports as an
/// error other than `Corruption`).
pub fn check(image: &Image, mutations: &[Mutation], mode: RecoveryMode, scratch: &Path) {
    let mut files: Vec<(PathBuf, Option<Vec<u8>>)> = image
        .files
        .iter()
        .map(|(p, d)| (p.clone(), Some(d.clone())))
        .collect();
    for m in mutations {
        m.apply(&mut files);
    }
    for (rel, data) in &files {
        if let Some(d) = data {
            let p = scratch.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
    }
    let engine = match Engine::open(config(scratch, mode)) {
        Ok(e) => e,
        Err(Error::Corruption { .. } | Error::Format { .. }) => return,
        Err(e) => panic!("{mode:?} {mutations:?}: open failed with {e}"),
    };
    for name in CHANNELS {
        let ch = engine.register(name).unwrap();
        let written = image.records.get(name);
        // An open from the index snapshot checks the commits before the
        // last one as they are read: a damaged one is reported there.
        let read = match ch.read(..) {
            Ok(read) => read,
            Err(Error::Corruption { .. }) if mode == RecoveryMode::TolerateTornTail => continue,
            Err(e) => panic!("{mode:?} {mutations:?}: reading {name} failed with {e}"),
        };
        for r in read {
            let Offset(o) = r.offset;
            let want = written.and_then(|w| w.get(&o));
            assert_eq!(
                Some(&r.data[..]),
                want.map(|w| &w[..]),
                "{mode:?} {mutations:?}: channel {name} offset {o} is not what was written there"
            );
        }
    }
    engine.close().unwrap();
}

/// Runs every decoder of the format over arbitrary bytes taken as a segment
/// file with `block`-byte blocks: the segment header, then a commit header
/// and its entries at every block. Nothing may panic, read out of bounds or
/// loop; whatever decodes must be within its header's span.
pub fn decode_segment_bytes(data: &[u8], block: usize) -> usize {
    use corewal_engine::wal::format::{
        decode_commit_header, decode_segment_header, decode_state_payload, EntryIter,
        COMMIT_HEADER_BYTES,
    };
    let mut decoded = usize::from(decode_segment_header(data).is_ok());
    // A state entry's payload decoder, over the raw bytes too: its count of
    // lost ranges is bounded by the bytes before anything is allocated.
    if let Ok(p) = decode_state_payload(data) {
        assert!(p.lost.len() * 16 <= data.len());
    }
    let mut pos = 0;
    while pos < data.len() {
        if let Ok(h) = decode_commit_header(&data[pos..], block) {
            // The decoder promises the entries fit the span its header
            // claims; whether the span fits the file is the reader's check
            // (recovery calls a commit running past the end damaged).
            let span = h.blocks as usize * block;
            let body_end = pos + COMMIT_HEADER_BYTES + h.entries_bytes as usize;
            assert!(
                body_end <= pos + span,
                "entries accepted past the header's span"
            );
            if pos + span > data.len() {
                pos += block;
                continue;
            }
            let body = &data[pos + COMMIT_HEADER_BYTES..body_end];
            for e in EntryIter::new(body, h.commit_seq, h.entry_count).take(1 << 20) {
                match e {
                    Ok(e) => {
                        assert!(e.payload.len() <= body.len());
                        if let Ok(p) = decode_state_payload(e.payload) {
                            assert!(p.lost.len() * 16 <= e.payload.len());
                        }
                        decoded += 1;
                    }
                    Err(_) => break,
                }
            }
        }
        pos += block;
    }
    decoded
}

/// Makes arbitrary bytes pass the magic, version and checksum of the commit
/// header at byte 0 and the checksum of each entry that follows, so that a
/// fuzzer explores the field checks behind them rather than stopping there.
pub fn seal_checksums(data: &mut [u8]) {
    use corewal_engine::wal::format::{
        COMMIT_HEADER_BYTES, COMMIT_MAGIC, ENTRY_ALIGN, ENTRY_HEADER_BYTES, FORMAT_VERSION,
    };
    if data.len() < COMMIT_HEADER_BYTES {
        return;
    }
    data[0..4].copy_from_slice(&COMMIT_MAGIC.to_le_bytes());
    data[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let crc = crc32c::crc32c(&data[8..COMMIT_HEADER_BYTES]);
    data[4..8].copy_from_slice(&crc.to_le_bytes());
    let seq = &data[32..40];
    let seed = crc32c::crc32c(seq);
    let mut p = COMMIT_HEADER_BYTES;
    while p + ENTRY_HEADER_BYTES <= data.len() {
        let len = u32::from_le_bytes(data[p + 4..p + 8].try_into().unwrap()) as usize;
        let total = (ENTRY_HEADER_BYTES + len).div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN;
        if p + total > data.len() {
            break;
        }
        let crc = crc32c::crc32c_append(seed, &data[p + 4..p + total]);
        data[p..p + 4].copy_from_slice(&crc.to_le_bytes());
        p += total;
    }
}
