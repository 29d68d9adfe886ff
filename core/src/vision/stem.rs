//! The convolutional stem (spec §1.3 `patch_embed.0..2`): a full 3x3 stride-2 conv from
//! the planar input, a depthwise 3x3 stride-2 conv and a 1x1 conv, each followed by GELU.
//!
//! stem.0's output is the largest tensor of the whole network (96 x 512 x 512 at 1024²),
//! so it is never stored: its rows are produced into a window of `k` rows just ahead of
//! the depthwise conv that consumes them, each computed once, and every stem.1 output
//! row goes through stem.2 straight away.

use glimpse_quant::schema::VisionConfig;

use super::{
    Shape, Work, find, kept, kernel_size, linear_tiled, matrix, prefix, prefix_mut,
    tiled_scratch_bytes, vector,
};
use crate::arena::{Arena, Scratch};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::conv::{
    ConvParams, Dense, Grouped, InputRows, dense_conv_planar, grouped_conv,
};
use crate::kernels::math::gelu_inplace;
use crate::kernels::{Ctx, Vector, Weights};

/// The stem's weights.
#[derive(Debug, Clone, Copy)]
pub struct Stem<'a> {
    in_channels: usize,
    dim: usize,
    k0: usize,
    w0: Vector<'a>,
    b0: Vector<'a>,
    k1: usize,
    w1: Vector<'a>,
    b1: Vector<'a>,
    w2: Weights<'a>,
    b2: Vector<'a>,
}

impl<'a> Stem<'a> {
    /// Find and check `vision.stem.*`.
    pub fn load(image: &Model<'a>, cfg: &VisionConfig) -> Result<Self, Error> {
        let ci = cfg.in_channels as usize;
        let dim = cfg.stages.first().map_or(0, |s| s.dim as usize);
        let v0 = find(image, format_args!("vision.stem.0.weight"))?;
        let k0 = v0.dims().get(1).map_or(0, |&k| k as usize);
        let w0 = kept(
            image,
            format_args!("vision.stem.0.weight"),
            &[dim, k0, k0, ci],
        )?;
        let b0 = kept(image, format_args!("vision.stem.0.bias"), &[dim])?;
        let v1 = find(image, format_args!("vision.stem.1.weight"))?;
        let k1 = kernel_size(&v1)?;
        let w1 = kept(image, format_args!("vision.stem.1.weight"), &[k1, k1, dim])?;
        let b1 = kept(image, format_args!("vision.stem.1.bias"), &[dim])?;
        let w2 = matrix(image, format_args!("vision.stem.2.weight"), dim, dim)?;
        let b2 = vector(image, format_args!("vision.stem.2.bias"), dim)?;
        if k0.is_multiple_of(2) {
            return Err(Error::Config {
                what: "stem conv kernel size is even",
            });
        }
        Ok(Stem {
            in_channels: ci,
            dim,
            k0,
            w0,
            b0,
            k1,
            w1,
            b1,
            w2,
            b2,
        })
    }

    fn geometry(&self, resolution: usize) -> (Dense, Grouped) {
        let g0 = Dense {
            height: resolution,
            width: resolution,
            in_channels: self.in_channels,
            out_channels: self.dim,
            kernel: self.k0,
            stride: 2,
        };
        let g1 = Grouped {
            height: g0.out_height(),
            width: g0.out_width(),
            channels: self.dim,
            mult: 1,
            kernel: self.k1,
            stride: 2,
        };
        (g0, g1)
    }

    /// Output of the stem (stride 4).
    pub fn out_shape(&self, resolution: usize) -> Shape {
        let (_, g1) = self.geometry(resolution);
        Shape {
            height: g1.out_height(),
            width: g1.out_width(),
            channels: self.dim,
        }
    }

    /// The work-region buffers of one run, declared once: a window of `k1` rows of
    /// stem.0's output, one row of stem.1's, the two convs' scratch, and the linear
    /// scratch of stem.2 over one row.
    fn scratch(&self, resolution: usize) -> Scratch<4, 1> {
        let (g0, g1) = self.geometry(resolution);
        let width = g1.out_width();
        Scratch {
            f32s: [
                self.k1 * g0.out_width() * self.dim,
                width * self.dim,
                g0.scratch_floats(),
                g1.scratch_floats(),
            ],
            bytes: [tiled_scratch_bytes(&self.w2, width)],
        }
    }

    /// Scratch taken from the work region.
    pub(crate) fn work(&self, resolution: usize) -> Work {
        Work(self.scratch(resolution).padded_bytes())
    }

    /// Run the stem on planar `pixels` into `out`, one output row at a time.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        pixels: &[f32],
        resolution: usize,
        out: &mut [f32],
        arena: &mut Arena<'_>,
    ) -> Result<Shape, Error> {
        let (g0, g1) = self.geometry(resolution);
        let shape = self.out_shape(resolution);
        let out = prefix_mut(out, shape.len())?;
        let row0 = g0.out_width() * self.dim;
        let row1 = shape.width * self.dim;
        arena.scope(|a| {
            let ([window, mid, s0, s1], [lin]) = self.scratch(resolution).carve(a)?;

            // Rows `start .. start + filled` of stem.0's output are in `window`.
            let (mut start, mut filled) = (0usize, 0usize);
            for (oy, dst) in out.chunks_exact_mut(row1).enumerate() {
                let need = g1.input_rows(oy..oy + 1);
                if need.start > start {
                    let drop = (need.start - start).min(filled);
                    window.copy_within(drop * row0..filled * row0, 0);
                    filled -= drop;
                    start = need.start;
                }
                while start + filled < need.end {
                    let r = start + filled;
                    let slot = window.get_mut(filled * row0..(filled + 1) * row0).ok_or(
                        Error::Length {
                            what: "stem row window",
                            expected: (filled + 1) * row0,
                            got: self.k1 * row0,
                        },
                    )?;
                    let p0 = ConvParams {
                        weight: self.w0,
                        bias: self.b0,
                    };
                    dense_conv_planar(ctx, &g0, p0, pixels, r..r + 1, slot, s0)?;
                    gelu_inplace(ctx, slot);
                    filled += 1;
                }
                let rows = prefix(window, filled * row0)?;
                grouped_conv(
                    ctx,
                    &g1,
                    ConvParams {
                        weight: self.w1,
                        bias: self.b1,
                    },
                    InputRows {
                        data: rows,
                        first_row: start,
                    },
                    oy..oy + 1,
                    mid,
                    s1,
                )?;
                gelu_inplace(ctx, mid);
                linear_tiled(ctx, &self.w2, Some(&self.b2), mid, dst, lin)?;
                gelu_inplace(ctx, dst);
            }
            Ok(shape)
        })
    }
}
