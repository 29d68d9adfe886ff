//! Linear layers `y = x·Wᵀ + b` over every stored weight format: the entry points, the
//! reference arithmetic every kernel reproduces, and the split of output columns across
//! an executor.
//!
//! - F32 / F16 / BF16 weights: f32 math (each weight row widened once, then reused).
//! - Q8_0: W8A8 as ggml does it (quant-formats.md §1.4): each activation row is quantized
//!   per 32-block on the fly (`d = amax/127`, f16 scale, round half away from zero, the
//!   reference `quantize_row_q8_0`), blocks are multiplied in exact int32, and
//!   `acc += (d_w·d_a)·isum` in f32.
//! - E4M3 / E5M2 / MXFP8: W8A32, each weight row decoded through the 256-entry tables and
//!   its block scale into f32, then f32 dot products.
//! - Q8_0 with [`Q8Activations::F32`] ([`Weights::with_activations`]): W8A32 the same way
//!   (`d·q` per value, then f32 dot products): four times the multiply work of W8A8, no
//!   activation rounding.
//!
//! For `n > 1` activation rows (prefill, 1×1 convolutions over pixels) the loop runs
//! weight row outer, activation row inner, so every weight row is read and decoded once
//! per call whatever `n` is.
//!
//! The SIMD kernels (`gemm.rs` dispatch, `arch/` drivers and instructions) compute each output with
//! exactly the reference's sequence of roundings, so every kernel and every executor
//! gives the same bits: [`linear`] and [`linear_many`] take both choices in a
//! [`Ctx`].

use glimpse_quant::DType;
use glimpse_quant::fp8::{E4M3_TO_F32, E5M2_TO_F32, e8m0_to_f32};
use glimpse_quant::layout::{QK, ROWS4, ROWS4_BLOCK_BYTES, TensorLayout};
use glimpse_quant::repack;

use glimpse_hal::Executor;

use crate::error::{Dims, Error, tensor_name};
use crate::image::TensorView;
use crate::kernels::arch;
use crate::kernels::cpu::{F32Kernel, Q8Kernel};
use crate::kernels::gemm::{self, ActLayout, QuantActs};
use crate::kernels::math::same_len;
use crate::kernels::par::{SharedMut, for_pieces, task_count};
use crate::kernels::{Ctx, Vector, bf16_to_f32, f16_to_f32};

/// Bytes of a Q8_0 / E4M3 / E5M2 block, and of an MXFP8 block.
const B34: usize = 2 + QK;
const B33: usize = 1 + QK;

/// How activations meet Q8_0 weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Q8Activations {
    /// Quantized to Q8_0 per 32-block, integer dot products (W8A8, as ggml does): the
    /// fastest, and what llama.cpp computes.
    #[default]
    Int8,
    /// Kept in f32, the weights widened (W8A32): slower, closer to the unquantized model
    /// (no activation rounding).
    F32,
}

/// A weight matrix `[rows, cols]` in any numeric stored format; block formats run their
/// blocks of 32 along `cols`. Rows are stored one after the other, or for Q8_0 also
/// four at a time ([`TensorLayout::Q8Rows4`]), which every Q8_0 kernel reads to the same
/// bits.
#[derive(Clone, Copy, Debug)]
pub struct Weights<'a> {
    /// Storage format.
    pub dtype: DType,
    /// Output features.
    pub rows: usize,
    /// Input features (the reduction axis).
    pub cols: usize,
    /// `rows` rows of `row_bytes(dtype, cols)` bytes each, arranged as `layout` says.
    pub data: &'a [u8],
    /// How activations meet Q8_0 weights (ignored by the other formats).
    pub act: Q8Activations,
    /// How the rows are arranged in `data`.
    pub layout: TensorLayout,
}

/// Bytes of one row of `cols` values in `dtype`, or `None` if `dtype` holds no numbers
/// or `cols` is not a whole number of blocks.
pub fn row_bytes(dtype: DType, cols: usize) -> Option<usize> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => cols.checked_mul(dtype.block_bytes()),
        DType::Q8_0 | DType::E4M3 | DType::E5M2 | DType::MxFp8 if cols.is_multiple_of(QK) => {
            (cols / QK).checked_mul(dtype.block_bytes())
        }
        _ => None,
    }
}

impl<'a> Weights<'a> {
    /// A checked matrix view: numeric `dtype`, `cols` a multiple of 32 for the block
    /// formats, and `data` exactly `rows` rows long.
    pub fn new(dtype: DType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self, Error> {
        Self::with_layout(dtype, TensorLayout::RowMajor, rows, cols, data)
    }

    /// [`Weights::new`] for rows arranged as `layout` says ([`TensorLayout::Q8Rows4`]:
    /// Q8_0 only, `rows` a multiple of 4).
    pub fn with_layout(
        dtype: DType,
        layout: TensorLayout,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, Error> {
        let w = Weights {
            dtype,
            rows,
            cols,
            data,
            act: Q8Activations::Int8,
            layout,
        };
        w.check()?;
        Ok(w)
    }

    /// The same matrix with activations meeting Q8_0 weights as `act` says.
    pub fn with_activations(self, act: Q8Activations) -> Self {
        Weights { act, ..self }
    }

    /// View a 2-D tensor of the image as a matrix.
    pub fn from_view(v: &TensorView<'a>) -> Result<Self, Error> {
        let &[rows, cols] = v.dims() else {
            return Err(Error::Shape {
                tensor: tensor_name(v.name),
                expected: Dims::new(&[0, 0]),
                got: Dims::new(v.dims()),
            });
        };
        Self::with_layout(v.dtype, v.layout, rows as usize, cols as usize, v.data).map_err(|e| {
            match e {
                Error::Length { .. } => {
                    Error::Model(crate::image::ImageError::PayloadSize { index: v.index })
                }
                _ => Error::DType {
                    tensor: tensor_name(v.name),
                    dtype: v.dtype,
                },
            }
        })
    }

    /// Bytes of one stored row (for [`TensorLayout::Q8Rows4`], a quarter of a group's).
    pub fn row_bytes(&self) -> usize {
        match self.layout {
            TensorLayout::RowMajor => row_bytes(self.dtype, self.cols).unwrap_or(0),
            TensorLayout::Q8Rows4 => self.group_bytes() / ROWS4,
        }
    }

    /// Bytes of one group of four rows of a [`TensorLayout::Q8Rows4`] matrix.
    pub(crate) fn group_bytes(&self) -> usize {
        (self.cols / QK).saturating_mul(ROWS4_BLOCK_BYTES)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        let bad = Error::DType {
            tensor: tensor_name("(matrix)"),
            dtype: self.dtype,
        };
        let rb = row_bytes(self.dtype, self.cols).ok_or(bad.clone())?;
        let expected = match self.layout {
            TensorLayout::RowMajor => rb.saturating_mul(self.rows),
            TensorLayout::Q8Rows4 => {
                if self.dtype != DType::Q8_0 || !self.rows.is_multiple_of(ROWS4) {
                    return Err(bad);
                }
                (self.rows / ROWS4).saturating_mul(self.group_bytes())
            }
        };
        if self.data.len() != expected {
            return Err(Error::Length {
                what: "weight matrix payload",
                expected,
                got: self.data.len(),
            });
        }
        Ok(())
    }

    /// The stored bytes of row `r` (`None` past the end, and for a layout whose rows are
    /// not contiguous).
    pub fn row(&self, r: usize) -> Option<&'a [u8]> {
        if self.layout != TensorLayout::RowMajor {
            return None;
        }
        let rb = self.row_bytes();
        let start = r.checked_mul(rb)?;
        self.data.get(start..start.checked_add(rb)?)
    }

    /// Decode row `r` into `out` (`cols` values): an embedding lookup.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), Error> {
        self.check()?;
        if out.len() != self.cols {
            return Err(Error::Length {
                what: "dequantized row",
                expected: self.cols,
                got: out.len(),
            });
        }
        let past = Error::Length {
            what: "matrix row index",
            expected: self.rows,
            got: r,
        };
        if r >= self.rows {
            return Err(past);
        }
        match self.layout {
            TensorLayout::RowMajor => decode_row(self.dtype, self.row(r).ok_or(past)?, out),
            TensorLayout::Q8Rows4 => {
                let (group, slot) = self.group_of(r).ok_or(past)?;
                decode_rows4_row(group, slot, out);
            }
        }
        Ok(())
    }

    /// The group holding row `r` of a [`TensorLayout::Q8Rows4`] matrix, and the row's
    /// slot in it.
    pub(crate) fn group_of(&self, r: usize) -> Option<(&'a [u8], usize)> {
        let gb = self.group_bytes();
        let start = (r / ROWS4).checked_mul(gb)?;
        Some((self.data.get(start..start.checked_add(gb)?)?, r % ROWS4))
    }

    /// Row `r` against one quantized activation row by the reference arithmetic
    /// ([`dot_q8_row`]), whatever the layout (Q8_0 weights only; 0 past the end): the
    /// x86 drivers' remainder rows.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(crate) fn dot_q8(&self, r: usize, codes: &[u8], scales: &[f32]) -> f32 {
        match self.layout {
            TensorLayout::RowMajor => self
                .row(r)
                .map_or(0.0, |row| dot_q8_row(row, codes, scales)),
            TensorLayout::Q8Rows4 => self
                .group_of(r)
                .map_or(0.0, |(g, slot)| dot_q8_rows4(g, slot, codes, scales)),
        }
    }
}

/// The f16 scale and the 32 codes of row `slot` in one [`TensorLayout::Q8Rows4`] record.
#[inline(always)]
fn rows4_block(rec: &[u8; ROWS4_BLOCK_BYTES], slot: usize) -> (f32, &[u8]) {
    let so = repack::scale_offset(slot);
    let d = match rec.get(so..so + 2) {
        Some(&[a, b]) => f16_to_f32(u16::from_le_bytes([a, b])),
        _ => 0.0,
    };
    let co = repack::codes_offset(slot);
    (d, rec.get(co..co + QK).unwrap_or_default())
}

/// Decode row `slot` of one group of a [`TensorLayout::Q8Rows4`] matrix into `out`.
fn decode_rows4_row(group: &[u8], slot: usize, out: &mut [f32]) {
    let (recs, _) = group.as_chunks::<ROWS4_BLOCK_BYTES>();
    let (outs, _) = out.as_chunks_mut::<QK>();
    for (rec, o) in recs.iter().zip(outs) {
        let (d, qs) = rows4_block(rec, slot);
        for (o, &q) in o.iter_mut().zip(qs) {
            *o = d * f32::from(q as i8);
        }
    }
}

/// Decode one stored row into f32 (`out.len()` values; the caller checked the lengths).
pub(crate) fn decode_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            let (c, _) = row.as_chunks::<4>();
            for (o, b) in out.iter_mut().zip(c) {
                *o = f32::from_le_bytes(*b);
            }
        }
        DType::F16 => {
            let (c, _) = row.as_chunks::<2>();
            for (o, b) in out.iter_mut().zip(c) {
                *o = f16_to_f32(u16::from_le_bytes(*b));
            }
        }
        DType::BF16 => {
            let (c, _) = row.as_chunks::<2>();
            for (o, b) in out.iter_mut().zip(c) {
                *o = bf16_to_f32(u16::from_le_bytes(*b));
            }
        }
        DType::Q8_0 => {
            let (blocks, _) = row.as_chunks::<B34>();
            let (outs, _) = out.as_chunks_mut::<QK>();
            for (b, o) in blocks.iter().zip(outs) {
                let [d0, d1, qs @ ..] = b;
                let d = f16_to_f32(u16::from_le_bytes([*d0, *d1]));
                for (o, &q) in o.iter_mut().zip(qs) {
                    *o = d * f32::from(q as i8);
                }
            }
        }
        DType::E4M3 | DType::E5M2 => {
            let table = if dtype == DType::E4M3 {
                &E4M3_TO_F32
            } else {
                &E5M2_TO_F32
            };
            let (blocks, _) = row.as_chunks::<B34>();
            let (outs, _) = out.as_chunks_mut::<QK>();
            for (b, o) in blocks.iter().zip(outs) {
                let [d0, d1, qs @ ..] = b;
                let d = f16_to_f32(u16::from_le_bytes([*d0, *d1]));
                for (o, &q) in o.iter_mut().zip(qs) {
                    *o = d * table[q as usize];
                }
            }
        }
        DType::MxFp8 => {
            let (blocks, _) = row.as_chunks::<B33>();
            let (outs, _) = out.as_chunks_mut::<QK>();
            for (b, o) in blocks.iter().zip(outs) {
                let [e, qs @ ..] = b;
                let d = e8m0_to_f32(*e);
                for (o, &q) in o.iter_mut().zip(qs) {
                    *o = d * E4M3_TO_F32[q as usize];
                }
            }
        }
        DType::U8 | DType::U32 | DType::I32 => {}
    }
}
/// Scratch bytes [`linear`] needs for `n` activation rows: the quantized activations for
/// Q8_0 (int8 codes plus one f32 scale per block), one widened weight row otherwise. Add
/// nothing for alignment: the count includes it. The same scratch serves every executor
/// and every kernel.
pub fn linear_scratch_bytes(w: &Weights, n: usize) -> usize {
    let body = match w.dtype {
        DType::Q8_0 => {
            // Codes, one f32 scale per activation block, and the weight row's scales.
            let nb = w.cols / QK;
            n.saturating_mul(w.cols)
                .saturating_add(n.saturating_add(1).saturating_mul(nb).saturating_mul(4))
        }
        _ => w.cols.saturating_mul(4),
    };
    // Room to align the f32 part to 4 bytes.
    body.saturating_add(4)
}

/// `y[n×rows] = x[n×cols]·Wᵀ + bias`, its output columns split across `ctx`'s executor
/// with the kernels `ctx.cpu` allows: every choice gives the same bits.
///
/// `bias`, when given, holds `rows` values. `scratch` must hold at least
/// [`linear_scratch_bytes`]`(w, n)` bytes; its contents are overwritten. Every length is
/// checked before anything is written.
pub fn linear(
    ctx: &mut Ctx<'_>,
    w: &Weights,
    bias: Option<&Vector>,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut [u8],
) -> Result<(), Error> {
    w.check()?;
    let (rows, cols) = (w.rows, w.cols);
    let want = |what, expected: usize, got: usize| {
        if expected == got {
            Ok(())
        } else {
            Err(Error::Length {
                what,
                expected,
                got,
            })
        }
    };
    want("linear input", n.saturating_mul(cols), x.len())?;
    want("linear output", n.saturating_mul(rows), y.len())?;
    if let Some(b) = bias {
        want("linear bias", rows, b.len())?;
    }
    let need = linear_scratch_bytes(w, n);
    if scratch.len() < need {
        return Err(Error::Length {
            what: "linear scratch",
            expected: need,
            got: scratch.len(),
        });
    }
    if n == 0 || rows == 0 {
        return Ok(());
    }

    let cpu = ctx.usable();
    if w.dtype == DType::Q8_0 && w.act == Q8Activations::Int8 {
        matmul_q8_0(cpu.q8_kernel(), ctx.exec, w, x, n, y, scratch)?;
    } else {
        matmul_f32(cpu.f32_kernel(), ctx.exec, w, x, n, y, scratch)?;
    }

    if let Some(b) = bias {
        for yr in y.chunks_exact_mut(rows) {
            b.zip_apply(yr, |a, b| a + b);
        }
    }
    Ok(())
}

/// One product of a [`linear_many`] call: `y[n×rows] = x·wᵀ + bias`.
#[derive(Debug)]
pub struct Product<'p, 'w> {
    /// The matrix.
    pub w: &'p Weights<'w>,
    /// Its bias (`rows` values), if any.
    pub bias: Option<&'p Vector<'w>>,
    /// Its output, `n × rows`.
    pub y: &'p mut [f32],
}

/// Most products one [`linear_many`] pass takes together (more run one by one).
pub const MANY_MAX: usize = 4;

/// Several matrices over the same input (a layer's q, k and v; an MLP's gate and up):
/// for Q8_0 weights with int8 activations and a common width, the input is quantized
/// once and the rows of all the matrices are split across the executor's tasks in one
/// dispatch (one wait instead of one per matrix). Otherwise, and for more than
/// [`MANY_MAX`] products, one [`linear`] each. The same bits either way. `scratch` as
/// for any one of them ([`linear_scratch_bytes`] of the widest).
pub fn linear_many(
    ctx: &mut Ctx<'_>,
    products: &mut [Product<'_, '_>],
    x: &[f32],
    n: usize,
    scratch: &mut [u8],
) -> Result<(), Error> {
    let cols = products.first().map_or(0, |p| p.w.cols);
    let together = products.len() <= MANY_MAX
        && n > 0
        && cols > 0
        && products.iter().all(|p| {
            p.w.dtype == DType::Q8_0 && p.w.act == Q8Activations::Int8 && p.w.cols == cols
        });
    if !together {
        for p in products.iter_mut() {
            linear(ctx, p.w, p.bias, x, n, p.y, scratch)?;
        }
        return Ok(());
    }
    // Every check of `linear`, for every product, before anything is written.
    for p in products.iter() {
        p.w.check()?;
        same_len("linear input", n.saturating_mul(cols), x.len())?;
        same_len("linear output", n.saturating_mul(p.w.rows), p.y.len())?;
        if let Some(b) = p.bias {
            same_len("linear bias", p.w.rows, b.len())?;
        }
        let need = linear_scratch_bytes(p.w, n);
        if scratch.len() < need {
            return Err(Error::Length {
                what: "linear scratch",
                expected: need,
                got: scratch.len(),
            });
        }
    }
    let kernel = ctx.usable().q8_kernel();
    let nb = cols / QK;
    let (scales, rest) = scratch_f32(scratch, (n + 1) * nb)?;
    let (Some(scales), Some(codes)) = (scales.get_mut(..n * nb), rest.get_mut(..n * cols)) else {
        return Err(Error::Length {
            what: "linear scratch",
            expected: n * cols,
            got: 0,
        });
    };
    let lay = ActLayout::new(kernel, n);
    gemm::quantize_acts(ctx.exec, kernel, x, cols, lay, codes, scales);
    let acts = QuantActs {
        lay,
        codes: &*codes,
        scales: &*scales,
        n,
    };
    // The products' rows laid end to end, each starting on a multiple of 8 so that every
    // piece of a split starts a product's rows on a multiple of 8 (or at its first row),
    // as the kernels expect.
    let count = products.len();
    let mut starts = [0usize; MANY_MAX + 1];
    let mut ws: [Option<&Weights>; MANY_MAX] = [None; MANY_MAX];
    let mut outs: [Option<SharedMut<'_, f32>>; MANY_MAX] = [None, None, None, None];
    for (j, p) in products.iter_mut().enumerate() {
        starts[j + 1] = starts[j] + p.w.rows.div_ceil(8) * 8;
        ws[j] = Some(p.w);
        outs[j] = Some(SharedMut::new(&mut *p.y));
    }
    let total = starts[count];
    let tasks = task_count(
        ctx.exec,
        total / 8,
        n.saturating_mul(total).saturating_mul(cols),
    );
    for_pieces(ctx.exec, total, tasks, 8, &|range| {
        for (j, (w, out)) in ws.iter().zip(&outs).enumerate() {
            let (Some(w), Some(out)) = (w, out) else {
                continue;
            };
            let lo = range.start.max(starts[j]) - starts[j];
            let hi = range.end.min(starts[j] + w.rows).saturating_sub(starts[j]);
            if lo < hi {
                gemm::q8_rows(kernel, w, &acts, lo..hi, out);
            }
        }
    });
    for p in products.iter_mut() {
        if let Some(b) = p.bias {
            for yr in p.y.chunks_exact_mut(p.w.rows) {
                b.zip_apply(yr, |a, b| a + b);
            }
        }
    }
    Ok(())
}

/// A 4-aligned `&mut [f32]` of `len` values carved from `scratch`, and the bytes after it.
fn scratch_f32(scratch: &mut [u8], len: usize) -> Result<(&mut [f32], &mut [u8]), Error> {
    let err = Error::Length {
        what: "linear scratch",
        expected: len.saturating_mul(4).saturating_add(4),
        got: scratch.len(),
    };
    let pad = scratch.as_ptr().align_offset(4);
    let rest = scratch.get_mut(pad..).ok_or(err.clone())?;
    let (head, tail) = rest
        .split_at_mut_checked(len.saturating_mul(4))
        .ok_or(err.clone())?;
    let f = bytemuck::try_cast_slice_mut(head).map_err(|_| err)?;
    Ok((f, tail))
}

/// The f32 path. The reference (scalar kernel, one task) widens each weight row once into
/// the scratch (unless it can be borrowed as f32 in place), then takes one dot product
/// per activation row. Split across tasks, or with SIMD kernels, each task decodes as it
/// goes ([`gemm::f32_rows`]), to the same bits.
fn matmul_f32(
    kernel: F32Kernel,
    exec: &mut dyn Executor,
    w: &Weights,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut [u8],
) -> Result<(), Error> {
    let (rows, cols) = (w.rows, w.cols);
    let rb = w.row_bytes();
    if rb == 0 {
        // cols == 0: y = 0 (+ bias).
        y.fill(0.0);
        return Ok(());
    }
    let tasks = task_count(
        exec,
        rows.div_ceil(4),
        n.saturating_mul(rows).saturating_mul(cols),
    );
    // Q8_0 rows are never widened into the scratch: its size is planned for W8A8, and
    // the streaming decode gives the same bits.
    if kernel != F32Kernel::Scalar || tasks > 1 || w.dtype == DType::Q8_0 {
        let out = SharedMut::new(y);
        for_pieces(exec, rows, tasks, 4, &|range| {
            gemm::f32_rows(kernel, w, x, n, range, &out)
        });
        return Ok(());
    }
    let (buf, _) = scratch_f32(scratch, cols)?;
    for (r, wrow) in w.data.chunks_exact(rb).enumerate() {
        // Payloads in an image are 64-byte aligned and f32 rows stay 4-aligned, so on
        // little-endian targets an F32 row is used where it lies.
        let wf: &[f32] = match (w.dtype, cfg!(target_endian = "little")) {
            (DType::F32, true) => match bytemuck::try_cast_slice(wrow) {
                Ok(f) => f,
                Err(_) => {
                    decode_row(w.dtype, wrow, buf);
                    buf
                }
            },
            _ => {
                decode_row(w.dtype, wrow, buf);
                buf
            }
        };
        for (i, xr) in x.chunks_exact(cols).enumerate().take(n) {
            if let Some(o) = y.get_mut(i * rows + r) {
                *o = dot_f32(wf, xr);
            }
        }
    }
    Ok(())
}

/// f32 dot product with 16 independent partial sums, so the loop vectorises (the
/// compiler may not reassociate one running sum) and the rounding error grows with
/// `len/16` rather than `len`.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let len = a.len().min(b.len());
    let full = len / 16 * 16;
    let mut acc = [0f32; 16];
    lane_sums16(&mut acc, &a[..full], &b[..full]);
    let mut tail = 0f32;
    for (x, y) in a[full..len].iter().zip(&b[full..len]) {
        tail += x * y;
    }
    tree16(&mut acc) + tail
}

/// `acc[k] += a[16c + k]·b[16c + k]` over the whole 16-value chunks of `a` and `b`: the
/// lane sums of [`dot_f32`], which every f32 kernel reproduces.
#[inline(always)]
pub(crate) fn lane_sums16(acc: &mut [f32; 16], a: &[f32], b: &[f32]) {
    let (ac, _) = a.as_chunks::<16>();
    let (bc, _) = b.as_chunks::<16>();
    for (x, y) in ac.iter().zip(bc) {
        for k in 0..16 {
            acc[k] += x[k] * y[k];
        }
    }
}

/// Pairwise reduction of the 16 lane sums (lanes `k` and `k + w` for w = 8, 4, 2, 1).
#[inline(always)]
pub(crate) fn tree16(acc: &mut [f32; 16]) -> f32 {
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for k in 0..w {
            acc[k] += acc[k + w];
        }
    }
    acc[0]
}

/// Quantize one activation row to Q8_0 codes and f32 block scales, exactly as ggml's
/// reference `quantize_row_q8_0` does (the scale is the f16-rounded `amax/127`; codes
/// come from the unrounded reciprocal, half away from zero). `x.len()` is a multiple of
/// 32 and `codes`/`scales` match it.
pub fn quantize_act_q8_0(x: &[f32], codes: &mut [u8], scales: &mut [f32]) {
    let (xb, _) = x.as_chunks::<QK>();
    let (cb, _) = codes.as_chunks_mut::<QK>();
    for ((xb, cb), s) in xb.iter().zip(cb).zip(scales.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        *s = half::f16::from_f32(d).to_f32();
        for (c, &v) in cb.iter_mut().zip(xb) {
            // |v·id| <= 127 up to rounding for finite scales; the clamp only matters when
            // 1/d overflowed (amax below ~4e-37), and keeps the integer steps below
            // from overflowing. NaN stays NaN and converts to 0.
            let p = (v * id).clamp(-127.0, 127.0);
            // roundf: truncate, then step away from zero on a fraction of at least 1/2
            // (both steps are exact for |p| <= 127).
            let t = p as i32;
            let frac = p - t as f32;
            let q = t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5);
            *c = q.clamp(-127, 127) as i8 as u8;
        }
    }
}

/// The W8A8 path: quantize all `n` activation rows once (laid out for the kernel), then
/// split the weight rows across tasks; the reference kernel takes, per weight row, one
/// int8 dot per activation row ([`dot_q8_row`]).
fn matmul_q8_0(
    kernel: Q8Kernel,
    exec: &mut dyn Executor,
    w: &Weights,
    x: &[f32],
    n: usize,
    y: &mut [f32],
    scratch: &mut [u8],
) -> Result<(), Error> {
    let (rows, cols) = (w.rows, w.cols);
    let nb = cols / QK;
    let (scales, rest) = scratch_f32(scratch, (n + 1) * nb)?;
    let scales = scales.get_mut(..n * nb).ok_or(Error::Length {
        what: "linear scratch",
        expected: n * nb,
        got: 0,
    })?;
    let codes = rest.get_mut(..n * cols).ok_or(Error::Length {
        what: "linear scratch",
        expected: n * cols,
        got: 0,
    })?;
    if nb == 0 {
        y.fill(0.0);
        return Ok(());
    }
    let lay = ActLayout::new(kernel, n);
    gemm::quantize_acts(exec, kernel, x, cols, lay, codes, scales);
    let acts = QuantActs {
        lay,
        codes: &*codes,
        scales: &*scales,
        n,
    };
    let tasks = task_count(
        exec,
        rows.div_ceil(8),
        n.saturating_mul(rows).saturating_mul(cols),
    );
    let out = SharedMut::new(y);
    for_pieces(exec, rows, tasks, 8, &|range| {
        gemm::q8_rows(kernel, w, &acts, range, &out)
    });
    Ok(())
}

/// One Q8_0 weight row (`nb` blocks of 34 bytes) against one quantized activation row:
/// per block the exact int32 dot product, then `acc += (d_w·d_a)·isum` in f32, block
/// after block. Every Q8_0 kernel reproduces this sequence of roundings.
#[inline(always)]
pub(crate) fn dot_q8_row(wrow: &[u8], codes: &[u8], scales: &[f32]) -> f32 {
    // The block length as the target's vector unit wants it (opaque on Helium).
    let qk = arch::q8_block_len();
    let (wblocks, _) = wrow.as_chunks::<B34>();
    let (ablocks, _) = codes.as_chunks::<QK>();
    let mut acc = 0f32;
    for ((wb, ab), &da) in wblocks.iter().zip(ablocks).zip(scales) {
        let [d0, d1, qw @ ..] = wb;
        let dw = f16_to_f32(u16::from_le_bytes([*d0, *d1]));
        let (qw, ab) = (
            qw.get(..qk).unwrap_or_default(),
            ab.get(..qk).unwrap_or_default(),
        );
        acc += (dw * da) * isum_i8(qw, ab) as f32;
    }
    acc
}

/// [`dot_q8_row`] for row `slot` of one group of a [`TensorLayout::Q8Rows4`] matrix:
/// the same blocks in the same order, so the same bits.
#[inline(always)]
pub(crate) fn dot_q8_rows4(group: &[u8], slot: usize, codes: &[u8], scales: &[f32]) -> f32 {
    let qk = arch::q8_block_len();
    let (recs, _) = group.as_chunks::<ROWS4_BLOCK_BYTES>();
    let (ablocks, _) = codes.as_chunks::<QK>();
    let mut acc = 0f32;
    for ((rec, ab), &da) in recs.iter().zip(ablocks).zip(scales) {
        let (dw, qw) = rows4_block(rec, slot);
        let (qw, ab) = (
            qw.get(..qk).unwrap_or_default(),
            ab.get(..qk).unwrap_or_default(),
        );
        acc += (dw * da) * isum_i8(qw, ab) as f32;
    }
    acc
}

/// `dot_f32(decoded row, x)` for row `slot` of one group of a
/// [`TensorLayout::Q8Rows4`] matrix (`x.len()` a multiple of 32, so no tail): a block
/// decoded at a time into the same 16 lane sums, so the reference's bits.
pub(crate) fn dot_decoded_rows4(group: &[u8], slot: usize, x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut buf = [0f32; QK];
    let (recs, _) = group.as_chunks::<ROWS4_BLOCK_BYTES>();
    let (xs, _) = x.as_chunks::<QK>();
    for (rec, xb) in recs.iter().zip(xs) {
        let (d, qs) = rows4_block(rec, slot);
        for (o, &q) in buf.iter_mut().zip(qs) {
            *o = d * f32::from(q as i8);
        }
        lane_sums16(&mut acc, &buf, xb);
    }
    tree16(&mut acc)
}

/// Exact int32 sum of the products of two runs of int8 codes (stored as bytes) of at
/// most one block: |sum| <= 32·128·128 = 2^19, so i32 cannot overflow.
#[inline(always)]
fn isum_i8(a: &[u8], b: &[u8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| i32::from(x as i8) * i32::from(y as i8))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::one_task;
    use glimpse_quant::blocks::{dequantize_row, dot_q8_0, quantize_row};
    use std::vec;
    use std::vec::Vec;

    /// Deterministic pseudo-random values (xorshift), roughly N(0, 1)-shaped by summing
    /// uniforms.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
        fn normal(&mut self) -> f32 {
            (0..4).map(|_| self.uniform()).sum::<f32>() * 1.7
        }
        fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n).map(|_| self.normal() * scale).collect()
        }
    }

    const NUMERIC: [DType; 7] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::E4M3,
        DType::E5M2,
        DType::MxFp8,
    ];

    fn encode(dtype: DType, w: &[f32], rows: usize, cols: usize) -> Vec<u8> {
        let rb = row_bytes(dtype, cols).unwrap();
        let mut out = vec![0u8; rows * rb];
        for (src, dst) in w.chunks_exact(cols).zip(out.chunks_exact_mut(rb)) {
            quantize_row(dtype, src, dst).unwrap();
        }
        out
    }

    /// What the stored weights decode to, by the quant crate's own decoder.
    fn decoded(dtype: DType, data: &[u8], rows: usize, cols: usize) -> Vec<f32> {
        let rb = row_bytes(dtype, cols).unwrap();
        let mut out = vec![0f32; rows * cols];
        for (src, dst) in data.chunks_exact(rb).zip(out.chunks_exact_mut(cols)) {
            dequantize_row(dtype, src, dst).unwrap();
        }
        out
    }

    /// f64 reference y = x·Wᵀ + b.
    fn reference(w: &[f32], b: Option<&[f32]>, x: &[f32], n: usize, rows: usize) -> Vec<f64> {
        let cols = w.len() / rows;
        let mut y = vec![0f64; n * rows];
        for i in 0..n {
            for r in 0..rows {
                let mut s = b.map_or(0.0, |b| f64::from(b[r]));
                for k in 0..cols {
                    s += f64::from(w[r * cols + k]) * f64::from(x[i * cols + k]);
                }
                y[i * rows + r] = s;
            }
        }
        y
    }

    fn run(dtype: DType, data: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
        let w = Weights::new(dtype, rows, cols, data).unwrap();
        let mut y = vec![f32::NAN; n * rows];
        let mut scratch = vec![0u8; linear_scratch_bytes(&w, n)];
        one_task(|c| linear(c, &w, None, x, n, &mut y, &mut scratch)).unwrap();
        y
    }

    #[test]
    fn every_dtype_matches_an_f64_reference_of_the_stored_weights() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let (rows, cols, n) = (24, 160, 5);
        let w = rng.vec(rows * cols, 0.05);
        let x = rng.vec(n * cols, 1.0);
        for dtype in NUMERIC {
            let data = encode(dtype, &w, rows, cols);
            let wd = decoded(dtype, &data, rows, cols);
            let want = reference(&wd, None, &x, n, rows);
            let got = run(dtype, &data, rows, cols, &x, n);
            // Scale of the outputs: |w|·|x| summed, the bound a rounding error scales with.
            let mag: f64 = (0..cols)
                .map(|k| f64::from(wd[k].abs()) * f64::from(x[k].abs()))
                .sum();
            let err = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (f64::from(*g) - w).abs())
                .fold(0.0, f64::max);
            let tol = if dtype == DType::Q8_0 {
                // W8A8: the activations are rounded to 8 bits, |Δa| <= d_a/2 = amax_a/254
                // per element, so |Δy| <= Σ|w|·amax_a/254; with amax_a within ~4x the
                // typical |x| that is about mag·4/254 ≈ 0.016·mag in the worst case.
                0.02 * mag
            } else {
                // Exact decode, then f32 sums of `cols` products: a few ulps of `mag`
                // (16 partial sums of 10 terms each, then a 16-way tree).
                1e-5 * mag
            };
            assert!(err <= tol, "{dtype:?}: max |Δ| {err:e} > {tol:e}");
        }
    }

    #[test]
    fn q8_0_activation_quantizer_is_ggml_reference_bit_exact() {
        let mut rng = Rng(42);
        let mut x = rng.vec(32 * 64, 3.0);
        // Exact ties after scaling (x·id = k + 0.5) and zeros exercise the rounding rule.
        for (i, v) in x.iter_mut().take(32).enumerate() {
            *v = i as f32 - 15.5;
        }
        x[31] = 127.0;
        for v in &mut x[32..64] {
            *v = 0.0;
        }
        let mut codes = vec![0u8; x.len()];
        let mut scales = vec![0f32; x.len() / 32];
        quantize_act_q8_0(&x, &mut codes, &mut scales);
        let mut refb = vec![0u8; x.len() / 32 * 34];
        quantize_row(DType::Q8_0, &x, &mut refb).unwrap();
        for (b, blk) in refb.chunks_exact(34).enumerate() {
            let d = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            assert_eq!(d.to_bits(), scales[b].to_bits(), "scale of block {b}");
            assert_eq!(&blk[2..], &codes[b * 32..b * 32 + 32], "codes of block {b}");
        }
    }

    #[test]
    fn q8_0_path_is_ggml_arithmetic() {
        // The kernel's per-block int32 sums and f32 accumulation must agree with the
        // quant crate's scalar `dot_q8_0` on the same quantized activations: exactly, as
        // both add (d_w·d_a)·isum block by block in the same order.
        let mut rng = Rng(7);
        let (rows, cols, n) = (8, 256, 6);
        let w = rng.vec(rows * cols, 0.1);
        let x = rng.vec(n * cols, 1.0);
        let data = encode(DType::Q8_0, &w, rows, cols);
        let got = run(DType::Q8_0, &data, rows, cols, &x, n);
        let rb = row_bytes(DType::Q8_0, cols).unwrap();
        for i in 0..n {
            let mut a = vec![0u8; rb];
            quantize_row(DType::Q8_0, &x[i * cols..(i + 1) * cols], &mut a).unwrap();
            for r in 0..rows {
                let want = dot_q8_0(&data[r * rb..(r + 1) * rb], &a).unwrap();
                assert_eq!(
                    got[i * rows + r].to_bits(),
                    want.to_bits(),
                    "row {r} act {i}"
                );
            }
        }
    }

    #[test]
    fn batched_rows_equal_one_at_a_time() {
        // Weight-row-outer batching must not change any result: each output is the same
        // dot product of the same operands.
        let mut rng = Rng(99);
        let (rows, cols, n) = (12, 96, 7);
        let w = rng.vec(rows * cols, 0.1);
        let x = rng.vec(n * cols, 1.0);
        for dtype in NUMERIC {
            let data = encode(dtype, &w, rows, cols);
            let all = run(dtype, &data, rows, cols, &x, n);
            for i in 0..n {
                let one = run(dtype, &data, rows, cols, &x[i * cols..(i + 1) * cols], 1);
                assert_eq!(
                    &all[i * rows..(i + 1) * rows],
                    &one[..],
                    "{dtype:?} row {i}"
                );
            }
        }
    }

    #[test]
    fn bias_in_f32_and_f16() {
        let mut rng = Rng(5);
        let (rows, cols, n) = (6, 32, 2);
        let w = rng.vec(rows * cols, 0.1);
        let x = rng.vec(n * cols, 1.0);
        let b: Vec<f32> = (0..rows).map(|r| r as f32 * 0.25 - 0.5).collect();
        let data = encode(DType::F32, &w, rows, cols);
        let plain = run(DType::F32, &data, rows, cols, &x, n);
        let wm = Weights::new(DType::F32, rows, cols, &data).unwrap();
        let b16: Vec<u8> = b
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        for bias in [
            Vector::from_f32(&b),
            Vector::new(DType::F16, rows, &b16).unwrap(),
        ] {
            let mut y = vec![0f32; n * rows];
            let mut s = vec![0u8; linear_scratch_bytes(&wm, n)];
            one_task(|c| linear(c, &wm, Some(&bias), &x, n, &mut y, &mut s)).unwrap();
            for i in 0..n * rows {
                // The biases are exact in f16, so the sum is the same f32 addition.
                assert_eq!(y[i], plain[i] + b[i % rows]);
            }
        }
    }

    #[test]
    fn lengths_are_checked_before_writing() {
        let data = vec![0u8; 4 * 34];
        let w = Weights::new(DType::Q8_0, 2, 64, &data).unwrap();
        let x = vec![1f32; 64];
        let mut y = vec![7f32; 2];
        let mut s = vec![0u8; linear_scratch_bytes(&w, 1)];
        assert!(one_task(|c| linear(c, &w, None, &x[..63], 1, &mut y, &mut s)).is_err());
        assert!(one_task(|c| linear(c, &w, None, &x, 1, &mut y[..1], &mut s)).is_err());
        let short = s.len() - 1;
        assert!(one_task(|c| linear(c, &w, None, &x, 1, &mut y, &mut s[..short])).is_err());
        let b = [0f32; 3];
        assert!(
            one_task(|c| linear(c, &w, Some(&Vector::from_f32(&b)), &x, 1, &mut y, &mut s))
                .is_err()
        );
        assert_eq!(y, [7.0, 7.0]);
        // Bad matrices are refused at construction.
        assert!(Weights::new(DType::Q8_0, 2, 48, &data).is_err());
        assert!(Weights::new(DType::U8, 2, 64, &data).is_err());
        assert!(Weights::new(DType::Q8_0, 3, 64, &data).is_err());
        // And a hand-built inconsistent one by linear itself.
        let bad = Weights {
            dtype: DType::F32,
            rows: 100,
            cols: 64,
            data: &data,
            act: Q8Activations::Int8,
            layout: TensorLayout::RowMajor,
        };
        assert!(one_task(|c| linear(c, &bad, None, &x, 1, &mut y, &mut s)).is_err());
    }

    #[test]
    fn dequantize_row_matches_the_quant_decoder() {
        let mut rng = Rng(3);
        let (rows, cols) = (5, 64);
        let w = rng.vec(rows * cols, 0.3);
        for dtype in NUMERIC {
            let data = encode(dtype, &w, rows, cols);
            let want = decoded(dtype, &data, rows, cols);
            let m = Weights::new(dtype, rows, cols, &data).unwrap();
            let mut out = vec![0f32; cols];
            for r in 0..rows {
                m.dequantize_row(r, &mut out).unwrap();
                assert_eq!(&out[..], &want[r * cols..(r + 1) * cols], "{dtype:?} {r}");
            }
            assert!(m.dequantize_row(rows, &mut out).is_err());
        }
    }
}
