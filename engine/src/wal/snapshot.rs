//! A shard's index snapshot: what replay would rebuild — the channel
//! table, every live record's place in the log, the segments of the log —
//! written at a clean close, so that the next open reads it instead of the
//! log. (Work in progress: encoding and decoding only; not yet written or
//! read by the engine.)
//!
//! A snapshot is a hint, never the truth. It names the store, the shard,
//! the manifest generation written at the close it describes and the last
//! commit then durable; an open trusts it only when the manifest still holds
//! that generation (a later session writes a newer one before its first
//! commit, so no commit followed) and everything else matches, and replays
//! the log otherwise. Damage anywhere fails its checksums: it is ignored.
//!
//! Layout (little-endian): a 64-byte header, then the body.
//!
//! | byte | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `"CWSN"` |
//! | 4 | 4 | CRC32C of bytes 8..64 |
//! | 8 | 2 | version = 1 |
//! | 10 | 2 | shard |
//! | 12 | 4 | flags: bit 0 = written at a clean close; others zero |
//! | 16 | 8 | store id |
//! | 24 | 8 | manifest generation |
//! | 32 | 8 | last durable commit |
//! | 40 | 8 | body bytes |
//! | 48 | 4 | CRC32C of the body |
//! | 52 | 12 | zero |
//!
//! The body: the tail (segment, write position, block size, next segment
//! number), the log's segments, the next channel id, the live channels
//! (each with its lost ranges, its runs and its records' places), and the
//! dropped names.

use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};

/// The snapshot file in a shard's directory.
pub const SNAPSHOT_FILE: &str = "snapshot";

const MAGIC: u32 = u32::from_le_bytes(*b"CWSN");
const VERSION: u16 = 1;
const HEADER_BYTES: usize = 64;

/// Largest snapshot read: a larger file is refused from its size.
pub const SNAPSHOT_BYTES_MAX: u64 = 16 << 30;

/// Where writing resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TailImage {
    /// The segment being written.
    pub segment: SegmentSeq,
    /// Its first free byte.
    pub position: u64,
    /// Its block size.
    pub block: u32,
    /// The number of the next new segment.
    pub next_segment: SegmentSeq,
    /// The last durable commit, `None` before the first.
    pub last_commit: Option<CommitTie>,
}

/// Where the last durable commit is and its header's checksum: an open
/// from a snapshot reads that commit back and checks it, so that a log
/// whose end was lost or replaced since the snapshot was written is
/// replayed (and refused), not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTie {
    /// The commit.
    pub seq: CommitSeq,
    /// Its segment.
    pub segment: SegmentSeq,
    /// Its header's byte position in the segment.
    pub position: u64,
    /// Its header's CRC32C, as written in the header.
    pub header_crc: u32,
}

/// One segment of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentImage {
    /// Its number.
    pub seq: SegmentSeq,
    /// Its file's size.
    pub bytes: u64,
    /// The channel id that was next when it began.
    pub next_channel_id: u64,
    /// The segment whose file it recycled, if any.
    pub recycled_from: Option<SegmentSeq>,
}

/// A live record's place: its commit, its entry's position, its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaceImage {
    /// The commit holding it.
    pub commit: CommitSeq,
    /// Its entry's byte position in its segment.
    pub position: u32,
    /// Its payload's length.
    pub len: u32,
}

/// A live channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelImage {
    /// Its id.
    pub id: ChannelId,
    /// Its name.
    pub name: String,
    /// Its first live offset.
    pub first: Offset,
    /// Its next offset.
    pub next: Offset,
    /// The commit of its registration.
    pub registered_in: CommitSeq,
    /// The commit of its latest checkpoint or truncation.
    pub changed_in: CommitSeq,
    /// The segment that last stated it whole.
    pub anchor: Option<SegmentSeq>,
    /// Offsets whose records were lost, `[from, to)`.
    pub lost: Vec<(Offset, Offset)>,
    /// Which segment holds its records: (segment, records), in order.
    pub runs: Vec<(SegmentSeq, u64)>,
    /// Each held record's place, in offset order (lost offsets left out).
    pub records: Vec<PlaceImage>,
}

/// A dropped name not registered again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetiredImage {
    /// The name.
    pub name: String,
    /// The channel that last had it.
    pub id: ChannelId,
    /// Where its offsets go on.
    pub next: Offset,
    /// The commit of the drop.
    pub dropped_in: CommitSeq,
    /// The segment that last stated it whole.
    pub anchor: Option<SegmentSeq>,
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotImage {
    /// The shard.
    pub shard: ShardId,
    /// The store.
    pub store_id: u64,
    /// The manifest generation written at the close it describes.
    pub generation: u64,
    /// Written at a clean close (else while the shard ran, every so many
    /// bytes of WAL: only a start for a replay of what followed).
    pub clean: bool,
    /// The last commit durable then.
    pub durable_through: CommitSeq,
    /// Where writing resumes.
    pub tail: TailImage,
    /// The log's segments, oldest first.
    pub log: Vec<SegmentImage>,
    /// The next channel id.
    pub next_id: u64,
    /// The live channels, in id order.
    pub channels: Vec<ChannelImage>,
    /// The dropped names.
    pub retired: Vec<RetiredImage>,
}

/// Why a snapshot is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRefused {
    /// Its bytes fail a check (truncated, damaged, wrong magic or version).
    Damaged(&'static str),
    /// It describes another store or shard.
    Foreign,
}

/// The snapshot's bytes.
pub fn encode(s: &SnapshotImage) -> Vec<u8> {
    let mut body = Writer(Vec::new());
    body.u64(s.tail.segment.0);
    body.u64(s.tail.position);
    body.u32(s.tail.block);
    body.u64(s.tail.next_segment.0);
    let tie = s.tail.last_commit;
    body.u64(tie.map_or(0, |t| t.segment.0));
    body.u64(tie.map_or(0, |t| t.seq.0));
    body.u64(tie.map_or(0, |t| t.position));
    body.u32(tie.map_or(0, |t| t.header_crc));
    body.u32(s.log.len() as u32);
    for g in &s.log {
        body.u64(g.seq.0);
        body.u64(g.bytes);
        body.u64(g.next_channel_id);
        body.u64(g.recycled_from.map_or(0, |r| r.0));
    }
    body.u64(s.next_id);
    body.u32(s.channels.len() as u32);
    for c in &s.channels {
        body.u32(c.id.0);
        body.name(&c.name);
        body.u64(c.first.0);
        body.u64(c.next.0);
        body.u64(c.registered_in.0);
        body.u64(c.changed_in.0);
        body.u64(c.anchor.map_or(0, |a| a.0));
        body.u32(c.lost.len() as u32);
        for (f, t) in &c.lost {
            body.u64(f.0);
            body.u64(t.0);
        }
        body.u32(c.runs.len() as u32);
        for (seg, n) in &c.runs {
            body.u64(seg.0);
            body.u64(*n);
        }
        body.u64(c.records.len() as u64);
        for r in &c.records {
            body.u64(r.commit.0);
            body.u32(r.position);
            body.u32(r.len);
        }
    }
    body.u32(s.retired.len() as u32);
    for r in &s.retired {
        body.name(&r.name);
        body.u32(r.id.0);
        body.u64(r.next.0);
        body.u64(r.dropped_in.0);
        body.u64(r.anchor.map_or(0, |a| a.0));
    }
    let body = body.0;
    let mut out = vec![0u8; HEADER_BYTES];
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[8..10].copy_from_slice(&VERSION.to_le_bytes());
    out[10..12].copy_from_slice(&s.shard.0.to_le_bytes());
    out[16..24].copy_from_slice(&s.store_id.to_le_bytes());
    out[12..16].copy_from_slice(&u32::from(s.clean).to_le_bytes());
    out[24..32].copy_from_slice(&s.generation.to_le_bytes());
    out[32..40].copy_from_slice(&s.durable_through.0.to_le_bytes());
    out[40..48].copy_from_slice(&(body.len() as u64).to_le_bytes());
    out[48..52].copy_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    let crc = crc32c::crc32c(&out[8..HEADER_BYTES]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The snapshot in `b`, if it is whole and of `store_id`'s `shard`.
pub fn decode(b: &[u8], shard: ShardId, store_id: u64) -> Result<SnapshotImage, SnapshotRefused> {
    use SnapshotRefused::{Damaged, Foreign};
    if b.len() < HEADER_BYTES {
        return Err(Damaged("shorter than its header"));
    }
    let h = &b[..HEADER_BYTES];
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(h[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(0) != MAGIC {
        return Err(Damaged("not a snapshot (magic)"));
    }
    if crc32c::crc32c(&h[8..]) != u32_at(4) {
        return Err(Damaged("header checksum"));
    }
    if u16::from_le_bytes([h[8], h[9]]) != VERSION {
        return Err(Damaged("unknown version"));
    }
    if u16::from_le_bytes([h[10], h[11]]) != shard.0 || u64_at(16) != store_id {
        return Err(Foreign);
    }
    let clean = match u32_at(12) {
        0 => false,
        1 => true,
        _ => return Err(Damaged("unknown flags")),
    };
    let body = &b[HEADER_BYTES..];
    if u64_at(40) != body.len() as u64 {
        return Err(Damaged("body length"));
    }
    if crc32c::crc32c(body) != u32_at(48) {
        return Err(Damaged("body checksum"));
    }
    let mut r = Reader(body);
    let (segment, position, block) = (SegmentSeq(r.u64()?), r.u64()?, r.u32()?);
    let next_segment = SegmentSeq(r.u64()?);
    let tie = (r.opt_seq()?, CommitSeq(r.u64()?), r.u64()?, r.u32()?);
    let last_commit = match tie {
        (None, CommitSeq(0), 0, 0) => None,
        (Some(segment), seq, position, header_crc) if seq.0 > 0 => Some(CommitTie {
            seq,
            segment,
            position,
            header_crc,
        }),
        _ => return Err(Damaged("last commit")),
    };
    let tail = TailImage {
        segment,
        position,
        block,
        next_segment,
        last_commit,
    };
    let log = r.list(32, |r| {
        Ok(SegmentImage {
            seq: SegmentSeq(r.u64()?),
            bytes: r.u64()?,
            next_channel_id: r.u64()?,
            recycled_from: r.opt_seq()?,
        })
    })?;
    let next_id = r.u64()?;
    let channels = r.list(62, channel)?;
    let retired = r.list(30, |r| {
        Ok(RetiredImage {
            name: r.name()?,
            id: ChannelId(r.u32()?),
            next: Offset(r.u64()?),
            dropped_in: CommitSeq(r.u64()?),
            anchor: r.opt_seq()?,
        })
    })?;
    if !r.0.is_empty() {
        return Err(Damaged("bytes after the last name"));
    }
    Ok(SnapshotImage {
        shard,
        store_id,
        generation: u64_at(24),
        clean,
        durable_through: CommitSeq(u64_at(32)),
        tail,
        log,
        next_id,
        channels,
        retired,
    })
}

fn channel(r: &mut Reader<'_>) -> Result<ChannelImage, SnapshotRefused> {
    let id = ChannelId(r.u32()?);
    let name = r.name()?;
    let (first, next) = (Offset(r.u64()?), Offset(r.u64()?));
    let (registered_in, changed_in) = (CommitSeq(r.u64()?), CommitSeq(r.u64()?));
    let anchor = r.opt_seq()?;
    let lost = r.list(16, |r| Ok((Offset(r.u64()?), Offset(r.u64()?))))?;
    let runs = r.list(16, |r| Ok((SegmentSeq(r.u64()?), r.u64()?)))?;
    let n = r.u64()?;
    if n > (r.0.len() / 16) as u64 {
        return Err(SnapshotRefused::Damaged("record count"));
    }
    let bytes = r.take(n as usize * 16)?;
    let records: Vec<PlaceImage> = bytes
        .chunks_exact(16)
        .map(|b| PlaceImage {
            commit: CommitSeq(u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"))),
            position: u32::from_le_bytes(b[8..12].try_into().expect("4 bytes")),
            len: u32::from_le_bytes(b[12..16].try_into().expect("4 bytes")),
        })
        .collect();
    if runs
        .iter()
        .map(|(_, k)| *k)
        .try_fold(0u64, u64::checked_add)
        != Some(n)
    {
        return Err(SnapshotRefused::Damaged("runs and records disagree"));
    }
    Ok(ChannelImage {
        id,
        name,
        first,
        next,
        registered_in,
        changed_in,
        anchor,
        lost,
        runs,
        records,
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn name(&mut self, n: &str) {
        self.0.extend_from_slice(&(n.len() as u16).to_le_bytes());
        self.0.extend_from_slice(n.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SnapshotRefused> {
        if self.0.len() < n {
            return Err(SnapshotRefused::Damaged("truncated body"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, SnapshotRefused> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, SnapshotRefused> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn opt_seq(&mut self) -> Result<Option<SegmentSeq>, SnapshotRefused> {
        Ok(Some(self.u64()?).filter(|&s| s != 0).map(SegmentSeq))
    }
    fn name(&mut self) -> Result<String, SnapshotRefused> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2")) as usize;
        let b = self.take(n)?;
        let name = std::str::from_utf8(b).map_err(|_| SnapshotRefused::Damaged("name"))?;
        crate::validate_channel_name(name).map_err(|_| SnapshotRefused::Damaged("name"))?;
        Ok(name.to_string())
    }
    /// A count, then that many items of at least `min_bytes` each (the
    /// count is bounded by what is left before anything is allocated).
    fn list<T>(
        &mut self,
        min_bytes: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, SnapshotRefused>,
    ) -> Result<Vec<T>, SnapshotRefused> {
        let n = self.u32()? as usize;
        if n > self.0.len() / min_bytes.max(1) {
            return Err(SnapshotRefused::Damaged("count beyond the bytes left"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(item(self)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> SnapshotImage {
        SnapshotImage {
            shard: ShardId(1),
            store_id: 77,
            generation: 9,
            clean: true,
            durable_through: CommitSeq(120),
            tail: TailImage {
                segment: SegmentSeq(4),
                position: 81920,
                block: 4096,
                next_segment: SegmentSeq(6),
                last_commit: Some(CommitTie {
                    seq: CommitSeq(120),
                    segment: SegmentSeq(4),
                    position: 77824,
                    header_crc: 0xdead_beef,
                }),
            },
            log: vec![
                SegmentImage {
                    seq: SegmentSeq(3),
                    bytes: 1 << 20,
                    next_channel_id: 2,
                    recycled_from: None,
                },
                SegmentImage {
                    seq: SegmentSeq(4),
                    bytes: 1 << 20,
                    next_channel_id: 3,
                    recycled_from: Some(SegmentSeq(1)),
                },
            ],
            next_id: 4,
            channels: vec![ChannelImage {
                id: ChannelId(2),
                name: "dml_3_v0".into(),
                first: Offset(10),
                next: Offset(14),
                registered_in: CommitSeq(5),
                changed_in: CommitSeq(90),
                anchor: Some(SegmentSeq(3)),
                lost: vec![(Offset(11), Offset(12))],
                runs: vec![(SegmentSeq(3), 2), (SegmentSeq(4), 1)],
                records: vec![
                    PlaceImage {
                        commit: CommitSeq(60),
                        position: 8192 + 64,
                        len: 5,
                    },
                    PlaceImage {
                        commit: CommitSeq(61),
                        position: 12288 + 64,
                        len: 0,
                    },
                    PlaceImage {
                        commit: CommitSeq(119),
                        position: 77824 + 64,
                        len: 300,
                    },
                ],
            }],
            retired: vec![RetiredImage {
                name: "gone".into(),
                id: ChannelId(1),
                next: Offset(7),
                dropped_in: CommitSeq(40),
                anchor: Some(SegmentSeq(4)),
            }],
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let s = image();
        let b = encode(&s);
        assert_eq!(decode(&b, ShardId(1), 77), Ok(s));
    }

    /// Every flipped bit and every truncation is refused, never read as
    /// another snapshot; another store's or shard's is foreign.
    #[test]
    fn damaged_truncated_and_foreign_snapshots_are_refused() {
        let b = encode(&image());
        for i in 0..b.len() {
            for bit in [0, 3, 7] {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                assert!(
                    decode(&d, ShardId(1), 77).is_err(),
                    "a flip of bit {bit} of byte {i} was accepted"
                );
            }
        }
        for n in 0..b.len() {
            assert!(
                decode(&b[..n], ShardId(1), 77).is_err(),
                "{n} bytes accepted"
            );
        }
        assert_eq!(decode(&b, ShardId(0), 77), Err(SnapshotRefused::Foreign));
        assert_eq!(decode(&b, ShardId(1), 78), Err(SnapshotRefused::Foreign));
    }

    /// A body whose checksums are made to match but whose counts claim
    /// more than it holds is refused before anything is allocated.
    #[test]
    fn crafted_counts_are_bounded_by_the_bytes() {
        let mut s = image();
        s.channels[0].records.clear();
        s.channels[0].runs.clear();
        let mut b = encode(&s);
        // The record count of the one channel: 8 bytes before the retired
        // list's count and its one entry.
        let retired_bytes = 4 + 2 + 4 + 4 + 8 + 8 + 8;
        let at = b.len() - retired_bytes - 8;
        b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        let body_crc = crc32c::crc32c(&b[HEADER_BYTES..]);
        b[48..52].copy_from_slice(&body_crc.to_le_bytes());
        let crc = crc32c::crc32c(&b[8..HEADER_BYTES]);
        b[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&b, ShardId(1), 77),
            Err(SnapshotRefused::Damaged("record count"))
        );
    }
}
