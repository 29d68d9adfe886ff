//! `glimpse encode` end to end on a golden fixture (convert, then encode `--pixels` to
//! .npy at both stages), and the encoder's refusals: wrong pixel counts, resolutions,
//! output lengths and array shapes are clear errors, not panics or garbage.

mod vision_common;

use std::path::Path;

use glimpse_core::arena::Arena;
use glimpse_core::vision::VisionEncoder;
use glimpse_core::{Error, Model};
use glimpse_tools::convert::Options;
use glimpse_tools::encode::run;
use glimpse_tools::{EncodeArgs, EncodeStage, KeepArg, QuantArg, npy};
use vision_common::*;

const CONFIG: &str = "four_stage_160";

fn convert_to(dir: &Path, out: &Path) {
    glimpse_tests::convert_file(&Options::new(
        dir.to_path_buf(),
        out.to_path_buf(),
        QuantArg::F32,
    ));
}

fn args(image: &Path, pixels: &Path, stage: EncodeStage, output: &Path) -> EncodeArgs {
    EncodeArgs {
        image: image.to_path_buf(),
        picture: None,
        pixels: Some(pixels.to_path_buf()),
        stage,
        resolution: None,
        output: output.to_path_buf(),
    }
}

#[test]
fn encode_command_writes_the_reference_features() {
    let dir = fixture_dir(CONFIG);
    let tmp = tempfile::tempdir().unwrap();
    let glim = tmp.path().join("m.glim");
    convert_to(&dir, &glim);
    let pixels = dir.join("input.npy");

    for (stage, file) in [
        (EncodeStage::Encoder, "encoder.npy"),
        (EncodeStage::Projector, "projector.npy"),
    ] {
        let out = tmp.path().join(file);
        run(&args(&glim, &pixels, stage, &out)).unwrap();
        let (shape, got) = npy::read_f32(&out).unwrap();
        let (want_shape, want) = load(&dir, file);
        assert_eq!(shape, want_shape, "{file}");
        // Same bound as the f32 golden test (see vision_golden.rs).
        let cos = cosine(&got, &want);
        let rel = max_abs_diff(&got, &want) / max_abs(&want);
        assert!(cos >= 0.99999 && rel <= 1e-4, "{file}: cos {cos} rel {rel}");
    }

    // A channels-last array, a non-square one and a resolution the stride does not
    // divide are refused with messages that say what was expected.
    let (shape, px) = load(&dir, "input.npy");
    let r = shape[1];
    let bad = tmp.path().join("bad.npy");
    let out = tmp.path().join("o.npy");
    npy::write_f32(&bad, &[r, r, 3], &px).unwrap();
    let e = format!(
        "{:#}",
        run(&args(&glim, &bad, EncodeStage::Encoder, &out)).unwrap_err()
    );
    assert!(e.contains("expected [3, R, R]"), "{e}");
    npy::write_f32(&bad, &[3, r / 2, r * 2], &px).unwrap();
    assert!(run(&args(&glim, &bad, EncodeStage::Encoder, &out)).is_err());
    let odd = r - 16;
    npy::write_f32(&bad, &[3, odd, odd], &px[..3 * odd * odd]).unwrap();
    let e = format!(
        "{:#}",
        run(&args(&glim, &bad, EncodeStage::Encoder, &out)).unwrap_err()
    );
    assert!(e.contains("multiple of the encoder stride"), "{e}");
    let mut a = args(&glim, &pixels, EncodeStage::Encoder, &out);
    a.resolution = Some(r as u32 * 2);
    let e = format!("{:#}", run(&a).unwrap_err());
    assert!(e.contains("--resolution"), "{e}");
}

#[test]
fn encoder_refuses_bad_arguments_before_running() {
    let dir = fixture_dir(CONFIG);
    let bytes = convert_fixture(&dir, QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let enc = VisionEncoder::new(&image).unwrap();
    let res = 160;
    let plan = enc.plan(res).unwrap();
    let mut buf = vec![0u8; plan.arena_bytes()];
    let pixels = vec![0.5f32; 3 * res * res];
    let mut out = vec![0f32; plan.tokens * plan.out_dim];

    let mut arena = Arena::new(&mut buf);
    let e = enc
        .encode(&pixels[1..], res, &mut arena, &mut out)
        .unwrap_err();
    assert!(
        matches!(e, Error::Length { expected, .. } if expected == 3 * res * res),
        "{e:?}"
    );
    let e = enc
        .encode(&pixels, res, &mut arena, &mut out[1..])
        .unwrap_err();
    assert!(matches!(e, Error::Length { .. }), "{e:?}");
    // 144 is a multiple of 16 but not of the 32 this four-stage encoder needs.
    let e = enc.encode(&pixels, 144, &mut arena, &mut out).unwrap_err();
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert!(enc.plan(0).is_err());
    assert_eq!(arena.used(), 0);

    // The same arguments, corrected, run.
    enc.encode(&pixels, res, &mut arena, &mut out).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));

    // A resolution other than the native one works too (fewer tokens).
    let small = enc.plan(64).unwrap();
    assert_eq!(small.tokens, 4);
    let mut buf = vec![0u8; small.arena_bytes()];
    let mut out = vec![0f32; small.tokens * small.out_dim];
    enc.encode(
        &pixels[..3 * 64 * 64],
        64,
        &mut Arena::new(&mut buf),
        &mut out,
    )
    .unwrap();
}
