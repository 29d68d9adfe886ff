//! The C API from C, built by the system C compiler against the static library: the
//! example in examples/c captions the bundled sample pictures exactly as `glimpse demo`
//! does, and capi/tests/c/misuse.c gets an error code for every misuse glimpse.h
//! promises to catch.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, target_root, tiny_model};

use glimpse_core::Model;
use glimpse_tests::workspace_root;
use glimpse_tools::demo::{Captioner, QUESTION};
use glimpse_tools::run::{Picture, load_picture};

/// Where cargo puts release artifacts for this checkout.
fn release_dir() -> PathBuf {
    target_root().join("release")
}

/// Build the static library once per test run (a no-op when `cargo test --release`
/// already did), for both tests here.
fn build_library() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_library_now).clone()
}

fn build_library_now() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "glimpse-capi"])
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building glimpse-capi failed");
    let lib = release_dir().join("libglimpse_capi.a");
    assert!(lib.is_file(), "{} was not built", lib.display());
    release_dir()
}

fn samples() -> Vec<(String, Picture)> {
    let dir = workspace_root()
        .join("models")
        .join("tiny-fastvlm")
        .join("samples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("samples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let stem = p.file_stem().expect("name").to_string_lossy().into_owned();
            (stem, load_picture(p).expect("sample picture"))
        })
        .collect()
}

fn write_ppm(path: &Path, p: &Picture) {
    let mut bytes = format!("P6\n{} {}\n255\n", p.width, p.height).into_bytes();
    bytes.extend_from_slice(&p.rgb);
    std::fs::write(path, bytes).expect("writing a PPM");
}

#[test]
fn the_c_example_captions_the_samples_like_the_demo() {
    let lib_dir = build_library();
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(tmp.path());
    let samples = samples();
    assert_eq!(
        samples.len(),
        3,
        "models/tiny-fastvlm/samples holds three pictures"
    );

    // What `glimpse demo` says: the same captioner, the same question and token limit.
    let bytes = std::fs::read(&model).expect("model");
    let aligned = glimpse_tests::AlignedBytes::new(&bytes);
    let image = Model::parse(aligned.as_slice()).expect("model parses");
    let side = samples
        .iter()
        .map(|(_, p)| p.width.max(p.height))
        .max()
        .unwrap_or(1);
    let mut captioner = Captioner::new(&image, QUESTION, side, 32).expect("captioner");
    let mut ppms = Vec::new();
    let mut want = Vec::new();
    for (name, pic) in &samples {
        let ppm = tmp.path().join(format!("{name}.ppm"));
        write_ppm(&ppm, pic);
        ppms.push(ppm);
        let c = captioner.caption(pic.frame(), QUESTION).expect("caption");
        want.push(format!("{name}.ppm: {}", c.text));
    }

    let exe = tmp.path().join("caption");
    run(Command::new("make")
        .arg("-C")
        .arg(workspace_root().join("examples").join("c"))
        .arg(format!("LIB_DIR={}", lib_dir.display()))
        .arg(format!("OUT={}", exe.display())));
    for threads in ["1", "2"] {
        let out = run(Command::new(&exe)
            .arg(&model)
            .args(&ppms)
            .args(["-t", threads]));
        let got: Vec<&str> = out.lines().take(samples.len()).collect();
        assert_eq!(got, want, "C example with {threads} thread(s):\n{out}");
        assert!(out.contains("arena "), "{out}");
    }
}

#[test]
fn misuse_from_c_gets_error_codes() {
    let lib_dir = build_library();
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tiny_model(tmp.path());
    let (name, pic) = samples().into_iter().next().expect("a sample");
    let ppm = tmp.path().join(format!("{name}.ppm"));
    write_ppm(&ppm, &pic);
    let exe = tmp.path().join("misuse");
    let root = workspace_root();
    run(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args([
                "-O1",
                "-g",
                "-std=c11",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-DGLIMPSE_HOST",
            ])
            .arg(format!("-I{}", root.join("capi").join("include").display()))
            .arg(root.join("capi").join("tests").join("c").join("misuse.c"))
            .arg(lib_dir.join("libglimpse_capi.a"))
            .args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
                "-o",
            ])
            .arg(&exe),
    );
    let out = run(Command::new(&exe).arg(&model).arg(&ppm));
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("misuse: ") && last.ends_with(" checks passed"),
        "{out}"
    );
    let n: usize = last
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a check count");
    // Every EXPECT/CHECK in misuse.c ran (a count below this means the file lost checks).
    assert!(n >= 80, "only {n} checks ran:\n{out}");
}
