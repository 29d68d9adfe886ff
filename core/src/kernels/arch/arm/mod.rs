//! 32-bit Arm (Cortex-M55 with Helium, MVE): what the reference loops need to compile
//! to the vector instructions.

/// Codes per Q8_0 block, hidden from the optimiser. With the constant 32, LLVM unrolls a
/// block into 4-lane `vldrb.s32` / `vmlava.u32` (4 MACs an instruction); an opaque length
/// gives the tail-predicated `vldrb.8` / `vmlava.s8` loop (16 MACs an instruction).
#[inline(always)]
pub(crate) fn q8_block_len() -> usize {
    core::hint::black_box(glimpse_quant::layout::QK)
}
