//! The converter's in-memory model: canonical tensors on their way into an image.
//!
//! Loaders (safetensors layouts, GGUF) produce a [`ConvertedModel`]; `convert::run`
//! attaches the tokenizer, quantizes per the recipe and writes the image.
//!
//! Canonical names (`s` = stage, `b` = block, `i` = decoder layer; shapes outermost first):
//!
//! ```text
//! vision.stem.0.{weight [O,kh,kw,I], bias [O]}          full 3x3 s2 conv, OHWI
//! vision.stem.1.{weight [kh,kw,C], bias}                 depthwise 3x3 s2, HWC
//! vision.stem.2.{weight [O,I], bias}                     1x1 conv as a matrix
//! vision.stages.{s}.down.lk.{weight [kh,kw,Co], bias}    7x7 s2 grouped (Co = 2 Ci; out o reads in o/2)
//! vision.stages.{s}.down.pw.{weight [Co,Co], bias}
//! vision.stages.{s}.pos.{weight [kh,kw,C], bias}         RepCPE, identity folded in
//! vision.stages.{s}.blocks.{b}.mixer.{weight [kh,kw,C], bias}      RepMixer (folded)
//! vision.stages.{s}.blocks.{b}.norm.{weight, bias} [C]             LayerNormChannel
//! vision.stages.{s}.blocks.{b}.attn.qkv.weight [3C,C]
//! vision.stages.{s}.blocks.{b}.attn.proj.{weight [C,C], bias}
//! vision.stages.{s}.blocks.{b}.attn_scale [C]
//! vision.stages.{s}.blocks.{b}.ffn.dw.{weight [kh,kw,C], bias}     BatchNorm folded in
//! vision.stages.{s}.blocks.{b}.ffn.fc1.{weight [H,C], bias}
//! vision.stages.{s}.blocks.{b}.ffn.fc2.{weight [C,H], bias}
//! vision.stages.{s}.blocks.{b}.ffn_scale [C]
//! vision.head.conv.{weight [kh,kw,Co], bias}             conv_exp, grouped (Co = 2 Ci)
//! vision.head.se.reduce.{weight [S,Co], bias}
//! vision.head.se.expand.{weight [Co,S], bias}
//! projector.fc1.{weight [H,In], bias}   projector.fc2.{weight [H,H], bias}
//! decoder.embed.weight [V,D]
//! decoder.layers.{i}.attn_norm.weight   decoder.layers.{i}.mlp_norm.weight
//! decoder.layers.{i}.attn.{q,k,v}.{weight [out,D], bias}   (bias only for Qwen2)
//! decoder.layers.{i}.attn.o.weight
//! decoder.layers.{i}.mlp.{gate,up,down}.weight
//! decoder.norm.weight
//! decoder.lm_head.weight [V,D]           only when the embeddings are not tied
//! tokenizer.*                            tables, see glimpse_quant::schema::TokenizerConfig
//! ```
//!
//! Depthwise/grouped kernels are stored HWC (channels innermost) because the core keeps
//! activations NHWC and vectorises those convs over channels.

use glimpse_quant::DType;
use glimpse_quant::schema::ModelConfig;

/// How a tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A matrix the recipe quantizes (linear / 1x1 conv / embedding weights). Falls back
    /// to the kept format when its innermost dimension is not a multiple of 32.
    Quantize,
    /// Never quantized: norms, biases, layer scales, depthwise and full conv kernels.
    Keep,
}

/// A numeric tensor with its canonical name, in f32.
#[derive(Clone, Debug)]
pub struct CanonTensor {
    /// Canonical name.
    pub name: String,
    /// Logical shape, outermost first.
    pub shape: Vec<u32>,
    /// Values, row-major.
    pub data: Vec<f32>,
    /// Storage role.
    pub role: Role,
}

/// A raw table (tokenizer data) stored as-is.
#[derive(Clone, Debug)]
pub struct CanonTable {
    /// Canonical name (`tokenizer.*`).
    pub name: String,
    /// `DType::U8` or `DType::U32`.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u32>,
    /// Little-endian payload.
    pub bytes: Vec<u8>,
}

/// Everything a loader produces.
#[derive(Clone, Debug)]
pub struct ConvertedModel {
    /// Config; `recipe` is filled in by `convert::run`, `tokenizer` by whoever finds one.
    pub config: ModelConfig,
    /// Numeric tensors.
    pub tensors: Vec<CanonTensor>,
    /// Tokenizer tables.
    pub tables: Vec<CanonTable>,
}
