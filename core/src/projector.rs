//! The `mlp2x_gelu` projector (spec §3): `Linear(in → hidden) → GELU → Linear(hidden →
//! out)`, applied to each vision token; it maps FastViTHD features into the decoder's
//! embedding space.

use glimpse_quant::schema::ProjectorConfig;

use crate::arena::{ALIGN, Arena, Scratch};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::math::gelu_inplace;
use crate::kernels::{Ctx, Vector, Weights, with_default_ctx};
use crate::vision::{linear_tiled, matrix, tiled_scratch_bytes, vector};

/// The projector of a weights image.
#[derive(Debug, Clone, Copy)]
pub struct Projector<'a> {
    cfg: ProjectorConfig,
    fc1: Weights<'a>,
    fc1_b: Vector<'a>,
    fc2: Weights<'a>,
    fc2_b: Vector<'a>,
}

impl<'a> Projector<'a> {
    /// Find and check `projector.fc{1,2}.*` against the image's projector config.
    pub fn new(image: &Model<'a>) -> Result<Self, Error> {
        let cfg = image.config().projector.ok_or(Error::Config {
            what: "the image has no projector",
        })?;
        let (i, h, o) = (
            cfg.in_dim as usize,
            cfg.hidden_dim as usize,
            cfg.out_dim as usize,
        );
        Ok(Projector {
            cfg,
            fc1: matrix(image, format_args!("projector.fc1.weight"), h, i)?,
            fc1_b: vector(image, format_args!("projector.fc1.bias"), h)?,
            fc2: matrix(image, format_args!("projector.fc2.weight"), o, h)?,
            fc2_b: vector(image, format_args!("projector.fc2.bias"), o)?,
        })
    }

    /// Input width (the vision encoder's `out_dim`).
    pub fn in_dim(&self) -> usize {
        self.cfg.in_dim as usize
    }

    /// Output width (the decoder's hidden size).
    pub fn out_dim(&self) -> usize {
        self.cfg.out_dim as usize
    }

    /// Bytes of work [`Projector::forward`] takes from an arena whose free space starts
    /// on an [`ALIGN`] boundary (what a planned work region must hold).
    pub fn padded_bytes(&self, tokens: usize) -> usize {
        self.scratch(tokens).padded_bytes()
    }

    /// The work buffers for `tokens` tokens, declared once: the hidden layer and the
    /// linear scratch.
    fn scratch(&self, tokens: usize) -> Scratch<1, 1> {
        Scratch {
            f32s: [tokens.saturating_mul(self.cfg.hidden_dim as usize)],
            bytes: [
                tiled_scratch_bytes(&self.fc1, tokens).max(tiled_scratch_bytes(&self.fc2, tokens))
            ],
        }
    }

    /// Arena bytes [`Projector::forward`] needs for `tokens` tokens, for an arena of any
    /// start alignment.
    pub fn arena_bytes(&self, tokens: usize) -> usize {
        self.padded_bytes(tokens).saturating_add(ALIGN - 1)
    }

    /// Project `features` (`tokens x in_dim`) into `out` (`tokens x out_dim`) on the
    /// default executor.
    pub fn forward(
        &self,
        features: &[f32],
        tokens: usize,
        arena: &mut Arena<'_>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        with_default_ctx(|ctx| self.forward_on(ctx, features, tokens, arena, out))
    }

    /// [`Projector::forward`] with its work split across `ctx`'s tasks.
    pub fn forward_on(
        &self,
        ctx: &mut Ctx<'_>,
        features: &[f32],
        tokens: usize,
        arena: &mut Arena<'_>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let want = |what, expected: usize, got: usize| {
            if expected == got {
                Ok(())
            } else {
                Err(Error::Length {
                    what,
                    expected,
                    got,
                })
            }
        };
        want("projector input", tokens * self.in_dim(), features.len())?;
        want("projector output", tokens * self.out_dim(), out.len())?;
        arena.check(self.padded_bytes(tokens))?;
        arena.scope(|a| {
            let ([hidden], [lin]) = self.scratch(tokens).carve(a)?;
            linear_tiled(ctx, &self.fc1, Some(&self.fc1_b), features, hidden, lin)?;
            gelu_inplace(ctx, hidden);
            linear_tiled(ctx, &self.fc2, Some(&self.fc2_b), hidden, out, lin)
        })
    }
}
