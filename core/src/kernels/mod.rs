//! Compute kernels: linear layers over every stored weight format ([`mod@linear`]),
//! convolutions, attention, element-wise math and normalisation ([`math`]), the small
//! number conversions and parameter views they share, the CPU-feature dispatch
//! ([`cpu`]) and the splitting of work across an executor ([`par`]).
//!
//! Every kernel has a plain scalar version, written as slice loops over fixed-size chunks
//! so LLVM can vectorise it, that checks every length up front so the loops themselves
//! cannot fail. SIMD versions (one folder per architecture under `arch/`: x86_64
//! intrinsics, aarch64 `dotprod`, Cortex-M Helium) are chosen from the features in a
//! [`Ctx`] and give the same results to the bit. Each kernel has one public entry point,
//! taking a [`Ctx`].

mod arch;
pub mod attention;
pub mod conv;
pub mod cpu;
mod gemm;
pub mod linear;
pub mod math;
pub mod par;

use glimpse_quant::DType;

use crate::error::{Dims, Error, tensor_name};
use crate::image::TensorView;

pub use cpu::Cpu;
pub use linear::{Weights, linear, linear_scratch_bytes};

use glimpse_hal::Executor;

/// What a kernel runs on: the CPU features it may use and the executor it splits its work
/// across. Every kernel takes one, so there is one entry point per kernel; every choice
/// of features and executor gives the same bits.
pub struct Ctx<'e> {
    /// The features the kernels may use; a request is intersected with
    /// [`Cpu::active`], so asking for more than the CPU has is harmless.
    pub cpu: Cpu,
    /// Where the work runs.
    pub exec: &'e mut dyn Executor,
}

impl core::fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ctx")
            .field("cpu", &self.cpu)
            .field("parallelism", &self.exec.parallelism())
            .finish()
    }
}

impl<'e> Ctx<'e> {
    /// Every active feature ([`Cpu::active`]) on `exec`.
    pub fn new(exec: &'e mut dyn Executor) -> Self {
        Ctx {
            cpu: Cpu::active(),
            exec,
        }
    }

    /// The same executor with only the features of `cpu` (tests and benchmarks compare
    /// kernel families this way).
    #[must_use]
    pub fn with_cpu(self, cpu: Cpu) -> Self {
        Ctx { cpu, ..self }
    }

    /// A shorter-lived context on the same executor, for handing to a callee while this
    /// one stays usable.
    pub fn reborrow(&mut self) -> Ctx<'_> {
        Ctx {
            cpu: self.cpu,
            exec: &mut *self.exec,
        }
    }

    /// The features a kernel may use here: the requested ones the CPU is known to have.
    pub fn usable(&self) -> Cpu {
        self.cpu.usable()
    }
}

/// Run `f` with every active feature on the default executor
/// ([`par::with_default_executor`]: the one the port installed, or sequential): the
/// host's convenience for callers that do not hold an executor.
pub fn with_default_ctx<R>(f: impl FnOnce(&mut Ctx<'_>) -> R) -> R {
    par::with_default_executor(|exec| f(&mut Ctx::new(exec)))
}

/// IEEE binary16 bits to f32, exactly, without branches (so a loop over it vectorises).
///
/// Shifting the exponent and mantissa into f32 position and multiplying by 2^112 rebases
/// the exponent; the multiply also normalises f16 subnormals exactly. Inf/NaN (exponent
/// all ones) get the f32 all-ones exponent instead.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let rebased = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let bits = if em >= 0x7c00 {
        0x7f80_0000 | (em << 13)
    } else {
        rebased
    };
    f32::from_bits(bits | sign)
}

/// bfloat16 bits to f32 (exact: bf16 is the top half of an f32).
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// A parameter kept in an unquantized format (f32, f16 or bf16) read as a flat run of
/// values: a norm weight, a bias, a layer scale, a conv kernel.
#[derive(Clone, Copy, Debug)]
pub struct Vector<'a> {
    dtype: DType,
    data: &'a [u8],
}

/// Bytes per value of the formats a [`Vector`] holds.
fn elem_bytes(dtype: DType) -> Option<usize> {
    match dtype {
        DType::F32 => Some(4),
        DType::F16 | DType::BF16 => Some(2),
        _ => None,
    }
}

impl<'a> Vector<'a> {
    /// View a kept tensor of any shape as its flat run of values (a conv kernel).
    pub fn flat(v: &TensorView<'a>) -> Result<Self, Error> {
        Self::from_bytes(v.dtype, v.data).map_err(|_| Error::DType {
            tensor: tensor_name(v.name),
            dtype: v.dtype,
        })
    }

    /// View however many little-endian `dtype` values (F32, F16 or BF16) `data` holds;
    /// a trailing partial value is an error.
    pub fn from_bytes(dtype: DType, data: &'a [u8]) -> Result<Self, Error> {
        let size = elem_bytes(dtype).ok_or(Error::DType {
            tensor: tensor_name("(parameter)"),
            dtype,
        })?;
        Self::new(dtype, data.len() / size, data)
    }

    /// View a 1-D F32/F16/BF16 tensor.
    pub fn from_view(v: &TensorView<'a>) -> Result<Self, Error> {
        let [len] = v.dims() else {
            return Err(Error::Shape {
                tensor: tensor_name(v.name),
                expected: Dims::new(&[v.elems().min(u64::from(u32::MAX)) as u32]),
                got: Dims::new(v.dims()),
            });
        };
        Self::new(v.dtype, *len as usize, v.data).map_err(|_| Error::DType {
            tensor: tensor_name(v.name),
            dtype: v.dtype,
        })
    }

    /// View `len` values of `dtype` stored little-endian in `data`.
    pub fn new(dtype: DType, len: usize, data: &'a [u8]) -> Result<Self, Error> {
        let size = elem_bytes(dtype).ok_or(Error::DType {
            tensor: tensor_name("(parameter)"),
            dtype,
        })?;
        if data.len() != len.saturating_mul(size) {
            return Err(Error::Length {
                what: "vector payload",
                expected: len.saturating_mul(size),
                got: data.len(),
            });
        }
        Ok(Vector { dtype, data })
    }

    /// A view of plain f32s (host tests, precomputed parameters).
    pub fn from_f32(v: &'a [f32]) -> Self {
        Vector {
            dtype: DType::F32,
            data: bytemuck::cast_slice(v),
        }
    }

    /// Storage format.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self.dtype {
            DType::F32 => self.data.len() / 4,
            _ => self.data.len() / 2,
        }
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values as f32s in place, when they are stored as aligned little-endian f32.
    pub fn as_f32(&self) -> Option<&'a [f32]> {
        if self.dtype != DType::F32 || cfg!(target_endian = "big") {
            return None;
        }
        bytemuck::try_cast_slice(self.data).ok()
    }

    /// Decode values `start .. start + out.len()` into `out`.
    pub fn load(&self, start: usize, out: &mut [f32]) -> Result<(), Error> {
        let size = elem_bytes(self.dtype).unwrap_or(1);
        let bytes = start
            .checked_add(out.len())
            .and_then(|end| self.data.get(start * size..end.checked_mul(size)?))
            .ok_or(Error::Length {
                what: "parameter range",
                expected: start.saturating_add(out.len()),
                got: self.len(),
            })?;
        Vector::new(self.dtype, out.len(), bytes)?.zip_apply(out, |_, w| w);
        Ok(())
    }

    /// Call `f(i, value)` for every value in order, decoding once per element.
    #[inline(always)]
    pub fn for_each(&self, mut f: impl FnMut(usize, f32)) {
        match self.dtype {
            DType::F32 => {
                let (c, _) = self.data.as_chunks::<4>();
                c.iter()
                    .enumerate()
                    .for_each(|(i, b)| f(i, f32::from_le_bytes(*b)));
            }
            DType::F16 => {
                let (c, _) = self.data.as_chunks::<2>();
                c.iter()
                    .enumerate()
                    .for_each(|(i, b)| f(i, f16_to_f32(u16::from_le_bytes(*b))));
            }
            _ => {
                let (c, _) = self.data.as_chunks::<2>();
                c.iter()
                    .enumerate()
                    .for_each(|(i, b)| f(i, bf16_to_f32(u16::from_le_bytes(*b))));
            }
        }
    }

    /// `y[i] op= value[i]` over `y.len()` (which must equal `len()`; callers check), in a
    /// loop that vectorises for every storage format.
    #[inline(always)]
    pub(crate) fn zip_apply(&self, y: &mut [f32], op: impl Fn(f32, f32) -> f32) {
        match self.dtype {
            DType::F32 => {
                let (c, _) = self.data.as_chunks::<4>();
                for (o, b) in y.iter_mut().zip(c) {
                    *o = op(*o, f32::from_le_bytes(*b));
                }
            }
            DType::F16 => {
                let (c, _) = self.data.as_chunks::<2>();
                for (o, b) in y.iter_mut().zip(c) {
                    *o = op(*o, f16_to_f32(u16::from_le_bytes(*b)));
                }
            }
            _ => {
                let (c, _) = self.data.as_chunks::<2>();
                for (o, b) in y.iter_mut().zip(c) {
                    *o = op(*o, bf16_to_f32(u16::from_le_bytes(*b)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_to_f32(h);
            if want.is_nan() {
                // NaN payloads are not part of the contract (hardware quiets them).
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
    }

    #[test]
    fn bf16_conversion_is_exact() {
        for h in (0..=u16::MAX).step_by(7) {
            let want = half::bf16::from_bits(h).to_f32();
            if want.is_nan() {
                assert!(bf16_to_f32(h).is_nan());
            } else {
                assert_eq!(bf16_to_f32(h).to_bits(), want.to_bits());
            }
        }
    }

    #[test]
    fn vector_decodes_each_format() {
        let vals = [1.5f32, -2.25, 0.0, 1024.0];
        let f32b: std::vec::Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16b: std::vec::Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let bf16b: std::vec::Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect();
        for (dt, b) in [
            (DType::F32, &f32b),
            (DType::F16, &f16b),
            (DType::BF16, &bf16b),
        ] {
            let v = Vector::new(dt, 4, b).unwrap();
            assert_eq!(v.len(), 4);
            let mut got = [0f32; 4];
            v.for_each(|i, x| got[i] = x);
            assert_eq!(got, vals);
            let mut y = [1f32; 4];
            v.zip_apply(&mut y, |a, b| a + b);
            assert_eq!(y, vals.map(|x| x + 1.0));
        }
        assert!(Vector::new(DType::Q8_0, 32, &[0; 34]).is_err());
        assert!(Vector::new(DType::F32, 3, &f32b).is_err());
    }
}
