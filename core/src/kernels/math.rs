//! Element-wise math and normalisation in f32: RMSNorm, SiLU, exact-erf GELU, softmax,
//! rotate-half RoPE, and the add/multiply helpers the blocks are glued with.
//!
//! Transcendentals come from `libm` (the musl implementations, ≤ 1 ulp for the f32
//! functions used here), except GELU's erf, which is a branch-free polynomial form so
//! it vectorises (within 1.4 ulp); the tests measure each against an f64 evaluation.

use crate::error::Error;
use crate::kernels::cpu::F32Kernel;
use crate::kernels::par::{SharedMut, for_pieces, task_count};
use crate::kernels::{Ctx, Vector};

/// `Ok` when `got == expected`, else the length error naming `what`.
pub(crate) fn same_len(what: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            got,
        })
    }
}

/// Sum of squares with 8 partial sums (vectorises; error grows with len/8).
fn sum_sq(x: &[f32]) -> f32 {
    let (c, t) = x.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for v in c {
        for k in 0..8 {
            acc[k] += v[k] * v[k];
        }
    }
    let tail: f32 = t.iter().map(|v| v * v).sum();
    acc.iter().sum::<f32>() + tail
}

/// RMSNorm of each `w.len()`-wide row of `x` into `out`:
/// `out = x / sqrt(mean(x²) + eps) · w` (HF Qwen2/Llama `RMSNorm`, all in f32).
pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &Vector, eps: f32) -> Result<(), Error> {
    let d = w.len();
    same_len("rmsnorm output", x.len(), out.len())?;
    if d == 0 || !x.len().is_multiple_of(d) {
        return Err(Error::Length {
            what: "rmsnorm input (rows of the weight's width)",
            expected: d,
            got: x.len(),
        });
    }
    for (o, xr) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = sum_sq(xr) / d as f32;
        let inv = 1.0 / libm::sqrtf(ms + eps);
        for (o, &v) in o.iter_mut().zip(xr) {
            *o = v * inv;
        }
        w.zip_apply(o, |a, b| a * b);
    }
    Ok(())
}

const LOG2E: f32 = core::f32::consts::LOG2_E;
/// ln 2 split in two so `n·LN2_HI` is exact for the `n` that occur (|n| < 2^8).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1.5·2^23: adding it rounds an f32 below 2^22 to an integer (ties to even), readable
/// back from the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x, branch-free so loops over it vectorise (libm's `expf` is a call per value).
/// Inputs are clamped to [-87, 88] (e^-87 ≈ 1.6e-38 stands in for anything smaller, e^88
/// ≈ 1.7e38 for anything larger); relative error about 2e-7 (range reduction by ln 2,
/// degree-6 Taylor polynomial on |r| <= ln2/2; see the test), against libm's ~6e-8.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND_MAGIC;
    let n = t - ROUND_MAGIC;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The low mantissa bits of t hold n + 2^22; n is in -126..=127, so 127 + n is a
    // normal f32 exponent.
    let ni = (t.to_bits() as i32) - 0x4B40_0000;
    p * f32::from_bits(((127 + ni) as u32) << 23)
}

/// SiLU, `x·σ(x)` = `x / (1 + e^-x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// `gate = silu(gate) ⊙ up`: the SwiGLU product, vectorised at the widest width
/// `ctx.cpu` allows (every value alone, so every width gives the same bits; it stays on
/// the calling thread: a decode step's MLP is too short to split).
pub fn silu_mul(ctx: &Ctx<'_>, gate: &mut [f32], up: &[f32]) -> Result<(), Error> {
    same_len("silu_mul operand", gate.len(), up.len())?;
    let kind = ctx.usable().f32_kernel();
    #[cfg(target_arch = "x86_64")]
    match kind {
        // SAFETY: the kernel kind was chosen from the active CPU features.
        F32Kernel::Avx512 => unsafe { silu_mul_avx512(gate, up) },
        // SAFETY: as above.
        F32Kernel::Avx2 => unsafe { silu_mul_avx2(gate, up) },
        _ => silu_mul_body(gate, up),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kind;
        silu_mul_body(gate, up);
    }
    Ok(())
}

#[inline(always)]
fn silu_mul_body(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = silu(*g) * u;
    }
}

/// # Safety
///
/// The CPU implements AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up);
}

/// # Safety
///
/// The CPU implements AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn silu_mul_avx512(gate: &mut [f32], up: &[f32]) {
    silu_mul_body(gate, up);
}

/// `erf(z)/z` on `|z| < 1` as a polynomial in `z²` (fitted by bench/fit_gelu.py; the
/// first coefficient is the fit's, an ulp from 2/√π, not the constant).
#[allow(clippy::approx_constant)]
const ERF_P: [f32; 6] = [
    1.1283791,
    -0.3761232,
    0.112801306,
    -0.02670995,
    0.0049160235,
    -0.0005625396,
];
/// `erfc(z)·e^{z²}` on `0.5 <= z <= 6` as a polynomial in `t = 1/(1+z)` (same script).
const ERFC_Q: [f32; 10] = [
    3.137114e-5,
    0.5630876,
    0.58105636,
    0.1345769,
    0.5271385,
    -3.5553353,
    6.0477686,
    -5.2325816,
    2.39878,
    -0.46428153,
];
/// Taylor series of e^r, enough for |r| <= ln2/2 to 7e-9.
const EXP_TAYLOR: [f32; 8] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
];
/// Taylor series of e^-d for the small |d| < 0.04 of the squaring split below.
const EXPM_D: [f32; 5] = [1.0, -1.0, 0.5, -1.0 / 6.0, 1.0 / 24.0];

/// `c[0] + x·(c[1] + x·(...))`, multiply then add (never fused, so every target rounds
/// the same way).
#[inline(always)]
fn horner(c: &[f32], x: f32) -> f32 {
    let mut it = c.iter().rev();
    let mut acc = it.next().copied().unwrap_or(0.0);
    for &k in it {
        acc = acc * x + k;
    }
    acc
}

/// e^a for `-87 <= a <= 0`, branch-free (Cody-Waite reduction by ln 2, degree-7 Taylor
/// polynomial): within 2 ulp.
#[inline(always)]
fn exp_le0(a: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split so that n·LN2_HI is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to an integer that the low mantissa bits then hold.
    const MAGIC: f32 = 12_582_912.0;
    let t = a * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (a - n * LN2_HI) - n * LN2_LO;
    let ni = (t.to_bits() as i32) - 0x4B40_0000;
    let scale = f32::from_bits(((127 + ni) as u32) << 23);
    horner(&EXP_TAYLOR, r) * scale
}

/// Exact GELU, `x/2·(1 + erf(x/√2))` (PyTorch's default `approximate='none'`).
///
/// Branch-free, so slice loops over it vectorise: both formulas below are evaluated and
/// one selected. With `z = x/√2`:
/// - `-0.5 <= z < 1`: `1 + erf(z) = 1 + z·P(z²)`;
/// - elsewhere: `erfc(|z|) = e^{-x²/2}·Q(1/(1+|z|))`, giving `1 + erf(z)` as `erfc(-z)`
///   for negative z (no cancellation in the negative tail) and `2 - erfc(z)` above.
///
/// `e^{-x²/2}` is taken as `e^{-xh²/2}·e^{-d}` with `xh` the top 12 significant bits of
/// `|x|` (so `xh²` is exact) and `d = (|x|-xh)(|x|+xh)/2`, keeping the rounding of `x²`
/// out of the exponent. Measured against an f64 erf: within 1.4 ulp on [-10, 10] (with
/// a 1e-7 absolute floor where GELU passes zero), within 6 ulp relative down to
/// 1e-15 in the negative tail; see the tests and bench/fit_gelu.py.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    use core::f32::consts::{FRAC_1_SQRT_2, SQRT_2};
    let z = x * FRAC_1_SQRT_2;
    let near = 1.0 + z * horner(&ERF_P, z * z);
    let ax = x.abs().clamp(0.5 * SQRT_2, 6.0 * SQRT_2);
    let xh = f32::from_bits(ax.to_bits() & 0xFFFF_F000);
    let d = (ax - xh) * (ax + xh) * 0.5;
    let e = exp_le0(-(xh * xh * 0.5)) * horner(&EXPM_D, d);
    let erfc = e * horner(&ERFC_Q, 1.0 / (1.0 + ax * FRAC_1_SQRT_2));
    // Past |z| = 6, erfc(|z|) < 2e-17 is below anything f32 GELU can show next to x.
    let erfc = if x.abs() > 6.0 * SQRT_2 { 0.0 } else { erfc };
    let far = if z < 0.0 { erfc } else { 2.0 - erfc };
    let one_plus_erf = if (-0.5..1.0).contains(&z) { near } else { far };
    0.5 * x * one_plus_erf
}

/// Multiply-adds one GELU is worth, for sizing tasks (the erf polynomials and the
/// exponential).
const GELU_WORK: usize = 32;

/// [`gelu`] over a slice, in place, vectorised at the widest width `ctx.cpu` allows and
/// split across `ctx`'s tasks when long (the same bits either way: each element is
/// computed alone).
pub fn gelu_inplace(ctx: &mut Ctx<'_>, x: &mut [f32]) {
    let (kind, exec) = (ctx.usable().f32_kernel(), &mut *ctx.exec);
    let len = x.len();
    let tasks = task_count(exec, len / 64, len.saturating_mul(GELU_WORK));
    if tasks <= 1 {
        gelu_vectorised(kind, x);
        return;
    }
    let out = SharedMut::new(x);
    for_pieces(exec, len, tasks, 64, &|range| {
        // SAFETY: the pieces of `for_pieces` are disjoint, so each task owns its range.
        if let Some(s) = unsafe { out.slice(range) } {
            gelu_vectorised(kind, s);
        }
    });
}

/// [`gelu`] over a slice with the `kind` kernels, on this thread.
fn gelu_vectorised(kind: F32Kernel, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match kind {
        // SAFETY: the kernel kind was chosen from the active CPU features.
        F32Kernel::Avx512 => return unsafe { gelu_avx512(x) },
        F32Kernel::Avx2 => return unsafe { gelu_avx2(x) },
        _ => {}
    }
    let _ = kind;
    gelu_slice(x);
}

#[inline(always)]
fn gelu_slice(x: &mut [f32]) {
    for v in x {
        *v = gelu(*v);
    }
}

/// # Safety
///
/// The CPU implements AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    gelu_slice(x);
}

/// # Safety
///
/// The CPU implements AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn gelu_avx512(x: &mut [f32]) {
    gelu_slice(x);
}

/// Softmax in place, max-subtracted so no `exp` overflows. An empty slice is left alone;
/// a row of `-inf` becomes NaN, as in PyTorch (callers never mask a whole row).
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    // Two loops: the exponentials vectorise, the sum keeps its order. A row of -inf
    // gives -inf - -inf = NaN, which the clamp in `exp` passes through.
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let sum = x.iter().fold(0f32, |s, &v| s + v);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `y += x`.
pub fn add(y: &mut [f32], x: &[f32]) -> Result<(), Error> {
    same_len("add operand", y.len(), x.len())?;
    for (a, &b) in y.iter_mut().zip(x) {
        *a += b;
    }
    Ok(())
}

/// `y *= x` element-wise.
pub fn mul(y: &mut [f32], x: &[f32]) -> Result<(), Error> {
    same_len("mul operand", y.len(), x.len())?;
    for (a, &b) in y.iter_mut().zip(x) {
        *a *= b;
    }
    Ok(())
}

/// `y += a·x`.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// RoPE inverse frequency of pair `j` of a `head_dim`-wide head: `θ^(-2j/head_dim)`.
///
/// Computed in f64 and rounded once; HF computes the same quantity in f32
/// (`1/base**(arange(0,d,2)/d)`), which agrees to within an ulp.
pub fn rope_inv_freq(theta: f32, head_dim: usize, j: usize) -> f32 {
    let e = (2 * j) as f64 / head_dim as f64;
    (1.0 / libm::pow(f64::from(theta), e)) as f32
}

/// cos/sin of the RoPE angles of position `pos`: `cos[j] = cos(pos·inv_freq_j)` for
/// `j < head_dim/2` (each entry serves both halves of the head).
///
/// The angle is the f32 product `pos·inv_freq`, exactly as HF's `Qwen2RotaryEmbedding`
/// and `LlamaRotaryEmbedding` form it (an f32 matmul), so positions agree with the
/// reference bit for bit; its cosine and sine are then evaluated in f64 and rounded once,
/// i.e. correctly rounded up to the rare double-rounding case.
pub fn rope_cos_sin(
    pos: usize,
    theta: f32,
    head_dim: usize,
    cos: &mut [f32],
    sin: &mut [f32],
) -> Result<(), Error> {
    let half = head_dim / 2;
    same_len("rope cos table", half, cos.len())?;
    same_len("rope sin table", half, sin.len())?;
    for (j, (c, s)) in cos.iter_mut().zip(sin.iter_mut()).enumerate() {
        let angle = pos as f32 * rope_inv_freq(theta, head_dim, j);
        *c = libm::cos(f64::from(angle)) as f32;
        *s = libm::sin(f64::from(angle)) as f32;
    }
    Ok(())
}

/// Rotate-half RoPE (GPT-NeoX / HF layout) of every `2·cos.len()`-wide head in `x`:
/// with `x = [a, b]`, `x' = [a·cos − b·sin, b·cos + a·sin]`.
pub fn rope_rotate_half(x: &mut [f32], cos: &[f32], sin: &[f32]) -> Result<(), Error> {
    let half = cos.len();
    same_len("rope sin table", half, sin.len())?;
    if half == 0 || !x.len().is_multiple_of(2 * half) {
        return Err(Error::Length {
            what: "rope input (whole heads)",
            expected: 2 * half,
            got: x.len(),
        });
    }
    for head in x.chunks_exact_mut(2 * half) {
        let (a, b) = head.split_at_mut(half);
        for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(cos).zip(sin) {
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x1 * c + x0 * s;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::one_task;

    #[test]
    fn exp_is_accurate_and_saturates() {
        // Range reduction leaves |r| <= ln2/2, where the degree-6 Taylor remainder is
        // r^7/7! < 1.3e-7 relative; with the rounding of ~8 operations the bound is
        // 4e-7 (libm's expf is within ~6e-8).
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
            x += 0.001_37;
        }
        assert!(worst < 4e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 2e-38);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
        assert!(exp(f32::NAN).is_nan());
        // SiLU at the extremes: x for large x, -0 side for very negative x.
        assert_eq!(silu(100.0), 100.0);
        assert!(silu(-100.0).abs() < 1e-30);
        std::println!("exp: worst relative error {worst:.2e} on [-87, 88]");
    }
    use std::vec;
    use std::vec::Vec;

    fn ulp(x: f32) -> f64 {
        let a = x.abs();
        f64::from(f32::from_bits(a.to_bits() + 1) - a)
    }

    #[test]
    fn gelu_matches_f64_erf() {
        // Grid over [-10, 10]: covers the tails where erf saturates and the core where
        // GELU is curved. libm's erff is within 1 ulp, so GELU's few f32 operations
        // leave it within a few ulp of the f64 value (or 1e-7 absolute near its zero).
        let mut worst = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 5e-4;
            let want = 0.5 * f64::from(x) * (1.0 + libm::erf(f64::from(x) / 2f64.sqrt()));
            let got = f64::from(gelu(x));
            let err = (got - want).abs() / (ulp(want as f32).max(1e-7));
            worst = worst.max(err);
        }
        std::println!("gelu: worst error {worst:.2} ulp");
        // bench/fit_gelu.py simulates the f32 evaluation: 1.31 ulp worst on this grid.
        assert!(worst <= 2.0, "gelu worst {worst} ulp");
    }

    #[test]
    fn gelu_negative_tail_is_relatively_accurate() {
        // Where GELU is tiny (x down to -8.4, values down to ~1e-15) the erfc form keeps
        // the relative error small; the simulation in bench/fit_gelu.py says 5.3 ulp.
        let mut worst = 0f64;
        for i in 0..=7_800 {
            let x = -0.6 - i as f32 * 1e-3;
            let xd = f64::from(x);
            let want = 0.5 * xd * libm::erfc(-xd / 2f64.sqrt());
            let err = (f64::from(gelu(x)) - want).abs() / ulp(want as f32);
            worst = worst.max(err);
        }
        std::println!("gelu tail: worst relative error {worst:.2} ulp");
        assert!(worst <= 8.0, "gelu tail worst {worst} ulp");
    }

    #[test]
    fn gelu_special_values_and_slices() {
        assert!(gelu(f32::NAN).is_nan());
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
        assert_eq!(gelu(0.0), 0.0);
        assert_eq!(gelu(100.0), 100.0);
        assert_eq!(gelu(-100.0), 0.0);
        assert!(
            gelu(f32::NEG_INFINITY).is_nan(),
            "-inf·0, as libm's and PyTorch's"
        );
        // The slice version (vectorised when the CPU allows) gives the scalar bits.
        let mut v: std::vec::Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.021).collect();
        let want: std::vec::Vec<u32> = v.iter().map(|&x| gelu(x).to_bits()).collect();
        one_task(|c| gelu_inplace(c, &mut v));
        let got: std::vec::Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn silu_and_softmax_match_f64() {
        let mut worst = 0f64;
        for i in -4000..=4000 {
            let x = i as f32 * 5e-3;
            let xd = f64::from(x);
            let want = xd / (1.0 + (-xd).exp());
            let err = (f64::from(silu(x)) - want).abs() / ulp(want as f32).max(1e-7);
            worst = worst.max(err);
        }
        // expf (1 ulp), one add, one divide: a few ulp.
        assert!(worst <= 4.0, "silu worst {worst} ulp");

        let mut x: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        x[7] = 1000.0; // would overflow exp without the max subtraction
        let xd: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let m = xd.iter().cloned().fold(f64::MIN, f64::max);
        let s: f64 = xd.iter().map(|v| (v - m).exp()).sum();
        softmax(&mut x);
        let total: f32 = x.iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
        for (g, v) in x.iter().zip(&xd) {
            let want = (v - m).exp() / s;
            // Relative 1e-6: expf's ulp plus the rounding of the f32 sum of 100 terms.
            assert!(
                (f64::from(*g) - want).abs() <= 1e-6 * want + 1e-30,
                "{g} vs {want}"
            );
        }
    }

    #[test]
    fn rmsnorm_matches_f64() {
        let x: Vec<f32> = (0..192)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03)
            .collect();
        let w: Vec<f32> = (0..64).map(|i| 0.5 + i as f32 / 64.0).collect();
        let mut out = vec![0f32; x.len()];
        rmsnorm(&mut out, &x, &Vector::from_f32(&w), 1e-6).unwrap();
        for r in 0..3 {
            let row = &x[r * 64..(r + 1) * 64];
            let ms: f64 = row
                .iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                / 64.0;
            let inv = 1.0 / (ms + 1e-6).sqrt();
            for k in 0..64 {
                let want = f64::from(row[k]) * inv * f64::from(w[k]);
                // Sum of 64 squares (relative ~1e-7), sqrt, divide, two products.
                assert!((f64::from(out[r * 64 + k]) - want).abs() <= 1e-6 * want.abs() + 1e-9);
            }
        }
        assert!(rmsnorm(&mut out[..10], &x[..10], &Vector::from_f32(&w), 1e-6).is_err());
    }

    #[test]
    fn rope_tables_against_f64() {
        // Two measurements. (1) cos/sin of the f32 angle we form: evaluated in f64 and
        // rounded once, so within half an ulp (+ a hair for double rounding). (2) against
        // the exact f64 angle pos·θ^(-2j/d): the f32 product itself is off by at most half
        // an ulp of the angle plus the inverse frequency's rounding (~ pos·2^-24 rad),
        // which is the error HF's f32 reference has too.
        let (theta, d) = (1e6f32, 64usize);
        let mut cos = vec![0f32; d / 2];
        let mut sin = vec![0f32; d / 2];
        let mut worst_same = 0f64;
        let mut worst_exact = 0f64;
        for pos in [0usize, 1, 2, 17, 100, 1000, 4095, 32767] {
            rope_cos_sin(pos, theta, d, &mut cos, &mut sin).unwrap();
            for j in 0..d / 2 {
                let a32 = f64::from(pos as f32 * rope_inv_freq(theta, d, j));
                let e1 = (f64::from(cos[j]) - a32.cos())
                    .abs()
                    .max((f64::from(sin[j]) - a32.sin()).abs());
                worst_same = worst_same.max(e1);
                let a64 = pos as f64 * f64::from(theta).powf(-((2 * j) as f64) / d as f64);
                let e2 = (f64::from(cos[j]) - a64.cos())
                    .abs()
                    .max((f64::from(sin[j]) - a64.sin()).abs());
                let bound = pos as f64 * 2f64.powi(-23) + 1e-7;
                assert!(e2 <= bound, "pos {pos} pair {j}: {e2:e} > {bound:e}");
                worst_exact = worst_exact.max(e2 / bound);
            }
        }
        std::println!(
            "rope: |Δ| vs f64 of the same angle {worst_same:e}; vs exact angle {worst_exact:.3} of bound"
        );
        assert!(worst_same <= 6.0e-8, "{worst_same:e}");
    }

    #[test]
    fn rotate_half_is_a_rotation() {
        // Position 0 is the identity; any position preserves each pair's norm.
        let d = 16;
        let mut cos = vec![0f32; d / 2];
        let mut sin = vec![0f32; d / 2];
        let x: Vec<f32> = (0..2 * d).map(|i| i as f32 - 7.0).collect();
        rope_cos_sin(0, 1e4, d, &mut cos, &mut sin).unwrap();
        let mut y = x.clone();
        rope_rotate_half(&mut y, &cos, &sin).unwrap();
        assert_eq!(x, y);
        rope_cos_sin(5, 1e4, d, &mut cos, &mut sin).unwrap();
        rope_rotate_half(&mut y, &cos, &sin).unwrap();
        for h in 0..2 {
            for j in 0..d / 2 {
                let (a, b) = (x[h * d + j], x[h * d + j + d / 2]);
                let (p, q) = (y[h * d + j], y[h * d + j + d / 2]);
                assert!(((a * a + b * b) - (p * p + q * q)).abs() < 1e-3);
                // First pair rotates by exactly 5 rad (inv_freq 1).
                if j == 0 {
                    let (c, s) = (5f32.cos(), 5f32.sin());
                    assert!((p - (a * c - b * s)).abs() < 1e-5);
                }
            }
        }
        assert!(rope_rotate_half(&mut y[..15], &cos, &sin).is_err());
    }
}
