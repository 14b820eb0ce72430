//! Recovery of a whole data directory after arbitrary damage (bit flips,
//! zeroed and copied ranges, truncated and removed files), in every tolerant
//! `RecoveryMode`: open refuses with a corruption error or opens, and then
//! returns only records written at their offsets. The bounded version runs
//! in `cargo test` (tests/fuzz_bounded.rs).
#![no_main]

use std::sync::OnceLock;

use corewal::RecoveryMode;
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/image.rs"]
#[allow(dead_code)]
mod image;

fn base() -> &'static image::Image {
    static IMAGE: OnceLock<(tempfile::TempDir, image::Image)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let image = image::build(dir.path());
            (dir, image)
        })
        .1
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = match mode % 3 {
        0 => RecoveryMode::TolerateTornTail,
        1 => RecoveryMode::KeepPrefix,
        _ => RecoveryMode::SkipDamaged,
    };
    let mutations = image::Mutation::list_from_bytes(rest);
    let scratch = tempfile::tempdir().unwrap();
    image::check(base(), &mutations, mode, scratch.path());
});
