//! The `corewal` command: argument validation and output formats.

use std::process::{Command, Output};

fn corewal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corewal"))
}

/// The output of a run that must have succeeded, parsed as one JSON value.
fn json_ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks that a run failed with `message` on stderr.
fn failed_with(out: &Output, message: &str, what: &dyn std::fmt::Debug) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what:?} succeeded");
    assert!(stderr.contains(message), "{what:?}: {stderr}");
}

fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corewal-cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let cases: [(&[&str], &str); 14] = [
        (&["load", "--writers", "0"], "--writers must be 1..=4096"),
        (&["load", "--rate", "0"], "--rate must be more than 0"),
        (&["load", "--rate", "-5"], "unexpected argument"),
        (
            &["load", "--record-bytes", "4096-100"],
            "the range goes down",
        ),
        (
            &["load", "--record-bytes", "0"],
            "--record-bytes must be at least 1",
        ),
        (&["load", "--preset", "huge"], "invalid value 'huge'"),
        (
            &["compare", "/nonexistent/a.json", "/nonexistent/b.json"],
            "/nonexistent/a.json",
        ),
        (&["load", "--batch", "0"], "--batch must be 1..=65536"),
        (&["load", "--duration", "10parsecs"], "unknown unit"),
        (&["load", "--segment-bytes", "12XB"], "unknown unit"),
        (
            &["load", "--durability", "maybe"],
            "use sync or periodic:INTERVAL",
        ),
        (&["load", "--records", "0"], "--records must be at least 1"),
        (
            &["load", "--subscribers", "5000"],
            "--subscribers must be 0..=1024",
        ),
        (
            &["load", "--checkpoint-every", "0"],
            "--checkpoint-every must be at least 1",
        ),
    ];
    for (args, message) in cases {
        let out = corewal().args(args).output().unwrap();
        failed_with(&out, message, &args);
    }
}

#[test]
fn an_engine_config_error_names_the_field() {
    let dir = test_dir();
    let out = corewal()
        .args([
            "load",
            "--records",
            "10",
            "--commit-bytes-max",
            "128MiB",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("commit_bytes_max"));
    let out = corewal()
        .args([
            "load",
            "--records",
            "10",
            "--wal-bytes-max",
            "1MiB",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    failed_with(&out, "wal_bytes_max", &"a limit below four segments");
}

#[test]
fn load_json_is_one_parseable_object_with_measured_figures() {
    let dir = test_dir();
    let out = corewal()
        .args([
            "load",
            "--records",
            "2000",
            "--writers",
            "4",
            "--channels",
            "8",
            "--segment-bytes",
            "4MiB",
            "--json",
            "--dir",
        ])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    let v = json_ok(&out);
    let records = v["records"].as_u64().unwrap();
    assert_eq!(records, 2000);
    assert!(v["records_per_s"].as_f64().unwrap() > 0.0);
    let p50 = v["lat_ns"]["percentile"]["50.000000"].as_u64().unwrap();
    let p99 = v["lat_ns"]["percentile"]["99.000000"].as_u64().unwrap();
    assert!(p50 > 0 && p50 <= p99 && p99 <= v["lat_ns"]["max"].as_u64().unwrap());
    assert!(v["records_per_commit_mean"].as_f64().unwrap() >= 1.0);
    assert!(v["device_bytes_per_payload_byte"].as_f64().unwrap() > 1.0);
    assert!(v["host"]["kernel"].as_str().is_some());
    // The directory was given: it is kept, and holds a store.
    assert!(dir.path().join("store/corewal.meta").exists());
    assert!(
        v.get("subscriptions").is_none(),
        "no --subscribers, no figures"
    );
}

#[test]
fn load_with_subscribers_reports_what_they_were_delivered() {
    let out = corewal()
        .args([
            "load",
            "--json",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--writers",
            "4",
            "--channels",
            "4",
            "--subscribers",
            "3",
            "--segment-bytes",
            "4MiB",
        ])
        .output()
        .unwrap();
    let v = json_ok(&out);
    let s = &v["subscriptions"];
    assert_eq!(s["subscribers"].as_u64(), Some(3), "{s}");
    let delivered = s["delivered_records_per_s"].as_f64().unwrap();
    let written = v["records_per_s"].as_f64().unwrap();
    // Three of the four channels are followed, each by one subscriber that
    // keeps up: about three quarters of the records, within the window's edges.
    assert!(
        delivered > 0.5 * written && delivered < 0.9 * written,
        "{delivered} delivered of {written} written: {s}"
    );
    let (p50, p99) = (
        s["lag_ns_p50"].as_u64().unwrap(),
        s["lag_ns_p99"].as_u64().unwrap(),
    );
    assert!(p50 <= p99, "{s}");
    assert_eq!(s["unmatched"].as_u64(), Some(0), "{s}");
    assert_eq!(s["fell_back_to_wal"].as_u64(), Some(0), "{s}");
}

#[test]
fn help_documents_every_flag_with_its_default() {
    let out = corewal().args(["load", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--writers",
        "--channels",
        "--record-bytes",
        "--duration",
        "--records",
        "--dir",
        "--keep",
        "--json",
        "--rate",
        "--preset",
        "--hdr-log",
        "--seed",
        "--warmup",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("[default: 16, or the preset's]"));
    assert!(help.contains("[default: 1s]"));
    for tool in ["inspect", "verify", "compare", "recover-bench"] {
        let out = corewal().args([tool, "--help"]).output().unwrap();
        assert!(out.status.success(), "{tool} --help");
    }
}

#[test]
fn open_loop_preset_range_hdr_log_and_compare() {
    let dir = test_dir();
    let log = dir.path().join("lat.hlog");
    let run = |extra: &[&str], store: &str| {
        let out = corewal()
            .args(["load", "--json", "--duration", "500ms", "--warmup", "200ms"])
            .args(["--segment-bytes", "4MiB", "--dir"])
            .arg(dir.path().join(store))
            .args(extra)
            .output()
            .unwrap();
        let v = json_ok(&out);
        (v, out.stdout)
    };
    let (open, open_json) = run(
        &[
            "--preset",
            "batched",
            "--rate",
            "200",
            "--record-bytes",
            "100-3000",
            "--hdr-log",
            log.to_str().unwrap(),
        ],
        "a",
    );
    assert_eq!(open["mode"], "open-loop");
    assert_eq!(open["rate_target"].as_f64(), Some(200.0));
    // The preset's values, with --record-bytes overriding its record size.
    assert_eq!(open["writers"].as_u64(), Some(4));
    assert_eq!(open["channels"].as_u64(), Some(64));
    assert_eq!(open["batch"].as_u64(), Some(16));
    assert_eq!(open["record_bytes_min"].as_u64(), Some(100));
    assert_eq!(open["record_bytes_max"].as_u64(), Some(3000));
    // About 100 appends in 0.5 s at 200/s; each of 16 records of 100..=3000 B.
    let appends = open["appends"].as_f64().unwrap();
    assert!((50.0..=150.0).contains(&appends), "{appends}");
    assert_eq!(open["records"].as_f64().unwrap(), appends * 16.0);
    let mb =
        open["payload_mb_per_s"].as_f64().unwrap() * 1e6 * open["measured_s"].as_f64().unwrap();
    let per_record = mb / open["records"].as_f64().unwrap();
    assert!((100.0..=3000.0).contains(&per_record), "{per_record}");
    assert!(open["schedule_lag_end_ns"].is_u64());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("#corewal load"), "{text}");
    assert!(text.lines().any(|l| l.contains(",HIST")), "{text}");

    let (closed, closed_json) = run(&["--preset", "batched"], "b");
    assert_eq!(closed["mode"], "closed-loop");
    assert!(closed["rate_target"].is_null());
    let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
    std::fs::write(&a, open_json).unwrap();
    std::fs::write(&b, closed_json).unwrap();
    let out = corewal().arg("compare").arg(&a).arg(&b).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("differs: mode"), "{text}");
    assert!(text.contains("latency p99"), "{text}");
    assert!(text.contains("B/A"), "{text}");
}

/// Writes a small two-shard store with `corewal load` into `dir/store`.
fn small_store(dir: &std::path::Path) -> std::path::PathBuf {
    let store = dir.join("store");
    let out = corewal()
        .args([
            "load",
            "--records",
            "600",
            "--writers",
            "2",
            "--channels",
            "4",
            "--shards",
            "2",
            "--segment-bytes",
            "4MiB",
            "--dir",
        ])
        .arg(&store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    store
}

/// Flips one bit in the payload of the fifth commit of shard 0's first segment.
fn damage_store(store: &std::path::Path) -> (u64, usize) {
    let seg = store.join("shard-000/0000000000000001.wal");
    let mut d = std::fs::read(&seg).unwrap();
    let block = 4096;
    // The fifth commit is an append commit (channels registered first).
    let pos = 8 * block;
    assert_ne!(&d[pos..pos + 4], &[0; 4], "a commit at byte {pos}");
    d[pos + 100] ^= 1;
    std::fs::write(&seg, d).unwrap();
    (1, pos)
}

#[test]
fn verify_passes_a_sound_store_and_fails_a_damaged_one_naming_the_place() {
    let dir = test_dir();
    let store = small_store(dir.path());
    let out = corewal().arg("verify").arg(&store).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("sound"), "{text}");

    let (segment, pos) = damage_store(&store);
    let out = corewal()
        .args(["verify", "--json"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sound"], false);
    let damage = &v["shard_reports"][0]["damage"][0];
    assert_eq!(damage["segment"].as_u64(), Some(segment));
    assert_eq!(damage["position"].as_u64(), Some(pos as u64));
    assert_eq!(damage["kind"], "damage");
    assert!(v["shard_reports"][1]["damage"]
        .as_array()
        .unwrap()
        .is_empty());
    // Verify changed nothing: it fails the same way again.
    let again = corewal().arg("verify").arg(&store).output().unwrap();
    assert_eq!(again.status.code(), Some(1));

    let missing = corewal()
        .arg("verify")
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not a corewal data directory"));
}

#[test]
fn load_checkpoints_what_it_wrote_and_inspect_shows_the_first_offsets() {
    let dir = test_dir();
    let store = dir.path().join("store");
    let out = corewal()
        .args([
            "load",
            "--records",
            "800",
            "--writers",
            "2",
            "--channels",
            "4",
            "--checkpoint-every",
            "50",
            "--segment-bytes",
            "4MiB",
            "--json",
            "--dir",
        ])
        .arg(&store)
        .output()
        .unwrap();
    let v = json_ok(&out);
    assert_eq!(v["checkpoint_every"].as_u64(), Some(50));
    let checkpoints = v["checkpoints"].as_u64().unwrap();
    let out = corewal()
        .args(["inspect", "--json", "--channels-max", "0"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut seen = 0;
    let mut live = 0;
    for s in v["shard_reports"].as_array().unwrap() {
        for c in s["channel_list"].as_array().unwrap() {
            let (first, next) = (
                c["first_offset"].as_u64().unwrap(),
                c["next_offset"].as_u64().unwrap(),
            );
            // Each channel has one writer: it checkpointed after each 50th record.
            assert_eq!(first, next / 50 * 50, "{c}");
            assert_eq!(c["records"].as_u64().unwrap(), next - first, "{c}");
            seen += next / 50;
            live += next - first;
        }
        assert_eq!(
            s["records"].as_u64().unwrap(),
            s["channel_list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["records"].as_u64().unwrap())
                .sum::<u64>()
        );
    }
    assert_eq!(seen, checkpoints);
    assert!(
        live < 800 && checkpoints >= 12,
        "{checkpoints} checkpoints, {live} live"
    );
    let out = corewal()
        .args(["inspect", "--dump", "--json"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success());
    let logged = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["type"] == "entry" && l["kind"] == "checkpoint")
        .count() as u64;
    assert_eq!(logged, checkpoints);
}

#[test]
fn inspect_summarises_and_dumps_as_parseable_json() {
    let dir = test_dir();
    let store = small_store(dir.path());
    let out = corewal()
        .args(["inspect", "--json", "--channels-max", "0"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let shards = v["shard_reports"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    let records: u64 = shards.iter().map(|s| s["records"].as_u64().unwrap()).sum();
    assert_eq!(records, 600);
    let channels: usize = shards
        .iter()
        .map(|s| s["channel_list"].as_array().unwrap().len())
        .sum();
    assert_eq!(channels, 4);

    let (_, pos) = damage_store(&store);
    let out = corewal()
        .args(["inspect", "--dump", "--json", "--hex", "--shard", "0"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let appends = lines
        .iter()
        .filter(|l| l["type"] == "entry" && l["kind"] == "append")
        .count();
    assert!(appends > 0);
    let damage: Vec<_> = lines.iter().filter(|l| l["type"] == "damage").collect();
    assert_eq!(damage.len(), 1, "{damage:?}");
    assert_eq!(damage[0]["position"].as_u64(), Some(pos as u64));

    for (args, message) in [
        (
            &["inspect", "--shard", "7"][..],
            "the directory has shards 0..2",
        ),
        (
            &["inspect", "--segment", "1"][..],
            "--segment applies to --dump only",
        ),
    ] {
        let out = corewal().args(args).arg(&store).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(message),
            "{args:?}"
        );
    }
}

#[test]
fn probe_measures_and_reports_json_and_refuses_bad_input() {
    let dir = test_dir();
    let out = corewal()
        .args([
            "probe",
            "--json",
            "--file-bytes",
            "16MiB",
            "--sync-test",
            "200ms",
            "--queue-depths",
            "1,2",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let v = json_ok(&out);
    assert!(v["dsync_write_4k"]["ops_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["write_then_fdatasync_4k"]["ops"].as_u64().unwrap() > 0);
    assert_eq!(v["seq_read_1m"].as_array().unwrap().len(), 2);
    assert!(v["seq_write_1m"][1]["mb_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["block_bytes"].as_u64().unwrap() >= 4096);
    // The scratch file is gone.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    for (args, message) in [
        (&["probe", "--queue-depths", "0"][..], "queue_depths"),
        (&["probe", "--file-bytes", "1MiB"][..], "file_bytes"),
    ] {
        let out = corewal().args(args).arg(dir.path()).output().unwrap();
        failed_with(&out, message, &args);
    }
    let out = corewal()
        .arg("probe")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory"));
}

#[test]
fn recover_bench_reports_parseable_figures_and_refuses_bad_input() {
    let dir = test_dir();
    let out = corewal()
        .args([
            "recover-bench",
            "--bytes",
            "8MiB",
            "--channels",
            "20",
            "--record-bytes",
            "1024",
            "--shards",
            "2",
            "--no-drop-caches",
            "--json",
            "--keep",
            "--dir",
        ])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    let v = json_ok(&out);
    assert_eq!(v["tool"], "corewal recover-bench");
    assert_eq!(v["page_cache_dropped"], false);
    let r = &v["reopen"];
    assert_eq!(r["shards"].as_u64(), Some(2));
    assert_eq!(r["channels_found"].as_u64(), Some(20));
    assert_eq!(r["registrations"].as_u64(), Some(20));
    // After the writer's clean close: both shards open from their index
    // snapshots and read no log.
    assert_eq!(r["snapshots_used"].as_u64(), Some(2));
    assert_eq!(r["replayed_bytes"].as_u64(), Some(0));
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 0);
    // The same store replayed whole.
    let out = corewal()
        .args([
            "recover-bench",
            "--reuse",
            "--no-snapshots",
            "--channels",
            "20",
            "--no-drop-caches",
            "--json",
            "--dir",
        ])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    let v = json_ok(&out);
    let r = &v["reopen"];
    assert_eq!(r["snapshots_used"].as_u64(), Some(0));
    assert_eq!(r["channels_found"].as_u64(), Some(20));
    assert!(r["replayed_bytes"].as_u64().unwrap() >= 8 << 20);
    assert!(r["replay_gb_per_s"].as_f64().unwrap() > 0.0);
    // The ratio is there exactly when fio was.
    assert_eq!(
        v["fio_read_gb_per_s"].is_null(),
        v["replay_to_fio_ratio"].is_null()
    );

    for (args, message) in [
        (
            &["recover-bench", "--channels", "0"][..],
            "--channels must be",
        ),
        (
            &["recover-bench", "--bytes", "100", "--record-bytes", "1024"][..],
            "--bytes must hold",
        ),
        (&["recover-bench", "--reuse"][..], "--reuse needs --dir"),
    ] {
        let out = corewal().args(args).output().unwrap();
        failed_with(&out, message, &args);
    }
}

#[test]
fn inspect_dump_names_an_oversized_segment_without_reading_it() {
    let dir = test_dir();
    let store = small_store(dir.path());
    // A sparse file far larger than any segment corewal writes, named like
    // one: the dump must say so, not read 2 GiB into memory.
    let huge = store.join("shard-000/00000000000000f0.wal");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let out = corewal()
        .args(["inspect", "--dump", "--shard", "0"])
        .arg(&store)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("segment 240"))
        .unwrap_or_else(|| panic!("the oversized segment is not named: {text}"));
    assert!(line.contains("larger than"), "{line}");
}

#[test]
fn a_reclaiming_load_reports_each_interval_plots_it_and_inspect_shows_segment_states() {
    let dir = test_dir();
    let store = dir.path().join("store");
    let report = dir.path().join("run.jsonl");
    // One shard, 1 MiB segments, a 4 MiB limit: 2,400 records of 4 KiB are
    // more than twice the limit, checkpointed every 100.
    let out = corewal()
        .args([
            "load",
            "--shards",
            "1",
            "--records",
            "2400",
            "--writers",
            "2",
            "--channels",
            "2",
            "--record-bytes",
            "4KiB",
            "--checkpoint-every",
            "100",
            "--segment-bytes",
            "1MiB",
            "--commit-bytes-max",
            "256KiB",
            "--wal-bytes-max",
            "4MiB",
            "--interval",
            "50ms",
            "--json",
            "--keep",
            "--report-file",
        ])
        .arg(&report)
        .arg("--dir")
        .arg(&store)
        .output()
        .unwrap();
    let v = json_ok(&out);
    assert_eq!(v["wal_bytes_max"].as_u64(), Some(4 << 20));
    assert!(v["wal_bytes_peak"].as_u64().unwrap() <= 4 << 20, "{v}");
    assert!(v["segments_reclaimed"].as_u64().unwrap() >= 4, "{v}");
    assert!(v["segments_recycled"].as_u64().unwrap() >= 2, "{v}");
    assert!(v["rss_bytes_peak"].as_u64().unwrap() > 0);
    // Interval lines on stderr although it is not a terminal.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WAL") && stderr.contains("RSS"), "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l["wal_bytes"].as_u64().unwrap() <= 4 << 20, "{l}");
        assert!(l["t_s"].as_f64().unwrap() > 0.0 && l["rss_bytes"].as_u64().unwrap() > 0);
    }
    let svg = dir.path().join("run.svg");
    let out = corewal()
        .arg("plot")
        .arg(&report)
        .arg(&report)
        .arg("--out")
        .arg(&svg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains("WAL bytes on disk"));
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"t_s\": 1}\n").unwrap();
    let out = corewal()
        .arg("plot")
        .arg(&bad)
        .arg("--out")
        .arg(&svg)
        .output()
        .unwrap();
    failed_with(
        &out,
        "bad.jsonl line 1: not an interval",
        &"plot of a bad report",
    );

    let out = corewal()
        .args(["inspect", "--json", "--channels-max", "0"])
        .arg(&store)
        .output()
        .unwrap();
    let v = json_ok(&out);
    let shard = &v["shard_reports"][0];
    assert!(shard["log_start"].as_u64().unwrap() > 1, "{shard}");
    let segments = shard["segments"].as_array().unwrap();
    assert!(segments.len() <= 4, "{shard}");
    assert!(
        segments.iter().any(|g| g["recycled_from"].is_u64()),
        "{shard}"
    );
    for g in segments {
        let state = g["state"].as_str().unwrap();
        assert!(
            ["live", "reclaimable", "kept", "reclaimed"].contains(&state),
            "{g}"
        );
        if state == "live" {
            assert!(g["seq"].as_u64() >= shard["log_start"].as_u64(), "{g}");
        }
    }
    for c in shard["channel_list"].as_array().unwrap() {
        let first = c["first_offset"].as_u64().unwrap();
        assert_eq!(first % 100, 0, "{c}");
    }
    // The dump names what a recycled segment's earlier life left, as such.
    let out = corewal()
        .args(["inspect", "--dump", "--json"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dump = String::from_utf8_lossy(&out.stdout);
    assert!(dump.contains("\"earlier_life\""), "no earlier life named");
    assert!(
        !dump.contains("\"damage\""),
        "a recycled segment read as damaged"
    );
}
