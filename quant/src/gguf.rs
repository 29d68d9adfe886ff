//! GGUF tensor types (ggml's `enum ggml_type` numbering and block geometry) and decoders
//! from GGUF tensor bytes to f32 for the types Glimpse imports: F32, F16, BF16, Q4_0,
//! Q4_1, Q8_0, Q4_K and Q6_K.
//!
//! Layouts and formulas are ggml's `ggml-common.h` / `dequantize_row_*` (quant-formats.md
//! §1). The products are evaluated in the same order as ggml's scalar code (e.g. Q4_K
//! `(d*sc)*q - dmin*m`, Q6_K `(d*sc)*q`), each rounded to f32 with no fused multiply-add,
//! so results match ggml and gguf-py bit for bit.

use half::{bf16, f16};

use crate::error::QuantError;

/// Elements per super-block of the K-quants.
pub const QK_K: usize = 256;

/// A ggml tensor type, with its GGUF numeric id.
///
/// Ids 4, 5 (removed Q4_2/Q4_3), 31..33 and 36..38 (removed repacked types) are not
/// valid in GGUF files and have no variant.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

impl GgmlType {
    /// Every type, in id order.
    pub const ALL: [GgmlType; 34] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
        GgmlType::NVFP4,
        GgmlType::Q1_0,
    ];

    /// The type with GGUF id `id`, or `UnsupportedType(id)`.
    pub fn from_u32(id: u32) -> Result<Self, QuantError> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| *t as u32 == id)
            .ok_or(QuantError::UnsupportedType(id))
    }

    /// `(elements, bytes)` per block.
    const fn geometry(self) -> (usize, usize) {
        use GgmlType::*;
        match self {
            F32 | I32 => (1, 4),
            F16 | BF16 | I16 => (1, 2),
            I8 => (1, 1),
            I64 | F64 => (1, 8),
            Q4_0 => (32, 18),
            Q4_1 => (32, 20),
            Q5_0 => (32, 22),
            Q5_1 => (32, 24),
            Q8_0 => (32, 34),
            // ggml's block_q8_1 is `{ half2 ds; int8 qs[32] }`; gguf-py still lists the
            // older 40-byte float layout, but Q8_1 never appears in files.
            Q8_1 => (32, 36),
            Q2_K => (QK_K, 84),
            Q3_K => (QK_K, 110),
            Q4_K => (QK_K, 144),
            Q5_K => (QK_K, 176),
            Q6_K => (QK_K, 210),
            Q8_K => (QK_K, 292),
            IQ2_XXS => (QK_K, 66),
            IQ2_XS => (QK_K, 74),
            IQ3_XXS => (QK_K, 98),
            IQ1_S => (QK_K, 50),
            IQ4_NL => (32, 18),
            IQ3_S => (QK_K, 110),
            IQ2_S => (QK_K, 82),
            IQ4_XS => (QK_K, 136),
            IQ1_M => (QK_K, 56),
            TQ1_0 => (QK_K, 54),
            TQ2_0 => (QK_K, 66),
            MXFP4 => (32, 17),
            NVFP4 => (64, 36),
            Q1_0 => (128, 18),
        }
    }

    /// Elements per block (1 for plain element types).
    pub const fn block_elems(self) -> usize {
        self.geometry().0
    }

    /// Bytes per block (per element for plain element types).
    pub const fn block_bytes(self) -> usize {
        self.geometry().1
    }

    /// Bytes of a row of `n` elements, or `None` if `n` is not a whole number of blocks
    /// or the size overflows.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let (be, bb) = self.geometry();
        if !n.is_multiple_of(be) {
            return None;
        }
        (n / be).checked_mul(bb)
    }

    /// Whether [`dequantize`] decodes this type.
    pub const fn can_dequantize(self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q8_0
                | GgmlType::Q4_K
                | GgmlType::Q6_K
        )
    }
}

/// `N` bytes of `b` from `at`, zero-filled past the end. Used with in-range constant
/// offsets into fixed-size blocks, where it is a plain copy that cannot panic.
#[inline]
fn sub<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut o = [0u8; N];
    for (d, s) in o.iter_mut().zip(b.iter().skip(at)) {
        *d = *s;
    }
    o
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes(sub::<2>(b, at)).to_f32()
}

fn dequant_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = sub::<16>(b, 2);
    let (lo, hi) = y.split_at_mut(16);
    for ((&q, l), h) in qs.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *l = ((q & 0x0F) as i32 - 8) as f32 * d;
        *h = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn dequant_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qs = sub::<16>(b, 4);
    let (lo, hi) = y.split_at_mut(16);
    for ((&q, l), h) in qs.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
        *l = (q & 0x0F) as f32 * d + m;
        *h = (q >> 4) as f32 * d + m;
    }
}

fn dequant_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = sub::<32>(b, 2);
    for (o, &q) in y.iter_mut().zip(qs.iter()) {
        *o = (q as i8) as f32 * d;
    }
}

/// Sub-block `j` (0..8) scale and min of a Q4_K/Q5_K 12-byte packed scale array.
#[inline]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    let at = |i: usize| q.get(i).copied().unwrap_or(0);
    if j < 4 {
        (at(j) & 63, at(j + 4) & 63)
    } else {
        (
            (at(j + 4) & 0x0F) | ((at(j - 4) >> 6) << 4),
            (at(j + 4) >> 4) | ((at(j) >> 6) << 4),
        )
    }
}

fn dequant_q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let dmin = f16_at(b, 2);
    let scales = sub::<12>(b, 4);
    let qs = sub::<128>(b, 16);
    // Four chunks of 64 outputs from 32 bytes each: low nibbles use sub-block 2c, high
    // nibbles sub-block 2c+1.
    let (qchunks, _) = qs.as_chunks::<32>();
    let (ychunks, _) = y.as_chunks_mut::<64>();
    for (c, (q, yc)) in qchunks.iter().zip(ychunks.iter_mut()).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * c, &scales);
        let (sc2, m2) = scale_min_k4(2 * c + 1, &scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let (lo, hi) = yc.split_at_mut(32);
        for ((&qb, l), h) in q.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
            *l = d1 * (qb & 0x0F) as f32 - m1;
            *h = d2 * (qb >> 4) as f32 - m2;
        }
    }
}

fn dequant_q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let ql_all = sub::<128>(b, 0);
    let qh_all = sub::<64>(b, 128);
    let sc_all = sub::<16>(b, 192);
    let d = f16_at(b, 208);
    let (ql_h, _) = ql_all.as_chunks::<64>();
    let (qh_h, _) = qh_all.as_chunks::<32>();
    let (sc_h, _) = sc_all.as_chunks::<8>();
    let (y_h, _) = y.as_chunks_mut::<128>();
    // Two halves of 128 outputs; in each, output l + 32k takes 4 low bits from ql and
    // 2 high bits from qh, with scale sc[l/16 + 2k].
    for (((ql, qh), sc), yh) in ql_h.iter().zip(qh_h).zip(sc_h).zip(y_h.iter_mut()) {
        let (ql_lo, ql_hi) = ql.split_at(32);
        let (y01, y23) = yh.split_at_mut(64);
        let (y0, y1) = y01.split_at_mut(32);
        let (y2, y3) = y23.split_at_mut(32);
        let scale = |k: usize, l: usize| d * sc.get(l / 16 + 2 * k).map_or(0, |&s| s as i8) as f32;
        let outs = y0
            .iter_mut()
            .zip(y1.iter_mut())
            .zip(y2.iter_mut())
            .zip(y3.iter_mut());
        for (l, ((((o0, o1), o2), o3), ((&a, &c), &h))) in outs
            .zip(ql_lo.iter().zip(ql_hi.iter()).zip(qh.iter()))
            .enumerate()
        {
            let q1 = ((a & 0x0F) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((c & 0x0F) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((a >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((c >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            *o0 = scale(0, l) * q1 as f32;
            *o1 = scale(1, l) * q2 as f32;
            *o2 = scale(2, l) * q3 as f32;
            *o3 = scale(3, l) * q4 as f32;
        }
    }
}

fn blocks<const B: usize, const E: usize>(
    bytes: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; E]),
) {
    let (bs, _) = bytes.as_chunks::<B>();
    let (os, _) = out.as_chunks_mut::<E>();
    for (b, o) in bs.iter().zip(os.iter_mut()) {
        f(b, o);
    }
}

/// Decode GGUF tensor bytes of type `ty` into `out`.
///
/// Checks, in order: the type is one [`GgmlType::can_dequantize`] accepts (else
/// `UnsupportedType(id)`); `out.len()` is a whole number of blocks (else
/// `NotBlockMultiple`); `bytes.len()` is the size of `out.len()` elements (else
/// `LengthMismatch`). Nothing is written unless all pass. NaN/inf scales or elements
/// decode to NaN/inf as in ggml.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    if !ty.can_dequantize() {
        return Err(QuantError::UnsupportedType(ty as u32));
    }
    let need = ty
        .row_bytes(out.len())
        .ok_or(QuantError::NotBlockMultiple { len: out.len() })?;
    if bytes.len() != need {
        return Err(QuantError::LengthMismatch {
            expected: need,
            got: bytes.len(),
        });
    }
    match ty {
        GgmlType::F32 => blocks(bytes, out, |b: &[u8; 4], o: &mut [f32; 1]| {
            o[0] = f32::from_le_bytes(*b)
        }),
        GgmlType::F16 => blocks(bytes, out, |b: &[u8; 2], o: &mut [f32; 1]| {
            o[0] = f16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::BF16 => blocks(bytes, out, |b: &[u8; 2], o: &mut [f32; 1]| {
            o[0] = bf16::from_le_bytes(*b).to_f32()
        }),
        GgmlType::Q4_0 => blocks(bytes, out, dequant_q4_0),
        GgmlType::Q4_1 => blocks(bytes, out, dequant_q4_1),
        GgmlType::Q8_0 => blocks(bytes, out, dequant_q8_0),
        GgmlType::Q4_K => blocks(bytes, out, dequant_q4_k),
        GgmlType::Q6_K => blocks(bytes, out, dequant_q6_k),
        _ => return Err(QuantError::UnsupportedType(ty as u32)),
    }
    Ok(())
}
