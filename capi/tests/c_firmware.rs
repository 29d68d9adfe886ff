//! The C firmware for mps3-an547 (capi/firmware/mps3-an547): built with arm-none-eabi-gcc
//! against the C API's static library for thumbv8m.main-none-eabihf (Helium on), its
//! arena a static array sized by `glimpse plan --emit c`, run in QEMU: each sample's
//! caption and token ids equal the host's (the same greedy tokens `glimpse demo` prints).
//!
//! Needs qemu-system-arm (tests/scripts/install_qemu.sh) and arm-none-eabi-gcc
//! (tests/scripts/install_arm_gcc.sh), which tests/run.sh installs; without them the test
//! skips with a message, unless `GLIMPSE_REQUIRE_QEMU=1` (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, target_root, tiny_model};

use glimpse_core::Model;
use glimpse_tests::{glimpse_bin, workspace_root};
use glimpse_tools::demo::{Captioner, QUESTION};
use glimpse_tools::run::load_picture;

const TARGET: &str = "thumbv8m.main-none-eabihf";

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The cross compiler and the emulator, or a skip (a failure with GLIMPSE_REQUIRE_QEMU=1).
fn tools_present() -> bool {
    let missing: Vec<&str> = ["arm-none-eabi-gcc", "qemu-system-arm"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("GLIMPSE_REQUIRE_QEMU").as_deref() != Ok("1"),
        "{missing:?} missing (GLIMPSE_REQUIRE_QEMU=1); run tests/scripts/install_qemu.sh \
         and tests/scripts/install_arm_gcc.sh"
    );
    eprintln!("skipping: {missing:?} not installed");
    false
}

/// The static library for the Cortex-M55, in its own target directory (its RUSTFLAGS
/// differ from the host build's, so sharing one would rebuild both each time).
fn build_library() -> PathBuf {
    let dir = target_root().join("capi-m55");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "glimpse-capi",
            "--no-default-features",
        ])
        .args([
            "--features",
            "panic-handler",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&dir)
        .env(
            "CARGO_TARGET_THUMBV8M_MAIN_NONE_EABIHF_RUSTFLAGS",
            "-C target-cpu=cortex-m55",
        )
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build");
    assert!(
        status.success(),
        "building glimpse-capi for {TARGET} failed"
    );
    dir.join(TARGET).join("release")
}

/// The blob main.c reads at 0x9F000000: "GFRM", width, height, format, model bytes,
/// pixel bytes, then the RGB888 pixels.
fn frame_blob(path: &Path, width: usize, height: usize, rgb: &[u8], model_len: usize) {
    let mut b = Vec::new();
    for v in [0x4D52_4647, width, height, 0, model_len, rgb.len()] {
        b.extend_from_slice(&u32::try_from(v).expect("fits u32").to_le_bytes());
    }
    b.extend_from_slice(rgb);
    std::fs::write(path, b).expect("writing the frame blob");
}

#[test]
fn c_firmware_in_qemu_captions_like_the_host() {
    if !tools_present() {
        return;
    }
    let lib_dir = build_library();
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(tmp.path());
    let src = workspace_root().join("models").join("tiny-fastvlm");
    let bytes = std::fs::read(&model).expect("model");

    let out_dir = tmp.path().join("build");
    let make = run(Command::new("make")
        .arg("-C")
        .arg(
            workspace_root()
                .join("capi")
                .join("firmware")
                .join("mps3-an547"),
        )
        .arg(format!("MODEL={}", model.display()))
        .arg(format!("GLIMPSE={}", glimpse_bin().display()))
        .arg(format!("LIB_DIR={}", lib_dir.display()))
        .arg(format!("OUT_DIR={}", out_dir.display()))
        .arg(format!("PROMPT={QUESTION}")));
    eprintln!("{make}");
    let elf = out_dir.join("firmware.elf");

    let aligned = glimpse_tests::AlignedBytes::new(&bytes);
    let image = Model::parse(aligned.as_slice()).expect("model parses");
    let mut captioner = Captioner::new(&image, QUESTION, 128, 32).expect("captioner");
    let samples = src.join("samples");
    for name in ["group.png", "relation_pair.png"] {
        let pic = load_picture(&samples.join(name)).expect("sample");
        assert!(
            pic.width.max(pic.height) <= 128,
            "the firmware is built for 128-pixel frames"
        );
        let want = captioner
            .caption(pic.frame(), QUESTION)
            .expect("host caption");
        let blob = tmp.path().join("frame.bin");
        frame_blob(&blob, pic.width, pic.height, &pic.rgb, bytes.len());
        let loader = |file: &Path, addr: u32| {
            format!("loader,file={},addr={addr:#x},force-raw=on", file.display())
        };
        let out = run(Command::new("qemu-system-arm")
            .args(["-M", "mps3-an547", "-nodefaults", "-display", "none"])
            .args([
                "-serial",
                "stdio",
                "-semihosting-config",
                "enable=on,target=native",
            ])
            .args(["-icount", "shift=0", "-kernel"])
            .arg(&elf)
            .arg("-device")
            .arg(loader(&blob, 0x9F00_0000))
            .arg("-device")
            .arg(loader(&model, 0x6000_0000)));
        eprintln!("{name}:\n{out}");
        let line = |prefix: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} line:\n{out}"))
                .to_string()
        };
        assert_eq!(line("text: "), want.text, "{name}");
        let ids: Vec<u32> = line("tokens:")
            .split_whitespace()
            .map(|t| t.parse().expect("a token id"))
            .collect();
        assert_eq!(ids, want.tokens, "{name}");
        assert!(line("stats: ").contains(" instructions"), "{out}");
    }
}
