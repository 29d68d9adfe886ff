//! The kernels written for one architecture, one folder each (after ggml-cpu's `arch/`):
//! `x86_64/` (AVX2, AVX-VNNI, AVX-512 VNNI intrinsics and their drivers), `aarch64/`
//! (`dotprod` builds of the reference loops) and `arm/` (Cortex-M with Helium). A new
//! architecture (`wasm32/` with SIMD128, say) is a new folder plus one arm in each
//! dispatch of `gemm.rs`; the reference loops every one of them must reproduce to the bit
//! stay beside the entry points (`linear.rs`, `gemm.rs`, `conv.rs`, `attention.rs`,
//! `math.rs`), where the autovectorised ones are also instantiated per instruction set.

#[cfg(target_arch = "aarch64")]
pub(crate) mod aarch64;
#[cfg(target_arch = "arm")]
pub(crate) mod arm;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_64;

/// Codes per Q8_0 block as the dot-product loops should see it: [`QK`] everywhere but
/// 32-bit Arm, which wants it hidden from the optimiser (see [`arm::q8_block_len`]).
///
/// [`QK`]: glimpse_quant::layout::QK
#[inline(always)]
pub(crate) fn q8_block_len() -> usize {
    #[cfg(target_arch = "arm")]
    return arm::q8_block_len();
    #[cfg(not(target_arch = "arm"))]
    glimpse_quant::layout::QK
}
