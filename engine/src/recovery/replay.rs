//! Replay proper: segment by segment, commit by commit, through the channel
//! table, holding what it has found so far. What the bytes are comes from
//! [`super::scan`]; what to do about them from [`super::decision`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::buffer::channels::{ChannelTable, Loc, Logged};
use crate::damage::DamageKind;
use crate::error::Result;
use crate::io::buffer::AlignedBuf;
use crate::io::file::DiskFile;
use crate::io::ring::Ring;
use crate::types::{CommitSeq, SegmentSeq};
use crate::wal::format::{
    decode_state_payload, header_crc, CommitHeader, Entry, EntryIter, EntryKind,
    COMMIT_HEADER_BYTES, ENTRY_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use crate::wal::manifest::{LogStart, ManifestState};
use crate::wal::reader::{first_commit_header, SegmentReader};
use crate::wal::segment::{LogSegment, Segment};
use crate::wal::snapshot::CommitTie;

use super::decision::{decide, Decision, Finding};
use super::from_snapshot::Resume;
use super::scan::{self, AfterEnd, ChainEnd, Identity, Later};
use super::{
    keep_prefix, refuse, settle_torn_tail, Cut, Damage, DamageAction, Place, RecoverContext,
    Recovered, Tail, Torn,
};

/// Bytes the scan after a chain end asks to have arrived at a time.
const AFTER_END_WINDOW: usize = 8 << 20;

/// How far past the manifest's `written_below` (or past the first block of
/// a segment after its active one) the scan after a chain end still looks,
/// for a commit written a few blocks off its place (and at least four
/// blocks).
pub(crate) const WRITTEN_BELOW_SLACK: usize = 64 << 10;

/// Whether replay goes on to the next segment.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flow {
    Next,
    /// `KeepPrefix` stops here: the rest is moved aside.
    Stop,
}

/// One segment being replayed.
struct InSegment<'s> {
    /// Its index in the shard's list of segments.
    index: usize,
    id: Identity,
    path: &'s std::path::Path,
    block: usize,
    segment_bytes: u64,
    /// The file's size.
    n: usize,
    /// Where its chain of commits begins: its first block, or the end of
    /// an index snapshot's tied commit.
    start: usize,
    /// No commit was written at or beyond this byte, by the manifest (`n`
    /// when it does not say): see [`Replay::bound_scans`].
    written_below: usize,
}

impl InSegment<'_> {
    fn place(&self, position: usize) -> Place {
        Place {
            seq: self.id.segment,
            path: self.path.to_path_buf(),
            position: position as u64,
            block: self.block,
            segment_bytes: self.segment_bytes,
        }
    }
}

/// A shard's replay so far.
pub(super) struct Replay<'c, 'a> {
    ctx: &'c RecoverContext<'a>,
    segments: &'c [(SegmentSeq, PathBuf)],
    /// Whether the mode goes on after damage to the next whole commit.
    skipping: bool,
    table: ChannelTable,
    /// The sequence number the next commit must carry; unknown until the
    /// first.
    next: Option<CommitSeq>,
    /// The read buffer, handed from segment to segment.
    buf: Option<AlignedBuf>,
    /// A damaged chain end that is the torn tail unless a commit follows.
    torn: Option<Torn>,
    damage: Vec<Damage>,
    /// Where the chain of whole commits ends so far: writing resumes there.
    end_of_chain: Option<Place>,
    /// `KeepPrefix`: where replay stopped, and why.
    stop: Option<(Place, DamageKind)>,
    next_segment_seq: SegmentSeq,
    previous: Option<SegmentSeq>,
    last_commit: Option<CommitTie>,
    /// Non-zero bytes without a commit in segments after a damaged chain
    /// end: zeroed with the torn tail if that is what it turns out to be.
    junk: Vec<Cut>,
    /// The segments of the log so far, as the shard keeps them.
    log: Vec<LogSegment>,
    /// After an index snapshot: the segment and position where its tied
    /// commit ends, where replay begins, and the channel id that was next
    /// when that segment began.
    resume: Option<(SegmentSeq, usize, u64)>,
    /// The manifest's active segment and its `written_below` (0: not
    /// recorded), when the mode lets them bound the scans after a chain
    /// end.
    written: Option<(SegmentSeq, u64)>,
}

impl<'c, 'a> Replay<'c, 'a> {
    /// A replay of `segments` (those from the log start on), with ids below
    /// the log start's next channel id restated by the log itself.
    pub fn new(
        ctx: &'c RecoverContext<'a>,
        segments: &'c [(SegmentSeq, PathBuf)],
        start: Option<LogStart>,
    ) -> Self {
        Replay {
            ctx,
            segments,
            skipping: decide(Finding::CommitAfterChainEnd, ctx.mode) == Decision::Skip,
            table: {
                let mut t = start.map_or_else(ChannelTable::default, |s| {
                    ChannelTable::for_log_start(s.next_channel_id)
                });
                t.set_cache_budget(ctx.cache_budget);
                t
            },
            next: None,
            buf: None,
            torn: None,
            damage: Vec::new(),
            end_of_chain: None,
            stop: None,
            next_segment_seq: SegmentSeq(1),
            // The log starts with its start segment: one missing there is
            // missing like any other.
            previous: start.map(|s| SegmentSeq(s.segment.0 - 1)),
            last_commit: None,
            junk: Vec::new(),
            log: Vec::new(),
            resume: None,
            written: None,
        }
    }

    /// Lets the manifest bound the scans after a chain end (the default
    /// mode of an open; a read-only look and the lenient modes scan every
    /// segment whole). Whatever ended the chain, a commit can only lie
    /// where the shard may have written one: in the manifest's active
    /// segment below its `written_below` (raised, a generation at a time,
    /// before a commit would pass it), and in a later segment nowhere (a
    /// generation naming a segment active is written before its first
    /// commit). So the zero tail past those is not read — up to a segment
    /// and the spare made ahead after a crash. A chain that itself runs
    /// past the bound shows the generation that raised it was lost: that
    /// segment is scanned whole, as without a bound.
    pub fn bound_scans(&mut self, manifest: &ManifestState) {
        let ctx = self.ctx;
        if ctx.read_only || ctx.mode != crate::damage::RecoveryMode::TolerateTornTail {
            return;
        }
        if let ManifestState::Found(r) = manifest {
            self.written = Some((r.active_segment, r.written_below));
        }
    }

    /// Caches only the payloads the budget will still hold when the replay
    /// ends: none from a segment whose newer segments hold the budget's
    /// worth of log (that segment itself is kept, a margin for payloads
    /// charged more than their log bytes). The log bytes of a
    /// segment are an estimate of what it adds to the cache: a spare made
    /// ahead of use (after the manifest's active segment) holds none, the
    /// active segment none past the manifest's `written_below`; records
    /// checkpointed, truncated or dropped later in the log leave the cache
    /// below its budget, to be filled as records are read or written.
    /// Undone by [`Replay::finish`].
    /// `sizes` are the files' sizes, one per segment replayed.
    pub fn cache_newest(&mut self, manifest: &ManifestState, sizes: &[u64]) {
        let budget = self.ctx.cache_budget;
        let active = match manifest {
            ManifestState::Found(r) => Some((r.active_segment, r.written_below)),
            _ => None,
        };
        let mut newer = 0u64;
        debug_assert_eq!(sizes.len(), self.segments.len());
        for ((seq, _), &size) in self.segments.iter().zip(sizes).rev() {
            if newer >= budget {
                self.table.cache_from(*seq);
                return;
            }
            let bytes = match active {
                Some((a, _)) if *seq > a => 0,
                Some((a, w)) if *seq == a && w > 0 => size.min(w),
                _ => size,
            };
            newer = newer.saturating_add(bytes);
        }
    }

    /// Where segment `seq` (of `n` bytes, blocks of `block`) holds no
    /// commit from, by the manifest.
    fn written_below(&self, seq: SegmentSeq, n: usize, block: usize) -> usize {
        match self.written {
            Some((active, w)) if seq == active && w > 0 => (w as usize).min(n),
            Some((active, _)) if seq > active => block.min(n),
            _ => n,
        }
    }

    /// A replay of what followed an index snapshot's tied commit: its
    /// table and the log before it are the snapshot's; `segments` begin
    /// with the tied commit's.
    pub fn resume(
        ctx: &'c RecoverContext<'a>,
        segments: &'c [(SegmentSeq, PathBuf)],
        from: Resume,
    ) -> Self {
        let mut replay = Replay::new(ctx, segments, None);
        let tie = from.tie;
        replay.table = from.table;
        replay.next = Some(CommitSeq(tie.seq.0 + 1));
        replay.previous = Some(SegmentSeq(tie.segment.0 - 1));
        replay.last_commit = Some(tie);
        replay.log = from.log;
        replay.resume = Some((tie.segment, from.after, from.tie_next_channel_id));
        replay
    }

    /// Replays segment `index` of the list, reading through `io`.
    pub fn segment(&mut self, io: &mut Ring, index: usize) -> Result<Flow> {
        let ctx = self.ctx;
        let (seq, path) = &self.segments[index];
        let seq = *seq;
        self.next_segment_seq = SegmentSeq(seq.0.checked_add(1).ok_or_else(|| {
            let d = decide(Finding::SequenceExhausted, ctx.mode);
            refuse(ctx, d, seq, 0, DamageKind::SegmentSeqExhausted)
        })?);
        if let Some(p) = self.previous {
            if p.0.checked_add(1) != Some(seq.0) {
                let kind = DamageKind::SegmentsMissing {
                    from: SegmentSeq(p.0 + 1),
                    to: SegmentSeq(seq.0 - 1),
                };
                if self.skip_segment(seq, path, kind)? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
        }
        self.previous = Some(seq);

        let f = DiskFile::open_read(path, ctx.access)?;
        let size = f.len()?;
        if size > crate::config::SEGMENT_BYTES_LIMIT {
            return self.skip_segment(seq, path, DamageKind::SegmentTooLarge { bytes: size });
        }
        let n = size as usize;
        let bytes_read = &ctx.metrics.recovery_bytes_read;
        let buf = self.buf.take();
        let mut reader = SegmentReader::new(io, path, f, buf, n, bytes_read, ctx.stop);
        // Before the first read: where the shard may have written (the
        // block size, which the header gives, only matters past it).
        reader.limit_ahead(self.written_below(seq, n, 0) + WRITTEN_BELOW_SLACK);
        let resume_at = match self.resume {
            Some((s, at, next_id)) if s == seq => {
                self.resume = None;
                reader.skip_to(at);
                Some((at, next_id))
            }
            _ => None,
        };
        reader.ensure(SEGMENT_HEADER_BYTES)?;
        let mut id = Identity {
            store_id: ctx.store_id,
            shard: ctx.shard,
            segment: seq,
            recycled: false,
        };
        let mut log = LogSegment {
            seq,
            bytes: size,
            // (A segment replayed from an index snapshot's tied commit on
            // began before the snapshot's table: the snapshot says.)
            next_channel_id: resume_at.map_or(self.table.next_id(), |(_, id)| id),
            recycled_from: None,
        };
        let header = match scan::segment_header(&id, reader.view(), n as u64) {
            Ok(h) => h,
            Err(kind) => {
                self.buf = reader.finish();
                self.log.push(log);
                return self.skip_segment(seq, path, kind);
            }
        };
        id.recycled = header.recycled_from.is_some();
        log.recycled_from = header.recycled_from;
        self.log.push(log);
        let seg = InSegment {
            index,
            id,
            path,
            block: header.block_bytes as usize,
            segment_bytes: header.segment_bytes,
            n,
            start: resume_at.map_or(header.block_bytes as usize, |(at, _)| at),
            written_below: self.written_below(seq, n, header.block_bytes as usize),
        };
        let flow = self.commits(&mut reader, &seg);
        self.buf = reader.finish();
        flow
    }

    /// A whole segment cannot be replayed: damage, whatever came before.
    fn skip_segment(
        &mut self,
        seq: SegmentSeq,
        path: &std::path::Path,
        kind: DamageKind,
    ) -> Result<Flow> {
        let ctx = self.ctx;
        let here = Place {
            seq,
            path: path.to_path_buf(),
            position: 0,
            block: 0,
            segment_bytes: 0,
        };
        match decide(Finding::SegmentUnreadable, ctx.mode) {
            Decision::Skip => {
                if let Some(t) = self.torn.take() {
                    self.damage.push(skipped(ctx, &t.at, t.kind, None));
                }
                self.damage.push(skipped(ctx, &here, kind, None));
                Ok(Flow::Next)
            }
            Decision::KeepPrefix => {
                self.stop = Some(match self.torn.take() {
                    Some(t) => (t.at, t.kind),
                    None => (
                        self.end_of_chain.clone().unwrap_or(here),
                        DamageKind::InSegment {
                            segment: seq,
                            kind: Box::new(kind),
                        },
                    ),
                });
                Ok(Flow::Stop)
            }
            d => Err(refuse(ctx, d, seq, 0, kind)),
        }
    }

    /// Replays the commits of `seg` (after a damaged chain end in an
    /// earlier segment, only scans it for a commit), then settles what
    /// follows its chain end.
    fn commits(&mut self, reader: &mut SegmentReader<'_>, seg: &InSegment<'_>) -> Result<Flow> {
        let mut pos = seg.start;
        // Whether commits here continue the chain.
        let mut live = self.torn.is_none();
        loop {
            let end = if live {
                self.chain(reader, seg, &mut pos)?
            } else {
                ChainEnd::Zeros
            };
            if self.stop.is_some() {
                return Ok(Flow::Stop);
            }
            if live {
                self.end_of_chain = Some(seg.place(pos));
            }
            // Whatever ended the chain, no commit may follow it — except, in
            // this segment, commits that were in flight with the one that is
            // missing: none of them was acknowledged, since
            // acknowledgements go in order. The rest of the segment (often
            // a zero tail, or a whole spare segment) is scanned a few
            // megabytes at a time, letting go of what was scanned.
            // Where the shard may have written (a chain past the manifest's
            // bound: anywhere), and a little beyond.
            let scan_end = if pos <= seg.written_below {
                (seg.written_below + WRITTEN_BELOW_SLACK.max(4 * seg.block)).min(seg.n)
            } else {
                seg.n
            };
            reader.limit_ahead(scan_end);
            let window_base = self.next.unwrap_or(CommitSeq(1));
            reader.ensure(pos + 2 * seg.block)?;
            let mut scan =
                scan::AfterEndScan::new(reader.view(), pos, seg.block, &seg.id, window_base, live);
            while !scan.done() && scan.position() + seg.block <= scan_end {
                reader.ensure((scan.position() + AFTER_END_WINDOW).min(scan_end))?;
                scan.scan(reader.view(), &seg.id);
                reader.release_before(scan.keep_from());
            }
            let mut after = scan.finish();
            // A mode that skips: commits in flight with a damaged one are only
            // unacknowledged if nothing follows; when a later segment holds
            // a commit, every commit here was acknowledged (segments change
            // with nothing in flight), so the damage is not a torn tail and
            // replay goes on at the first of them.
            if after.beyond.is_none()
                && self.skipping
                && live
                && after.first_later.is_some()
                && self.later_segment_has_commit(seg.index)
            {
                after.beyond = after.first_later;
            }
            let Some(b) = after.beyond else {
                self.settle_chain_end(seg, pos, end, live, &after);
                return Ok(Flow::Next);
            };
            match self.commit_after_end(seg, pos, end, window_base, b, after.first_later)? {
                Some(resume) => {
                    pos = resume.position;
                    self.next = Some(resume.commit_seq);
                    live = true;
                }
                None => return Ok(Flow::Stop),
            }
        }
    }

    /// A commit (`beyond`) follows the chain end at `pos`: damage, not a
    /// torn tail. Returns the commit replay resumes at (a mode that skips),
    /// or `None` when `KeepPrefix` stops here.
    fn commit_after_end(
        &mut self,
        seg: &InSegment<'_>,
        pos: usize,
        end: ChainEnd,
        window_base: CommitSeq,
        beyond: Later,
        first_later: Option<Later>,
    ) -> Result<Option<Later>> {
        let ctx = self.ctx;
        self.junk.clear();
        let (at, found) = match self.torn.take() {
            Some(t) => (t.at, Some(t.kind)),
            None => (
                seg.place(pos),
                match end {
                    ChainEnd::Damaged(k) => Some(k),
                    ChainEnd::Zeros => None,
                },
            ),
        };
        let kind = DamageKind::CommitAfterChainEnd {
            end: found.map(Box::new),
            expected: window_base,
            found: beyond.commit_seq,
            segment: seg.id.segment,
            position: beyond.position as u64,
        };
        match decide(Finding::CommitAfterChainEnd, ctx.mode) {
            Decision::Skip => {
                let resume = first_later.expect("beyond is a later commit");
                let resumed_at = Some((seg.id.segment, resume.position as u64));
                self.damage.push(skipped(ctx, &at, kind, resumed_at));
                Ok(Some(resume))
            }
            Decision::KeepPrefix => {
                self.stop = Some((at, kind));
                Ok(None)
            }
            d => Err(refuse(ctx, d, at.seq, at.position, kind)),
        }
    }

    /// Replays the chain of valid commits of `seg` from `*pos`, leaving
    /// `*pos` at its end; returns what ended it.
    fn chain(
        &mut self,
        reader: &mut SegmentReader<'_>,
        seg: &InSegment<'_>,
        pos: &mut usize,
    ) -> Result<ChainEnd> {
        let ctx = self.ctx;
        let (seq, block) = (seg.id.segment, seg.block);
        loop {
            if *pos + block > seg.n {
                return Ok(ChainEnd::Zeros);
            }
            if *pos > seg.written_below {
                // A chain past the manifest's bound (a lost generation):
                // read ahead through the segment again.
                reader.limit_ahead(seg.n);
            }
            reader.ensure(*pos + block)?;
            let h = match scan::commit_header(reader.view(), *pos, block, &seg.id) {
                Ok(h) => h,
                Err(end) => return Ok(end),
            };
            if let Some((finding, kind)) = scan::out_of_sequence(h.commit_seq, self.next) {
                match decide(finding, ctx.mode) {
                    Decision::Skip => {
                        let resumed_at = Some((seq, *pos as u64));
                        let d = skipped(ctx, &seg.place(*pos), kind, resumed_at);
                        self.damage.push(d);
                    }
                    Decision::EndChain => return Ok(ChainEnd::Damaged(kind)),
                    Decision::KeepPrefix => {
                        self.stop = Some((seg.place(*pos), kind));
                        return Ok(ChainEnd::Zeros);
                    }
                    d => return Err(refuse(ctx, d, seq, *pos as u64, kind)),
                }
            }
            let span = h.blocks as usize * block;
            if *pos + span > seg.n {
                return Ok(ChainEnd::Damaged(DamageKind::CommitPastSegment));
            }
            reader.ensure(*pos + span)?;
            let header_crc = header_crc(&reader.view()[*pos..]);
            let body = match scan::commit_body(reader.view(), *pos, &h) {
                Ok(body) => body,
                Err(kind) => return Ok(ChainEnd::Damaged(kind)),
            };
            self.commit(seq, *pos, &h, body)?;
            *pos += span;
            // Nothing before the chain's end is looked at again: replay
            // holds about its read-ahead of each segment, not the segment.
            reader.release_before(*pos);
            let Some(after) = h.commit_seq.0.checked_add(1) else {
                let d = decide(Finding::SequenceExhausted, ctx.mode);
                let kind = DamageKind::CommitSeqExhausted;
                return Err(refuse(ctx, d, seq, *pos as u64, kind));
            };
            self.next = Some(CommitSeq(after));
            self.last_commit = Some(CommitTie {
                seq: h.commit_seq,
                segment: seq,
                position: h.position,
                header_crc,
            });
            ctx.metrics.recovery_commits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Applies the verified entries of commit `h` (at `position` in segment
    /// `seq`) to the channel table.
    fn commit(
        &mut self,
        seq: SegmentSeq,
        position: usize,
        h: &CommitHeader,
        body: &[u8],
    ) -> Result<()> {
        let ctx = self.ctx;
        // Gaps are expected only after something was skipped (only a mode
        // that skips does); before that, an entry that contradicts the log
        // is refused in every mode.
        let after_skip = self
            .damage
            .iter()
            .any(|d| matches!(d.action, DamageAction::Skipped { .. }));
        let body_at = position + COMMIT_HEADER_BYTES;
        for e in EntryIter::verified(body, h.entry_count) {
            let e = e.expect("verified in the first pass");
            // The entry's place in the segment: its payload's place in the
            // body, less its header.
            let in_body = e.payload.as_ptr() as usize - body.as_ptr() as usize;
            let at = Loc {
                commit: h.commit_seq,
                position: (body_at + in_body - ENTRY_HEADER_BYTES) as u32,
                len: e.payload.len() as u32,
            };
            let lost = apply(&mut self.table, &e, at, (h.commit_seq, seq), after_skip).map_err(
                |kind| {
                    let d = decide(Finding::EntryContradicts, ctx.mode);
                    refuse(ctx, d, seq, position as u64, kind)
                },
            )?;
            if lost > 0 {
                count_lost(&mut self.damage, lost);
            }
        }
        Ok(())
    }

    /// After a chain end with no commit beyond it: a live chain end with
    /// anything after it becomes the candidate torn tail; a segment scanned
    /// after an earlier damaged chain end leaves its stray bytes as junk.
    fn settle_chain_end(
        &mut self,
        seg: &InSegment<'_>,
        pos: usize,
        end: ChainEnd,
        live: bool,
        after: &AfterEnd,
    ) {
        if live {
            // Anything non-zero after the chain end is what a torn write
            // left (a lost header with written later blocks, say): it is
            // cut and zeroed like a damaged commit, so no byte of it
            // outlives the cut.
            let in_flight_after = after.first_later.is_some();
            let damaged = matches!(end, ChainEnd::Damaged(_));
            if damaged || in_flight_after || after.nonzero_end > pos {
                let nonzero_end = after.nonzero_end.max((pos + seg.block).min(seg.n));
                self.torn = Some(Torn {
                    at: seg.place(pos),
                    nonzero_end: nonzero_end as u64,
                    kind: match end {
                        ChainEnd::Damaged(k) => k,
                        ChainEnd::Zeros => DamageKind::BytesAfterLastCommit,
                    },
                });
            }
        } else if after.first_later.is_none() {
            // A segment with no commit after a damaged chain end (the spare
            // made ahead of use, or one whose only commit tore): if the
            // damage turns out to be the torn tail, whatever is in it is
            // zeroed with the tail and writing resumes in it.
            if after.nonzero_end > pos {
                self.junk.push(Cut {
                    path: seg.path.to_path_buf(),
                    block: seg.block,
                    from: pos as u64,
                    to: after.nonzero_end as u64,
                });
            }
            self.end_of_chain = Some(seg.place(pos));
        }
    }

    /// Whether any segment after `index` starts with a commit of its own.
    fn later_segment_has_commit(&self, index: usize) -> bool {
        self.segments[index + 1..].iter().any(|(seq, path)| {
            let id = Identity {
                store_id: self.ctx.store_id,
                shard: self.ctx.shard,
                segment: *seq,
                recycled: false,
            };
            first_commit_header(path).is_some_and(|(block, h)| id.owns(&h, block))
        })
    }

    /// Ends replay: keeps the prefix if `KeepPrefix` stopped it, checks the
    /// end against the manifest, settles a torn tail, and opens the segment
    /// writing resumes in.
    pub fn finish(mut self, manifest: ManifestState) -> Result<Recovered> {
        let ctx = self.ctx;
        // From now on every acknowledged payload is cached (within the budget).
        self.table.cache_from(SegmentSeq(0));
        let kept = self.stop.is_some();
        if let Some((at, kind)) = self.stop.take() {
            let moved_to = keep_prefix(ctx, self.segments, &at)?;
            self.damage.push(Damage {
                shard: ctx.shard,
                segment: at.seq,
                position: at.position,
                kind,
                action: DamageAction::PrefixKept { moved_to },
            });
            self.torn = None;
            self.next_segment_seq = SegmentSeq(at.seq.0 + 1);
            self.log.retain(|s| s.seq <= at.seq);
            self.end_of_chain = (at.block != 0).then_some(at);
        }
        if !kept {
            self.check_end(&manifest)?;
        }
        self.finish_channels(kept)?;
        let mut cuts: Vec<Cut> = Vec::new();
        if let Some(t) = self.torn.take() {
            let d = settle_torn_tail(ctx, t, &mut self.junk, &mut cuts)?;
            self.damage.push(d);
        }
        let tail = self.tail()?;
        let metrics = ctx.metrics;
        let channels = self.table.len() as u64;
        metrics.recovery_channels.store(channels, Ordering::Relaxed);
        let damaged = self.damage.len() as u64;
        metrics.recovery_damage.store(damaged, Ordering::Relaxed);
        Ok(Recovered {
            table: self.table,
            next_commit_seq: self.next.unwrap_or(CommitSeq(1)),
            tail,
            next_segment_seq: self.next_segment_seq,
            damage: self.damage,
            cuts,
            manifest,
            last_commit: self.last_commit,
            log: self.log,
            leftovers: Vec::new(),
        })
    }

    /// Channels registered before the log start must have been restated by
    /// the end of the log; in a mode that accepted losses, their records
    /// are lost instead.
    fn finish_channels(&mut self, kept: bool) -> Result<()> {
        let ctx = self.ctx;
        let lenient = kept
            || self
                .damage
                .iter()
                .any(|d| matches!(d.action, DamageAction::Skipped { .. }));
        let lost = self.table.finish_replay(lenient).map_err(|c| {
            let (segment, position) = self
                .end_of_chain
                .as_ref()
                .map_or((SegmentSeq(0), 0), |p| (p.seq, p.position));
            let d = decide(Finding::EntryContradicts, ctx.mode);
            refuse(ctx, d, segment, position, DamageKind::Entry(c))
        })?;
        if lost > 0 {
            count_lost(&mut self.damage, lost);
        }
        Ok(())
    }

    /// Whether the log ends where the shard manifest says it must.
    fn check_end(&mut self, manifest: &ManifestState) -> Result<()> {
        let ctx = self.ctx;
        let replayed_through = self.next.map_or(0, |n| n.0 - 1);
        let newest = self.segments.last().map_or(SegmentSeq(0), |(seq, _)| *seq);
        let Some((kind, action)) = scan::lost_end(manifest, replayed_through, newest) else {
            return Ok(());
        };
        let (segment, position) = self
            .end_of_chain
            .as_ref()
            .map_or((newest, 0), |p| (p.seq, p.position));
        match decide(Finding::EndLost, ctx.mode) {
            Decision::Report => {
                self.damage.push(Damage {
                    shard: ctx.shard,
                    segment,
                    position,
                    kind,
                    action,
                });
                Ok(())
            }
            d => Err(refuse(ctx, d, segment, position, kind)),
        }
    }

    /// The segment writing resumes in: the chain end's, if nothing was
    /// kept after it.
    fn tail(&mut self) -> Result<Option<Tail>> {
        let ctx = self.ctx;
        let Some(p) = self.end_of_chain.take() else {
            return Ok(None);
        };
        if SegmentSeq(p.seq.0 + 1) != self.next_segment_seq {
            return Ok(None);
        }
        let file = if ctx.read_only {
            DiskFile::open_read(&p.path, ctx.access)?
        } else {
            DiskFile::open_rw(ctx.fs, &p.path, ctx.access)?
        };
        Ok(Some(Tail {
            segment: Segment {
                seq: p.seq,
                file: Arc::new(file),
                path: p.path,
                bytes: p.segment_bytes,
                recycled_from: self
                    .log
                    .iter()
                    .find(|s| s.seq == p.seq)
                    .and_then(|s| s.recycled_from),
            },
            position: p.position,
            block: p.block,
        }))
    }
}

/// A skipped damage at `at`.
pub(super) fn skipped(
    ctx: &RecoverContext<'_>,
    at: &Place,
    kind: DamageKind,
    resumed_at: Option<(SegmentSeq, u64)>,
) -> Damage {
    Damage {
        shard: ctx.shard,
        segment: at.seq,
        position: at.position,
        kind,
        action: DamageAction::Skipped {
            resumed_at,
            records_lost: 0,
        },
    }
}

/// Adds records found lost to the last skipped damage.
fn count_lost(damage: &mut [Damage], lost: u64) {
    if let Some(DamageAction::Skipped { records_lost, .. }) =
        damage.iter_mut().rev().find_map(|d| match &mut d.action {
            a @ DamageAction::Skipped { .. } => Some(a),
            _ => None,
        })
    {
        *records_lost += lost;
    }
}

/// Replays entry `e` of commit `commit` (in segment `seq`) into the table;
/// returns the offsets lost in a gap (lenient only) or what is wrong with it.
fn apply(
    table: &mut ChannelTable,
    e: &Entry<'_>,
    at: Loc,
    (commit, seq): (CommitSeq, SegmentSeq),
    lenient: bool,
) -> std::result::Result<u64, DamageKind> {
    let logged = match e.kind {
        EntryKind::Register => Logged::Register {
            channel: e.channel,
            first: e.offset,
            name: std::str::from_utf8(e.payload).map_err(|_| DamageKind::NameNotUtf8)?,
        },
        EntryKind::Append => Logged::Append {
            channel: e.channel,
            offset: e.offset,
            record: e.payload,
            at,
        },
        EntryKind::Drop => Logged::Drop {
            channel: e.channel,
            next: e.offset,
        },
        EntryKind::Checkpoint => Logged::Checkpoint {
            channel: e.channel,
            first: e.offset,
        },
        EntryKind::Truncate => Logged::Truncate {
            channel: e.channel,
            next: e.offset,
        },
        EntryKind::State => {
            let p = decode_state_payload(e.payload).map_err(DamageKind::Commit)?;
            Logged::State {
                channel: e.channel,
                name: p.name,
                first: e.offset,
                next: p.next,
                lost: p.lost,
            }
        }
        EntryKind::Retired => Logged::Retired {
            channel: e.channel,
            name: std::str::from_utf8(e.payload).map_err(|_| DamageKind::NameNotUtf8)?,
            next: e.offset,
        },
        EntryKind::Relocate => Logged::Relocate {
            channel: e.channel,
            offset: e.offset,
            record: e.payload,
            at,
        },
    };
    table
        .replay(logged, commit, seq, lenient)
        .map_err(DamageKind::Entry)
}
