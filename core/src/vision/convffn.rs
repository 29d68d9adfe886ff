//! ConvFFN with its layer-scaled residual (spec §1.2): `out = y + ls ⊙ fc2(GELU(fc1(
//! BN(dwconv7(y)))))`, the BatchNorm folded into the depthwise conv by the converter;
//! and the in-place row streaming the RepMixer and attention blocks run it with.
//!
//! The block's activation is overwritten with its output one row tile at a time (about
//! [`TILE_FLOATS`] values per tile, so the `4C`-wide hidden layer, 384 x 256 x 256 at
//! 1024², only ever exists for one tile). The depthwise conv of a tile reads `k/2` rows
//! of `y` above and below it, and rows above were already overwritten; so `y` rows live
//! in a small window of `tile + k - 1` rows that slides down with the tiles, each row
//! produced once. For an attention block `y` is the block's activation itself (copied
//! into the window); for a RepMixer block it is the RepMixer conv of it, computed into the
//! window just ahead of use, which is why no second full-size buffer exists.

use glimpse_quant::schema::VisionConfig;

use super::{
    Shape, TILE_FLOATS, Work, find, kept, kernel_size, matrix, prefix_mut, scaled_residual, vector,
};
use crate::arena::{Arena, Scratch};
use crate::error::Error;
use crate::image::Model;

use crate::kernels::conv::{ConvParams, Grouped, InputRows, grouped_conv};
use crate::kernels::math::gelu_inplace;
use crate::kernels::{Ctx, Vector, Weights, linear, linear_scratch_bytes};

/// Where the ConvFFN input `y` comes from.
#[derive(Debug, Clone, Copy)]
pub enum FfnInput<'a> {
    /// `y` is the activation itself (attention blocks).
    Identity,
    /// `y = dwconv(x) + b` with this `[k, k, C]` kernel (RepMixer blocks).
    Mixer {
        /// Square kernel size (odd, at most the ConvFFN kernel).
        kernel: usize,
        /// Kernel `[k, k, C]`.
        weight: Vector<'a>,
        /// Bias `[C]`.
        bias: Vector<'a>,
    },
}

impl FfnInput<'_> {
    fn kernel(&self) -> usize {
        match self {
            FfnInput::Identity => 1,
            FfnInput::Mixer { kernel, .. } => *kernel,
        }
    }
}

/// One ConvFFN and the layer scale of its residual branch.
#[derive(Debug, Clone, Copy)]
pub struct ConvFfn<'a> {
    dim: usize,
    hidden: usize,
    kernel: usize,
    dw_w: Vector<'a>,
    dw_b: Vector<'a>,
    fc1: Weights<'a>,
    fc1_b: Vector<'a>,
    fc2: Weights<'a>,
    fc2_b: Vector<'a>,
    scale: Vector<'a>,
}

impl<'a> ConvFfn<'a> {
    /// Find and check `{p}.ffn.*` and `{p}.ffn_scale`, where `p` is the canonical prefix
    /// of the block (`vision.stages.{s}.blocks.{b}`).
    pub fn load(
        image: &Model<'a>,
        cfg: &VisionConfig,
        p: &str,
        dim: usize,
        hidden: usize,
    ) -> Result<Self, Error> {
        let dw = find(image, format_args!("{p}.ffn.dw.weight"))?;
        let kernel = kernel_size(&dw)?;
        if kernel != cfg.ffn_kernel as usize {
            return Err(Error::Config {
                what: "ConvFFN kernel differs from the config's ffn_kernel",
            });
        }
        Ok(ConvFfn {
            dim,
            hidden,
            kernel,
            dw_w: kept(
                image,
                format_args!("{p}.ffn.dw.weight"),
                &[kernel, kernel, dim],
            )?,
            dw_b: kept(image, format_args!("{p}.ffn.dw.bias"), &[dim])?,
            fc1: matrix(image, format_args!("{p}.ffn.fc1.weight"), hidden, dim)?,
            fc1_b: vector(image, format_args!("{p}.ffn.fc1.bias"), hidden)?,
            fc2: matrix(image, format_args!("{p}.ffn.fc2.weight"), dim, hidden)?,
            fc2_b: vector(image, format_args!("{p}.ffn.fc2.bias"), dim)?,
            scale: kept(image, format_args!("{p}.ffn_scale"), &[dim])?,
        })
    }

    /// ConvFFN depthwise kernel size.
    pub fn kernel(&self) -> usize {
        self.kernel
    }

    fn geometry(&self, shape: Shape, kernel: usize) -> Grouped {
        Grouped {
            height: shape.height,
            width: shape.width,
            channels: self.dim,
            mult: 1,
            kernel,
            stride: 1,
        }
    }

    fn tile_rows(&self, shape: Shape) -> usize {
        let per_row = shape.width.max(1) * (self.dim + self.hidden);
        (TILE_FLOATS / per_row).clamp(1, shape.height.max(1))
    }

    fn conv_scratch(&self, shape: Shape, input: &FfnInput<'_>) -> usize {
        let k = self.kernel.max(input.kernel());
        self.geometry(shape, k).scratch_floats()
    }

    fn linear_scratch(&self, pixels: usize) -> usize {
        linear_scratch_bytes(&self.fc1, pixels).max(linear_scratch_bytes(&self.fc2, pixels))
    }

    /// The work-region buffers for tiles of `rows` output rows, declared once: the conv
    /// scratch, the window of `y` rows the depthwise conv reads, one tile of its output
    /// (and of fc2's), one tile of the hidden layer, the layer scale decoded, and the
    /// linear scratch.
    fn scratch(&self, shape: Shape, input: &FfnInput<'_>, rows: usize) -> Scratch<5, 1> {
        let px = rows * shape.width;
        Scratch {
            f32s: [
                self.conv_scratch(shape, input),
                (rows + self.kernel - 1) * shape.width * self.dim,
                px * self.dim,
                px * self.hidden,
                self.dim,
            ],
            bytes: [self.linear_scratch(px)],
        }
    }

    /// Scratch taken from the work region for an activation of `shape`.
    pub(crate) fn work(&self, shape: Shape, input: &FfnInput<'_>) -> Work {
        Work(
            self.scratch(shape, input, self.tile_rows(shape))
                .padded_bytes(),
        )
    }

    /// Replace `x` (of `shape`) by `y + ls ⊙ ConvFFN(y)`, where `y` is `x` or a
    /// depthwise conv of it (see [`FfnInput`]).
    pub fn residual_in_place(
        &self,
        ctx: &mut Ctx<'_>,
        x: &mut [f32],
        shape: Shape,
        input: FfnInput<'_>,
        arena: &mut Arena<'_>,
    ) -> Result<(), Error> {
        self.stream(ctx, x, shape, input, self.tile_rows(shape), arena)
    }

    /// [`ConvFfn::residual_in_place`] with `tile_rows` output rows per tile.
    fn stream(
        &self,
        ctx: &mut Ctx<'_>,
        x: &mut [f32],
        shape: Shape,
        input: FfnInput<'_>,
        tile_rows: usize,
        arena: &mut Arena<'_>,
    ) -> Result<(), Error> {
        let (h, w, c) = (shape.height, shape.width, self.dim);
        if shape.channels != c {
            return Err(Error::Length {
                what: "ConvFFN input channels",
                expected: c,
                got: shape.channels,
            });
        }
        // y rows are produced ahead of the output only as far as the ConvFFN reads; a
        // wider mixer would need x rows the output has already replaced.
        if input.kernel() > self.kernel {
            return Err(Error::Config {
                what: "RepMixer kernel larger than the ConvFFN kernel",
            });
        }
        let x = prefix_mut(x, shape.len())?;
        let ffn = self.geometry(shape, self.kernel);
        let row = w * c;
        let tile_rows = tile_rows.clamp(1, h.max(1));
        let window_rows = tile_rows + self.kernel - 1;
        arena.scope(|a| {
            let ([conv_scratch, window, d_buf, h_buf, scale], [lin]) =
                self.scratch(shape, &input, tile_rows).carve(a)?;
            self.scale.load(0, scale)?;

            // y rows `ys .. ye` are in `window`.
            let (mut ys, mut ye) = (0usize, 0usize);
            let mut r0 = 0;
            while r0 < h {
                let r1 = (r0 + tile_rows).min(h);
                let need = ffn.input_rows(r0..r1);
                if need.start > ys {
                    let keep = ye.saturating_sub(need.start);
                    window.copy_within((ye - keep - ys) * row..(ye - ys) * row, 0);
                    ys = need.start;
                    ye = ys + keep;
                }
                if need.end > ye {
                    let slot = window
                        .get_mut((ye - ys) * row..(need.end - ys) * row)
                        .ok_or(Error::Length {
                            what: "ConvFFN row window",
                            expected: (need.end - ys) * row,
                            got: window_rows * row,
                        })?;
                    match input {
                        FfnInput::Identity => {
                            let src = x.get(ye * row..need.end * row).unwrap_or_default();
                            slot.copy_from_slice(src);
                        }
                        FfnInput::Mixer {
                            kernel,
                            weight,
                            bias,
                        } => {
                            let g = self.geometry(shape, kernel);
                            // These x rows all lie at or below r0 (see the kernel check
                            // above), so none has been overwritten yet.
                            let xr = g.input_rows(ye..need.end);
                            let src = x.get(xr.start * row..xr.end * row).unwrap_or_default();
                            grouped_conv(
                                ctx,
                                &g,
                                ConvParams { weight, bias },
                                InputRows {
                                    data: src,
                                    first_row: xr.start,
                                },
                                ye..need.end,
                                slot,
                                conv_scratch,
                            )?;
                        }
                    }
                    ye = need.end;
                }

                let px = (r1 - r0) * w;
                let d = prefix_mut(d_buf, px * c)?;
                let ys_rows = window.get(..(ye - ys) * row).unwrap_or_default();
                grouped_conv(
                    ctx,
                    &ffn,
                    ConvParams {
                        weight: self.dw_w,
                        bias: self.dw_b,
                    },
                    InputRows {
                        data: ys_rows,
                        first_row: ys,
                    },
                    r0..r1,
                    d,
                    conv_scratch,
                )?;
                let hid = prefix_mut(h_buf, px * self.hidden)?;
                linear(ctx, &self.fc1, Some(&self.fc1_b), d, px, hid, lin)?;
                gelu_inplace(ctx, hid);
                linear(ctx, &self.fc2, Some(&self.fc2_b), hid, px, d, lin)?;
                let y = window
                    .get((r0 - ys) * row..(r1 - ys) * row)
                    .unwrap_or_default();
                let out = x.get_mut(r0 * row..r1 * row).unwrap_or_default();
                scaled_residual(out, y, d, scale);
                r0 = r1;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_quant::DType;
    use std::vec;
    use std::vec::Vec;

    fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        crate::test_util::values(n, seed)
            .into_iter()
            .map(|v| amp * v)
            .collect()
    }

    struct Params32 {
        dw: Vec<f32>,
        dwb: Vec<f32>,
        fc1: Vec<u8>,
        b1: Vec<f32>,
        fc2: Vec<u8>,
        b2: Vec<f32>,
        ls: Vec<f32>,
        mix: Vec<f32>,
        mixb: Vec<f32>,
    }

    fn bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Straight from the definition over the whole activation, in f64:
    /// y = mixer(x) (or x), out = y + ls ⊙ fc2(gelu(fc1(dw(y)))).
    fn reference(
        x: &[f32],
        shape: Shape,
        hid: usize,
        k: usize,
        mk: Option<usize>,
        p: &Params32,
    ) -> Vec<f32> {
        let (h, w, c) = (shape.height, shape.width, shape.channels);
        let f = |v: &[u8]| -> Vec<f32> {
            v.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let (w1, w2) = (f(&p.fc1), f(&p.fc2));
        let dw = |src: &[f64], wt: &[f32], b: &[f32], k: usize| -> Vec<f64> {
            let pad = (k / 2) as isize;
            let mut out = vec![0f64; h * w * c];
            for oy in 0..h {
                for ox in 0..w {
                    for ch in 0..c {
                        let mut acc = f64::from(b[ch]);
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = oy as isize + ky as isize - pad;
                                let ix = ox as isize + kx as isize - pad;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                acc += src[(iy as usize * w + ix as usize) * c + ch]
                                    * f64::from(wt[(ky * k + kx) * c + ch]);
                            }
                        }
                        out[(oy * w + ox) * c + ch] = acc;
                    }
                }
            }
            out
        };
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let y = match mk {
            Some(mk) => dw(&x64, &p.mix, &p.mixb, mk),
            None => x64,
        };
        let d = dw(&y, &p.dw, &p.dwb, k);
        let mut out = vec![0f32; h * w * c];
        for px in 0..h * w {
            let hv: Vec<f64> = (0..hid)
                .map(|j| {
                    let z = f64::from(p.b1[j])
                        + (0..c)
                            .map(|i| f64::from(w1[j * c + i]) * d[px * c + i])
                            .sum::<f64>();
                    0.5 * z * (1.0 + libm::erf(z / core::f64::consts::SQRT_2))
                })
                .collect();
            for o in 0..c {
                let f2 = f64::from(p.b2[o])
                    + (0..hid)
                        .map(|j| f64::from(w2[o * hid + j]) * hv[j])
                        .sum::<f64>();
                out[px * c + o] = (y[px * c + o] + f64::from(p.ls[o]) * f2) as f32;
            }
        }
        out
    }

    #[test]
    fn streaming_in_place_matches_the_definition_for_any_tile_height() {
        // 11 rows: tiles of 1, 2, 3, 4 and 11 rows, so windows shift by less than, as
        // much as and more than the 3-row halo, and the last tile is short.
        let (h, w, c, hid, k) = (11, 5, 6, 10, 7);
        let p = Params32 {
            dw: values(k * k * c, 1, 0.4),
            dwb: values(c, 2, 0.1),
            fc1: bytes(&values(hid * c, 3, 0.5)),
            b1: values(hid, 4, 0.1),
            fc2: bytes(&values(c * hid, 5, 0.5)),
            b2: values(c, 6, 0.1),
            ls: values(c, 7, 0.5),
            mix: values(9 * c, 8, 0.5),
            mixb: values(c, 9, 0.1),
        };
        let ffn = ConvFfn {
            dim: c,
            hidden: hid,
            kernel: k,
            dw_w: Vector::from_f32(&p.dw),
            dw_b: Vector::from_f32(&p.dwb),
            fc1: Weights::new(DType::F32, hid, c, &p.fc1).unwrap(),
            fc1_b: Vector::from_f32(&p.b1),
            fc2: Weights::new(DType::F32, c, hid, &p.fc2).unwrap(),
            fc2_b: Vector::from_f32(&p.b2),
            scale: Vector::from_f32(&p.ls),
        };
        let shape = Shape {
            height: h,
            width: w,
            channels: c,
        };
        let x0 = values(h * w * c, 10, 1.0);
        let mixer = FfnInput::Mixer {
            kernel: 3,
            weight: Vector::from_f32(&p.mix),
            bias: Vector::from_f32(&p.mixb),
        };
        for (input, mk) in [(FfnInput::Identity, None), (mixer, Some(3))] {
            let want = reference(&x0, shape, hid, k, mk, &p);
            let mut whole: Option<Vec<f32>> = None;
            for tile in [11, 1, 2, 3, 4] {
                let mut x = x0.clone();
                let mut buf = vec![0u8; 1 << 16];
                let mut arena = Arena::new(&mut buf);
                ffn.stream(
                    &mut Ctx::new(&mut glimpse_hal::Sequential),
                    &mut x,
                    shape,
                    input,
                    tile,
                    &mut arena,
                )
                .unwrap();
                let err = x
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f32::max);
                // Values of order 1 through two small matmuls: f32 rounding ~1e-6.
                assert!(err < 1e-5, "tile {tile}, mixer {mk:?}: {err}");
                // Tiling changes nothing but the order tiles are computed in.
                match &whole {
                    None => whole = Some(x),
                    Some(wv) => assert_eq!(&x, wv, "tile {tile}, mixer {mk:?}"),
                }
            }
        }
        // A mixer wider than the ConvFFN is refused, not computed from overwritten rows.
        let wide = FfnInput::Mixer {
            kernel: 9,
            weight: Vector::from_f32(&p.dw),
            bias: Vector::from_f32(&p.dwb),
        };
        let mut x = x0.clone();
        let mut buf = vec![0u8; 1 << 16];
        let r = ffn.residual_in_place(
            &mut Ctx::new(&mut glimpse_hal::Sequential),
            &mut x,
            shape,
            wide,
            &mut Arena::new(&mut buf),
        );
        assert!(matches!(r, Err(Error::Config { .. })), "{r:?}");
    }
}
