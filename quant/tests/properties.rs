//! Property tests of glimpse-quant's formats: error bounds derived from each format's
//! precision, codes the encoders must never emit, saturation, and the error paths. Inputs
//! come from a seeded inline PRNG, so failures reproduce.

use glimpse_quant::QuantError;
use glimpse_quant::blocks::{
    BlockE4M3, BlockMxFp8, BlockQ8_0, dequantize_block_mxfp8, dot_q8_0, quantize_block_e4m3,
    quantize_block_mxfp8, quantize_block_q8_0,
};
use glimpse_quant::fp8::{
    E4M3_TO_F32, E5M2_TO_F32, e4m3_to_f32, e5m2_to_f32, e8m0_rceil, e8m0_to_f32, f32_to_e4m3,
    f32_to_e5m2,
};
use glimpse_quant::gguf::{self, GgmlType};
use glimpse_quant::{DType, dequantize_row, quantize_row};
use half::f16;

/// SplitMix64: tiny, seedable, good enough to spread test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Random sign times 2^U(lo, hi).
    fn log_uniform(&mut self, lo: f64, hi: f64) -> f32 {
        let s = if self.next() & 1 == 0 { 1.0 } else { -1.0 };
        (s * self.range(lo, hi).exp2()) as f32
    }
    /// Roughly Gaussian (Irwin-Hall of 4), heavy enough tails for block tests.
    fn gauss(&mut self) -> f32 {
        ((0..4).map(|_| self.unit()).sum::<f64>() - 2.0) as f32 * 1.7
    }
    fn finite_f32(&mut self) -> f32 {
        loop {
            let v = f32::from_bits(self.next() as u32);
            if v.is_finite() {
                return v;
            }
        }
    }
}

/// A block of Gaussian values at scale 2^U(lo, hi), sometimes with one outlier.
fn random_block(rng: &mut Rng, lo: f64, hi: f64) -> [f32; 32] {
    let s = rng.range(lo, hi).exp2() as f32;
    let mut b = [0.0f32; 32];
    for v in &mut b {
        *v = rng.gauss() * s;
    }
    if rng.next().is_multiple_of(4) {
        b[(rng.next() % 32) as usize] = s * 40.0 * if rng.next() & 1 == 0 { 1.0 } else { -1.0 };
    }
    b
}

// ---------------------------------------------------------------------------------------
// FP8 elements
// ---------------------------------------------------------------------------------------

#[test]
fn fp8_encode_of_every_finite_code_is_that_code() {
    for c in 0..=255u8 {
        let v = e4m3_to_f32(c);
        if !v.is_nan() {
            assert_eq!(f32_to_e4m3(v), Ok(c), "e4m3 {c:#04x} = {v}");
        }
        let v = e5m2_to_f32(c);
        if v.is_finite() {
            assert_eq!(f32_to_e5m2(v), Ok(c), "e5m2 {c:#04x} = {v}");
        }
    }
}

/// The nearest finite code, by brute force over the decode table; ties go to the even
/// code (mantissa LSB 0), as RNE demands.
fn nearest(table: &[f32; 256], x: f32) -> u8 {
    // Beyond the largest finite value the answer is the saturated maximum; checking it
    // here also keeps the f64 error comparisons below exact.
    let max = table
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f32, f32::max);
    if x.abs() >= max {
        return table
            .iter()
            .position(|&v| v == max.copysign(x))
            .expect("max code") as u8;
    }
    let mut best = 0u8;
    let mut best_err = f64::INFINITY;
    for c in 0..=255u8 {
        let v = table[c as usize];
        if !v.is_finite() || (v.to_bits() >> 31) != (x.to_bits() >> 31) {
            continue;
        }
        let err = (v as f64 - x as f64).abs();
        if err < best_err || (err == best_err && c & 1 == 0) {
            best = c;
            best_err = err;
        }
    }
    best
}

#[test]
fn fp8_encode_is_nearest_even_and_saturates() {
    let mut rng = Rng(1);
    for i in 0..40_000 {
        let x = match i % 4 {
            0 => rng.log_uniform(-20.0, 10.0),
            1 => rng.log_uniform(-20.0, 17.0),
            2 => rng.finite_f32(),
            _ => rng.range(-500.0, 500.0) as f32,
        };
        // Saturation makes "nearest finite code" the right answer for any magnitude.
        let c = f32_to_e4m3(x).expect("finite");
        assert_eq!(c, nearest(&E4M3_TO_F32, x), "e4m3 of {x:e}");
        let c = f32_to_e5m2(x).expect("finite");
        assert_eq!(c, nearest(&E5M2_TO_F32, x), "e5m2 of {x:e}");
    }
}

#[test]
fn fp8_encoders_never_emit_nan_or_inf_codes() {
    let mut rng = Rng(2);
    for _ in 0..200_000 {
        let x = rng.finite_f32();
        let c = f32_to_e4m3(x).expect("finite");
        assert!(c & 0x7F != 0x7F, "e4m3 NaN code for {x:e}");
        let c = f32_to_e5m2(x).expect("finite");
        assert!(c & 0x7F <= 0x7B, "e5m2 inf/NaN code {c:#04x} for {x:e}");
    }
    // Saturation limits are the formats' largest finite values (OCP OFP8 tables).
    for x in [448.0, 449.0, 463.9, 464.0, 480.0, 1e6, f32::MAX] {
        assert_eq!(f32_to_e4m3(x), Ok(0x7E), "{x}");
        assert_eq!(f32_to_e4m3(-x), Ok(0xFE), "{x}");
    }
    for x in [57344.0, 61439.0, 61440.0, 65536.0, 1e10, f32::MAX] {
        assert_eq!(f32_to_e5m2(x), Ok(0x7B), "{x}");
        assert_eq!(f32_to_e5m2(-x), Ok(0xFB), "{x}");
    }
}

#[test]
fn fp8_encoders_reject_non_finite() {
    for x in [f32::NAN, -f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        assert_eq!(f32_to_e4m3(x), Err(QuantError::NonFinite { index: 0 }));
        assert_eq!(f32_to_e5m2(x), Err(QuantError::NonFinite { index: 0 }));
    }
}

/// Round-trip bounds from the formats' precision: RNE is off by at most half a step. A
/// normal E4M3 step is 2^(e-3), so the error is at most 2^-4·|x| (relative); subnormal
/// steps are 2^-9, so at most 2^-10 absolute. E5M2: 2^-3 relative, 2^-17 absolute.
#[test]
fn fp8_round_trip_error_bounds() {
    let mut rng = Rng(3);
    for _ in 0..50_000 {
        let x = rng.log_uniform(-12.0, 448f64.log2());
        let y = e4m3_to_f32(f32_to_e4m3(x).expect("finite"));
        let err = (x - y).abs();
        if x.abs() >= 2f32.powi(-6) {
            assert!(err <= x.abs() / 16.0, "e4m3 {x:e} -> {y:e}");
        } else {
            assert!(err <= 2f32.powi(-10), "e4m3 {x:e} -> {y:e}");
        }
        let x = rng.log_uniform(-19.0, 57344f64.log2());
        let y = e5m2_to_f32(f32_to_e5m2(x).expect("finite"));
        let err = (x - y).abs();
        if x.abs() >= 2f32.powi(-14) {
            assert!(err <= x.abs() / 8.0, "e5m2 {x:e} -> {y:e}");
        } else {
            assert!(err <= 2f32.powi(-17), "e5m2 {x:e} -> {y:e}");
        }
    }
}

#[test]
fn e8m0_decode_follows_ocp_mx() {
    assert_eq!(e8m0_to_f32(127), 1.0);
    assert_eq!(e8m0_to_f32(128), 2.0);
    assert_eq!(e8m0_to_f32(254), 2f32.powi(127));
    assert_eq!(e8m0_to_f32(1), 2f32.powi(-126));
    assert_eq!(
        e8m0_to_f32(0).to_bits(),
        0x0040_0000,
        "2^-127 is an f32 subnormal"
    );
    assert!(e8m0_to_f32(0xFF).is_nan());
}

#[test]
fn e8m0_rceil_is_the_smallest_unclipped_scale() {
    let mut rng = Rng(4);
    for i in 0..20_000 {
        let amax = match i % 3 {
            0 => rng.log_uniform(-20.0, 30.0).abs(),
            1 => rng.finite_f32().abs(),
            // Just around powers of two times 448, where a rounded quotient goes wrong.
            _ => {
                let p = 448.0 * 2f32.powi((rng.next() % 40) as i32 - 20);
                let k = (rng.next() % 5) as i32 - 2;
                f32::from_bits((p.to_bits() as i32 + k) as u32)
            }
        };
        if amax == 0.0 {
            continue;
        }
        let e = e8m0_rceil(amax, 448.0);
        assert!(e <= 254);
        // Exact in f64: amax and 448 are f32, the scales powers of two.
        let scale = |e: i32| 2f64.powi(e - 127);
        let a = amax as f64;
        assert!(
            a / scale(e as i32) <= 448.0 || e == 254,
            "amax {amax:e}: e {e} clips"
        );
        assert!(
            a / scale(e as i32 - 1) > 448.0 || e == 0,
            "amax {amax:e}: e {e} is not minimal"
        );
    }
    assert_eq!(e8m0_rceil(448.0, 448.0), 127);
    assert_eq!(e8m0_rceil(f32::from_bits(448f32.to_bits() + 1), 448.0), 128);
    assert_eq!(e8m0_rceil(224.0, 448.0), 126);
    assert_eq!(e8m0_rceil(0.0, 448.0), 0);
    assert_eq!(e8m0_rceil(f32::INFINITY, 448.0), 254);
    assert_eq!(e8m0_rceil(f32::NAN, 448.0), 0);
}

// ---------------------------------------------------------------------------------------
// Blocks
// ---------------------------------------------------------------------------------------

/// f16 RNE error bound of a scale d: half an f16 step, i.e. 2^-11 relative when normal,
/// 2^-25 absolute in the subnormal range.
fn f16_slack(d: f32) -> f32 {
    (d.abs() * 2f32.powi(-11)).max(2f32.powi(-25))
}

/// Q8_0: with d = amax/127 and codes round(x/d), |x - d·q| <= d/2. The stored scale
/// d' = f16(d) differs by at most f16_slack(d), which moves each value by up to
/// 127·f16_slack(d); the f32 products x·id and d'·q add a few ulps (2^-21·|x| covers them
/// with margin).
#[test]
fn q8_0_round_trip_error_bound_and_code_range() {
    let mut rng = Rng(5);
    for i in 0..20_000 {
        let mut x = random_block(&mut rng, -14.0, 16.0);
        if i % 7 == 0 {
            // Adversarial: every value at ±amax, where a wrong reciprocal could give ±128.
            let a = x[0].abs().max(1e-3);
            for v in &mut x {
                *v = if rng.next() & 1 == 0 { a } else { -a };
            }
        }
        let b = quantize_block_q8_0(&x).expect("finite");
        assert!(b.qs.iter().all(|&q| q != i8::MIN), "code -128 for {x:?}");
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        assert!(
            (b.scale() - d).abs() <= f16_slack(d),
            "scale {} for d {d}",
            b.scale()
        );
        let mut y = [0.0f32; 32];
        glimpse_quant::blocks::dequantize_block_q8_0(&b, &mut y);
        for (&xv, &yv) in x.iter().zip(&y) {
            let bound = d / 2.0 + 127.0 * f16_slack(d) + xv.abs() * 2f32.powi(-21);
            assert!((xv - yv).abs() <= bound, "x {xv:e} -> {yv:e}, d {d:e}");
        }
    }
}

/// E4M3 blocks: x = d'·v with v = x/d' (d' the stored scale, so no scale error enters),
/// |v| <= 448·d/d' <= 448·(1 + 2^-11); RNE of v is within 2^-4·|v| (normal) or 2^-10
/// (subnormal), and the slight overshoot past 448 saturates with an error below that same
/// half step. So |x - d'·e4m3(v)| <= 2^-4·|x| + 2^-10·d' plus f32 rounding of the
/// division and product (2^-21·|x|).
#[test]
fn e4m3_block_round_trip_error_bound() {
    let mut rng = Rng(6);
    for _ in 0..20_000 {
        let x = random_block(&mut rng, -12.0, 19.0);
        let b = quantize_block_e4m3(&x).expect("finite");
        assert!(b.qs.iter().all(|&q| q & 0x7F != 0x7F), "NaN code for {x:?}");
        let ds = b.scale();
        let mut y = vec![0.0f32; 32];
        dequantize_row(DType::E4M3, &b.to_bytes(), &mut y).expect("decode");
        for (&xv, &yv) in x.iter().zip(&y) {
            let bound = xv.abs() / 16.0 + ds * 2f32.powi(-10) + xv.abs() * 2f32.powi(-21);
            assert!((xv - yv).abs() <= bound, "x {xv:e} -> {yv:e}, d {ds:e}");
        }
    }
}

/// E5M2 blocks, as E4M3 with 2^-3 relative and 2^-17 subnormal steps.
#[test]
fn e5m2_block_round_trip_error_bound() {
    let mut rng = Rng(7);
    for _ in 0..20_000 {
        let x: Vec<f32> = random_block(&mut rng, -12.0, 26.0).to_vec();
        let mut bytes = [0u8; 34];
        quantize_row(DType::E5M2, &x, &mut bytes).expect("finite");
        assert!(bytes[2..].iter().all(|&q| q & 0x7F <= 0x7B), "inf/NaN code");
        let ds = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        let mut y = vec![0.0f32; 32];
        dequantize_row(DType::E5M2, &bytes, &mut y).expect("decode");
        for (&xv, &yv) in x.iter().zip(&y) {
            let bound = xv.abs() / 8.0 + ds * 2f32.powi(-17) + xv.abs() * 2f32.powi(-21);
            assert!((xv - yv).abs() <= bound, "x {xv:e} -> {yv:e}, d {ds:e}");
        }
    }
}

/// MXFP8: the scale X = 2^(e-127) is exact and RCEIL keeps amax/X in (224, 448], so no
/// element saturates and the only error is E4M3 rounding of x/X: at most 2^-4·|x| or
/// 2^-10·X. Decoding is exact, so there is no further slack.
#[test]
fn mxfp8_block_round_trip_error_bound() {
    let mut rng = Rng(8);
    for _ in 0..20_000 {
        let x = random_block(&mut rng, -40.0, 40.0);
        let b = quantize_block_mxfp8(&x).expect("finite");
        assert!(b.e != 0xFF);
        assert!(b.qs.iter().all(|&q| q & 0x7F != 0x7F), "NaN code");
        let s = b.scale() as f64;
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        assert!(
            amax / s <= 448.0 && amax / s > 224.0,
            "scale {s:e} for amax {amax:e}"
        );
        let mut y = [0.0f32; 32];
        dequantize_block_mxfp8(&b, &mut y);
        for (&xv, &yv) in x.iter().zip(&y) {
            let err = (xv as f64 - yv as f64).abs();
            let bound = (xv.abs() as f64 / 16.0).max(s * 2f64.powi(-10));
            assert!(err <= bound, "x {xv:e} -> {yv:e}, X {s:e}");
        }
    }
}

#[test]
fn zero_and_tiny_blocks_decode_to_zero() {
    let zeros = [0.0f32; 32];
    // Below ~3.7e-37 ggml's 1/d overflows; down to f32 subnormals every format must still
    // give a finite, all-zero block rather than garbage.
    for s in [0.0f32, 1e-38, 1e-40, f32::from_bits(1)] {
        let x = [s; 32];
        for dtype in [DType::Q8_0, DType::E4M3, DType::E5M2, DType::MxFp8] {
            let n = dtype.block_bytes();
            let mut b = vec![0u8; n];
            quantize_row(dtype, &x, &mut b).expect("finite");
            let mut y = [1.0f32; 32];
            dequantize_row(dtype, &b, &mut y).expect("decode");
            if dtype == DType::MxFp8 && s != 0.0 {
                // MXFP8's scale reaches 2^-127, so subnormal inputs survive approximately.
                for &v in &y {
                    assert!(
                        (v - s).abs() <= s / 16.0 + f32::from_bits(1),
                        "{s:e} -> {v:e}"
                    );
                }
            } else {
                assert_eq!(y, zeros, "{dtype:?} of {s:e}");
            }
        }
    }
    let b = quantize_block_q8_0(&zeros).expect("zeros");
    assert_eq!(b, BlockQ8_0 { d: 0, qs: [0; 32] });
}

#[test]
fn block_structs_match_their_bytes() {
    let mut rng = Rng(9);
    let x = random_block(&mut rng, 0.0, 4.0);
    let q = quantize_block_q8_0(&x).expect("finite");
    let bytes = q.to_bytes();
    assert_eq!(
        bytes[..2],
        q.d.to_le_bytes(),
        "scale is little-endian and first"
    );
    assert_eq!(BlockQ8_0::from_bytes(&bytes), q);
    let e = quantize_block_e4m3(&x).expect("finite");
    assert_eq!(BlockE4M3::from_bytes(&e.to_bytes()), e);
    let m = quantize_block_mxfp8(&x).expect("finite");
    let mb = m.to_bytes();
    assert_eq!(mb[0], m.e, "E8M0 scale comes first");
    assert_eq!(BlockMxFp8::from_bytes(&mb), m);
    assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
    assert_eq!(std::mem::size_of::<BlockMxFp8>(), 33);
}

// ---------------------------------------------------------------------------------------
// Rows: plain types, lengths and errors
// ---------------------------------------------------------------------------------------

const NUMERIC: [DType; 7] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::E4M3,
    DType::E5M2,
    DType::MxFp8,
];

fn payload(dtype: DType, n: usize) -> usize {
    dtype.payload_bytes(&[n as u32]).expect("valid shape") as usize
}

#[test]
fn plain_types_round_trip_exactly_when_representable() {
    let mut rng = Rng(10);
    let x: Vec<f32> = (0..256).map(|_| rng.log_uniform(-30.0, 30.0)).collect();
    let mut b = vec![0u8; payload(DType::F32, x.len())];
    quantize_row(DType::F32, &x, &mut b).expect("f32");
    let mut y = vec![0.0; x.len()];
    dequantize_row(DType::F32, &b, &mut y).expect("f32");
    assert_eq!(x, y);
    // Values with 11 significant bits in f16's normal range survive f16 exactly, 8 bits
    // in bf16.
    let h: Vec<f32> = (0..256)
        .map(|_| {
            (rng.range(-2048.0, 2048.0).round() as f32) * 2f32.powi((rng.next() % 15) as i32 - 10)
        })
        .filter(|v| v.abs() >= 2f32.powi(-14) || *v == 0.0)
        .collect();
    let mut b = vec![0u8; payload(DType::F16, h.len())];
    quantize_row(DType::F16, &h, &mut b).expect("f16");
    let mut y = vec![0.0; h.len()];
    dequantize_row(DType::F16, &b, &mut y).expect("f16");
    assert_eq!(h, y);
    let g: Vec<f32> = (0..256)
        .map(|_| {
            let m = rng.range(-256.0, 256.0).round() as f32;
            m * 2f32.powi((rng.next() % 200) as i32 - 100)
        })
        .collect();
    let mut b = vec![0u8; payload(DType::BF16, g.len())];
    quantize_row(DType::BF16, &g, &mut b).expect("bf16");
    let mut y = vec![0.0; g.len()];
    dequantize_row(DType::BF16, &b, &mut y).expect("bf16");
    assert_eq!(g, y);
}

#[test]
fn non_finite_input_is_reported_at_its_index() {
    let mut rng = Rng(11);
    let base: Vec<f32> = (0..96).map(|_| rng.gauss()).collect();
    for dtype in NUMERIC {
        for (at, bad) in [
            (0usize, f32::NAN),
            (37, f32::INFINITY),
            (95, f32::NEG_INFINITY),
        ] {
            let mut x = base.clone();
            x[at] = bad;
            let n = payload(dtype, x.len());
            let mut out = vec![0xAAu8; n];
            assert_eq!(
                quantize_row(dtype, &x, &mut out),
                Err(QuantError::NonFinite { index: at }),
                "{dtype:?} {bad} at {at}"
            );
            // Documented: units before the offending block (element) are written, the
            // rest of the output is untouched.
            let unit = dtype.block_elems();
            let written = at / unit * dtype.block_bytes();
            let mut want = vec![0u8; written];
            quantize_row(dtype, &base[..at / unit * unit], &mut want).expect("prefix");
            assert_eq!(&out[..written], &want[..], "{dtype:?} prefix");
            assert!(out[written..].iter().all(|&b| b == 0xAA), "{dtype:?} tail");
        }
    }
}

#[test]
fn overflowing_values_and_scales_are_errors() {
    let mut x = vec![1.0f32; 64];
    x[40] = 70_000.0; // beyond f16's 65504
    let mut out = vec![0u8; 128];
    assert_eq!(
        quantize_row(DType::F16, &x, &mut out),
        Err(QuantError::Overflow { index: 40 })
    );
    x[40] = f32::MAX; // rounds past bf16's largest finite
    assert_eq!(
        quantize_row(DType::BF16, &x, &mut out),
        Err(QuantError::Overflow { index: 40 })
    );
    // Block scales overflow f16 once amax/elem_max > 65504 (amax/127, /448, /57344).
    for (dtype, amax) in [
        (DType::Q8_0, 1e7f32),
        (DType::E4M3, 3e7),
        (DType::E5M2, 4e9),
    ] {
        x[40] = -amax;
        let mut out = vec![0u8; payload(dtype, 64)];
        assert_eq!(
            quantize_row(dtype, &x, &mut out),
            Err(QuantError::Overflow { index: 40 }),
            "{dtype:?}"
        );
    }
    // MXFP8's E8M0 scale covers all of f32, up to values that round to 2^128.
    let mut out = vec![0u8; payload(DType::MxFp8, 64)];
    x[40] = 3e38;
    quantize_row(DType::MxFp8, &x, &mut out).expect("in range");
    let mut y = vec![0.0f32; 64];
    dequantize_row(DType::MxFp8, &out, &mut y).expect("decode");
    assert!((y[40] - 3e38).abs() <= 3e38 / 16.0);
    x[40] = -f32::MAX; // rounds to -256·2^120 = -2^128
    assert_eq!(
        quantize_row(DType::MxFp8, &x, &mut out),
        Err(QuantError::Overflow { index: 40 })
    );
}

#[test]
fn lengths_and_types_are_checked_before_writing() {
    let x = vec![0.5f32; 64];
    for dtype in NUMERIC {
        let n = payload(dtype, 64);
        for bad in [n - 1, n + 1, 0] {
            let mut out = vec![0xAAu8; bad];
            assert_eq!(
                quantize_row(dtype, &x, &mut out),
                Err(QuantError::LengthMismatch {
                    expected: n,
                    got: bad
                }),
                "{dtype:?}"
            );
            assert!(out.iter().all(|&b| b == 0xAA));
            let mut y = vec![7.0f32; 64];
            assert_eq!(
                dequantize_row(dtype, &out, &mut y),
                Err(QuantError::LengthMismatch {
                    expected: n,
                    got: bad
                }),
                "{dtype:?}"
            );
            assert!(y.iter().all(|&v| v == 7.0));
        }
        if dtype.is_block() {
            let mut out = vec![0u8; n];
            assert_eq!(
                quantize_row(dtype, &x[..48], &mut out),
                Err(QuantError::NotBlockMultiple { len: 48 })
            );
            let mut y = vec![0.0f32; 33];
            assert_eq!(
                dequantize_row(dtype, &out, &mut y),
                Err(QuantError::NotBlockMultiple { len: 33 })
            );
        }
    }
    for dtype in [DType::U8, DType::U32, DType::I32] {
        let mut out = vec![0u8; 256];
        assert_eq!(
            quantize_row(dtype, &x, &mut out),
            Err(QuantError::UnsupportedType(dtype as u32))
        );
        let mut y = vec![0.0f32; 64];
        assert_eq!(
            dequantize_row(dtype, &out, &mut y),
            Err(QuantError::UnsupportedType(dtype as u32))
        );
    }
}

#[test]
fn row_functions_work_on_unaligned_bytes() {
    let mut rng = Rng(12);
    let x: Vec<f32> = (0..96).map(|_| rng.gauss()).collect();
    for dtype in NUMERIC {
        let n = payload(dtype, x.len());
        let mut buf = vec![0u8; n + 1];
        quantize_row(dtype, &x, &mut buf[1..]).expect("quantize");
        let mut aligned = vec![0u8; n];
        quantize_row(dtype, &x, &mut aligned).expect("quantize");
        assert_eq!(&buf[1..], &aligned[..]);
        let (mut y1, mut y2) = (vec![0.0f32; 96], vec![0.0f32; 96]);
        dequantize_row(dtype, &buf[1..], &mut y1).expect("decode");
        dequantize_row(dtype, &aligned, &mut y2).expect("decode");
        assert_eq!(y1, y2);
    }
}

// ---------------------------------------------------------------------------------------
// Q8_0 dot product
// ---------------------------------------------------------------------------------------

fn q8_row(rng: &mut Rng, n: usize) -> (Vec<f32>, Vec<u8>) {
    let x: Vec<f32> = (0..n / 32)
        .flat_map(|_| random_block(rng, -4.0, 4.0))
        .collect();
    let mut b = vec![0u8; payload(DType::Q8_0, n)];
    quantize_row(DType::Q8_0, &x, &mut b).expect("quantize");
    (x, b)
}

/// Against the exact (f64) value of the same decoded operands. Each block term
/// (d_w·d_a)·isum is exact in f64; in f32 it takes two roundings and the running sum one
/// per block, so the error is at most about (nb + 2)·2^-24·Σ|terms| (standard recursive
/// summation bound).
#[test]
fn dot_q8_0_matches_exact_sum_of_decoded_blocks() {
    let mut rng = Rng(13);
    for n in [32usize, 64, 896, 4864] {
        let (_, w) = q8_row(&mut rng, n);
        let (_, a) = q8_row(&mut rng, n);
        let got = dot_q8_0(&w, &a).expect("dot");
        let (mut exact, mut mag) = (0.0f64, 0.0f64);
        for (wb, ab) in w.chunks_exact(34).zip(a.chunks_exact(34)) {
            let dw = f16::from_le_bytes([wb[0], wb[1]]).to_f64();
            let da = f16::from_le_bytes([ab[0], ab[1]]).to_f64();
            let isum: i64 = wb[2..]
                .iter()
                .zip(&ab[2..])
                .map(|(&p, &q)| (p as i8 as i64) * (q as i8 as i64))
                .sum();
            exact += dw * da * isum as f64;
            mag += (dw * da * isum as f64).abs();
        }
        let nb = (n / 32) as f64;
        let bound = (nb + 2.0) * 2f64.powi(-24) * mag;
        assert!(
            (got as f64 - exact).abs() <= bound,
            "n {n}: {got} vs {exact} (bound {bound:e})"
        );
    }
}

#[test]
fn dot_q8_0_handles_extreme_codes_and_bad_lengths() {
    // Hand-made blocks with d = 1.0 (f16 0x3C00) and every code -128: the quantizers never
    // write -128, but the reference must still sum it exactly: 32·(-128)² = 524288.
    let mut blk = [0x80u8; 34];
    blk[..2].copy_from_slice(&0x3C00u16.to_le_bytes());
    let row: Vec<u8> = blk.iter().chain(blk.iter()).copied().collect();
    assert_eq!(dot_q8_0(&row, &row), Ok(2.0 * 524_288.0));
    assert_eq!(
        dot_q8_0(&row, &row[..34]),
        Err(QuantError::LengthMismatch {
            expected: 68,
            got: 34
        })
    );
    assert_eq!(
        dot_q8_0(&row[..33], &row[..33]),
        Err(QuantError::NotBlockMultiple { len: 33 })
    );
    assert_eq!(dot_q8_0(&[], &[]), Ok(0.0));
}

// ---------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------

#[test]
fn gguf_types_round_trip_and_reject_unknown_ids() {
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_u32(ty as u32), Ok(ty));
        let (be, bb) = (ty.block_elems(), ty.block_bytes());
        assert_eq!(ty.row_bytes(3 * be), Some(3 * bb));
        if be > 1 {
            assert_eq!(ty.row_bytes(be + 1), None);
        }
        assert_eq!(
            ty.row_bytes(usize::MAX / be * be),
            (usize::MAX / be).checked_mul(bb)
        );
    }
    for id in [4u32, 5, 31, 32, 33, 36, 37, 38, 42, u32::MAX] {
        assert_eq!(GgmlType::from_u32(id), Err(QuantError::UnsupportedType(id)));
    }
}

#[test]
fn gguf_dequantize_checks_type_and_lengths() {
    let mut out = vec![0.0f32; 256];
    let bytes = vec![0u8; 1024];
    for ty in [
        GgmlType::Q5_0,
        GgmlType::Q2_K,
        GgmlType::IQ4_NL,
        GgmlType::MXFP4,
        GgmlType::I8,
    ] {
        assert_eq!(
            gguf::dequantize(ty, &bytes, &mut out),
            Err(QuantError::UnsupportedType(ty as u32))
        );
    }
    let mut short = vec![0.0f32; 255];
    assert_eq!(
        gguf::dequantize(GgmlType::Q4_K, &bytes[..144], &mut short),
        Err(QuantError::NotBlockMultiple { len: 255 })
    );
    assert_eq!(
        gguf::dequantize(GgmlType::Q4_K, &bytes[..143], &mut out),
        Err(QuantError::LengthMismatch {
            expected: 144,
            got: 143
        })
    );
    // Q4_0 nibble split (quant-formats.md §1): low nibbles are outputs 0..16, high nibbles
    // 16..32, both offset by 8. d = 0.5 (f16 0x3800); byte j = (j & 0xF) | (15 - j) << 4.
    let mut blk = [0u8; 18];
    blk[..2].copy_from_slice(&0x3800u16.to_le_bytes());
    for j in 0..16 {
        blk[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let mut y = [0.0f32; 32];
    gguf::dequantize(GgmlType::Q4_0, &blk, &mut y).expect("q4_0");
    for j in 0..16 {
        assert_eq!(y[j], 0.5 * (j as f32 - 8.0));
        assert_eq!(y[j + 16], 0.5 * (7.0 - j as f32));
    }
}
