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
                    crate::kernels::arch::x86_64::simd::quantize_row_packed_avx2(
                        xr.as_ptr(),
                        nb,
                        lay.group,
                        j,
                        flip,
                        codes.as_mut_ptr().add(gc),
                        scales.as_mut_ptr().add(gs),
                    );
                } else {
                    crate::kernels::arch::x86_64::simd::quantize_row_avx2(
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
        crate::kernels::arch::x86_64::q8::rows(kernel, w, acts, range, y);
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
        unsafe { crate::kernels::arch::aarch64::rows_dotprod(w, codes, scales, n, range, y) };
        return;
    }
    let _ = (kernel, lay);
    q8_rows_scalar(w, codes, scales, n, range, y);
}

/// The reference loop over a range of weight rows: weight row outer, activation row
/// inner, each output one [`dot_q8_row`].
#[inline(always)]
pub(crate) fn q8_rows_scalar(
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
        crate::kernels::arch::x86_64::f32::rows(kernel == F32Kernel::Avx512, w, x, n, range, y);
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
