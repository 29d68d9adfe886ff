//! Writes seed images for the image fuzz targets: real images from the writer, with
//! every config section and every dtype, plus an empty one.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --bin make_seed -- fuzz/corpus/image_reader`

use glimpse_quant::DType;
use glimpse_quant::schema::{ChatTemplate, DecoderArch, DecoderConfig, ModelConfig, ModelFamily, PreTokenizer, ProjectorConfig, QuantRecipe, TokenMixer, TokenizerConfig, TokenizerModel, VisionConfig, VisionStage};
use glimpse_quant::writer::ImageBuilder;

fn config(with_everything: bool) -> ModelConfig {
    let mut c = ModelConfig {
        name: "fuzz-seed".try_into().unwrap(),
        family: ModelFamily::TextOnly,
        vision: None,
        projector: None,
        decoder: Some(DecoderConfig {
            arch: DecoderArch::Llama,
            hidden: 64,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 32,
            intermediate: 128,
            vocab: 4,
            rope_theta: 10000.0,
            norm_eps: 1e-5,
            max_positions: 64,
            tied_embeddings: true,
            qkv_bias: false,
            image_token_id: None,
            bos_token_id: Some(1),
            eos_token_ids: [2].as_slice().try_into().unwrap(),
        }),
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::Q8_0,
            kept: DType::F32,
            source: "seed".try_into().unwrap(),
        },
    };
    if with_everything {
        c.family = ModelFamily::FastVlm;
        let mut v = VisionConfig {
            image_size: 64,
            in_channels: 3,
            stages: Default::default(),
            head_dim: 32,
            mixer_kernel: 3,
            ffn_kernel: 7,
            down_kernel: 7,
            pos_kernel: 7,
            out_dim: 64,
            se_dim: 4,
            norm_eps: 1e-5,
        };
        for (dim, mixer) in [(32, TokenMixer::RepMixer), (64, TokenMixer::Attention)] {
            let stage = VisionStage {
                depth: 1,
                dim,
                ffn_dim: 3 * dim,
                mixer,
                pos_emb: mixer == TokenMixer::Attention,
            };
            v.stages.push(stage).unwrap();
        }
        c.vision = Some(v);
        c.projector = Some(ProjectorConfig {
            in_dim: 64,
            hidden_dim: 64,
            out_dim: 64,
        });
        c.tokenizer = Some(TokenizerConfig {
            model: TokenizerModel::ByteLevelBpe,
            pretokenizer: PreTokenizer::Qwen2,
            vocab_size: 4,
            merges: 1,
            bos: Some(1),
            eos: Some(2),
            pad: None,
            add_bos: true,
            chat: ChatTemplate::ImStart {
                default_system: "sys".try_into().unwrap(),
            },
        });
    }
    c
}

/// Write one seed after checking that the reader accepts it.
fn save(dir: &std::path::Path, name: &str, bytes: Vec<u8>) {
    let (buf, start) = glimpse_fuzz::aligned_copy(&bytes);
    glimpse_fuzz::exercise(&buf[start..start + bytes.len()]).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus/image_reader".into()),
    );
    std::fs::create_dir_all(&dir).unwrap();

    let mut b = ImageBuilder::new(config(true));
    let mut x = 1u8;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(29).wrapping_add(7);
                x
            })
            .collect()
    };
    let shapes: [(&str, DType, &[u32]); 12] = [
        ("decoder.embed_tokens.weight", DType::Q8_0, &[4, 64]),
        ("decoder.norm.weight", DType::F32, &[64]),
        ("projector.0.weight", DType::E4M3, &[2, 64]),
        ("projector.0.bias", DType::F16, &[2]),
        ("projector.2.weight", DType::MxFp8, &[2, 32]),
        ("vision.stem.0.weight", DType::BF16, &[4, 3, 3, 3]),
        ("vision.conv_exp.weight", DType::E5M2, &[1, 32]),
        ("decoder.position_ids", DType::I32, &[3]),
        ("tokenizer.token_bytes", DType::U8, &[6]),
        ("tokenizer.token_offsets", DType::U32, &[5]),
        ("tokenizer.token_types", DType::U8, &[4]),
        ("tokenizer.merges", DType::U32, &[1, 4]),
    ];
    for (name, dtype, shape) in shapes {
        let n = dtype.payload_bytes(shape).unwrap() as usize;
        b.add(name, dtype, shape, bytes(n)).unwrap();
    }
    save(&dir, "seed-fastvlm.glim", b.to_bytes().unwrap());

    let mut b = ImageBuilder::new(config(false));
    b.add("decoder.norm.weight", DType::F32, &[8], vec![0; 32])
        .unwrap();
    save(&dir, "seed-text.glim", b.to_bytes().unwrap());

    let b = ImageBuilder::new(config(false));
    save(&dir, "seed-empty.glim", b.to_bytes().unwrap());
    eprintln!("wrote 3 seeds to {}", dir.display());
}
