//! `glimpse logits` end to end: the built binary converts the tiny Qwen2 golden
//! checkpoint (tests/fixtures/decoder, made by tests/scripts/make_decoder_fixture.py) and
//! writes teacher-forced logits as .npy, which must match transformers' f32 logits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use glimpse_tools::npy;

fn glimpse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .expect("the glimpse binary runs")
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "glimpse failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/decoder")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn logits_cli_matches_transformers() {
    let fx = fixtures();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("tokens.json")).unwrap()).unwrap();
    let tokens: Vec<String> = meta["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap().to_string())
        .collect();
    let (shape, want) = npy::read_f32(&fx.join("qwen2_tiny.logits.npy")).unwrap();
    let vocab = shape[1];

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("qwen2.glim");
    ok(glimpse(&[
        "convert",
        s(&fx.join("qwen2_tiny")),
        "-o",
        s(&img),
        "--quant",
        "f32",
        "--quiet",
    ]));

    let all = dir.path().join("all.npy");
    ok(glimpse(&[
        "logits",
        s(&img),
        "--tokens",
        &tokens.join(","),
        "-o",
        s(&all),
    ]));
    let (got_shape, got) = npy::read_f32(&all).unwrap();
    assert_eq!(got_shape, vec![tokens.len(), vocab]);
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    // Same bound and reasoning as tests/tests/decoder_golden.rs: f32 on both sides, only
    // the summation order differs, on logits of magnitude ~30.
    assert!(err <= 1e-3, "max |Δ| {err}");

    // --last: one prefill, the final row only, identical to the last row of the full run
    // (same arithmetic for that row whatever else is in the batch).
    let last = dir.path().join("last.npy");
    ok(glimpse(&[
        "logits",
        s(&img),
        "--tokens",
        &tokens.join(","),
        "-o",
        s(&last),
        "--last",
        "--chunk",
        "5",
    ]));
    let (ls, lv) = npy::read_f32(&last).unwrap();
    assert_eq!(ls, vec![1, vocab]);
    assert_eq!(&lv[..], &got[(tokens.len() - 1) * vocab..]);

    // A token past the vocabulary is a clean error naming it.
    let bad = glimpse(&["logits", s(&img), "--tokens", "1,256", "-o", s(&last)]);
    assert!(!bad.status.success());
    let msg = String::from_utf8_lossy(&bad.stderr);
    assert!(msg.contains("256") && msg.contains("vocabulary"), "{msg}");
}
