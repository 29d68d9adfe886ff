//! The full FastViTHD of FastVLM-0.5B (spec §1.1: 2/12/24/4/2 blocks, 96..1536 channels,
//! 3072-wide conv_exp, 3072 -> 896 projector) with random weights generated here, written
//! straight into an image with canonical names (Q8_0 matrices, f32 everything else, as
//! `glimpse convert --quant q8_0` stores them) and run at 256 x 256: shapes, finiteness,
//! the arena it plans and uses, and refusal of a too-small arena before any work.

use glimpse_core::arena::{ALIGN, Arena};
use glimpse_core::projector::Projector;
use glimpse_core::vision::{Tap, VisionEncoder};
use glimpse_core::{Error, Model};
use glimpse_quant::DType;
use glimpse_quant::schema::{
    ModelConfig, ModelFamily, ProjectorConfig, QuantRecipe, TokenMixer, VisionConfig, VisionStage,
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
    ModelConfig {
        name: heapless::String::try_from("fastvithd-random").unwrap(),
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
        decoder: None,
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::Q8_0,
            kept: DType::F32,
            source: heapless::String::try_from("test:random").unwrap(),
        },
    }
}

/// Random tensors (xorshift, uniform) for every canonical name.
struct Gen {
    b: ImageBuilder,
    s: u64,
}

impl Gen {
    fn uniform(&mut self, n: usize, amp: f32, centre: f32) -> Vec<f32> {
        (0..n)
            .map(|_| {
                self.s ^= self.s << 13;
                self.s ^= self.s >> 7;
                self.s ^= self.s << 17;
                let u = (self.s >> 40) as f32 / (1u64 << 24) as f32;
                centre + amp * (2.0 * u - 1.0)
            })
            .collect()
    }

    fn kept(&mut self, name: &str, shape: &[u32], amp: f32, centre: f32) {
        let n = shape.iter().product::<u32>() as usize;
        let v = self.uniform(n, amp, centre);
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.b.add(name, DType::F32, shape, bytes).unwrap();
    }

    /// A Q8_0 matrix with unit-variance-preserving scale (uniform ±√(3/fan_in)) and a bias.
    /// The blocks are drawn directly (one f16 scale, 32 uniform codes in [-127, 127])
    /// rather than quantized from f32: the same distribution, a fraction of the time.
    fn linear(&mut self, name: &str, rows: u32, cols: u32, bias: bool) {
        let amp = (3.0 / cols as f32).sqrt();
        let scale = half::f16::from_f32(amp / 127.0).to_le_bytes();
        let blocks = (rows * cols / 32) as usize;
        let mut q = vec![0u8; blocks * 34];
        for b in q.chunks_exact_mut(34) {
            b[..2].copy_from_slice(&scale);
            for c in b[2..].chunks_exact_mut(8) {
                self.s ^= self.s << 13;
                self.s ^= self.s >> 7;
                self.s ^= self.s << 17;
                for (i, code) in c.iter_mut().enumerate() {
                    // -128 is never a Q8_0 code.
                    *code = ((self.s >> (8 * i)) as u8 as i8).max(-127) as u8;
                }
            }
        }
        self.b
            .add(&format!("{name}.weight"), DType::Q8_0, &[rows, cols], q)
            .unwrap();
        if bias {
            self.kept(&format!("{name}.bias"), &[rows], 0.1, 0.0);
        }
    }

    /// A depthwise / grouped kernel `[k, k, c]` and its bias; `identity` adds the centre
    /// tap a folded residual (RepMixer, RepCPE) carries.
    fn dw(&mut self, name: &str, k: u32, c: u32, identity: bool) {
        let n = (k * k * c) as usize;
        let amp = (3.0 / (k * k) as f32).sqrt() * if identity { 0.1 } else { 1.0 };
        let mut v = self.uniform(n, amp, 0.0);
        if identity {
            let centre = ((k / 2) * k + k / 2) as usize * c as usize;
            for x in &mut v[centre..centre + c as usize] {
                *x += 1.0;
            }
        }
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.b
            .add(&format!("{name}.weight"), DType::F32, &[k, k, c], bytes)
            .unwrap();
        self.kept(&format!("{name}.bias"), &[c], 0.1, 0.0);
    }

    fn ffn(&mut self, p: &str, c: u32) {
        self.dw(&format!("{p}.ffn.dw"), 7, c, false);
        self.linear(&format!("{p}.ffn.fc1"), 4 * c, c, true);
        self.linear(&format!("{p}.ffn.fc2"), c, 4 * c, true);
        // Layer scales well above the 1e-5 init, so every branch shows in the output.
        self.kept(&format!("{p}.ffn_scale"), &[c], 0.05, 0.1);
    }
}

fn build_image() -> AlignedBytes {
    let mut g = Gen {
        b: ImageBuilder::new(config()),
        s: 0x2545_F491_4F6C_DD1D,
    };
    g.kept(
        "vision.stem.0.weight",
        &[96, 3, 3, 3],
        (3.0f32 / 27.0).sqrt(),
        0.0,
    );
    g.kept("vision.stem.0.bias", &[96], 0.1, 0.0);
    g.dw("vision.stem.1", 3, 96, false);
    g.linear("vision.stem.2", 96, 96, true);
    for (s, (&depth, &c)) in DEPTHS.iter().zip(&DIMS).enumerate() {
        if s > 0 {
            g.dw(&format!("vision.stages.{s}.down.lk"), 7, c, false);
            g.linear(&format!("vision.stages.{s}.down.pw"), c, c, true);
        }
        if s >= 3 {
            g.dw(&format!("vision.stages.{s}.pos"), 7, c, true);
        }
        for b in 0..depth {
            let p = format!("vision.stages.{s}.blocks.{b}");
            if s < 3 {
                g.dw(&format!("{p}.mixer"), 3, c, true);
            } else {
                g.kept(&format!("{p}.norm.weight"), &[c], 0.2, 1.0);
                g.kept(&format!("{p}.norm.bias"), &[c], 0.1, 0.0);
                g.linear(&format!("{p}.attn.qkv"), 3 * c, c, false);
                g.linear(&format!("{p}.attn.proj"), c, c, true);
                g.kept(&format!("{p}.attn_scale"), &[c], 0.05, 0.1);
            }
            g.ffn(&p, c);
        }
    }
    g.dw("vision.head.conv", 3, 3072, false);
    g.linear("vision.head.se.reduce", 192, 3072, true);
    g.linear("vision.head.se.expand", 3072, 192, true);
    g.linear("projector.fc1", HIDDEN, 3072, true);
    g.linear("projector.fc2", HIDDEN, HIDDEN, true);
    AlignedBytes::new(&g.b.to_bytes().unwrap())
}

#[test]
fn fastvlm_0_5b_encoder_runs_at_256_inside_its_planned_arena() {
    let bytes = build_image();
    let image = Model::parse(bytes.as_slice()).unwrap();
    let enc = VisionEncoder::new(&image).unwrap();
    let proj = Projector::new(&image).unwrap();
    assert_eq!((enc.stride(), enc.out_dim()), (64, 3072));
    assert_eq!(enc.tokens(256), 16);
    assert_eq!(enc.tokens(1024), 256);

    let res = 256;
    let plan = enc.plan(res).unwrap();
    assert_eq!((plan.tokens, plan.out_dim), (16, 3072));
    // Blocks run in place, so the first buffer holds the largest activation, the stage-0
    // input at stride 4 (96 x R/4 x R/4), and the second what the downsamplers, RepCPE and
    // conv_exp write and the attention blocks use as scratch: the stage-1 input
    // (192 x R/8 x R/8), which equals stage 3's QKV plus attention output
    // (4 x (R/32)² x 768). The work region holds one tile of a pixel-wise layer
    // (TILE_FLOATS = 2^18 values, 1 MiB) plus its conv and linear scratch and a few halo
    // rows, so it stays near 2 MiB at any resolution: far below another activation.
    let buffers = |r: usize| [96 * (r / 4) * (r / 4), 192 * (r / 8) * (r / 8)];
    assert_eq!(plan.buffer_floats, buffers(res));
    assert!(
        plan.work_bytes > 1 << 19 && plan.work_bytes <= 3 << 20,
        "{plan:?}"
    );
    let need = plan.arena_bytes();
    let [a, b] = buffers(res);
    assert_eq!(need, (a + b) * 4 + plan.work_bytes + ALIGN - 1);

    // At 1024 the stage-3 attention (24 heads x 1024 tokens) would need 100 MB for its
    // score matrices alone, and a materialized stage-0 ConvFFN hidden layer another
    // 100 MB; streamed and tiled, the whole encoder needs about 40 MB.
    let big = enc.plan(1024).unwrap();
    assert_eq!(big.buffer_floats, buffers(1024));
    assert!(big.work_bytes <= 3 << 20, "{big:?}");
    let [a, b] = buffers(1024);
    assert_eq!(big.arena_bytes(), (a + b) * 4 + big.work_bytes + ALIGN - 1);
    assert!(big.arena_bytes() < 42_000_000, "{big:?}");

    let pixels: Vec<f32> = (0..3 * res * res)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    let mut out = vec![f32::NAN; plan.tokens * plan.out_dim];

    // One cache line short, from an aligned start: refused before the stem runs.
    let mut storage = vec![0u8; need + ALIGN];
    let off = storage.as_ptr().align_offset(ALIGN);
    let mut arena = Arena::new(&mut storage[off..off + need - ALIGN]);
    let mut seen = 0;
    let err = enc
        .encode_observed(&pixels, res, &mut arena, &mut out, &mut |_, _, _| seen += 1)
        .unwrap_err();
    assert!(
        matches!(err, Error::Arena { needed, capacity } if needed == need - (ALIGN - 1) && capacity == need - ALIGN),
        "{err:?}"
    );
    assert_eq!((seen, arena.used()), (0, 0));
    assert!(out.iter().all(|x| x.is_nan()));

    // Exactly the planned size, from any start alignment, is enough.
    let mut buf = vec![0u8; need + 1];
    let mut arena = Arena::new(&mut buf[1..]);
    let mut taps = Vec::new();
    enc.encode_observed(&pixels, res, &mut arena, &mut out, &mut |t, x, s| {
        taps.push((t, s, x.iter().all(|v| v.is_finite())))
    })
    .unwrap();
    assert!(arena.peak() <= need && arena.peak() >= need - (ALIGN - 1));
    let grid = [64, 32, 16, 8, 4];
    assert_eq!(taps.len(), 7);
    for (i, (tap, shape, finite)) in taps.iter().enumerate() {
        assert!(finite, "{tap:?} has non-finite values");
        match tap {
            Tap::Stem => assert_eq!((shape.height, shape.channels), (64, 96)),
            Tap::Stage(s) => {
                assert_eq!(*s, i - 1);
                assert_eq!((shape.height, shape.width), (grid[*s], grid[*s]));
                assert_eq!(shape.channels, DIMS[*s] as usize);
            }
            Tap::Head => assert_eq!((shape.pixels(), shape.channels), (16, 3072)),
        }
    }
    assert!(out.iter().all(|v| v.is_finite()));
    // GELU output: not identically zero, and bounded below by GELU's minimum (-0.17).
    assert!(out.iter().any(|&v| v.abs() > 1e-3));
    assert!(out.iter().all(|&v| v > -0.2));

    let mut projected = vec![0f32; 16 * HIDDEN as usize];
    let mut pbuf = vec![0u8; proj.arena_bytes(16)];
    proj.forward(&out, 16, &mut Arena::new(&mut pbuf), &mut projected)
        .unwrap();
    assert!(projected.iter().all(|v| v.is_finite()));
    assert!(projected.iter().any(|&v| v != 0.0));
}
