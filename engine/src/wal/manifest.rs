//! A shard's manifest: what must be known about the end of the log from
//! outside the segments, so that a lost, older or zeroed last segment is
//! never taken for the end of the log.
//!
//! ```text
//! shard-NNN/manifest   8192 bytes: two 4096-byte slots, generation g in slot g % 2
//! ```
//!
//! A slot, little-endian: `0 magic u32 "CWSH"`, `4 crc32c of bytes 8..80`
//! (version 1: `8..64`, version 2: `8..72`), `8 version u16` (3; 1 and 2
//! are read too), `10 shard u16`, `12 reserved u32`, `16 store_id u64`,
//! `24 generation u64`, `32 active_segment u64`, `40 durable_through u64`,
//! and from version 2: `48 log_start u64`, `56 log_start_next_id u64`,
//! `64 reclaimed_bytes u64`, and from version 3: `72 written_below u64`;
//! zeros to byte 4096.
//!
//! * `active_segment`: the newest segment the shard had begun to write
//!   commits into; a listing whose newest segment is older lost segments.
//! * `durable_through`: a commit every commit up to which was durable when
//!   the slot was written; a chain that ends before it lost acknowledged
//!   commits.
//! * `log_start`: the oldest segment of the log (0: not recorded, the log
//!   starts at the oldest segment present — a store that never reclaimed a
//!   segment). Segments before it were reclaimed: replay never reads one,
//!   and an open removes or recycles any that a crash left behind. A
//!   listing that lacks it, or a segment after it, lost segments.
//! * `log_start_next_id`: the channel id the shard would have handed out
//!   next when `log_start` began: ids below it were registered before the
//!   log start and are restated by state or retired entries in the log.
//! * `reclaimed_bytes`: segment bytes reclaimed over the shard's life (what
//!   replay no longer reads).
//! * `written_below`: no commit of `active_segment` is written at or beyond
//!   this byte (0: not recorded). The shard raises it, a generation at a
//!   time, before a commit would pass it, so that an open after a crash
//!   looks for commits after the end of the log it found up to here (and a
//!   little beyond), not through the segment's whole zero tail. Unlike the
//!   other values an older generation claims *more* here (a lower bound):
//!   an open that found a commit past it knows the generation that raised
//!   it was lost, and scans the whole segment as before (`recovery/replay.rs`).
//!
//! The shard writes a new generation (write, then data sync, waited on
//! before anything depends on it) before the first commit after an open,
//! before the first commit of each new segment, before a commit that would
//! pass `written_below`, and at a clean close after the last sync. Two
//! slots, as the copies of a superblock: a power cut that tears one write
//! leaves the previous generation whole in the other slot, and the other
//! values only grow, so an older generation is a weaker claim there, never
//! a wrong one (`written_below` aside, above).
//!
//! What the manifest cannot tell (the residual window, `docs/format.md`):
//! after an unclean stop, commits written since the last generation and lost
//! at the end of the newest segment — at most the commits of one segment —
//! look exactly like the commits a crash never wrote.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::io::file::{self, Access, DiskFile};
use crate::io::fs::Fs;
use crate::types::{CommitSeq, SegmentSeq, ShardId};

/// File name of a shard's manifest, in its directory.
pub const MANIFEST_FILE: &str = "manifest";
const MAGIC: u32 = u32::from_le_bytes(*b"CWSH");
const VERSION: u16 = 3;
const SLOT_BYTES: usize = 4096;
const FILE_BYTES: usize = 2 * SLOT_BYTES;
/// Bytes a slot of each version uses; its checksum covers `8..` them (the
/// first version's covered `8..64` and used 48).
const USED_BYTES_V1: usize = 48;
const USED_BYTES_V2: usize = 72;
const USED_BYTES: usize = 80;

/// One generation of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ManifestRecord {
    /// Counts the writes; the newest whole slot wins.
    pub generation: u64,
    /// Newest segment commits were being written into.
    pub active_segment: SegmentSeq,
    /// Every commit up to this one was durable.
    pub durable_through: CommitSeq,
    /// The oldest segment of the log, once segments were reclaimed.
    pub log_start: Option<LogStart>,
    /// Segment bytes reclaimed over the shard's life.
    pub reclaimed_bytes: u64,
    /// No commit of `active_segment` is written at or beyond this byte
    /// (0: not recorded).
    pub written_below: u64,
}

/// Where the log starts after reclamation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStart {
    /// The oldest segment replay reads.
    pub segment: SegmentSeq,
    /// The channel id the shard would have handed out next when that
    /// segment began.
    pub next_channel_id: u64,
}

/// What the manifest file held at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestState {
    /// No manifest: a new shard, or a store written before manifests
    /// existed (nothing is claimed about the end of its log).
    Missing,
    /// The newest whole generation.
    Found(ManifestRecord),
    /// The file was created but no generation of it ever became durable
    /// (the power went between its creation and its first generation).
    /// It claims nothing only about a log without commits: a shard writes
    /// its first generation before its first commit.
    Unwritten,
    /// A file is there but neither slot is whole and ours.
    Damaged(String),
}

fn encode(shard: ShardId, store_id: u64, r: &ManifestRecord) -> Vec<u8> {
    let mut b = vec![0u8; SLOT_BYTES];
    b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&shard.0.to_le_bytes());
    b[16..24].copy_from_slice(&store_id.to_le_bytes());
    b[24..32].copy_from_slice(&r.generation.to_le_bytes());
    b[32..40].copy_from_slice(&r.active_segment.0.to_le_bytes());
    b[40..48].copy_from_slice(&r.durable_through.0.to_le_bytes());
    let (start, next_id) = r
        .log_start
        .map_or((0, 0), |s| (s.segment.0, s.next_channel_id));
    b[48..56].copy_from_slice(&start.to_le_bytes());
    b[56..64].copy_from_slice(&next_id.to_le_bytes());
    b[64..72].copy_from_slice(&r.reclaimed_bytes.to_le_bytes());
    b[72..80].copy_from_slice(&r.written_below.to_le_bytes());
    let crc = crc32c::crc32c(&b[8..USED_BYTES]);
    b[4..8].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Whether a slot's checksum covers what it holds (a slot the power cut
/// during its write fails this or its magic), by the version it claims.
fn checksum_holds(b: &[u8]) -> bool {
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    let (covered, used) = match u16::from_le_bytes([b[8], b[9]]) {
        1 => (64, USED_BYTES_V1),
        2 => (USED_BYTES_V2, USED_BYTES_V2),
        _ => (USED_BYTES, USED_BYTES),
    };
    crc32c::crc32c(&b[8..covered]) == crc && b[used..SLOT_BYTES].iter().all(|&x| x == 0)
}

fn decode(shard: ShardId, store_id: u64, b: &[u8]) -> std::result::Result<ManifestRecord, String> {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    if b.len() < SLOT_BYTES {
        return Err("slot is short".into());
    }
    if b[0..4] != MAGIC.to_le_bytes() {
        return Err("bad magic".into());
    }
    if !checksum_holds(b) {
        return Err("checksum mismatch".into());
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if !(1..=VERSION).contains(&version) {
        return Err(format!("version {version} is not readable by this build"));
    }
    if u16::from_le_bytes([b[10], b[11]]) != shard.0 || u64_at(16) != store_id {
        return Err("belongs to another shard or store".into());
    }
    let active_segment = SegmentSeq(u64_at(32));
    let log_start = match u64_at(48) {
        0 => None,
        s if s > active_segment.0.max(1) => {
            return Err(format!("log start {s} after the active segment"))
        }
        s => Some(LogStart {
            segment: SegmentSeq(s),
            next_channel_id: u64_at(56),
        }),
    };
    Ok(ManifestRecord {
        generation: u64_at(24),
        active_segment,
        durable_through: CommitSeq(u64_at(40)),
        log_start,
        reclaimed_bytes: u64_at(64),
        written_below: if version >= 3 { u64_at(72) } else { 0 },
    })
}

/// Reads shard `shard`'s manifest from `shard_dir`.
pub fn read(shard_dir: &Path, shard: ShardId, store_id: u64) -> Result<ManifestState> {
    let path = shard_dir.join(MANIFEST_FILE);
    let f = match DiskFile::open_read(&path, Access::Buffered) {
        Ok(f) => f,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ManifestState::Missing)
        }
        Err(e) => return Err(e),
    };
    let len = f.len()?;
    if len != FILE_BYTES as u64 {
        return Ok(ManifestState::Damaged(format!(
            "shard manifest is {len} bytes, not {FILE_BYTES}"
        )));
    }
    let mut b = vec![0u8; FILE_BYTES];
    f.read_exact_at(&mut b, 0)?;
    let slots = [
        decode(shard, store_id, &b[..SLOT_BYTES]),
        decode(shard, store_id, &b[SLOT_BYTES..]),
    ];
    let best = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().ok().filter(|r| r.generation % 2 == i as u64))
        .max_by_key(|r| r.generation);
    // Generation 1 goes to the odd slot and the even slot is written only
    // once it was durable: an even slot that was never written (all zeros)
    // beside an odd one that is torn means no generation ever became
    // durable — the power went between the file's creation and its first
    // generation — or damage at rest zeroed it. Recovery tells the two
    // apart by whether the log holds commits (`ManifestState::Unwritten`).
    let odd = &b[SLOT_BYTES..];
    let odd_torn = odd[0..4] != MAGIC.to_le_bytes() || !checksum_holds(odd);
    if best.is_none() && odd_torn && b[..SLOT_BYTES].iter().all(|&x| x == 0) {
        return Ok(ManifestState::Unwritten);
    }
    Ok(match best {
        Some(r) => ManifestState::Found(*r),
        None => ManifestState::Damaged(format!(
            "shard manifest: neither copy is whole ({}; {})",
            slots[0].as_ref().err().map_or("wrong slot", |e| e),
            slots[1].as_ref().err().map_or("wrong slot", |e| e),
        )),
    })
}

/// The writer of a shard's manifest, owned by the shard thread.
#[derive(Debug)]
pub struct Manifest {
    path: PathBuf,
    shard: ShardId,
    store_id: u64,
    file_mode: u32,
    fs: Fs,
    file: Option<DiskFile>,
    last: Option<ManifestRecord>,
}

impl Manifest {
    /// The writer for `shard_dir`, continuing after `found` (the state
    /// recovery read).
    pub fn new(
        fs: &Fs,
        shard_dir: &Path,
        shard: ShardId,
        store_id: u64,
        file_mode: u32,
        found: &ManifestState,
    ) -> Manifest {
        Manifest {
            path: shard_dir.join(MANIFEST_FILE),
            shard,
            store_id,
            file_mode,
            fs: fs.clone(),
            file: None,
            last: match found {
                ManifestState::Found(r) => Some(*r),
                _ => None,
            },
        }
    }

    /// What the last generation written (or read) records.
    pub fn last(&self) -> Option<ManifestRecord> {
        self.last
    }

    /// Makes a new generation durable: what `record` says (its generation
    /// is the next one, whatever it holds). Returns once it is on stable
    /// storage.
    pub fn write(&mut self, record: ManifestRecord) -> Result<()> {
        let generation = self.last.map_or(1, |r| r.generation + 1);
        let record = ManifestRecord {
            generation,
            ..record
        };
        let slot = encode(self.shard, self.store_id, &record);
        if self.file.is_none() {
            self.file = Some(self.open_or_create()?);
        }
        let f = self.file.as_ref().expect("opened above");
        let at = (generation % 2) * SLOT_BYTES as u64;
        f.write_all_at(&slot, at, "write shard manifest")?;
        f.sync_data("sync shard manifest")?;
        self.last = Some(record);
        Ok(())
    }

    /// Opens the manifest, or creates it whole (zeros, synced, renamed into
    /// place, directory synced) so that it is never seen half-made.
    fn open_or_create(&self) -> Result<DiskFile> {
        if file::exists(&self.path) {
            let f = DiskFile::open_rw(&self.fs, &self.path, Access::Buffered)?;
            if f.len()? == FILE_BYTES as u64 {
                return Ok(f);
            }
            // A damaged manifest the open accepted (a lenient mode): made anew.
        }
        let tmp = self.path.with_extension("tmp");
        file::publish(
            &self.fs,
            &tmp,
            &self.path,
            &[0u8; FILE_BYTES],
            self.file_mode,
        )?;
        DiskFile::open_rw(&self.fs, &self.path, Access::Buffered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(active: u64, durable: u64) -> ManifestRecord {
        ManifestRecord {
            active_segment: SegmentSeq(active),
            durable_through: CommitSeq(durable),
            ..ManifestRecord::default()
        }
    }

    /// A manifest file holding `slot` as generation 1's (the odd slot),
    /// read back.
    fn read_back(dir: &Path, shard: ShardId, store: u64, slot: &[u8]) -> ManifestState {
        let mut file = vec![0u8; FILE_BYTES];
        file[SLOT_BYTES..].copy_from_slice(slot);
        std::fs::write(dir.join(MANIFEST_FILE), &file).unwrap();
        read(dir, shard, store).unwrap()
    }

    /// A slot of the second version (no `written_below`) is read as one
    /// that records none; the third's round-trips.
    #[test]
    fn a_second_version_slot_is_read_and_the_third_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, store) = (ShardId(2), 7u64);
        let r = ManifestRecord {
            generation: 3,
            log_start: Some(LogStart {
                segment: SegmentSeq(2),
                next_channel_id: 5,
            }),
            reclaimed_bytes: 99,
            written_below: 1 << 20,
            ..record(4, 30)
        };
        let mut slot = encode(shard, store, &r);
        assert_eq!(decode(shard, store, &slot), Ok(r));
        slot[8..10].copy_from_slice(&2u16.to_le_bytes());
        slot[72..80].fill(0);
        let crc = crc32c::crc32c(&slot[8..USED_BYTES_V2]);
        slot[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            read_back(dir.path(), shard, store, &slot),
            ManifestState::Found(ManifestRecord {
                written_below: 0,
                ..r
            })
        );
        // A third-version slot whose last field is damaged fails its
        // checksum.
        let mut slot = encode(shard, store, &r);
        slot[75] ^= 1;
        assert!(decode(shard, store, &slot).is_err());
    }

    /// A slot written by the first version (no log start) is read as one
    /// that records none.
    #[test]
    fn a_first_version_slot_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, store) = (ShardId(1), 9u64);
        let mut slot = vec![0u8; SLOT_BYTES];
        slot[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        slot[8..10].copy_from_slice(&1u16.to_le_bytes());
        slot[10..12].copy_from_slice(&shard.0.to_le_bytes());
        slot[16..24].copy_from_slice(&store.to_le_bytes());
        slot[24..32].copy_from_slice(&1u64.to_le_bytes());
        slot[32..40].copy_from_slice(&3u64.to_le_bytes());
        slot[40..48].copy_from_slice(&12u64.to_le_bytes());
        let crc = crc32c::crc32c(&slot[8..64]);
        slot[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            read_back(dir.path(), shard, store, &slot),
            ManifestState::Found(ManifestRecord {
                generation: 1,
                ..record(3, 12)
            })
        );
    }

    #[test]
    fn a_manifest_whose_first_generation_never_became_durable_reads_as_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, store) = (ShardId(0), 5);
        let path = dir.path().join(MANIFEST_FILE);
        // Created whole (zeros), then the power went before generation 1,
        // which goes to the odd slot, was durable: whole zeros, or zeros
        // in the even slot and a torn odd one.
        std::fs::write(&path, vec![0u8; FILE_BYTES]).unwrap();
        assert_eq!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Unwritten
        );
        let mut b = vec![0u8; FILE_BYTES];
        b[SLOT_BYTES..SLOT_BYTES + 40].fill(0x5A);
        std::fs::write(&path, &b).unwrap();
        assert_eq!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Unwritten
        );
        // A zero odd slot beside a damaged even one is damage: the even
        // slot is written only after the odd one was durable.
        let mut b = vec![0u8; FILE_BYTES];
        b[..40].fill(0x5A);
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Damaged(_)
        ));
    }

    #[test]
    fn the_newest_whole_copy_wins_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (shard, store) = (ShardId(3), 77);
        assert_eq!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Missing
        );
        let mut m = Manifest::new(
            &Fs::Real,
            dir.path(),
            shard,
            store,
            0o600,
            &ManifestState::Missing,
        );
        m.write(record(1, 0)).unwrap();
        let start = LogStart {
            segment: SegmentSeq(2),
            next_channel_id: 7,
        };
        m.write(ManifestRecord {
            log_start: Some(start),
            reclaimed_bytes: 1 << 20,
            ..record(2, 40)
        })
        .unwrap();
        let found = read(dir.path(), shard, store).unwrap();
        let ManifestState::Found(r) = found else {
            panic!("{found:?}")
        };
        assert_eq!(
            (r.generation, r.active_segment, r.durable_through),
            (2, SegmentSeq(2), CommitSeq(40))
        );
        assert_eq!((r.log_start, r.reclaimed_bytes), (Some(start), 1 << 20));
        // Tear the newest slot: the older generation is read.
        let path = dir.path().join(MANIFEST_FILE);
        let mut b = std::fs::read(&path).unwrap();
        b[30] ^= 1;
        std::fs::write(&path, &b).unwrap();
        let ManifestState::Found(r) = read(dir.path(), shard, store).unwrap() else {
            panic!()
        };
        assert_eq!(r.generation, 1);
        // Both torn, or another store's: damage.
        b[SLOT_BYTES + 30] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Damaged(_)
        ));
        std::fs::write(&path, vec![0u8; 3]).unwrap();
        assert!(matches!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Damaged(_)
        ));
        let mut m = Manifest::new(
            &Fs::Real,
            dir.path(),
            shard,
            store,
            0o600,
            &ManifestState::Missing,
        );
        m.write(record(5, 9)).unwrap();
        assert!(matches!(
            read(dir.path(), ShardId(4), store).unwrap(),
            ManifestState::Damaged(_)
        ));
        assert!(matches!(
            read(dir.path(), shard, store).unwrap(),
            ManifestState::Found(_)
        ));
    }
}
