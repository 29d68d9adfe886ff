//! `glimpse convert` end to end: the built binary on tiny GGUF checkpoints written by the
//! test, then the image read back with the host port's verifying reader.

mod gguf_writer;

use std::path::Path;
use std::process::{Command, Output};

use gguf_writer::{Store, Tiny, V};
use glimpse_host::MappedImage;
use glimpse_quant::DType;
use glimpse_quant::blocks::quantize_row;
use glimpse_quant::schema::PreTokenizer;

fn glimpse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .expect("the glimpse binary runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The SQNR column of the table row of `name`.
fn sqnr_of(table: &str, name: &str) -> String {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{table}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    cols[cols.len() - 2].to_string()
}

fn convert_ok(input: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["convert", s(input), "-o", s(out)];
    args.extend_from_slice(extra);
    let o = glimpse(&args);
    assert!(
        o.status.success(),
        "convert failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

#[test]
fn tiny_gguf_converts_to_a_verified_image_with_sqnr_table() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = Tiny::new("llama", Store::F32);
    let input = tiny.write(dir.path(), "tiny.gguf");
    let out = dir.path().join("tiny.glim");
    let table = convert_ok(&input, &out, &[]);

    assert!(table.lines().next().unwrap().contains("SQNR dB"), "{table}");
    // Uniform values in [-1, 1) per block of 32: Q8_0's step is amax/127, so the noise
    // power is step^2/12 against a signal power of 1/3: 10 log10(4 * 127^2 / amax^2)
    // = 48.1 dB + up to ~0.6 dB since amax of 32 uniform draws is ~0.94-1.
    for name in [
        "decoder.layers.0.attn.q.weight",
        "decoder.layers.1.mlp.down.weight",
    ] {
        let v: f64 = sqnr_of(&table, name).parse().unwrap();
        assert!((46.0..51.0).contains(&v), "{name}: {v} dB");
    }
    // The embedding was Q8_0 already: requantizing Q8_0 values to Q8_0 is exact.
    assert_eq!(sqnr_of(&table, "decoder.embed.weight"), "inf");
    assert_eq!(sqnr_of(&table, "decoder.norm.weight"), "-");
    assert!(table.contains("SQNR q8_0: min"), "{table}");
    assert!(table.contains("source gguf:F32"), "{table}");
    assert_eq!(entries(dir.path()), ["tiny.gguf", "tiny.glim"]);
    #[cfg(unix)]
    {
        // The image gets an ordinary file's mode, not the temp file's private one.
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), mode(&plain));
        std::fs::remove_file(&plain).unwrap();
    }

    let map = MappedImage::open(&out).unwrap();
    let img = map.verified().unwrap();
    let cfg = img.config();
    let dec = cfg.decoder.as_ref().unwrap();
    assert_eq!((dec.hidden, dec.layers, dec.vocab), (64, 2, 10));
    assert_eq!(cfg.recipe.weights, DType::Q8_0);
    assert_eq!(cfg.recipe.kept, DType::F32);
    assert_eq!(
        cfg.tokenizer.as_ref().unwrap().pretokenizer,
        PreTokenizer::SmolLm
    );
    assert_eq!(img.len(), tiny.expected.len() + 5);
    // Every matrix is exactly the Q8_0 encoding of the HF-ordered source rows, so the
    // rope rows were restored before quantization.
    for (name, (shape, data)) in &tiny.expected {
        let t = img.find(name).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{name}");
        if shape.len() == 2 {
            assert_eq!(t.dtype, DType::Q8_0, "{name}");
            let mut want = vec![0u8; DType::Q8_0.payload_bytes(shape).unwrap() as usize];
            quantize_row(DType::Q8_0, data, &mut want).unwrap();
            // The default `--repack all` stores every matrix with a multiple of 4 rows in
            // four-row groups: the same blocks, rearranged.
            let grouped = shape[0] % 4 == 0;
            let layout = glimpse_quant::layout::TensorLayout::Q8Rows4;
            assert_eq!(t.layout == layout, grouped, "{name}: {:?}", t.layout);
            if grouped {
                let mut packed = vec![0u8; t.data.len()];
                let (rows, cols) = (shape[0] as usize, shape[1] as usize);
                glimpse_quant::repack::repack_rows4(rows, cols, &want, &mut packed).unwrap();
                want = packed;
            }
            assert!(t.data == want.as_slice(), "{name} differs");
        } else {
            assert_eq!(t.dtype, DType::F32, "{name}");
            assert!(t.as_f32().unwrap() == data.as_slice(), "{name} differs");
        }
    }
    for n in [
        "token_bytes",
        "token_offsets",
        "token_types",
        "merges",
        "sorted_ids",
    ] {
        img.find(&format!("tokenizer.{n}")).unwrap();
    }

    // Converting again gives the same bytes.
    let again = dir.path().join("again.glim");
    convert_ok(&input, &again, &["-q"]);
    assert!(std::fs::read(&again).unwrap() == std::fs::read(&out).unwrap());
}

#[test]
fn every_format_and_keep_option() {
    let dir = tempfile::tempdir().unwrap();
    let input = Tiny::new("qwen2", Store::F32).write(dir.path(), "q.gguf");
    let cases = [
        ("q8_0", "f32", DType::Q8_0, DType::F32),
        ("e4m3", "f16", DType::E4M3, DType::F16),
        ("e5m2", "f32", DType::E5M2, DType::F32),
        ("mxfp8", "f16", DType::MxFp8, DType::F16),
        ("f16", "f32", DType::F16, DType::F32),
        // --quant f32 keeps everything in f32 whatever --keep says.
        ("f32", "f16", DType::F32, DType::F32),
    ];
    for (q, k, wd, kd) in cases {
        let out = dir.path().join(format!("{q}-{k}.glim"));
        let text = convert_ok(&input, &out, &["--quant", q, "--keep", k, "--quiet"]);
        assert!(text.starts_with("wrote "), "{text}");
        assert!(!text.contains("SQNR"), "--quiet printed the table: {text}");
        let map = MappedImage::open(&out).unwrap();
        let img = map.verified().unwrap();
        assert_eq!(img.config().recipe.weights, wd);
        assert_eq!(img.config().recipe.kept, kd);
        assert_eq!(
            img.find("decoder.layers.0.mlp.up.weight").unwrap().dtype,
            wd,
            "{q}"
        );
        assert_eq!(img.find("decoder.embed.weight").unwrap().dtype, wd, "{q}");
        assert_eq!(
            img.find("decoder.layers.0.attn.q.bias").unwrap().dtype,
            kd,
            "{q}"
        );
        assert_eq!(img.find("decoder.norm.weight").unwrap().dtype, kd, "{q}");
    }
}

fn assert_failed_cleanly(dir: &Path, args: &[&str], must_mention: &str, before: &[String]) {
    let o = glimpse(args);
    assert!(!o.status.success(), "convert succeeded: {}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(must_mention),
        "stderr lacks {must_mention:?}:\n{err}"
    );
    assert_eq!(entries(dir), before, "files left behind");
}

#[test]
fn failures_leave_no_output_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("out.glim");

    let mut t = Tiny::new("llama", Store::F32);
    t.w.remove_tensor("blk.1.ffn_up.weight");
    let missing = t.write(d, "missing.gguf");
    let good = Tiny::new("llama", Store::F32).bytes();
    let truncated = d.join("truncated.gguf");
    std::fs::write(&truncated, &good[..good.len() - 100]).unwrap();
    // A NaN in an f32 matrix fails late, in quantization, after the load succeeded.
    let mut t = Tiny::new("llama", Store::F32);
    let up =
        t.w.tensors
            .iter_mut()
            .find(|x| x.name == "blk.0.ffn_up.weight")
            .unwrap();
    up.data[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
    let nan = t.write(d, "nan.gguf");
    let before = entries(d);

    assert_failed_cleanly(
        d,
        &["convert", s(&missing), "-o", s(&out)],
        "decoder.layers.1.mlp.up.weight",
        &before,
    );
    assert_failed_cleanly(
        d,
        &["convert", s(&truncated), "-o", s(&out)],
        "outside the file",
        &before,
    );
    assert_failed_cleanly(
        d,
        &["convert", s(&nan), "-o", s(&out)],
        "decoder.layers.0.mlp.up.weight",
        &before,
    );

    // An existing output survives a failed conversion untouched.
    std::fs::write(&out, b"previous image").unwrap();
    let before = entries(d);
    assert_failed_cleanly(
        d,
        &["convert", s(&nan), "-o", s(&out)],
        "cannot encode",
        &before,
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"previous image");
}

#[test]
fn bad_inputs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("o.glim");
    let fake = d.join("fake.gguf");
    std::fs::write(&fake, b"GGML and more bytes").unwrap();
    let other = d.join("weights.bin");
    std::fs::write(&other, b"\0\0\0\0\0\0").unwrap();
    let mut t = Tiny::new("llama", Store::F32);
    t.w.kv("general.architecture", V::s("falcon"));
    let falcon = t.write(d, "falcon.gguf");
    // GGUF is recognized by its magic, not its name.
    let renamed = Tiny::new("llama", Store::F32).write(d, "model.bin");
    let before = entries(d);

    assert_failed_cleanly(
        d,
        &["convert", s(&fake), "-o", s(&out)],
        "GGUF magic",
        &before,
    );
    assert_failed_cleanly(
        d,
        &["convert", s(&other), "-o", s(&out)],
        "cannot tell what",
        &before,
    );
    assert_failed_cleanly(
        d,
        &["convert", s(&d.join("absent.gguf")), "-o", s(&out)],
        "does not exist",
        &before,
    );
    assert_failed_cleanly(
        d,
        &["convert", s(&falcon), "-o", s(&out)],
        "`falcon`",
        &before,
    );
    assert_failed_cleanly(
        d,
        &[
            "convert",
            s(&renamed),
            "-o",
            s(&d.join("no/such/dir/o.glim")),
        ],
        "output directory",
        &before,
    );
    assert_failed_cleanly(
        d,
        &["convert", s(&renamed), "-o", s(&renamed)],
        "input checkpoint itself",
        &before,
    );
    assert_eq!(
        std::fs::read(&renamed).unwrap(),
        Tiny::new("llama", Store::F32).bytes()
    );
    convert_ok(&renamed, &out, &["-q"]);
}

#[test]
fn bad_quant_value_is_rejected_by_clap() {
    let o = glimpse(&["convert", "x.gguf", "-o", "y.glim", "--quant", "q4_0"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("invalid value 'q4_0'") && err.contains("q8_0"),
        "{err}"
    );
}

fn tokenizer_json(vocab_extra: usize) -> String {
    let mut vocab = vec![
        r#""a":0"#.to_string(),
        r#""b":1"#.into(),
        r#""ab":2"#.into(),
    ];
    for i in 0..vocab_extra {
        vocab.push(format!(r#""x{i}":{}"#, 3 + i));
    }
    format!(
        r#"{{"pre_tokenizer":{{"type":"ByteLevel"}},"added_tokens":[],
           "model":{{"type":"BPE","vocab":{{{}}},"merges":["a b"]}}}}"#,
        vocab.join(",")
    )
}

#[test]
fn tokenizer_override_and_absence() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = Tiny::new("llama", Store::F32).write(d, "m.gguf");
    let tok = d.join("tok.json");
    std::fs::write(&tok, tokenizer_json(6)).unwrap();
    let out = d.join("o.glim");
    convert_ok(&input, &out, &["--tokenizer", s(&tok), "-q"]);
    let map = MappedImage::open(&out).unwrap();
    let img = map.verified().unwrap();
    let tc = img.config().tokenizer.as_ref().unwrap();
    assert_eq!(
        (tc.vocab_size, tc.merges, tc.pretokenizer),
        (9, 1, PreTokenizer::Gpt2)
    );
    assert!(
        img.find("tokenizer.token_bytes")
            .unwrap()
            .data
            .starts_with(b"ababx0x1")
    );
    // The GGUF's own bos/eos come through the decoder config.
    assert_eq!((tc.bos, tc.eos), (Some(7), Some(8)));

    // More tokens than embedding rows cannot be right.
    std::fs::write(&tok, tokenizer_json(20)).unwrap();
    let before = entries(d);
    assert_failed_cleanly(
        d,
        &[
            "convert",
            s(&input),
            "-o",
            s(&d.join("big.glim")),
            "--tokenizer",
            s(&tok),
        ],
        "23 tokens but the embedding only 10 rows",
        &before,
    );

    let mut t = Tiny::new("llama", Store::F32);
    for k in t.w.kv.clone().iter().map(|(k, _)| k.clone()) {
        if k.starts_with("tokenizer.") {
            t.w.remove_kv(&k);
        }
    }
    let bare = t.write(d, "bare.gguf");
    let text = convert_ok(&bare, &out, &["-q"]);
    assert!(text.contains("note: no tokenizer"), "{text}");
    let map = MappedImage::open(&out).unwrap();
    let img = map.verified().unwrap();
    assert!(img.config().tokenizer.is_none());
    assert!(img.iter().all(|t| !t.name.starts_with("tokenizer.")));
}

/// A tiny plain-Llama HF checkpoint directory (config.json + model.safetensors).
fn write_hf_llama(dir: &Path) {
    let g = gguf_writer::TINY;
    let config = format!(
        r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":{},
        "intermediate_size":{},"num_hidden_layers":1,"num_attention_heads":{},
        "num_key_value_heads":{},"rms_norm_eps":1e-5,"rope_theta":10000.0,
        "max_position_embeddings":256,"vocab_size":{},"tie_word_embeddings":true,
        "torch_dtype":"float32","bos_token_id":7,"eos_token_id":8}}"#,
        g.hidden, g.inter, g.heads, g.kv_heads, g.vocab
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
    let (h, q, kv, i) = (
        g.hidden,
        g.heads * g.head_dim,
        g.kv_heads * g.head_dim,
        g.inter,
    );
    let shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![g.vocab, h]),
        ("model.norm.weight".into(), vec![h]),
        ("model.layers.0.input_layernorm.weight".into(), vec![h]),
        (
            "model.layers.0.post_attention_layernorm.weight".into(),
            vec![h],
        ),
        ("model.layers.0.self_attn.q_proj.weight".into(), vec![q, h]),
        ("model.layers.0.self_attn.k_proj.weight".into(), vec![kv, h]),
        ("model.layers.0.self_attn.v_proj.weight".into(), vec![kv, h]),
        ("model.layers.0.self_attn.o_proj.weight".into(), vec![h, q]),
        ("model.layers.0.mlp.gate_proj.weight".into(), vec![i, h]),
        ("model.layers.0.mlp.up_proj.weight".into(), vec![i, h]),
        ("model.layers.0.mlp.down_proj.weight".into(), vec![h, i]),
    ];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .enumerate()
        .map(|(k, (_, s))| {
            gguf_writer::values(k as u64, s.iter().product())
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect()
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = shapes
        .iter()
        .zip(&data)
        .map(|((n, s), d)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
}

#[test]
fn hf_checkpoint_picks_up_the_tokenizer_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    write_hf_llama(&ckpt);
    let out = dir.path().join("o.glim");

    // No tokenizer.json yet: converted, with a note.
    let text = convert_ok(&ckpt, &out, &["-q"]);
    assert!(text.contains("note: no tokenizer.json"), "{text}");
    let map = MappedImage::open(&out).unwrap();
    let img = map.verified().unwrap();
    assert!(img.config().tokenizer.is_none());
    assert!(
        img.config().recipe.source.starts_with("safetensors"),
        "{:?}",
        img.config().recipe
    );
    drop(img);
    drop(map);

    std::fs::write(ckpt.join("tokenizer.json"), tokenizer_json(6)).unwrap();
    std::fs::write(ckpt.join("tokenizer_config.json"), r#"{"eos_token":"x2"}"#).unwrap();
    for input in [ckpt.clone(), ckpt.join("model.safetensors")] {
        let table = convert_ok(&input, &out, &[]);
        assert!(!table.contains("note: no tokenizer"), "{table}");
        let map = MappedImage::open(&out).unwrap();
        let img = map.verified().unwrap();
        let tc = img.config().tokenizer.as_ref().unwrap();
        // eos from tokenizer_config.json ("x2" is id 5), bos from config.json.
        assert_eq!((tc.vocab_size, tc.eos, tc.bos), (9, Some(5), Some(7)));
        assert_eq!(
            img.find("decoder.layers.0.mlp.up.weight").unwrap().dtype,
            DType::Q8_0
        );
    }

    // Writing over a shard of the input is refused.
    let shard = ckpt.join("model.safetensors");
    let before = std::fs::read(&shard).unwrap();
    let o = glimpse(&["convert", s(&ckpt), "-o", s(&shard)]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("overwrite a file of the input"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&shard).unwrap(), before);
}
