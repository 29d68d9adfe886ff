//! Arbitrary bytes into the weights-image reader: parse, walk, verify. Only errors may
//! come out; a panic or an out-of-bounds view is a bug.
#![no_main]

use glimpse_core::image::Model;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (buf, start) = glimpse_fuzz::aligned_copy(data);
    let _ = glimpse_fuzz::exercise(&buf[start..start + data.len()]);

    // The same bytes off the 16-byte boundary are refused before anything is read.
    let mut shifted = vec![0u8; data.len() + 17];
    let s = shifted.as_ptr().align_offset(16).min(16) + 1;
    shifted[s..s + data.len()].copy_from_slice(data);
    assert!(Model::parse(&shifted[s..s + data.len()]).is_err());
});
