//! Structural reparameterization and BatchNorm folding arithmetic (spec §2.2), and the
//! kernel layout changes from PyTorch's OIHW to the canonical OHWI / HWC forms.
//!
//! Everything is computed in f64 from exactly-widened source values and rounded to f32
//! once at the end, so the fused weights are as close to the real-number result as f32
//! allows (timm does the same sums in f32 and therefore differs by a few ulps).

/// A conv kernel in PyTorch layout `(out, in_per_group, k, k)` with a per-output bias.
#[derive(Clone, Debug, PartialEq)]
pub struct Kernel {
    /// Output channels.
    pub out: usize,
    /// Input channels per group.
    pub in_per_group: usize,
    /// Square kernel size.
    pub k: usize,
    /// Weights, `out * in_per_group * k * k`.
    pub w: Vec<f64>,
    /// Bias, `out`.
    pub b: Vec<f64>,
}

impl Kernel {
    /// An all-zero kernel (the neutral element of [`Kernel::add`]).
    pub fn zeros(out: usize, in_per_group: usize, k: usize) -> Kernel {
        Kernel {
            out,
            in_per_group,
            k,
            w: vec![0.0; out * in_per_group * k * k],
            b: vec![0.0; out],
        }
    }

    /// Add another kernel of the same output/input shape, zero-padding it spatially if it
    /// is smaller (the scale and small-kernel branches are centred in the big kernel).
    pub fn add(&mut self, other: &Kernel) {
        debug_assert_eq!(
            (self.out, self.in_per_group),
            (other.out, other.in_per_group)
        );
        debug_assert!(other.k <= self.k && (self.k - other.k).is_multiple_of(2));
        let pad = (self.k - other.k) / 2;
        for o in 0..self.out {
            for i in 0..self.in_per_group {
                for y in 0..other.k {
                    for x in 0..other.k {
                        let src = ((o * other.in_per_group + i) * other.k + y) * other.k + x;
                        let dst =
                            ((o * self.in_per_group + i) * self.k + y + pad) * self.k + x + pad;
                        self.w[dst] += other.w[src];
                    }
                }
            }
            self.b[o] += other.b[o];
        }
    }
}

/// BatchNorm statistics and affine parameters, per channel.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    /// γ.
    pub gamma: Vec<f64>,
    /// β.
    pub beta: Vec<f64>,
    /// Running mean μ.
    pub mean: Vec<f64>,
    /// Running variance σ².
    pub var: Vec<f64>,
    /// ε.
    pub eps: f64,
}

impl BatchNorm {
    /// `(t, shift)` with `t = γ/√(σ²+ε)` and `shift = β − μ·t`, so `bn(y) = t·y + shift`.
    pub fn affine(&self) -> (Vec<f64>, Vec<f64>) {
        let t: Vec<f64> = self
            .gamma
            .iter()
            .zip(&self.var)
            .map(|(g, v)| g / (v + self.eps).sqrt())
            .collect();
        let shift = self
            .beta
            .iter()
            .zip(&self.mean)
            .zip(&t)
            .map(|((b, m), t)| b - m * t)
            .collect();
        (t, shift)
    }
}

/// Fold a BatchNorm into the bias-free conv before it: `W' = W·t[o]`, `b' = β − μ·t`.
pub fn fuse_conv_bn(
    out: usize,
    in_per_group: usize,
    k: usize,
    w: &[f64],
    bn: &BatchNorm,
) -> Kernel {
    let (t, shift) = bn.affine();
    let per_out = in_per_group * k * k;
    let w = w
        .chunks_exact(per_out)
        .zip(&t)
        .flat_map(|(row, t)| row.iter().map(move |x| x * t))
        .collect();
    Kernel {
        out,
        in_per_group,
        k,
        w,
        b: shift,
    }
}

/// The identity as a grouped conv: `K[o, o mod in_per_group, k/2, k/2] = 1`.
pub fn identity(channels: usize, in_per_group: usize, k: usize) -> Kernel {
    let mut id = Kernel::zeros(channels, in_per_group, k);
    let c = k / 2;
    for o in 0..channels {
        id.w[((o * in_per_group + o % in_per_group) * k + c) * k + c] = 1.0;
    }
    id
}

/// A bare BatchNorm on the identity path (MobileOne's skip branch) as a conv kernel.
pub fn fuse_identity_bn(channels: usize, in_per_group: usize, k: usize, bn: &BatchNorm) -> Kernel {
    let id = identity(channels, in_per_group, k);
    fuse_conv_bn(channels, in_per_group, k, &id.w, bn)
}

/// RepMixer: `x + ls·(mixer(x) − norm(x))` as one depthwise conv:
/// `W = K_id + ls[c]·(W_m − W_n)`, `b = ls[c]·(b_m − b_n)`. Without a layer scale, ls = 1.
pub fn repmixer(mixer: &Kernel, norm: &Kernel, layer_scale: Option<&[f64]>) -> Kernel {
    let mut out = identity(mixer.out, mixer.in_per_group, mixer.k);
    let per_out = mixer.in_per_group * mixer.k * mixer.k;
    for o in 0..mixer.out {
        let ls = layer_scale.map_or(1.0, |l| l[o]);
        for j in 0..per_out {
            let i = o * per_out + j;
            out.w[i] += ls * (mixer.w[i] - norm.w[i]);
        }
        out.b[o] = ls * (mixer.b[o] - norm.b[o]);
    }
    out
}

/// `(O, I, kh, kw)` → `(O, kh, kw, I)`.
pub fn oihw_to_ohwi<T: Copy>(w: &[T], o: usize, i: usize, kh: usize, kw: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(w.len());
    for oo in 0..o {
        for y in 0..kh {
            for x in 0..kw {
                for ii in 0..i {
                    out.push(w[((oo * i + ii) * kh + y) * kw + x]);
                }
            }
        }
    }
    out
}

/// Depthwise / one-input-per-group `(C, 1, kh, kw)` → `(kh, kw, C)`.
pub fn dw_to_hwc<T: Copy>(w: &[T], c: usize, kh: usize, kw: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(w.len());
    for y in 0..kh {
        for x in 0..kw {
            for cc in 0..c {
                out.push(w[(cc * kh + y) * kw + x]);
            }
        }
    }
    out
}

/// Round to f32 (nearest).
pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_move_the_right_elements() {
        // w[o][i][y][x] = 1000o + 100i + 10y + x makes every index recoverable.
        let (o, i, k) = (2, 3, 2);
        let w: Vec<u32> = (0..o * i * k * k)
            .map(|n| {
                let (oo, r) = (n / (i * k * k), n % (i * k * k));
                let (ii, r) = (r / (k * k), r % (k * k));
                (1000 * oo + 100 * ii + 10 * (r / k) + r % k) as u32
            })
            .collect();
        let t = oihw_to_ohwi(&w, o, i, k, k);
        // t[o][y][x][i]
        // o=1, y=0, x=1, i=2
        assert_eq!(t[(k * k + 1) * i + 2], 1000 + 200 + 1);
        // o=0, y=1, x=0, i=1
        assert_eq!(t[k * i + 1], 100 + 10);
        let dw: Vec<u32> = (0..4 * 9).map(|n| (100 * (n / 9) + n % 9) as u32).collect();
        let h = dw_to_hwc(&dw, 4, 3, 3);
        // h[y][x][c] = 100c + 3y + x
        assert_eq!(h[(2 * 3 + 1) * 4 + 3], 300 + 7);
    }

    #[test]
    fn identity_bn_branch_reproduces_batchnorm() {
        // A 1x1 identity with BN fused must equal applying the BN to the input channel.
        let bn = BatchNorm {
            gamma: vec![2.0, -0.5],
            beta: vec![0.25, 1.0],
            mean: vec![0.5, -1.0],
            var: vec![3.0, 0.25],
            eps: 1e-5,
        };
        let k = fuse_identity_bn(2, 2, 3, &bn);
        let x = [0.7, -1.3];
        for o in 0..2 {
            let conv: f64 = (0..2)
                .map(|i| k.w[((o * 2 + i) * 3 + 1) * 3 + 1] * x[i])
                .sum::<f64>()
                + k.b[o];
            let direct = bn.gamma[o] * (x[o] - bn.mean[o]) / (bn.var[o] + 1e-5).sqrt() + bn.beta[o];
            assert!((conv - direct).abs() < 1e-12, "{conv} vs {direct}");
        }
        // Off-centre taps stay zero.
        assert_eq!(k.w[0], 0.0);
    }

    #[test]
    fn add_pads_smaller_kernels_into_the_centre() {
        let mut big = Kernel::zeros(1, 1, 5);
        let small = Kernel {
            out: 1,
            in_per_group: 1,
            k: 3,
            w: (1..=9).map(f64::from).collect(),
            b: vec![0.5],
        };
        big.add(&small);
        assert_eq!(big.w[5 + 1], 1.0); // (1,1)
        assert_eq!(big.w[3 * 5 + 3], 9.0); // (3,3)
        assert_eq!(big.w[0], 0.0);
        assert_eq!(big.b, vec![0.5]);
    }
}
