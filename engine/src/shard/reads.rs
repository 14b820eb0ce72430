//! Reads of records whose payloads the cache let go: `O_DIRECT` reads of
//! their entries through the shard's ring, a few in flight beside the
//! commits, never a blocking read on any thread.
//!
//! A read request (or a relocation that needs payloads) becomes a *job*:
//! the records the channel table found, some cached, some only in the WAL.
//! The ones in the WAL are grouped into *pieces* — block-aligned spans of
//! one segment, up to [`PIECE_BYTES_MAX`] (one record's entry, however
//! large, is never split) — read [`READS_IN_FLIGHT_MAX`] at a time. Each
//! entry read back is checked as replay checks it (its checksum, seeded
//! with its commit's sequence number, and its kind, channel and offset),
//! so bytes that are not the record are an error, never a payload.
//!
//! A job answers as of the moment the shard took the request: the records
//! it found were acknowledged and live then. The files they lie in stay
//! while reads are on their way (reclamation waits for them, see
//! `reclaim.rs`), and an entry, once acknowledged, is never rewritten in
//! place, so what a piece reads is what the table pointed at.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::buffer::channels::{Found, Loc};
use crate::damage::DamageKind;
use crate::error::{Error, Result};
use crate::io::buffer::{round_up, AlignedBuf};
use crate::io::file::DiskFile;
use crate::io::ring::{Completion, Refused};
use crate::shard::ack::Ack;
use crate::types::{ChannelId, Offset, Record, SegmentSeq};
use crate::wal::format::{entry_bytes, DecodeError, EntryIter, EntryKind};
use crate::wal::segment::segment_path;

use super::run::Shard;

/// Reads a shard keeps in flight at most (beside its commits; see
/// `config::COMMITS_IN_FLIGHT_LIMIT`).
pub const READS_IN_FLIGHT_MAX: usize = 4;

/// The span one read covers at most, unless one entry is larger. With 4
/// in flight, at most 1 MiB of reads waits ahead of a commit on the
/// device; 1 MiB pieces (4 MiB ahead) cut the writers of a small-sync run
/// beside two random readers to 11,300 records/s against 13,300 with
/// these (docs/BENCHMARKS.md).
pub const PIECE_BYTES_MAX: usize = 256 << 10;

/// Bytes between two records' entries that one piece reads over rather
/// than starting another.
const PIECE_GAP_MAX: u64 = 64 << 10;

/// Ring operation ids of reads carry this bit (commits count from 1).
pub(super) const READ_OP: u64 = 1 << 63;

/// Open segment files kept for reads (the segment being written is the
/// shard's own).
const FILES_KEPT: usize = 8;

/// Who waits for a job.
pub(super) enum Purpose {
    /// A caller's read.
    Caller(Arc<Ack<Vec<Record>>>),
    /// Records to relocate: their payloads go to the reclamation.
    Relocation,
}

/// A read on its way.
struct Job {
    purpose: Purpose,
    channel: ChannelId,
    /// The records, in offset order; those in the WAL become cached ones
    /// as their pieces arrive.
    found: Vec<Found>,
    /// Pieces not yet arrived.
    pending: usize,
    /// The first failure; the job answers with it.
    error: Option<Error>,
}

/// A span of one segment to read, and the records it holds.
struct Piece {
    job: u64,
    segment: SegmentSeq,
    position: u64,
    len: usize,
    /// Index in the job's `found`, and where the record's entry lies.
    wants: Vec<(usize, Offset, Loc)>,
}

/// The shard's reads.
#[derive(Default)]
pub(super) struct Reads {
    jobs: HashMap<u64, Job>,
    next_job: u64,
    waiting: VecDeque<Piece>,
    in_flight: HashMap<u64, Piece>,
    next_op: u64,
    files: VecDeque<(SegmentSeq, Arc<DiskFile>)>,
}

impl Reads {
    /// Whether no read is waiting or on its way.
    pub(super) fn is_idle(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Whether a read waiting or on its way reads a segment before `seq`
    /// (whose file must stay until it is done).
    pub(super) fn touches_before(&self, seq: SegmentSeq) -> bool {
        let before = |p: &Piece| p.segment < seq;
        self.waiting.iter().any(before) || self.in_flight.values().any(before)
    }

    /// Forgets the open files of segments (they are being let go).
    pub(super) fn forget_files(&mut self) {
        self.files.clear();
    }
}

/// A finished job.
pub(super) struct Done {
    pub(super) purpose: Purpose,
    pub(super) channel: ChannelId,
    pub(super) result: Result<Vec<Record>>,
}

impl Shard {
    /// Answers a read of `channel` that found `found`: at once when every
    /// payload is cached, else once its pieces are read.
    pub(super) fn read_found(&mut self, channel: ChannelId, found: Vec<Found>, purpose: Purpose) {
        if found.iter().all(|f| matches!(f, Found::Cached(_))) {
            self.finish_read(Done {
                purpose,
                channel,
                result: Ok(into_records(found)),
            });
            return;
        }
        let job = self.reads.next_job;
        self.reads.next_job += 1;
        let pieces = pieces(job, &found, self.block);
        self.metrics
            .wal_reads
            .fetch_add(pieces.len() as u64, Ordering::Relaxed);
        self.reads.jobs.insert(
            job,
            Job {
                purpose,
                channel,
                found,
                pending: pieces.len(),
                error: None,
            },
        );
        self.reads.waiting.extend(pieces);
        self.start_reads();
    }

    /// Starts waiting pieces while fewer than [`READS_IN_FLIGHT_MAX`] are
    /// on their way.
    pub(super) fn start_reads(&mut self) {
        while self.reads.in_flight.len() < READS_IN_FLIGHT_MAX && !self.io.is_abandoned() {
            let Some(piece) = self.reads.waiting.pop_front() else {
                return;
            };
            let file = match self.read_file(piece.segment) {
                Ok(f) => f,
                Err(e) => {
                    self.piece_failed(piece, e);
                    continue;
                }
            };
            self.reads.next_op += 1;
            let id = READ_OP | self.reads.next_op;
            let buf = AlignedBuf::new(piece.len, self.block);
            match self
                .io
                .read(id, &file, piece.position, buf, piece.len, piece.len)
            {
                Ok(()) => {
                    self.reads.in_flight.insert(id, piece);
                }
                Err(Refused { error, .. }) => {
                    let e = error.into_error(Some(file.path().to_path_buf()));
                    self.piece_failed(piece, e);
                }
            }
        }
    }

    /// The open file of segment `seq`.
    fn read_file(&mut self, seq: SegmentSeq) -> Result<Arc<DiskFile>> {
        if seq == self.segment.seq {
            return Ok(self.segment.file.clone());
        }
        if let Some((_, f)) = self.reads.files.iter().find(|(s, _)| *s == seq) {
            return Ok(f.clone());
        }
        let path = segment_path(&self.dir, seq);
        let f = Arc::new(DiskFile::open_rw(&self.fs, &path, self.access)?);
        if self.reads.files.len() >= FILES_KEPT {
            self.reads.files.pop_front();
        }
        self.reads.files.push_back((seq, f.clone()));
        Ok(f)
    }

    /// A read's completion.
    pub(super) fn read_completed(&mut self, c: Completion) {
        let piece = self
            .reads
            .in_flight
            .remove(&c.id)
            .expect("a completion of a read in flight");
        let result = match (c.outcome, c.buf) {
            (Ok(()), Some(buf)) => self.decode_piece(&piece, &buf),
            (Err(e), _) => {
                let path = segment_path(&self.dir, piece.segment);
                Err(e.into_error(Some(path)))
            }
            (Ok(()), None) => unreachable!("a read hands its buffer back"),
        };
        match result {
            Ok(records) => {
                let job = self
                    .reads
                    .jobs
                    .get_mut(&piece.job)
                    .expect("a job per piece");
                for (i, data) in records {
                    let offset = job.found[i].offset();
                    job.found[i] = Found::Cached(Record { offset, data });
                }
                self.piece_done(piece.job);
            }
            Err(e) => self.piece_failed(piece, e),
        }
        self.start_reads();
    }

    /// The payloads of `piece`'s records from its bytes `buf`, each entry
    /// checked as replay checks it.
    fn decode_piece(&self, piece: &Piece, buf: &[u8]) -> Result<Vec<(usize, Bytes)>> {
        let channel = self.reads.jobs[&piece.job].channel;
        let mut out = Vec::with_capacity(piece.wants.len());
        for &(i, offset, loc) in &piece.wants {
            let from = (u64::from(loc.position) - piece.position) as usize;
            let bytes = &buf[from..from + entry_bytes(loc.len as usize)];
            let damaged = |kind: DamageKind| Error::Corruption {
                shard: self.id,
                segment: piece.segment,
                position: u64::from(loc.position),
                kind,
                remedy: None,
            };
            let entry = match EntryIter::new(bytes, loc.commit, 1).next() {
                Some(Ok(e)) => e,
                Some(Err(e)) => return Err(damaged(DamageKind::Commit(e))),
                None => unreachable!("one entry asked for"),
            };
            let is_record = matches!(entry.kind, EntryKind::Append | EntryKind::Relocate);
            if !is_record
                || entry.channel != channel
                || entry.offset != offset
                || entry.payload.len() != loc.len as usize
            {
                return Err(damaged(DamageKind::Commit(DecodeError::BadEntry {
                    index: 0,
                })));
            }
            out.push((i, Bytes::copy_from_slice(entry.payload)));
        }
        Ok(out)
    }

    fn piece_failed(&mut self, piece: Piece, e: Error) {
        let job = self
            .reads
            .jobs
            .get_mut(&piece.job)
            .expect("a job per piece");
        job.error.get_or_insert(e);
        self.piece_done(piece.job);
    }

    fn piece_done(&mut self, id: u64) {
        let job = self.reads.jobs.get_mut(&id).expect("a job per piece");
        job.pending -= 1;
        if job.pending > 0 {
            return;
        }
        let job = self.reads.jobs.remove(&id).expect("looked up above");
        let result = match job.error {
            Some(e) => Err(e),
            None => Ok(into_records(job.found)),
        };
        self.finish_read(Done {
            purpose: job.purpose,
            channel: job.channel,
            result,
        });
    }

    fn finish_read(&mut self, done: Done) {
        match done.purpose {
            Purpose::Caller(ack) => ack.complete(done.result),
            Purpose::Relocation => self.relocation_fetched(done.channel, done.result),
        }
    }

    /// The ring was abandoned: reads on their way never complete. Their
    /// callers get `e`.
    pub(super) fn abandon_reads(&mut self, e: &Error) {
        self.reads.in_flight.clear();
        self.reads.waiting.clear();
        for (_, job) in self.reads.jobs.drain() {
            match job.purpose {
                Purpose::Caller(ack) => ack.complete(Err(e.clone())),
                Purpose::Relocation => {}
            }
        }
    }
}

/// The records of a job whose payloads are all in memory.
fn into_records(found: Vec<Found>) -> Vec<Record> {
    found
        .into_iter()
        .map(|f| match f {
            Found::Cached(r) => r,
            Found::InWal { .. } => unreachable!("every payload was read"),
        })
        .collect()
}

/// The pieces that read `found`'s records in the WAL: neighbours in one
/// segment share a block-aligned span of up to [`PIECE_BYTES_MAX`].
fn pieces(job: u64, found: &[Found], block: usize) -> Vec<Piece> {
    let mut out: Vec<Piece> = Vec::new();
    let block = block as u64;
    for (i, f) in found.iter().enumerate() {
        let Found::InWal {
            offset,
            segment,
            loc,
        } = f
        else {
            continue;
        };
        let start = u64::from(loc.position) / block * block;
        let end = round_up(
            loc.position as usize + entry_bytes(loc.len as usize),
            block as usize,
        ) as u64;
        if let Some(p) = out.last_mut() {
            let p_end = p.position + p.len as u64;
            if p.segment == *segment
                && start >= p.position
                && start <= p_end + PIECE_GAP_MAX
                && end - p.position <= PIECE_BYTES_MAX as u64
            {
                p.len = (end.max(p_end) - p.position) as usize;
                p.wants.push((i, *offset, *loc));
                continue;
            }
        }
        out.push(Piece {
            job,
            segment: *segment,
            position: start,
            len: (end - start) as usize,
            wants: vec![(i, *offset, *loc)],
        });
    }
    out
}
