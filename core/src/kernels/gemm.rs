//! The row-range workers behind [`linear`](super::linear): given a range of weight rows,
//! compute those output columns for every activation row with the kernel family the CPU
//! allows, and how the Q8_0 activations are laid out for each family.
//!
//! A worker writes only `y[i·rows + r]` for `r` in its range, so tasks over disjoint
//! ranges never touch the same element, and every output is computed by the same
//! arithmetic whatever the range (the SIMD kernels are bit-identical to the reference).

use core::ops::Range;

use glimpse_quant::DType;
use glimpse_quant::layout::{QK, TensorLayout};

use crate::kernels::cpu::{F32Kernel, Q8Kernel};
use crate::kernels::linear::{
    Weights, decode_row, dot_decoded_rows4, dot_q8_row, dot_q8_rows4, lane_sums16, tree16,
};
use glimpse_hal::Executor;

use crate::kernels::par::{SharedMut, for_pieces, task_count};

/// Activation rows quantized per pass of the GEMM loop: their codes (about 256 KiB) stay
/// in L2 while every weight row of a task passes over them.
#[cfg(target_arch = "x86_64")]
const ACT_CHUNK_BYTES: usize = 256 * 1024;

/// How the quantized activations of one call are laid out for a Q8_0 kernel: the first
/// `group · full` rows packed in groups for a GEMM kernel, the rest plain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ActLayout {
    /// Rows per packed group (0: nothing is packed).
    pub group: usize,
    /// Whether packed codes are stored offset by 128 (as unsigned bytes).
    pub offset: bool,
    /// Number of packed groups.
    pub full: usize,
}

impl ActLayout {
    /// The layout `kernel` wants for `n` activation rows.
    pub fn new(kernel: Q8Kernel, n: usize) -> Self {
        let (group, offset) = match kernel {
            Q8Kernel::Avx2 => (8, false),
            Q8Kernel::AvxVnni => (8, true),
            Q8Kernel::Avx512Vnni => (16, true),
            _ => (0, false),
        };
        let full = n.checked_div(group).unwrap_or(0);
        ActLayout {
            group,
            offset,
            full,
        }
    }

    /// Rows held in packed groups.
    pub fn packed_rows(&self) -> usize {
        self.group * self.full
    }
}

/// [`quantize_acts`] with the rows split across `exec`'s tasks in whole packed groups:
/// a piece of rows `r0..r1` (multiples of the group) owns exactly bytes `r0·cols ..
/// r1·cols` of `codes` and scales `r0·nb .. r1·nb`, packed or not, so the pieces write
/// disjoint memory and the bytes are those of one call.
pub(crate) fn quantize_acts(
    exec: &mut dyn Executor,
    kernel: Q8Kernel,
    x: &[f32],
    cols: usize,
    lay: ActLayout,
    codes: &mut [u8],
    scales: &mut [f32],
) {
    let nb = cols / QK;
    let n = x.len() / cols.max(1);
    let unit = lay.group.max(1);
    let tasks = task_count(
        exec,
        n.div_ceil(unit),
        n.saturating_mul(cols).saturating_mul(4),
    );
    if tasks <= 1 || nb * QK != cols {
        quantize_acts_rows(kernel, x, cols, lay, codes, scales);
        return;
    }
    let packed = lay.packed_rows();
    let (c, sc) = (SharedMut::new(codes), SharedMut::new(scales));
    for_pieces(exec, n, tasks, unit, &|rows| {
        let (r0, r1) = (rows.start, rows.end);
        let full = (r1.min(packed).saturating_sub(r0))
            .checked_div(lay.group)
            .unwrap_or(0);
        let part = ActLayout { full, ..lay };
        // SAFETY: pieces are disjoint row ranges, and a range's codes and scales are its
        // own (see above).
        let (Some(pc), Some(ps), Some(px)) = (
            unsafe { c.slice(r0 * cols..r1 * cols) },
            unsafe { sc.slice(r0 * nb..r1 * nb) },
            x.get(r0 * cols..r1 * cols),
        ) else {
            return;
        };
        quantize_acts_rows(kernel, px, cols, part, pc, ps);
    });
}

/// Quantize the rows of `x` (`cols` wide) into `codes` / `scales` (`n·cols` and
/// `n·cols/32`) in `lay`: group `g` occupies the bytes rows `g·G .. (g+1)·G` would, as
/// `[block][quad][row][4 codes]` with scales `[block][row]`; plain rows are as
/// [`quantize_act_q8_0`](super::linear::quantize_act_q8_0) writes them. `kernel` picks
/// the block quantizer (all of them give the same bytes).
pub(crate) fn quantize_acts_rows(
    kernel: Q8Kernel,
    x: &[f32],
    cols: usize,
    lay: ActLayout,
    codes: &mut [u8],
    scales: &mut [f32],
) {
    let nb = cols / QK;
    let n = x.len() / cols.max(1);
    let packed = lay.packed_rows();
    if codes.len() < n * cols || scales.len() < n * nb || packed > n || nb * QK != cols {
        return;
    }
    let flip = if lay.offset { 0x80 } else { 0 };
    #[cfg(target_arch = "x86_64")]
    if matches!(
        kernel,
        Q8Kernel::Avx2 | Q8Kernel::AvxVnni | Q8Kernel::Avx512Vnni
    ) {
        for (i, xr) in x.chunks_exact(cols).enumerate() {
            // SAFETY: these kernels are only selected when AVX2 and F16C are usable; row i
            // of x has nb blocks; a packed row writes inside its group's bytes of
            // `codes`/`scales` (rows g·G .. (g+1)·G, all < n), a plain row inside its own
            // (both checked above).
            unsafe {
                if i < packed {
                    let (g, j) = (i / lay.group, i % lay.group);
                    let (gc, gs) = (g * lay.group * cols, g * lay.group * nb);
                    crate::kernels::x86::quantize_row_packed_avx2(
                        xr.as_ptr(),
                        nb,
                        lay.group,
                        j,
                        flip,
                        codes.as_mut_ptr().add(gc),
                        scales.as_mut_ptr().add(gs),
                    );
                } else {
                    crate::kernels::x86::quantize_row_avx2(
                        xr.as_ptr(),
                        nb,
                        codes.as_mut_ptr().add(i * cols),
                        scales.as_mut_ptr().add(i * nb),
                    );
                }
            }
        }
        return;
    }
    let _ = kernel;
    let mut bc = [0u8; QK];
    let mut bs = [0f32; 1];
    for (i, xr) in x.chunks_exact(cols).enumerate() {
        if i < packed {
            let (g, j) = (i / lay.group, i % lay.group);
            let (gc, gs) = (g * lay.group * cols, g * lay.group * nb);
            for (b, xb) in xr.chunks_exact(QK).enumerate() {
                super::linear::quantize_act_q8_0(xb, &mut bc, &mut bs);
                if let Some(s) = scales.get_mut(gs + b * lay.group + j) {
                    *s = bs[0];
                }
                for (q, quad) in bc.chunks_exact(4).enumerate() {
                    let at = gc + ((b * 8 + q) * lay.group + j) * 4;
                    if let Some(dst) = codes.get_mut(at..at + 4) {
                        for (d, &c) in dst.iter_mut().zip(quad) {
                            *d = c ^ flip;
                        }
                    }
                }
            }
        } else if let (Some(c), Some(s)) = (
            codes.get_mut(i * cols..(i + 1) * cols),
            scales.get_mut(i * nb..(i + 1) * nb),
        ) {
            super::linear::quantize_act_q8_0(xr, c, s);
        }
    }
}

/// The `n` activation rows of one call, quantized per block of 32 and laid out in `lay`:
/// `codes` holds `n·cols` bytes, `scales` one f32 per block.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QuantActs<'a> {
    pub lay: ActLayout,
    pub codes: &'a [u8],
    pub scales: &'a [f32],
    pub n: usize,
}

/// Q8_0 outputs for weight rows `range` and all activation rows.
///
/// The caller checked every length: `w` is consistent, `acts` holds `acts.n` rows, and `y`
/// holds `acts.n·w.rows` values.
pub(crate) fn q8_rows(
    kernel: Q8Kernel,
    w: &Weights<'_>,
    acts: &QuantActs<'_>,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(
        kernel,
        Q8Kernel::Avx2 | Q8Kernel::AvxVnni | Q8Kernel::Avx512Vnni
    ) {
        x86_q8::rows(kernel, w, acts, range, y);
        return;
    }
    let &QuantActs {
        lay,
        codes,
        scales,
        n,
    } = acts;
    #[cfg(target_arch = "aarch64")]
    if kernel == Q8Kernel::Dotprod {
        // SAFETY: `Dotprod` is only selected when the active features include it.
        unsafe { arm_q8::rows_dotprod(w, codes, scales, n, range, y) };
        return;
    }
    let _ = (kernel, lay);
    q8_rows_scalar(w, codes, scales, n, range, y);
}

/// The reference loop over a range of weight rows: weight row outer, activation row
/// inner, each output one [`dot_q8_row`].
#[inline(always)]
fn q8_rows_scalar(
    w: &Weights<'_>,
    codes: &[u8],
    scales: &[f32],
    n: usize,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    let (rows, cols) = (w.rows, w.cols);
    let nb = cols / QK;
    let acts = || {
        codes
            .chunks_exact(cols)
            .zip(scales.chunks_exact(nb))
            .take(n)
            .enumerate()
    };
    // The layout is resolved once per weight row, not per product: on a scalar core the
    // lookup costs as much as a short dot product.
    for r in range {
        match w.layout {
            TensorLayout::RowMajor => {
                let Some(wrow) = w.row(r) else { continue };
                for (i, (cr, sr)) in acts() {
                    // SAFETY: this task owns column r of every output row.
                    unsafe { y.write(i * rows + r, dot_q8_row(wrow, cr, sr)) };
                }
            }
            TensorLayout::Q8Rows4 => {
                let Some((group, slot)) = w.group_of(r) else {
                    continue;
                };
                for (i, (cr, sr)) in acts() {
                    // SAFETY: as above.
                    unsafe { y.write(i * rows + r, dot_q8_rows4(group, slot, cr, sr)) };
                }
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm_q8 {
    //! The reference loops compiled with `dotprod`, which LLVM turns into `sdot`.
    use super::*;

    /// # Safety
    ///
    /// The CPU implements NEON and the dot-product extension.
    #[target_feature(enable = "neon,dotprod")]
    pub(super) unsafe fn rows_dotprod(
        w: &Weights<'_>,
        codes: &[u8],
        scales: &[f32],
        n: usize,
        range: Range<usize>,
        y: &SharedMut<'_, f32>,
    ) {
        q8_rows_scalar(w, codes, scales, n, range, y);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_q8 {
    //! Drivers for the x86 Q8_0 kernels: packed-group GEMM tiles, then GEMV for the rows
    //! that did not fill a group, then the reference for weight rows past a multiple of
    //! the tile. Plain and four-row-group weights run the same drivers; only where a row's
    //! blocks lie differs ([`x86::QRows`]).
    use super::*;
    use crate::kernels::x86::{self, PlainRows, QRows, Rows4};
    use glimpse_quant::layout::ROWS4;

    pub(super) fn rows(
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
}

/// f32-arithmetic outputs (F32/F16/BF16/FP8 weights) for weight rows `range` and all
/// `n` activation rows of `x`, each equal to the reference's `dot_f32(decoded row, x)`.
pub(crate) fn f32_rows(
    kernel: F32Kernel,
    w: &Weights<'_>,
    x: &[f32],
    n: usize,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if matches!(kernel, F32Kernel::Avx2 | F32Kernel::Avx512) {
        x86_f32::rows(kernel == F32Kernel::Avx512, w, x, n, range, y);
        return;
    }
    let _ = kernel;
    let (rows, cols) = (w.rows, w.cols);
    if w.layout == TensorLayout::Q8Rows4 {
        // Q8_0 weights with f32 activations, stored four rows at a time.
        for r in range {
            let Some((group, slot)) = w.group_of(r) else {
                continue;
            };
            for (i, xr) in x.chunks_exact(cols).take(n).enumerate() {
                // SAFETY: this task owns column r of every output row.
                unsafe { y.write(i * rows + r, dot_decoded_rows4(group, slot, xr)) };
            }
        }
        return;
    }
    for r in range {
        let Some(wrow) = w.row(r) else { continue };
        for (i, xr) in x.chunks_exact(cols).take(n).enumerate() {
            // SAFETY: this task owns column r of every output row.
            unsafe { y.write(i * rows + r, dot_decoded(w.dtype, wrow, xr)) };
        }
    }
}

/// Values decoded per step by [`dot_decoded`] (a whole number of blocks and of 16-lane
/// chunks).
const DECODE_STEP: usize = 64;

/// `dot_f32(decode(row), x)` without a row-sized buffer: the row is decoded
/// [`DECODE_STEP`] values at a time into the same 16 lane sums, so the result is the
/// reference's to the bit.
pub(crate) fn dot_decoded(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let cols = x.len();
    let full = cols / 16 * 16;
    let size = dtype.block_bytes();
    let per_block = if dtype.is_block() { QK } else { 1 };
    let mut acc = [0f32; 16];
    let mut buf = [0f32; DECODE_STEP];
    let mut s = 0;
    while s < cols {
        let e = (s + DECODE_STEP).min(cols);
        let (b0, b1) = (s / per_block * size, e.div_ceil(per_block) * size);
        let (Some(bytes), Some(dst), Some(xs)) =
            (row.get(b0..b1), buf.get_mut(..e - s), x.get(s..e))
        else {
            break;
        };
        decode_row(dtype, bytes, dst);
        let lanes_end = full.clamp(s, e) - s;
        lane_sums16(&mut acc, &dst[..lanes_end], &xs[..lanes_end]);
        s = e;
    }
    let mut tail = 0f32;
    for k in full..cols {
        if let (Some(bytes), Some(&xv)) = (row.get(k * size..(k + 1) * size), x.get(k)) {
            let mut v = [0f32; 1];
            decode_row(dtype, bytes, &mut v);
            tail += v[0] * xv;
        }
    }
    tree16(&mut acc) + tail
}

#[cfg(target_arch = "x86_64")]
mod x86_f32 {
    //! Driver for the f32-arithmetic tiles (AVX2, or AVX-512 with the same bits): 4 weight
    //! rows x 1 activation row for matrix-vector products, 2 x 2 otherwise, single rows
    //! for the remainders.
    use super::*;
    use crate::kernels::x86::{
        self, DBF16, DE4M3, DE5M2, DF16, DF32, DMxFp8, DQ8, DQ8Rows4, Decode16,
    };
    use glimpse_quant::layout::ROWS4;

    pub(super) fn rows(
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
}
