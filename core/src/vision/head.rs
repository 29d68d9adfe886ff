//! The final expansion `conv_exp` (spec §1.2): a 3x3 grouped conv from the last stage's
//! width to `out_dim` (each input channel feeds `out_dim / C` outputs), squeeze-excite on
//! the conv output, then GELU. Its output is the feature map the VLM uses.

use glimpse_quant::schema::VisionConfig;

use super::{Shape, Work, find, kept, kernel_size, matrix, prefix, prefix_mut, vector};
use crate::arena::{Arena, Scratch};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::conv::{ConvParams, Grouped, InputRows, grouped_conv};
use crate::kernels::math::gelu_inplace;
use crate::kernels::{Ctx, Vector, Weights, linear, linear_scratch_bytes};

/// Squeeze-excite: `x ⊙ σ(expand(ReLU(reduce(mean_hw x))))`.
#[derive(Debug, Clone, Copy)]
struct SqueezeExcite<'a> {
    reduce: Weights<'a>,
    reduce_b: Vector<'a>,
    expand: Weights<'a>,
    expand_b: Vector<'a>,
}

/// `conv_exp` with its squeeze-excite.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    in_dim: usize,
    out_dim: usize,
    kernel: usize,
    w: Vector<'a>,
    b: Vector<'a>,
    se: Option<SqueezeExcite<'a>>,
}

impl<'a> Head<'a> {
    /// Find and check `vision.head.*`.
    pub fn load(image: &Model<'a>, cfg: &VisionConfig) -> Result<Self, Error> {
        let in_dim = cfg.stages.last().map_or(0, |s| s.dim as usize);
        let out_dim = cfg.out_dim as usize;
        if in_dim == 0 || !out_dim.is_multiple_of(in_dim) {
            return Err(Error::Config {
                what: "conv_exp width is not a multiple of the last stage's",
            });
        }
        let v = find(image, format_args!("vision.head.conv.weight"))?;
        let kernel = kernel_size(&v)?;
        let se_dim = cfg.se_dim as usize;
        let se = if se_dim == 0 {
            None
        } else {
            Some(SqueezeExcite {
                reduce: matrix(
                    image,
                    format_args!("vision.head.se.reduce.weight"),
                    se_dim,
                    out_dim,
                )?,
                reduce_b: vector(image, format_args!("vision.head.se.reduce.bias"), se_dim)?,
                expand: matrix(
                    image,
                    format_args!("vision.head.se.expand.weight"),
                    out_dim,
                    se_dim,
                )?,
                expand_b: vector(image, format_args!("vision.head.se.expand.bias"), out_dim)?,
            })
        };
        Ok(Head {
            in_dim,
            out_dim,
            kernel,
            w: kept(
                image,
                format_args!("vision.head.conv.weight"),
                &[kernel, kernel, out_dim],
            )?,
            b: kept(image, format_args!("vision.head.conv.bias"), &[out_dim])?,
            se,
        })
    }

    fn geometry(&self, shape: Shape) -> Grouped {
        Grouped {
            height: shape.height,
            width: shape.width,
            channels: self.in_dim,
            mult: self.out_dim / self.in_dim.max(1),
            kernel: self.kernel,
            stride: 1,
        }
    }

    /// Output size (the grid is unchanged).
    pub fn out_shape(&self, shape: Shape) -> Shape {
        Shape {
            channels: self.out_dim,
            ..shape
        }
    }

    fn se_dim(&self) -> usize {
        self.se.as_ref().map_or(0, |se| se.reduce.rows)
    }

    fn linear_scratch(&self) -> usize {
        self.se.as_ref().map_or(0, |se| {
            linear_scratch_bytes(&se.reduce, 1).max(linear_scratch_bytes(&se.expand, 1))
        })
    }

    /// The work-region buffers, declared once: the conv's scratch, the SE's channel
    /// means, gate and hidden vector, and its linear scratch.
    fn scratch(&self, shape: Shape) -> Scratch<2, 1> {
        Scratch {
            f32s: [
                self.geometry(shape).scratch_floats(),
                2 * self.out_dim + self.se_dim(),
            ],
            bytes: [self.linear_scratch()],
        }
    }

    /// Scratch taken from the work region.
    pub(crate) fn work(&self, shape: Shape) -> Work {
        Work(self.scratch(shape).padded_bytes())
    }

    /// `out = GELU(SE(conv(x)))`.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        x: &[f32],
        out: &mut [f32],
        shape: Shape,
        arena: &mut Arena<'_>,
    ) -> Result<Shape, Error> {
        if shape.channels != self.in_dim {
            return Err(Error::Length {
                what: "conv_exp input channels",
                expected: self.in_dim,
                got: shape.channels,
            });
        }
        let g = self.geometry(shape);
        let out_shape = self.out_shape(shape);
        let x = prefix(x, shape.len())?;
        let out = prefix_mut(out, out_shape.len())?;
        let co = self.out_dim;
        arena.scope(|a| {
            let ([scratch, vecs], [lin]) = self.scratch(shape).carve(a)?;
            grouped_conv(
                ctx,
                &g,
                ConvParams {
                    weight: self.w,
                    bias: self.b,
                },
                InputRows::whole(x),
                0..shape.height,
                out,
                scratch,
            )?;
            if let Some(se) = &self.se {
                let (mean, rest) = vecs.split_at_mut(co);
                let (gate, hidden) = rest.split_at_mut(co);
                // Channel means in f64: the sum runs over every pixel.
                for (c, m) in mean.iter_mut().enumerate() {
                    let s: f64 = out.iter().skip(c).step_by(co).map(|&v| f64::from(v)).sum();
                    *m = (s / out_shape.pixels().max(1) as f64) as f32;
                }
                linear(ctx, &se.reduce, Some(&se.reduce_b), mean, 1, hidden, lin)?;
                for h in hidden.iter_mut() {
                    *h = h.max(0.0);
                }
                linear(ctx, &se.expand, Some(&se.expand_b), hidden, 1, gate, lin)?;
                for gv in gate.iter_mut() {
                    *gv = 1.0 / (1.0 + libm::expf(-*gv));
                }
                for px in out.chunks_exact_mut(co) {
                    for (v, &gv) in px.iter_mut().zip(gate.iter()) {
                        *v *= gv;
                    }
                }
            }
            gelu_inplace(ctx, out);
            Ok(out_shape)
        })
    }
}
