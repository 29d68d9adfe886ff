//! The whole FastVLM pipeline against transformers' `FastVlmForConditionalGeneration`
//! (tests/scripts/make_pipeline_fixture.py): a tiny model with random weights, converted
//! here from transformers' `fast_vlm` layout, given the fixture's 61 x 47 PNG as an RGB888
//! frame (pad, PIL-exact bicubic, encoder, projector, splice, prefill, greedy decode).
//!
//! - last-position logits within 1e-3 x max|reference| (the bound; f32 weights and
//!   an f32 KV cache land near 1e-6, so the bound only catches real errors, such as an
//!   embedding row in the wrong position, which moves the logits by ~0.2 x max);
//! - the 16 greedy tokens identical, through the id-level call with transformers' expanded
//!   `<image>` ids, with Apple's single placeholder, and through `ask` with the chat
//!   template and the image's own tokenizer;
//! - the same with an f16 KV cache (looser logits bound, same tokens);
//! - `glimpse logits --image` and `--pixels` write the same logits.

mod pipeline_common;

use glimpse_core::Model;
use glimpse_core::decoder::KvFormat;
use glimpse_core::planner::PlanOptions;
use glimpse_core::preprocess::{preprocess, scratch_bytes};
use glimpse_core::session::{
    IMAGE_SENTINEL, ImageInput, LogitsOut, Prompt, Session, SessionOptions,
};
use glimpse_tools::logits::LogitsArgs;
use glimpse_tools::plan::KvArg;
use glimpse_tools::run::{HostClock, arena_for};
use glimpse_tools::{KeepArg, QuantArg, npy};
use pipeline_common::*;

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

use glimpse_tests::max_abs_diff;

/// A session on `image` with `opts` in an arena of exactly its plan.
fn with_session<R>(
    image: &Model<'_>,
    opts: SessionOptions,
    f: impl FnOnce(&mut Session<'_, '_, HostClock>) -> R,
) -> R {
    let plan = glimpse_core::planner::ArenaPlan::new(image, &opts.plan).expect("plan");
    let mut arena = arena_for(&plan);
    let mut s = Session::new(image, &mut arena, HostClock::new(), opts).expect("session");
    f(&mut s)
}

fn opts(kv: KvFormat, max_new: usize) -> SessionOptions {
    let mut o = greedy(max_new);
    o.plan = PlanOptions {
        kv,
        max_context: 128,
        ..PlanOptions::default()
    };
    o
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    let exp = expected();
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let pic = picture();
    let reference = reference_logits();
    let scale = max_abs(&reference);
    let input_ids = ids(&exp["input_ids"]);
    let greedy_ref = ids(&exp["greedy"]);
    let image_id = exp["image_token_id"].as_u64().unwrap() as u32;
    let tokens = exp["image_tokens"].as_u64().unwrap() as usize;
    assert_eq!(input_ids.iter().filter(|&&t| t == image_id).count(), tokens);
    assert_eq!(
        image.config().decoder.as_ref().unwrap().image_token_id,
        Some(image_id)
    );
    // Apple's form of the same prompt: one placeholder where the nine ids are.
    let first = input_ids.iter().position(|&t| t == image_id).unwrap();
    let mut single = input_ids[..first].to_vec();
    single.push(image_id);
    single.extend_from_slice(&input_ids[first + tokens..]);

    for (kv, bound) in [
        // f32 end to end: only summation order and libm differ from PyTorch.
        (KvFormat::F32, 1e-3),
        // f16 keys/values: 2^-11 relative per cached value over two layers (see the
        // decoder's f16 unit test); 4e-3 x max is still far below a misplaced row's ~0.2.
        (KvFormat::F16, 4e-3),
    ] {
        let frame = pic.frame();
        let (expanded, apple) = with_session(&image, opts(kv, 16), |s| {
            let mut a = vec![0f32; reference.len()];
            let r = s
                .logits(
                    &input_ids,
                    Some(ImageInput::Frame(frame)),
                    LogitsOut::Last(&mut a),
                )
                .unwrap();
            assert_eq!(
                (r.image_tokens, r.prompt_positions),
                (tokens, input_ids.len())
            );
            let mut b = vec![0f32; reference.len()];
            let r = s
                .logits(
                    &single,
                    Some(ImageInput::Frame(frame)),
                    LogitsOut::Last(&mut b),
                )
                .unwrap();
            assert_eq!(r.prompt_positions, input_ids.len());
            (a, b)
        });
        let err = max_abs_diff(&expanded, &reference);
        eprintln!("{kv:?}: max |Δ| {err:.3e}, max |ref| {scale:.3}");
        assert!(
            err <= bound * scale,
            "{kv:?}: max |Δ| {err} > {bound} x {scale}"
        );
        // The same positions and embeddings either way, run in the same chunks.
        assert_eq!(
            expanded, apple,
            "{kv:?}: expanded and single placeholder differ"
        );

        // 16 greedy tokens, three ways.
        let (by_ids, by_single, by_ask, history) = with_session(&image, opts(kv, 16), |s| {
            let mut a = VecSink::default();
            let r = s
                .run(
                    Prompt::Ids(&input_ids),
                    Some(ImageInput::Frame(frame)),
                    &mut a,
                )
                .unwrap();
            assert_eq!((r.generated, r.stopped, r.decode_steps), (16, false, 15));
            assert_eq!(a.finished, 1);
            let mut b = VecSink::default();
            s.run(Prompt::Ids(&single), Some(ImageInput::Frame(frame)), &mut b)
                .unwrap();
            let mut c = VecSink::default();
            let r = s
                .run(
                    Prompt::chat(exp["question"].as_str().unwrap()),
                    Some(ImageInput::Frame(frame)),
                    &mut c,
                )
                .unwrap();
            assert_eq!(r.prompt_positions, input_ids.len());
            assert_eq!(r.prompt_ids, single.len());
            (a.tokens, b.tokens, c.tokens, s.history().to_vec())
        });
        assert_eq!(by_ids, greedy_ref, "{kv:?}: greedy tokens (expanded ids)");
        assert_eq!(
            by_single, greedy_ref,
            "{kv:?}: greedy tokens (one placeholder)"
        );
        assert_eq!(by_ask, greedy_ref, "{kv:?}: greedy tokens (ask)");
        // `ask` tokenized the rendered template exactly as the reference's tokenizer did,
        // with the sentinel where the image went, then appended the generated ids.
        let mut want = single.clone();
        want[first] = IMAGE_SENTINEL;
        want.extend_from_slice(&greedy_ref);
        assert_eq!(history, want, "{kv:?}: ask's prompt ids");
    }
}

#[test]
fn pixels_and_frames_agree_and_the_cli_writes_the_reference() {
    let exp = expected();
    let bytes = converted(QuantArg::F32, KeepArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let pic = picture();
    let reference = reference_logits();
    let input_ids = ids(&exp["input_ids"]);
    let r = exp["resolution"].as_u64().unwrap() as usize;

    // The core's preprocessing of the PNG, fed as pixels, gives the frame's result.
    let mut pixels = vec![0f32; 3 * r * r];
    let mut scratch = vec![0u8; scratch_bytes(pic.width, pic.height, r)];
    preprocess(&pic.frame(), r, 4096, &mut pixels, &mut scratch).unwrap();
    let (from_frame, from_pixels) = with_session(&image, opts(KvFormat::F32, 0), |s| {
        let mut a = vec![0f32; reference.len()];
        s.logits(
            &input_ids,
            Some(ImageInput::Frame(pic.frame())),
            LogitsOut::Last(&mut a),
        )
        .unwrap();
        let mut b = vec![0f32; reference.len()];
        s.logits(
            &input_ids,
            Some(ImageInput::Pixels(&pixels)),
            LogitsOut::Last(&mut b),
        )
        .unwrap();
        (a, b)
    });
    assert_eq!(from_frame, from_pixels);

    // `glimpse logits` with --image (all positions) and --pixels (last only).
    let tmp = tempfile::tempdir().unwrap();
    let glim = tmp.path().join("p.glim");
    std::fs::write(&glim, bytes.as_slice()).unwrap();
    let npy_px = tmp.path().join("px.npy");
    npy::write_f32(&npy_px, &[3, r, r], &pixels).unwrap();
    let args = |out: &str, last: bool, pixels: bool| LogitsArgs {
        image: glim.clone(),
        tokens: input_ids.iter().map(|&t| i64::from(t)).collect(),
        output: tmp.path().join(out),
        last,
        chunk: 16,
        pixels: pixels.then(|| npy_px.clone()),
        picture: (!pixels).then(|| fixture_dir().join("image.png")),
        image_size: None,
        kv: KvArg::F32,
        activations: Default::default(),
    };
    glimpse_tools::logits::run(&args("all.npy", false, false)).unwrap();
    let (shape, all) = npy::read_f32(&tmp.path().join("all.npy")).unwrap();
    assert_eq!(shape, vec![input_ids.len(), reference.len()]);
    let last_row = &all[(input_ids.len() - 1) * reference.len()..];
    // A different prefill chunk (16) than the sessions above (64): same math per row.
    assert!(max_abs_diff(last_row, &from_frame) <= 1e-5 * max_abs(&reference));
    glimpse_tools::logits::run(&args("last.npy", true, true)).unwrap();
    let (shape, last) = npy::read_f32(&tmp.path().join("last.npy")).unwrap();
    assert_eq!(shape, vec![1, reference.len()]);
    assert!(max_abs_diff(&last, &reference) <= 1e-3 * max_abs(&reference));
}
