//! The on-disk format, byte by byte. `docs/format.md` describes the same
//! layout in prose; change both in the same commit.
//!
//! All integers are little-endian. A segment file is a sequence of blocks of
//! `block_bytes`. Block 0 holds the segment header; commits follow, each
//! starting on a block boundary and padded with zeros to one.
//!
//! ```text
//! segment header (64 bytes at byte 0)     commit header (64 bytes at a block start)
//!  0 magic   u32 = SEGMENT_MAGIC            0 magic        u32 = COMMIT_MAGIC
//!  4 crc     u32 crc32c of bytes 8..64      4 crc          u32 crc32c of bytes 8..64
//!  8 version u16                            8 version      u16
//! 10 shard   u16                           10 shard        u16
//! 12 block_bytes u32                       12 entry_count  u32
//! 16 store_id u64                          16 store_id     u64
//! 24 segment_seq u64                       24 segment_seq  u64
//! 32 segment_bytes u64                     32 commit_seq   u64
//! 40 recycled_from u64 (0: zero-filled;   40 position     u64  (byte of this header)
//!    else the segment whose file this was) 48 entries_bytes u32
//! 48 reserved (zero) 16 bytes
//!                                          52 blocks       u32  (blocks spanned, with padding)
//!                                          56 in_flight_max u16 (commits before
//!                                             this one possibly not durable)
//!                                          58 reserved (zero) 6 bytes
//!
//! entry (24-byte header, payload, zero padding to 8 bytes)
//!  0 crc      u32 crc32c of (commit_seq as 8 bytes LE) ++ entry bytes 4..24+len
//!  4 len      u32 payload bytes
//!  8 kind     u8  1 = append, 2 = register, 3 = drop, 4 = checkpoint,
//!                 5 = truncate, 6 = state, 7 = retired, 8 = relocate
//!  9 flags    u8  zero
//! 10 reserved u16 zero
//! 12 channel  u32 shard-local channel id
//! 16 offset   u64 append: the record's offset; register: the channel's first
//!                 offset; drop: the channel's next offset when dropped;
//!                 checkpoint: the channel's first live offset from then on;
//!                 truncate: its next offset from then on; state: its first
//!                 live offset; retired: where the name's offsets go on;
//!                 relocate: the record's offset
//! 24 payload  append, relocate: the record; register, retired: the channel
//!             name; state: see `StatePayload`; others: empty
//! ```
//!
//! Entries of kinds 6–8 carry what the log holds forward, so that older
//! segments can be reclaimed (`docs/format.md`, "Reclamation"): *state*
//! restates a live channel whole, *retired* a dropped name's next offset,
//! *relocate* a live record kept in an older segment.
//!
//! Identity: a commit header names its store, shard, segment, commit sequence
//! and its own byte position, and every entry's CRC is seeded with the commit
//! sequence, so bytes left from an older life of a file, another shard, another
//! directory or another place in the same file never decode as a record here.

use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};

/// Whether `b` holds only zeros: never-written bytes. Reads eight bytes
/// at a time and folds them without stopping early, which the compiler
/// vectorizes: replay asks this of every block after a chain end, and a
/// byte-at-a-time scan that stops at the first non-zero byte cost a tenth
/// of a replay's CPU (docs/BENCHMARKS.md).
pub fn is_zeros(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    let ored = words.by_ref().fold(0u64, |acc, w| {
        acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
    });
    ored == 0 && words.remainder().iter().all(|&x| x == 0)
}

/// The largest commit the format allows: the upper bound of
/// `Config::commit_bytes_max`, and what recovery accepts from disk.
pub const COMMIT_BYTES_LIMIT: usize = 64 << 20;

/// `"CWSG"` read as a little-endian u32.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"CWSG");
/// `"CWCM"` read as a little-endian u32.
pub const COMMIT_MAGIC: u32 = u32::from_le_bytes(*b"CWCM");
/// Format version written by this build.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Bytes of a commit header.
pub const COMMIT_HEADER_BYTES: usize = 64;
/// Bytes of an entry header.
pub const ENTRY_HEADER_BYTES: usize = 24;
/// Entries are padded to this alignment.
pub const ENTRY_ALIGN: usize = 8;
/// Longest channel name, in bytes.
pub const CHANNEL_NAME_BYTES_MAX: usize = 255;

const _: () = assert!(COMMIT_HEADER_BYTES.is_multiple_of(ENTRY_ALIGN));
const _: () = assert!(ENTRY_HEADER_BYTES.is_multiple_of(ENTRY_ALIGN));
const _: () = assert!(SEGMENT_HEADER_BYTES <= 512);

/// What an entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryKind {
    /// A record appended to a channel.
    Append = 1,
    /// A channel registered; payload is the name.
    Register = 2,
    /// A channel dropped.
    Drop = 3,
    /// A channel's records below the entry's offset checkpointed.
    Checkpoint = 4,
    /// A channel's records from the entry's offset on removed.
    Truncate = 5,
    /// A live channel restated whole (name, first and next offsets, lost
    /// ranges), carried forward before the segments that stated it go.
    State = 6,
    /// A dropped name restated: where a registration of it starts.
    Retired = 7,
    /// A live record written again, so that the older segment holding it
    /// can go.
    Relocate = 8,
}

impl EntryKind {
    /// The kind's name, as tools print it.
    pub fn word(self) -> &'static str {
        match self {
            EntryKind::Append => "append",
            EntryKind::Register => "register",
            EntryKind::Drop => "drop",
            EntryKind::Checkpoint => "checkpoint",
            EntryKind::Truncate => "truncate",
            EntryKind::State => "state",
            EntryKind::Retired => "retired",
            EntryKind::Relocate => "relocate",
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(EntryKind::Append),
            2 => Some(EntryKind::Register),
            3 => Some(EntryKind::Drop),
            4 => Some(EntryKind::Checkpoint),
            5 => Some(EntryKind::Truncate),
            6 => Some(EntryKind::State),
            7 => Some(EntryKind::Retired),
            8 => Some(EntryKind::Relocate),
            _ => None,
        }
    }
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Shard owning the segment.
    pub shard: ShardId,
    /// Write unit of the segment's commits.
    pub block_bytes: u32,
    /// The directory's random identity.
    pub store_id: u64,
    /// The segment's sequence number.
    pub segment_seq: SegmentSeq,
    /// File size at creation.
    pub segment_bytes: u64,
    /// The segment whose file was recycled into this one (`None`: created
    /// and zero-filled). After the chain of commits, a recycled segment holds
    /// what its earlier life wrote: bytes that do not claim to be a commit
    /// of this segment end its chain, as zeros end a fresh one.
    pub recycled_from: Option<SegmentSeq>,
}

/// The decoded commit header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitHeader {
    /// Shard that wrote the commit.
    pub shard: ShardId,
    /// Entries in the commit.
    pub entry_count: u32,
    /// The directory's identity.
    pub store_id: u64,
    /// Segment the commit was written to.
    pub segment_seq: SegmentSeq,
    /// The commit's sequence number in its shard.
    pub commit_seq: CommitSeq,
    /// Byte position of the header in its segment.
    pub position: u64,
    /// Bytes of entries after the header.
    pub entries_bytes: u32,
    /// Blocks the commit spans, padding included.
    pub blocks: u32,
    /// How many commits before this one may not have been durable when it
    /// was written (the window): the commits in flight with it, and in
    /// Periodic mode every commit since the last completed data sync. A
    /// missing commit within a later commit's window is a torn tail.
    pub in_flight_max: u16,
}

/// A decoded entry, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// What the entry says.
    pub kind: EntryKind,
    /// Channel it concerns.
    pub channel: ChannelId,
    /// See the module docs for what the offset means per kind.
    pub offset: Offset,
    /// The payload.
    pub payload: &'a [u8],
}

/// Why bytes do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes hold no header at all (all zero: never written).
    Empty,
    /// Magic number mismatch.
    BadMagic(u32),
    /// The header's checksum does not match.
    BadHeaderCrc,
    /// A version this build does not read.
    BadVersion(u16),
    /// A field is out of its bounds (e.g. a length past the buffer).
    OutOfBounds(&'static str),
    /// An identity field does not match where the bytes were found.
    WrongIdentity(&'static str),
    /// Entry `index` fails its checksum.
    BadEntryCrc {
        /// Index of the entry in its commit.
        index: u32,
    },
    /// Entry `index` has an unknown kind or non-zero reserved bytes.
    BadEntry {
        /// Index of the entry in its commit.
        index: u32,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Empty => write!(f, "no header (zero bytes)"),
            DecodeError::BadMagic(m) => write!(f, "bad magic {m:#010x}"),
            DecodeError::BadHeaderCrc => write!(f, "header checksum mismatch"),
            DecodeError::BadVersion(v) => write!(f, "unknown format version {v}"),
            DecodeError::OutOfBounds(what) => write!(f, "{what} out of bounds"),
            DecodeError::WrongIdentity(what) => write!(f, "{what} does not match its place"),
            DecodeError::BadEntryCrc { index } => write!(f, "entry {index} checksum mismatch"),
            DecodeError::BadEntry { index } => write!(f, "entry {index} malformed"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("slice of 4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("slice of 8 bytes"))
}
fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes a segment header into `out[..SEGMENT_HEADER_BYTES]`.
pub fn encode_segment_header(h: &SegmentHeader, out: &mut [u8]) {
    let b = &mut out[..SEGMENT_HEADER_BYTES];
    b.fill(0);
    put_u32(b, 0, SEGMENT_MAGIC);
    put_u16(b, 8, FORMAT_VERSION);
    put_u16(b, 10, h.shard.0);
    put_u32(b, 12, h.block_bytes);
    put_u64(b, 16, h.store_id);
    put_u64(b, 24, h.segment_seq.0);
    put_u64(b, 32, h.segment_bytes);
    put_u64(b, 40, h.recycled_from.map_or(0, |s| s.0));
    let crc = crc32c::crc32c(&b[8..]);
    put_u32(b, 4, crc);
}

/// Reads a segment header from the first bytes of a segment file.
pub fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, DecodeError> {
    if b.len() < SEGMENT_HEADER_BYTES {
        return Err(DecodeError::OutOfBounds("segment header"));
    }
    let b = &b[..SEGMENT_HEADER_BYTES];
    let magic = u32_at(b, 0);
    if magic != SEGMENT_MAGIC {
        return Err(if is_zeros(b) {
            DecodeError::Empty
        } else {
            DecodeError::BadMagic(magic)
        });
    }
    if crc32c::crc32c(&b[8..]) != u32_at(b, 4) {
        return Err(DecodeError::BadHeaderCrc);
    }
    let version = u16_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let block_bytes = u32_at(b, 12);
    if !block_bytes.is_power_of_two() || !(512..=65536).contains(&block_bytes) {
        return Err(DecodeError::OutOfBounds("block_bytes"));
    }
    let segment_seq = SegmentSeq(u64_at(b, 24));
    let recycled_from = match u64_at(b, 40) {
        0 => None,
        // A file is recycled into a later segment only.
        s if s >= segment_seq.0 => return Err(DecodeError::OutOfBounds("recycled_from")),
        s => Some(SegmentSeq(s)),
    };
    if b[48..].iter().any(|&x| x != 0) {
        return Err(DecodeError::OutOfBounds("segment header reserved bytes"));
    }
    Ok(SegmentHeader {
        shard: ShardId(u16_at(b, 10)),
        block_bytes,
        store_id: u64_at(b, 16),
        segment_seq,
        segment_bytes: u64_at(b, 32),
        recycled_from,
    })
}

/// Writes a commit header into `out[..COMMIT_HEADER_BYTES]`.
pub fn encode_commit_header(h: &CommitHeader, out: &mut [u8]) {
    let b = &mut out[..COMMIT_HEADER_BYTES];
    b.fill(0);
    put_u32(b, 0, COMMIT_MAGIC);
    put_u16(b, 8, FORMAT_VERSION);
    put_u16(b, 10, h.shard.0);
    put_u32(b, 12, h.entry_count);
    put_u64(b, 16, h.store_id);
    put_u64(b, 24, h.segment_seq.0);
    put_u64(b, 32, h.commit_seq.0);
    put_u64(b, 40, h.position);
    put_u32(b, 48, h.entries_bytes);
    put_u32(b, 52, h.blocks);
    put_u16(b, 56, h.in_flight_max);
    let crc = crc32c::crc32c(&b[8..]);
    put_u32(b, 4, crc);
}

/// The checksum a commit header carries (its bytes 4..8), read without
/// decoding it: `b` starts with an encoded header.
pub fn header_crc(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[4..8].try_into().expect("a commit header"))
}

/// Reads a commit header. Checks magic, checksum, version and internal
/// consistency only; the caller checks identity against where it was found.
pub fn decode_commit_header(b: &[u8], block_bytes: usize) -> Result<CommitHeader, DecodeError> {
    if b.len() < COMMIT_HEADER_BYTES {
        return Err(DecodeError::OutOfBounds("commit header"));
    }
    let b = &b[..COMMIT_HEADER_BYTES];
    let magic = u32_at(b, 0);
    if magic != COMMIT_MAGIC {
        return Err(if is_zeros(b) {
            DecodeError::Empty
        } else {
            DecodeError::BadMagic(magic)
        });
    }
    if crc32c::crc32c(&b[8..]) != u32_at(b, 4) {
        return Err(DecodeError::BadHeaderCrc);
    }
    let version = u16_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let h = CommitHeader {
        shard: ShardId(u16_at(b, 10)),
        entry_count: u32_at(b, 12),
        store_id: u64_at(b, 16),
        segment_seq: SegmentSeq(u64_at(b, 24)),
        commit_seq: CommitSeq(u64_at(b, 32)),
        position: u64_at(b, 40),
        entries_bytes: u32_at(b, 48),
        blocks: u32_at(b, 52),
        in_flight_max: u16_at(b, 56),
    };
    if h.in_flight_max == 0 {
        return Err(DecodeError::OutOfBounds("in_flight_max"));
    }
    let span = h.blocks as usize * block_bytes;
    if h.blocks == 0 || span > COMMIT_BYTES_LIMIT {
        return Err(DecodeError::OutOfBounds("blocks"));
    }
    if COMMIT_HEADER_BYTES + h.entries_bytes as usize > span {
        return Err(DecodeError::OutOfBounds("entries_bytes"));
    }
    // Every entry takes at least its header, so the count is bounded by the bytes.
    if h.entry_count as usize > h.entries_bytes as usize / ENTRY_HEADER_BYTES {
        return Err(DecodeError::OutOfBounds("entry_count"));
    }
    Ok(h)
}

/// Whether `block` claims to be a commit of segment `segment` of shard
/// `shard` of store `store_id`: the commit magic and those identity fields,
/// whatever its checksum says. In a recycled segment, a block that does not
/// is what the file's earlier life left (`SegmentHeader::recycled_from`).
pub fn claims_commit_of(block: &[u8], store_id: u64, shard: ShardId, segment: SegmentSeq) -> bool {
    block.len() >= COMMIT_HEADER_BYTES
        && u32_at(block, 0) == COMMIT_MAGIC
        && u64_at(block, 16) == store_id
        && u16_at(block, 10) == shard.0
        && u64_at(block, 24) == segment.0
}

/// Encoded size of an entry with a payload of `len` bytes.
pub const fn entry_bytes(len: usize) -> usize {
    ENTRY_HEADER_BYTES + len.div_ceil(ENTRY_ALIGN) * ENTRY_ALIGN
}

/// Encodes an entry at the start of `out`, which must hold `entry_bytes(payload.len())`.
/// Returns the bytes written.
pub fn encode_entry(
    commit_seq: CommitSeq,
    kind: EntryKind,
    channel: ChannelId,
    offset: Offset,
    payload: &[u8],
    out: &mut [u8],
) -> usize {
    let total = entry_bytes(payload.len());
    let b = &mut out[..total];
    put_u32(
        b,
        4,
        u32::try_from(payload.len()).expect("payload bounded by record_bytes_max"),
    );
    b[8] = kind as u8;
    b[9] = 0;
    put_u16(b, 10, 0);
    put_u32(b, 12, channel.0);
    put_u64(b, 16, offset.0);
    b[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + payload.len()].copy_from_slice(payload);
    b[ENTRY_HEADER_BYTES + payload.len()..].fill(0);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&commit_seq.0.to_le_bytes()), &b[4..]);
    put_u32(b, 0, crc);
    total
}

/// What a state entry's payload says besides its first offset: the
/// channel's next offset, the `[from, to)` ranges of its live offsets whose
/// records were lost (`RecoveryMode::SkipDamaged`), and its name.
///
/// ```text
///  0 next          u64
///  8 lost ranges   u32  (n)
/// 12 reserved      u32  zero
/// 16 n × (from u64, to u64)
/// 16 + 16n name    the rest
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePayload<'a> {
    /// The channel's next offset.
    pub next: Offset,
    /// Lost ranges, in offset order.
    pub lost: Vec<(Offset, Offset)>,
    /// The channel's name.
    pub name: &'a str,
}

/// Bytes of a state payload before its lost ranges.
const STATE_FIXED_BYTES: usize = 16;

/// Encodes a state entry's payload.
pub fn encode_state_payload(p: &StatePayload<'_>) -> Vec<u8> {
    let mut b = vec![0u8; STATE_FIXED_BYTES + 16 * p.lost.len() + p.name.len()];
    put_u64(&mut b, 0, p.next.0);
    put_u32(
        &mut b,
        8,
        u32::try_from(p.lost.len()).expect("lost ranges bounded by the commit size"),
    );
    for (i, (from, to)) in p.lost.iter().enumerate() {
        put_u64(&mut b, STATE_FIXED_BYTES + 16 * i, from.0);
        put_u64(&mut b, STATE_FIXED_BYTES + 16 * i + 8, to.0);
    }
    b[STATE_FIXED_BYTES + 16 * p.lost.len()..].copy_from_slice(p.name.as_bytes());
    b
}

/// Decodes a state entry's payload; the count of lost ranges is bounded by
/// the payload's length before anything is allocated for them.
pub fn decode_state_payload(b: &[u8]) -> Result<StatePayload<'_>, DecodeError> {
    if b.len() < STATE_FIXED_BYTES || u32_at(b, 12) != 0 {
        return Err(DecodeError::OutOfBounds("state entry payload"));
    }
    let count = u32_at(b, 8) as usize;
    let ranges_end = count
        .checked_mul(16)
        .and_then(|n| n.checked_add(STATE_FIXED_BYTES))
        .filter(|&end| end <= b.len())
        .ok_or(DecodeError::OutOfBounds("state entry lost ranges"))?;
    let lost = (0..count)
        .map(|i| {
            let at = STATE_FIXED_BYTES + 16 * i;
            (Offset(u64_at(b, at)), Offset(u64_at(b, at + 8)))
        })
        .collect();
    let name = std::str::from_utf8(&b[ranges_end..])
        .map_err(|_| DecodeError::OutOfBounds("state entry name"))?;
    Ok(StatePayload {
        next: Offset(u64_at(b, 0)),
        lost,
        name,
    })
}

/// Iterates over the entries of a commit whose header decoded, checking each
/// entry's checksum. `entries` is exactly the `entries_bytes` after the header.
pub struct EntryIter<'a> {
    entries: &'a [u8],
    remaining: u32,
    index: u32,
    /// The entries' CRC seed (the CRC of the commit sequence number), or
    /// `None` when the caller verified every checksum already.
    seed: Option<u32>,
}

impl<'a> EntryIter<'a> {
    /// Starts iterating over `entries`, expecting `entry_count` of them.
    pub fn new(entries: &'a [u8], commit_seq: CommitSeq, entry_count: u32) -> Self {
        EntryIter {
            entries,
            remaining: entry_count,
            index: 0,
            seed: Some(crc32c::crc32c(&commit_seq.0.to_le_bytes())),
        }
    }

    /// Like [`EntryIter::new`] without the checksums, for entries whose
    /// every checksum an iteration of [`EntryIter::new`] has verified (replay
    /// verifies a whole commit before it applies any of it). Framing and
    /// field checks still run.
    pub fn verified(entries: &'a [u8], entry_count: u32) -> Self {
        EntryIter {
            entries,
            remaining: entry_count,
            index: 0,
            seed: None,
        }
    }
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Result<Entry<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            if !self.entries.is_empty() {
                self.entries = &[];
                return Some(Err(DecodeError::OutOfBounds("entries after the last")));
            }
            return None;
        }
        let index = self.index;
        let b = self.entries;
        // A failed entry ends the iteration: nothing after it can be framed.
        let fail = |this: &mut Self, e| {
            this.remaining = 0;
            this.entries = &[];
            Some(Err(e))
        };
        if b.len() < ENTRY_HEADER_BYTES {
            return fail(self, DecodeError::OutOfBounds("entry header"));
        }
        let len = u32_at(b, 4) as usize;
        if len > b.len() - ENTRY_HEADER_BYTES {
            return fail(self, DecodeError::OutOfBounds("entry length"));
        }
        let total = entry_bytes(len);
        if total > b.len() {
            return fail(self, DecodeError::OutOfBounds("entry padding"));
        }
        if let Some(seed) = self.seed {
            if crc32c::crc32c_append(seed, &b[4..total]) != u32_at(b, 0) {
                return fail(self, DecodeError::BadEntryCrc { index });
            }
        }
        let Some(kind) = EntryKind::from_u8(b[8]) else {
            return fail(self, DecodeError::BadEntry { index });
        };
        if b[9] != 0 || u16_at(b, 10) != 0 {
            return fail(self, DecodeError::BadEntry { index });
        }
        let entry = Entry {
            kind,
            channel: ChannelId(u32_at(b, 12)),
            offset: Offset(u64_at(b, 16)),
            payload: &b[ENTRY_HEADER_BYTES..ENTRY_HEADER_BYTES + len],
        };
        self.entries = &b[total..];
        self.remaining -= 1;
        self.index += 1;
        Some(Ok(entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_are_told_from_any_other_byte_at_any_place() {
        for len in [0usize, 1, 7, 8, 9, 4096, 4099] {
            let mut b = vec![0u8; len];
            assert!(is_zeros(&b), "{len}");
            for at in 0..len.min(40) {
                b[at] = 1 << (at % 8);
                assert!(!is_zeros(&b), "{len} {at}");
                b[at] = 0;
            }
            if len > 0 {
                b[len - 1] = 0x80;
                assert!(!is_zeros(&b), "{len} last");
            }
        }
    }

    fn header() -> CommitHeader {
        CommitHeader {
            shard: ShardId(3),
            entry_count: 2,
            store_id: 0xfeed,
            segment_seq: SegmentSeq(7),
            commit_seq: CommitSeq(42),
            position: 4096,
            entries_bytes: (entry_bytes(5) + entry_bytes(0)) as u32,
            blocks: 1,
            in_flight_max: 2,
        }
    }

    #[test]
    fn commit_round_trip() {
        let h = header();
        let mut buf = vec![0u8; 4096];
        encode_commit_header(&h, &mut buf);
        let mut at = COMMIT_HEADER_BYTES;
        at += encode_entry(
            h.commit_seq,
            EntryKind::Append,
            ChannelId(1),
            Offset(9),
            b"hello",
            &mut buf[at..],
        );
        encode_entry(
            h.commit_seq,
            EntryKind::Register,
            ChannelId(2),
            Offset(0),
            b"",
            &mut buf[at..],
        );
        let d = decode_commit_header(&buf, 4096).unwrap();
        assert_eq!(d, h);
        let entries = &buf[COMMIT_HEADER_BYTES..COMMIT_HEADER_BYTES + d.entries_bytes as usize];
        let got: Vec<_> = EntryIter::new(entries, d.commit_seq, d.entry_count)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].payload, b"hello");
        assert_eq!(got[0].offset, Offset(9));
        assert_eq!(got[1].kind, EntryKind::Register);
        // The verified iterator yields the same entries without checksums,
        // and still checks the framing.
        let trusted: Vec<_> = EntryIter::verified(entries, d.entry_count)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(trusted.len(), 2);
        assert_eq!(
            (trusted[0].payload, trusted[0].offset),
            (&b"hello"[..], Offset(9))
        );
        assert_eq!(trusted[1].kind, EntryKind::Register);
        assert!(EntryIter::new(entries, CommitSeq(43), d.entry_count).any(|e| e.is_err()));
        assert!(EntryIter::verified(entries, 1).any(|e| e.is_err()));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let h = header();
        let mut buf = vec![0u8; COMMIT_HEADER_BYTES + h.entries_bytes as usize];
        encode_commit_header(&h, &mut buf);
        let mut at = COMMIT_HEADER_BYTES;
        at += encode_entry(
            h.commit_seq,
            EntryKind::Append,
            ChannelId(1),
            Offset(9),
            b"hello",
            &mut buf[at..],
        );
        encode_entry(
            h.commit_seq,
            EntryKind::Append,
            ChannelId(1),
            Offset(10),
            b"",
            &mut buf[at..],
        );
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            let ok = match decode_commit_header(&b, 4096) {
                Err(_) => false,
                Ok(d) if d != h => false,
                Ok(d) => EntryIter::new(&b[COMMIT_HEADER_BYTES..], d.commit_seq, d.entry_count)
                    .all(|e| e.is_ok()),
            };
            // Padding bytes of an entry are covered by its checksum too.
            assert!(!ok, "bit {bit} flip went undetected");
        }
    }

    #[test]
    fn entries_are_bound_to_their_commit() {
        let mut buf = vec![0u8; 64];
        encode_entry(
            CommitSeq(1),
            EntryKind::Append,
            ChannelId(1),
            Offset(0),
            b"x",
            &mut buf,
        );
        let n = entry_bytes(1);
        let r: Vec<_> = EntryIter::new(&buf[..n], CommitSeq(2), 1).collect();
        assert_eq!(r, vec![Err(DecodeError::BadEntryCrc { index: 0 })]);
    }

    #[test]
    fn a_state_payload_round_trips_and_bounds_its_count() {
        let p = StatePayload {
            next: Offset(90),
            lost: vec![(Offset(3), Offset(5)), (Offset(70), Offset(71))],
            name: "dml_7",
        };
        let b = encode_state_payload(&p);
        assert_eq!(decode_state_payload(&b), Ok(p));
        let mut huge = b.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            decode_state_payload(&huge).is_err(),
            "a count past the bytes"
        );
        assert!(decode_state_payload(&b[..10]).is_err());
    }

    #[test]
    fn a_recycled_segment_header_names_an_earlier_segment() {
        let mut h = SegmentHeader {
            shard: ShardId(1),
            block_bytes: 4096,
            store_id: 5,
            segment_seq: SegmentSeq(9),
            segment_bytes: 1 << 20,
            recycled_from: Some(SegmentSeq(3)),
        };
        let mut b = [0u8; 64];
        encode_segment_header(&h, &mut b);
        assert_eq!(decode_segment_header(&b), Ok(h));
        h.recycled_from = Some(SegmentSeq(9));
        encode_segment_header(&h, &mut b);
        assert!(decode_segment_header(&b).is_err(), "not from itself");
    }

    #[test]
    fn zero_bytes_are_empty_not_damage() {
        assert_eq!(
            decode_commit_header(&[0u8; 64], 4096),
            Err(DecodeError::Empty)
        );
        assert_eq!(decode_segment_header(&[0u8; 64]), Err(DecodeError::Empty));
    }
}
