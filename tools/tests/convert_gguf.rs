//! The GGUF parser and loader on small files written by the test's own GGUF writer.

mod gguf_writer;

use gguf_writer::{GgufWriter, Store, T, TINY, Tiny, V, llamacpp_permute, values};
use glimpse_quant::schema::{ChatTemplate, DecoderArch, PreTokenizer};
use glimpse_tools::convert::gguf::{
    self, GgufError, GgufHeader, Value, permute_rope_rows, unpermute_rope_rows,
};
use glimpse_tools::convert::model::{ConvertedModel, Role};

fn load_bytes(bytes: &[u8]) -> anyhow::Result<ConvertedModel> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.gguf");
    std::fs::write(&p, bytes).unwrap();
    gguf::load(&p)
}

fn load_err(bytes: &[u8]) -> String {
    format!("{:#}", load_bytes(bytes).unwrap_err())
}

#[test]
fn metadata_of_every_type_parses() {
    let mut w = GgufWriter::default();
    w.kv("u8", V::U8(200))
        .kv("i8", V::I8(-5))
        .kv("u16", V::U16(60000))
        .kv("i16", V::I16(-30000))
        .kv("u32", V::U32(4_000_000_000))
        .kv("i32", V::I32(-2_000_000_000))
        .kv("f32", V::F32(1.5))
        .kv("bool", V::Bool(true))
        .kv("str", V::s("héllo"))
        .kv("u64", V::U64(1 << 40))
        .kv("i64", V::I64(-(1 << 40)))
        .kv("f64", V::F64(-2.25))
        .kv("arr", V::Arr(4, vec![V::U32(1), V::U32(2), V::U32(3)]))
        .kv("strs", V::strs(&["x", "", "zz"]))
        .kv(
            "nested",
            V::Arr(9, vec![V::Arr(0, vec![V::U8(7)]), V::Arr(0, vec![])]),
        )
        .kv("general.alignment", V::U32(64));
    w.alignment = 64;
    w.tensors.push(T {
        name: "a".into(),
        dims: vec![3],
        ty: 0,
        data: [1f32, 2.0, 3.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    });
    w.tensors.push(T {
        name: "b".into(),
        dims: vec![2, 5],
        ty: 0,
        data: vec![0; 40],
    });
    let bytes = w.to_bytes();
    let h = GgufHeader::parse(&bytes).unwrap();
    let m = &h.metadata;
    assert_eq!(h.version, 3);
    assert_eq!(m.len(), 16);
    assert_eq!(m.get("u8"), Some(&Value::U8(200)));
    assert_eq!(m.get("i8"), Some(&Value::I8(-5)));
    assert_eq!(m.get("u16"), Some(&Value::U16(60000)));
    assert_eq!(m.get("i16"), Some(&Value::I16(-30000)));
    assert_eq!(m.u64("u32").unwrap(), Some(4_000_000_000));
    assert_eq!(m.get("i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(m.f64("f32").unwrap(), Some(1.5));
    assert_eq!(m.bool("bool").unwrap(), Some(true));
    assert_eq!(m.str("str").unwrap(), Some("héllo"));
    assert_eq!(m.u64("u64").unwrap(), Some(1 << 40));
    assert_eq!(m.get("i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(m.f64("f64").unwrap(), Some(-2.25));
    assert_eq!(
        m.array("arr").unwrap().unwrap(),
        &[Value::U32(1), Value::U32(2), Value::U32(3)]
    );
    let strs: Vec<_> = m
        .array("strs")
        .unwrap()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(strs, ["x", "", "zz"]);
    assert_eq!(
        m.get("nested"),
        Some(&Value::Array(vec![
            Value::Array(vec![Value::U8(7)]),
            Value::Array(vec![])
        ]))
    );
    // A typed getter on the wrong type is an error, not a silent None.
    assert!(m.str("u8").is_err());
    assert!(
        m.u64("i8")
            .unwrap_err()
            .to_string()
            .contains("non-negative")
    );
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].dims, [2, 5]);
    assert_eq!(h.tensors[1].shape().unwrap(), [5, 2]);
    assert_eq!(h.tensors[1].offset, 64);
    let (_, payload) = h.tensor_bytes(&bytes, &h.tensors[0]).unwrap();
    assert_eq!(&payload[4..8], 2f32.to_le_bytes());
}

#[test]
fn version_2_parses_and_others_do_not() {
    let mut w = GgufWriter::default();
    w.kv("k", V::U32(1));
    w.version = 2;
    assert_eq!(GgufHeader::parse(&w.to_bytes()).unwrap().version, 2);
    for v in [1, 4] {
        w.version = v;
        assert_eq!(
            GgufHeader::parse(&w.to_bytes()).unwrap_err(),
            GgufError::UnsupportedVersion(v)
        );
    }
}

#[test]
fn bad_magic_is_named() {
    let mut b = Tiny::new("llama", Store::Q8_0).bytes();
    b[..4].copy_from_slice(b"GGUG");
    assert_eq!(
        GgufHeader::parse(&b).unwrap_err(),
        GgufError::BadMagic(*b"GGUG")
    );
    assert!(load_err(&b).contains("not a GGUF file"));
}

#[test]
fn every_truncation_of_the_header_is_an_error() {
    let b = Tiny::new("llama", Store::Q8_0).bytes();
    let h = GgufHeader::parse(&b).unwrap();
    // The last tensor info ends at most `alignment` bytes before the data section.
    let header_end = h.data_offset as usize - h.alignment as usize + 1;
    for cut in 0..header_end {
        let e = GgufHeader::parse(&b[..cut]);
        assert!(e.is_err(), "a file cut at {cut} bytes parsed");
    }
    let e = GgufHeader::parse(&b[..header_end / 2]).unwrap_err();
    assert!(e.to_string().contains("truncated GGUF file"), "{e}");
}

#[test]
fn truncated_data_is_an_error_naming_the_tensor() {
    let b = Tiny::new("llama", Store::Q8_0).bytes();
    let e = load_err(&b[..b.len() - 10]);
    assert!(
        e.contains("output_norm.weight") && e.contains("outside the file"),
        "{e}"
    );
}

#[test]
fn tensor_out_of_bounds_is_an_error() {
    // The last tensor's info promises 64 f32 values at the very end of the file, where
    // there are none.
    let mut t = Tiny::new("llama", Store::Q8_0);
    t.w.remove_tensor("blk.0.ffn_norm.weight");
    t.w.tensors.push(T {
        name: "blk.0.ffn_norm.weight".into(),
        dims: vec![64],
        ty: 0,
        data: vec![],
    });
    let e = load_err(&t.bytes());
    assert!(
        e.contains("blk.0.ffn_norm.weight") && e.contains("outside the file"),
        "{e}"
    );
}

#[test]
fn corrupt_counts_and_lengths_fail_cleanly() {
    let mut w = GgufWriter::default();
    w.kv("k", V::Arr(4, vec![V::U32(1)]));
    let mut b = w.to_bytes();
    // Array count field: after magic, version, counts (24), key (8 + 1), type (4), elem type (4).
    let at = 24 + 9 + 4 + 4;
    b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(GgufHeader::parse(&b).is_err());
    // A key length of 2^60.
    let mut b = w.to_bytes();
    b[24..32].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(
        GgufHeader::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("length")
    );
    // A tensor count far beyond the file.
    let mut b = w.to_bytes();
    b[8..16].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(GgufHeader::parse(&b).is_err());
    // Unknown value type.
    let mut b = w.to_bytes();
    b[33..37].copy_from_slice(&99u32.to_le_bytes());
    assert!(
        GgufHeader::parse(&b)
            .unwrap_err()
            .to_string()
            .contains("unknown value type 99")
    );
}

#[test]
fn misaligned_tensor_offset_is_rejected() {
    let mut w = GgufWriter::default();
    w.tensors.push(T {
        name: "a".into(),
        dims: vec![1],
        ty: 0,
        data: vec![0; 4],
    });
    let mut b = w.to_bytes();
    // The offset is the last 8 bytes before the padding; set it to 4.
    let end = 24 + 8 + 1 + 4 + 8 + 4 + 8;
    b[end - 8..end].copy_from_slice(&4u64.to_le_bytes());
    let e = GgufHeader::parse(&b).unwrap_err().to_string();
    assert!(e.contains("alignment"), "{e}");
}

#[test]
fn unsupported_architecture_is_named() {
    let mut t = Tiny::new("llama", Store::Q8_0);
    t.w.kv("general.architecture", V::s("gpt2"));
    let e = load_err(&t.bytes());
    assert!(e.contains("architecture `gpt2` is not supported"), "{e}");
}

#[test]
fn unknown_and_missing_tensors_are_named() {
    let mut t = Tiny::new("llama", Store::Q8_0);
    t.w.tensors.push(T {
        name: "rope_freqs.weight".into(),
        dims: vec![16],
        ty: 0,
        data: vec![0; 64],
    });
    let e = load_err(&t.bytes());
    assert!(e.contains("rope_freqs.weight"), "{e}");

    let mut t = Tiny::new("llama", Store::Q8_0);
    t.w.remove_tensor("blk.1.ffn_up.weight");
    let e = load_err(&t.bytes());
    assert!(e.contains("decoder.layers.1.mlp.up.weight"), "{e}");
}

#[test]
fn wrong_shape_is_an_error() {
    let mut t = Tiny::new("llama", Store::F32);
    let v =
        t.w.tensors
            .iter_mut()
            .find(|x| x.name == "blk.0.attn_v.weight")
            .unwrap();
    v.dims = vec![32, 64]; // ne0 = 32 columns, but hidden is 64
    let e = load_err(&t.bytes());
    assert!(
        e.contains("blk.0.attn_v.weight") && e.contains("shape"),
        "{e}"
    );
}

fn check_tensors(m: &ConvertedModel, t: &Tiny) {
    assert_eq!(m.tensors.len(), t.expected.len());
    for ct in &m.tensors {
        let (shape, data) = t
            .expected
            .get(&ct.name)
            .unwrap_or_else(|| panic!("unexpected tensor {}", ct.name));
        assert_eq!(&ct.shape, shape, "{}", ct.name);
        // Exact: the loader only reorders rows and decodes the stored values.
        assert!(
            ct.data == *data,
            "{} differs from the expected values",
            ct.name
        );
        let want = if ct.name.ends_with("norm.weight") || ct.name.ends_with(".bias") {
            Role::Keep
        } else {
            Role::Quantize
        };
        assert_eq!(ct.role, want, "{}", ct.name);
    }
}

#[test]
fn llama_q8_0_file_loads_with_rope_rows_restored() {
    let t = Tiny::new("llama", Store::Q8_0);
    let m = load_bytes(&t.bytes()).unwrap();
    let d = m.config.decoder.as_ref().unwrap();
    assert_eq!(d.arch, DecoderArch::Llama);
    assert_eq!(
        (
            d.hidden,
            d.layers,
            d.heads,
            d.kv_heads,
            d.head_dim,
            d.intermediate,
            d.vocab
        ),
        (
            TINY.hidden as u32,
            TINY.layers as u32,
            TINY.heads as u32,
            TINY.kv_heads as u32,
            TINY.head_dim as u32,
            TINY.inter as u32,
            TINY.vocab as u32
        )
    );
    assert_eq!(d.rope_theta, 100000.0);
    assert_eq!(d.norm_eps, 1e-5);
    assert_eq!(d.max_positions, 256);
    assert!(d.tied_embeddings);
    assert!(!d.qkv_bias);
    assert_eq!(d.bos_token_id, Some(7));
    assert_eq!(d.eos_token_ids.as_slice(), [8]);
    assert_eq!(m.config.name.as_str(), "tiny test decoder");
    assert_eq!(m.config.recipe.source.as_str(), "gguf:Q8_0");
    check_tensors(&m, &t);

    let tok = m.config.tokenizer.as_ref().unwrap();
    assert_eq!(tok.vocab_size, 10);
    assert_eq!(tok.merges, 3);
    assert_eq!(tok.pretokenizer, PreTokenizer::SmolLm);
    assert_eq!(
        (tok.bos, tok.eos, tok.pad, tok.add_bos),
        (Some(7), Some(8), Some(6), false)
    );
    assert_eq!(
        tok.chat,
        ChatTemplate::ImStart {
            default_system: "You are a tiny test model".try_into().unwrap()
        }
    );
    let names: Vec<_> = m.tables.iter().map(|t| t.name.as_str()).collect();
    for n in [
        "token_bytes",
        "token_offsets",
        "token_types",
        "merges",
        "sorted_ids",
    ] {
        assert!(
            names.contains(&format!("tokenizer.{n}").as_str()),
            "{names:?}"
        );
    }
    let bytes = &m
        .tables
        .iter()
        .find(|t| t.name == "tokenizer.token_bytes")
        .unwrap()
        .bytes;
    // "a" "b" " " "ab" " a" " ab" then the specials literally, then "\n".
    assert!(bytes.starts_with(b"ab ab a ab<|endoftext|>"));
    assert!(bytes.ends_with(b"<|im_end|>\n"));
}

#[test]
fn llama_f32_and_f16_files_load_with_lm_head() {
    for store in [Store::F32, Store::F16] {
        let t = Tiny::new("llama", store).with_lm_head();
        let m = load_bytes(&t.bytes()).unwrap();
        assert!(!m.config.decoder.as_ref().unwrap().tied_embeddings);
        check_tensors(&m, &t);
    }
}

#[test]
fn qwen2_file_loads_unpermuted_with_biases() {
    let mut t = Tiny::new("qwen2", Store::F32);
    // No freq_base: the GGUF default of 10000 applies.
    t.w.remove_kv("qwen2.rope.freq_base");
    let m = load_bytes(&t.bytes()).unwrap();
    let d = m.config.decoder.as_ref().unwrap();
    assert_eq!(d.arch, DecoderArch::Qwen2);
    assert!(d.qkv_bias);
    assert_eq!(d.rope_theta, 10000.0);
    assert_eq!(
        m.config.tokenizer.as_ref().unwrap().pretokenizer,
        PreTokenizer::Qwen2
    );
    check_tensors(&m, &t);
}

#[test]
fn key_length_overrides_head_dim() {
    // 2 heads of 16 on a width of 64 (head_dim != hidden / heads).
    let mut t = Tiny::new("qwen2", Store::F32);
    t.w.kv("qwen2.attention.key_length", V::U32(16));
    let e = load_err(&t.bytes());
    // The file's q rows are 2 * 32, so the shape check must now fail on attn_q.
    assert!(e.contains("attn_q") && e.contains("[32, 64]"), "{e}");
}

#[test]
fn unpermute_inverts_permute() {
    for (n_head, hd, cols) in [(1, 2, 1), (2, 4, 3), (3, 64, 5), (9, 64, 1)] {
        let x = values(n_head as u64 * 7 + cols as u64, n_head * hd * cols);
        let p = permute_rope_rows(&x, n_head, cols).unwrap();
        // Heads of width 2 have a single pair, which both layouts store alike.
        if hd > 2 {
            assert_ne!(p, x, "permutation is the identity for {n_head}x{hd}");
        }
        assert_eq!(unpermute_rope_rows(&p, n_head, cols).unwrap(), x);
        assert_eq!(
            permute_rope_rows(
                &unpermute_rope_rows(&x, n_head, cols).unwrap(),
                n_head,
                cols
            )
            .unwrap(),
            x
        );
        // And the library's permutation is llama.cpp's, as the test spells it out.
        let rows: Vec<Vec<f32>> = x.chunks(cols).map(<[f32]>::to_vec).collect();
        assert_eq!(p, llamacpp_permute(&rows, n_head).concat());
    }
}

#[test]
fn unpermute_matches_a_hand_derived_layout() {
    // One head of width 4: HF rows r0 r1 | r2 r3 rotate (r0, r2) and (r1, r3); llama.cpp
    // stores the pairs adjacently: r0 r2 r1 r3.
    let gguf_rows = [0.0, 2.0, 1.0, 3.0];
    assert_eq!(
        unpermute_rope_rows(&gguf_rows, 1, 1).unwrap(),
        [0.0, 1.0, 2.0, 3.0]
    );
    // Two heads of width 4, two columns: each head is restored on its own.
    let g = [
        10., 11., 30., 31., 20., 21., 40., 41., //
        50., 51., 70., 71., 60., 61., 80., 81.,
    ];
    let want = [
        10., 11., 20., 21., 30., 31., 40., 41., //
        50., 51., 60., 61., 70., 71., 80., 81.,
    ];
    assert_eq!(unpermute_rope_rows(&g, 2, 2).unwrap(), want);
    assert!(
        unpermute_rope_rows(&[0.0; 6], 2, 1).is_err(),
        "odd head width accepted"
    );
}

#[test]
fn gguf_tokenizer_errors_are_clear() {
    let mut t = Tiny::new("llama", Store::F32);
    t.w.kv("tokenizer.ggml.model", V::s("llama"));
    assert!(load_err(&t.bytes()).contains("tokenizer model `llama` is not supported"));

    let mut t = Tiny::new("llama", Store::F32);
    t.w.kv("tokenizer.ggml.merges", V::strs(&["a b", "b Ġ"]));
    let e = load_err(&t.bytes());
    assert!(e.contains("merge #1") && e.contains("bĠ"), "{e}");

    let mut t = Tiny::new("llama", Store::F32);
    t.w.kv("tokenizer.ggml.pre", V::s("falcon"));
    assert!(load_err(&t.bytes()).contains("falcon"));

    let mut t = Tiny::new("llama", Store::F32);
    t.w.kv("tokenizer.ggml.eos_token_id", V::U32(10));
    assert!(load_err(&t.bytes()).contains("outside the vocabulary"));
}
