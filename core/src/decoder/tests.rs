//! Unit tests of the decoder on a tiny random model built in memory. Numerical agreement
//! with PyTorch is the golden test's job (tests/tests/decoder_golden.rs); these pin the
//! invariants: validation, chunking, decode vs prefill, errors before state changes.

use super::*;
use glimpse_quant::blocks::quantize_row;
use glimpse_quant::schema::{DecoderArch, ModelConfig, ModelFamily, QuantRecipe};
use glimpse_quant::writer::ImageBuilder;
use std::string::String;
use std::vec;
use std::vec::Vec;

const D: usize = 32;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 8;
const INTER: usize = 64;
const VOCAB: usize = 40;
const LAYERS: usize = 2;

fn config(arch: DecoderArch, tied: bool) -> ModelConfig {
    ModelConfig {
        name: heapless::String::try_from("decoder-unit").unwrap(),
        family: ModelFamily::TextOnly,
        vision: None,
        projector: None,
        decoder: Some(DecoderConfig {
            arch,
            hidden: D as u32,
            layers: LAYERS as u32,
            heads: HEADS as u32,
            kv_heads: KV as u32,
            head_dim: HD as u32,
            intermediate: INTER as u32,
            vocab: VOCAB as u32,
            rope_theta: 10000.0,
            norm_eps: 1e-6,
            max_positions: 128,
            tied_embeddings: tied,
            qkv_bias: arch == DecoderArch::Qwen2,
            image_token_id: None,
            bos_token_id: None,
            eos_token_ids: heapless::Vec::new(),
        }),
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::F32,
            kept: DType::F32,
            source: heapless::String::try_from("unit").unwrap(),
        },
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Tensors of a random model, as (name, shape, values).
fn tensors(arch: DecoderArch, tied: bool) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut t = Vec::new();
    let mut add = |name: String, shape: &[u32], scale: f32, offset: f32| {
        let n: u32 = shape.iter().product();
        let v = (0..n).map(|_| rng.next() * scale + offset).collect();
        t.push((name, shape.to_vec(), v));
    };
    let (d, qd, kvd) = (D as u32, (HEADS * HD) as u32, (KV * HD) as u32);
    add("decoder.embed.weight".into(), &[VOCAB as u32, d], 2.0, 0.0);
    add("decoder.norm.weight".into(), &[d], 0.2, 1.0);
    if !tied {
        add(
            "decoder.lm_head.weight".into(),
            &[VOCAB as u32, d],
            0.5,
            0.0,
        );
    }
    for l in 0..LAYERS {
        let p = |s: &str| std::format!("decoder.layers.{l}.{s}");
        add(p("attn_norm.weight"), &[d], 0.2, 1.0);
        add(p("mlp_norm.weight"), &[d], 0.2, 1.0);
        add(p("attn.q.weight"), &[qd, d], 0.6, 0.0);
        add(p("attn.k.weight"), &[kvd, d], 0.6, 0.0);
        add(p("attn.v.weight"), &[kvd, d], 0.6, 0.0);
        add(p("attn.o.weight"), &[d, qd], 0.6, 0.0);
        if arch == DecoderArch::Qwen2 {
            add(p("attn.q.bias"), &[qd], 0.5, 0.0);
            add(p("attn.k.bias"), &[kvd], 0.5, 0.0);
            add(p("attn.v.bias"), &[kvd], 0.5, 0.0);
        }
        add(p("mlp.gate.weight"), &[INTER as u32, d], 0.6, 0.0);
        add(p("mlp.up.weight"), &[INTER as u32, d], 0.6, 0.0);
        add(p("mlp.down.weight"), &[d, INTER as u32], 0.4, 0.0);
    }
    t
}

/// An image of the model with matrices in `weights` and everything else in f32, minus
/// the tensor called `skip` and with `edit` applied to the shapes.
fn image_bytes(arch: DecoderArch, tied: bool, weights: DType, skip: &str) -> Vec<u8> {
    let mut b = ImageBuilder::new(config(arch, tied));
    for (name, shape, v) in tensors(arch, tied) {
        if name == skip {
            continue;
        }
        let dtype = if shape.len() == 2 {
            weights
        } else {
            DType::F32
        };
        let cols = *shape.last().unwrap() as usize;
        let rb = crate::kernels::linear::row_bytes(dtype, cols).unwrap();
        let mut data = vec![0u8; v.len() / cols * rb];
        for (src, dst) in v.chunks_exact(cols).zip(data.chunks_exact_mut(rb)) {
            quantize_row(dtype, src, dst).unwrap();
        }
        b.add(&name, dtype, &shape, data).unwrap();
    }
    b.to_bytes().unwrap()
}

/// 64-byte aligned copy (Model::parse wants an aligned start).
fn aligned(bytes: &[u8]) -> Vec<u128> {
    let mut v = vec![0u128; bytes.len().div_ceil(16)];
    bytemuck::cast_slice_mut::<u128, u8>(&mut v)[..bytes.len()].copy_from_slice(bytes);
    v
}

fn with_image<R>(bytes: &[u8], f: impl FnOnce(&Model) -> R) -> R {
    let store = aligned(bytes);
    let img = Model::parse(&bytemuck::cast_slice::<u128, u8>(&store)[..bytes.len()]).unwrap();
    f(&img)
}

fn arena_for(cfg: &DecoderConfig, ctx: usize, chunk: usize) -> Vec<u8> {
    vec![0u8; DecoderState::arena_bytes(cfg, ctx, chunk).unwrap()]
}

const IDS: [u32; 11] = [3, 17, 0, 39, 8, 8, 21, 5, 30, 1, 12];

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prefill_chunked_and_decode_agree() {
    for (arch, tied) in [(DecoderArch::Qwen2, true), (DecoderArch::Llama, false)] {
        for wdt in [DType::F32, DType::Q8_0, DType::E4M3] {
            let bytes = image_bytes(arch, tied, wdt, "");
            with_image(&bytes, |img| {
                let dec = Decoder::new(img).unwrap();
                let cfg = dec.config();
                let n = IDS.len();

                // Everything in one chunk.
                let mut buf = arena_for(cfg, 16, 16);
                let mut arena = Arena::new(&mut buf);
                let mut st = DecoderState::with_chunk(&mut arena, &dec, 16, 16).unwrap();
                let mut all = vec![0f32; n * VOCAB];
                st.prefill_all(&IDS, &mut all).unwrap();
                assert_eq!(st.pos(), n);
                assert!(all.iter().all(|v| v.is_finite()));

                // Chunks of 4 (4 + 4 + 3): the same arithmetic per row, so identical.
                let mut buf4 = arena_for(cfg, 16, 4);
                let mut arena4 = Arena::new(&mut buf4);
                let mut st4 = DecoderState::with_chunk(&mut arena4, &dec, 16, 4).unwrap();
                let mut all4 = vec![0f32; n * VOCAB];
                st4.prefill_all(&IDS, &mut all4).unwrap();
                assert_eq!(all, all4, "{arch:?} {wdt:?}: chunking changed results");

                // Token by token. Each position's arithmetic is the same as in the batch
                // (weight-row-outer matmuls compute each output row independently), so
                // decode reproduces prefill exactly.
                st.reset();
                for (i, &id) in IDS.iter().enumerate() {
                    let lg = st.decode_one(id).unwrap();
                    let want = &all[i * VOCAB..(i + 1) * VOCAB];
                    assert_eq!(max_abs_diff(lg, want), 0.0, "{arch:?} {wdt:?} pos {i}");
                }

                // Prefill (last only) then decode continues the same sequence.
                st.reset();
                let last = st.prefill(&IDS[..6]).unwrap().to_vec();
                assert_eq!(&last[..], &all[5 * VOCAB..6 * VOCAB]);
                let nxt = st.decode_one(IDS[6]).unwrap();
                assert_eq!(nxt, &all[6 * VOCAB..7 * VOCAB]);

                // Embedding input equals id input.
                st.reset();
                let mut emb = vec![0f32; n * D];
                for (row, &id) in emb.chunks_exact_mut(D).zip(&IDS) {
                    dec.embed(id, row).unwrap();
                }
                let lg = st.prefill_embeddings(&emb).unwrap();
                assert_eq!(lg, &all[(n - 1) * VOCAB..]);
            });
        }
    }
}

#[test]
fn errors_leave_the_state_unchanged() {
    let bytes = image_bytes(DecoderArch::Qwen2, true, DType::F32, "");
    with_image(&bytes, |img| {
        let dec = Decoder::new(img).unwrap();
        let mut buf = arena_for(dec.config(), 8, 4);
        let mut arena = Arena::new(&mut buf);
        let mut st = DecoderState::with_chunk(&mut arena, &dec, 8, 4).unwrap();
        let before = st.prefill(&[1, 2, 3]).unwrap().to_vec();

        assert_eq!(
            st.prefill(&[4, VOCAB as u32]),
            Err(Error::TokenOutOfRange {
                id: VOCAB as u32,
                vocab: VOCAB as u32
            })
        );
        assert_eq!(
            st.prefill(&[1; 6]),
            Err(Error::ContextOverflow { needed: 9, max: 8 })
        );
        assert!(matches!(
            st.prefill_embeddings(&[0.0; D + 1]),
            Err(Error::Length { .. })
        ));
        assert_eq!(st.prefill(&[]), Err(Error::EmptyInput));
        let mut short = vec![0f32; VOCAB];
        assert!(matches!(
            st.prefill_all(&[1, 2], &mut short),
            Err(Error::Length { .. })
        ));
        assert_eq!(st.pos(), 3);
        assert_eq!(st.logits(), &before[..]);

        // The cache fills to exactly max_context, then refuses.
        st.prefill(&[5; 5]).unwrap();
        assert_eq!(st.pos(), 8);
        assert_eq!(
            st.decode_one(1),
            Err(Error::ContextOverflow { needed: 9, max: 8 })
        );
    });
}

#[test]
fn too_small_arena_is_an_error_before_allocating() {
    let bytes = image_bytes(DecoderArch::Llama, true, DType::F32, "");
    with_image(&bytes, |img| {
        let dec = Decoder::new(img).unwrap();
        let need = DecoderState::arena_bytes(dec.config(), 32, 8).unwrap();
        let mut buf = vec![0u8; need - 64];
        let mut arena = Arena::new(&mut buf);
        match DecoderState::with_chunk(&mut arena, &dec, 32, 8) {
            Err(Error::Arena { needed, capacity }) => {
                assert_eq!(capacity, need - 64);
                assert!(
                    needed > capacity && needed <= need,
                    "{needed} vs bound {need}"
                );
            }
            other => panic!("expected an arena error, got {other:?}"),
        }
        assert_eq!(arena.used(), 0);
        let mut buf = vec![0u8; need];
        let mut arena = Arena::new(&mut buf);
        DecoderState::with_chunk(&mut arena, &dec, 32, 8).unwrap();
        assert!(arena.used() <= need);
    });
}

#[test]
fn validation_names_the_tensor() {
    // A missing tensor.
    let bytes = image_bytes(
        DecoderArch::Qwen2,
        true,
        DType::F32,
        "decoder.layers.1.attn.k.bias",
    );
    with_image(&bytes, |img| match Decoder::new(img) {
        Err(Error::Tensor { tensor, .. }) => {
            assert_eq!(tensor.as_str(), "decoder.layers.1.attn.k.bias")
        }
        other => panic!("{other:?}"),
    });
    // Untied without an lm_head.
    let bytes = image_bytes(
        DecoderArch::Llama,
        false,
        DType::F32,
        "decoder.lm_head.weight",
    );
    with_image(&bytes, |img| match Decoder::new(img) {
        Err(Error::Tensor { tensor, .. }) => assert_eq!(tensor.as_str(), "decoder.lm_head.weight"),
        other => panic!("{other:?}"),
    });
    // A wrong shape: an image whose config claims a wider MLP than its tensors.
    let mut b = ImageBuilder::new({
        let mut c = config(DecoderArch::Llama, true);
        c.decoder.as_mut().unwrap().intermediate = 96;
        c
    });
    for (name, shape, v) in tensors(DecoderArch::Llama, true) {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        b.add(&name, DType::F32, &shape, data).unwrap();
    }
    let bytes = b.to_bytes().unwrap();
    with_image(&bytes, |img| match Decoder::new(img) {
        Err(Error::Shape {
            tensor,
            expected,
            got,
        }) => {
            assert_eq!(tensor.as_str(), "decoder.layers.0.mlp.gate.weight");
            assert_eq!(expected.as_slice(), &[96, D as u32]);
            assert_eq!(got.as_slice(), &[INTER as u32, D as u32]);
        }
        other => panic!("{other:?}"),
    });
}

#[test]
fn quantized_logits_track_f32() {
    // Same random model in f32 and Q8_0: W8A8 with 8-bit blocks keeps the logits close.
    // Random weights are harder than trained ones (no outlier structure to exploit,
    // nothing to average out in 2 layers), so the bound is loose: cosine >= 0.99.
    let f = image_bytes(DecoderArch::Qwen2, true, DType::F32, "");
    let q = image_bytes(DecoderArch::Qwen2, true, DType::Q8_0, "");
    let run = |bytes: &[u8]| {
        with_image(bytes, |img| {
            let dec = Decoder::new(img).unwrap();
            let mut buf = arena_for(dec.config(), 16, 16);
            let mut arena = Arena::new(&mut buf);
            let mut st = DecoderState::new(&mut arena, &dec, 16).unwrap();
            let mut all = vec![0f32; IDS.len() * VOCAB];
            st.prefill_all(&IDS, &mut all).unwrap();
            all
        })
    };
    let (a, b) = (run(&f), run(&q));
    let dot: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let cos = dot / (na * nb);
    assert!(cos >= 0.99, "cosine {cos}");
}

#[test]
fn f16_kv_cache_tracks_f32_and_keeps_decode_equal_to_prefill() {
    let bytes = image_bytes(DecoderArch::Qwen2, false, DType::F32, "");
    with_image(&bytes, |img| {
        let dec = Decoder::new(img).unwrap();
        let cfg = dec.config();
        let n = IDS.len();
        let run = |format: KvFormat, chunk: usize| {
            let mut buf = vec![0u8; DecoderState::arena_bytes_as(cfg, 16, chunk, format).unwrap()];
            let mut arena = Arena::new(&mut buf);
            let mut st = DecoderState::with_format(&mut arena, &dec, 16, chunk, format).unwrap();
            assert_eq!(st.kv_format(), format);
            let mut all = vec![0f32; n * VOCAB];
            st.prefill_all(&IDS, &mut all).unwrap();
            // Token by token from the same (f16) cache: every key and value is rounded
            // when stored, before any attention reads it, so the order of calls cannot
            // change a result.
            st.reset();
            for (i, &id) in IDS.iter().enumerate() {
                let lg = st.decode_one(id).unwrap();
                assert_eq!(lg, &all[i * VOCAB..(i + 1) * VOCAB], "{format:?} pos {i}");
            }
            all
        };
        let exact = run(KvFormat::F32, 4);
        let half = run(KvFormat::F16, 4);
        assert_eq!(half, run(KvFormat::F16, 16), "chunking changed f16 results");
        // Each cached value carries a relative error of at most 2^-11 (4.9e-4); through
        // the scores (q·k over 8 dims), softmax and the value average of two layers that
        // stays within a few times that of the logit scale. 4e-3 x max|logit| is ~8x the
        // per-value rounding, while a wrong row or head would be off by O(1).
        let scale = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = max_abs_diff(&exact, &half);
        assert!(err <= 4e-3 * scale, "f16 KV error {err} vs scale {scale}");
        assert!(err > 0.0, "the f16 cache rounded nothing: is it in use?");
        // Half the cache bytes.
        let kv32 = KvCache::tensor_bytes_as(LAYERS, 16, KV * HD, KvFormat::F32);
        let kv16 = KvCache::tensor_bytes_as(LAYERS, 16, KV * HD, KvFormat::F16);
        assert_eq!(kv32, 2 * kv16);
        assert!(
            DecoderState::padded_bytes(cfg, 16, 4, KvFormat::F16).unwrap()
                < DecoderState::padded_bytes(cfg, 16, 4, KvFormat::F32).unwrap()
        );
    });
}
