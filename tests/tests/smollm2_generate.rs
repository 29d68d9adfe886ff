//! SmolLM2-135M-Instruct end to end against llama.cpp on the same weights: the Q4_1
//! GGUF converted by the converter library, chat-templated and tokenized by glimpse,
//! decoded by glimpse's decoder (fixtures from tests/scripts/make_llamacpp_fixtures.py,
//! llama.cpp with an f32 KV cache).
//!
//! - F32 weights: greedy generation, free-running, must be identical token for token on
//!   at least 7 of the 8 prompts (glimpse and llama.cpp agree to ~1e-5 in f32 logits, and
//!   the smallest recorded top-2 margin is ~1e-3).
//! - Q8_0 weights: both sides round activations to 8 bits per block (W8A8), which turns
//!   float-order noise into logit differences of up to ~1, so free-running generations
//!   drift apart (llama.cpp itself changes 6 of the 8 generations when it evaluates the
//!   prompt token by token instead of in one batch). The check is teacher-forced instead:
//!   along llama.cpp's generated tokens, glimpse's argmax must agree wherever llama.cpp's
//!   top-2 margin is clear, and almost everywhere overall.
//!
//! Prompt ids must match llama.cpp's exactly in both.

mod tokenizer_common;

use glimpse_core::Model;
use glimpse_core::arena::Arena;
use glimpse_core::chat::{self, Turn};
use glimpse_core::decoder::{Decoder, DecoderState, KvFormat};
use glimpse_core::planner::{ArenaPlan, PlanOptions};
use glimpse_core::sampler::argmax;
use glimpse_core::session::{Prompt, Session, SessionOptions};
use glimpse_core::tokenizer::{Specials, Tokenizer};
use glimpse_tests::{AlignedBytes, fixtures_dir};
use glimpse_tools::QuantArg;
use glimpse_tools::run::{CollectSink, HostClock};
use serde_json::Value;
use tokenizer_common::*;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join("smollm2").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON")
}

/// The SmolLM2 GGUF converted with `quant`, or `None` when the asset is missing.
fn converted(quant: QuantArg) -> Option<AlignedBytes> {
    let gguf = asset(smollm2_gguf())?;
    Some(glimpse_tests::convert_to_bytes(&gguf, quant))
}

/// Render and encode each fixture prompt; checks the ids against llama.cpp's.
fn prompts(image: &Model<'_>, tok: &Tokenizer<'_>, fx: &Value) -> Vec<Vec<u32>> {
    let template = image
        .config()
        .tokenizer
        .as_ref()
        .expect("tokenizer")
        .chat
        .clone();
    let system = fx["system"].as_str().expect("system");
    let gens = fx["generations"].as_array().expect("generations");
    assert_eq!(gens.len(), 8);
    gens.iter()
        .map(|g| {
            let turn = Turn {
                system: None,
                user: g["prompt"].as_str().expect("prompt"),
                image: false,
            };
            let mut buf = vec![0u8; 4096];
            let text = chat::render(&template, &turn, &mut buf).expect("render");
            // The image's default system prompt is the one llama.cpp's prompts used.
            assert!(text.contains(system), "{text:?}");
            let p = glimpse_tools::tokenize::encode(tok, text, Specials::Parse).unwrap();
            assert_eq!(p, ids(&g["prompt_ids"]), "prompt ids for {:?}", g["prompt"]);
            p
        })
        .collect()
}

/// Greedy tokens for `prompt` through the Session, with llama.cpp's f32 KV cache and the
/// default prefill chunk (the model's stop tokens end it).
fn generate(image: &Model<'_>, prompt: &[u32], max_tokens: usize) -> CollectSink {
    let opts = SessionOptions {
        plan: PlanOptions {
            max_context: prompt.len() + max_tokens,
            kv: KvFormat::F32,
            vision: false,
            ..PlanOptions::default()
        },
        max_new_tokens: max_tokens,
        ..SessionOptions::default()
    };
    let plan = ArenaPlan::new(image, &opts.plan).expect("plan");
    let mut arena = glimpse_tools::run::arena_for(&plan);
    let mut s = Session::new(image, &mut arena, HostClock::new(), opts).expect("session");
    let mut sink = CollectSink::default();
    s.run(Prompt::Ids(prompt), None, &mut sink)
        .expect("generate");
    sink
}

#[test]
fn smollm2_f32_greedy_generation_matches_llama_cpp() {
    let Some(bytes) = converted(QuantArg::F32) else {
        return;
    };
    let image = parse(&bytes);
    let tok = Tokenizer::from_image(&image).expect("tokenizer");
    let fx = fixture("greedy_f32.json");
    let prompt_ids = prompts(&image, &tok, &fx);
    let max_tokens = fx["max_new_tokens"].as_u64().expect("max_new_tokens") as usize;
    let mut matched = 0;
    let mut report = Vec::new();
    for (g, p) in fx["generations"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&prompt_ids)
    {
        let want = ids(&g["tokens"]);
        let run = generate(&image, p, max_tokens);
        if run.tokens == want {
            matched += 1;
            continue;
        }
        let at = run
            .tokens
            .iter()
            .zip(&want)
            .take_while(|(a, b)| a == b)
            .count();
        let margin = g["top2_margins"].get(at).and_then(Value::as_f64);
        let spell = |v: &[u32]| {
            let tail: Vec<u32> = v.iter().skip(at).take(6).copied().collect();
            glimpse_tools::tokenize::decode(&tok, &tail).unwrap()
        };
        report.push(format!(
            "{:?}: first divergence at token {at} (llama.cpp top-2 margin {margin:?}): \
             ours {:?} llama.cpp {:?}",
            g["prompt"],
            spell(&run.tokens),
            spell(&want)
        ));
    }
    for r in &report {
        eprintln!("{r}");
    }
    eprintln!("{matched} of 8 F32 generations identical to llama.cpp");
    assert!(
        matched >= 7,
        "only {matched} of 8 match:\n{}",
        report.join("\n")
    );
}

/// llama.cpp's own Q8_0 logits move by up to 0.78 between batched and token-by-token
/// evaluation of the same prompt (measured on this model; see the fixture script), so a
/// top-2 order can flip where the margin is below about twice that. 2.0 leaves headroom.
const CLEAR_MARGIN: f64 = 2.0;
/// Below the clear margin, most steps still agree: flips need the two logits to cross.
const MIN_AGREEMENT: f64 = 0.9;

#[test]
fn smollm2_q8_0_teacher_forced_argmax_matches_llama_cpp() {
    let Some(bytes) = converted(QuantArg::Q8_0) else {
        return;
    };
    let image = parse(&bytes);
    let tok = Tokenizer::from_image(&image).expect("tokenizer");
    let fx = fixture("greedy_q8_0.json");
    let prompt_ids = prompts(&image, &tok, &fx);
    let dec = Decoder::new(&image).expect("decoder");
    let vocab = dec.config().vocab as usize;
    let (mut agree, mut total) = (0usize, 0usize);
    let mut clear_misses = Vec::new();
    for (g, p) in fx["generations"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&prompt_ids)
    {
        let generated = ids(&g["tokens"]);
        let margins: Vec<f64> = g["top2_margins"]
            .as_array()
            .expect("margins")
            .iter()
            .map(|m| m.as_f64().expect("margin"))
            .collect();
        // Positions p.len()-1 .. see the prompt plus the tokens before each generated one.
        let mut seq = p.clone();
        seq.extend_from_slice(&generated[..generated.len() - 1]);
        let n = seq.len();
        let mut buf = vec![0u8; DecoderState::arena_bytes(dec.config(), n, 64).unwrap()];
        let mut arena = Arena::new(&mut buf);
        let mut st = DecoderState::with_chunk(&mut arena, &dec, n, 64).unwrap();
        let mut logits = vec![0f32; n * vocab];
        st.prefill_all(&seq, &mut logits).expect("prefill");
        for (k, (&want, &margin)) in generated.iter().zip(&margins).enumerate() {
            let row = &logits[(p.len() - 1 + k) * vocab..][..vocab];
            let ours = argmax(row).expect("logits");
            total += 1;
            if ours == want {
                agree += 1;
            } else if margin >= CLEAR_MARGIN {
                clear_misses.push(format!(
                    "{:?} step {k}: ours {ours}, llama.cpp {want} (margin {margin})",
                    g["prompt"]
                ));
            }
        }
    }
    let rate = agree as f64 / total as f64;
    eprintln!("Q8_0 teacher-forced argmax agreement: {agree} of {total} steps ({rate:.3})");
    assert!(
        clear_misses.is_empty(),
        "disagreements at clear margins:\n{}",
        clear_misses.join("\n")
    );
    assert!(
        rate >= MIN_AGREEMENT,
        "agreement {rate:.3} below {MIN_AGREEMENT}"
    );
}

/// Issue 4's question through the Session API (chat template, greedy) on the Q8_0
/// image. With f32 activations (W8A32) the answer is the f32 model's, naming Paris; with
/// int8 activations (W8A8) this 135M model's answer falls apart (llama.cpp's does too on
/// the same weights), so that one is printed, not checked.
#[test]
fn smollm2_q8_0_with_f32_activations_knows_the_capital_of_france() {
    use glimpse_core::kernels::linear::Q8Activations;
    let Some(bytes) = converted(QuantArg::Q8_0) else {
        return;
    };
    let image = Model::parse(bytes.as_slice()).expect("image");
    let question = "What is the capital of France?";
    let answer = |act: Q8Activations| {
        let opts = SessionOptions {
            plan: PlanOptions {
                max_context: 128,
                max_prompt_bytes: question.len(),
                vision: false,
                ..PlanOptions::default()
            },
            max_new_tokens: 24,
            q8_activations: act,
            ..SessionOptions::default()
        };
        let plan = ArenaPlan::new(&image, &opts.plan).expect("plan");
        let mut arena = glimpse_tools::run::arena_for(&plan);
        let mut s = Session::new(&image, &mut arena, HostClock::new(), opts).expect("session");
        let mut sink = CollectSink::default();
        s.run(Prompt::chat(question), None, &mut sink).expect("ask");
        String::from_utf8(sink.text).expect("UTF-8")
    };
    let w8a8 = answer(Q8Activations::Int8);
    let w8a32 = answer(Q8Activations::F32);
    println!("Q8_0 W8A8: {w8a8:?}\nQ8_0 W8A32: {w8a32:?}");
    assert!(w8a32.contains("Paris"), "{w8a32:?}");
}
