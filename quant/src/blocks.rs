//! The 32-element block formats (Q8_0, E4M3 and E5M2 with an f16 scale, MXFP8) and the
//! row functions that quantize f32 rows into image bytes and decode them back, for every
//! [`DType`] that holds numbers.
//!
//! Rows are byte slices because the image stores blocks back to back with no alignment
//! (34- and 33-byte blocks); the block structs are for code that wants named fields and
//! convert from and to bytes explicitly (little-endian scales), never by transmuting.
//!
//! Scale rules (quant-formats.md §1.3, §7):
//! - Q8_0 follows ggml's `quantize_row_q8_0_ref` to the byte: `d = amax/127` in f32,
//!   codes `roundf(x * (1/d))` (half away from zero) from the f32 reciprocal, `d` stored as
//!   f16 RNE. Codes stay in [-127, 127].
//! - E4M3 / E5M2: `d = amax/448` (resp. `amax/57344`) stored as f16 RNE; codes encode
//!   `x / f32(f16(d))`, i.e. they divide by the *stored* scale, so decoding `d·code`
//!   reproduces x up to the FP8 rounding alone, and saturate where a rounded-down scale
//!   pushes `|x/d|` past the element maximum. One exception to RNE: when it would round
//!   `d` *down* to below f16's smallest normal (2^-14, i.e. amax below 0.027 for E4M3 and
//!   3.5 for E5M2, common for weights), the next f16 up is stored instead. Subnormal f16
//!   steps are a large fraction of `d` there (up to half of it), and rounding down would
//!   clip the block's largest elements by as much; rounding up costs nothing, because
//!   FP8's relative precision does not depend on where in its range the block lands. In
//!   the normal f16 range RNE's 2^-11 overshoot saturates to within half an FP8 step.
//! - MXFP8: E8M0 scale by RCEIL ([`e8m0_rceil`]), elements E4M3 of `x·2^(127-e)`,
//!   saturating (RCEIL never needs to). Values beyond about 3.3e38 are an overflow error:
//!   their code would decode as infinity.
//!
//! Errors: the row functions check the dtype, then the lengths, before writing anything.
//! A non-finite input or an overflowing scale is found block by block (element by element
//! for the plain types): on such an error the blocks before the offending one have been
//! written and the rest of `out` is untouched.

use half::{bf16, f16};

use crate::error::QuantError;
use crate::fp8::{
    E4M3_MAX, E4M3_TO_F32, E5M2_MAX, E5M2_TO_F32, e8m0_rceil, e8m0_to_f32, f32_to_e4m3_sat,
    f32_to_e5m2_sat, mul_pow2,
};
use crate::layout::{DType, QK};

/// Bytes of a Q8_0, E4M3 or E5M2 block.
pub const BLOCK_F16_SCALE_BYTES: usize = 2 + QK;
/// Bytes of an MXFP8 block.
pub const BLOCK_MXFP8_BYTES: usize = 1 + QK;

/// `{ f16 d; i8 qs[32] }`: `y = d * q`. GGUF-compatible.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits.
    pub d: u16,
    /// Codes in [-127, 127].
    pub qs: [i8; QK],
}

/// `{ f16 d; u8 qs[32] }` with OCP E4M3FN codes: `y = d * e4m3(q)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockE4M3 {
    /// Scale, f16 bits.
    pub d: u16,
    /// E4M3 codes.
    pub qs: [u8; QK],
}

/// `{ f16 d; u8 qs[32] }` with E5M2 codes: `y = d * e5m2(q)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockE5M2 {
    /// Scale, f16 bits.
    pub d: u16,
    /// E5M2 codes.
    pub qs: [u8; QK],
}

/// OCP MXFP8 with E4M3 elements, scale first: `y = 2^(e-127) * e4m3(q)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMxFp8 {
    /// E8M0 scale.
    pub e: u8,
    /// E4M3 codes.
    pub qs: [u8; QK],
}

// The structs mirror the stored bytes exactly, so no padding may creep in.
const _: () = assert!(core::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(core::mem::size_of::<BlockE4M3>() == 34);
const _: () = assert!(core::mem::size_of::<BlockE5M2>() == 34);
const _: () = assert!(core::mem::size_of::<BlockMxFp8>() == 33);
const _: () = assert!(DType::Q8_0.block_bytes() == BLOCK_F16_SCALE_BYTES);
const _: () = assert!(DType::E4M3.block_bytes() == BLOCK_F16_SCALE_BYTES);
const _: () = assert!(DType::E5M2.block_bytes() == BLOCK_F16_SCALE_BYTES);
const _: () = assert!(DType::MxFp8.block_bytes() == BLOCK_MXFP8_BYTES);

/// Split 34 stored bytes into the little-endian f16 scale and the codes.
#[inline]
fn split_f16_block(b: &[u8; BLOCK_F16_SCALE_BYTES]) -> (u16, [u8; QK]) {
    let [d0, d1, qs @ ..] = b;
    (u16::from_le_bytes([*d0, *d1]), *qs)
}

#[inline]
fn join_f16_block(d: u16, codes: &[u8; QK]) -> [u8; BLOCK_F16_SCALE_BYTES] {
    let mut b = [0u8; BLOCK_F16_SCALE_BYTES];
    let [d0, d1, qs @ ..] = &mut b;
    [*d0, *d1] = d.to_le_bytes();
    *qs = *codes;
    b
}

impl BlockQ8_0 {
    /// Stored size.
    pub const BYTES: usize = BLOCK_F16_SCALE_BYTES;

    /// Read a stored block.
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let (d, codes) = split_f16_block(b);
        BlockQ8_0 {
            d,
            qs: codes.map(|c| c as i8),
        }
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        join_f16_block(self.d, &self.qs.map(|c| c as u8))
    }

    /// The scale as f32.
    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

impl BlockE4M3 {
    /// Stored size.
    pub const BYTES: usize = BLOCK_F16_SCALE_BYTES;

    /// Read a stored block.
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let (d, qs) = split_f16_block(b);
        BlockE4M3 { d, qs }
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        join_f16_block(self.d, &self.qs)
    }

    /// The scale as f32.
    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

impl BlockE5M2 {
    /// Stored size.
    pub const BYTES: usize = BLOCK_F16_SCALE_BYTES;

    /// Read a stored block.
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let (d, qs) = split_f16_block(b);
        BlockE5M2 { d, qs }
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        join_f16_block(self.d, &self.qs)
    }

    /// The scale as f32.
    pub fn scale(&self) -> f32 {
        f16::from_bits(self.d).to_f32()
    }
}

impl BlockMxFp8 {
    /// Stored size.
    pub const BYTES: usize = BLOCK_MXFP8_BYTES;

    /// Read a stored block.
    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Self {
        let [e, qs @ ..] = b;
        BlockMxFp8 { e: *e, qs: *qs }
    }

    /// The stored bytes.
    pub fn to_bytes(&self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        let [e, qs @ ..] = &mut b;
        *e = self.e;
        *qs = self.qs;
        b
    }

    /// The scale as f32 (NaN for the E8M0 NaN code).
    pub fn scale(&self) -> f32 {
        e8m0_to_f32(self.e)
    }
}

/// Largest magnitude of a block and where it is, or the index of the first non-finite
/// value.
fn amax(x: &[f32; QK]) -> Result<(f32, usize), QuantError> {
    let mut best = 0.0f32;
    let mut at = 0;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i });
        }
        let a = v.abs();
        if a > best {
            best = a;
            at = i;
        }
    }
    Ok((best, at))
}

/// C `roundf` (half away from zero) for |v| < 2^23, where truncation and the fractional
/// part are exact; the Q8_0 products are within ±128.
#[inline]
fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    if frac >= 0.5 {
        t.saturating_add(1)
    } else if frac <= -0.5 {
        t.saturating_sub(1)
    } else {
        t
    }
}

/// f16 RNE of a block scale; an overflow to infinity is reported at the block's largest
/// element.
#[inline]
fn f16_scale(d: f32, at: usize) -> Result<f16, QuantError> {
    let h = f16::from_f32(d);
    if h.is_infinite() {
        return Err(QuantError::Overflow { index: at });
    }
    Ok(h)
}

/// Quantize one block to Q8_0 exactly as ggml's reference quantizer does. Error indices
/// are within the block.
pub fn quantize_block_q8_0(x: &[f32; QK]) -> Result<BlockQ8_0, QuantError> {
    let (amax, at) = amax(x)?;
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let dh = f16_scale(d, at)?;
    // Below amax ~ 3.7e-37, 1/d overflows and ggml's codes are undefined behaviour (a cast
    // of inf/NaN to int8); the f16 scale is 0 there, so zeros are the faithful codes.
    if !id.is_finite() {
        return Ok(BlockQ8_0 {
            d: dh.to_bits(),
            qs: [0; QK],
        });
    }
    // The clamp never binds for finite input (|x·id| <= 127 up to an ulp); it is there
    // so that -128, which breaks sign-trick int8 kernels, cannot appear whatever happens.
    let qs = x.map(|v| round_half_away(v * id).clamp(-127, 127) as i8);
    Ok(BlockQ8_0 {
        d: dh.to_bits(),
        qs,
    })
}

/// Decode one Q8_0 block.
pub fn dequantize_block_q8_0(b: &BlockQ8_0, out: &mut [f32; QK]) {
    let d = b.scale();
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = d * q as f32;
    }
}

/// Shared FP8 block quantizer: f16 scale `amax/elem_max`, codes from the stored scale.
fn quantize_fp8_block(
    x: &[f32; QK],
    elem_max: f32,
    enc: fn(f32) -> u8,
) -> Result<(u16, [u8; QK]), QuantError> {
    let (amax, at) = amax(x)?;
    let d = amax / elem_max;
    let mut dh = f16_scale(d, at)?;
    if dh.to_f32() < d && dh < f16::MIN_POSITIVE {
        // Positive f16 bit patterns are ordered, so +1 is the next value up.
        dh = f16::from_bits(dh.to_bits() + 1);
    }
    let ds = dh.to_f32();
    if ds == 0.0 {
        return Ok((dh.to_bits(), [0; QK]));
    }
    Ok((dh.to_bits(), x.map(|v| enc(v / ds))))
}

/// Quantize one block to E4M3 with an f16 scale (see the module notes).
pub fn quantize_block_e4m3(x: &[f32; QK]) -> Result<BlockE4M3, QuantError> {
    let (d, qs) = quantize_fp8_block(x, E4M3_MAX, f32_to_e4m3_sat)?;
    Ok(BlockE4M3 { d, qs })
}

/// Decode one E4M3 block.
pub fn dequantize_block_e4m3(b: &BlockE4M3, out: &mut [f32; QK]) {
    let d = b.scale();
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = d * E4M3_TO_F32[q as usize];
    }
}

/// Quantize one block to E5M2 with an f16 scale (see the module notes).
pub fn quantize_block_e5m2(x: &[f32; QK]) -> Result<BlockE5M2, QuantError> {
    let (d, qs) = quantize_fp8_block(x, E5M2_MAX, f32_to_e5m2_sat)?;
    Ok(BlockE5M2 { d, qs })
}

/// Decode one E5M2 block.
pub fn dequantize_block_e5m2(b: &BlockE5M2, out: &mut [f32; QK]) {
    let d = b.scale();
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = d * E5M2_TO_F32[q as usize];
    }
}

/// Quantize one block to MXFP8 (E4M3 elements, RCEIL E8M0 scale).
///
/// The E8M0 scale reaches every f32 magnitude, but an element within half an E4M3 step
/// of 2^128 (|x| above about 3.3e38) rounds up to a value that decodes as infinity; that
/// is reported as [`QuantError::Overflow`] at the element.
pub fn quantize_block_mxfp8(x: &[f32; QK]) -> Result<BlockMxFp8, QuantError> {
    let (amax, _) = amax(x)?;
    let e = e8m0_rceil(amax, E4M3_MAX);
    // Scaling by a power of two is exact (a result small enough to lose bits in the f32
    // subnormal range rounds to an E4M3 zero either way), so the only rounding is the
    // E4M3 one.
    let k = 127 - e as i32;
    let qs = x.map(|v| f32_to_e4m3_sat(mul_pow2(v, k)));
    // Up to e = 246 every finite code times the scale is below f32::MAX (448·2^119 =
    // 1.75·2^127); from 247 on, an element rounded up to 256 reaches 2^128. Realistic
    // blocks never get here.
    if e >= 247 {
        let s = e8m0_to_f32(e);
        if let Some(i) = qs
            .iter()
            .position(|&q| (s * E4M3_TO_F32[q as usize]).is_infinite())
        {
            return Err(QuantError::Overflow { index: i });
        }
    }
    Ok(BlockMxFp8 { e, qs })
}

/// Decode one MXFP8 block. Exact: every E4M3 value times a power of two in the E8M0
/// range is an f32 (without flush-to-zero). A NaN scale makes the whole block NaN.
pub fn dequantize_block_mxfp8(b: &BlockMxFp8, out: &mut [f32; QK]) {
    let s = b.scale();
    for (o, &q) in out.iter_mut().zip(b.qs.iter()) {
        *o = s * E4M3_TO_F32[q as usize];
    }
}

/// Bytes a row of `n` elements of `dtype` takes, after the dtype and block checks.
fn row_bytes(dtype: DType, n: usize) -> Result<usize, QuantError> {
    if matches!(dtype, DType::U8 | DType::U32 | DType::I32) {
        return Err(QuantError::UnsupportedType(dtype as u32));
    }
    let be = dtype.block_elems();
    if !n.is_multiple_of(be) {
        return Err(QuantError::NotBlockMultiple { len: n });
    }
    (n / be)
        .checked_mul(dtype.block_bytes())
        .ok_or(QuantError::NotBlockMultiple { len: n })
}

fn check_len(expected: usize, got: usize) -> Result<(), QuantError> {
    if expected != got {
        return Err(QuantError::LengthMismatch { expected, got });
    }
    Ok(())
}

/// Run a block quantizer over a row, offsetting element indices in errors.
fn quantize_blocks<const B: usize>(
    x: &[f32],
    out: &mut [u8],
    f: impl Fn(&[f32; QK]) -> Result<[u8; B], QuantError>,
) -> Result<(), QuantError> {
    let (xs, _) = x.as_chunks::<QK>();
    let (os, _) = out.as_chunks_mut::<B>();
    for (i, (xb, ob)) in xs.iter().zip(os.iter_mut()).enumerate() {
        *ob = f(xb).map_err(|e| offset_error(e, i * QK))?;
    }
    Ok(())
}

fn offset_error(e: QuantError, base: usize) -> QuantError {
    match e {
        QuantError::NonFinite { index } => QuantError::NonFinite {
            index: index + base,
        },
        QuantError::Overflow { index } => QuantError::Overflow {
            index: index + base,
        },
        other => other,
    }
}

fn dequantize_blocks<const B: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; QK]),
) {
    let (bs, _) = bytes.as_chunks::<B>();
    let (os, _) = out.as_chunks_mut::<QK>();
    for (b, o) in bs.iter().zip(os.iter_mut()) {
        f(b, o);
    }
}

/// Encode an f32 row into the stored bytes of `dtype`.
///
/// `out.len()` must be exactly the row's payload size (`DType::payload_bytes` of `[len]`),
/// and for the block types `x.len()` a multiple of 32. Errors:
/// [`QuantError::UnsupportedType`] for U8/U32/I32, [`QuantError::NotBlockMultiple`],
/// [`QuantError::LengthMismatch`] (these before anything is written);
/// [`QuantError::NonFinite`] for a NaN/inf element and [`QuantError::Overflow`] for a
/// finite value that f16/bf16 cannot hold or a block whose f16 scale would overflow, with
/// the element's index in `x`; then `out` holds the blocks (elements) before the offending
/// one and is otherwise unchanged.
pub fn quantize_row(dtype: DType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    let need = row_bytes(dtype, x.len())?;
    check_len(need, out.len())?;
    match dtype {
        DType::F32 => {
            let (os, _) = out.as_chunks_mut::<4>();
            for (i, (&v, o)) in x.iter().zip(os.iter_mut()).enumerate() {
                if !v.is_finite() {
                    return Err(QuantError::NonFinite { index: i });
                }
                *o = v.to_le_bytes();
            }
            Ok(())
        }
        DType::F16 => quantize_halves(x, out, |v| {
            let h = f16::from_f32(v);
            (h.to_bits(), h.is_infinite())
        }),
        DType::BF16 => quantize_halves(x, out, |v| {
            let h = bf16::from_f32(v);
            (h.to_bits(), h.is_infinite())
        }),
        DType::Q8_0 => quantize_blocks(x, out, |b| Ok(quantize_block_q8_0(b)?.to_bytes())),
        DType::E4M3 => quantize_blocks(x, out, |b| Ok(quantize_block_e4m3(b)?.to_bytes())),
        DType::E5M2 => quantize_blocks(x, out, |b| Ok(quantize_block_e5m2(b)?.to_bytes())),
        DType::MxFp8 => quantize_blocks(x, out, |b| Ok(quantize_block_mxfp8(b)?.to_bytes())),
        DType::U8 | DType::U32 | DType::I32 => Err(QuantError::UnsupportedType(dtype as u32)),
    }
}

fn quantize_halves(
    x: &[f32],
    out: &mut [u8],
    conv: impl Fn(f32) -> (u16, bool),
) -> Result<(), QuantError> {
    let (os, _) = out.as_chunks_mut::<2>();
    for (i, (&v, o)) in x.iter().zip(os.iter_mut()).enumerate() {
        if !v.is_finite() {
            return Err(QuantError::NonFinite { index: i });
        }
        let (bits, overflow) = conv(v);
        if overflow {
            return Err(QuantError::Overflow { index: i });
        }
        *o = bits.to_le_bytes();
    }
    Ok(())
}

/// Decode the stored bytes of `dtype` into an f32 row.
///
/// `bytes.len()` must be exactly the payload size of `out.len()` elements, and for the
/// block types `out.len()` a multiple of 32 ([`QuantError::NotBlockMultiple`],
/// [`QuantError::LengthMismatch`]); U8/U32/I32 are [`QuantError::UnsupportedType`].
/// Decoding itself cannot fail: NaN/inf codes or scales decode to NaN/inf.
pub fn dequantize_row(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    let need = row_bytes(dtype, out.len())?;
    check_len(need, bytes.len())?;
    match dtype {
        DType::F32 => {
            let (bs, _) = bytes.as_chunks::<4>();
            for (o, b) in out.iter_mut().zip(bs.iter()) {
                *o = f32::from_le_bytes(*b);
            }
        }
        DType::F16 => {
            let (bs, _) = bytes.as_chunks::<2>();
            for (o, b) in out.iter_mut().zip(bs.iter()) {
                *o = f16::from_le_bytes(*b).to_f32();
            }
        }
        DType::BF16 => {
            let (bs, _) = bytes.as_chunks::<2>();
            for (o, b) in out.iter_mut().zip(bs.iter()) {
                *o = bf16::from_le_bytes(*b).to_f32();
            }
        }
        DType::Q8_0 => dequantize_blocks(bytes, out, |b, o| {
            dequantize_block_q8_0(&BlockQ8_0::from_bytes(b), o)
        }),
        DType::E4M3 => dequantize_blocks(bytes, out, |b, o| {
            dequantize_block_e4m3(&BlockE4M3::from_bytes(b), o)
        }),
        DType::E5M2 => dequantize_blocks(bytes, out, |b, o| {
            dequantize_block_e5m2(&BlockE5M2::from_bytes(b), o)
        }),
        DType::MxFp8 => dequantize_blocks(bytes, out, |b, o| {
            dequantize_block_mxfp8(&BlockMxFp8::from_bytes(b), o)
        }),
        DType::U8 | DType::U32 | DType::I32 => {
            return Err(QuantError::UnsupportedType(dtype as u32));
        }
    }
    Ok(())
}

/// Scalar reference dot product of two Q8_0 rows of equal length (bytes): per block an
/// exact int32 sum of code products, then `acc += (d_w * d_a) * isum` in f32, block order.
/// This is the arithmetic of ggml's generic `vec_dot_q8_0_q8_0`; optimized kernels are
/// tested against it.
///
/// [`QuantError::LengthMismatch`] if the rows differ in length (`expected` = `w.len()`),
/// [`QuantError::NotBlockMultiple`] (with the byte length) if they are not whole blocks.
/// Codes of -128, which the quantizers never write, are still summed exactly.
pub fn dot_q8_0(w: &[u8], a: &[u8]) -> Result<f32, QuantError> {
    check_len(w.len(), a.len())?;
    if !w.len().is_multiple_of(BLOCK_F16_SCALE_BYTES) {
        return Err(QuantError::NotBlockMultiple { len: w.len() });
    }
    let (wb, _) = w.as_chunks::<BLOCK_F16_SCALE_BYTES>();
    let (ab, _) = a.as_chunks::<BLOCK_F16_SCALE_BYTES>();
    let mut acc = 0.0f32;
    for (wb, ab) in wb.iter().zip(ab.iter()) {
        let (dw, qw) = split_f16_block(wb);
        let (da, qa) = split_f16_block(ab);
        // |isum| <= 32·128·128 = 2^19, so i32 cannot overflow.
        let isum: i32 = qw
            .iter()
            .zip(qa.iter())
            .map(|(&x, &y)| (x as i8 as i32) * (y as i8 as i32))
            .sum();
        let d = f16::from_bits(dw).to_f32() * f16::from_bits(da).to_f32();
        acc += d * isum as f32;
    }
    Ok(acc)
}
