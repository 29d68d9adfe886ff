//! The 8-bit float element formats: OCP E4M3FN and E5M2 (decode tables and saturating
//! round-to-nearest-even encoders) and the E8M0 scale of OCP MX blocks.
//!
//! Encoding works on the f32 bit pattern with integer arithmetic only, so it needs no
//! libm, behaves the same on every target and is unaffected by a flush-to-zero FPU mode.
//! The encoders saturate: anything beyond the largest finite code becomes that code, so
//! E4M3 never yields its NaN codes (0x7F, 0xFF) and E5M2 never yields an infinity or NaN.

use crate::error::QuantError;

/// Largest finite E4M3 value (code 0x7E).
pub const E4M3_MAX: f32 = 448.0;
/// Largest finite E5M2 value (code 0x7B).
pub const E5M2_MAX: f32 = 57344.0;
/// Largest finite positive E4M3 code.
pub const E4M3_MAX_CODE: u8 = 0x7E;
/// Largest finite positive E5M2 code.
pub const E5M2_MAX_CODE: u8 = 0x7B;
/// The E8M0 NaN.
pub const E8M0_NAN: u8 = 0xFF;

/// Shape of a small binary float: mantissa bits, exponent bias, and whether the all-ones
/// exponent is reserved for inf/NaN (IEEE-style, E5M2) or only the all-ones code is NaN
/// (E4M3FN).
#[derive(Clone, Copy)]
struct Fp8Shape {
    mbits: u32,
    bias: i32,
    ieee_specials: bool,
    max_code: u32,
}

const E4M3: Fp8Shape = Fp8Shape {
    mbits: 3,
    bias: 7,
    ieee_specials: false,
    max_code: E4M3_MAX_CODE as u32,
};

const E5M2: Fp8Shape = Fp8Shape {
    mbits: 2,
    bias: 15,
    ieee_specials: true,
    max_code: E5M2_MAX_CODE as u32,
};

/// f32 bit pattern of one FP8 code, built from fields so the tables need no float
/// arithmetic and are exact by construction.
const fn decode_bits(code: u8, s: Fp8Shape) -> u32 {
    let code = code as u32;
    let ebits = 7 - s.mbits;
    let sign = (code >> 7) << 31;
    let e = (code >> s.mbits) & ((1 << ebits) - 1);
    let m = code & ((1 << s.mbits) - 1);
    let e_all = (1 << ebits) - 1;
    if s.ieee_specials && e == e_all {
        return if m == 0 {
            sign | 0x7F80_0000
        } else {
            sign | 0x7FC0_0000
        };
    }
    if !s.ieee_specials && e == e_all && m == (1 << s.mbits) - 1 {
        return sign | 0x7FC0_0000;
    }
    if e == 0 {
        if m == 0 {
            return sign;
        }
        // Subnormal m * 2^(1 - bias - mbits): normalise so the top set bit of m becomes
        // the implicit f32 bit.
        let top = 31 - m.leading_zeros();
        let exp = 1 - s.bias - s.mbits as i32 + top as i32;
        let frac = (m - (1 << top)) << (23 - top);
        return sign | (((exp + 127) as u32) << 23) | frac;
    }
    let exp = e as i32 - s.bias;
    sign | (((exp + 127) as u32) << 23) | (m << (23 - s.mbits))
}

const fn build_table(s: Fp8Shape) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f32::from_bits(decode_bits(i as u8, s));
        i += 1;
    }
    t
}

/// Every E4M3 code decoded (0x7F / 0xFF are NaN).
pub static E4M3_TO_F32: [f32; 256] = build_table(E4M3);
/// Every E5M2 code decoded (0x7C / 0xFC are ±inf, 0x7D..0x7F and 0xFD..0xFF NaN).
pub static E5M2_TO_F32: [f32; 256] = build_table(E5M2);

/// Decode an OCP E4M3FN code.
#[inline]
pub fn e4m3_to_f32(code: u8) -> f32 {
    E4M3_TO_F32[code as usize]
}

/// Decode an OCP E5M2 code.
#[inline]
pub fn e5m2_to_f32(code: u8) -> f32 {
    E5M2_TO_F32[code as usize]
}

/// Round `sig >> shift` to nearest, ties to even. `shift` is in 1..=24.
#[inline]
fn shift_rne(sig: u32, shift: u32) -> u32 {
    let q = sig >> shift;
    let rem = sig & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    if rem > half || (rem == half && q & 1 == 1) {
        q + 1
    } else {
        q
    }
}

/// Saturating RNE encode of a non-NaN f32 (infinities saturate).
#[inline]
fn encode(x: f32, s: Fp8Shape) -> u8 {
    let bits = x.to_bits();
    let sign = (bits >> 24) & 0x80;
    let abs = bits & 0x7FFF_FFFF;
    (sign | encode_magnitude(abs, s)) as u8
}

fn encode_magnitude(abs: u32, s: Fp8Shape) -> u32 {
    if abs >= 0x7F80_0000 {
        return s.max_code;
    }
    let e32 = (abs >> 23) as i32;
    // f32 zeros and subnormals are below 2^-126, far under half the smallest FP8
    // subnormal (2^-10 or 2^-17), so they round to zero.
    if e32 == 0 {
        return 0;
    }
    let e = e32 - 127;
    let emin = 1 - s.bias;
    let emax = (s.max_code >> s.mbits) as i32 - s.bias;
    // Beyond the top binade everything saturates; checking first keeps the shifts below
    // in range.
    if e > emax {
        return s.max_code;
    }
    let sig = (abs & 0x007F_FFFF) | 0x0080_0000;
    let code = if e < emin {
        // Count quanta of the subnormal step 2^(emin - mbits). A carry into 2^mbits
        // quanta is exactly the smallest normal code.
        let shift = (emin - e) as u32 + (23 - s.mbits);
        if shift > 24 {
            return 0;
        }
        shift_rne(sig, shift)
    } else {
        // q keeps the implicit bit, q in [2^mbits, 2^(mbits+1)]; adding it to the
        // exponent field minus one lets a mantissa carry bump the exponent.
        let q = shift_rne(sig, 23 - s.mbits);
        (((e - emin) as u32) << s.mbits) + q
    };
    if code > s.max_code { s.max_code } else { code }
}

/// Saturating encode for values already known not to be NaN (used by the block
/// quantizers after their finiteness check).
#[inline]
pub(crate) fn f32_to_e4m3_sat(x: f32) -> u8 {
    encode(x, E4M3)
}

/// See [`f32_to_e4m3_sat`].
#[inline]
pub(crate) fn f32_to_e5m2_sat(x: f32) -> u8 {
    encode(x, E5M2)
}

/// Encode to OCP E4M3FN: round to nearest, ties to even; magnitudes beyond 448 saturate
/// to ±448 (0x7E / 0xFE). The sign of zero is kept. NaN and ±inf are
/// `Err(NonFinite { index: 0 })`.
pub fn f32_to_e4m3(x: f32) -> Result<u8, QuantError> {
    if !x.is_finite() {
        return Err(QuantError::NonFinite { index: 0 });
    }
    Ok(encode(x, E4M3))
}

/// Encode to OCP E5M2: round to nearest, ties to even; magnitudes beyond 57344 saturate
/// to ±57344 (0x7B / 0xFB). The sign of zero is kept. NaN and ±inf are
/// `Err(NonFinite { index: 0 })`.
pub fn f32_to_e5m2(x: f32) -> Result<u8, QuantError> {
    if !x.is_finite() {
        return Err(QuantError::NonFinite { index: 0 });
    }
    Ok(encode(x, E5M2))
}

/// Decode an E8M0 scale: 2^(e-127); 0xFF is NaN and 0 is 2^-127 (an f32 subnormal, so
/// a flush-to-zero FPU sees it as 0; only the all-zero blocks that [`e8m0_rceil`] gives
/// this scale rely on it).
#[inline]
pub fn e8m0_to_f32(e: u8) -> f32 {
    match e {
        E8M0_NAN => f32::NAN,
        0 => f32::from_bits(0x0040_0000),
        _ => f32::from_bits((e as u32) << 23),
    }
}

/// Exponent and 24-bit significand (top bit at 23) of a positive finite non-zero f32,
/// normalising subnormals.
fn split(abs: u32) -> (i32, u32) {
    let e32 = (abs >> 23) as i32;
    let m = abs & 0x007F_FFFF;
    if e32 == 0 {
        let lz = m.leading_zeros() - 8;
        (-126 - lz as i32, m << lz)
    } else {
        (e32 - 127, m | 0x0080_0000)
    }
}

/// Choose the E8M0 scale of an MX block by NVIDIA's RCEIL rule:
/// `127 + ceil(log2(amax / elem_max))`, clamped to `[0, 254]` (never the NaN code).
///
/// The smallest power of two `X` with `amax / X <= elem_max`, so the block's largest
/// element never clips (the OCP spec's floor rule clips up to about half a binade). The
/// ceiling is computed exactly from the exponents and significands, not from a rounded
/// f32 quotient, so a ratio a hair above a power of two gets the next scale up.
///
/// `amax` is taken by magnitude. A zero or NaN `amax` gives 0 (the smallest scale: an
/// all-zero block decodes to zeros under any scale). An infinite `amax`, or an
/// `elem_max` that is not positive, gives 254; an infinite `elem_max` gives 0.
pub fn e8m0_rceil(amax: f32, elem_max: f32) -> u8 {
    let a = amax.to_bits() & 0x7FFF_FFFF;
    if a == 0 || a > 0x7F80_0000 {
        return 0;
    }
    if a == 0x7F80_0000 || elem_max.is_nan() || elem_max <= 0.0 {
        return 254;
    }
    if elem_max.is_infinite() {
        return 0;
    }
    let (ea, sa) = split(a);
    let (ee, se) = split(elem_max.to_bits());
    // amax/elem_max = (sa/se) * 2^(ea-ee) with sa/se in (1/2, 2): the ceiling of its log2
    // is ea-ee, plus one when the significand ratio exceeds 1.
    let k = ea - ee + i32::from(sa > se);
    (127 + k).clamp(0, 254) as u8
}

/// `x * 2^k` for `k` in about [-127, 127], with every factor a normal f32 so the result
/// is exact whenever it is representable.
#[inline]
pub(crate) fn mul_pow2(x: f32, k: i32) -> f32 {
    if k < -126 {
        x * f32::from_bits(1 << 23) * f32::from_bits(((k + 126 + 127).max(1) as u32) << 23)
    } else {
        x * f32::from_bits(((k.min(127) + 127) as u32) << 23)
    }
}
