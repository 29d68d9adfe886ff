//! The text decoder of an HF checkpoint (Qwen2 / Llama names under a prefix): its
//! config, shape checks, canonical tensors and the tied-embedding decision.

use anyhow::{Result, anyhow, bail};
use glimpse_quant::schema::{DecoderArch, DecoderConfig, MAX_EOS};

use super::hf_config::Obj;
use super::hf_store::Store;
use super::model::{CanonTensor, Role};

/// Everything needed to read and describe the decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderSpec {
    /// Architecture (from the q/k/v biases).
    pub arch: DecoderArch,
    /// Model width.
    pub hidden: u32,
    /// Layers.
    pub layers: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Head width.
    pub head_dim: u32,
    /// MLP width.
    pub intermediate: u32,
    /// Embedding rows.
    pub vocab: u32,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Trained context.
    pub max_positions: u32,
    /// What the config says about tying (the stored tensors decide together with it).
    pub tie_config: bool,
    /// BOS id.
    pub bos: Option<u32>,
    /// EOS ids, deduplicated, config first.
    pub eos: Vec<u32>,
}

fn warn(msg: &str) {
    eprintln!("warning: {msg}");
}

/// Read the decoder fields of `cfg` (a flat HF text config; `None` when the checkpoint
/// came without config.json), checking them against the stored shapes under `prefix`.
/// `gen_cfg` is generation_config.json, whose EOS ids `generate()` also stops on.
pub fn spec(
    cfg: Option<Obj<'_>>,
    model_type: &str,
    store: &Store,
    prefix: &str,
    gen_cfg: Obj<'_>,
) -> Result<DecoderSpec> {
    let embed = format!("{prefix}embed_tokens.weight");
    let shape = |name: &str| -> Result<Vec<usize>> {
        store
            .shape(name)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| anyhow!("missing tensor `{name}`"))
    };
    let es = shape(&embed)?;
    if es.len() != 2 {
        bail!("tensor `{embed}`: expected 2 dimensions, found shape {es:?}");
    }
    let q_name = format!("{prefix}layers.0.self_attn.q_proj.weight");
    let k_name = format!("{prefix}layers.0.self_attn.k_proj.weight");
    let gate = format!("{prefix}layers.0.mlp.gate_proj.weight");
    let qkv_bias = store.has(&format!("{prefix}layers.0.self_attn.q_proj.bias"));
    let arch = if qkv_bias {
        DecoderArch::Qwen2
    } else {
        DecoderArch::Llama
    };
    let u32_of =
        |x: usize, what: &str| u32::try_from(x).map_err(|_| anyhow!("{what} {x} too large"));

    let spec = match cfg {
        Some(c) => {
            let hidden = c
                .u32("hidden_size")?
                .map_or_else(|| u32_of(es[1], "hidden"), Ok)?;
            let layers = match c.u32("num_hidden_layers")? {
                Some(n) => n,
                None => count_layers(store, prefix),
            };
            let heads = c
                .u32("num_attention_heads")?
                .ok_or_else(|| anyhow!("{}: missing num_attention_heads", c.path))?;
            let kv_heads = c.u32("num_key_value_heads")?.unwrap_or(heads);
            if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
                bail!(
                    "{}: {heads} attention heads cannot share {kv_heads} KV heads",
                    c.path
                );
            }
            let head_dim = match c.u32("head_dim")? {
                Some(h) => h,
                None if hidden.is_multiple_of(heads) => hidden / heads,
                None => bail!(
                    "{}: hidden_size {hidden} is not a multiple of {heads} heads",
                    c.path
                ),
            };
            let intermediate = match c.u32("intermediate_size")? {
                Some(n) => n,
                None => u32_of(shape(&gate)?.first().copied().unwrap_or(0), "intermediate")?,
            };
            let vocab = c
                .u32("vocab_size")?
                .map_or_else(|| u32_of(es[0], "vocab"), Ok)?;
            // transformers 5 moved RoPE settings into `rope_parameters`.
            let rope = Obj::new(c.raw("rope_parameters"), "rope_parameters")?;
            let rope_theta = match c.f64("rope_theta")? {
                Some(t) => t,
                None => rope.f64("rope_theta")?.unwrap_or(10_000.0),
            };
            let scaling = Obj::new(c.raw("rope_scaling"), "rope_scaling")?;
            for r in [rope, scaling] {
                let ty = match r.str("rope_type")? {
                    Some(t) => Some(t),
                    None => r.str("type")?,
                };
                if let Some(t) = ty
                    && t != "default"
                {
                    bail!("{}.{}: RoPE scaling `{t}` is not supported", c.path, r.path);
                }
            }
            if let Some(act) = c.str("hidden_act")?
                && act != "silu"
            {
                bail!(
                    "{}.hidden_act: `{act}` is not supported (SwiGLU with silu only)",
                    c.path
                );
            }
            if c.bool("mlp_bias")? == Some(true) {
                bail!("{}.mlp_bias: MLP biases are not supported", c.path);
            }
            if c.bool("use_sliding_window")? == Some(true) {
                bail!(
                    "{}.use_sliding_window: sliding-window attention is not supported",
                    c.path
                );
            }
            let default_positions = if model_type == "llama" { 2048 } else { 32_768 };
            DecoderSpec {
                arch,
                hidden,
                layers,
                heads,
                kv_heads,
                head_dim,
                intermediate,
                vocab,
                rope_theta,
                norm_eps: c.f64("rms_norm_eps")?.unwrap_or(1e-6),
                max_positions: c
                    .u32("max_position_embeddings")?
                    .unwrap_or(default_positions),
                tie_config: c.bool("tie_word_embeddings")?.unwrap_or(false),
                bos: c.u32("bos_token_id")?.or(gen_cfg.u32("bos_token_id")?),
                eos: merge_eos(c.ids("eos_token_id")?, gen_cfg.ids("eos_token_id")?),
            }
        }
        None => {
            let q = shape(&q_name)?;
            let k = shape(&k_name)?;
            let (q_out, kv_out) = (
                q.first().copied().unwrap_or(0),
                k.first().copied().unwrap_or(0),
            );
            // Shapes give widths but not the head split; 64 and 128 are the common widths.
            let head_dim = [64usize, 128]
                .into_iter()
                .find(|&h| q_out.is_multiple_of(h) && kv_out.is_multiple_of(h) && kv_out > 0)
                .ok_or_else(|| {
                    anyhow!(
                        "no config.json: cannot infer the attention head split from q/k widths \
                         {q_out}/{kv_out}; pass --config"
                    )
                })?;
            let spec = DecoderSpec {
                arch,
                hidden: u32_of(es[1], "hidden")?,
                layers: count_layers(store, prefix),
                heads: u32_of(q_out / head_dim, "heads")?,
                kv_heads: u32_of(kv_out / head_dim, "kv heads")?,
                head_dim: u32_of(head_dim, "head dim")?,
                intermediate: u32_of(shape(&gate)?.first().copied().unwrap_or(0), "intermediate")?,
                vocab: u32_of(es[0], "vocab")?,
                rope_theta: 10_000.0,
                norm_eps: 1e-6,
                max_positions: 2048,
                tie_config: false,
                bos: gen_cfg.u32("bos_token_id")?,
                eos: merge_eos(Vec::new(), gen_cfg.ids("eos_token_id")?),
            };
            warn(&format!(
                "no config.json: inferred hidden {}, {} layers, vocab {}, MLP {} from tensor shapes; \
                 ASSUMED head_dim {head_dim} ({} heads, {} KV heads), rope_theta 10000, rms_norm_eps 1e-6, \
                 max_position_embeddings 2048{} -- pass --config to set them",
                spec.hidden,
                spec.layers,
                spec.vocab,
                spec.intermediate,
                spec.heads,
                spec.kv_heads,
                if spec.eos.is_empty() {
                    ", no EOS id"
                } else {
                    ""
                },
            ));
            spec
        }
    };
    if spec.layers == 0 {
        bail!("decoder has no layers (no `{prefix}layers.0.*` tensors)");
    }
    if spec.kv_heads == 0 || !spec.heads.is_multiple_of(spec.kv_heads) {
        bail!(
            "{} attention heads cannot share {} KV heads",
            spec.heads,
            spec.kv_heads
        );
    }
    if let Some(b) = spec.bos
        && b >= spec.vocab
    {
        bail!(
            "bos_token_id {b} is outside the vocabulary of {}",
            spec.vocab
        );
    }
    if let Some(e) = spec.eos.iter().find(|&&e| e >= spec.vocab) {
        bail!(
            "eos_token_id {e} is outside the vocabulary of {}",
            spec.vocab
        );
    }
    Ok(spec)
}

fn merge_eos(mut first: Vec<u32>, more: Vec<u32>) -> Vec<u32> {
    for e in more {
        if !first.contains(&e) {
            first.push(e);
        }
    }
    if first.len() > MAX_EOS {
        warn(&format!(
            "{} EOS ids; keeping the first {MAX_EOS}: {:?}",
            first.len(),
            &first[..MAX_EOS]
        ));
        first.truncate(MAX_EOS);
    }
    first
}

fn count_layers(store: &Store, prefix: &str) -> u32 {
    let mut n = 0;
    while store.has(&format!("{prefix}layers.{n}.input_layernorm.weight")) {
        n += 1;
    }
    n
}

/// Read the decoder's tensors. `lm_head` is the stored output matrix's name. Returns the
/// tensors and whether the embeddings are tied (no `decoder.lm_head.weight` emitted).
pub fn load(
    store: &Store,
    prefix: &str,
    lm_head: &str,
    spec: &DecoderSpec,
) -> Result<(Vec<CanonTensor>, bool)> {
    let (d, v, i) = (
        spec.hidden as usize,
        spec.vocab as usize,
        spec.intermediate as usize,
    );
    let q = (spec.heads * spec.head_dim) as usize;
    let kv = (spec.kv_heads * spec.head_dim) as usize;
    let mut out = Vec::new();
    let mut take = |src: String, dst: String, shape: &[usize], role: Role| -> Result<()> {
        let data = store.f32(&src, shape)?;
        out.push(CanonTensor {
            name: dst,
            shape: shape.iter().map(|&x| x as u32).collect(),
            data,
            role,
        });
        Ok(())
    };
    take(
        format!("{prefix}embed_tokens.weight"),
        "decoder.embed.weight".into(),
        &[v, d],
        Role::Quantize,
    )?;
    for l in 0..spec.layers {
        let s = format!("{prefix}layers.{l}.");
        let t = format!("decoder.layers.{l}.");
        take(
            format!("{s}input_layernorm.weight"),
            format!("{t}attn_norm.weight"),
            &[d],
            Role::Keep,
        )?;
        take(
            format!("{s}post_attention_layernorm.weight"),
            format!("{t}mlp_norm.weight"),
            &[d],
            Role::Keep,
        )?;
        for (n, rows) in [("q", q), ("k", kv), ("v", kv)] {
            take(
                format!("{s}self_attn.{n}_proj.weight"),
                format!("{t}attn.{n}.weight"),
                &[rows, d],
                Role::Quantize,
            )?;
            if spec.arch == DecoderArch::Qwen2 {
                take(
                    format!("{s}self_attn.{n}_proj.bias"),
                    format!("{t}attn.{n}.bias"),
                    &[rows],
                    Role::Keep,
                )?;
            }
        }
        take(
            format!("{s}self_attn.o_proj.weight"),
            format!("{t}attn.o.weight"),
            &[d, q],
            Role::Quantize,
        )?;
        take(
            format!("{s}mlp.gate_proj.weight"),
            format!("{t}mlp.gate.weight"),
            &[i, d],
            Role::Quantize,
        )?;
        take(
            format!("{s}mlp.up_proj.weight"),
            format!("{t}mlp.up.weight"),
            &[i, d],
            Role::Quantize,
        )?;
        take(
            format!("{s}mlp.down_proj.weight"),
            format!("{t}mlp.down.weight"),
            &[d, i],
            Role::Quantize,
        )?;
    }
    take(
        format!("{prefix}norm.weight"),
        "decoder.norm.weight".into(),
        &[d],
        Role::Keep,
    )?;

    let tied = if !store.has(lm_head) {
        if !spec.tie_config {
            warn(
                "config says tie_word_embeddings=false but there is no lm_head.weight; using tied embeddings",
            );
        }
        true
    } else if spec.tie_config {
        // transformers ties after loading, so a stored lm_head is overwritten by the
        // embeddings; do the same, but say so if they differ.
        let head = store.f32(lm_head, &[v, d])?;
        let embed = &out[0].data;
        let differ = head
            .iter()
            .zip(embed)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        if differ > 0 {
            warn(&format!(
                "tie_word_embeddings=true but `{lm_head}` differs from the embeddings in {differ} of {} \
                 values; using the embeddings as transformers does",
                head.len()
            ));
        }
        true
    } else {
        let head = store.f32(lm_head, &[v, d])?;
        out.push(CanonTensor {
            name: "decoder.lm_head.weight".into(),
            shape: vec![v as u32, d as u32],
            data: head,
            role: Role::Quantize,
        });
        false
    };
    Ok((out, tied))
}

/// The image-layout description.
pub fn decoder_config(
    spec: &DecoderSpec,
    tied: bool,
    image_token_id: Option<u32>,
) -> Result<DecoderConfig> {
    let mut eos = heapless::Vec::new();
    for &e in spec.eos.iter().take(MAX_EOS) {
        eos.push(e).map_err(|_| anyhow!("too many EOS ids"))?;
    }
    if let Some(t) = image_token_id
        && t >= spec.vocab
    {
        bail!(
            "image token id {t} is outside the vocabulary of {}",
            spec.vocab
        );
    }
    Ok(DecoderConfig {
        arch: spec.arch,
        hidden: spec.hidden,
        layers: spec.layers,
        heads: spec.heads,
        kv_heads: spec.kv_heads,
        head_dim: spec.head_dim,
        intermediate: spec.intermediate,
        vocab: spec.vocab,
        rope_theta: spec.rope_theta as f32,
        norm_eps: spec.norm_eps as f32,
        max_positions: spec.max_positions,
        tied_embeddings: tied,
        qkv_bias: spec.arch == DecoderArch::Qwen2,
        image_token_id,
        bos_token_id: spec.bos,
        eos_token_ids: eos,
    })
}
