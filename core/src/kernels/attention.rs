//! Multi-head self-attention that never materializes the `N x N` score matrix: queries
//! go in blocks of [`Q_BLOCK`], keys stream past in blocks of [`K_BLOCK`], and each
//! query keeps a running maximum, a running sum and an output accumulator (online
//! softmax). Scratch is a fixed few thousand floats whatever the token count, so
//! FastViTHD stage 4 at 1024 x 1024 (24 heads over 1024 tokens) needs no 100 MB score
//! buffer.

use core::ops::Range;

use crate::error::Error;
use crate::kernels::Ctx;
use crate::kernels::cpu::F32Kernel;
use crate::kernels::math::same_len;
use crate::kernels::par::{SharedMut, piece, task_count};

/// Queries processed together: they share one transposed key block (so the larger, the
/// fewer transposes; each query's arithmetic does not depend on it).
pub const Q_BLOCK: usize = 64;
/// Keys per streamed block.
pub const K_BLOCK: usize = 64;

/// Layout of a packed `tokens x 3C` QKV matrix, as FastViTHD's MHSA produces it: row `t`
/// is `[q | k | v]`, each part `heads x head_dim`, head-major (spec §1.2: channel `j`
/// belongs to part `j / C`, head `(j % C) / head_dim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackedQkv {
    /// Tokens (N).
    pub tokens: usize,
    /// Heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl PackedQkv {
    /// Model width C = heads x head_dim.
    pub fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// f32s of scratch [`self_attention`] needs (independent of the token count).
    pub fn scratch_floats(&self) -> usize {
        // scaled queries, transposed keys, scores, and per-query max / sum.
        Q_BLOCK * self.head_dim + self.head_dim * K_BLOCK + Q_BLOCK * K_BLOCK + 2 * Q_BLOCK
    }
}

/// e^x for x <= 0 ([`math::exp`](crate::kernels::math::exp) with positive inputs taken
/// as 0): relative error about 2e-7; inputs below -87 give ~1e-38 instead of 0, which no
/// softmax sum can notice next to its maximum term (1). NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    crate::kernels::math::exp(if x > 0.0 { 0.0 } else { x })
}

/// `out = softmax(scale · Q Kᵀ) V` per head over a packed QKV matrix (see [`PackedQkv`]).
///
/// `out` is `tokens x C` with channel `head * head_dim + d` (heads concatenated, as the
/// output projection expects); `scratch` holds at least `l.scratch_floats()` f32s, and
/// each further whole `l.scratch_floats()` lets one more of `ctx`'s tasks take a share of
/// the (head, query block) pairs. The scale is applied to the queries before the dot
/// products, as timm and Apple do. The loops have no reductions across lanes, so every
/// vector width and every split gives the same bits.
pub fn self_attention(
    ctx: &mut Ctx<'_>,
    l: &PackedQkv,
    qkv: &[f32],
    scale: f32,
    out: &mut [f32],
    scratch: &mut [f32],
) -> Result<(), Error> {
    let (cpu, exec) = (ctx.cpu, &mut *ctx.exec);
    let (n, hd, c) = (l.tokens, l.head_dim, l.dim());
    if n == 0 || hd == 0 || l.heads == 0 {
        return Err(Error::EmptyInput);
    }
    same_len("attention qkv", n * 3 * c, qkv.len())?;
    same_len("attention output", n * c, out.len())?;
    let per = l.scratch_floats();
    if scratch.len() < per {
        return Err(Error::Length {
            what: "attention scratch",
            expected: per,
            got: scratch.len(),
        });
    }
    let units = l.heads * n.div_ceil(Q_BLOCK);
    // Work: the scores and the weighted sums, 2·N·hd multiply-adds per query and head.
    let work = l
        .heads
        .saturating_mul(n)
        .saturating_mul(n)
        .saturating_mul(2 * hd);
    let tasks = task_count(exec, units, work)
        .min(scratch.len() / per)
        .max(1);
    let kind = cpu.usable().f32_kernel();
    let out = SharedMut::new(out);
    if tasks == 1 {
        run_units(kind, l, qkv, scale, &out, 0..units, scratch);
        return Ok(());
    }
    let scr = SharedMut::new(scratch);
    exec.run(tasks, &|t| {
        let r = piece(units, tasks, 1, t);
        // SAFETY: task t alone uses scratch copy t (tasks <= scratch.len() / per), and
        // writes only the output elements of its own (head, query block) pairs.
        if let Some(sc) = unsafe { scr.slice(t * per..(t + 1) * per) } {
            run_units(kind, l, qkv, scale, &out, r, sc);
        }
    });
    Ok(())
}

/// Units `units` (unit `u` = head `u / blocks`, query block `u % blocks`) compiled for
/// `kind`'s vector width.
fn run_units(
    kind: F32Kernel,
    l: &PackedQkv,
    qkv: &[f32],
    scale: f32,
    out: &SharedMut<'_, f32>,
    units: Range<usize>,
    scratch: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    match kind {
        // SAFETY: the kernel kind was chosen from the usable CPU features.
        F32Kernel::Avx512 => {
            return unsafe { attention_avx512(l, qkv, scale, out, units, scratch) };
        }
        F32Kernel::Avx2 => return unsafe { attention_avx2(l, qkv, scale, out, units, scratch) },
        _ => {}
    }
    let _ = kind;
    attention_body(l, qkv, scale, out, units, scratch)
}

/// # Safety
///
/// The CPU implements AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn attention_avx2(
    l: &PackedQkv,
    qkv: &[f32],
    scale: f32,
    out: &SharedMut<'_, f32>,
    units: Range<usize>,
    scratch: &mut [f32],
) {
    attention_body(l, qkv, scale, out, units, scratch)
}

/// # Safety
///
/// The CPU implements AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f")]
unsafe fn attention_avx512(
    l: &PackedQkv,
    qkv: &[f32],
    scale: f32,
    out: &SharedMut<'_, f32>,
    units: Range<usize>,
    scratch: &mut [f32],
) {
    attention_body(l, qkv, scale, out, units, scratch)
}

/// The (head, query block) units `units`: online softmax over streamed key blocks. The
/// caller checked every length; `out` is written only at the units' rows and head
/// columns.
#[inline(always)]
fn attention_body(
    l: &PackedQkv,
    qkv: &[f32],
    scale: f32,
    out: &SharedMut<'_, f32>,
    units: Range<usize>,
    scratch: &mut [f32],
) {
    let (n, hd, c) = (l.tokens, l.head_dim, l.dim());
    let blocks = n.div_ceil(Q_BLOCK).max(1);
    let (qs, rest) = scratch.split_at_mut(Q_BLOCK * hd);
    let (kt, rest) = rest.split_at_mut(hd * K_BLOCK);
    let (sc, rest) = rest.split_at_mut(Q_BLOCK * K_BLOCK);
    let (mx, rest) = rest.split_at_mut(Q_BLOCK);
    let sum = rest.get_mut(..Q_BLOCK).unwrap_or_default();
    let rows = || qkv.chunks_exact(3 * c);

    for u in units {
        let (h, q0) = (u / blocks, (u % blocks) * Q_BLOCK);
        let (qo, ko, vo) = (h * hd, c + h * hd, 2 * c + h * hd);
        // This unit's slice of output row q0 + i (its head's columns).
        // SAFETY: only this unit touches these elements, and each slice is dropped before
        // the next one of the same row is taken.
        let orow = |i: usize| unsafe { out.slice((q0 + i) * c + qo..(q0 + i) * c + qo + hd) };
        {
            let nq = Q_BLOCK.min(n.saturating_sub(q0));
            for (dst, row) in qs.chunks_exact_mut(hd).zip(rows().skip(q0).take(nq)) {
                let q = row.get(qo..qo + hd).unwrap_or_default();
                for (d, &x) in dst.iter_mut().zip(q) {
                    *d = x * scale;
                }
            }
            mx.fill(f32::NEG_INFINITY);
            sum.fill(0.0);
            for i in 0..nq {
                orow(i).unwrap_or_default().fill(0.0);
            }

            let mut k0 = 0;
            while k0 < n {
                let nk = K_BLOCK.min(n - k0);
                // Keys transposed to [d][j], so each query's scores are hd axpys over
                // nk lanes instead of nk horizontal dot products.
                for (j, row) in rows().skip(k0).take(nk).enumerate() {
                    let k = row.get(ko..ko + hd).unwrap_or_default();
                    for (d, &x) in k.iter().enumerate() {
                        if let Some(slot) = kt.get_mut(d * K_BLOCK + j) {
                            *slot = x;
                        }
                    }
                }
                for i in 0..nq {
                    let s = sc
                        .get_mut(i * K_BLOCK..i * K_BLOCK + nk)
                        .unwrap_or_default();
                    let q = qs.get(i * hd..(i + 1) * hd).unwrap_or_default();
                    scores(q, kt, s);
                    let block_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let (Some(m), Some(l)) = (mx.get_mut(i), sum.get_mut(i)) else {
                        continue;
                    };
                    let m_new = m.max(block_max);
                    // First block: m is -inf and the accumulator is zero anyway.
                    let corr = if *m == f32::NEG_INFINITY {
                        0.0
                    } else {
                        exp_nonpositive(*m - m_new)
                    };
                    *m = m_new;
                    // Two loops: the exponentials vectorise; the sum keeps its order.
                    for p in s.iter_mut() {
                        *p = exp_nonpositive(*p - m_new);
                    }
                    let block_sum = s.iter().fold(0.0f32, |acc, &p| acc + p);
                    *l = *l * corr + block_sum;
                    let acc = orow(i).unwrap_or_default();
                    if corr != 1.0 {
                        for a in acc.iter_mut() {
                            *a *= corr;
                        }
                    }
                    if hd == FAST_HD {
                        weighted_sum_fixed::<FAST_HD>(acc, s, rows().skip(k0), vo);
                    } else {
                        for (&p, row) in s.iter().zip(rows().skip(k0)) {
                            let v = row.get(vo..vo + hd).unwrap_or_default();
                            for (a, &v) in acc.iter_mut().zip(v) {
                                *a += p * v;
                            }
                        }
                    }
                }
                k0 += nk;
            }

            for (i, &l) in sum.iter().enumerate().take(nq) {
                // l >= 1: the maximum's own term is exp(0).
                let inv = 1.0 / l;
                for a in orow(i).unwrap_or_default() {
                    *a *= inv;
                }
            }
        }
    }
}

/// The head width with register-resident loops (FastViTHD's: 768 / 24 and 1536 / 48).
const FAST_HD: usize = 32;

/// `s[j] = Σ_d q[d]·kt[d][j]` in `d` order (each lane: zero, then multiply-add per `d`).
/// A full key block at [`FAST_HD`] keeps its 64 sums in registers; the arithmetic is the
/// same either way.
#[inline(always)]
fn scores(q: &[f32], kt: &[f32], s: &mut [f32]) {
    if q.len() == FAST_HD && s.len() == K_BLOCK {
        let mut acc = [0f32; K_BLOCK];
        for (&qd, krow) in q.iter().zip(kt.chunks_exact(K_BLOCK)).take(FAST_HD) {
            for (a, &k) in acc.iter_mut().zip(krow) {
                *a += qd * k;
            }
        }
        for (d, &a) in s.iter_mut().zip(&acc) {
            *d = a;
        }
        return;
    }
    s.fill(0.0);
    for (&qd, krow) in q.iter().zip(kt.chunks_exact(K_BLOCK)) {
        for (s, &k) in s.iter_mut().zip(krow) {
            *s += qd * k;
        }
    }
}

/// `acc += Σ_j p[j]·v_j` in `j` order with the `HD` accumulators in registers (the same
/// operations, element by element, as the general loop).
#[inline(always)]
fn weighted_sum_fixed<'r, const HD: usize>(
    acc: &mut [f32],
    p: &[f32],
    rows: impl Iterator<Item = &'r [f32]>,
    vo: usize,
) {
    let mut a = [0f32; HD];
    for (x, &y) in a.iter_mut().zip(acc.iter()) {
        *x = y;
    }
    for (&pj, row) in p.iter().zip(rows) {
        let Some(v) = row.get(vo..vo + HD) else {
            continue;
        };
        for (x, &vd) in a.iter_mut().zip(v) {
            *x += pj * vd;
        }
    }
    for (y, &x) in acc.iter_mut().zip(&a) {
        *y = x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::one_task;
    use crate::test_util::values;
    use std::vec;
    use std::vec::Vec;

    #[test]
    fn register_paths_give_the_general_loops_bits() {
        let q = values(FAST_HD, 3);
        let kt = values(FAST_HD * K_BLOCK, 4);
        let mut fast = vec![f32::NAN; K_BLOCK];
        scores(&q, &kt, &mut fast);
        let mut general = vec![0f32; K_BLOCK];
        for (&qd, krow) in q.iter().zip(kt.chunks_exact(K_BLOCK)) {
            for (s, &k) in general.iter_mut().zip(krow) {
                *s += qd * k;
            }
        }
        assert_eq!(
            fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            general.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );

        let (c3, vo) = (3 * 40, 2 * 40 + 5);
        let rows = values(K_BLOCK * c3, 5);
        let p = values(K_BLOCK, 6);
        let start = values(FAST_HD, 7);
        let mut fast = start.clone();
        weighted_sum_fixed::<FAST_HD>(&mut fast, &p, rows.chunks_exact(c3), vo);
        let mut general = start;
        for (&pj, row) in p.iter().zip(rows.chunks_exact(c3)) {
            for (a, &v) in general.iter_mut().zip(&row[vo..vo + FAST_HD]) {
                *a += pj * v;
            }
        }
        assert_eq!(
            fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            general.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn exp_is_accurate_on_the_softmax_range() {
        let mut worst = 0f64;
        let mut x = -80.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        // A few f32 ulps: far below what the softmax tolerance (1e-4 relative) needs.
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    /// Materializes every score matrix, in f64.
    fn reference(l: &PackedQkv, qkv: &[f32], scale: f32) -> Vec<f32> {
        let (n, hd, c) = (l.tokens, l.head_dim, l.dim());
        let mut out = vec![0f32; n * c];
        for h in 0..l.heads {
            for i in 0..n {
                let q = &qkv[i * 3 * c + h * hd..][..hd];
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        let k = &qkv[j * 3 * c + c + h * hd..][..hd];
                        q.iter()
                            .zip(k)
                            .map(|(&a, &b)| (a * scale) as f64 * b as f64)
                            .sum()
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let acc: f64 = (0..n)
                        .map(|j| e[j] * qkv[j * 3 * c + 2 * c + h * hd + d] as f64)
                        .sum();
                    out[i * c + h * hd + d] = (acc / z) as f32;
                }
            }
        }
        out
    }

    #[test]
    fn matches_materialized_softmax() {
        // Token counts below, at and across block boundaries (1, 16, 64, 65, 150), and
        // scores large enough that the running maximum changes between key blocks.
        for &(n, heads, hd, amp) in &[
            (1, 1, 32, 1.0f32),
            (16, 2, 32, 3.0),
            (64, 1, 8, 2.0),
            (65, 3, 32, 4.0),
            (150, 2, 16, 6.0),
        ] {
            let l = PackedQkv {
                tokens: n,
                heads,
                head_dim: hd,
            };
            let qkv: Vec<f32> = values(n * 3 * l.dim(), n as u64)
                .iter()
                .map(|v| v * amp)
                .collect();
            let scale = (hd as f32).powf(-0.5);
            let want = reference(&l, &qkv, scale);
            let mut got = vec![f32::NAN; n * l.dim()];
            let mut scratch = vec![0f32; l.scratch_floats()];
            one_task(|c| self_attention(c, &l, &qkv, scale, &mut got, &mut scratch)).unwrap();
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            // f32 scores carry a rounding error of a few ulps of their magnitude, which
            // becomes the same absolute error in the exponent; outputs are convex
            // combinations of values up to `amp`. Bound: amp · 4 eps · (1 + max score).
            let smax = l.head_dim as f32 * amp * amp * scale;
            let tol = amp * 4.0 * f32::EPSILON * (1.0 + smax);
            assert!(err < tol, "{l:?}: {err} (tolerance {tol})");
        }
    }

    #[test]
    fn scratch_does_not_grow_with_tokens_and_lengths_are_checked() {
        let small = PackedQkv {
            tokens: 4,
            heads: 24,
            head_dim: 32,
        };
        let big = PackedQkv {
            tokens: 1024,
            ..small
        };
        assert_eq!(small.scratch_floats(), big.scratch_floats());
        // About 33 KiB at FastViTHD's head width: L1/L2-resident, and nothing next to the
        // 100 MB a materialized 24 x 1024 x 1024 score matrix would take.
        assert!(big.scratch_floats() < 12_288);
        let l = PackedQkv {
            tokens: 3,
            heads: 1,
            head_dim: 4,
        };
        let qkv = vec![0f32; 36];
        let mut out = vec![0f32; 12];
        let mut scratch = vec![0f32; l.scratch_floats()];
        assert!(
            one_task(|c| self_attention(c, &l, &qkv[1..], 1.0, &mut out, &mut scratch)).is_err()
        );
        assert!(
            one_task(|c| self_attention(c, &l, &qkv, 1.0, &mut out[1..], &mut scratch)).is_err()
        );
        assert!(
            one_task(|c| self_attention(c, &l, &qkv, 1.0, &mut out, &mut scratch[1..])).is_err()
        );
        one_task(|c| self_attention(c, &l, &qkv, 1.0, &mut out, &mut scratch)).unwrap();
        // All-equal scores: a plain average of the (zero) values.
        assert!(out.iter().all(|&x| x == 0.0));
    }
}
