//! Replay of one shard's WAL, on the shard's own thread.
//!
//! Decision table for the place where the chain of valid commits ends
//! (legend: *chain end* = the first block that is not the next valid
//! commit; *later commit* = a block after the chain end whose header decodes
//! with this segment's identity and a sequence number not yet replayed):
//!
//! | segment | at the chain end          | later commit? | outcome                         |
//! |---------|---------------------------|---------------|---------------------------------|
//! | at the chain end                        | later commit? | outcome                          |
//! |-----------------------------------------|---------------|----------------------------------|
//! | zeros (never written)                   | no            | end of this segment's chain      |
//! | a commit that fails a checksum or bound | no            | torn tail: cut, zeroed           |
//! | zeros or a damaged commit               | only commits in flight with it (sequence within the window their header records) | torn tail: cut, zeroed |
//! | anything                                | yes, others   | damage: open fails               |
//! | a whole, valid header out of sequence   | —             | damage (commits are missing)     |
//! | a gap in segment file numbers           | —             | damage (a segment is missing)    |
//!
//! *Later commit* also looks into every later segment. Writing resumes in the
//! last segment (which may be an empty spare created ahead of use).
//!
//! A torn tail can only be among the last `in_flight_max` commits written,
//! all in one segment (a shard changes segments only with nothing in flight),
//! and none of them was acknowledged if the first is missing, because
//! acknowledgements go strictly in order. Acknowledged last commits damaged
//! at rest are indistinguishable from torn ones and are cut too;
//! `docs/format.md` says so.

use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::buffer::table::BufferTable;
use crate::config::RecoveryMode;
use crate::error::{Error, Result};
use crate::io::buffer::AlignedBuf;
use crate::io::file::{self, Access, ZeroSync};
use crate::io::{CommitIo, Op, OpError};
use crate::shard::metrics::ShardMetrics;
use crate::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};
use crate::wal::format::{
    decode_commit_header, decode_segment_header, DecodeError, Entry, EntryIter, EntryKind,
    COMMIT_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::wal::segment::{list_segments, Segment};

/// Bytes per read while replaying.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Reads a shard keeps in flight while replaying: the device works on the
/// next megabytes while the shard verifies and decodes the last ones.
const READS_IN_FLIGHT_MAX: usize = 8;
const _: () = assert!(READS_IN_FLIGHT_MAX <= crate::io::OPS_IN_FLIGHT_MAX);

/// Reads one segment file into a buffer through the shard's ring, in
/// `READ_CHUNK_BYTES` pieces with up to `READS_IN_FLIGHT_MAX` in flight, and
/// hands out the prefix that has arrived.
struct SegmentReader<'a> {
    io: &'a mut dyn CommitIo,
    fd: RawFd,
    ptr: *mut u8,
    size: usize,
    issued: usize,
    arrived: Vec<bool>,
    prefix: usize,
    in_flight: usize,
    metrics: &'a ShardMetrics,
    _buf: std::marker::PhantomData<&'a mut AlignedBuf>,
}

impl<'a> SegmentReader<'a> {
    fn new(
        io: &'a mut dyn CommitIo,
        f: &File,
        buf: &'a mut AlignedBuf,
        size: usize,
        metrics: &'a ShardMetrics,
    ) -> Self {
        assert!(
            buf.len() >= crate::config::round_up(size, READ_CHUNK_BYTES),
            "segment buffer too small"
        );
        SegmentReader {
            io,
            fd: f.as_raw_fd(),
            ptr: buf.as_mut_ptr(),
            size,
            issued: 0,
            arrived: vec![false; size.div_ceil(READ_CHUNK_BYTES)],
            prefix: 0,
            in_flight: 0,
            metrics,
            _buf: std::marker::PhantomData,
        }
    }

    /// Waits until the first `upto` bytes (at most the file) have arrived,
    /// keeping the reads after them in flight.
    fn ensure(&mut self, upto: usize) -> std::result::Result<(), OpError> {
        let upto = upto.min(self.size);
        loop {
            while self.in_flight < READS_IN_FLIGHT_MAX && self.issued < self.size {
                let chunk = self.issued / READ_CHUNK_BYTES;
                let expect = READ_CHUNK_BYTES.min(self.size - self.issued);
                let op = Op::Read {
                    fd: self.fd,
                    position: self.issued as u64,
                    // SAFETY: within the buffer (checked in `new`).
                    ptr: unsafe { self.ptr.add(self.issued) },
                    len: READ_CHUNK_BYTES,
                    expect,
                };
                // SAFETY: the buffer is borrowed for 'a and this chunk of it
                // is neither read nor handed out before its completion; Drop
                // waits for every read still in flight.
                unsafe { self.io.start(chunk as u64, op) }?;
                self.issued += expect;
                self.in_flight += 1;
            }
            if self.prefix >= upto {
                return Ok(());
            }
            let mut reaped = false;
            while let Some((chunk, outcome)) = self.io.poll() {
                self.in_flight -= 1;
                reaped = true;
                outcome?;
                self.arrived[chunk as usize] = true;
            }
            while self.prefix < self.size && self.arrived[self.prefix / READ_CHUNK_BYTES] {
                let got = READ_CHUNK_BYTES.min(self.size - self.prefix);
                self.prefix += got;
                self.metrics
                    .recovery_bytes_read
                    .fetch_add(got as u64, Ordering::Relaxed);
            }
            // Block only when nothing arrived: otherwise go round and put
            // the freed slots to work first.
            if self.prefix < upto && !reaped {
                assert!(self.in_flight > 0, "waiting for reads with none in flight");
                self.io.wait(None)?;
            }
        }
    }

    /// The bytes that have arrived.
    fn view(&self) -> &[u8] {
        // SAFETY: bytes 0..prefix were written by completed reads and no
        // read in flight targets them.
        unsafe { std::slice::from_raw_parts(self.ptr, self.prefix) }
    }
}

impl Drop for SegmentReader<'_> {
    fn drop(&mut self) {
        // The kernel may still write into the buffer: wait for every read.
        while self.in_flight > 0 {
            if self.io.poll().is_some() {
                self.in_flight -= 1;
            } else if self.io.wait(None).is_err() {
                // The ring itself failed; the reads are cancelled when it
                // drops, after this buffer. Leak the buffer's contents to the
                // ring rather than free memory the kernel might write.
                std::process::abort();
            }
        }
    }
}

/// Where the shard goes on writing.
pub struct Tail {
    /// The last segment, open for writing.
    pub segment: Segment,
    /// The first free block in it.
    pub position: u64,
    /// The segment's block size (the engine's may differ after a config or
    /// filesystem change; the shard then starts a new segment).
    pub block: usize,
}

/// A replayed shard.
pub struct Recovered {
    /// Channels and their records.
    pub table: BufferTable,
    /// Sequence number of the next commit.
    pub next_commit_seq: CommitSeq,
    /// The segment to continue in, if any segment exists.
    pub tail: Option<Tail>,
    /// Sequence number for the next new segment.
    pub next_segment_seq: SegmentSeq,
}

/// What recovery needs to know.
pub struct RecoverContext<'a> {
    /// The shard's directory.
    pub shard_dir: &'a Path,
    /// The shard.
    pub shard: ShardId,
    /// The store's identity.
    pub store_id: u64,
    /// Direct or buffered reads.
    pub access: Access,
    /// Progress counters.
    pub metrics: &'a ShardMetrics,
    /// What to do about damage.
    pub mode: RecoveryMode,
}

enum ChainEnd {
    Zeros,
    Damaged(String),
}

/// A damaged commit that is the torn tail unless a commit follows it.
struct Torn {
    seq: SegmentSeq,
    path: std::path::PathBuf,
    position: u64,
    nonzero_end: u64,
    block: usize,
}

/// Replays every segment of the shard in order, reading through `io`.
pub fn recover_shard(ctx: &RecoverContext<'_>, io: &mut dyn CommitIo) -> Result<Recovered> {
    let segments = list_segments(ctx.shard_dir)?;
    let mut total = 0u64;
    for (_, path) in &segments {
        total += std::fs::metadata(path).map_or(0, |m| m.len());
    }
    ctx.metrics
        .recovery_bytes_total
        .store(total, Ordering::Relaxed);
    for w in segments.windows(2) {
        if w[0].0 .0.checked_add(1) != Some(w[1].0 .0) {
            return Err(Error::Corruption {
                shard: ctx.shard.0,
                segment: w[1].0 .0,
                position: 0,
                what: format!("segment {} is missing before it", w[0].0 .0 + 1),
            });
        }
    }

    let mut table = BufferTable::default();
    // The sequence number the next commit must carry; unknown until the first.
    let mut next: Option<CommitSeq> = None;
    let mut buf: Option<AlignedBuf> = None;
    let mut tail = None;
    let mut torn: Option<Torn> = None;
    let mut next_segment_seq = SegmentSeq(1);

    for (i, (seq, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        next_segment_seq = SegmentSeq(seq.0.checked_add(1).ok_or_else(|| Error::Corruption {
            shard: ctx.shard.0,
            segment: seq.0,
            position: 0,
            what: "segment sequence number at its maximum".into(),
        })?);
        let damage = |segment: SegmentSeq, position: u64, what: String| Error::Corruption {
            shard: ctx.shard.0,
            segment: segment.0,
            position,
            what,
        };
        let f = if last {
            file::open_rw(path, ctx.access)?
        } else {
            file::open_read(path, ctx.access)?
        };
        let size = f
            .metadata()
            .map_err(|e| Error::io("stat segment", Some(path.clone()), e))?
            .len();
        if size > crate::config::SEGMENT_BYTES_LIMIT {
            return Err(damage(
                *seq,
                0,
                format!("segment file of {size} bytes is larger than any corewal writes"),
            ));
        }
        let want = crate::config::round_up(size as usize, READ_CHUNK_BYTES).max(READ_CHUNK_BYTES);
        if buf.as_ref().is_none_or(|b| b.len() < want) {
            buf = Some(AlignedBuf::new(want, 4096));
        }
        let n = size as usize;
        let mut reader = SegmentReader::new(
            &mut *io,
            &f,
            buf.as_mut().expect("allocated above"),
            n,
            ctx.metrics,
        );
        let read_error = |e: OpError| Error::io(e.operation, Some(path.clone()), e.source);
        reader.ensure(SEGMENT_HEADER_BYTES).map_err(read_error)?;
        let data = reader.view();
        let header = decode_segment_header(data)
            .map_err(|e| damage(*seq, 0, format!("segment header: {e}")))?;
        if header.shard != ctx.shard
            || header.store_id != ctx.store_id
            || header.segment_seq != *seq
        {
            return Err(damage(
                *seq,
                0,
                "segment header belongs to another shard, store or file name".into(),
            ));
        }
        if (n as u64) < header.segment_bytes {
            return Err(damage(
                *seq,
                n as u64,
                format!(
                    "segment file is {n} bytes, its header says {}",
                    header.segment_bytes
                ),
            ));
        }
        let block = header.block_bytes as usize;
        let mut pos = block;
        let end = if torn.is_some() {
            // After a damaged commit nothing may be replayed; only scanned.
            ChainEnd::Zeros
        } else {
            loop {
                if pos + block > n {
                    break ChainEnd::Zeros;
                }
                reader.ensure(pos + block).map_err(read_error)?;
                let data = reader.view();
                let h = match decode_commit_header(&data[pos..], block) {
                    Ok(h) => h,
                    Err(DecodeError::Empty) => break ChainEnd::Zeros,
                    Err(e) => break ChainEnd::Damaged(e.to_string()),
                };
                if h.store_id != ctx.store_id
                    || h.shard != ctx.shard
                    || h.segment_seq != *seq
                    || h.position != pos as u64
                {
                    break ChainEnd::Damaged("commit header from another place or file".into());
                }
                if let Some(want) = next {
                    if h.commit_seq != want {
                        // A whole, valid header out of sequence is not a torn
                        // write: commits before it are missing.
                        return Err(damage(
                            *seq,
                            pos as u64,
                            format!(
                                "commit {} found where commit {} was next",
                                h.commit_seq.0, want.0
                            ),
                        ));
                    }
                }
                let span = h.blocks as usize * block;
                if pos + span > n {
                    break ChainEnd::Damaged("commit runs past the end of the segment".into());
                }
                reader.ensure(pos + span).map_err(read_error)?;
                let data = reader.view();
                let body = &data[pos + COMMIT_HEADER_BYTES
                    ..pos + COMMIT_HEADER_BYTES + h.entries_bytes as usize];
                // First pass verifies every checksum, so that a torn commit is
                // cut whole and never half-applied.
                if let Some(err) =
                    EntryIter::new(body, h.commit_seq, h.entry_count).find_map(|e| e.err())
                {
                    break ChainEnd::Damaged(err.to_string());
                }
                // One copy and one allocation per commit; records are
                // slices of it (they keep the commit's bytes alive).
                let owned = Bytes::copy_from_slice(body);
                for e in EntryIter::new(&owned, h.commit_seq, h.entry_count) {
                    let e = e.expect("verified in the first pass");
                    apply(&mut table, &e, &owned, h.commit_seq)
                        .map_err(|what| damage(*seq, pos as u64, what))?;
                }
                pos += span;
                let Some(after) = h.commit_seq.0.checked_add(1) else {
                    return Err(damage(
                        *seq,
                        pos as u64,
                        "commit sequence number at its maximum".into(),
                    ));
                };
                next = Some(CommitSeq(after));
                ctx.metrics.recovery_commits.fetch_add(1, Ordering::Relaxed);
            }
        };

        reader.ensure(n).map_err(read_error)?;
        let data = reader.view();
        // Whatever ended the chain, no commit may follow it — except, in
        // this segment, commits that were in flight with the one that is
        // missing (their headers say how many could be): none of them was
        // acknowledged, since acknowledgements go in order.
        let scan_from = if torn.is_some() { block } else { pos + block };
        let window_base = next.unwrap_or(CommitSeq(1));
        let mut in_flight_after = false;
        let mut nonzero_end = pos;
        let mut q = scan_from;
        while q + block <= n {
            let blk = &data[q..q + block];
            if blk.iter().any(|&x| x != 0) {
                nonzero_end = q + block;
                if let Ok(h) = decode_commit_header(blk, block) {
                    let identity = h.store_id == ctx.store_id
                        && h.shard == ctx.shard
                        && h.segment_seq == *seq
                        && h.position == q as u64;
                    if identity && h.commit_seq >= window_base {
                        let in_window =
                            h.commit_seq.0 < window_base.0.saturating_add(h.in_flight_max as u64);
                        if torn.is_none() && in_window {
                            in_flight_after = true;
                        } else {
                            let (at_seq, at) = match &torn {
                                Some(t) => (t.seq, t.position),
                                None => (*seq, pos as u64),
                            };
                            let found = match &end {
                                _ if torn.is_some() => "a damaged commit".to_string(),
                                ChainEnd::Damaged(w) => w.clone(),
                                ChainEnd::Zeros => "zeros".into(),
                            };
                            return Err(damage(
                                at_seq,
                                at,
                                format!(
                                    "{found} where commit {} was next, yet commit {} follows in segment {} at byte {q}",
                                    window_base.0, h.commit_seq.0, seq.0
                                ),
                            ));
                        }
                    }
                }
            }
            q += block;
        }
        // The block at the chain end itself may hold bytes past a zero header.
        if pos < n && data[pos..(pos + block).min(n)].iter().any(|&x| x != 0) {
            nonzero_end = nonzero_end.max((pos + block).min(n));
        }
        // Anything non-zero after the chain end is what a torn write left
        // (a lost header with written later blocks, say): it is cut and
        // zeroed like a damaged commit, so no byte of it outlives the cut.
        if matches!(end, ChainEnd::Damaged(_)) || in_flight_after || nonzero_end > pos {
            nonzero_end = nonzero_end.max((pos + block).min(n));
            torn = Some(Torn {
                seq: *seq,
                path: path.clone(),
                position: pos as u64,
                nonzero_end: nonzero_end as u64,
                block,
            });
        }
        if last {
            tail = Some(Tail {
                segment: Segment {
                    seq: *seq,
                    path: path.clone(),
                    file: f,
                    bytes: header.segment_bytes,
                },
                position: pos as u64,
                block,
            });
        }
    }
    match torn {
        None => {}
        Some(t) if ctx.mode == RecoveryMode::FailOnAnyDamage => {
            return Err(Error::Corruption {
                shard: ctx.shard.0,
                segment: t.seq.0,
                position: t.position,
                what: "torn tail (an incomplete last commit); RecoveryMode::FailOnAnyDamage cuts nothing — \
                       open with RecoveryMode::TolerateTornTail to cut it"
                    .into(),
            });
        }
        Some(t) => {
            // Torn tail: zero what the torn commit left, so that no byte of
            // it can be read as part of a later commit's place.
            let f = file::open_rw(&t.path, ctx.access)?;
            let zeros = AlignedBuf::new(READ_CHUNK_BYTES, t.block);
            file::zero_fill(
                &f,
                &t.path,
                &zeros,
                t.position,
                t.nonzero_end,
                ZeroSync::AtEnd,
            )?;
        }
    }
    ctx.metrics
        .recovery_channels
        .store(table.len() as u64, Ordering::Relaxed);
    Ok(Recovered {
        table,
        next_commit_seq: next.unwrap_or(CommitSeq(1)),
        tail,
        next_segment_seq,
    })
}

fn apply(
    table: &mut BufferTable,
    e: &Entry<'_>,
    commit_body: &Bytes,
    commit: CommitSeq,
) -> std::result::Result<(), String> {
    match e.kind {
        EntryKind::Register => {
            let name = std::str::from_utf8(e.payload)
                .map_err(|_| "channel name is not UTF-8".to_string())?;
            crate::validate_channel_name(name).map_err(|err| err.to_string())?;
            if table.next_id() != e.channel {
                return Err(format!(
                    "channel id {} registered where {} was next",
                    e.channel.0,
                    table.next_id().0
                ));
            }
            if table.lookup(name).is_some() {
                return Err(format!("channel {name:?} registered twice"));
            }
            let first = table.retired(name).map_or(Offset(0), |(next, _)| next);
            if e.offset != first {
                return Err(format!(
                    "channel {name:?} registered from offset {} where {} was next",
                    e.offset.0, first.0
                ));
            }
            table.insert(name, e.offset, commit);
            Ok(())
        }
        EntryKind::Append => {
            let ch: ChannelId = e.channel;
            let Some(state) = table.get_mut(ch).filter(|c| !c.dropped) else {
                return Err(format!(
                    "record for unregistered or dropped channel id {}",
                    ch.0
                ));
            };
            if state.next_offset != e.offset {
                return Err(format!(
                    "record at offset {} of channel {:?} where offset {} was next",
                    e.offset.0, state.name, state.next_offset.0
                ));
            }
            state.next_offset = Offset(e.offset.0 + 1);
            table.push(ch, commit_body.slice_ref(e.payload));
            Ok(())
        }
        EntryKind::Drop => {
            let Some(state) = table.get(e.channel).filter(|c| !c.dropped) else {
                return Err(format!(
                    "drop of unregistered or dropped channel id {}",
                    e.channel.0
                ));
            };
            if state.next_offset != e.offset {
                return Err(format!(
                    "drop of channel {:?} at offset {} where {} was next",
                    state.name, e.offset.0, state.next_offset.0
                ));
            }
            table.drop_channel(e.channel, commit);
            Ok(())
        }
    }
}
