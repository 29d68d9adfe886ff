//! Helpers shared by the vision integration tests: converting a fixture checkpoint,
//! running the encoder with its intermediate taps, and the comparison metrics.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::projector::Projector;
use glimpse_core::vision::{Shape, Tap, VisionEncoder};
use glimpse_tests::AlignedBytes;
use glimpse_tools::convert::Options;
use glimpse_tools::{KeepArg, QuantArg};

/// The golden configs made by tests/scripts/make_vision_fixtures.py.
pub const CONFIGS: [&str; 3] = ["mci3_192", "four_stage_160", "three_stage_96"];

/// `tests/fixtures/vision/<name>`.
pub fn fixture_dir(name: &str) -> PathBuf {
    glimpse_tests::fixtures_dir().join("vision").join(name)
}

/// A float32 fixture array.
pub fn load(dir: &Path, file: &str) -> (Vec<usize>, Vec<f32>) {
    glimpse_tools::npy::read_f32(&dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e:#}", dir.join(file).display()))
}

/// Convert a fixture checkpoint with the given formats; returns the image bytes.
pub fn convert_fixture(dir: &Path, quant: QuantArg, keep: KeepArg) -> AlignedBytes {
    let tmp = tempfile::tempdir().expect("tempdir");
    let opts = Options {
        keep,
        ..Options::new(dir.to_path_buf(), tmp.path().join("model.glim"), quant)
    };
    glimpse_tests::convert_bytes(&opts)
}

/// Everything one encoder run produced.
pub struct Run {
    /// (tap, shape, values) in the order they were reported.
    pub taps: Vec<(Tap, Shape, Vec<f32>)>,
    /// Encoder output, tokens x out_dim.
    pub features: Vec<f32>,
    /// Projector output, tokens x hidden.
    pub projected: Vec<f32>,
    /// What the plan asked for, and what the arena saw at its peak.
    pub arena_bytes: usize,
    pub arena_peak: usize,
}

/// Run encoder and projector on `pixels` in an arena of exactly the planned size.
pub fn run(image: &Model, pixels: &[f32], resolution: usize) -> Run {
    let enc = VisionEncoder::new(image).expect("vision encoder");
    let proj = Projector::new(image).expect("projector");
    let plan = enc.plan(resolution).expect("plan");
    let need = plan.arena_bytes().max(proj.arena_bytes(plan.tokens));
    let mut buf = vec![0u8; need];
    let mut arena = Arena::new(&mut buf);
    let mut features = vec![0f32; plan.tokens * plan.out_dim];
    let mut taps = Vec::new();
    enc.encode_observed(
        pixels,
        resolution,
        &mut arena,
        &mut features,
        &mut |t, x, s| taps.push((t, s, x.to_vec())),
    )
    .expect("encode");
    let mut projected = vec![0f32; plan.tokens * proj.out_dim()];
    proj.forward(&features, plan.tokens, &mut arena, &mut projected)
        .expect("project");
    Run {
        taps,
        features,
        projected,
        arena_bytes: need,
        arena_peak: arena.peak(),
    }
}

/// Cosine similarity, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa.sqrt() * bb.sqrt()).max(f64::MIN_POSITIVE)
}

// Each test binary that includes this module uses part of it.
#[allow(unused_imports)]
pub use glimpse_tests::max_abs_diff;

/// Largest |x|.
pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// Fixture file of a tap.
pub fn tap_file(t: Tap) -> String {
    match t {
        Tap::Stem => "stem.npy".into(),
        Tap::Stage(i) => format!("stage{i}.npy"),
        Tap::Head => "encoder.npy".into(),
    }
}
