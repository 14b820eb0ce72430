//! The payload budget bounds the engine's memory: writing, replaying and
//! reading back a data set sixteen times the budget, the process's resident
//! set grows by at most the budget, the index and a fixed margin.
//!
//! Its own test binary: the resident set is the whole process's, so nothing
//! else may run beside it.

mod common;

use common::{payload, peak_rss_bytes, reset_peak_rss, small_config, test_dir};
use corewal::{Backend, Config, Engine, Offset};

const BUDGET: u64 = 16 << 20;
const CHANNELS: u64 = 16;
const RECORDS: u64 = 512;
const RECORD_MAX: usize = 64 << 10;

/// Beside the budget and the index: commit buffers, the inbox, one
/// segment's replay buffer (8 MiB here), the preparer's zero buffer,
/// reads in flight, the allocator's slack.
const FIXED: u64 = 40 << 20;

fn config(dir: &std::path::Path) -> Config {
    let mut c = small_config(dir, 1, Backend::IoUring);
    c.segment_bytes = 8 << 20;
    c.commit_bytes_max = 1 << 20;
    c.record_bytes_max = RECORD_MAX;
    c.buffer_bytes_max = BUDGET;
    // What is measured is replay's memory.
    c.index_snapshots = false;
    c
}

/// How much the peak resident set grew while `f` ran.
fn growth(f: impl FnOnce()) -> u64 {
    reset_peak_rss();
    let before = peak_rss_bytes();
    f();
    peak_rss_bytes().saturating_sub(before)
}

#[test]
fn a_budget_far_smaller_than_the_data_keeps_memory_bounded() {
    let dir = test_dir();
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("dml_{i}")).collect();
    let mut written = 0u64;
    let grew = growth(|| {
        let engine = Engine::open(config(dir.path())).unwrap();
        let chans: Vec<_> = names.iter().map(|n| engine.register(n).unwrap()).collect();
        for i in 0..RECORDS {
            for (ch, name) in chans.iter().zip(&names) {
                let data = payload(name, i, RECORD_MAX);
                written += data.len() as u64;
                ch.append(&data).unwrap();
            }
        }
        let m = engine.metrics();
        assert!(m.cached_bytes <= BUDGET, "{m:?}");
        engine.close().unwrap();
    });
    let index = CHANNELS * RECORDS * 16;
    assert!(written > 15 * BUDGET, "{written} bytes written");
    assert!(
        grew <= BUDGET + index + FIXED,
        "writing {written} bytes grew the resident set by {grew} bytes"
    );

    let grew = growth(|| {
        let engine = Engine::open(config(dir.path())).unwrap();
        let m = engine.metrics();
        assert!(m.cached_bytes <= BUDGET, "{m:?}");
        assert!(m.recovery_bytes_read >= written, "{m:?}");
        // Every record read back, from memory or the WAL, a megabyte at a
        // time.
        for name in &names {
            let ch = engine.register(name).unwrap();
            let mut from = Offset(0);
            loop {
                let page = ch.read_limited(from.., 1 << 20).unwrap();
                let Some(last) = page.last() else { break };
                for r in &page {
                    assert_eq!(r.data[..], payload(name, r.offset.0, RECORD_MAX)[..]);
                }
                from = Offset(last.offset.0 + 1);
            }
            assert_eq!(from, Offset(RECORDS), "{name}");
        }
        assert!(engine.metrics().wal_reads > 0);
        engine.close().unwrap();
    });
    assert!(
        grew <= BUDGET + index + FIXED,
        "replaying and reading back {written} bytes grew the resident set by {grew} bytes"
    );
}
