//! Driver for the f32-arithmetic tiles (AVX2, or AVX-512 with the same bits): 4 weight
//! rows x 1 activation row for matrix-vector products, 2 x 2 otherwise, single rows
//! for the remainders.

use core::ops::Range;

use glimpse_quant::DType;
use glimpse_quant::layout::{ROWS4, TensorLayout};

use super::simd::{self as x86, DBF16, DE4M3, DE5M2, DF16, DF32, DMxFp8, DQ8, DQ8Rows4, Decode16};
use crate::kernels::linear::{Weights, decode_row};
use crate::kernels::par::SharedMut;

pub(crate) fn rows(
    avx512: bool,
    w: &Weights<'_>,
    x: &[f32],
    n: usize,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    match w.dtype {
        DType::F32 => rows_as::<DF32>(avx512, w, x, n, range, y),
        DType::F16 => rows_as::<DF16>(avx512, w, x, n, range, y),
        DType::BF16 => rows_as::<DBF16>(avx512, w, x, n, range, y),
        DType::E4M3 => rows_as::<DE4M3>(avx512, w, x, n, range, y),
        DType::E5M2 => rows_as::<DE5M2>(avx512, w, x, n, range, y),
        DType::MxFp8 => rows_as::<DMxFp8>(avx512, w, x, n, range, y),
        DType::Q8_0 if w.layout == TensorLayout::Q8Rows4 => {
            rows_as::<DQ8Rows4>(avx512, w, x, n, range, y)
        }
        DType::Q8_0 => rows_as::<DQ8>(avx512, w, x, n, range, y),
        _ => {}
    }
}

/// One tile at the chosen width.
///
/// # Safety
///
/// As [`x86::f32_tile_avx2`]; with `avx512`, the CPU implements AVX-512F.
#[inline(always)]
unsafe fn tile<D: Decode16, const R: usize, const A: usize>(
    avx512: bool,
    w: *const u8,
    rb: usize,
    x: *const f32,
    xs: usize,
    chunks: usize,
) -> [[f32; A]; R] {
    // SAFETY: forwarded preconditions.
    unsafe {
        if avx512 {
            x86::f32_tile_avx512::<D, R, A>(w, rb, x, xs, chunks)
        } else {
            x86::f32_tile_avx2::<D, R, A>(w, rb, x, xs, chunks)
        }
    }
}

fn rows_as<D: Decode16>(
    avx512: bool,
    w: &Weights<'_>,
    x: &[f32],
    n: usize,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    let (rows, cols) = (w.rows, w.cols);
    if range.end > rows || x.len() < n * cols || w.check().is_err() {
        return;
    }
    // Where a tile's first row lies, and the distance between its rows: plain rows
    // are `row_bytes` apart; four-row groups use DQ8Rows4's encoding (the group's
    // address plus the slot, rows 1 apart). Ranges start on a multiple of 4, tiles
    // hold 4, 2 or 1 rows, so a tile never straddles a group.
    let grouped = w.layout == TensorLayout::Q8Rows4;
    if grouped && !range.start.is_multiple_of(ROWS4) {
        return;
    }
    let (rb, gb) = if grouped {
        (1, w.group_bytes())
    } else {
        (w.row_bytes(), 0)
    };
    let base = w.data.as_ptr();
    let row_at = |r: usize| {
        if grouped {
            base.wrapping_add(r / ROWS4 * gb + r % ROWS4)
        } else {
            base.wrapping_add(r * rb)
        }
    };
    let chunks = cols / 16;
    let full = chunks * 16;
    let (rt, at) = if n == 1 { (4, 1) } else { (2, 2) };
    let mut r = range.start;
    while r < range.end {
        let tr = if range.end - r >= rt { rt } else { 1 };
        let mut i = 0;
        while i < n {
            let ta = if n - i >= at { at } else { 1 };
            let wp = row_at(r);
            let xp = x[i * cols..].as_ptr();
            let mut out = [[0f32; 2]; 4];
            // SAFETY: rows r..r+tr lie in `w.data` and activation rows i..i+ta in
            // `x`, each with `cols >= 16·chunks` values (for block formats cols is a
            // multiple of 32); AVX2 and F16C (and AVX-512F with `avx512`) are usable
            // (the kernel was selected from the usable features).
            unsafe {
                match (tr, ta) {
                    (4, _) => {
                        let t = tile::<D, 4, 1>(avx512, wp, rb, xp, cols, chunks);
                        for (o, v) in out.iter_mut().zip(&t) {
                            o[0] = v[0];
                        }
                    }
                    (2, 2) => {
                        let t = tile::<D, 2, 2>(avx512, wp, rb, xp, cols, chunks);
                        out[0] = t[0];
                        out[1] = t[1];
                    }
                    (1, 2) => {
                        let t = tile::<D, 1, 2>(avx512, wp, rb, xp, cols, chunks);
                        out[0] = t[0];
                    }
                    (2, _) => {
                        let t = tile::<D, 2, 1>(avx512, wp, rb, xp, cols, chunks);
                        out[0][0] = t[0][0];
                        out[1][0] = t[1][0];
                    }
                    _ => {
                        let t = tile::<D, 1, 1>(avx512, wp, rb, xp, cols, chunks);
                        out[0][0] = t[0][0];
                    }
                }
            }
            for (dr, o) in out.iter().enumerate().take(tr) {
                let wrow = w.row(r + dr).unwrap_or_default();
                for (da, &v) in o.iter().enumerate().take(ta) {
                    let xr = &x[(i + da) * cols..(i + da + 1) * cols];
                    let mut tail = 0f32;
                    for (k, &xv) in xr.iter().enumerate().skip(full) {
                        tail += value(w.dtype, wrow, k) * xv;
                    }
                    // SAFETY: this task owns columns `range` of every output row.
                    unsafe { y.write((i + da) * rows + r + dr, v + tail) };
                }
            }
            i += ta;
        }
        r += tr;
    }
}

/// Value `k` of a stored row (only the element formats have tails past 16·chunks).
fn value(dtype: DType, row: &[u8], k: usize) -> f32 {
    let size = dtype.block_bytes();
    let mut v = [0f32; 1];
    if let Some(b) = row.get(k * size..(k + 1) * size) {
        decode_row(dtype, b, &mut v);
    }
    v[0]
}
