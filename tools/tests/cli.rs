//! The `corewal` command: argument validation and output formats.

use std::process::Command;

fn corewal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_corewal"))
}

fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("corewal-cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let cases: [(&[&str], &str); 6] = [
        (&["load", "--writers", "0"], "--writers must be 1..=4096"),
        (&["load", "--batch", "0"], "--batch must be at least 1"),
        (&["load", "--duration", "10parsecs"], "unknown unit"),
        (&["load", "--segment-bytes", "12XB"], "unknown unit"),
        (
            &["load", "--durability", "maybe"],
            "use sync or periodic:INTERVAL",
        ),
        (&["load", "--records", "0"], "--records must be at least 1"),
    ];
    for (args, message) in cases {
        let out = corewal().args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
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
            "4KiB",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("commit_bytes_max"));
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("[default: 16]"));
}
