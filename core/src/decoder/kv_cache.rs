//! The KV cache: every layer's rotated keys and its values for every position so far,
//! carved from the arena once for the whole context, in f32 or f16 ([`KvFormat`]).
//!
//! Layout `[layer][position][kv_heads·head_dim]`, so the keys a prefill chunk produces for
//! one layer are one contiguous block. The projections write f32 rows into a staging
//! buffer, RoPE rotates them there, and [`KvCache::store`] converts them into the cache:
//! one path for both formats, and the cache never holds an unrotated key.
//!
//! Why f16: at FastVLM-0.5B's 24 layers x 128 KV channels, an f32 cache for 2048 positions
//! is 50 MB, more than the whole rest of the run; f16 halves it at a relative error of
//! 2^-11 per stored value (what llama.cpp's default cache does too).

use half::f16;

use crate::arena::{Arena, padded};
use crate::error::Error;

/// Number format of the cached keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KvFormat {
    /// IEEE binary32: exact, twice the memory.
    #[default]
    F32,
    /// IEEE binary16, rounded to nearest even on store; attention reads it back exactly.
    F16,
}

impl KvFormat {
    /// Bytes per cached value.
    pub const fn bytes(self) -> usize {
        match self {
            KvFormat::F32 => 4,
            KvFormat::F16 => 2,
        }
    }

    /// Lowercase name, as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::F16 => "f16",
        }
    }
}

/// Read-only keys and values of a prefix of one layer, in the cache's format.
#[derive(Clone, Copy, Debug)]
pub enum KvView<'c> {
    /// f32 rows.
    F32 {
        /// Keys, `len × kv_dim`.
        k: &'c [f32],
        /// Values, `len × kv_dim`.
        v: &'c [f32],
    },
    /// f16 rows.
    F16 {
        /// Keys, `len × kv_dim`.
        k: &'c [f16],
        /// Values, `len × kv_dim`.
        v: &'c [f16],
    },
}

/// Round to f16, saturating at the largest finite f16 instead of overflowing to infinity:
/// one outlier key must not turn a whole attention row into NaN.
fn to_f16(x: f32) -> f16 {
    f16::from_f32(x.clamp(-f16::MAX.to_f32(), f16::MAX.to_f32()))
}

#[derive(Debug)]
enum Store<'a> {
    F32 { k: &'a mut [f32], v: &'a mut [f32] },
    F16 { k: &'a mut [f16], v: &'a mut [f16] },
}

/// Keys and values of `layers` layers for up to `max_context` positions.
#[derive(Debug)]
pub struct KvCache<'a> {
    store: Store<'a>,
    layers: usize,
    max_context: usize,
    kv_dim: usize,
}

impl<'a> KvCache<'a> {
    /// Bytes of one of the two tensors (keys or values) in f32.
    pub fn tensor_bytes(layers: usize, max_context: usize, kv_dim: usize) -> usize {
        Self::tensor_bytes_as(layers, max_context, kv_dim, KvFormat::F32)
    }

    /// Bytes of one of the two tensors (keys or values) in `format`.
    pub fn tensor_bytes_as(
        layers: usize,
        max_context: usize,
        kv_dim: usize,
        format: KvFormat,
    ) -> usize {
        layers
            .saturating_mul(max_context)
            .saturating_mul(kv_dim)
            .saturating_mul(format.bytes())
    }

    /// Allocate an f32 cache in `arena`.
    pub fn new(
        arena: &mut Arena<'a>,
        layers: usize,
        max_context: usize,
        kv_dim: usize,
    ) -> Result<Self, Error> {
        Self::with_format(arena, layers, max_context, kv_dim, KvFormat::F32)
    }

    /// Allocate a cache in `format` in `arena` (both tensors, or nothing).
    pub fn with_format(
        arena: &mut Arena<'a>,
        layers: usize,
        max_context: usize,
        kv_dim: usize,
        format: KvFormat,
    ) -> Result<Self, Error> {
        let mut cache = Self::kept(arena, layers, max_context, kv_dim, format)?;
        match &mut cache.store {
            Store::F32 { k, v } => {
                k.fill(0.0);
                v.fill(0.0);
            }
            Store::F16 { k, v } => {
                k.fill(f16::ZERO);
                v.fill(f16::ZERO);
            }
        }
        Ok(cache)
    }

    /// [`KvCache::with_format`] over bytes that already hold a cache from an earlier use
    /// of the same region (same layers, context, width and format): nothing is zeroed,
    /// so the positions written before are still there. Positions past the ones written
    /// are never read (attention reads a prefix after storing into it).
    pub fn kept(
        arena: &mut Arena<'a>,
        layers: usize,
        max_context: usize,
        kv_dim: usize,
        format: KvFormat,
    ) -> Result<Self, Error> {
        let bytes = Self::tensor_bytes_as(layers, max_context, kv_dim, format);
        arena.check(padded(bytes).saturating_mul(2))?;
        let elems = bytes / format.bytes();
        let store = match format {
            KvFormat::F32 => Store::F32 {
                k: arena.kept(elems)?,
                v: arena.kept(elems)?,
            },
            KvFormat::F16 => Store::F16 {
                k: arena.kept(elems)?,
                v: arena.kept(elems)?,
            },
        };
        Ok(KvCache {
            store,
            layers,
            max_context,
            kv_dim,
        })
    }

    /// Positions the cache holds.
    pub fn max_context(&self) -> usize {
        self.max_context
    }

    /// Width of one position's keys (= of its values).
    pub fn kv_dim(&self) -> usize {
        self.kv_dim
    }

    /// The storage format.
    pub fn format(&self) -> KvFormat {
        match self.store {
            Store::F32 { .. } => KvFormat::F32,
            Store::F16 { .. } => KvFormat::F16,
        }
    }

    fn range(
        &self,
        layer: usize,
        start: usize,
        len: usize,
    ) -> Result<core::ops::Range<usize>, Error> {
        if layer >= self.layers || start.saturating_add(len) > self.max_context {
            return Err(Error::ContextOverflow {
                needed: start.saturating_add(len),
                max: self.max_context,
            });
        }
        let base = (layer * self.max_context + start) * self.kv_dim;
        Ok(base..base + len * self.kv_dim)
    }

    /// Write the keys and values of positions `start..start + n` of `layer`, where `k` and
    /// `v` are `n × kv_dim` f32 rows (`n` from their length), converting to the format.
    pub fn store(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) -> Result<(), Error> {
        let kvd = self.kv_dim.max(1);
        if k.len() != v.len() || !k.len().is_multiple_of(kvd) {
            return Err(Error::Length {
                what: "kv cache rows (keys and values, whole rows)",
                expected: k.len().next_multiple_of(kvd),
                got: v.len(),
            });
        }
        let r = self.range(layer, start, k.len() / kvd)?;
        let err = |len| Error::Length {
            what: "kv cache",
            expected: r.end,
            got: len,
        };
        match &mut self.store {
            Store::F32 { k: kc, v: vc } => {
                let len = kc.len();
                kc.get_mut(r.clone()).ok_or(err(len))?.copy_from_slice(k);
                vc.get_mut(r.clone()).ok_or(err(len))?.copy_from_slice(v);
            }
            Store::F16 { k: kc, v: vc } => {
                let len = kc.len();
                for (d, &s) in kc.get_mut(r.clone()).ok_or(err(len))?.iter_mut().zip(k) {
                    *d = to_f16(s);
                }
                for (d, &s) in vc.get_mut(r.clone()).ok_or(err(len))?.iter_mut().zip(v) {
                    *d = to_f16(s);
                }
            }
        }
        Ok(())
    }

    /// Keys and values of positions `0..len` of `layer`, to read.
    pub fn prefix(&self, layer: usize, len: usize) -> Result<KvView<'_>, Error> {
        let r = self.range(layer, 0, len)?;
        let err = |len| Error::Length {
            what: "kv cache",
            expected: r.end,
            got: len,
        };
        Ok(match &self.store {
            Store::F32 { k, v } => KvView::F32 {
                k: k.get(r.clone()).ok_or(err(k.len()))?,
                v: v.get(r.clone()).ok_or(err(v.len()))?,
            },
            Store::F16 { k, v } => KvView::F16 {
                k: k.get(r.clone()).ok_or(err(k.len()))?,
                v: v.get(r.clone()).ok_or(err(v.len()))?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    fn f32_rows(view: KvView<'_>) -> (std::vec::Vec<f32>, std::vec::Vec<f32>) {
        match view {
            KvView::F32 { k, v } => (k.to_vec(), v.to_vec()),
            KvView::F16 { k, v } => (
                k.iter().map(|x| x.to_f32()).collect(),
                v.iter().map(|x| x.to_f32()).collect(),
            ),
        }
    }

    #[test]
    fn rows_are_disjoint_and_bounded_in_both_formats() {
        let (layers, ctx, kvd) = (2, 5, 3);
        for format in [KvFormat::F32, KvFormat::F16] {
            let one = KvCache::tensor_bytes_as(layers, ctx, kvd, format);
            assert_eq!(one, layers * ctx * kvd * format.bytes());
            let mut buf = vec![0u8; 2 * padded(one) + 64];
            let mut arena = Arena::new(&mut buf);
            let mut kv = KvCache::with_format(&mut arena, layers, ctx, kvd, format).unwrap();
            assert_eq!(kv.format(), format);
            // Values exactly representable in f16, so both formats read them back as is.
            kv.store(1, 2, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[-1.5; 6])
                .unwrap();
            let (k0, _) = f32_rows(kv.prefix(0, 5).unwrap());
            assert!(k0.iter().all(|&x| x == 0.0), "layer 0 untouched");
            let (k1, v1) = f32_rows(kv.prefix(1, 4).unwrap());
            assert_eq!(&k1[6..12], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
            assert_eq!(&v1[6..12], &[-1.5; 6]);
            assert_eq!(&v1[..6], &[0.0; 6]);
            assert!(kv.store(1, 4, &[0.0; 6], &[0.0; 6]).is_err());
            assert!(kv.store(2, 0, &[0.0; 3], &[0.0; 3]).is_err());
            assert!(kv.store(0, 0, &[0.0; 4], &[0.0; 4]).is_err());
            assert!(kv.store(0, 0, &[0.0; 3], &[0.0; 6]).is_err());
            assert!(kv.prefix(0, 6).is_err());
        }
    }

    #[test]
    fn f16_store_rounds_to_nearest() {
        let mut buf = vec![0u8; 1024];
        let mut arena = Arena::new(&mut buf);
        let mut kv = KvCache::with_format(&mut arena, 1, 1, 2, KvFormat::F16).unwrap();
        // 1 + 2^-11 is halfway between 1 and the next f16 (1 + 2^-10): ties go to even (1).
        let x = 1.0 + f32::powi(2.0, -11);
        kv.store(0, 0, &[x, 70000.0], &[-x, 1e-8]).unwrap();
        let (k, v) = f32_rows(kv.prefix(0, 1).unwrap());
        assert_eq!(k[0], 1.0);
        assert_eq!(k[1], 65504.0, "beyond the f16 range saturates");
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], 0.0);
    }
}
