//! Causal grouped-query attention over the KV cache, for a chunk of consecutive query
//! positions (fastvlm.md §4.2): scores `q·kᵀ/√d` in f32, softmax in f32, weighted sum of
//! values. Query head `h` reads KV head `h / (heads / kv_heads)`. Keys and values may be
//! cached in f32 or f16 ([`KvElem`]); f16 rows are widened exactly as they are read, so
//! the arithmetic is f32 either way.

use half::f16;

use crate::error::Error;
use crate::kernels::linear::dot_f32;
use crate::kernels::math::{axpy, softmax};
use crate::kernels::par::{SharedMut, task_count};
use crate::kernels::{Ctx, f16_to_f32};

/// A number format the KV cache stores: what attention needs from a cached row.
pub trait KvElem: Copy {
    /// `Σ q[i]·k[i]` over the shorter of the two, in f32.
    fn dot(q: &[f32], k: &[Self]) -> f32;
    /// `y[i] += a·x[i]` over the shorter of the two, in f32.
    fn axpy(y: &mut [f32], a: f32, x: &[Self]);
}

impl KvElem for f32 {
    #[inline]
    fn dot(q: &[f32], k: &[f32]) -> f32 {
        dot_f32(q, k)
    }
    #[inline]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        axpy(y, a, x);
    }
}

/// Lanes of the f16 loops: eight independent sums, so the widening and the multiplies
/// vectorise.
const LANES: usize = 8;

impl KvElem for f16 {
    #[inline]
    fn dot(q: &[f32], k: &[f16]) -> f32 {
        let n = q.len().min(k.len());
        let (q, k) = (q.get(..n).unwrap_or(&[]), k.get(..n).unwrap_or(&[]));
        let (qc, qt) = q.as_chunks::<LANES>();
        let (kc, kt) = k.as_chunks::<LANES>();
        let mut acc = [0f32; LANES];
        for (a, b) in qc.iter().zip(kc) {
            for ((s, &x), &y) in acc.iter_mut().zip(a).zip(b) {
                *s += x * f16_to_f32(y.to_bits());
            }
        }
        let tail: f32 = qt
            .iter()
            .zip(kt)
            .map(|(&x, &y)| x * f16_to_f32(y.to_bits()))
            .sum();
        acc.iter().sum::<f32>() + tail
    }
    #[inline]
    fn axpy(y: &mut [f32], a: f32, x: &[f16]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o += a * f16_to_f32(v.to_bits());
        }
    }
}

/// Head geometry of one attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Heads {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all KV heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// The keys and values attention reads: positions `0..p0 + m` for `m` queries at
/// `p0..p0 + m`, `(p0 + m) × kv_dim` each, already rotated.
#[derive(Clone, Copy, Debug)]
pub struct KeysValues<'a, T> {
    /// Keys.
    pub k: &'a [T],
    /// Values.
    pub v: &'a [T],
    /// Position of the first query.
    pub p0: usize,
}

/// Attention of `m = q.len() / q_dim` queries at positions `kv.p0..kv.p0 + m` over
/// keys/values of positions `0..kv.p0 + m` (query `i` sees positions `0..=p0 + i`).
///
/// `q` and `out` are `m × q_dim`, `scores` holds at least `p0 + m` values. The queries are
/// dealt out to `ctx`'s tasks (query `i` to task `i mod tasks`, so the growing rows are
/// shared evenly): task 0 uses `scores`, each further task a score row carved from
/// `spare` (bytes idle meanwhile, such as the linear scratch), as many tasks as `spare`
/// holds rows for. Every query is computed alone, so the bits do not depend on the split.
pub fn causal<T: KvElem + Sync>(
    ctx: &mut Ctx<'_>,
    g: Heads,
    q: &[f32],
    kv: KeysValues<'_, T>,
    scores: &mut [f32],
    spare: &mut [u8],
    out: &mut [f32],
) -> Result<(), Error> {
    let exec = &mut *ctx.exec;
    let KeysValues { k, v, p0 } = kv;
    let (qd, kvd, hd) = (g.q_dim(), g.kv_dim(), g.head_dim);
    if g.kv_heads == 0 || !g.heads.is_multiple_of(g.kv_heads) || hd == 0 {
        return Err(Error::Config {
            what: "attention heads must be a non-zero multiple of the KV heads",
        });
    }
    let m = q.len() / qd;
    let ctx = p0 + m;
    for (what, expected, got) in [
        ("attention queries", m * qd, q.len()),
        ("attention output", m * qd, out.len()),
        ("attention keys", ctx * kvd, k.len()),
        ("attention values", ctx * kvd, v.len()),
    ] {
        if expected != got {
            return Err(Error::Length {
                what,
                expected,
                got,
            });
        }
    }
    let have = scores.len();
    let scores = scores.get_mut(..ctx).ok_or(Error::Length {
        what: "attention scores",
        expected: ctx,
        got: have,
    })?;
    // Score rows for the other tasks, f32-aligned inside `spare`.
    let pad = spare.as_ptr().align_offset(4).min(spare.len());
    let extra: &mut [f32] = spare
        .get_mut(pad..)
        .map(|b| {
            let whole = b.len() / 4 * 4;
            bytemuck::try_cast_slice_mut(&mut b[..whole]).unwrap_or_default()
        })
        .unwrap_or_default();
    let work = m.saturating_mul(ctx).saturating_mul(2 * qd);
    let tasks = task_count(exec, m, work)
        .min(1 + extra.len() / ctx.max(1))
        .max(1);
    let job = Causal {
        g,
        q,
        k,
        v,
        p0,
        scale: (1.0 / libm::sqrt(hd as f64)) as f32,
    };
    let out = SharedMut::new(out);
    if tasks == 1 {
        job.rows(0, 1, scores, &out);
        return Ok(());
    }
    let extra = SharedMut::new(extra);
    let first = SharedMut::new(scores);
    exec.run(tasks, &|t| {
        // SAFETY: task 0 alone uses `scores`, task t > 0 alone score row t - 1 of `extra`
        // (tasks <= 1 + extra.len() / ctx).
        let s = unsafe {
            if t == 0 {
                first.slice(0..ctx)
            } else {
                extra.slice((t - 1) * ctx..t * ctx)
            }
        };
        if let Some(s) = s {
            job.rows(t, tasks, s, &out);
        }
    });
    Ok(())
}

/// What every query of one [`causal`] call reads.
struct Causal<'a, T> {
    g: Heads,
    q: &'a [f32],
    k: &'a [T],
    v: &'a [T],
    p0: usize,
    scale: f32,
}

impl<T: KvElem> Causal<'_, T> {
    /// Queries `first, first + step, ...`, with `scores` (at least `p0 + m` values) as
    /// the score row; writes only those queries' output rows.
    fn rows(&self, first: usize, step: usize, scores: &mut [f32], out: &SharedMut<'_, f32>) {
        let g = self.g;
        let (qd, kvd, hd) = (g.q_dim(), g.kv_dim(), g.head_dim);
        let group = g.heads / g.kv_heads;
        for (i, qi) in self
            .q
            .chunks_exact(qd)
            .enumerate()
            .skip(first)
            .step_by(step.max(1))
        {
            // SAFETY: query rows are dealt to tasks by `i mod step`, so no other task
            // touches output row i.
            let Some(oi) = (unsafe { out.slice(i * qd..(i + 1) * qd) }) else {
                continue;
            };
            let seen = self.p0 + i + 1;
            let s = scores.get_mut(..seen).unwrap_or_default();
            for (h, (qh, oh)) in qi.chunks_exact(hd).zip(oi.chunks_exact_mut(hd)).enumerate() {
                let off = (h / group) * hd;
                fn head<T>(row: &[T], off: usize, hd: usize) -> &[T] {
                    row.get(off..off + hd).unwrap_or(&[])
                }
                for (sc, kr) in s.iter_mut().zip(self.k.chunks_exact(kvd)) {
                    *sc = T::dot(qh, head(kr, off, hd)) * self.scale;
                }
                softmax(s);
                oh.fill(0.0);
                for (&p, vr) in s.iter().zip(self.v.chunks_exact(kvd)) {
                    T::axpy(oh, p, head(vr, off, hd));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::one_task;
    use std::vec;
    use std::vec::Vec;

    /// f64 attention of one query row over the first `seen` positions.
    fn reference(g: Heads, q: &[f32], k: &[f32], v: &[f32], seen: usize) -> Vec<f64> {
        let (hd, kvd) = (g.head_dim, g.kv_dim());
        let mut out = vec![0f64; g.q_dim()];
        for h in 0..g.heads {
            let kh = h / (g.heads / g.kv_heads);
            let s: Vec<f64> = (0..seen)
                .map(|t| {
                    (0..hd)
                        .map(|d| f64::from(q[h * hd + d]) * f64::from(k[t * kvd + kh * hd + d]))
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            for t in 0..seen {
                let p = (s[t] - m).exp() / z;
                for d in 0..hd {
                    out[h * hd + d] += p * f64::from(v[t * kvd + kh * hd + d]);
                }
            }
        }
        out
    }

    #[test]
    fn gqa_causal_matches_f64_and_chunking_does_not_matter() {
        let g = Heads {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let ctx = 9;
        let val = |i: usize, s: f32| ((i as f32 * 0.731 + s).sin()) * 2.0;
        let q: Vec<f32> = (0..ctx * g.q_dim()).map(|i| val(i, 0.1)).collect();
        let k: Vec<f32> = (0..ctx * g.kv_dim()).map(|i| val(i, 1.3)).collect();
        let v: Vec<f32> = (0..ctx * g.kv_dim()).map(|i| val(i, 2.9)).collect();
        let mut scores = vec![0f32; ctx];

        // All nine queries at once.
        let mut all = vec![0f32; ctx * g.q_dim()];
        one_task(|c| {
            causal(
                c,
                g,
                &q,
                KeysValues {
                    k: &k,
                    v: &v,
                    p0: 0,
                },
                &mut scores,
                &mut [],
                &mut all,
            )
        })
        .unwrap();
        for i in 0..ctx {
            let want = reference(g, &q[i * g.q_dim()..], &k, &v, i + 1);
            for (a, b) in all[i * g.q_dim()..(i + 1) * g.q_dim()].iter().zip(&want) {
                // Values are O(1); f32 dot products of 8 terms and a 9-term softmax: 1e-5
                // is a few hundred ulps of slack for the O(1) outputs.
                assert!((f64::from(*a) - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        // The same queries one position at a time (decode) give identical results: each
        // output depends only on its own query row and the visible cache rows.
        for i in 0..ctx {
            let qd = g.q_dim();
            let kvd = g.kv_dim();
            let mut one = vec![0f32; qd];
            one_task(|c| {
                causal(
                    c,
                    g,
                    &q[i * qd..(i + 1) * qd],
                    KeysValues {
                        k: &k[..(i + 1) * kvd],
                        v: &v[..(i + 1) * kvd],
                        p0: i,
                    },
                    &mut scores,
                    &mut [],
                    &mut one,
                )
            })
            .unwrap();
            assert_eq!(&one[..], &all[i * qd..(i + 1) * qd]);
        }
    }

    #[test]
    fn bad_lengths_and_heads_are_errors() {
        let g = Heads {
            heads: 3,
            kv_heads: 2,
            head_dim: 4,
        };
        let z = vec![0f32; 64];
        let mut o = vec![0f32; 12];
        let mut s = vec![0f32; 4];
        assert!(
            one_task(|c| causal(
                c,
                g,
                &z[..12],
                KeysValues {
                    k: &z[..8],
                    v: &z[..8],
                    p0: 0
                },
                &mut s,
                &mut [],
                &mut o
            ))
            .is_err()
        );
        let g = Heads {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
        };
        assert!(
            one_task(|c| causal(
                c,
                g,
                &z[..8],
                KeysValues {
                    k: &z[..4],
                    v: &z[..4],
                    p0: 0
                },
                &mut s,
                &mut [],
                &mut o[..8]
            ))
            .is_ok()
        );
        assert!(
            one_task(|c| causal(
                c,
                g,
                &z[..8],
                KeysValues {
                    k: &z[..4],
                    v: &z[..5],
                    p0: 0
                },
                &mut s,
                &mut [],
                &mut o[..8]
            ))
            .is_err()
        );
        assert!(
            one_task(|c| causal(
                c,
                g,
                &z[..8],
                KeysValues {
                    k: &z[..20],
                    v: &z[..20],
                    p0: 4
                },
                &mut s,
                &mut [],
                &mut o[..8]
            ))
            .is_err()
        );
    }

    #[test]
    fn f16_rows_give_what_f32_gives_on_the_same_rounded_values() {
        let g = Heads {
            heads: 6,
            kv_heads: 2,
            head_dim: 20,
        };
        let ctx = 11;
        let q = crate::test_util::values(ctx * g.q_dim(), 3);
        let k16: Vec<f16> = crate::test_util::values(ctx * g.kv_dim(), 4)
            .iter()
            .map(|&x| f16::from_f32(3.0 * x))
            .collect();
        let v16: Vec<f16> = crate::test_util::values(ctx * g.kv_dim(), 5)
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let k32: Vec<f32> = k16.iter().map(|x| x.to_f32()).collect();
        let v32: Vec<f32> = v16.iter().map(|x| x.to_f32()).collect();
        let mut scores = vec![0f32; ctx];
        let (mut a, mut b) = (vec![0f32; ctx * g.q_dim()], vec![0f32; ctx * g.q_dim()]);
        one_task(|c| {
            causal(
                c,
                g,
                &q,
                KeysValues {
                    k: &k32,
                    v: &v32,
                    p0: 0,
                },
                &mut scores,
                &mut [],
                &mut a,
            )
        })
        .unwrap();
        one_task(|c| {
            causal(
                c,
                g,
                &q,
                KeysValues {
                    k: &k16,
                    v: &v16,
                    p0: 0,
                },
                &mut scores,
                &mut [],
                &mut b,
            )
        })
        .unwrap();
        // Identical inputs; only the order of the 20-term dot products may differ (the
        // f16 loop sums in eight lanes), a few f32 ulps on O(1) outputs.
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
        assert!(a.iter().any(|&x| x.abs() > 0.1));
    }
}
