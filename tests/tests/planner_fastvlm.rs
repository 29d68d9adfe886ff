//! The arena plan of FastVLM-0.5B (spec sections 1 and 4: FastViTHD 2/12/24/4/2 blocks of
//! 96..1536 channels, 3072 -> 896 projector, Qwen2 with 24 layers, 14 heads, 2 KV heads,
//! head_dim 64, vocab 151936) at 1024 x 1024 with a 2048-token context and f32
//! activations: the goal is at most 48 MB. The image holds the vision and
//! projector tensors with their real shapes (zeros: the plan reads shapes and formats,
//! not values) and the decoder's config (the plan needs no decoder tensor).

use glimpse_core::Model;
use glimpse_core::decoder::KvFormat;
use glimpse_core::planner::{ArenaPlan, Buf, Phase, PlanOptions};
use glimpse_quant::DType;
use glimpse_quant::schema::{
    DecoderArch, DecoderConfig, ModelConfig, ModelFamily, ProjectorConfig, QuantRecipe, TokenMixer,
    VisionConfig, VisionStage,
};
use glimpse_quant::writer::ImageBuilder;
use glimpse_tests::AlignedBytes;

const DEPTHS: [u32; 5] = [2, 12, 24, 4, 2];
const DIMS: [u32; 5] = [96, 192, 384, 768, 1536];
const HIDDEN: u32 = 896;

fn config() -> ModelConfig {
    let mut stages = heapless::Vec::new();
    for (i, (&depth, &dim)) in DEPTHS.iter().zip(&DIMS).enumerate() {
        stages
            .push(VisionStage {
                depth,
                dim,
                ffn_dim: 4 * dim,
                mixer: if i >= 3 {
                    TokenMixer::Attention
                } else {
                    TokenMixer::RepMixer
                },
                pos_emb: i >= 3,
            })
            .unwrap();
    }
    let mut eos = heapless::Vec::new();
    eos.push(151_645).unwrap();
    ModelConfig {
        name: heapless::String::try_from("fastvlm-0.5b-shapes").unwrap(),
        family: ModelFamily::FastVlm,
        vision: Some(VisionConfig {
            image_size: 1024,
            in_channels: 3,
            stages,
            head_dim: 32,
            mixer_kernel: 3,
            ffn_kernel: 7,
            down_kernel: 7,
            pos_kernel: 7,
            out_dim: 3072,
            se_dim: 192,
            norm_eps: 1e-5,
        }),
        projector: Some(ProjectorConfig {
            in_dim: 3072,
            hidden_dim: HIDDEN,
            out_dim: HIDDEN,
        }),
        decoder: Some(DecoderConfig {
            arch: DecoderArch::Qwen2,
            hidden: HIDDEN,
            layers: 24,
            heads: 14,
            kv_heads: 2,
            head_dim: 64,
            intermediate: 4864,
            vocab: 151_936,
            rope_theta: 1e6,
            norm_eps: 1e-6,
            max_positions: 32_768,
            tied_embeddings: false,
            qkv_bias: true,
            image_token_id: Some(151_646),
            bos_token_id: Some(151_643),
            eos_token_ids: eos,
        }),
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::Q8_0,
            kept: DType::F32,
            source: heapless::String::try_from("test:shapes").unwrap(),
        },
    }
}

/// Every vision and projector tensor, Q8_0 matrices and f32 everything else (what
/// `glimpse convert --quant q8_0` writes), all zero.
fn build_image() -> AlignedBytes {
    let mut b = ImageBuilder::new(config());
    let kept = |b: &mut ImageBuilder, name: &str, shape: &[u32]| {
        let n = shape.iter().product::<u32>() as usize;
        b.add(name, DType::F32, shape, vec![0; 4 * n]).unwrap();
    };
    let linear = |b: &mut ImageBuilder, name: &str, rows: u32, cols: u32, bias: bool| {
        let bytes = DType::Q8_0.payload_bytes(&[rows, cols]).unwrap() as usize;
        b.add(
            &format!("{name}.weight"),
            DType::Q8_0,
            &[rows, cols],
            vec![0; bytes],
        )
        .unwrap();
        if bias {
            let n = rows as usize;
            b.add(&format!("{name}.bias"), DType::F32, &[rows], vec![0; 4 * n])
                .unwrap();
        }
    };
    let dw = |b: &mut ImageBuilder, name: &str, k: u32, c: u32| {
        let n = (k * k * c) as usize;
        b.add(
            &format!("{name}.weight"),
            DType::F32,
            &[k, k, c],
            vec![0; 4 * n],
        )
        .unwrap();
        b.add(
            &format!("{name}.bias"),
            DType::F32,
            &[c],
            vec![0; 4 * c as usize],
        )
        .unwrap();
    };
    kept(&mut b, "vision.stem.0.weight", &[96, 3, 3, 3]);
    kept(&mut b, "vision.stem.0.bias", &[96]);
    dw(&mut b, "vision.stem.1", 3, 96);
    linear(&mut b, "vision.stem.2", 96, 96, true);
    for (s, (&depth, &c)) in DEPTHS.iter().zip(&DIMS).enumerate() {
        if s > 0 {
            dw(&mut b, &format!("vision.stages.{s}.down.lk"), 7, c);
            linear(&mut b, &format!("vision.stages.{s}.down.pw"), c, c, true);
        }
        if s >= 3 {
            dw(&mut b, &format!("vision.stages.{s}.pos"), 7, c);
        }
        for blk in 0..depth {
            let p = format!("vision.stages.{s}.blocks.{blk}");
            if s < 3 {
                dw(&mut b, &format!("{p}.mixer"), 3, c);
            } else {
                kept(&mut b, &format!("{p}.norm.weight"), &[c]);
                kept(&mut b, &format!("{p}.norm.bias"), &[c]);
                linear(&mut b, &format!("{p}.attn.qkv"), 3 * c, c, false);
                linear(&mut b, &format!("{p}.attn.proj"), c, c, true);
                kept(&mut b, &format!("{p}.attn_scale"), &[c]);
            }
            dw(&mut b, &format!("{p}.ffn.dw"), 7, c);
            linear(&mut b, &format!("{p}.ffn.fc1"), 4 * c, c, true);
            linear(&mut b, &format!("{p}.ffn.fc2"), c, 4 * c, true);
            kept(&mut b, &format!("{p}.ffn_scale"), &[c]);
        }
    }
    dw(&mut b, "vision.head.conv", 3, 3072);
    linear(&mut b, "vision.head.se.reduce", 192, 3072, true);
    linear(&mut b, "vision.head.se.expand", 3072, 192, true);
    linear(&mut b, "projector.fc1", HIDDEN, 3072, true);
    linear(&mut b, "projector.fc2", HIDDEN, HIDDEN, true);
    AlignedBytes::new(&b.to_bytes().unwrap())
}

const MB: usize = 1_000_000;

#[test]
fn fastvlm_0_5b_at_1024_with_2048_context_fits_in_48_mb() {
    let bytes = build_image();
    let image = Model::parse(bytes.as_slice()).unwrap();
    let goal = PlanOptions {
        resolution: Some(1024),
        max_context: 2048,
        kv: KvFormat::F16,
        ..PlanOptions::default()
    };
    let plan = ArenaPlan::new(&image, &goal).unwrap();
    eprintln!("FastVLM-0.5B, 1024x1024, context 2048, f16 KV: {plan}");
    for (buf, p) in plan.buffers() {
        eprintln!(
            "  {:<20} {:>12} {:>12}",
            buf.name(),
            p.offset,
            p.request.bytes
        );
    }
    assert_eq!(plan.image_tokens, 256);
    assert!(plan.total() <= 48 * MB, "{} bytes", plan.total());

    // The pixels (3 x 1024² f32) live only until the stem has read them and the second
    // activation buffer is first written after it: they share bytes.
    let px = plan.placement(Buf::Pixels).unwrap();
    let second = plan.placement(Buf::VisionSecond).unwrap();
    assert!(px.overlaps(second) && !px.meets(second));
    // The KV cache reuses the vision buffers' bytes (it is not kept across pictures).
    let kv = plan.placement(Buf::KvCache).unwrap();
    let first = plan.placement(Buf::VisionFirst).unwrap();
    assert!(kv.overlaps(first));
    // Greedy placement reaches the lower bound here: the busiest phase's live bytes.
    let peak = Phase::ALL
        .iter()
        .map(|&p| plan.live_bytes(p))
        .max()
        .unwrap();
    assert_eq!(plan.total(), peak);

    // With an f32 cache the KV alone is 24 x 2048 x 128 x 4 x 2 = 50.3 MB: over the goal,
    // which is why the f16 cache exists.
    let f32_plan = ArenaPlan::new(
        &image,
        &PlanOptions {
            kv: KvFormat::F32,
            ..goal
        },
    )
    .unwrap();
    assert!(f32_plan.total() > 48 * MB);
    let kv = |p: &ArenaPlan| p.placement(Buf::KvCache).unwrap().request.bytes;
    assert_eq!(kv(&f32_plan) - kv(&plan), 24 * 2048 * 128 * 2 * 2);

    // Sampling adds a candidate list (vocab u32s) that fits beside the decoder state.
    let sampling = ArenaPlan::new(
        &image,
        &PlanOptions {
            sampling: true,
            ..goal
        },
    )
    .unwrap();
    assert!(sampling.total() <= 48 * MB);

    // Text only: just the decoder side.
    let text = ArenaPlan::new(
        &image,
        &PlanOptions {
            vision: false,
            ..goal
        },
    )
    .unwrap();
    assert!(text.total() < plan.total());
    assert_eq!(text.total(), text.live_bytes(Phase::Decode));
}
