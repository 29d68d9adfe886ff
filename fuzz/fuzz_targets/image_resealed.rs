//! Like `image_reader`, but the header and metadata checksums are recomputed after the
//! fuzzer's changes, so it explores the structural checks (regions, records, names,
//! payload placement, the config decoder) that a checksum would otherwise shield.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (mut buf, start) = glimpse_fuzz::aligned_copy(data);
    let end = start + data.len();
    glimpse_fuzz::reseal(&mut buf[start..end]);
    let _ = glimpse_fuzz::exercise(&buf[start..end]);
});
