//! The arena: one caller-owned byte buffer that every activation, scratch buffer and KV
//! cache of a run is carved from, with no allocator behind it.
//!
//! [`Arena`] is a bump allocator. Each allocation starts on an [`ALIGN`]-byte boundary and
//! occupies a whole number of [`ALIGN`]-byte units, so after the first allocation no
//! padding is ever needed and the bytes a set of buffers takes is exactly
//! `head padding + Σ padded(size)` ([`padded`]); [`Arena::check`] lets a caller refuse
//! before it allocates anything. Slices are disjoint `&'a mut` borrows split off the
//! buffer, so the borrow checker (not `unsafe`) keeps them apart. Temporary buffers go in
//! an [`Arena::scope`], which gives their bytes back when it ends.

use crate::error::Error;

/// Alignment of every allocation: a cache line, and enough for any SIMD load the
/// kernels may use.
pub const ALIGN: usize = 64;

/// `bytes` rounded up to whole [`ALIGN`] units: what one allocation of `bytes` takes.
/// Saturates instead of overflowing, so a too-large request reports a huge `needed`.
pub const fn padded(bytes: usize) -> usize {
    match bytes.checked_add(ALIGN - 1) {
        Some(b) => b / ALIGN * ALIGN,
        None => usize::MAX / ALIGN * ALIGN,
    }
}

/// Bytes an arena needs to hand out buffers of the given element counts and element
/// sizes, whatever the alignment of its start: the worst-case head padding plus every
/// padded size.
pub fn bound(sizes: &[usize]) -> usize {
    sizes
        .iter()
        .fold(ALIGN - 1, |acc, &s| acc.saturating_add(padded(s)))
}

/// A bump allocator over one buffer. See the module docs.
#[derive(Debug)]
pub struct Arena<'a> {
    /// The bytes not handed out yet.
    free: &'a mut [u8],
    /// Bytes of the original buffer before `free` (allocations and padding).
    used: usize,
    /// Largest `used` seen, including inside scopes.
    peak: usize,
    /// Length of the original buffer.
    capacity: usize,
}

impl<'a> Arena<'a> {
    /// An arena over all of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        let capacity = buf.len();
        Arena {
            free: buf,
            used: 0,
            peak: 0,
            capacity,
        }
    }

    /// Bytes handed out so far, padding included.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Most bytes ever in use at once, including by scopes that have ended.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Length of the buffer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes not handed out yet.
    pub fn remaining(&self) -> usize {
        self.free.len()
    }

    /// Padding the next allocation needs before it.
    fn head_padding(&self) -> usize {
        // `align_offset` may return usize::MAX when alignment is impossible; for a byte
        // pointer it never is, but keep the result meaningful anyway.
        let pad = self.free.as_ptr().align_offset(ALIGN);
        if pad >= ALIGN { ALIGN } else { pad }
    }

    /// Whether buffers totalling `padded_bytes` (a sum of [`padded`] sizes) fit, without
    /// allocating. The error reports the arena size that would have been enough.
    pub fn check(&self, padded_bytes: usize) -> Result<(), Error> {
        let need = self.head_padding().saturating_add(padded_bytes);
        if need > self.free.len() {
            return Err(Error::Arena {
                needed: self.used.saturating_add(need),
                capacity: self.capacity,
            });
        }
        Ok(())
    }

    /// `bytes` fresh bytes starting on an [`ALIGN`] boundary (zeroed: an arena is
    /// reused, and stale data must never leak into a result by accident).
    pub fn bytes(&mut self, bytes: usize) -> Result<&'a mut [u8], Error> {
        let out = self.kept_bytes(bytes)?;
        out.fill(0);
        Ok(out)
    }

    /// `bytes` bytes starting on an [`ALIGN`] boundary, as they are: for state its owner
    /// keeps in place from one use of the arena to the next (a session's KV cache) and
    /// never reads before writing. Everything else takes [`Arena::bytes`].
    pub fn kept_bytes(&mut self, bytes: usize) -> Result<&'a mut [u8], Error> {
        let size = padded(bytes);
        self.check(size)?;
        let pad = self.head_padding();
        let free = core::mem::take(&mut self.free);
        // check() guarantees pad + size <= free.len(); split_at_mut_checked keeps this
        // panic-free even if that ever stopped being true.
        let Some((_, rest)) = free.split_at_mut_checked(pad) else {
            return Err(self.too_small(pad + size));
        };
        let Some((block, rest)) = rest.split_at_mut_checked(size) else {
            return Err(self.too_small(pad + size));
        };
        self.free = rest;
        self.used += pad + size;
        self.peak = self.peak.max(self.used);
        let (out, _) = block.split_at_mut(bytes.min(block.len()));
        Ok(out)
    }

    /// [`Arena::kept_bytes`] as `len` values of `T`.
    pub fn kept<T: bytemuck::Pod>(&mut self, len: usize) -> Result<&'a mut [T], Error> {
        let raw = self.kept_bytes(len.saturating_mul(core::mem::size_of::<T>()))?;
        self.cast(raw, len)
    }

    fn too_small(&self, need: usize) -> Error {
        Error::Arena {
            needed: self.used.saturating_add(need),
            capacity: self.capacity,
        }
    }

    /// `len` zeroed `f32`s.
    pub fn f32s(&mut self, len: usize) -> Result<&'a mut [f32], Error> {
        self.typed(len)
    }

    /// `len` zeroed `f16`s.
    pub fn f16s(&mut self, len: usize) -> Result<&'a mut [half::f16], Error> {
        self.typed(len)
    }

    fn typed<T: bytemuck::Pod>(&mut self, len: usize) -> Result<&'a mut [T], Error> {
        let out = self.kept::<T>(len)?;
        bytemuck::cast_slice_mut::<T, u8>(out).fill(0);
        Ok(out)
    }

    /// Bytes of `len` values of `T` as a typed slice (start aligned by the arena).
    fn cast<T: bytemuck::Pod>(&self, raw: &'a mut [u8], len: usize) -> Result<&'a mut [T], Error> {
        let bytes = len.saturating_mul(core::mem::size_of::<T>());
        // Cannot fail: the start is ALIGN-aligned (ALIGN >= align_of::<T>()) and the
        // length is len * size_of::<T>().
        bytemuck::try_cast_slice_mut(raw).map_err(|_| Error::Arena {
            needed: bytes,
            capacity: self.capacity,
        })
    }

    /// Run `f` with an arena over the bytes not handed out yet. Whatever `f` allocates is
    /// free again when it returns (the borrow checker ensures none of it escapes); its
    /// high-water mark counts towards [`Arena::peak`].
    pub fn scope<R>(&mut self, f: impl FnOnce(&mut Arena<'_>) -> R) -> R {
        let mut inner = Arena {
            free: &mut *self.free,
            used: self.used,
            peak: self.used,
            capacity: self.capacity,
        };
        let r = f(&mut inner);
        self.peak = self.peak.max(inner.peak);
        r
    }
}

/// The buffers a [`Scratch`] carves: its f32 ones, then its byte ones.
pub type Buffers<'a, const F: usize, const B: usize> = ([&'a mut [f32]; F], [&'a mut [u8]; B]);

/// The scratch buffers one layer takes, declared once: `F` f32 buffers and `B` byte
/// buffers, in the order they are carved. The planner adds up [`Scratch::padded_bytes`]
/// and the layer's `forward` takes [`Scratch::carve`] of the same value, so what is
/// planned and what runs cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scratch<const F: usize, const B: usize> {
    /// Lengths of the f32 buffers.
    pub f32s: [usize; F],
    /// Lengths of the byte buffers.
    pub bytes: [usize; B],
}

impl<const F: usize, const B: usize> Scratch<F, B> {
    /// Bytes the buffers take from an arena whose free space starts on an [`ALIGN`]
    /// boundary.
    pub fn padded_bytes(&self) -> usize {
        let f = self.f32s.iter().fold(0usize, |acc, &n| {
            acc.saturating_add(padded(n.saturating_mul(4)))
        });
        self.bytes
            .iter()
            .fold(f, |acc, &n| acc.saturating_add(padded(n)))
    }

    /// Carve the buffers (zeroed) from `arena`, f32 ones first.
    pub fn carve<'a>(&self, arena: &mut Arena<'a>) -> Result<Buffers<'a, F, B>, Error> {
        let mut f: [&'a mut [f32]; F] = core::array::from_fn(|_| <&mut [f32]>::default());
        for (slot, &n) in f.iter_mut().zip(&self.f32s) {
            *slot = arena.f32s(n)?;
        }
        let mut b: [&'a mut [u8]; B] = core::array::from_fn(|_| <&mut [u8]>::default());
        for (slot, &n) in b.iter_mut().zip(&self.bytes) {
            *slot = arena.bytes(n)?;
        }
        Ok((f, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_carves_what_it_declares() {
        let mut buf = [0u8; 2048];
        let mut arena = Arena::new(&mut buf);
        let head = arena.head_padding();
        let s = Scratch {
            f32s: [3, 0, 17],
            bytes: [5, 130],
        };
        let ([a, z, c], [d, e]) = s.carve(&mut arena).unwrap();
        assert_eq!(
            (a.len(), z.len(), c.len(), d.len(), e.len()),
            (3, 0, 17, 5, 130)
        );
        assert_eq!(arena.used(), head + s.padded_bytes());
        // 3 and 17 f32s, 5 and 130 bytes, each padded to 64; the empty one takes nothing.
        assert_eq!(s.padded_bytes(), 64 + 128 + 64 + 192);
        let big = Scratch {
            f32s: [1000],
            bytes: [],
        };
        assert!(big.carve(&mut arena).is_err());
    }

    #[test]
    fn allocations_are_aligned_disjoint_and_counted() {
        let mut buf = [0xAAu8; 1024];
        let mut arena = Arena::new(&mut buf);
        let a = arena.f32s(3).unwrap();
        let b = arena.bytes(5).unwrap();
        let c = arena.f16s(40).unwrap();
        assert_eq!(a.as_ptr().addr() % ALIGN, 0);
        assert_eq!(b.as_ptr().addr() % ALIGN, 0);
        assert_eq!(c.as_ptr().addr() % ALIGN, 0);
        assert_eq!((a.len(), b.len(), c.len()), (3, 5, 40));
        assert!(a.iter().all(|&x| x == 0.0) && b.iter().all(|&x| x == 0));
        a.fill(1.0);
        b.fill(2);
        c.fill(half::f16::ONE);
        assert!(a.iter().all(|&x| x == 1.0) && b.iter().all(|&x| x == 2));
        // 12 -> 64, 5 -> 64, 80 -> 128, plus whatever the buffer's start needed.
        let head = arena.used() - 256;
        assert!(head < ALIGN);
        assert_eq!(arena.peak(), arena.used());
        assert_eq!(arena.remaining(), 1024 - arena.used());
    }

    #[test]
    fn too_small_is_an_error_with_the_size_needed() {
        let mut buf = [0u8; 300];
        let mut arena = Arena::new(&mut buf);
        let head = arena.head_padding();
        let _ = arena.f32s(10).unwrap();
        let used = arena.used();
        match arena.f32s(1000) {
            Err(Error::Arena { needed, capacity }) => {
                assert_eq!(capacity, 300);
                assert_eq!(needed, used + padded(4000));
                assert_eq!(used, head + 64);
            }
            other => panic!("expected an arena error, got {other:?}"),
        }
        // The failed request changed nothing.
        assert_eq!(arena.used(), used);
        assert!(arena.f32s(usize::MAX).is_err());
        assert!(arena.bytes(usize::MAX).is_err());
        assert_eq!(arena.used(), used);
    }

    #[test]
    fn bound_is_enough_for_any_start_alignment() {
        let sizes = [4usize * 7, 100, 1, 64, 65];
        let need = bound(&sizes);
        let mut storage = [0u8; 1024];
        for shift in 0..ALIGN {
            let buf = &mut storage[shift..shift + need];
            let mut arena = Arena::new(buf);
            for &s in &sizes {
                arena.bytes(s).unwrap();
            }
            assert!(arena.used() <= need);
        }
        // And one byte less fails for the worst start.
        let worst = (0..ALIGN)
            .find(|&s| storage[s..].as_ptr().addr() % ALIGN == 1)
            .unwrap();
        let mut arena = Arena::new(&mut storage[worst..worst + need - 1]);
        let r: Result<(), Error> = sizes.iter().try_for_each(|&s| arena.bytes(s).map(|_| ()));
        assert!(r.is_err());
    }

    #[test]
    fn scopes_give_bytes_back_and_keep_the_peak() {
        let mut buf = [0u8; 4096];
        let mut arena = Arena::new(&mut buf);
        let keep = arena.f32s(16).unwrap();
        let before = arena.used();
        let inner_used = arena.scope(|a| {
            let t = a.f32s(100).unwrap();
            t[0] = 3.0;
            let _ = a.bytes(10).unwrap();
            a.used()
        });
        assert_eq!(inner_used, before + padded(400) + padded(10));
        assert_eq!(arena.used(), before);
        assert_eq!(arena.peak(), inner_used);
        // The scope's bytes are reused (and zeroed again).
        let again = arena.f32s(100).unwrap();
        assert_eq!(again[0], 0.0);
        keep[0] = 1.0;
        assert_eq!(arena.used(), before + padded(400));
    }
}
