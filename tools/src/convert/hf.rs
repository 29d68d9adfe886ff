//! HF safetensors checkpoints: finds shards and config, detects the layout (Apple/LLaVA
//! FastVLM, transformers `fast_vlm`, plain Qwen2/Llama) and assembles a [`ConvertedModel`].
//!
//! Every stored tensor must be consumed by the mapping (or be a known-unused classifier
//! head / BatchNorm counter), every expected tensor must exist, and every shape must be
//! the one the config implies; any other checkpoint is an error naming the tensor.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use glimpse_quant::DType;
use glimpse_quant::schema::{ModelConfig, ModelFamily, ProjectorConfig, QuantRecipe};
use serde_json::Value;

use super::fastvithd::{self, Naming};
use super::hf_config::{self, Obj, VisionSpec};
use super::hf_decoder::{self, DecoderSpec};
use super::hf_store::{self, Store};
use super::model::{CanonTensor, ConvertedModel, Role};

/// Apple LLaVA names (`LlavaQwen2ForCausalLM`).
const APPLE_VISION: &str = "model.vision_tower.vision_tower.model.";
/// transformers `FastVlmForConditionalGeneration` names.
const HF_VISION: &str = "model.vision_tower.timm_model.";

/// Which checkpoint layout we are reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `llava_qwen2` (Apple ml-fastvlm).
    Apple,
    /// `fast_vlm` (transformers).
    Transformers,
    /// `qwen2` / `llama` decoder only.
    Plain,
}

/// Load a checkpoint directory (config.json + shards, with or without an index) or a single
/// .safetensors file (config beside it or `config_override`) into canonical tensors.
pub fn load(input: &Path, config_override: Option<&Path>) -> Result<ConvertedModel> {
    let (files, config_path) = hf_store::resolve(input, config_override)?;
    let store = Store::open(&files)?;
    hf_store::check_index(input, &store)?;
    // BatchNorm step counters, and the RoPE frequencies older Llama checkpoints stored
    // (derived from rope_theta), carry nothing the image needs.
    let counters: Vec<String> = store
        .names()
        .filter(|n| n.ends_with(".num_batches_tracked") || n.ends_with(".rotary_emb.inv_freq"))
        .map(str::to_string)
        .collect();
    for n in &counters {
        store.ignore(n);
    }

    let cfg = config_path.as_deref().map(read_json).transpose()?;
    let side_dir = config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .or_else(|| checkpoint_dir(input));
    let side = |name: &str| -> Result<Option<Value>> {
        match &side_dir {
            Some(d) if d.join(name).is_file() => read_json(&d.join(name)).map(Some),
            _ => Ok(None),
        }
    };
    let gen_json = side("generation_config.json")?;
    let gen_cfg = Obj::new(gen_json.as_ref(), "generation_config.json")?;
    let top = Obj::new(cfg.as_ref(), "config.json")?;

    let layout = detect(cfg.as_ref(), top, &store)?;
    let mut tensors = Vec::new();
    let (vision, projector, decoder, image_token) = match layout {
        Layout::Apple => {
            let tower = top
                .str("mm_vision_tower")?
                .ok_or_else(|| anyhow!("config.json: missing mm_vision_tower"))?;
            if !tower.starts_with("mobileclip_l") {
                bail!("config.json.mm_vision_tower: `{tower}` is not FastViTHD (mobileclip_l_*)");
            }
            if let Some(t) = top.str("mm_projector_type")?
                && t != "mlp2x_gelu"
            {
                bail!("config.json.mm_projector_type: `{t}` is not supported (mlp2x_gelu only)");
            }
            let image_size = match top.u32("image_size")? {
                Some(s) => s,
                None => tower
                    .rsplit('_')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        anyhow!("config.json: no image_size and no resolution suffix on mm_vision_tower `{tower}`")
                    })?,
            };
            // Apple configs name only the tower; a `vision_config` with timm arguments
            // (Glimpse's extension for reduced test checkpoints) may override its shape.
            let vc = Obj::new(top.raw("vision_config"), "config.json.vision_config")?;
            let arch = vc.str("architecture")?.unwrap_or("fastvit_mci3");
            let args = Obj::new(vc.raw("model_args"), "config.json.vision_config.model_args")?;
            let spec = hf_config::vision_spec(arch, args, image_size)?;
            if let Some(h) = top.u32("mm_hidden_size")?
                && h != spec.out_dim
            {
                bail!(
                    "config.json.mm_hidden_size {h} differs from the vision output width {}",
                    spec.out_dim
                );
            }
            tensors.extend(fastvithd::load(&store, APPLE_VISION, Naming::Apple, &spec)?);
            let dspec = hf_decoder::spec(Some(top), "qwen2", &store, "model.", gen_cfg)?;
            let (proj, pcfg) = projector(
                &store,
                "model.mm_projector.0",
                "model.mm_projector.2",
                &spec,
                &dspec,
            )?;
            tensors.extend(proj);
            (Some(spec), Some(pcfg), dspec, top.u32("image_token_index")?)
        }
        Layout::Transformers => {
            let vc = Obj::new(top.raw("vision_config"), "config.json.vision_config")?;
            if let Some(t) = vc.str("model_type")?
                && t != "timm_wrapper"
            {
                bail!(
                    "config.json.vision_config.model_type: `{t}` is not supported (timm_wrapper)"
                );
            }
            let arch = vc.str("architecture")?.unwrap_or("fastvit_mci3");
            let args = Obj::new(vc.raw("model_args"), "config.json.vision_config.model_args")?;
            let image_size = match vc.u32("image_size")?.or(top.u32("image_size")?) {
                Some(s) => s,
                None => side("preprocessor_config.json")?
                    .as_ref()
                    .and_then(processor_size)
                    .unwrap_or(1024),
            };
            let spec = hf_config::vision_spec(arch, args, image_size)?;
            if let Some(h) = vc.u32("hidden_size")?
                && h != spec.out_dim
            {
                bail!(
                    "config.json.vision_config.hidden_size {h} differs from the vision output width {}",
                    spec.out_dim
                );
            }
            if let Some(s) = top.str("vision_feature_select_strategy")?
                && s != "full"
            {
                bail!("config.json.vision_feature_select_strategy: `{s}` is not supported (full)");
            }
            if let Some(l) = top.raw("vision_feature_layer")
                && l.as_i64() != Some(-1)
            {
                bail!("config.json.vision_feature_layer: {l} is not supported (-1)");
            }
            if let Some(a) = top.str("projector_hidden_act")?
                && a != "gelu"
            {
                bail!("config.json.projector_hidden_act: `{a}` is not supported (gelu)");
            }
            tensors.extend(fastvithd::load(&store, HF_VISION, Naming::Timm, &spec)?);
            let tc = Obj::new(top.raw("text_config"), "config.json.text_config")?;
            if tc.v.is_none() {
                bail!("config.json: missing text_config");
            }
            let text_type = tc.str("model_type")?.unwrap_or("qwen2");
            if text_type != "qwen2" && text_type != "llama" {
                bail!("config.json.text_config.model_type: `{text_type}` is not supported");
            }
            let mut dspec = hf_decoder::spec(
                Some(tc),
                text_type,
                &store,
                "model.language_model.",
                gen_cfg,
            )?;
            // FastVlmConfig forwards the text config's flag when its own is false.
            dspec.tie_config |= top.bool("tie_word_embeddings")?.unwrap_or(false);
            if dspec.eos.is_empty() {
                dspec.eos = top.ids("eos_token_id")?;
            }
            if dspec.bos.is_none() {
                dspec.bos = top.u32("bos_token_id")?;
            }
            let (proj, pcfg) = projector(
                &store,
                "model.multi_modal_projector.linear_1",
                "model.multi_modal_projector.linear_2",
                &spec,
                &dspec,
            )?;
            tensors.extend(proj);
            let image_token = match top.u32("image_token_id")? {
                Some(t) => t,
                None => top.u32("image_token_index")?.unwrap_or(151_646),
            };
            (Some(spec), Some(pcfg), dspec, Some(image_token))
        }
        Layout::Plain => {
            let model_type = top.str("model_type")?.unwrap_or("qwen2");
            let c = cfg.is_some().then_some(top);
            (
                None,
                None,
                hf_decoder::spec(c, model_type, &store, "model.", gen_cfg)?,
                None,
            )
        }
    };
    let dec_prefix = if layout == Layout::Transformers {
        "model.language_model."
    } else {
        "model."
    };
    let (dec_tensors, tied) = hf_decoder::load(&store, dec_prefix, "lm_head.weight", &decoder)?;
    tensors.extend(dec_tensors);

    let unused = store.unused();
    if !unused.is_empty() {
        let shown: Vec<&str> = unused.iter().take(8).map(String::as_str).collect();
        bail!(
            "{} unknown tensor{} in the checkpoint: {}{}",
            unused.len(),
            if unused.len() == 1 { "" } else { "s" },
            shown
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            if unused.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }

    let family = if vision.is_some() {
        ModelFamily::FastVlm
    } else {
        ModelFamily::TextOnly
    };
    let config = ModelConfig {
        name: model_name(top, input)?,
        family,
        vision: vision.as_ref().map(fastvithd::vision_config).transpose()?,
        projector,
        decoder: Some(hf_decoder::decoder_config(&decoder, tied, image_token)?),
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::Q8_0,
            kept: DType::F32,
            source: source_tag(&store),
        },
    };
    Ok(ConvertedModel {
        config,
        tensors,
        tables: Vec::new(),
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The directory a checkpoint input lives in.
fn checkpoint_dir(input: &Path) -> Option<PathBuf> {
    if input.is_dir() {
        Some(input.to_path_buf())
    } else {
        input.parent().map(Path::to_path_buf)
    }
}

/// The square input size a CLIP image processor config crops to.
fn processor_size(v: &Value) -> Option<u32> {
    let get = |key: &str| -> Option<u64> {
        let x = v.get(key)?;
        x.as_u64()
            .or_else(|| x.get("height").and_then(Value::as_u64))
            .or_else(|| x.get("shortest_edge").and_then(Value::as_u64))
    };
    get("crop_size")
        .or_else(|| get("size"))
        .and_then(|s| u32::try_from(s).ok())
}

fn detect(cfg: Option<&Value>, top: Obj<'_>, store: &Store) -> Result<Layout> {
    let has_prefix = |p: &str| store.names_with_prefix(p).next().is_some();
    if cfg.is_none() {
        for p in [
            "model.vision_tower.",
            "model.mm_projector.",
            "model.multi_modal_projector.",
            "model.language_model.",
        ] {
            if has_prefix(p) {
                bail!(
                    "FastVLM checkpoint without config.json: the config gives the image size, the \
                     decoder's attention heads, RoPE base, norm epsilon and special token ids, which the \
                     tensors do not; put config.json beside it or pass --config"
                );
            }
        }
        if store.has("model.embed_tokens.weight") {
            return Ok(Layout::Plain);
        }
        bail!("unrecognised checkpoint layout (no config.json and no `model.embed_tokens.weight`)");
    }
    let mt = top
        .str("model_type")?
        .ok_or_else(|| anyhow!("config.json: missing model_type"))?;
    match mt {
        "llava_qwen2" => Ok(Layout::Apple),
        "fast_vlm" => Ok(Layout::Transformers),
        "qwen2" | "llama" => Ok(Layout::Plain),
        other => bail!(
            "config.json.model_type: `{other}` is not supported (llava_qwen2, fast_vlm, qwen2, llama)"
        ),
    }
}

/// The `mlp2x_gelu` projector: Linear(in, H) -> GELU -> Linear(H, H).
fn projector(
    store: &Store,
    fc1: &str,
    fc2: &str,
    vision: &VisionSpec,
    dec: &DecoderSpec,
) -> Result<(Vec<CanonTensor>, ProjectorConfig)> {
    let (i, h) = (vision.out_dim as usize, dec.hidden as usize);
    let mut out = Vec::new();
    for (src, dst, shape) in [
        (fc1, "projector.fc1", [h, i]),
        (fc2, "projector.fc2", [h, h]),
    ] {
        out.push(CanonTensor {
            name: format!("{dst}.weight"),
            shape: shape.iter().map(|&x| x as u32).collect(),
            data: store.f32(&format!("{src}.weight"), &shape)?,
            role: Role::Quantize,
        });
        out.push(CanonTensor {
            name: format!("{dst}.bias"),
            shape: vec![h as u32],
            data: store.f32(&format!("{src}.bias"), &[h])?,
            role: Role::Keep,
        });
    }
    Ok((
        out,
        ProjectorConfig {
            in_dim: vision.out_dim,
            hidden_dim: dec.hidden,
            out_dim: dec.hidden,
        },
    ))
}

/// `_name_or_path`'s last component, else the checkpoint directory's (or file's) name,
/// cut at a character boundary to fit.
fn model_name(top: Obj<'_>, input: &Path) -> Result<heapless::String<64>> {
    let from_cfg = top
        .str("_name_or_path")?
        .and_then(|s| s.trim_end_matches('/').rsplit('/').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let from_path = || {
        let p = if input.is_dir() {
            input
                .canonicalize()
                .ok()
                .and_then(|c| c.file_name().map(|s| s.to_os_string()))
        } else {
            input.file_stem().map(|s| s.to_os_string())
        };
        p.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let full = from_cfg.unwrap_or_else(from_path);
    let mut name = heapless::String::new();
    for ch in full.chars() {
        if name.push(ch).is_err() {
            break;
        }
    }
    Ok(name)
}

fn source_tag(store: &Store) -> heapless::String<32> {
    let d = store
        .dominant_dtype()
        .map(|d| d.to_string().to_lowercase())
        .unwrap_or_default();
    let mut s = heapless::String::new();
    for ch in format!("safetensors:{d}").chars() {
        if s.push(ch).is_err() {
            break;
        }
    }
    s
}
