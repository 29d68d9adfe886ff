//! AArch64 kernels: the Q8_0 reference loops compiled with `neon,dotprod`, which LLVM
//! turns into `sdot` (bit-identical: the int32 block sums are exact either way).

use core::ops::Range;

use crate::kernels::gemm::q8_rows_scalar;
use crate::kernels::linear::Weights;
use crate::kernels::par::SharedMut;

/// # Safety
///
/// The CPU implements NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn rows_dotprod(
    w: &Weights<'_>,
    codes: &[u8],
    scales: &[f32],
    n: usize,
    range: Range<usize>,
    y: &SharedMut<'_, f32>,
) {
    q8_rows_scalar(w, codes, scales, n, range, y);
}
