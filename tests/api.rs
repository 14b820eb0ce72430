//! The public API on both backends: registration, append, batch, async,
//! read, reopen, validation, the directory lock and the shard count rule.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Barrier};

use common::{block_on, payload, small_config, test_dir, BACKENDS};
use corewal::{Backend, Durability, Engine, Error, Offset};

#[test]
fn append_read_round_trip_across_shards_and_reopen() {
    for backend in BACKENDS {
        let dir = test_dir();
        let config = small_config(dir.path(), 3, backend.clone());
        let names: Vec<String> = (0..40).map(|i| format!("channel-{i}")).collect();
        let mut expected: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
        {
            let engine = Engine::open(config.clone()).unwrap();
            assert_eq!(engine.shard_count(), 3);
            let mut shards_used = std::collections::HashSet::new();
            for (round, name) in names.iter().cycle().take(2000).enumerate() {
                let ch = engine.register(name).unwrap();
                shards_used.insert(ch.shard());
                let i = expected.get(name).map_or(0, |v| v.len()) as u64;
                let data = payload(name, i + round as u64, 3000);
                let off = ch.append(&data).unwrap();
                assert_eq!(off, Offset(i), "offsets are dense per channel");
                expected.entry(name.clone()).or_default().push(data);
            }
            assert_eq!(shards_used.len(), 3, "names spread over every shard");
            assert!(
                engine.metrics().segments_created > 3,
                "the run crossed segment boundaries"
            );
            engine.close().unwrap();
        }
        let engine = Engine::open(config).unwrap();
        for name in &names {
            let ch = engine.register(name).unwrap();
            let got = ch.read(..).unwrap();
            let want = &expected[name];
            assert_eq!(got.len(), want.len(), "{backend:?} {name}");
            for (k, r) in got.iter().enumerate() {
                assert_eq!(r.offset, Offset(k as u64));
                assert_eq!(&r.data[..], &want[k][..], "{backend:?} {name} record {k}");
            }
            // Appends after reopen continue the offsets.
            assert_eq!(ch.append(b"after").unwrap(), Offset(want.len() as u64));
        }
    }
}

#[test]
fn concurrent_registration_is_idempotent() {
    let dir = test_dir();
    let config = small_config(dir.path(), 2, Backend::IoUring);
    let engine = Arc::new(Engine::open(config.clone()).unwrap());
    let threads = 8;
    let names: Vec<String> = (0..300).map(|i| format!("dml_{i}_v0")).collect();
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (engine, names, barrier) = (engine.clone(), names.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                // Every thread registers every name, in its own order, twice.
                let mut got = HashMap::new();
                for k in 0..names.len() * 2 {
                    let n = names.len();
                    // Rotated per thread, reversed for odd threads: different orders.
                    let i = (k + t * 37) % n;
                    let name = &names[if t % 2 == 1 { n - 1 - i } else { i }];
                    let ch = engine.register(name).unwrap();
                    if let Some(prev) = got.insert(name.clone(), ch.clone()) {
                        assert_eq!(prev, ch);
                    }
                }
                got
            })
        })
        .collect();
    let maps: Vec<HashMap<String, corewal::Channel>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    for name in &names {
        let first = &maps[0][name];
        for m in &maps[1..] {
            assert_eq!(&m[name], first, "{name}: every thread got the same channel");
        }
    }
    // One append per name from the first map; each channel got offset 0 once.
    for name in &names {
        assert_eq!(maps[0][name].append(name.as_bytes()).unwrap(), Offset(0));
    }
    drop(maps);
    Arc::try_unwrap(engine).unwrap().close().unwrap();
    // Registrations (also of channels never appended to) survive a reopen.
    let engine = Engine::open(config).unwrap();
    for name in &names {
        let ch = engine.register(name).unwrap();
        let r = ch.read(..).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(&r[0].data[..], name.as_bytes());
    }
    assert_eq!(engine.metrics().recovery_channels, names.len() as u64);
}

#[test]
fn empty_channels_persist() {
    let dir = test_dir();
    let config = small_config(dir.path(), 2, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    engine.register("never-appended").unwrap();
    engine.close().unwrap();
    let engine = Engine::open(config).unwrap();
    assert_eq!(engine.metrics().recovery_channels, 1);
    let ch = engine.register("never-appended").unwrap();
    assert_eq!(ch.next_offset().unwrap(), Offset(0));
}

#[test]
fn batch_and_async_appends() {
    for backend in BACKENDS {
        let dir = test_dir();
        let engine = Engine::open(small_config(dir.path(), 2, backend.clone())).unwrap();
        let ch = engine.register("batch").unwrap();
        let first = ch.append_batch([b"a".as_slice(), b"bb", b"ccc"]).unwrap();
        assert_eq!(first, Offset(0));
        let off = block_on(ch.append_async(b"async".to_vec()).unwrap()).unwrap();
        assert_eq!(off, Offset(3));
        // Many futures in flight at once from one thread.
        let futs: Vec<_> = (0..100)
            .map(|i| ch.append_async(vec![i as u8; 10]).unwrap())
            .collect();
        let offs: Vec<u64> = futs.into_iter().map(|f| block_on(f).unwrap().0).collect();
        let mut sorted = offs.clone();
        sorted.sort();
        assert_eq!(sorted, (4..104).collect::<Vec<_>>());
        let ch2 = block_on(engine.register_async("batch").unwrap()).unwrap();
        assert_eq!(ch2, ch);
        let all = ch.read(..).unwrap();
        assert_eq!(all.len(), 104);
        assert_eq!(&all[2].data[..], b"ccc");
        assert_eq!(ch.read(Offset(1)..=Offset(2)).unwrap().len(), 2);
        assert!(ch.read(Offset(200)..).unwrap().is_empty());
    }
}

#[test]
fn names_and_sizes_are_validated() {
    let dir = test_dir();
    let config = small_config(dir.path(), 1, Backend::IoUring);
    let max = config.record_bytes_max;
    let engine = Engine::open(config).unwrap();
    for bad in ["", "has space", "tab\t", "é", &"x".repeat(256)] {
        match engine.register(bad) {
            Err(Error::InvalidChannelName { .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    engine.register(&"x".repeat(255)).unwrap();
    engine.register("a/b/../c:d").unwrap();
    let ch = engine.register("sizes").unwrap();
    assert_eq!(ch.append(&vec![1u8; max]).unwrap(), Offset(0));
    assert_eq!(ch.append(b"").unwrap(), Offset(1));
    match ch.append(&vec![1u8; max + 1]) {
        Err(Error::RecordTooLarge { len, max: m }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("{other:?}"),
    }
    let big = vec![vec![0u8; max]; 8];
    match ch.append_batch(&big) {
        Err(Error::BatchTooLarge { records: 8, .. }) => {}
        other => panic!("{other:?}"),
    }
    let r = ch.read(..).unwrap();
    assert_eq!(
        r.len(),
        2,
        "nothing of a refused record or batch was written"
    );
    assert_eq!(r[0].data.len(), max);
}

#[test]
fn invalid_config_is_refused_with_the_field() {
    let dir = test_dir();
    let mut c = small_config(dir.path(), 1, Backend::IoUring);
    c.cores = Some(vec![100_000]);
    match Engine::open(c) {
        Err(Error::InvalidConfig { field: "cores", .. }) => {}
        other => panic!("{other:?}"),
    }
    let mut c = small_config(dir.path(), 1, Backend::IoUring);
    c.segment_bytes = 3 << 19;
    c.block_bytes = Some(1 << 20);
    assert!(matches!(Engine::open(c), Err(Error::InvalidConfig { .. })));
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = test_dir();
    let config = small_config(dir.path(), 1, Backend::IoUring);
    let engine = Engine::open(config.clone()).unwrap();
    let mut again = config.clone();
    again.lock_wait = std::time::Duration::from_millis(100);
    match Engine::open(again) {
        Err(e @ Error::DirectoryLocked { .. }) => assert!(e.to_string().contains("in use")),
        other => panic!("{other:?}"),
    }
    engine.close().unwrap();
    Engine::open(config).unwrap();
}

#[test]
fn reopening_with_another_shard_count_is_refused() {
    let dir = test_dir();
    let engine = Engine::open(small_config(dir.path(), 2, Backend::IoUring)).unwrap();
    engine.register("a").unwrap().append(b"x").unwrap();
    engine.close().unwrap();
    match Engine::open(small_config(dir.path(), 3, Backend::IoUring)) {
        Err(Error::ShardCountMismatch {
            recorded: 2,
            requested: 3,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Leaving the count unset adopts the recorded one.
    let mut c = small_config(dir.path(), 2, Backend::IoUring);
    c.shards = None;
    let engine = Engine::open(c).unwrap();
    assert_eq!(engine.shard_count(), 2);
    assert_eq!(engine.register("a").unwrap().read(..).unwrap().len(), 1);
}

#[test]
fn periodic_durability_acknowledges_and_recovers() {
    let dir = test_dir();
    let mut c = small_config(dir.path(), 2, Backend::IoUring);
    c.durability = Durability::Periodic {
        interval: std::time::Duration::from_millis(5),
    };
    let engine = Engine::open(c.clone()).unwrap();
    let ch = engine.register("periodic").unwrap();
    for i in 0..500u32 {
        assert_eq!(ch.append(&i.to_le_bytes()).unwrap(), Offset(i as u64));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let m = engine.metrics();
    assert!(
        m.syncs >= 1 && m.syncs < m.commits,
        "syncs {} commits {}",
        m.syncs,
        m.commits
    );
    engine.close().unwrap();
    let engine = Engine::open(c).unwrap();
    assert_eq!(
        engine.register("periodic").unwrap().read(..).unwrap().len(),
        500
    );
}

#[test]
fn files_and_directories_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir();
    let root = dir.path().join("store");
    let engine = Engine::open(small_config(&root, 1, Backend::IoUring)).unwrap();
    engine.register("a").unwrap().append(b"x").unwrap();
    engine.close().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&root), 0o700);
    assert_eq!(mode(&root.join("shard-000")), 0o700);
    assert_eq!(mode(&root.join("corewal.meta")), 0o600);
    for e in std::fs::read_dir(root.join("shard-000")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
}

#[test]
fn requests_after_close_fail_cleanly() {
    let dir = test_dir();
    let engine = Engine::open(small_config(dir.path(), 1, Backend::IoUring)).unwrap();
    let ch = engine.register("a").unwrap();
    engine.close().unwrap();
    assert!(matches!(ch.append(b"x"), Err(Error::Closed)));
    assert!(matches!(ch.read(..), Err(Error::Closed)));
}

#[test]
fn unregister_is_durable_idempotent_and_offsets_never_repeat() {
    for backend in BACKENDS {
        let dir = test_dir();
        let config = small_config(dir.path(), 2, backend.clone());
        {
            let engine = Engine::open(config.clone()).unwrap();
            engine.unregister("never-registered").unwrap();
            let old = engine.register("tmp").unwrap();
            old.append_batch([b"a".as_slice(), b"b", b"c"]).unwrap();
            let keep = engine.register("keep").unwrap();
            keep.append(b"k").unwrap();
            engine.unregister("tmp").unwrap();
            engine.unregister("tmp").unwrap();
            assert!(matches!(
                old.append(b"x"),
                Err(Error::ChannelDropped { .. })
            ));
            assert!(matches!(old.read(..), Err(Error::ChannelDropped { .. })));
            let new = engine.register("tmp").unwrap();
            assert_ne!(new, old);
            assert!(new.read(..).unwrap().is_empty());
            assert_eq!(
                new.append(b"d").unwrap(),
                Offset(3),
                "offsets continue after the dropped channel"
            );
            engine.unregister("keep").unwrap();
            engine.close().unwrap();
        }
        for round in 0..2u64 {
            let engine = Engine::open(config.clone()).unwrap();
            assert_eq!(
                engine.metrics().recovery_channels,
                1,
                "{backend:?}: only the new tmp survives"
            );
            let tmp = engine.register("tmp").unwrap();
            let r = tmp.read(..).unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].offset, &r[0].data[..]), (Offset(3), &b"d"[..]));
            let keep = engine.register("keep").unwrap();
            assert!(
                keep.read(..).unwrap().is_empty(),
                "a dropped channel's records stay dropped"
            );
            // Each drop of "keep" moved its next offset on by one.
            assert_eq!(keep.append(b"k2").unwrap(), Offset(1 + round));
            engine.unregister("keep").unwrap();
            engine.close().unwrap();
        }
    }
}

#[test]
fn a_changed_block_size_starts_a_new_segment() {
    let dir = test_dir();
    let mut config = small_config(dir.path(), 1, Backend::IoUring);
    for (round, block) in [4096usize, 8192, 4096].into_iter().enumerate() {
        config.block_bytes = Some(block);
        let engine = Engine::open(config.clone()).unwrap();
        assert_eq!(engine.block_bytes(), block);
        let ch = engine.register("c").unwrap();
        for i in 0..10u64 {
            assert_eq!(
                ch.append(&[round as u8; 100]).unwrap(),
                Offset(round as u64 * 10 + i)
            );
        }
        engine.close().unwrap();
    }
    let engine = Engine::open(config).unwrap();
    let r = engine.register("c").unwrap().read(..).unwrap();
    assert_eq!(r.len(), 30);
    assert!(r
        .iter()
        .enumerate()
        .all(|(i, rec)| rec.data[0] == (i / 10) as u8));
}

#[test]
fn a_full_inbox_is_backpressure_for_threads_and_futures() {
    let dir = test_dir();
    let mut config = small_config(dir.path(), 1, Backend::IoUring);
    config.inbox_capacity = 2;
    let engine = Arc::new(Engine::open(config).unwrap());
    let ch = engine.register("bp").unwrap();
    // Blocking callers: 8 threads against an inbox of 2.
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let ch = ch.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|i| ch.append(&[t as u8, i as u8]).unwrap().0)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    // Futures: 64 polled round-robin from one thread; most find the inbox full.
    let mut futs: Vec<_> = (0..64)
        .map(|i| Some(ch.append_async(vec![i as u8]).unwrap()))
        .collect();
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while futs.iter().any(|f| f.is_some()) {
        for slot in futs.iter_mut() {
            if let Some(f) = slot {
                if let std::task::Poll::Ready(r) = std::pin::Pin::new(f).poll(&mut cx) {
                    offsets.push(r.unwrap().0);
                    *slot = None;
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "futures never completed"
        );
        std::thread::yield_now();
    }
    offsets.sort();
    assert_eq!(
        offsets,
        (0..464).collect::<Vec<_>>(),
        "every append acknowledged once, densely"
    );
}

#[test]
fn a_filesystem_without_direct_io_is_named_and_the_portable_backend_works_there() {
    // tmpfs refuses O_DIRECT; /dev/shm is a tmpfs on most Linux systems.
    let shm = std::path::Path::new("/dev/shm");
    let is_tmpfs = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some("/dev/shm") && l.contains(" tmpfs "))
        })
        .unwrap_or(false);
    if !is_tmpfs {
        eprintln!("SKIPPED: /dev/shm is not a tmpfs here");
        return;
    }
    let dir = tempfile::tempdir_in(shm).unwrap();
    // tmpfs accepts O_DIRECT since Linux 6.6; only an older kernel refuses.
    let probe = dir.path().join("probe");
    let direct_ok = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok()
    };
    let _ = std::fs::remove_file(&probe);
    if direct_ok {
        eprintln!("SKIPPED (refusal part): this kernel's tmpfs accepts O_DIRECT");
    } else {
        match Engine::open(small_config(dir.path(), 1, Backend::IoUring)) {
            Err(e @ Error::DirectIoUnsupported { .. }) => {
                assert!(e.to_string().contains("Backend::Portable"), "{e}");
            }
            other => panic!("expected DirectIoUnsupported, got {other:?}"),
        }
    }
    // The way out the error names works there.
    let engine = Engine::open(small_config(dir.path(), 1, Backend::Portable)).unwrap();
    let ch = engine.register("on-tmpfs").unwrap();
    assert_eq!(ch.append(b"x").unwrap(), Offset(0));
    engine.close().unwrap();
    let engine = Engine::open(small_config(dir.path(), 1, Backend::Portable)).unwrap();
    assert_eq!(
        engine.register("on-tmpfs").unwrap().read(..).unwrap().len(),
        1
    );
}

#[test]
fn reopening_without_writes_does_not_grow_the_directory() {
    let dir = test_dir();
    let config = small_config(dir.path(), 2, Backend::IoUring);
    let count = || {
        let mut n = 0;
        for s in ["shard-000", "shard-001"] {
            n += std::fs::read_dir(dir.path().join(s)).unwrap().count();
        }
        n
    };
    let engine = Engine::open(config.clone()).unwrap();
    engine.register("a").unwrap().append(b"x").unwrap();
    engine.close().unwrap();
    let after_first = count();
    for _ in 0..5 {
        let engine = Engine::open(config.clone()).unwrap();
        assert_eq!(engine.register("a").unwrap().read(..).unwrap().len(), 1);
        engine.close().unwrap();
    }
    assert_eq!(count(), after_first, "each open added segment files");
}

#[test]
fn a_dropped_handle_says_dropped_for_every_call() {
    let dir = test_dir();
    let engine = Engine::open(small_config(dir.path(), 1, Backend::IoUring)).unwrap();
    let ch = engine.register("gone").unwrap();
    ch.append(b"x").unwrap();
    engine.unregister("gone").unwrap();
    assert!(
        matches!(ch.next_offset(), Err(Error::ChannelDropped { .. })),
        "{:?}",
        ch.next_offset()
    );
    assert!(matches!(ch.read(..), Err(Error::ChannelDropped { .. })));
    assert!(matches!(ch.append(b"y"), Err(Error::ChannelDropped { .. })));
    engine.close().unwrap();
}

#[test]
fn an_existing_directory_others_may_write_into_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = test_dir();
    let data = dir.path().join("wal");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    match Engine::open(small_config(&data, 1, Backend::IoUring)) {
        Err(Error::InvalidConfig { field, reason }) => {
            assert_eq!(field, "dir_mode");
            assert!(reason.contains("chmod"), "{reason}");
        }
        other => panic!("expected InvalidConfig, got {other:?}"),
    }
    // Readable by others (a mkdir under umask 022): opens.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    Engine::open(small_config(&data, 1, Backend::IoUring))
        .unwrap()
        .close()
        .unwrap();
    // As wide as dir_mode allows: opens.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut config = small_config(&data, 1, Backend::IoUring);
    config.dir_mode = 0o777;
    Engine::open(config).unwrap().close().unwrap();
    // A newly created directory gets dir_mode exactly.
    let fresh = dir.path().join("fresh").join("wal");
    Engine::open(small_config(&fresh, 1, Backend::IoUring))
        .unwrap()
        .close()
        .unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
}

#[test]
fn closing_while_shards_recover_stops_the_replay_and_changes_nothing() {
    use corewal_engine::runtime::Runtime;
    let dir = test_dir();
    let mut config = small_config(dir.path(), 1, Backend::IoUring);
    config.segment_bytes = 16 << 20;
    config.commit_bytes_max = 1 << 20;
    config.record_bytes_max = 64 << 10;
    {
        let engine = Engine::open(config.clone()).unwrap();
        let ch = engine.register("big").unwrap();
        let record = vec![7u8; 60 << 10];
        for _ in 0..64 {
            ch.append_batch(std::iter::repeat_n(&record[..], 12))
                .unwrap();
        }
        engine.close().unwrap();
    }
    // The clean close left an index snapshot, which would spare the open
    // its replay: without it, there is a replay to stop.
    std::fs::remove_file(dir.path().join("shard-000/snapshot")).unwrap();
    let files = |dir: &std::path::Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("shard-000"))
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.display().to_string(), std::fs::read(&p).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let before = files(dir.path());
    // The close request arrives while the shard has read at most its first
    // megabytes of about 48 MB; recovery must stop there, not finish.
    let rt = Runtime::start(config.clone()).unwrap();
    let _ = rt.close();
    let m = rt.metrics();
    assert!(
        m.recovery_bytes_total > 40 << 20,
        "{} bytes to replay",
        m.recovery_bytes_total
    );
    assert!(
        m.recovery_bytes_read < m.recovery_bytes_total / 2,
        "close waited for the replay: {} of {} bytes read",
        m.recovery_bytes_read,
        m.recovery_bytes_total
    );
    drop(rt);
    assert!(
        files(dir.path()) == before,
        "closing during recovery changed the store"
    );
    let engine = Engine::open(config).unwrap();
    assert_eq!(
        engine.register("big").unwrap().read(..).unwrap().len(),
        64 * 12
    );
}
