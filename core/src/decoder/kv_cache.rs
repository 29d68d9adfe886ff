//! The KV cache: every layer's rotated keys and its values for every position so far, in
//! f32, carved from the arena once for the whole context.
//!
//! Layout `[layer][position][kv_heads·head_dim]`, so the keys a prefill chunk produces for
//! one layer are one contiguous block that the K projection writes straight into.

use crate::arena::Arena;
use crate::error::Error;

/// Keys and values of `layers` layers for up to `max_context` positions.
#[derive(Debug)]
pub struct KvCache<'a> {
    k: &'a mut [f32],
    v: &'a mut [f32],
    layers: usize,
    max_context: usize,
    kv_dim: usize,
}

impl<'a> KvCache<'a> {
    /// Bytes of one of the two tensors (keys or values).
    pub fn tensor_bytes(layers: usize, max_context: usize, kv_dim: usize) -> usize {
        layers
            .saturating_mul(max_context)
            .saturating_mul(kv_dim)
            .saturating_mul(4)
    }

    /// Allocate the cache in `arena`.
    pub fn new(
        arena: &mut Arena<'a>,
        layers: usize,
        max_context: usize,
        kv_dim: usize,
    ) -> Result<Self, Error> {
        let elems = Self::tensor_bytes(layers, max_context, kv_dim) / 4;
        let both = crate::arena::padded(elems.saturating_mul(4)).saturating_mul(2);
        arena.check(both)?;
        Ok(KvCache {
            k: arena.f32s(elems)?,
            v: arena.f32s(elems)?,
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

    /// Keys and values of positions `start..start + len` of `layer`, to write.
    pub fn rows_mut(
        &mut self,
        layer: usize,
        start: usize,
        len: usize,
    ) -> Result<(&mut [f32], &mut [f32]), Error> {
        let r = self.range(layer, start, len)?;
        let err = Error::Length {
            what: "kv cache",
            expected: r.end,
            got: self.k.len(),
        };
        let k = self.k.get_mut(r.clone()).ok_or(err.clone())?;
        let v = self.v.get_mut(r).ok_or(err)?;
        Ok((k, v))
    }

    /// Keys and values of positions `0..len` of `layer`, to read.
    pub fn prefix(&self, layer: usize, len: usize) -> Result<(&[f32], &[f32]), Error> {
        let r = self.range(layer, 0, len)?;
        let err = Error::Length {
            what: "kv cache",
            expected: r.end,
            got: self.k.len(),
        };
        let k = self.k.get(r.clone()).ok_or(err.clone())?;
        let v = self.v.get(r).ok_or(err)?;
        Ok((k, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn rows_are_disjoint_and_bounded() {
        let (layers, ctx, kvd) = (2, 5, 3);
        let mut buf =
            vec![0u8; 2 * crate::arena::padded(KvCache::tensor_bytes(layers, ctx, kvd)) + 64];
        let mut arena = Arena::new(&mut buf);
        let mut kv = KvCache::new(&mut arena, layers, ctx, kvd).unwrap();
        let (k, v) = kv.rows_mut(1, 2, 2).unwrap();
        assert_eq!((k.len(), v.len()), (6, 6));
        k.fill(1.0);
        v.fill(2.0);
        let (k0, _) = kv.prefix(0, 5).unwrap();
        assert!(k0.iter().all(|&x| x == 0.0), "layer 0 untouched");
        let (k1, v1) = kv.prefix(1, 4).unwrap();
        assert_eq!(&k1[6..12], &[1.0; 6]);
        assert_eq!(&v1[..6], &[0.0; 6]);
        assert!(kv.rows_mut(1, 4, 2).is_err());
        assert!(kv.rows_mut(2, 0, 1).is_err());
        assert!(kv.prefix(0, 6).is_err());
    }
}
