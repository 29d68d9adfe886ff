//! RepCPE, the conditional positional encoding before the attention stages (spec §1.2):
//! a depthwise conv with bias whose identity branch was folded into the kernel, so there
//! is no residual add.

use glimpse_quant::schema::VisionConfig;

use super::{Shape, Work, find, kept, kernel_size, prefix, prefix_mut};
use crate::arena::{Arena, Scratch};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::conv::{ConvParams, Grouped, InputRows, grouped_conv};
use crate::kernels::{Ctx, Vector};

/// One RepCPE.
#[derive(Debug, Clone, Copy)]
pub struct RepCpe<'a> {
    dim: usize,
    kernel: usize,
    w: Vector<'a>,
    b: Vector<'a>,
}

impl<'a> RepCpe<'a> {
    /// Find and check `vision.stages.{stage}.pos.*`.
    pub fn load(
        image: &Model<'a>,
        cfg: &VisionConfig,
        stage: usize,
        dim: usize,
    ) -> Result<Self, Error> {
        let v = find(image, format_args!("vision.stages.{stage}.pos.weight"))?;
        let kernel = kernel_size(&v)?;
        if kernel != cfg.pos_kernel as usize {
            return Err(Error::Config {
                what: "RepCPE kernel differs from the config's pos_kernel",
            });
        }
        let w = kept(
            image,
            format_args!("vision.stages.{stage}.pos.weight"),
            &[kernel, kernel, dim],
        )?;
        let b = kept(
            image,
            format_args!("vision.stages.{stage}.pos.bias"),
            &[dim],
        )?;
        Ok(RepCpe { dim, kernel, w, b })
    }

    fn geometry(&self, shape: Shape) -> Grouped {
        Grouped {
            height: shape.height,
            width: shape.width,
            channels: self.dim,
            mult: 1,
            kernel: self.kernel,
            stride: 1,
        }
    }

    /// The work-region buffers, declared once: the conv's scratch.
    fn scratch(&self, shape: Shape) -> Scratch<1, 0> {
        Scratch {
            f32s: [self.geometry(shape).scratch_floats()],
            bytes: [],
        }
    }

    /// Scratch taken from the work region.
    pub(crate) fn work(&self, shape: Shape) -> Work {
        Work(self.scratch(shape).padded_bytes())
    }

    /// `out = dwconv(x) + b`.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        x: &[f32],
        out: &mut [f32],
        shape: Shape,
        arena: &mut Arena<'_>,
    ) -> Result<(), Error> {
        let g = self.geometry(shape);
        let x = prefix(x, shape.len())?;
        let out = prefix_mut(out, shape.len())?;
        arena.scope(|a| {
            let ([scratch], []) = self.scratch(shape).carve(a)?;
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
            )
        })
    }
}
