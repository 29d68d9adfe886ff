//! PatchEmbed, the downsampler that opens every stage after the first (spec §1.2): a 7x7
//! stride-2 grouped conv where each input channel feeds `C_out / C_in` outputs (output
//! `o` reads input `o / mult`) followed by GELU, then a 1x1 conv and GELU.

use super::{
    Shape, Work, find, kept, kernel_size, linear_tiled, matrix, prefix, prefix_mut, tile_pixels,
    tiled_scratch_bytes, vector,
};
use crate::arena::{Arena, Scratch};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::conv::{ConvParams, Grouped, InputRows, grouped_conv};
use crate::kernels::math::gelu_inplace;
use crate::kernels::{Ctx, Vector, Weights};

/// The downsampler of one stage.
#[derive(Debug, Clone, Copy)]
pub struct PatchEmbed<'a> {
    in_dim: usize,
    out_dim: usize,
    kernel: usize,
    lk_w: Vector<'a>,
    lk_b: Vector<'a>,
    pw: Weights<'a>,
    pw_b: Vector<'a>,
}

impl<'a> PatchEmbed<'a> {
    /// Find and check `vision.stages.{stage}.down.*`.
    pub fn load(
        image: &Model<'a>,
        stage: usize,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self, Error> {
        if in_dim == 0 || !out_dim.is_multiple_of(in_dim) {
            return Err(Error::Config {
                what: "PatchEmbed output width is not a multiple of its input width",
            });
        }
        let v = find(image, format_args!("vision.stages.{stage}.down.lk.weight"))?;
        let kernel = kernel_size(&v)?;
        Ok(PatchEmbed {
            in_dim,
            out_dim,
            kernel,
            lk_w: kept(
                image,
                format_args!("vision.stages.{stage}.down.lk.weight"),
                &[kernel, kernel, out_dim],
            )?,
            lk_b: kept(
                image,
                format_args!("vision.stages.{stage}.down.lk.bias"),
                &[out_dim],
            )?,
            pw: matrix(
                image,
                format_args!("vision.stages.{stage}.down.pw.weight"),
                out_dim,
                out_dim,
            )?,
            pw_b: vector(
                image,
                format_args!("vision.stages.{stage}.down.pw.bias"),
                out_dim,
            )?,
        })
    }

    fn geometry(&self, shape: Shape) -> Grouped {
        Grouped {
            height: shape.height,
            width: shape.width,
            channels: self.in_dim,
            mult: self.out_dim / self.in_dim.max(1),
            kernel: self.kernel,
            stride: 2,
        }
    }

    /// Output size for an input of `shape`.
    pub fn out_shape(&self, shape: Shape) -> Shape {
        let g = self.geometry(shape);
        Shape {
            height: g.out_height(),
            width: g.out_width(),
            channels: self.out_dim,
        }
    }

    fn tile_rows(&self, out: Shape) -> usize {
        (tile_pixels(self.out_dim) / out.width.max(1)).clamp(1, out.height.max(1))
    }

    /// The work-region buffers for tiles of `rows` output rows, declared once: the
    /// large-kernel conv's scratch, one tile of its output, the pointwise linear's
    /// scratch.
    fn scratch(&self, shape: Shape, rows: usize) -> Scratch<2, 1> {
        let out = self.out_shape(shape);
        let px = rows * out.width;
        Scratch {
            f32s: [self.geometry(shape).scratch_floats(), px * self.out_dim],
            bytes: [tiled_scratch_bytes(&self.pw, px)],
        }
    }

    /// Scratch taken from the work region.
    pub(crate) fn work(&self, shape: Shape) -> Work {
        let rows = self.tile_rows(self.out_shape(shape));
        Work(self.scratch(shape, rows).padded_bytes())
    }

    /// Downsample `x` (of `shape`) into `out`, a tile of output rows at a time.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        x: &[f32],
        out: &mut [f32],
        shape: Shape,
        arena: &mut Arena<'_>,
    ) -> Result<Shape, Error> {
        self.forward_tiled(
            ctx,
            x,
            out,
            shape,
            self.tile_rows(self.out_shape(shape)),
            arena,
        )
    }

    /// [`PatchEmbed::forward`] with `rows` output rows per tile.
    fn forward_tiled(
        &self,
        ctx: &mut Ctx<'_>,
        x: &[f32],
        out: &mut [f32],
        shape: Shape,
        rows: usize,
        arena: &mut Arena<'_>,
    ) -> Result<Shape, Error> {
        if shape.channels != self.in_dim {
            return Err(Error::Length {
                what: "PatchEmbed input channels",
                expected: self.in_dim,
                got: shape.channels,
            });
        }
        let g = self.geometry(shape);
        let out_shape = self.out_shape(shape);
        let x = prefix(x, shape.len())?;
        let out = prefix_mut(out, out_shape.len())?;
        let rows = rows.clamp(1, out_shape.height.max(1));
        let row = out_shape.width * self.out_dim;
        arena.scope(|a| {
            let ([scratch, tile], [lin]) = self.scratch(shape, rows).carve(a)?;
            for (t, dst) in out.chunks_mut(rows * row).enumerate() {
                let r0 = t * rows;
                let r1 = r0 + dst.len() / row;
                let mid = prefix_mut(tile, dst.len())?;
                let lk = ConvParams {
                    weight: self.lk_w,
                    bias: self.lk_b,
                };
                grouped_conv(ctx, &g, lk, InputRows::whole(x), r0..r1, mid, scratch)?;
                gelu_inplace(ctx, mid);
                linear_tiled(ctx, &self.pw, Some(&self.pw_b), mid, dst, lin)?;
                gelu_inplace(ctx, dst);
            }
            Ok(out_shape)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;
    use glimpse_quant::DType;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn row_tiles_do_not_change_the_result() {
        let (ci, co, k) = (3, 6, 7);
        let lk = values(k * k * co, 1);
        let lkb = values(co, 2);
        let pw: Vec<u8> = values(co * co, 3)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let pwb = values(co, 4);
        let pe = PatchEmbed {
            in_dim: ci,
            out_dim: co,
            kernel: k,
            lk_w: Vector::from_f32(&lk),
            lk_b: Vector::from_f32(&lkb),
            pw: Weights::new(DType::F32, co, co, &pw).unwrap(),
            pw_b: Vector::from_f32(&pwb),
        };
        let shape = Shape {
            height: 14,
            width: 6,
            channels: ci,
        };
        let x = values(shape.len(), 5);
        let out_shape = pe.out_shape(shape);
        assert_eq!(
            (out_shape.height, out_shape.width, out_shape.channels),
            (7, 3, 6)
        );
        let mut whole = vec![0f32; out_shape.len()];
        let mut buf = vec![0u8; 1 << 16];
        pe.forward_tiled(
            &mut Ctx::new(&mut glimpse_hal::Sequential),
            &x,
            &mut whole,
            shape,
            7,
            &mut Arena::new(&mut buf),
        )
        .unwrap();
        // GELU output, not all zero: the comparison below means something.
        assert!(whole.iter().any(|v| v.abs() > 0.1));
        for rows in [1, 2, 3] {
            let mut got = vec![0f32; out_shape.len()];
            pe.forward_tiled(
                &mut Ctx::new(&mut glimpse_hal::Sequential),
                &x,
                &mut got,
                shape,
                rows,
                &mut Arena::new(&mut buf),
            )
            .unwrap();
            assert_eq!(got, whole, "{rows} rows per tile");
        }
    }
}
