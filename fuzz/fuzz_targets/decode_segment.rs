//! Every decoder of the segment format over arbitrary bytes: nothing may
//! panic or read out of bounds. The bounded version runs in `cargo test`
//! (tests/fuzz_bounded.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/image.rs"]
#[allow(dead_code)]
mod image;

fuzz_target!(|data: &[u8]| {
    image::decode_segment_bytes(data, 4096);
    image::decode_segment_bytes(data, 512);
    // And past the checksums, into the field checks.
    let mut sealed = data.to_vec();
    image::seal_checksums(&mut sealed);
    image::decode_segment_bytes(&sealed, 4096);
});
