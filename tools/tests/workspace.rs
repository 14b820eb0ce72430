//! The workspace's `rust-version` is true: every crate inherits the one the
//! workspace states, and it is no older than what any locked dependency
//! needs. (Clippy's `incompatible_msrv` lint, run by CI with `-D warnings`,
//! checks the standard-library items the code uses against the same value.)

use std::process::Command;

/// `1.88` and `1.88.0` alike, as three numbers.
fn version(v: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = v
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("a rust-version of {v:?}"))
        })
        .collect();
    parts.resize(3, 0);
    parts
}

/// The triple of the machine building, from `rustc -vV`.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc -vV names the host")
        .to_string()
}

#[test]
fn every_crate_states_a_rust_version_that_its_dependencies_allow() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Offline, and only the packages this platform builds: a fresh clone
    // has downloaded no other platform's (Windows-only crates, say).
    let host = host_triple();
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    let packages = meta["packages"].as_array().unwrap();
    let mut stated = None;
    let mut needed = (version("0"), String::new());
    for p in packages {
        let name = p["name"].as_str().unwrap();
        let rv = p["rust_version"].as_str();
        if members.contains(&p["id"].as_str().unwrap()) {
            let rv = rv.unwrap_or_else(|| panic!("{name} states no rust-version"));
            assert!(
                stated.is_none_or(|s| s == rv),
                "{name} states rust-version {rv}, another crate {stated:?}"
            );
            stated = Some(rv);
        } else if let Some(rv) = rv {
            if version(rv) > needed.0 {
                needed = (version(rv), format!("{name} {}", p["version"]));
            }
        }
    }
    let stated = stated.expect("workspace members");
    assert!(
        version(stated) >= needed.0,
        "the workspace states rust-version {stated}, but {} needs {:?}",
        needed.1,
        needed.0
    );
}
