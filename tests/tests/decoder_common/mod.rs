//! Helpers shared by the decoder integration tests: converting a checkpoint into an
//! in-memory image, running the decoder, and comparing logits.

#![allow(dead_code)]

use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::decoder::{Decoder, DecoderState};

// Each test binary that includes this module uses part of it.
#[allow(unused_imports)]
pub use glimpse_tests::{convert_to_bytes, max_abs_diff};

/// Every position's logits for `tokens`, prefilled `chunk` positions at a time.
pub fn prefill_all(image: &Model, tokens: &[u32], chunk: usize) -> Vec<f32> {
    prefill_all_with(image, tokens, chunk, Default::default())
}

/// [`prefill_all`] with activations meeting Q8_0 weights as `act` says.
#[allow(dead_code)]
pub fn prefill_all_with(
    image: &Model,
    tokens: &[u32],
    chunk: usize,
    act: glimpse_core::kernels::linear::Q8Activations,
) -> Vec<f32> {
    let dec = Decoder::new(image)
        .expect("decoder")
        .with_q8_activations(act);
    let n = tokens.len();
    let mut buf = vec![0u8; DecoderState::arena_bytes(dec.config(), n, chunk).unwrap()];
    let mut arena = Arena::new(&mut buf);
    let mut st = DecoderState::with_chunk(&mut arena, &dec, n, chunk).unwrap();
    let mut out = vec![0f32; n * dec.config().vocab as usize];
    st.prefill_all(tokens, &mut out).unwrap();
    out
}

/// Every position's logits for `tokens`, one `decode_one` call per token.
pub fn decode_each(image: &Model, tokens: &[u32]) -> Vec<f32> {
    let dec = Decoder::new(image).expect("decoder");
    let n = tokens.len();
    let mut buf = vec![0u8; DecoderState::arena_bytes(dec.config(), n, 1).unwrap()];
    let mut arena = Arena::new(&mut buf);
    let mut st = DecoderState::with_chunk(&mut arena, &dec, n, 1).unwrap();
    let mut out = Vec::with_capacity(n * dec.config().vocab as usize);
    for &t in tokens {
        out.extend_from_slice(st.decode_one(t).unwrap());
    }
    out
}

pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&v| (f64::from(v) - m).exp())
        .sum::<f64>()
        .ln()
        + m;
    row.iter().map(|&v| f64::from(v) - lse).collect()
}

/// KL(p_base || p_q) of one position, in nats, over the tokens llama.cpp counts
/// (log p_base > -16; quant-formats.md §5).
pub fn kld(base: &[f32], q: &[f32]) -> f64 {
    let (lb, lq) = (log_softmax(base), log_softmax(q));
    lb.iter()
        .zip(&lq)
        .filter(|(b, _)| **b > -16.0)
        .map(|(b, q)| b.exp() * (b - q))
        .sum()
}

/// Per-position comparison of two `[n, vocab]` logit arrays.
pub struct Agreement {
    pub same_top1: usize,
    pub positions: usize,
    pub mean_kld: f64,
    pub max_kld: f64,
    pub min_cosine: f64,
}

pub fn agreement(base: &[f32], q: &[f32], vocab: usize) -> Agreement {
    let mut a = Agreement {
        same_top1: 0,
        positions: 0,
        mean_kld: 0.0,
        max_kld: 0.0,
        min_cosine: 1.0,
    };
    for (b, r) in base.chunks_exact(vocab).zip(q.chunks_exact(vocab)) {
        a.positions += 1;
        a.same_top1 += usize::from(argmax(b) == argmax(r));
        let k = kld(b, r);
        a.mean_kld += k;
        a.max_kld = a.max_kld.max(k);
        a.min_cosine = a.min_cosine.min(cosine(b, r));
    }
    a.mean_kld /= a.positions.max(1) as f64;
    a
}
