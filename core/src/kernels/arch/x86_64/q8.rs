//! Drivers for the x86 Q8_0 kernels: packed-group GEMM tiles, then GEMV for the rows
//! that did not fill a group, then the reference for weight rows past a multiple of
//! the tile. Plain and four-row-group weights run the same drivers; only where a row's
//! blocks lie differs ([`QRows`]).

use core::ops::Range;

use glimpse_quant::layout::{QK, ROWS4, TensorLayout};

use super::simd::{self as x86, PlainRows, QRows, Rows4};
use crate::kernels::cpu::Q8Kernel;
use crate::kernels::gemm::QuantActs;
use crate::kernels::linear::Weights;
use crate::kernels::par::SharedMut;

/// Activation rows quantized per pass of the GEMM loop: their codes (about 256 KiB) stay
/// in L2 while every weight row of a task passes over them.
const ACT_CHUNK_BYTES: usize = 256 * 1024;

pub(crate) fn rows(
    kernel: Q8Kernel,
    w: &Weights<'_>,
    acts: &QuantActs<'_>,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    let &QuantActs {
        lay,
        codes,
        scales,
        n,
    } = acts;
    let (rows, cols) = (w.rows, w.cols);
    let nb = cols / QK;
    if range.end > rows
        || codes.len() < n * cols
        || scales.len() < n * nb
        || lay.packed_rows() > n
        || w.check().is_err()
    {
        return;
    }
    let base = w.data.as_ptr();
    match w.layout {
        TensorLayout::RowMajor => {
            let rb = w.row_bytes();
            // Rows r.. start r·rb bytes in (r < rows: inside the checked payload).
            let at = |r: usize| PlainRows {
                w: base.wrapping_add(r * rb),
                rb,
            };
            rows_in(kernel, w, at, acts, range, y);
        }
        TensorLayout::Q8Rows4 => {
            // Every range starts on a multiple of 8 and ends on one or at `rows` (a
            // multiple of 4), so tiles of 4 and groups of 8 rows start on a group.
            if !range.start.is_multiple_of(ROWS4) {
                return;
            }
            let gb = w.group_bytes();
            let at = |r: usize| Rows4 {
                w: base.wrapping_add(r / ROWS4 * gb),
                gb,
            };
            rows_in(kernel, w, at, acts, range, y);
        }
    }
}

#[inline(always)]
fn rows_in<L: QRows>(
    kernel: Q8Kernel,
    w: &Weights<'_>,
    at: impl Fn(usize) -> L,
    acts: &QuantActs<'_>,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    let &QuantActs {
        lay,
        codes,
        scales,
        n,
    } = acts;
    let (rows, cols) = (w.rows, w.cols);
    let nb = cols / QK;
    let packed = lay.packed_rows();
    if lay.full > 0 {
        gemm(kernel, w, &at, acts, range.clone(), y);
    }
    // GEMV for the rows past the packed groups: 8 weight rows at a time.
    let r8_end = range.start + (range.end - range.start) / 8 * 8;
    for i in packed..n {
        let (cr, sr) = (
            &codes[i * cols..(i + 1) * cols],
            &scales[i * nb..(i + 1) * nb],
        );
        let mut out = [0f32; 8];
        for r0 in (range.start..r8_end).step_by(8) {
            let (wl, next) = (at(r0), at(r0 + 8).start());
            // SAFETY: rows r0..r0+8 lie in `w.data` (r0 + 8 <= range.end <= rows),
            // `cr`/`sr` hold one row's nb blocks, `out` holds 8 floats; the kernel
            // was selected from the usable CPU features; `next` is only prefetched.
            unsafe {
                let (a, d, o) = (cr.as_ptr(), sr.as_ptr(), out.as_mut_ptr());
                match kernel {
                    Q8Kernel::Avx512Vnni => x86::gemv8_avx512vnni(wl, nb, a, d, o, next),
                    Q8Kernel::AvxVnni => x86::gemv8_avxvnni(wl, nb, a, d, o, next),
                    _ => x86::gemv8_avx2(wl, nb, a, d, o, next),
                }
            }
            for (k, &v) in out.iter().enumerate() {
                // SAFETY: this task owns columns `range` of every output row.
                unsafe { y.write(i * rows + r0 + k, v) };
            }
        }
        for r in r8_end..range.end {
            // SAFETY: as above.
            unsafe { y.write(i * rows + r, w.dot_q8(r, cr, sr)) };
        }
    }
}

/// Packed-group GEMM over weight rows `range`: chunks of activation groups that fit
/// L2, and within a chunk, tiles of 4 weight rows against each group.
#[inline(always)]
fn gemm<L: QRows>(
    kernel: Q8Kernel,
    w: &Weights<'_>,
    at: &impl Fn(usize) -> L,
    acts: &QuantActs<'_>,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    let &QuantActs {
        lay, codes, scales, ..
    } = acts;
    let (rows, cols) = (w.rows, w.cols);
    let nb = cols / QK;
    let g = lay.group;
    let (gstride, sstride) = (g * cols, g * nb);
    let chunk = (ACT_CHUNK_BYTES / gstride.max(1)).max(2);
    let r4_end = range.start + (range.end - range.start) / 4 * 4;
    let mut g0 = 0;
    while g0 < lay.full {
        let g1 = (g0 + chunk).min(lay.full);
        let mut r = range.start;
        while r < range.end {
            let tile = if r < r4_end { 4 } else { 1 };
            let wl = at(r);
            let mut gi = g0;
            while gi < g1 {
                let pa = codes[gi * gstride..].as_ptr();
                let ps = scales[gi * sstride..].as_ptr();
                let pair = kernel == Q8Kernel::Avx512Vnni && gi + 1 < g1;
                // SAFETY: rows r..r+tile lie in `w.data`; groups gi (and gi+1 for a
                // pair) lie in the packed part of `codes`/`scales` (gi + 1 < g1 <=
                // full); the kernel was selected from the usable CPU features and
                // the codes are offset exactly for the VNNI kernels (`lay`).
                let t = Tile {
                    w: wl,
                    nb,
                    codes: pa,
                    code_stride: gstride,
                    scales: ps,
                    scale_stride: sstride,
                };
                let out = unsafe { tile_out(kernel, tile, pair, &t) };
                let groups = if pair { 2 } else { 1 };
                // Activation row outer: the tile's `tile` outputs of one activation
                // row are adjacent in `y`, so each goes out as one short run (one
                // bounds check) instead of `tile` strided stores.
                for k in 0..groups * g {
                    let base = (gi * g + k) * rows + r;
                    // SAFETY: this task owns columns `range` of every output row, and
                    // r..r+tile lies in `range`.
                    if let Some(dst) = unsafe { y.slice(base..base + tile) } {
                        for (d, row_out) in dst.iter_mut().zip(&out) {
                            *d = row_out[k];
                        }
                    }
                }
                gi += groups;
            }
            r += tile;
        }
        g0 = g1;
    }
}

/// What one GEMM tile reads: weight rows from `w` (`nb` blocks each), and packed
/// activation groups at `codes` / `scales`, the next group `code_stride` bytes /
/// `scale_stride` scales further.
struct Tile<L> {
    w: L,
    nb: usize,
    codes: *const u8,
    code_stride: usize,
    scales: *const f32,
    scale_stride: usize,
}

/// One tile's outputs (`tile` weight rows, one group or a `pair`), `out[row][lane]`
/// with lanes of up to two groups.
///
/// # Safety
///
/// See the call in [`gemm`].
#[inline]
unsafe fn tile_out<L: QRows>(
    kernel: Q8Kernel,
    tile: usize,
    pair: bool,
    t: &Tile<L>,
) -> [[f32; 32]; 4] {
    let &Tile {
        w: wl,
        nb,
        codes: pa,
        code_stride: gstride,
        scales: ps,
        scale_stride: sstride,
    } = t;
    let mut out = [[0f32; 32]; 4];
    let put8 = |out: &mut [[f32; 32]; 4], src: &[[f32; 8]]| {
        for (o, s) in out.iter_mut().zip(src) {
            o[..8].copy_from_slice(s);
        }
    };
    // SAFETY: forwarded preconditions.
    unsafe {
        match (kernel, tile, pair) {
            (Q8Kernel::Avx512Vnni, 4, true) => {
                let t = x86::gemm_avx512vnni::<L, 4, 2>(wl, nb, pa, gstride, ps, sstride);
                for (o, s) in out.iter_mut().zip(&t) {
                    o[..16].copy_from_slice(&s[0]);
                    o[16..].copy_from_slice(&s[1]);
                }
            }
            (Q8Kernel::Avx512Vnni, 4, false) => {
                let t = x86::gemm_avx512vnni::<L, 4, 1>(wl, nb, pa, gstride, ps, sstride);
                for (o, s) in out.iter_mut().zip(&t) {
                    o[..16].copy_from_slice(&s[0]);
                }
            }
            (Q8Kernel::Avx512Vnni, _, true) => {
                let t = x86::gemm_avx512vnni::<L, 1, 2>(wl, nb, pa, gstride, ps, sstride);
                out[0][..16].copy_from_slice(&t[0][0]);
                out[0][16..].copy_from_slice(&t[0][1]);
            }
            (Q8Kernel::Avx512Vnni, _, false) => {
                let t = x86::gemm_avx512vnni::<L, 1, 1>(wl, nb, pa, gstride, ps, sstride);
                out[0][..16].copy_from_slice(&t[0][0]);
            }
            (Q8Kernel::AvxVnni, 4, _) => put8(&mut out, &x86::gemm_avxvnni_4(wl, nb, pa, ps)),
            (Q8Kernel::AvxVnni, _, _) => put8(&mut out, &x86::gemm_avxvnni_1(wl, nb, pa, ps)),
            (_, 4, _) => put8(&mut out, &x86::gemm_avx2_4(wl, nb, pa, ps)),
            _ => put8(&mut out, &x86::gemm_avx2_1(wl, nb, pa, ps)),
        }
    }
    out
}
