//! The model schema: what a `.glim` model is (family, vision stages, projector, decoder,
//! tokenizer, chat template, quantization recipe), postcard-encoded in the file's config
//! region. The bytes around it (header, tensor table, payload placement) are
//! [`crate::layout`]'s.

use serde::{Deserialize, Serialize};

use crate::layout::DType;

/// Most vision stages a config may describe.
pub const MAX_STAGES: usize = 8;

/// Everything the core needs to know about the model before it looks at a tensor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Human-readable model name (from the checkpoint), truncated to fit.
    pub name: heapless::String<64>,
    /// What kind of model the image holds.
    pub family: ModelFamily,
    /// FastViTHD vision encoder, for VLM images.
    pub vision: Option<VisionConfig>,
    /// Vision-to-text projector, for VLM images.
    pub projector: Option<ProjectorConfig>,
    /// Text decoder.
    pub decoder: Option<DecoderConfig>,
    /// Byte-level BPE tokenizer, when the checkpoint carried one.
    pub tokenizer: Option<TokenizerConfig>,
    /// How the converter quantized the weights.
    pub recipe: QuantRecipe,
}

/// Model families the runtime knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ModelFamily {
    /// FastViTHD + mlp2x_gelu projector + decoder.
    FastVlm,
    /// Decoder only.
    TextOnly,
}

/// FastViTHD (timm `fastvit_mci3` family) structure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// Native square input resolution in pixels (a multiple of `stride()`).
    pub image_size: u32,
    /// Input channels (3).
    pub in_channels: u32,
    /// Stages, in order. Stage 0 follows the stem; every later stage starts with a
    /// PatchEmbed downsampler from the previous stage's width.
    pub stages: heapless::Vec<VisionStage, MAX_STAGES>,
    /// MHSA head dimension (32).
    pub head_dim: u32,
    /// Kernel of the RepMixer depthwise conv (3).
    pub mixer_kernel: u32,
    /// Kernel of the ConvFFN depthwise conv (7).
    pub ffn_kernel: u32,
    /// Kernel of the PatchEmbed large-kernel conv (7).
    pub down_kernel: u32,
    /// Kernel of the RepCPE conv (7).
    pub pos_kernel: u32,
    /// Output channels of the final `conv_exp` (3072 for FastViTHD).
    pub out_dim: u32,
    /// Hidden width of the squeeze-excite in `conv_exp` (192); 0 = no SE.
    pub se_dim: u32,
    /// Epsilon of LayerNormChannel (and of the folded BatchNorms), 1e-5.
    pub norm_eps: f32,
}

impl VisionConfig {
    /// Total downsampling factor: 4 in the stem, 2 per later stage.
    pub fn stride(&self) -> u32 {
        4u32 << self.stages.len().saturating_sub(1).min(16)
    }

    /// Output tokens at `resolution` (must be a multiple of `stride()`).
    pub fn tokens(&self, resolution: u32) -> u32 {
        let g = resolution / self.stride().max(1);
        g * g
    }
}

/// One FastViTHD stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VisionStage {
    /// Number of blocks.
    pub depth: u32,
    /// Channels.
    pub dim: u32,
    /// ConvFFN hidden channels (mlp_ratio x dim).
    pub ffn_dim: u32,
    /// Token mixer of every block of the stage.
    pub mixer: TokenMixer,
    /// Whether a RepCPE conditional positional encoding precedes the blocks.
    pub pos_emb: bool,
}

/// FastViT token mixers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenMixer {
    /// Reparameterized depthwise conv.
    RepMixer,
    /// LayerNormChannel + multi-head self-attention.
    Attention,
}

/// The `mlp2x_gelu` projector: Linear(in, hidden) -> GELU -> Linear(hidden, out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ProjectorConfig {
    /// Vision feature width (3072).
    pub in_dim: u32,
    /// Hidden width (= decoder hidden for mlp2x_gelu).
    pub hidden_dim: u32,
    /// Output width (= decoder hidden).
    pub out_dim: u32,
}

/// Decoder architectures (they differ in biases and defaults, not in the graph).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DecoderArch {
    /// Qwen2: q/k/v biases.
    Qwen2,
    /// Llama family (SmolLM2): no biases.
    Llama,
}

/// Most end-of-sequence ids a config carries.
pub const MAX_EOS: usize = 4;

/// A pre-norm decoder with RoPE (rotate-half), GQA and a SwiGLU MLP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    /// Architecture.
    pub arch: DecoderArch,
    /// Model width.
    pub hidden: u32,
    /// Decoder layers.
    pub layers: u32,
    /// Query heads.
    pub heads: u32,
    /// Key/value heads.
    pub kv_heads: u32,
    /// Per-head width.
    pub head_dim: u32,
    /// MLP hidden width.
    pub intermediate: u32,
    /// Embedding rows.
    pub vocab: u32,
    /// RoPE base.
    pub rope_theta: f32,
    /// RMSNorm epsilon.
    pub norm_eps: f32,
    /// Longest context the model was trained for.
    pub max_positions: u32,
    /// Whether logits use the embedding matrix (no `decoder.lm_head.weight`).
    pub tied_embeddings: bool,
    /// Whether q/k/v projections have biases.
    pub qkv_bias: bool,
    /// Token id whose positions receive image embeddings (VLMs).
    pub image_token_id: Option<u32>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// Generation stops on any of these.
    pub eos_token_ids: heapless::Vec<u32, MAX_EOS>,
}

/// Tokenizer models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TokenizerModel {
    /// GPT-2 style byte-level BPE.
    ByteLevelBpe,
}

/// Pre-tokenization (regex split) rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PreTokenizer {
    /// Qwen2's pattern (single digits, case-insensitive contractions).
    Qwen2,
    /// GPT-2's pattern.
    Gpt2,
    /// SmolLM's: individual digits, then GPT-2's pattern.
    SmolLm,
}

/// Chat templates the runtime can render.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChatTemplate {
    /// No template known: prompts are used raw.
    None,
    /// `<|im_start|>role\n...<|im_end|>\n` (Qwen2 / FastVLM `qwen_2`, SmolLM2).
    ImStart {
        /// System prompt used when the caller gives none.
        default_system: heapless::String<128>,
    },
}

/// Byte-level BPE tokenizer settings. The tables are tensors in the image:
///
/// - `tokenizer.token_bytes` (u8 `[total]`): every token's raw bytes, concatenated in id order;
/// - `tokenizer.token_offsets` (u32 `[vocab + 1]`): start of token `i` is `offsets[i]`;
/// - `tokenizer.token_types` (u8 `[vocab]`): GGUF token types (1 normal, 3 control,
///   4 user-defined, 6 byte);
/// - `tokenizer.merges` (u32 `[n, 4]`): `(left, right, rank, merged)` sorted by
///   `(left, right)` for binary search; rank is the merge's priority (lower first);
/// - `tokenizer.sorted_ids` (u32 `[vocab]`): token ids sorted by their bytes, for lookup
///   of a byte string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerConfig {
    /// Model.
    pub model: TokenizerModel,
    /// Splitting rules applied before BPE.
    pub pretokenizer: PreTokenizer,
    /// Number of tokens.
    pub vocab_size: u32,
    /// Number of merges.
    pub merges: u32,
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Whether encoding prepends `bos`.
    pub add_bos: bool,
    /// How chats are rendered.
    pub chat: ChatTemplate,
}

/// What the converter did to the weights.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantRecipe {
    /// Format of the quantized matrices (linear and 1x1 conv weights, embeddings).
    pub weights: DType,
    /// Format of everything kept unquantized (norms, biases, layer scales, depthwise kernels).
    pub kept: DType,
    /// Where the weights came from, e.g. `safetensors:bf16` or `gguf:Q4_1`.
    pub source: heapless::String<32>,
}

/// postcard errors when the config region does not decode.
pub fn decode_config(bytes: &[u8]) -> Result<ModelConfig, postcard::Error> {
    postcard::from_bytes(bytes)
}
