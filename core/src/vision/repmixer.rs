//! RepMixerBlock (spec §1.2): `y = RepMixer(x)`, `out = y + ls ⊙ ConvFFN(y)`. At inference
//! RepMixer is one depthwise conv with bias: its own residual and layer scale were folded
//! into the kernel when the model was reparameterized. The block runs in place.

use glimpse_quant::schema::{VisionConfig, VisionStage};

use super::convffn::{ConvFfn, FfnInput};
use super::{Shape, Work, block_prefix, find, kept, kernel_size};
use crate::arena::Arena;
use crate::error::Error;
use crate::image::Model;
use crate::kernels::{Ctx, Vector};

/// One RepMixer block.
#[derive(Debug, Clone, Copy)]
pub struct RepMixerBlock<'a> {
    dim: usize,
    kernel: usize,
    mixer_w: Vector<'a>,
    mixer_b: Vector<'a>,
    ffn: ConvFfn<'a>,
}

impl<'a> RepMixerBlock<'a> {
    /// Find and check `vision.stages.{stage}.blocks.{block}.*`.
    pub fn load(
        image: &Model<'a>,
        cfg: &VisionConfig,
        stage: usize,
        block: usize,
        st: &VisionStage,
    ) -> Result<Self, Error> {
        let dim = st.dim as usize;
        let p = block_prefix(stage, block)?;
        let v = find(image, format_args!("{p}.mixer.weight"))?;
        let kernel = kernel_size(&v)?;
        if kernel != cfg.mixer_kernel as usize {
            return Err(Error::Config {
                what: "RepMixer kernel differs from the config's mixer_kernel",
            });
        }
        Ok(RepMixerBlock {
            dim,
            kernel,
            mixer_w: kept(
                image,
                format_args!("{p}.mixer.weight"),
                &[kernel, kernel, dim],
            )?,
            mixer_b: kept(image, format_args!("{p}.mixer.bias"), &[dim])?,
            ffn: ConvFfn::load(image, cfg, &p, dim, st.ffn_dim as usize)?,
        })
        .and_then(|b| {
            if b.kernel > b.ffn.kernel() {
                // The in-place streaming (see `convffn`) relies on it.
                return Err(Error::Config {
                    what: "RepMixer kernel larger than the ConvFFN kernel",
                });
            }
            Ok(b)
        })
    }

    fn input(&self) -> FfnInput<'a> {
        FfnInput::Mixer {
            kernel: self.kernel,
            weight: self.mixer_w,
            bias: self.mixer_b,
        }
    }

    /// Scratch taken from the work region.
    pub(crate) fn work(&self, shape: Shape) -> Work {
        self.ffn.work(shape, &self.input())
    }

    /// Run the block on `x` in place: the RepMixer conv feeds the ConvFFN row by row (see
    /// [`super::convffn`]), so no second activation buffer is needed.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        x: &mut [f32],
        shape: Shape,
        arena: &mut Arena<'_>,
    ) -> Result<(), Error> {
        if shape.channels != self.dim {
            return Err(Error::Length {
                what: "RepMixer block input channels",
                expected: self.dim,
                got: shape.channels,
            });
        }
        self.ffn
            .residual_in_place(ctx, x, shape, self.input(), arena)
    }
}
