//! The committed include/glimpse.h is exactly what cbindgen makes of src/lib.rs today, so
//! a change to the API cannot land without its header (GLIMPSE_BLESS=1 rewrites it).

use std::path::PathBuf;

#[test]
fn the_committed_header_is_generated_from_the_source() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut fresh = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen could not read src/lib.rs")
        .write(&mut fresh);
    let path = crate_dir.join("include").join("glimpse.h");
    if std::env::var_os("GLIMPSE_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("writing include/glimpse.h");
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "capi/include/glimpse.h differs from what cbindgen generates from capi/src/lib.rs; \
         run `GLIMPSE_BLESS=1 cargo test -p glimpse-capi --test header` and commit it"
    );
}
