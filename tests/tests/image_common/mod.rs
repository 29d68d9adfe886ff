//! A realistic small weights image for the image tests: a FastVLM-family config with every
//! section, and tensors of every dtype named the way the converter names them (shapes
//! are tiny stand-ins; these tests are about the container, not the model).

#![allow(dead_code)]

use glimpse_quant::DType;
use glimpse_quant::schema::{
    ChatTemplate, DecoderArch, DecoderConfig, ModelConfig, ModelFamily, PreTokenizer,
    ProjectorConfig, QuantRecipe, TokenMixer, TokenizerConfig, TokenizerModel, VisionConfig,
    VisionStage,
};
use glimpse_quant::writer::ImageBuilder;

// Each test binary that includes this module uses part of it.
#[allow(unused_imports)]
pub use glimpse_tests::Rng;

/// A tensor as it went into the builder.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u32>,
    pub data: Vec<u8>,
}

const TOKENS: [&str; 12] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "a",
    "b",
    "c",
    " ",
    "ab",
    " a",
    "abc",
    " ab",
];
/// (left, right, merged); rank is the position.
const MERGES: [(u32, u32, u32); 4] = [(4, 5, 8), (7, 4, 9), (8, 6, 10), (9, 5, 11)];

pub fn config() -> ModelConfig {
    let mut config = ModelConfig {
        name: "fastvlm-image-test".try_into().unwrap(),
        family: ModelFamily::FastVlm,
        vision: Some(VisionConfig {
            image_size: 256,
            in_channels: 3,
            // Filled below: naming heapless here would cost a dependency.
            stages: Default::default(),
            head_dim: 32,
            mixer_kernel: 3,
            ffn_kernel: 7,
            down_kernel: 7,
            pos_kernel: 7,
            out_dim: 256,
            se_dim: 16,
            norm_eps: 1e-5,
        }),
        projector: Some(ProjectorConfig {
            in_dim: 256,
            hidden_dim: 64,
            out_dim: 64,
        }),
        decoder: Some(DecoderConfig {
            arch: DecoderArch::Qwen2,
            hidden: 64,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 32,
            intermediate: 128,
            vocab: TOKENS.len() as u32,
            rope_theta: 1_000_000.0,
            norm_eps: 1e-6,
            max_positions: 512,
            tied_embeddings: true,
            qkv_bias: true,
            image_token_id: Some(3),
            bos_token_id: None,
            eos_token_ids: [0, 2].as_slice().try_into().unwrap(),
        }),
        tokenizer: Some(TokenizerConfig {
            model: TokenizerModel::ByteLevelBpe,
            pretokenizer: PreTokenizer::Qwen2,
            vocab_size: TOKENS.len() as u32,
            merges: MERGES.len() as u32,
            bos: None,
            eos: Some(2),
            pad: Some(0),
            add_bos: false,
            chat: ChatTemplate::ImStart {
                default_system: "You are a helpful assistant.".try_into().unwrap(),
            },
        }),
        recipe: QuantRecipe {
            weights: DType::Q8_0,
            kept: DType::F32,
            source: "safetensors:bf16".try_into().unwrap(),
        },
    };
    let stages = &mut config.vision.as_mut().unwrap().stages;
    let spec = [
        (2, 32, TokenMixer::RepMixer, false),
        (1, 64, TokenMixer::RepMixer, false),
        (1, 128, TokenMixer::Attention, true),
    ];
    for (depth, dim, mixer, pos_emb) in spec {
        stages
            .push(VisionStage {
                depth,
                dim,
                ffn_dim: 3 * dim,
                mixer,
                pos_emb,
            })
            .unwrap();
    }
    config
}

fn u32s(v: impl IntoIterator<Item = u32>) -> Vec<u8> {
    v.into_iter().flat_map(u32::to_le_bytes).collect()
}

/// Every tensor of the sample, in insertion (not name) order.
pub fn tensors() -> Vec<Expected> {
    let mut rng = Rng::new(0x61A5_5EED);
    let mut out = Vec::new();
    let mut add = |name: &str, dtype: DType, shape: &[u32], data: Option<Vec<u8>>| {
        let n = dtype.payload_bytes(shape).unwrap() as usize;
        let data = data.unwrap_or_else(|| rng.bytes(n));
        assert_eq!(data.len(), n, "{name}");
        out.push(Expected {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data,
        });
    };
    add("vision.stem.0.weight", DType::F16, &[8, 3, 3, 3], None);
    add("vision.stem.0.bias", DType::F32, &[8], None);
    add(
        "vision.stages.0.blocks.0.mixer.weight",
        DType::F32,
        &[8, 1, 3, 3],
        None,
    );
    add(
        "vision.stages.0.blocks.0.ffn.fc1.weight",
        DType::Q8_0,
        &[8, 32],
        None,
    );
    add(
        "vision.stages.0.blocks.0.ffn.fc2.weight",
        DType::E4M3,
        &[4, 32],
        None,
    );
    add(
        "vision.stages.2.pos_emb.weight",
        DType::BF16,
        &[4, 1, 7, 7],
        None,
    );
    add(
        "vision.stages.2.blocks.0.attn.qkv.weight",
        DType::MxFp8,
        &[6, 64],
        None,
    );
    add(
        "vision.stages.2.blocks.0.attn.proj.weight",
        DType::E5M2,
        &[2, 64],
        None,
    );
    add(
        "vision.stages.2.blocks.0.layer_scale",
        DType::F32,
        &[16],
        None,
    );
    add("vision.conv_exp.weight", DType::Q8_0, &[4, 32], None);
    add("projector.0.weight", DType::Q8_0, &[4, 64], None);
    add("projector.0.bias", DType::F32, &[4], None);
    add("projector.2.weight", DType::Q8_0, &[2, 64], None);
    add("decoder.embed_tokens.weight", DType::Q8_0, &[12, 32], None);
    add(
        "decoder.layers.0.self_attn.q_proj.weight",
        DType::Q8_0,
        &[8, 32],
        None,
    );
    add(
        "decoder.layers.0.self_attn.q_proj.bias",
        DType::F32,
        &[8],
        None,
    );
    add(
        "decoder.layers.0.input_layernorm.weight",
        DType::F32,
        &[32],
        None,
    );
    add("decoder.norm.weight", DType::F16, &[32], None);
    add("decoder.position_ids", DType::I32, &[5], None);

    let token_bytes: Vec<u8> = TOKENS.concat().into_bytes();
    let mut offsets = vec![0u32];
    for t in TOKENS {
        offsets.push(offsets.last().unwrap() + t.len() as u32);
    }
    let types: Vec<u8> = TOKENS
        .iter()
        .map(|t| if t.starts_with("<") { 3 } else { 1 })
        .collect();
    let mut merges = MERGES
        .iter()
        .enumerate()
        .map(|(rank, &(l, r, m))| [l, r, rank as u32, m])
        .collect::<Vec<_>>();
    merges.sort_by_key(|q| (q[0], q[1]));
    let mut sorted: Vec<u32> = (0..TOKENS.len() as u32).collect();
    sorted.sort_by_key(|&i| TOKENS[i as usize].as_bytes());
    let n = TOKENS.len() as u32;
    add(
        "tokenizer.token_bytes",
        DType::U8,
        &[token_bytes.len() as u32],
        Some(token_bytes),
    );
    add(
        "tokenizer.token_offsets",
        DType::U32,
        &[n + 1],
        Some(u32s(offsets)),
    );
    add("tokenizer.token_types", DType::U8, &[n], Some(types));
    add(
        "tokenizer.merges",
        DType::U32,
        &[MERGES.len() as u32, 4],
        Some(u32s(merges.into_iter().flatten())),
    );
    add("tokenizer.sorted_ids", DType::U32, &[n], Some(u32s(sorted)));
    out
}

/// The builder with everything added (insertion order deliberately not name order).
pub fn builder() -> ImageBuilder {
    let mut b = ImageBuilder::new(config());
    for t in tensors().into_iter().rev() {
        b.add(&t.name, t.dtype, &t.shape, t.data).unwrap();
    }
    b
}

/// The image bytes.
pub fn image() -> Vec<u8> {
    builder().to_bytes().unwrap()
}
