//! Without the `flash` feature, `glimpse flash` still exists and says how to get it.

#![cfg(not(feature = "flash"))]

use std::process::Command;

#[test]
fn flash_says_how_to_enable_it() {
    let o = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args([
            "flash",
            "--chip",
            "STM32H743ZITx",
            "--firmware",
            "fw.elf",
            "--dry-run",
        ])
        .output()
        .expect("the glimpse binary runs");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--features flash"), "{err}");

    let o = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["flash", "--help"])
        .output()
        .expect("the glimpse binary runs");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("--weights-addr"));
}
