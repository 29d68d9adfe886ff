//! AttentionBlock (spec §1.2): `y = x + ls1 ⊙ MHSA(LayerNormChannel(x))`,
//! `out = y + ls2 ⊙ ConvFFN(y)`, both residuals applied in place. Tokens are the pixels
//! in row-major order, which is exactly the NHWC layout, so no reshaping happens. The
//! attention itself streams keys (see [`crate::kernels::attention`]); only the `N x 3C`
//! QKV matrix is stored.

use glimpse_quant::schema::{VisionConfig, VisionStage};

use super::convffn::{ConvFfn, FfnInput};
use super::{
    Shape, Work, block_prefix, kept, linear_tiled, matrix, prefix_mut, tile_pixels,
    tiled_scratch_bytes, vector,
};
use crate::arena::{Arena, Scratch, padded};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::attention::{PackedQkv, self_attention};
use crate::kernels::{Ctx, Vector, Weights, linear};

/// Most tasks the attention of one block is split into (each needs its own scratch
/// copy, about 50 KB at FastViTHD's head width).
pub const MAX_ATTENTION_TASKS: usize = 8;

/// One attention block.
#[derive(Debug, Clone, Copy)]
pub struct AttentionBlock<'a> {
    dim: usize,
    head_dim: usize,
    eps: f32,
    norm_w: Vector<'a>,
    norm_b: Vector<'a>,
    qkv: Weights<'a>,
    proj: Weights<'a>,
    proj_b: Vector<'a>,
    scale: Vector<'a>,
    ffn: ConvFfn<'a>,
}

/// LayerNormChannel: per pixel, normalize over the channels with the biased variance,
/// then `w ⊙ x̂ + b` (Apple's hand-written form; two passes for accuracy).
pub fn layer_norm_channel(x: &[f32], out: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let c = w.len().max(1);
    let inv_c = 1.0 / c as f32;
    for (o, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let mean = x.iter().sum::<f32>() * inv_c;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() * inv_c;
        let inv = 1.0 / libm::sqrtf(var + eps);
        for (((o, &v), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
            *o = (v - mean) * inv * w + b;
        }
    }
}

impl<'a> AttentionBlock<'a> {
    /// Find and check `vision.stages.{stage}.blocks.{block}.*`.
    pub fn load(
        image: &Model<'a>,
        cfg: &VisionConfig,
        stage: usize,
        block: usize,
        st: &VisionStage,
    ) -> Result<Self, Error> {
        let dim = st.dim as usize;
        let head_dim = cfg.head_dim as usize;
        if head_dim == 0 || !dim.is_multiple_of(head_dim) {
            return Err(Error::Config {
                what: "attention width is not a multiple of head_dim",
            });
        }
        let p = block_prefix(stage, block)?;
        Ok(AttentionBlock {
            dim,
            head_dim,
            eps: cfg.norm_eps,
            norm_w: kept(image, format_args!("{p}.norm.weight"), &[dim])?,
            norm_b: kept(image, format_args!("{p}.norm.bias"), &[dim])?,
            qkv: matrix(image, format_args!("{p}.attn.qkv.weight"), 3 * dim, dim)?,
            proj: matrix(image, format_args!("{p}.attn.proj.weight"), dim, dim)?,
            proj_b: vector(image, format_args!("{p}.attn.proj.bias"), dim)?,
            scale: kept(image, format_args!("{p}.attn_scale"), &[dim])?,
            ffn: ConvFfn::load(image, cfg, &p, dim, st.ffn_dim as usize)?,
        })
    }

    fn layout(&self, shape: Shape) -> PackedQkv {
        PackedQkv {
            tokens: shape.pixels(),
            heads: self.dim / self.head_dim.max(1),
            head_dim: self.head_dim,
        }
    }

    fn linear_scratch(&self, n: usize) -> usize {
        tiled_scratch_bytes(&self.qkv, n).max(tiled_scratch_bytes(&self.proj, n))
    }

    /// The attention half's work-region buffers with `copies` copies of the attention
    /// scratch: the norm weight, bias and layer scale decoded, one tile of the output
    /// projection, the attention scratch, the linear scratch.
    fn mhsa_scratch(&self, shape: Shape, copies: usize) -> Scratch<3, 1> {
        let (n, c) = (shape.pixels(), self.dim);
        Scratch {
            f32s: [
                3 * c,
                n.min(tile_pixels(c)) * c,
                self.layout(shape).scratch_floats() * copies,
            ],
            bytes: [self.linear_scratch(n)],
        }
    }

    /// Copies of the attention scratch the block takes, declared with the plan: one per
    /// task that can share the (head, query block) pairs, as many as fit in what the
    /// block's ConvFFN makes the work region hold anyway (so the plan does not grow), at
    /// least one and at most [`MAX_ATTENTION_TASKS`]. Fixed by the shapes alone, so a
    /// run takes the same bytes on every executor.
    fn attention_copies(&self, shape: Shape) -> usize {
        let one = self.mhsa_scratch(shape, 1).padded_bytes();
        let ffn = self.ffn.work(shape, &FfnInput::Identity).0;
        let per = self.layout(shape).scratch_floats().saturating_mul(4).max(1);
        // The copies are one buffer: `k` of them fit while `base + padded(k·per)` stays
        // within the ConvFFN's bytes (every term is a multiple of ALIGN, so padding
        // cannot push a fitting size over).
        let base = one.saturating_sub(padded(per));
        let k = ffn.saturating_sub(base) / per;
        k.clamp(1, MAX_ATTENTION_TASKS)
    }

    /// Scratch taken from the work region: the larger of the two halves.
    pub(crate) fn work(&self, shape: Shape) -> Work {
        let mhsa = self.mhsa_scratch(shape, self.attention_copies(shape));
        Work(
            mhsa.padded_bytes()
                .max(self.ffn.work(shape, &FfnInput::Identity).0),
        )
    }

    /// Values of `other` the block uses: the normalized input and then the attention
    /// output (`N x C`) beside the QKV matrix (`N x 3C`). At the attention stages this
    /// is well below the activation buffers' size, which the stage-0 input sets.
    pub fn other_floats(&self, shape: Shape) -> usize {
        4 * shape.pixels() * self.dim
    }

    /// Run the block on `x` in place; `other` is scratch and must hold
    /// [`AttentionBlock::other_floats`] values.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        x: &mut [f32],
        other: &mut [f32],
        shape: Shape,
        arena: &mut Arena<'_>,
    ) -> Result<(), Error> {
        let (n, c) = (shape.pixels(), self.dim);
        if shape.channels != c {
            return Err(Error::Length {
                what: "attention block input channels",
                expected: c,
                got: shape.channels,
            });
        }
        let layout = self.layout(shape);
        {
            let x = prefix_mut(x, shape.len())?;
            let (t, qkv) = prefix_mut(other, self.other_floats(shape))?.split_at_mut(n * c);
            arena.scope(|a| {
                let tile_px = tile_pixels(c);
                let copies = self.attention_copies(shape);
                let ([params, tile, attn_scratch], [lin]) =
                    self.mhsa_scratch(shape, copies).carve(a)?;
                let (nw, rest) = params.split_at_mut(c);
                let (nb, ls) = rest.split_at_mut(c);
                self.norm_w.load(0, nw)?;
                self.norm_b.load(0, nb)?;
                self.scale.load(0, ls)?;

                layer_norm_channel(x, t, nw, nb, self.eps);
                linear_tiled(ctx, &self.qkv, None, t, qkv, lin)?;
                // head_dim^-0.5 rounded once from f64, as PyTorch's Python-float scale is.
                let scale = (1.0 / libm::sqrt(self.head_dim as f64)) as f32;
                self_attention(ctx, &layout, qkv, scale, t, attn_scratch)?;
                for (xt, at) in x.chunks_mut(tile_px * c).zip(t.chunks(tile_px * c)) {
                    let px = at.len() / c;
                    let p = prefix_mut(tile, px * c)?;
                    linear(ctx, &self.proj, Some(&self.proj_b), at, px, p, lin)?;
                    for (xr, pr) in xt.chunks_exact_mut(c).zip(p.chunks_exact(c)) {
                        for ((x, &p), &s) in xr.iter_mut().zip(pr).zip(ls.iter()) {
                            *x += s * p;
                        }
                    }
                }
                Ok::<(), Error>(())
            })?;
        }
        self.ffn
            .residual_in_place(ctx, x, shape, FfnInput::Identity, arena)
    }
}
