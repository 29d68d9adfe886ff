//! The quantization step of `glimpse convert`: which format each tensor is stored in,
//! encoding on all cores, and the error each encoding introduced (SQNR, max abs error).
//!
//! Work is split into fixed-size row chunks whose partial sums are combined in chunk
//! order, so the bytes and the reported numbers do not depend on the number of threads.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Result, anyhow};
use glimpse_quant::DType;
use glimpse_quant::blocks::{dequantize_row, quantize_row};

use super::model::{CanonTensor, Role};

/// Elements per work chunk: large enough that scheduling costs nothing, small enough that
/// two cores share even a single big tensor evenly.
const CHUNK_ELEMS: usize = 1 << 16;

/// Map `f` over `items` on all available cores; results come back in item order.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .ok()
                .flatten()
                .unwrap_or_else(|| unreachable!("every slot is filled once the scope joins"))
        })
        .collect()
}

/// The storage format of a tensor, and why it differs from the recipe's when it does.
pub fn storage_dtype(
    role: Role,
    shape: &[u32],
    weights: DType,
    kept: DType,
) -> (DType, Option<String>) {
    match role {
        Role::Keep => (kept, None),
        Role::Quantize => {
            let inner = shape.last().copied().unwrap_or(0) as usize;
            if inner.is_multiple_of(weights.block_elems()) {
                (weights, None)
            } else {
                (
                    kept,
                    Some(format!(
                        "inner dim {inner} is not a multiple of {}: kept {}",
                        weights.block_elems(),
                        kept.name()
                    )),
                )
            }
        }
    }
}

/// Error statistics of one encoded tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErrorStats {
    /// Σx², in f64.
    pub signal: f64,
    /// Σ(x − dequant(quant(x)))², in f64.
    pub noise: f64,
    /// Largest |x − dequant(quant(x))|.
    pub max_abs: f64,
}

impl ErrorStats {
    /// 10·log10(signal / noise) in dB; +inf when the encoding is exact.
    pub fn sqnr_db(&self) -> f64 {
        if self.noise == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.signal / self.noise).log10()
        }
    }

    fn add(&mut self, o: &ErrorStats) {
        self.signal += o.signal;
        self.noise += o.noise;
        self.max_abs = self.max_abs.max(o.max_abs);
    }
}

/// An encoded tensor.
#[derive(Debug)]
pub struct Encoded {
    /// Payload in the storage format.
    pub bytes: Vec<u8>,
    /// Round-trip error; `None` for f32 (stored exactly).
    pub stats: Option<ErrorStats>,
}

/// Encode `t` as `dtype`, measuring the round-trip error.
pub fn encode(t: &CanonTensor, dtype: DType) -> Result<Encoded> {
    let inner = t.shape.last().copied().unwrap_or(0) as usize;
    let row_bytes = dtype.payload_bytes(&[inner as u32]).ok_or_else(|| {
        anyhow!(
            "tensor `{}`: shape {:?} cannot be stored as {}",
            t.name,
            t.shape,
            dtype.name()
        )
    })? as usize;
    let elems: usize = t.shape.iter().map(|&d| d as usize).product();
    if inner == 0 || elems != t.data.len() {
        return Err(anyhow!(
            "tensor `{}`: shape {:?} does not match its {} values",
            t.name,
            t.shape,
            t.data.len()
        ));
    }
    let rows = elems / inner;
    let rows_per_chunk = (CHUNK_ELEMS / inner).max(1);
    let chunks: Vec<(usize, usize)> = (0..rows)
        .step_by(rows_per_chunk)
        .map(|r| (r, (r + rows_per_chunk).min(rows)))
        .collect();
    let measure = dtype != DType::F32;
    let results = par_map(&chunks, |&(r0, r1)| -> Result<(Vec<u8>, ErrorStats)> {
        let x = &t.data[r0 * inner..r1 * inner];
        let mut out = vec![0u8; (r1 - r0) * row_bytes];
        let mut back = vec![0f32; inner];
        let mut st = ErrorStats {
            signal: 0.0,
            noise: 0.0,
            max_abs: 0.0,
        };
        for (row, (xr, or)) in x
            .chunks_exact(inner)
            .zip(out.chunks_exact_mut(row_bytes))
            .enumerate()
        {
            quantize_row(dtype, xr, or).map_err(|e| {
                anyhow!(
                    "tensor `{}` row {}: cannot encode as {}: {e}",
                    t.name,
                    r0 + row,
                    dtype.name()
                )
            })?;
            if measure {
                dequantize_row(dtype, or, &mut back).map_err(|e| {
                    anyhow!("tensor `{}`: cannot decode {}: {e}", t.name, dtype.name())
                })?;
                for (&a, &b) in xr.iter().zip(&back) {
                    let (a, b) = (f64::from(a), f64::from(b));
                    let e = a - b;
                    st.signal += a * a;
                    st.noise += e * e;
                    st.max_abs = st.max_abs.max(e.abs());
                }
            }
        }
        Ok((out, st))
    });
    let mut bytes = Vec::with_capacity(rows * row_bytes);
    let mut total = ErrorStats {
        signal: 0.0,
        noise: 0.0,
        max_abs: 0.0,
    };
    for r in results {
        let (b, st) = r?;
        bytes.extend_from_slice(&b);
        total.add(&st);
    }
    Ok(Encoded {
        bytes,
        stats: measure.then_some(total),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(shape: &[u32], data: Vec<f32>) -> CanonTensor {
        CanonTensor {
            name: "t".into(),
            shape: shape.to_vec(),
            data,
            role: Role::Quantize,
        }
    }

    #[test]
    fn par_map_keeps_order() {
        let items: Vec<u32> = (0..1000).collect();
        let out = par_map(&items, |&x| x * 2);
        assert_eq!(out, (0..1000).map(|x| x * 2).collect::<Vec<_>>());
    }

    #[test]
    fn dtype_choice() {
        assert_eq!(
            storage_dtype(Role::Quantize, &[4, 64], DType::Q8_0, DType::F32).0,
            DType::Q8_0
        );
        let (d, note) = storage_dtype(Role::Quantize, &[4, 48], DType::Q8_0, DType::F16);
        assert_eq!(d, DType::F16);
        assert!(note.unwrap().contains("48"));
        assert_eq!(
            storage_dtype(Role::Keep, &[64], DType::Q8_0, DType::F16).0,
            DType::F16
        );
        // f16 has no block constraint.
        assert_eq!(
            storage_dtype(Role::Quantize, &[4, 48], DType::F16, DType::F32).0,
            DType::F16
        );
    }

    #[test]
    fn sqnr_matches_a_direct_computation() {
        // Spans several chunks (CHUNK_ELEMS / 64 rows each) so chunk combination is covered.
        let rows = 3 * CHUNK_ELEMS / 64 + 5;
        let data: Vec<f32> = (0..rows * 64)
            .map(|i| ((i * 7919) % 1000) as f32 / 137.0 - 3.0)
            .collect();
        let t = tensor(&[rows as u32, 64], data.clone());
        let enc = encode(&t, DType::Q8_0).unwrap();
        let mut back = vec![0f32; data.len()];
        dequantize_row(DType::Q8_0, &enc.bytes, &mut back).unwrap();
        let (mut s, mut n, mut m) = (0f64, 0f64, 0f64);
        for (&a, &b) in data.iter().zip(&back) {
            let e = f64::from(a) - f64::from(b);
            s += f64::from(a).powi(2);
            n += e * e;
            m = m.max(e.abs());
        }
        let st = enc.stats.unwrap();
        // Same sums in a different association order: equal to f64 rounding.
        assert!((st.sqnr_db() - 10.0 * (s / n).log10()).abs() < 1e-9);
        assert_eq!(st.max_abs, m);
    }

    #[test]
    fn exact_encodings() {
        let t = tensor(&[2, 32], (0..64).map(|i| i as f32).collect());
        assert!(encode(&t, DType::F32).unwrap().stats.is_none());
        // Small integers are exact in f16.
        assert_eq!(
            encode(&t, DType::F16).unwrap().stats.unwrap().sqnr_db(),
            f64::INFINITY
        );
    }

    #[test]
    fn non_finite_is_an_error_naming_the_tensor() {
        let mut d = vec![0.5f32; 64];
        d[40] = f32::NAN;
        let err = encode(&tensor(&[2, 32], d), DType::Q8_0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`t` row 1"), "{err}");
    }
}
