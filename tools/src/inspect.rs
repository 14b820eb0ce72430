//! `corewal inspect` and `corewal verify`: read-only looks at a data
//! directory. Both replay every shard the way recovery does, in a mode that
//! finds all damage and changes nothing on disk (not even a torn tail), under
//! a shared lock so that no engine writes meanwhile.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use corewal_engine::inspect::{examine, DirReport};
use corewal_engine::recovery::{Damage, DamageAction};
use corewal_engine::wal::format::{
    claims_commit_of, decode_commit_header, decode_segment_header, DecodeError, EntryIter,
    EntryKind, COMMIT_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use serde_json::json;

use crate::load::parse_duration;

/// Arguments of `corewal inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The data directory.
    dir: PathBuf,
    /// Print every commit and entry of the segments, like a log dump,
    /// instead of the summary; damaged blocks are named with their byte.
    #[arg(long)]
    dump: bool,
    /// With --dump: print each payload as hex (default: its length only).
    #[arg(long)]
    hex: bool,
    /// JSON output: one object for the summary; one object per line
    /// (segment, commit, entry, damage) with --dump.
    #[arg(long)]
    json: bool,
    /// Only this shard (default: all).
    #[arg(long)]
    shard: Option<u16>,
    /// With --dump: only this segment sequence number (default: all).
    #[arg(long)]
    segment: Option<u64>,
    /// Channels listed per shard in the summary (0: all).
    #[arg(long, default_value_t = 20)]
    channels_max: usize,
    /// How long to wait for an engine using the directory to close.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lock_wait: Duration,
}

/// Arguments of `corewal verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The data directory.
    dir: PathBuf,
    /// Print a JSON report instead of text.
    #[arg(long)]
    json: bool,
    /// Count a torn tail (an incomplete last commit that the next open cuts:
    /// the normal state after a crash) as sound.
    #[arg(long)]
    allow_torn_tail: bool,
    /// How long to wait for an engine using the directory to close.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    lock_wait: Duration,
}

/// Exit status of `verify` when damage was found.
pub const EXIT_DAMAGED: i32 = 1;

fn action(a: &DamageAction) -> String {
    match a {
        DamageAction::TornTailCut => "torn tail, cut".into(),
        DamageAction::TornTailFound => "torn tail (the next open cuts it)".into(),
        DamageAction::Skipped {
            resumed_at: Some((s, p)),
            records_lost,
        } => {
            format!("damage; the log goes on at segment {s} byte {p}; {records_lost} records lost")
        }
        DamageAction::Skipped {
            resumed_at: None,
            records_lost,
        } => format!("damage; nothing whole after it; {records_lost} records lost"),
        DamageAction::PrefixKept { moved_to } => {
            format!(
                "damage; replay stopped, the rest moved to {}",
                moved_to.display()
            )
        }
        DamageAction::EndLost {
            acknowledged_through,
            replayed_through,
        } => format!(
            "end of the log lost: the shard manifest records commits through \
             {acknowledged_through} (or a newer segment) as acknowledged, the log ends at \
             commit {replayed_through}"
        ),
        DamageAction::ManifestDamaged => {
            "shard manifest damaged: a lost end of the log cannot be told".into()
        }
        other => format!("{other:?}"),
    }
}

fn damage_json(d: &Damage) -> serde_json::Value {
    let (kind, resumed_at, records_lost) = match &d.action {
        DamageAction::TornTailCut | DamageAction::TornTailFound => ("torn_tail", None, 0),
        DamageAction::Skipped {
            resumed_at,
            records_lost,
        } => ("damage", *resumed_at, *records_lost),
        DamageAction::PrefixKept { .. } => ("damage", None, 0),
        DamageAction::EndLost { .. } => ("end_lost", None, 0),
        _ => ("damage", None, 0),
    };
    json!({
        "shard": d.shard.0,
        "segment": d.segment.0,
        "position": d.position,
        "kind": kind,
        "what": d.kind.to_string(),
        "resumed_at": resumed_at.map(|(s, p)| json!({"segment": s.0, "position": p})),
        "records_lost": records_lost,
    })
}

fn report_json(
    r: &DirReport,
    channels_max: Option<usize>,
    torn_tail_ok: bool,
) -> serde_json::Value {
    json!({
        "dir": r.dir.display().to_string(),
        "store_id": format!("{:016x}", r.meta.store_id),
        "shards": r.meta.shards,
        "created_unix_ns": r.meta.created_unix_ns,
        "sound": r.is_sound(torn_tail_ok),
        "shard_reports": r.shards.iter().map(|s| json!({
            "shard": s.shard,
            "log_start": s.log_start,
            "segments": s.segments.iter().map(|g| json!({
                "seq": g.seq, "path": g.path.display().to_string(), "bytes": g.bytes,
                "state": g.state.word(), "recycled_from": g.recycled_from,
                "live_records": g.live_records, "live_bytes": g.live_bytes, "anchors": g.anchors,
            })).collect::<Vec<_>>(),
            "commits": s.commits,
            "channels": s.channels.iter().filter(|c| !c.dropped).count(),
            "records": s.channels.iter().map(|c| c.records).sum::<u64>(),
            "payload_bytes": s.channels.iter().map(|c| c.bytes).sum::<u64>(),
            "channel_list": channels_max.map(|max| s.channels.iter().filter(|c| !c.dropped)
                .take(if max == 0 { usize::MAX } else { max })
                .map(|c| json!({
                    "id": c.id, "name": c.name, "first_offset": c.first_offset,
                    "next_offset": c.next_offset, "records": c.records, "bytes": c.bytes,
                    "lost": c.lost, "oldest_segment": c.oldest_segment,
                })).collect::<Vec<_>>()),
            "damage": s.damage.iter().map(damage_json).collect::<Vec<_>>(),
            "error": s.error.as_ref().map(|e| e.to_string()),
        })).collect::<Vec<_>>(),
    })
}

pub fn run_inspect(args: InspectArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut report = examine(&args.dir, args.lock_wait)?;
    if let Some(s) = args.shard {
        if u32::from(s) >= report.meta.shards {
            return Err(format!(
                "--shard {s}: the directory has shards 0..{}",
                report.meta.shards
            )
            .into());
        }
        report.shards.retain(|r| r.shard == s);
    }
    if args.dump {
        let out = std::io::stdout().lock();
        let mut out = std::io::BufWriter::new(out);
        for s in &report.shards {
            for g in &s.segments {
                if args.segment.is_none_or(|want| want == g.seq) {
                    dump_segment(&mut out, s.shard, g.seq, &g.path, args.hex, args.json)?;
                }
            }
        }
        out.flush()?;
        return Ok(());
    }
    if args.segment.is_some() {
        return Err("--segment applies to --dump only".into());
    }
    if args.json {
        let v = report_json(&report, Some(args.channels_max), false);
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let m = &report.meta;
    println!(
        "{}: corewal store {:016x}, {} shards",
        report.dir.display(),
        m.store_id,
        m.shards
    );
    for s in &report.shards {
        let bytes: u64 = s.segments.iter().map(|x| x.bytes).sum();
        let live: Vec<_> = s.channels.iter().filter(|c| !c.dropped).collect();
        println!(
            "shard {}: {} segments ({:.1} MiB), {} commits, {} channels ({} dropped), {} records, {} damaged places",
            s.shard,
            s.segments.len(),
            bytes as f64 / (1 << 20) as f64,
            s.commits,
            live.len(),
            s.channels.len() - live.len(),
            live.iter().map(|c| c.records).sum::<u64>(),
            s.damage.len()
        );
        if let Some(start) = s.log_start {
            println!("  log starts at segment {start}");
        }
        for g in &s.segments {
            println!(
                "  segment {:>6}  {:>10} B  {}  {:<11} {} live records ({} B), {} anchors{}",
                g.seq,
                g.bytes,
                g.path.file_name().unwrap_or_default().to_string_lossy(),
                g.state.word(),
                g.live_records,
                g.live_bytes,
                g.anchors,
                g.recycled_from
                    .map_or(String::new(), |f| format!(", recycled from segment {f}"))
            );
        }
        let max = if args.channels_max == 0 {
            usize::MAX
        } else {
            args.channels_max
        };
        for c in live.iter().take(max) {
            println!(
                "  channel {:?} (id {}): offsets {}..{} (checkpointed below {}), {} records, {} B{}{}",
                c.name,
                c.id,
                c.first_offset,
                c.next_offset,
                c.first_offset,
                c.records,
                c.bytes,
                c.oldest_segment
                    .map_or(String::new(), |s| format!(", oldest in segment {s}")),
                if c.lost > 0 {
                    format!(", {} offsets lost to damage", c.lost)
                } else {
                    String::new()
                }
            );
        }
        if live.len() > max {
            println!(
                "  … and {} more channels (--channels-max 0 lists all)",
                live.len() - max
            );
        }
        for d in &s.damage {
            println!(
                "  DAMAGE segment {} byte {}: {} — {}",
                d.segment,
                d.position,
                d.kind,
                action(&d.action)
            );
        }
        if let Some(e) = &s.error {
            println!("  ERROR: {e}");
        }
    }
    Ok(())
}

pub fn run_verify(args: VerifyArgs) -> Result<i32, Box<dyn std::error::Error>> {
    let report = examine(&args.dir, args.lock_wait)?;
    let sound = report.is_sound(args.allow_torn_tail);
    if args.json {
        let v = report_json(&report, None, args.allow_torn_tail);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for s in &report.shards {
            let records: u64 = s.channels.iter().map(|c| c.records).sum();
            let state = if s.error.is_some() || !s.damage.is_empty() {
                "DAMAGED"
            } else {
                "ok"
            };
            println!(
                "shard {}: {state}: {} segments, {} commits, {} records checked",
                s.shard,
                s.segments.len(),
                s.commits,
                records
            );
            for d in &s.damage {
                println!(
                    "  segment {} byte {}: {} — {}",
                    d.segment,
                    d.position,
                    d.kind,
                    action(&d.action)
                );
            }
            if let Some(e) = &s.error {
                println!("  {e}");
            }
        }
        println!(
            "{}: {}",
            report.dir.display(),
            if sound { "sound" } else { "DAMAGED" }
        );
    }
    Ok(if sound { 0 } else { EXIT_DAMAGED })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Prints every commit and entry of one segment file; names each stretch of
/// non-zero blocks that does not decode, with its byte and the reason.
fn dump_segment(
    out: &mut impl Write,
    shard: u16,
    seq: u64,
    path: &Path,
    with_hex: bool,
    as_json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    // Never read a file whose size corewal cannot have written, nor
    // anything but a regular file, whole into memory: name it as damage.
    let meta = std::fs::metadata(path)?;
    let limit = corewal_engine::config::SEGMENT_BYTES_LIMIT;
    let refused = if !meta.is_file() {
        Some("not a regular file; not read".to_string())
    } else if meta.len() > limit {
        Some(format!(
            "{} bytes, larger than any corewal writes ({limit}); not read",
            meta.len()
        ))
    } else {
        None
    };
    if let Some(what) = refused {
        if as_json {
            writeln!(
                out,
                "{}",
                json!({"type": "damage", "shard": shard, "segment": seq, "position": 0, "what": what})
            )?;
        } else {
            writeln!(
                out,
                "shard {shard} segment {seq}: DAMAGE at byte 0: {}: {what}",
                path.display()
            )?;
        }
        return Ok(());
    }
    let data = std::fs::read(path)?;
    let header = match decode_segment_header(&data) {
        Ok(h) => h,
        Err(e) => {
            if as_json {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "damage", "shard": shard, "segment": seq, "position": 0, "what": format!("segment header: {e}")})
                )?;
            } else {
                writeln!(
                    out,
                    "shard {shard} segment {seq}: DAMAGE at byte 0: segment header: {e}"
                )?;
            }
            return Ok(());
        }
    };
    let block = header.block_bytes as usize;
    if as_json {
        writeln!(
            out,
            "{}",
            json!({"type": "segment", "shard": shard, "segment": seq, "path": path.display().to_string(), "bytes": data.len(), "block_bytes": block, "header_shard": header.shard.0, "header_segment": header.segment_seq.0, "store_id": format!("{:016x}", header.store_id)})
        )?;
    } else {
        writeln!(
            out,
            "shard {shard} segment {seq}: {} ({} B, block {block} B, store {:016x}{})",
            path.display(),
            data.len(),
            header.store_id,
            header
                .recycled_from
                .map_or(String::new(), |f| format!(", recycled from segment {f}"))
        )?;
    }
    let mut pos = block.max(SEGMENT_HEADER_BYTES);
    // A stretch of undecodable non-zero blocks: (start, reason).
    let mut bad: Option<(usize, String)> = None;
    let flush_bad = |out: &mut dyn Write,
                     bad: &mut Option<(usize, String)>,
                     end: usize|
     -> std::io::Result<()> {
        if let Some((at, why)) = bad.take() {
            if as_json {
                writeln!(
                    out,
                    "{}",
                    json!({"type": "damage", "shard": shard, "segment": seq, "position": at, "end": end, "what": why})
                )
            } else {
                writeln!(out, "  DAMAGE bytes {at}..{end}: {why}")
            }
        } else {
            Ok(())
        }
    };
    // A recycled segment: blocks that do not claim to be its commits are
    // what the file's earlier life left, named once per stretch.
    let mut earlier: Option<usize> = None;
    let flush_earlier = |out: &mut dyn Write, earlier: &mut Option<usize>, end: usize| {
        match earlier.take() {
            Some(at) if as_json => writeln!(
                out,
                "{}",
                json!({"type": "earlier_life", "shard": shard, "segment": seq, "position": at, "end": end, "recycled_from": header.recycled_from.map(|s| s.0)})
            ),
            Some(at) => writeln!(
                out,
                "  bytes {at}..{end}: left by the file's earlier life (segment {}), not commits of this one",
                header.recycled_from.map_or(0, |s| s.0)
            ),
            None => Ok(()),
        }
    };
    while pos + block <= data.len() {
        let claims = claims_commit_of(
            &data[pos..pos + block],
            header.store_id,
            header.shard,
            header.segment_seq,
        );
        if header.recycled_from.is_some() && !claims {
            flush_bad(out, &mut bad, pos)?;
            earlier.get_or_insert(pos);
            pos += block;
            continue;
        }
        flush_earlier(out, &mut earlier, pos)?;
        let h = match decode_commit_header(&data[pos..], block) {
            Ok(h) => h,
            Err(DecodeError::Empty) => {
                flush_bad(out, &mut bad, pos)?;
                if data[pos..pos + block].iter().any(|&b| b != 0) {
                    bad = Some((pos, "non-zero bytes after an empty header".into()));
                }
                pos += block;
                continue;
            }
            Err(e) => {
                if bad.is_none() {
                    bad = Some((pos, format!("commit header: {e}")));
                }
                pos += block;
                continue;
            }
        };
        flush_bad(out, &mut bad, pos)?;
        let span = h.blocks as usize * block;
        let place_ok = h.position == pos as u64 && h.segment_seq.0 == seq && h.shard.0 == shard;
        if as_json {
            writeln!(
                out,
                "{}",
                json!({"type": "commit", "shard": shard, "segment": seq, "position": pos, "commit_seq": h.commit_seq.0, "entries": h.entry_count, "entries_bytes": h.entries_bytes, "blocks": h.blocks, "in_flight_max": h.in_flight_max, "identity_ok": place_ok})
            )?;
        } else {
            writeln!(
                out,
                "  commit {} at byte {pos}: {} entries, {} B, {} blocks{}",
                h.commit_seq.0,
                h.entry_count,
                h.entries_bytes,
                h.blocks,
                if place_ok {
                    ""
                } else {
                    "  (DAMAGE: header names another place)"
                }
            )?;
        }
        if pos + span > data.len() || span == 0 {
            flush_bad(
                out,
                &mut Some((pos, "commit runs past the end of the segment".into())),
                data.len(),
            )?;
            break;
        }
        let body =
            &data[pos + COMMIT_HEADER_BYTES..pos + COMMIT_HEADER_BYTES + h.entries_bytes as usize];
        for (i, e) in EntryIter::new(body, h.commit_seq, h.entry_count).enumerate() {
            match e {
                Ok(e) => {
                    let kind = e.kind.word();
                    let name = (e.kind == EntryKind::Register)
                        .then(|| String::from_utf8_lossy(e.payload).into_owned());
                    if as_json {
                        writeln!(
                            out,
                            "{}",
                            json!({"type": "entry", "commit_seq": h.commit_seq.0, "index": i, "kind": kind, "channel": e.channel.0, "offset": e.offset.0, "len": e.payload.len(), "name": name, "payload_hex": with_hex.then(|| hex(e.payload))})
                        )?;
                    } else {
                        write!(
                            out,
                            "    {i:>4} {kind:<10} channel {} offset {} len {}",
                            e.channel.0,
                            e.offset.0,
                            e.payload.len()
                        )?;
                        if let Some(n) = name {
                            write!(out, " name {n:?}")?;
                        }
                        if with_hex && e.kind == EntryKind::Append {
                            write!(out, " {}", hex(e.payload))?;
                        }
                        writeln!(out)?;
                    }
                }
                Err(err) => {
                    flush_bad(
                        out,
                        &mut Some((
                            pos,
                            format!(
                                "commit {}: {err}; the entries after it cannot be framed",
                                h.commit_seq.0
                            ),
                        )),
                        pos + span,
                    )?;
                    break;
                }
            }
        }
        pos += span;
    }
    flush_bad(out, &mut bad, data.len())?;
    flush_earlier(out, &mut earlier, data.len())?;
    Ok(())
}
