//! GGUF checkpoints of the `llama` and `qwen2` architectures: tensor names mapped onto
//! the canonical ones, the decoder config from the `{arch}.*` keys, llama.cpp's rope row
//! order undone, the tokenizer from the metadata. The container itself (the header,
//! [`GgufHeader`], and the file, [`GgufFile`]) is parsed in `container.rs`.

mod container;

pub use container::*;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use glimpse_quant::DType;
use glimpse_quant::gguf::GgmlType;
use glimpse_quant::schema::{
    DecoderArch, DecoderConfig, MAX_EOS, ModelConfig, ModelFamily, QuantRecipe,
};

use super::model::{CanonTensor, ConvertedModel, Role};
use super::quantize::par_map;
use super::{tokenizer, truncate_str};

/// Undo llama.cpp's reordering of the rows of `attn_q` / `attn_k` for the `llama`
/// architecture.
///
/// Hugging Face Llama checkpoints rotate pairs `(i, i + d/2)` of each head (rotate-half,
/// "NEOX" style); llama.cpp's `llama` graph rotates adjacent pairs `(2i, 2i + 1)` (GGML
/// "NORM" rope). So `convert_hf_to_gguf.py` (`LlamaModel.permute`) rewrites each head's
/// rows with `reshape(n_head, 2, d/2, ...).swapaxes(1, 2)`: GGUF row `2j + t` of a head
/// holds HF row `t * d/2 + j`. Our decoder uses rotate-half, so we put every row back.
/// `qwen2` needs nothing: llama.cpp runs it with NEOX rope on the unpermuted HF rows.
///
/// `data` is `[n_head * head_dim, cols]` row-major (biases: `cols` = 1).
pub fn unpermute_rope_rows(data: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    let rows = rope_rows(data, n_head, cols)?;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        let base = h * 2 * half;
        for j in 0..half {
            for t in 0..2 {
                let src = (base + 2 * j + t) * cols;
                let dst = (base + t * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

/// The reordering llama.cpp applies (the inverse of [`unpermute_rope_rows`]); used by
/// tests and by anything that writes GGUF-ordered rows.
pub fn permute_rope_rows(data: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    let rows = rope_rows(data, n_head, cols)?;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        let base = h * 2 * half;
        for j in 0..half {
            for t in 0..2 {
                let src = (base + t * half + j) * cols;
                let dst = (base + 2 * j + t) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

fn rope_rows(data: &[f32], n_head: usize, cols: usize) -> Result<usize> {
    ensure!(
        n_head > 0 && cols > 0,
        "rope permutation needs heads and columns"
    );
    ensure!(
        data.len().is_multiple_of(cols),
        "rope permutation: {} values are not rows of {cols}",
        data.len()
    );
    let rows = data.len() / cols;
    ensure!(
        rows.is_multiple_of(2 * n_head),
        "rope permutation: {rows} rows do not split into {n_head} heads of even width"
    );
    Ok(rows)
}

/// What a GGUF tensor becomes.
struct Mapped {
    canon: String,
    role: Role,
    /// Heads whose rope rows need un-permuting (llama q/k).
    unpermute_heads: Option<u32>,
}

fn map_name(name: &str, arch: DecoderArch, heads: u32, kv_heads: u32) -> Option<Mapped> {
    let plain = |canon: &str, role| {
        Some(Mapped {
            canon: canon.to_string(),
            role,
            unpermute_heads: None,
        })
    };
    match name {
        "token_embd.weight" => return plain("decoder.embed.weight", Role::Quantize),
        "output_norm.weight" => return plain("decoder.norm.weight", Role::Keep),
        "output.weight" => return plain("decoder.lm_head.weight", Role::Quantize),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer_str, rest) = rest.split_once('.')?;
    let layer: u32 = layer_str.parse().ok()?;
    // `blk.01` would alias `blk.1`; llama.cpp never writes it, so treat it as unknown.
    if layer.to_string() != layer_str {
        return None;
    }
    let (part, kind) = rest.rsplit_once('.')?;
    let role = match kind {
        "weight" => Role::Quantize,
        "bias" => Role::Keep,
        _ => return None,
    };
    let (canon_part, role, heads) = match (part, kind) {
        ("attn_norm", "weight") => ("attn_norm", Role::Keep, None),
        ("ffn_norm", "weight") => ("mlp_norm", Role::Keep, None),
        ("attn_q", _) => ("attn.q", role, Some(heads)),
        ("attn_k", _) => ("attn.k", role, Some(kv_heads)),
        ("attn_v", _) => ("attn.v", role, None),
        ("attn_output", "weight") => ("attn.o", role, None),
        ("ffn_gate", "weight") => ("mlp.gate", role, None),
        ("ffn_up", "weight") => ("mlp.up", role, None),
        ("ffn_down", "weight") => ("mlp.down", role, None),
        _ => return None,
    };
    Some(Mapped {
        canon: format!("decoder.layers.{layer}.{canon_part}.{kind}"),
        role,
        unpermute_heads: if arch == DecoderArch::Llama {
            heads
        } else {
            None
        },
    })
}

/// Build the decoder config from `{arch}.*` keys.
fn decoder_config(h: &GgufHeader, arch: DecoderArch, prefix: &str) -> Result<DecoderConfig> {
    let m = &h.metadata;
    let key = |k: &str| format!("{prefix}.{k}");
    let hidden = m.req_u32(&key("embedding_length"))?;
    let layers = m.req_u32(&key("block_count"))?;
    let heads = m.req_u32(&key("attention.head_count"))?;
    let kv_heads = match m.u64(&key("attention.head_count_kv"))? {
        Some(v) => u32::try_from(v)?,
        None => heads,
    };
    ensure!(
        heads > 0 && kv_heads > 0,
        "GGUF head counts must be positive"
    );
    ensure!(
        heads.is_multiple_of(kv_heads),
        "{heads} query heads do not divide into {kv_heads} key/value heads"
    );
    let head_dim = match m.u64(&key("attention.key_length"))? {
        Some(v) => u32::try_from(v)?,
        None => {
            ensure!(
                hidden.is_multiple_of(heads),
                "embedding_length {hidden} is not a multiple of {heads} heads"
            );
            hidden / heads
        }
    };
    if let Some(v) = m.u64(&key("attention.value_length"))? {
        ensure!(
            v == u64::from(head_dim),
            "value_length {v} differs from key_length {head_dim}: not supported"
        );
    }
    if let Some(rd) = m.u64(&key("rope.dimension_count"))? {
        ensure!(
            rd == u64::from(head_dim),
            "partial rotary embeddings (rope.dimension_count {rd} < head_dim {head_dim}) are not supported"
        );
    }
    ensure!(
        head_dim.is_multiple_of(2),
        "head_dim {head_dim} must be even for RoPE"
    );
    let intermediate = m.req_u32(&key("feed_forward_length"))?;
    let rope_theta = m.f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
    let norm_eps = m
        .f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            anyhow!(
                "GGUF metadata lacks `{}`",
                key("attention.layer_norm_rms_epsilon")
            )
        })? as f32;
    let max_positions = m.req_u32(&key("context_length"))?;
    let embd = h
        .tensor("token_embd.weight")
        .ok_or_else(|| anyhow!("GGUF file has no `token_embd.weight`"))?;
    let shape = embd.shape()?;
    ensure!(
        shape.len() == 2 && shape[1] == hidden,
        "token_embd.weight has shape {shape:?}, expected [vocab, {hidden}]"
    );
    let vocab = shape[0];
    let tied = h.tensor("output.weight").is_none();
    let qkv_bias = h.tensor("blk.0.attn_q.bias").is_some();

    let bos = m
        .u64("tokenizer.ggml.bos_token_id")?
        .map(u32::try_from)
        .transpose()?;
    let mut eos_ids = heapless::Vec::<u32, MAX_EOS>::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = m.u64(k)? {
            let id = u32::try_from(id)?;
            if !eos_ids.contains(&id) {
                let _ = eos_ids.push(id);
            }
        }
    }
    Ok(DecoderConfig {
        arch,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        vocab,
        rope_theta,
        norm_eps,
        max_positions,
        tied_embeddings: tied,
        qkv_bias,
        image_token_id: None,
        bos_token_id: bos,
        eos_token_ids: eos_ids,
    })
}

/// Expected shape (outermost first) of a canonical decoder tensor.
fn expected_shape(canon: &str, d: &DecoderConfig) -> Option<Vec<u32>> {
    let q = d.heads * d.head_dim;
    let kv = d.kv_heads * d.head_dim;
    let (hidden, inter, vocab) = (d.hidden, d.intermediate, d.vocab);
    Some(match canon {
        "decoder.embed.weight" | "decoder.lm_head.weight" => vec![vocab, hidden],
        "decoder.norm.weight" => vec![hidden],
        _ => {
            let rest = canon.strip_prefix("decoder.layers.")?;
            let (_, part) = rest.split_once('.')?;
            match part {
                "attn_norm.weight" | "mlp_norm.weight" => vec![hidden],
                "attn.q.weight" => vec![q, hidden],
                "attn.k.weight" | "attn.v.weight" => vec![kv, hidden],
                "attn.q.bias" => vec![q],
                "attn.k.bias" | "attn.v.bias" => vec![kv],
                "attn.o.weight" => vec![hidden, q],
                "mlp.gate.weight" | "mlp.up.weight" => vec![inter, hidden],
                "mlp.down.weight" => vec![hidden, inter],
                _ => return None,
            }
        }
    })
}

/// Name of the most common GGML type among the matrices, for the recipe's source.
fn dominant_type(h: &GgufHeader) -> String {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for t in h.tensors.iter().filter(|t| t.dims.len() >= 2) {
        *counts.entry(t.ggml_type).or_default() += 1;
    }
    let best = counts
        .iter()
        .max_by_key(|&(code, n)| (*n, std::cmp::Reverse(*code)));
    match best.map(|(&c, _)| GgmlType::from_u32(c)) {
        Some(Ok(ty)) => format!("{ty:?}"),
        Some(Err(_)) => "unknown".to_string(),
        None => "none".to_string(),
    }
}

/// Load a `llama` or `qwen2` GGUF decoder, with its tokenizer when the metadata has one.
pub fn load(path: &Path) -> Result<ConvertedModel> {
    load_noted(path, true).map(|(m, _)| m)
}

/// [`load`], also returning notes worth showing the user (tokenizer oddities). With
/// `read_tokenizer` false the tokenizer metadata is not even looked at (the caller brings
/// its own).
pub fn load_noted(path: &Path, read_tokenizer: bool) -> Result<(ConvertedModel, Vec<String>)> {
    let file = GgufFile::open(path)?;
    let h = &file.header;
    let m = &h.metadata;
    let arch_name = m
        .str("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF metadata lacks `general.architecture`"))?;
    let arch = match arch_name {
        "llama" => DecoderArch::Llama,
        "qwen2" => DecoderArch::Qwen2,
        other => bail!("GGUF architecture `{other}` is not supported (supported: llama, qwen2)"),
    };
    let dec = decoder_config(h, arch, arch_name)?;

    // Map every tensor first, so an unknown one fails before any decoding work.
    let mut jobs = Vec::with_capacity(h.tensors.len());
    let mut unknown = Vec::new();
    for t in &h.tensors {
        match map_name(&t.name, arch, dec.heads, dec.kv_heads) {
            Some(mp) => {
                if let Some(layer) = mp.canon.strip_prefix("decoder.layers.")
                    && let Some(i) = layer.split('.').next().and_then(|s| s.parse::<u32>().ok())
                    && i >= dec.layers
                {
                    bail!(
                        "tensor `{}` belongs to layer {i} but block_count is {}",
                        t.name,
                        dec.layers
                    );
                }
                let shape = t.shape()?;
                let want = expected_shape(&mp.canon, &dec)
                    .ok_or_else(|| anyhow!("no expected shape for `{}`", mp.canon))?;
                ensure!(
                    shape == want,
                    "tensor `{}` has shape {shape:?} (outermost first), expected {want:?} from the metadata",
                    t.name
                );
                jobs.push((t, mp, shape));
            }
            None => unknown.push(t.name.clone()),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "GGUF file has tensors this converter does not know: {}",
            unknown.join(", ")
        );
    }
    let mut required = vec![
        "decoder.embed.weight".to_string(),
        "decoder.norm.weight".to_string(),
    ];
    for i in 0..dec.layers {
        for p in [
            "attn_norm.weight",
            "mlp_norm.weight",
            "attn.q.weight",
            "attn.k.weight",
            "attn.v.weight",
            "attn.o.weight",
            "mlp.gate.weight",
            "mlp.up.weight",
            "mlp.down.weight",
        ] {
            required.push(format!("decoder.layers.{i}.{p}"));
        }
        if dec.qkv_bias {
            for p in ["attn.q.bias", "attn.k.bias", "attn.v.bias"] {
                required.push(format!("decoder.layers.{i}.{p}"));
            }
        }
    }
    let present: std::collections::HashSet<&str> =
        jobs.iter().map(|(_, mp, _)| mp.canon.as_str()).collect();
    let missing: Vec<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| !present.contains(r))
        .collect();
    if !missing.is_empty() {
        bail!("GGUF file lacks tensors: {}", missing.join(", "));
    }

    let decoded = par_map(&jobs, |(t, mp, shape)| -> Result<CanonTensor> {
        let mut data = file.tensor_f32(t)?;
        if let Some(n_head) = mp.unpermute_heads {
            let cols = if shape.len() == 2 {
                shape[1] as usize
            } else {
                1
            };
            data = unpermute_rope_rows(&data, n_head as usize, cols)
                .with_context(|| format!("tensor `{}`", t.name))?;
        }
        Ok(CanonTensor {
            name: mp.canon.clone(),
            shape: shape.clone(),
            data,
            role: mp.role,
        })
    });
    let tensors = decoded.into_iter().collect::<Result<Vec<_>>>()?;

    let name = m.str("general.name")?.unwrap_or(arch_name);
    let source = format!("gguf:{}", dominant_type(h));
    let mut config = ModelConfig {
        name: truncate_str(name),
        family: ModelFamily::TextOnly,
        vision: None,
        projector: None,
        decoder: Some(dec),
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::F32,
            kept: DType::F32,
            source: truncate_str(&source),
        },
    };
    let mut tables = Vec::new();
    let mut notes = Vec::new();
    if read_tokenizer && let Some(tok) = tokenizer::from_gguf(m)? {
        config.tokenizer = Some(tok.config);
        tables = tok.tables;
        notes = tok.notes;
    }
    Ok((
        ConvertedModel {
            config,
            tensors,
            tables,
        },
        notes,
    ))
}
