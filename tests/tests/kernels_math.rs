//! The vectorised element-wise math against the scalar definitions: `gelu_inplace` at
//! every width the CPU allows must give `gelu`'s bits, special values included; vision
//! self-attention likewise.

use glimpse_core::kernels::math::{gelu, gelu_inplace};
use glimpse_core::kernels::{Ctx, with_default_ctx};

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
    with_default_ctx(|ctx| gelu_inplace(ctx, &mut v));
    for (k, (g, w)) in v.iter().zip(&want).enumerate() {
        let w = f32::from_bits(*w);
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{active:?}: element {k}: {g} vs {w}"
        );
    }
}

/// Vision self-attention compiled for AVX2 and AVX-512 gives the portable loop's bits
/// (its loops have no cross-lane reductions): token counts under, at and past the 64-query
/// and 64-key blocks, and odd head widths.
#[test]
fn vectorised_attention_is_the_scalar_attention() {
    use glimpse_core::kernels::attention::{PackedQkv, self_attention};
    use glimpse_core::kernels::cpu::Cpu;
    let active = glimpse_host::cpu::install(None);
    let widths = [active, active.without(Cpu::AVX512F)];
    for (tokens, heads, head_dim) in [(5, 2, 8), (16, 3, 12), (70, 4, 32), (129, 2, 20)] {
        let l = PackedQkv {
            tokens,
            heads,
            head_dim,
        };
        let qkv: Vec<f32> = (0..tokens * 3 * l.dim())
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        let mut scratch = vec![0f32; l.scratch_floats()];
        let mut want = vec![0f32; tokens * l.dim()];
        self_attention(
            &mut Ctx::new(&mut glimpse_hal::Sequential).with_cpu(Cpu::SCALAR),
            &l,
            &qkv,
            0.3,
            &mut want,
            &mut scratch,
        )
        .unwrap();
        for cpu in widths {
            let mut got = vec![f32::NAN; tokens * l.dim()];
            self_attention(
                &mut Ctx::new(&mut glimpse_hal::Sequential).with_cpu(cpu),
                &l,
                &qkv,
                0.3,
                &mut got,
                &mut scratch,
            )
            .unwrap();
            for (k, (g, w)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "{cpu:?} {tokens}x{heads}x{head_dim} #{k}"
                );
            }
        }
    }
}
