//! Criterion benchmarks of the hot paths' CPU work: entry encoding with its
//! CRC32C, commit assembly (encode + seal), decoding a commit back, the
//! buffer table's insert, lookup and append path, and the cross-thread hand-off of a
//! request to a shard and of its answer back (with the shard's sleep and
//! eventfd wake-up). Run with `cargo bench --bench hot_paths`.

use corewal_engine::buffer::channels::Loc;
use corewal_engine::types::{ChannelId, CommitSeq, Offset, SegmentSeq, ShardId};
use corewal_engine::wal::commit::CommitBuilder;
use corewal_engine::wal::format::{
    decode_commit_header, encode_entry, entry_bytes, EntryIter, EntryKind, COMMIT_HEADER_BYTES,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn encode_entry_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_entry");
    for len in [256usize, 4096] {
        let payload = vec![0xA5u8; len];
        let mut out = vec![0u8; entry_bytes(len)];
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, _| {
            b.iter(|| {
                encode_entry(
                    CommitSeq(7),
                    EntryKind::Append,
                    ChannelId(3),
                    Offset(99),
                    &payload,
                    &mut out,
                )
            })
        });
    }
    g.finish();
}

fn commit_assembly_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("commit_assembly");
    for records in [1usize, 16, 256] {
        let payload = vec![0x5Au8; 256];
        let mut builder = CommitBuilder::new(1 << 20, 4096, 4096);
        g.throughput(Throughput::Elements(records as u64));
        g.bench_with_input(
            BenchmarkId::new("records_256B", records),
            &records,
            |b, &n| {
                b.iter(|| {
                    builder.reset(CommitSeq(1));
                    for i in 0..n {
                        builder.push(EntryKind::Append, ChannelId(1), Offset(i as u64), &payload);
                    }
                    let sealed = builder.seal(ShardId(0), 42, SegmentSeq(1), 4096, 1);
                    let len = sealed.len;
                    builder.restore(sealed.buf);
                    len
                })
            },
        );
    }
    g.finish();
}

fn decode_commit_bench(c: &mut Criterion) {
    let payload = vec![0x5Au8; 256];
    let mut builder = CommitBuilder::new(1 << 20, 4096, 4096);
    builder.reset(CommitSeq(1));
    for i in 0..256u64 {
        builder.push(EntryKind::Append, ChannelId(1), Offset(i), &payload);
    }
    let sealed = builder.seal(ShardId(0), 42, SegmentSeq(1), 4096, 1);
    let bytes = sealed.buf[..sealed.len].to_vec();
    let mut g = c.benchmark_group("decode_commit");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("256_records_256B", |b| {
        b.iter(|| {
            let h = decode_commit_header(&bytes, 4096).unwrap();
            let body = &bytes[COMMIT_HEADER_BYTES..COMMIT_HEADER_BYTES + h.entries_bytes as usize];
            EntryIter::new(body, h.commit_seq, h.entry_count)
                .filter(|e| e.is_ok())
                .count()
        })
    });
    g.finish();
}

fn buffer_table_bench(c: &mut Criterion) {
    use corewal_engine::buffer::channels::ChannelTable;
    let names: Vec<String> = (0..10_000).map(|i| format!("dml_{i}_v0")).collect();
    let mut g = c.benchmark_group("buffer_table");
    g.throughput(Throughput::Elements(names.len() as u64));
    g.bench_function("insert_10000_channels", |b| {
        b.iter(|| {
            let mut t = ChannelTable::default();
            for n in &names {
                t.registration(n).expect("ids left");
                t.register(n, CommitSeq(1));
            }
            t.len()
        })
    });
    let mut t = ChannelTable::default();
    for n in &names {
        t.register(n, CommitSeq(1));
    }
    g.bench_function("lookup_10000_names", |b| {
        b.iter(|| names.iter().filter(|n| t.live(n).is_some()).count())
    });
    g.finish();
    // What the table costs an append: the offset asked, assigned, the
    // record kept with its segment once acknowledged — 16 channels in turn,
    // each checkpointed every 1,000 records (so that memory stays bounded
    // and the per-segment pins move both ways).
    let mut t = ChannelTable::default();
    // A cache smaller than the records kept: evictions are part of it.
    t.set_cache_budget(1 << 20);
    let ids: Vec<_> = (0..16)
        .map(|i| t.register(&format!("c{i}"), CommitSeq(1)).0)
        .collect();
    let record = bytes::Bytes::from(vec![0xA5u8; 256]);
    let mut g = c.benchmark_group("buffer_table");
    g.throughput(Throughput::Elements(1024));
    let mut seq = 1u64;
    g.bench_function("append_1024_records_16_channels", |b| {
        b.iter(|| {
            seq += 1;
            for k in 0..1024usize {
                let id = ids[k % ids.len()];
                t.appendable(id, 1).expect("appendable");
                let offset = t.assign(id, 1);
                let at = Loc {
                    commit: CommitSeq(seq),
                    position: (k * 320) as u32,
                    len: record.len() as u32,
                };
                t.acknowledge(id, at, SegmentSeq(seq / 64), || record.clone());
                if (offset.0 + 1) % 1000 == 0 {
                    t.checkpoint(id, Offset(offset.0 + 1), CommitSeq(seq));
                }
            }
        })
    });
    g.finish();
}

fn handoff_bench(c: &mut Criterion) {
    use corewal_engine::shard::ack::Ack;
    use corewal_engine::shard::inbox::{Inbox, Request};
    use std::sync::Arc;
    // A stand-in shard thread: pops requests, answers them, and sleeps on
    // its eventfd when the inbox is empty — the protocol the shard uses.
    let inbox = Arc::new(Inbox::new(4096).unwrap());
    let shard = {
        let inbox = inbox.clone();
        std::thread::spawn(move || loop {
            match inbox.pop() {
                Some(Request::NextOffset { ack, .. }) => ack.complete(Ok(Offset(1))),
                Some(Request::Close) => return,
                Some(_) => unreachable!("only NextOffset and Close are sent"),
                None => {
                    if inbox.prepare_sleep() {
                        inbox.wake_fd().drain();
                        inbox.woke();
                    }
                }
            }
        })
    };
    let mut g = c.benchmark_group("handoff");
    g.bench_function("request_and_answer_round_trip", |b| {
        b.iter(|| {
            let ack = Arc::new(Ack::new());
            inbox
                .push_blocking(Request::NextOffset {
                    channel: ChannelId(0),
                    ack: ack.clone(),
                })
                .unwrap();
            ack.wait().unwrap()
        })
    });
    g.finish();
    inbox.push_blocking(Request::Close).unwrap();
    shard.join().unwrap();
}

criterion_group!(
    benches,
    encode_entry_bench,
    commit_assembly_bench,
    decode_commit_bench,
    buffer_table_bench,
    handoff_bench
);
criterion_main!(benches);
