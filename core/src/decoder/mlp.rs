//! The decoder's SwiGLU feed-forward block: `down(silu(gate(x)) ⊙ up(x))`, no biases
//! (fastvlm.md §4.2).

use crate::error::Error;

use crate::kernels::Ctx;
use crate::kernels::linear::{Product, Weights, linear, linear_many};
use crate::kernels::math::silu_mul;

/// The three projections of one layer's MLP.
#[derive(Clone, Copy, Debug)]
pub struct Mlp<'a> {
    /// `[intermediate, hidden]`.
    pub gate: Weights<'a>,
    /// `[intermediate, hidden]`.
    pub up: Weights<'a>,
    /// `[hidden, intermediate]`.
    pub down: Weights<'a>,
}

/// The work buffers of [`Mlp::forward`]: `gate` and `up` hold `m × intermediate` values,
/// `scratch` the linear scratch of the widest product.
#[derive(Debug)]
pub struct MlpWork<'b> {
    /// Gate projection, then the SwiGLU product.
    pub gate: &'b mut [f32],
    /// Up projection.
    pub up: &'b mut [f32],
    /// Linear scratch.
    pub scratch: &'b mut [u8],
}

impl Mlp<'_> {
    /// `out[m×hidden] = down(silu(gate(x)) ⊙ up(x))` for `m` rows of `x`.
    pub fn forward(
        &self,
        ctx: &mut Ctx<'_>,
        x: &[f32],
        m: usize,
        work: MlpWork<'_>,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let MlpWork { gate, up, scratch } = work;
        let inter = self.gate.rows;
        let gate = gate.get_mut(..m * inter).ok_or(Error::Length {
            what: "mlp gate buffer",
            expected: m * inter,
            got: 0,
        })?;
        let up = up.get_mut(..m * inter).ok_or(Error::Length {
            what: "mlp up buffer",
            expected: m * inter,
            got: 0,
        })?;
        linear_many(
            ctx,
            &mut [
                Product {
                    w: &self.gate,
                    bias: None,
                    y: &mut *gate,
                },
                Product {
                    w: &self.up,
                    bias: None,
                    y: &mut *up,
                },
            ],
            x,
            m,
            scratch,
        )?;
        silu_mul(ctx, gate, up)?;
        linear(ctx, &self.down, None, gate, m, out, scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_quant::DType;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn swiglu_matches_f64() {
        let (d, inter, m) = (8, 16, 3);
        let mk = |n: usize, s: f32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as f32 * 0.37 + s).sin()) * 0.5)
                .collect()
        };
        let (wg, wu, wd, x) = (
            mk(inter * d, 0.1),
            mk(inter * d, 0.7),
            mk(d * inter, 1.9),
            mk(m * d, 2.3),
        );
        let b = |w: &[f32]| -> Vec<u8> { w.iter().flat_map(|v| v.to_le_bytes()).collect() };
        let (bg, bu, bd) = (b(&wg), b(&wu), b(&wd));
        let mlp = Mlp {
            gate: Weights::new(DType::F32, inter, d, &bg).unwrap(),
            up: Weights::new(DType::F32, inter, d, &bu).unwrap(),
            down: Weights::new(DType::F32, d, inter, &bd).unwrap(),
        };
        let (mut g, mut u, mut out) = (
            vec![0f32; m * inter],
            vec![0f32; m * inter],
            vec![0f32; m * d],
        );
        let mut scratch = vec![0u8; 1024];
        mlp.forward(
            &mut Ctx::new(&mut glimpse_hal::Sequential),
            &x,
            m,
            MlpWork {
                gate: &mut g,
                up: &mut u,
                scratch: &mut scratch,
            },
            &mut out,
        )
        .unwrap();
        for i in 0..m {
            let h: Vec<f64> = (0..inter)
                .map(|j| {
                    let dot = |w: &[f32]| {
                        (0..d)
                            .map(|k| f64::from(w[j * d + k]) * f64::from(x[i * d + k]))
                            .sum::<f64>()
                    };
                    let gv = dot(&wg);
                    gv / (1.0 + (-gv).exp()) * dot(&wu)
                })
                .collect();
            for r in 0..d {
                let want: f64 = (0..inter)
                    .map(|j| f64::from(wd[r * inter + j]) * h[j])
                    .sum();
                // O(1) values through three f32 matmuls of <= 16 terms and expf: 1e-5.
                assert!((f64::from(out[i * d + r]) - want).abs() < 1e-5);
            }
        }
    }
}
