//! Helpers shared by the core's unit tests.

use std::vec::Vec;

/// Deterministic values in [-1, 1) (xorshift), so tests need no rand crate.
pub(crate) fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Run `f` with a context of every active feature on one task (the reference split).
pub(crate) fn one_task<R>(f: impl FnOnce(&mut crate::kernels::Ctx<'_>) -> R) -> R {
    let mut seq = glimpse_hal::Sequential;
    f(&mut crate::kernels::Ctx::new(&mut seq))
}
