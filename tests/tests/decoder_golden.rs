//! The decoder against PyTorch: two tiny random checkpoints (Qwen2: tied embeddings,
//! q/k/v biases, θ = 1e6, bf16; Llama: separate lm_head, no biases, θ = 1e5, f16), made
//! by tests/scripts/make_decoder_fixture.py, converted here through the real converter and
//! run teacher-forced; the reference is transformers' f32 logits at every position.

mod decoder_common;

use decoder_common::*;
use glimpse_core::Model;
use glimpse_tools::QuantArg;

fn fixture() -> (std::path::PathBuf, Vec<u32>) {
    let dir = glimpse_tests::fixtures_dir().join("decoder");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokens.json")).unwrap()).unwrap();
    let tokens = meta["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    (dir, tokens)
}

fn reference(dir: &std::path::Path, model: &str) -> (Vec<usize>, Vec<f32>) {
    glimpse_tools::npy::read_f32(&dir.join(format!("{model}.logits.npy"))).unwrap()
}

fn check_f32(model: &str) {
    let (dir, tokens) = fixture();
    let (shape, want) = reference(&dir, model);
    assert_eq!(shape[0], tokens.len());
    let vocab = shape[1];
    let bytes = convert_to_bytes(&dir.join(model), QuantArg::F32);
    let image = Model::parse(bytes.as_slice()).unwrap();

    // Whole sequence in one chunk, and in uneven chunks of 5.
    let all = prefill_all(&image, &tokens, tokens.len());
    let chunked = prefill_all(&image, &tokens, 5);
    let each = decode_each(&image, &tokens);

    let err = max_abs_diff(&all, &want);
    let max_logit = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    println!("{model} f32: max |Δ| vs transformers {err:.3e} (|logits| up to {max_logit:.1})");
    // Same weights, f32 arithmetic on both sides; only summation order differs (our
    // 16-lane dot products vs PyTorch's kernels). Relative f32 rounding ~1e-7 per
    // operation, compounded over two layers and sums of <= 128 terms, on logits of
    // magnitude ~40: expect ~1e-5..1e-4; 1e-3 leaves an order of magnitude.
    assert!(err <= 1e-3, "{model}: max |Δ| {err}");
    for (i, (a, b)) in all
        .chunks_exact(vocab)
        .zip(want.chunks_exact(vocab))
        .enumerate()
    {
        // The fixture script guarantees a top-2 margin above 1e-2 at every position.
        assert_eq!(
            argmax(a),
            argmax(b),
            "{model}: argmax differs at position {i}"
        );
    }

    // Prefill and decode run the same arithmetic for each row (weight-row-outer
    // matmuls, per-row norms and quantization, the same attention loop), so today they
    // agree exactly; 1e-5 (~1e-7 relative to these logits) is the most a blocked or
    // SIMD kernel that reorders a sum may move them.
    let d_chunk = max_abs_diff(&all, &chunked);
    let d_each = max_abs_diff(&all, &each);
    println!("{model} f32: prefill vs chunked {d_chunk:.1e}, prefill vs decode {d_each:.1e}");
    assert!(d_chunk <= 1e-5 && d_each <= 1e-5);
}

fn check_quantized(model: &str, quant: QuantArg, min_cosine: f64) {
    let (dir, tokens) = fixture();
    let (shape, want) = reference(&dir, model);
    let vocab = shape[1];
    let bytes = convert_to_bytes(&dir.join(model), quant);
    let image = Model::parse(bytes.as_slice()).unwrap();
    let got = prefill_all(&image, &tokens, tokens.len());
    let a = agreement(&want, &got, vocab);
    let cos = cosine(&want, &got);
    println!(
        "{model} {quant:?}: same top-1 {}/{}, cosine {cos:.5} (min per position {:.5}), \
         mean KLD {:.2e}, max KLD {:.2e}",
        a.same_top1, a.positions, a.min_cosine, a.mean_kld, a.max_kld
    );
    assert!(cos >= min_cosine, "{model} {quant:?}: cosine {cos}");
}

#[test]
fn qwen2_f32_matches_transformers() {
    check_f32("qwen2_tiny");
}

#[test]
fn llama_f32_matches_transformers() {
    check_f32("llama_tiny");
}

#[test]
fn q8_0_tracks_transformers() {
    // W8A8 with blocks of 32 on random (outlier-free, hence easy-to-quantize) weights:
    // the logit vector stays within a cosine of 0.99 of the f32 one, the brief's bar. A
    // broken kernel (wrong scale, wrong block order) lands far below, near 0.
    for model in ["qwen2_tiny", "llama_tiny"] {
        check_quantized(model, QuantArg::Q8_0, 0.99);
    }
}

#[test]
fn fp8_formats_track_transformers() {
    // E4M3 has 3 mantissa bits (~2^-4 relative step), so the bar is lower than Q8_0's:
    // 0.98 still separates a correct decode from a wrong table or scale by a wide margin.
    for model in ["qwen2_tiny", "llama_tiny"] {
        for q in [QuantArg::E4m3, QuantArg::Mxfp8] {
            check_quantized(model, q, 0.98);
        }
    }
}
