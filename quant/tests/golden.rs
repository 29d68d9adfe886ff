//! Golden tests: glimpse-quant against independent references (ml_dtypes for FP8, gguf-py
//! for the ggml formats), through the fixtures written by
//! tests/scripts/gen_quant_fixtures.py.

use std::path::PathBuf;

use glimpse_quant::blocks::{BLOCK_F16_SCALE_BYTES, BLOCK_MXFP8_BYTES};
use glimpse_quant::fp8::{
    E4M3_TO_F32, E5M2_TO_F32, e4m3_to_f32, e5m2_to_f32, f32_to_e4m3, f32_to_e5m2,
};
use glimpse_quant::gguf::{self, GgmlType};
use glimpse_quant::{DType, dequantize_row, quantize_row};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/quant")
}

fn bytes(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn u32s(name: &str) -> Vec<u32> {
    let b = bytes(name);
    assert_eq!(b.len() % 4, 0, "{name}");
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32s(name: &str) -> Vec<f32> {
    u32s(name).into_iter().map(f32::from_bits).collect()
}

fn manifest() -> Value {
    serde_json::from_slice(&bytes("manifest.json")).expect("manifest.json")
}

/// Bitwise equality, except that any NaN matches any NaN (payloads are not part of either
/// format's contract).
fn same(a: f32, b: f32) -> bool {
    if a.is_nan() || b.is_nan() {
        a.is_nan() && b.is_nan()
    } else {
        a.to_bits() == b.to_bits()
    }
}

fn check_decode(name: &str, table: &[f32; 256], single: fn(u8) -> f32, nan_codes: usize) {
    let want = u32s(&format!("{name}_decode.u32"));
    assert_eq!(want.len(), 256);
    for (c, &w) in want.iter().enumerate() {
        let w = f32::from_bits(w);
        assert!(
            same(table[c], w),
            "{name} code {c:#04x}: ours {} ml_dtypes {w}",
            table[c]
        );
        assert!(same(single(c as u8), w), "{name} code {c:#04x} via fn");
    }
    // Guards against a fixture that silently lost its NaNs (the count is the format's).
    assert_eq!(
        want.iter().filter(|&&w| f32::from_bits(w).is_nan()).count(),
        nan_codes
    );
}

#[test]
fn fp8_decode_matches_ml_dtypes_on_all_codes() {
    check_decode("e4m3", &E4M3_TO_F32, e4m3_to_f32, 2);
    check_decode("e5m2", &E5M2_TO_F32, e5m2_to_f32, 6);
}

fn check_encode(name: &str, enc: fn(f32) -> Result<u8, glimpse_quant::QuantError>) {
    let xs = f32s(&format!("{name}_encode_in.f32"));
    let want = bytes(&format!("{name}_encode_out.u8"));
    assert_eq!(xs.len(), want.len());
    assert!(xs.len() > 5000, "{name}: fixture too small ({})", xs.len());
    let bad: Vec<_> = xs
        .iter()
        .zip(&want)
        .filter_map(|(&x, &w)| {
            let got = enc(x).expect("finite probe");
            (got != w).then_some((x, got, w))
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{name}: {} of {} probes differ, first (x, ours, ml_dtypes): {:?}",
        bad.len(),
        xs.len(),
        &bad[..bad.len().min(8)]
    );
}

#[test]
fn fp8_encode_matches_ml_dtypes_rne() {
    check_encode("e4m3", f32_to_e4m3);
    check_encode("e5m2", f32_to_e5m2);
}

fn check_blocks(dtype: DType, fixture: &str, block_bytes: usize) {
    let x = f32s("blocks_in.f32");
    let want = bytes(fixture);
    assert_eq!(want.len(), x.len() / 32 * block_bytes);
    let mut out = vec![0u8; want.len()];
    quantize_row(dtype, &x, &mut out).expect("quantize");
    for (i, (o, w)) in out
        .chunks_exact(block_bytes)
        .zip(want.chunks_exact(block_bytes))
        .enumerate()
    {
        assert_eq!(
            o,
            w,
            "{dtype:?} block {i} differs from {fixture}; input {:?}",
            &x[i * 32..i * 32 + 32]
        );
    }
}

#[test]
fn q8_0_bytes_identical_to_gguf_reference_quantizer() {
    check_blocks(DType::Q8_0, "q8_0_out.u8", BLOCK_F16_SCALE_BYTES);
}

#[test]
fn fp8_blocks_match_numpy_ml_dtypes_reference() {
    check_blocks(DType::E4M3, "e4m3_blocks_out.u8", BLOCK_F16_SCALE_BYTES);
    check_blocks(DType::E5M2, "e5m2_blocks_out.u8", BLOCK_F16_SCALE_BYTES);
    check_blocks(DType::MxFp8, "mxfp8_blocks_out.u8", BLOCK_MXFP8_BYTES);
}

/// Exact equality is the right test: each output is one or two f32 roundings of exact
/// integer-times-f16 products, evaluated in the same order as gguf-py (and ggml's scalar
/// code), and neither side fuses multiply-adds. Any difference is a layout or order bug.
#[test]
fn gguf_dequantize_matches_gguf_py() {
    let m = manifest();
    let cases = m["gguf_cases"].as_array().expect("gguf_cases");
    assert_eq!(cases.len(), 7);
    for case in cases {
        let id = case["id"].as_u64().expect("id") as u32;
        let ty = GgmlType::from_u32(id).expect("known type");
        assert_eq!(format!("{ty:?}"), case["type"].as_str().expect("type"));
        let raw = bytes(case["bytes"].as_str().expect("bytes"));
        let want = f32s(case["f32"].as_str().expect("f32"));
        let mut out = vec![0.0f32; want.len()];
        gguf::dequantize(ty, &raw, &mut out).unwrap_or_else(|e| panic!("{ty:?}: {e}"));
        for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
            assert!(same(o, w), "{ty:?} element {i}: ours {o} gguf-py {w}");
        }
        // The image formats that share GGUF's byte layout must decode the same bytes the
        // same way.
        let dtype = match ty {
            GgmlType::Q8_0 => Some(DType::Q8_0),
            GgmlType::F16 => Some(DType::F16),
            GgmlType::BF16 => Some(DType::BF16),
            _ => None,
        };
        if let Some(dtype) = dtype {
            let mut out = vec![0.0f32; want.len()];
            dequantize_row(dtype, &raw, &mut out).expect("dequantize_row");
            for (i, (&o, &w)) in out.iter().zip(&want).enumerate() {
                assert!(same(o, w), "{dtype:?} element {i}: ours {o} gguf-py {w}");
            }
        }
    }
}

#[test]
fn ggml_type_ids_and_geometry_match_gguf_py() {
    let m = manifest();
    let types = m["ggml_types"].as_object().expect("ggml_types");
    assert_eq!(types.len(), GgmlType::ALL.len());
    for (name, v) in types {
        let v = v.as_array().expect("triple");
        let id = v[0].as_u64().expect("id") as u32;
        let ty = GgmlType::from_u32(id).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&format!("{ty:?}"), name);
        assert_eq!(
            ty.block_elems() as u64,
            v[1].as_u64().expect("elems"),
            "{name}"
        );
        // gguf-py still lists Q8_1 with two f32 fields (40 bytes); ggml's block_q8_1 has
        // been `{ half2 ds; int8 qs[32] }` = 36 bytes since 2023.
        let bytes = if ty == GgmlType::Q8_1 {
            assert_eq!(
                v[2].as_u64(),
                Some(40),
                "gguf-py fixed Q8_1: drop this special case"
            );
            36
        } else {
            v[2].as_u64().expect("bytes")
        };
        assert_eq!(ty.block_bytes() as u64, bytes, "{name}");
    }
}
