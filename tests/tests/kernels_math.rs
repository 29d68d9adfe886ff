//! The vectorised element-wise math against the scalar definitions: `gelu_inplace` at
//! every width the CPU allows must give `gelu`'s bits, special values included.

use glimpse_core::kernels::math::{gelu, gelu_inplace};

#[test]
fn vectorised_gelu_is_the_scalar_gelu() {
    let active = glimpse_host::cpu::install(None);
    let mut v: Vec<f32> = (0..200_003)
        .map(|i| (i as f32 - 100_000.0) * 1.3e-4)
        .collect();
    v.extend([
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -1e-40,
        8.485,
        -8.486,
        1e30,
        -1e30,
    ]);
    let want: Vec<u32> = v.iter().map(|&x| gelu(x).to_bits()).collect();
    gelu_inplace(&mut v);
    for (k, (g, w)) in v.iter().zip(&want).enumerate() {
        let w = f32::from_bits(*w);
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{active:?}: element {k}: {g} vs {w}"
        );
    }
}
