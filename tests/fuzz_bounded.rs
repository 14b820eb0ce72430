//! Bounded versions of the fuzz targets in `fuzz/`, run by every
//! `cargo test`: property tests over the segment decoder and over recovery
//! of a whole damaged directory, in every tolerant `RecoveryMode`.
//! `PROPTEST_CASES=N` runs more cases; the libFuzzer targets run for as long
//! as asked (see docs/RELIABILITY.md).

mod common;

use std::sync::OnceLock;

use common::image::{build, check, decode_segment_bytes, seal_checksums, Image, Mutation};
use common::test_dir;
use corewal::RecoveryMode;
use proptest::prelude::*;

fn image() -> &'static Image {
    static IMAGE: OnceLock<(tempfile::TempDir, Image)> = OnceLock::new();
    &IMAGE
        .get_or_init(|| {
            let dir = test_dir();
            let image = build(dir.path());
            (dir, image)
        })
        .1
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let file = 0usize..64;
    prop_oneof![
        4 => (file.clone(), any::<u64>()).prop_map(|(file, bit)| Mutation::FlipBit { file, bit }),
        2 => (file.clone(), any::<u64>(), 1u64..20_000)
            .prop_map(|(file, at, len)| Mutation::Zero { file, at, len }),
        2 => (file.clone(), any::<u64>(), any::<u64>(), 1u64..20_000)
            .prop_map(|(file, from, to, len)| Mutation::Copy { file, from, to, len }),
        2 => (file.clone(), any::<u64>()).prop_map(|(file, len)| Mutation::Truncate { file, len }),
        1 => file.prop_map(|file| Mutation::Remove { file }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_decoder_survives_any_bytes(mut data in proptest::collection::vec(any::<u8>(), 0..12_288)) {
        decode_segment_bytes(&data, 4096);
        decode_segment_bytes(&data, 512);
        // And past the checksums, into the field checks.
        seal_checksums(&mut data);
        decode_segment_bytes(&data, 4096);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn recovery_of_a_damaged_directory_never_invents_a_record(
        mutations in proptest::collection::vec(mutation(), 1..4),
        mode in prop_oneof![
            Just(RecoveryMode::TolerateTornTail),
            Just(RecoveryMode::KeepPrefix),
            Just(RecoveryMode::SkipDamaged),
        ],
    ) {
        let scratch = test_dir();
        check(image(), &mutations, mode, scratch.path());
    }
}

#[test]
fn the_undamaged_image_recovers_whole_in_every_mode() {
    for mode in [
        RecoveryMode::TolerateTornTail,
        RecoveryMode::FailOnAnyDamage,
        RecoveryMode::KeepPrefix,
        RecoveryMode::SkipDamaged,
    ] {
        let scratch = test_dir();
        check(image(), &[], mode, scratch.path());
    }
    // The decoder finds every commit of the real segments.
    let decoded: usize = image()
        .files
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "wal"))
        .map(|(_, d)| decode_segment_bytes(d, 4096))
        .sum();
    let written: usize = image().records.values().map(|r| r.len()).sum();
    assert!(
        decoded >= written,
        "{decoded} entries decoded, {written} records written"
    );
}
