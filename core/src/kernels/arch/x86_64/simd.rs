//! x86_64 SIMD kernels: Q8_0 x Q8_0 matrix-vector and matrix-matrix products (AVX2,
//! AVX-VNNI, AVX-512 VNNI) and the f32-arithmetic products over F32 / F16 / BF16 / FP8
//! weights (AVX2 + F16C), each bit-identical to the scalar reference in `linear.rs`.
//!
//! How they stay bit-identical: every block's int8 dot product is an exact int32 whatever
//! instructions form it, and the float work is then laid out so that each SIMD lane
//! carries one output element through exactly the reference's sequence of roundings
//! (`acc + (d_w·d_a)·isum`, block after block; for f32 dots the reference's 16 partial
//! sums, multiply then add, never fused).
//!
//! Two layouts of the quantized activations:
//! - matrix-vector ("GEMV"): lanes are 8 weight rows; one activation block is loaded once
//!   and multiplied against 8 rows, and a horizontal-add tree turns 8 vectors of partial
//!   sums into one vector of 8 block sums.
//! - matrix-matrix ("GEMM"): lanes are 8 (ymm) or 16 (zmm) activation rows, packed
//!   `[block][quad of 4 codes][row][4 bytes]` when they are quantized. Four bytes of one
//!   weight row are broadcast and multiplied against 4 codes of every activation row in
//!   one instruction, so a weight row is reused across all lanes (and across the tile's
//!   groups) with no horizontal reduction at all.
//!
//! `vpmaddubsw` and `vpdpbusd` multiply unsigned by signed bytes. AVX2 uses the sign trick
//! (`|w| · sign(a, w)`, exact: a pair sum is at most 2·128·127 < 2^15, so the i16 never
//! saturates). The VNNI GEMMs store activations offset by 128 as unsigned bytes and
//! subtract `128·Σw` per block, which `vpdpbusd` accumulates exactly in i32.
//!
//! Every function here is `unsafe`: callers guarantee the CPU features named in its
//! `target_feature` and the buffer sizes listed under Safety.

use core::arch::x86_64::*;

use glimpse_quant::layout::{QK, ROWS4, ROWS4_BLOCK_BYTES};
use glimpse_quant::repack;

/// Bytes of a Q8_0 / E4M3 / E5M2 block.
const B34: usize = 2 + QK;

/// Where the Q8_0 blocks of a run of weight rows lie: plain rows ([`PlainRows`]) or
/// groups of four ([`Rows4`], `TensorLayout::Q8Rows4`). Row indices count from the
/// run's first row.
///
/// # Safety
///
/// Every `unsafe` method reads the image: the caller guarantees that the run holds row
/// `r` (rows 0..8 for `scales8`) and block `b`.
#[allow(clippy::missing_safety_doc)]
pub trait QRows: Copy {
    /// Whether each block carries its code sum (the VNNI GEMMs then read `Σw` instead
    /// of computing it with an extra `vpdpbusd` per quad).
    const SUMS: bool;
    /// The 32 codes of row `r`, block `b`.
    unsafe fn codes(self, r: usize, b: usize) -> *const u8;
    /// The f16 scale of row `r`, block `b`, widened.
    unsafe fn scale(self, r: usize, b: usize) -> f32;
    /// `Σ codes` of row `r`, block `b` (only read when [`QRows::SUMS`]).
    unsafe fn sum(self, r: usize, b: usize) -> i32;
    /// The scales of rows `0..R`, block `b`, widened (the same values as
    /// [`QRows::scale`]).
    #[inline(always)]
    unsafe fn scales<const R: usize>(self, b: usize) -> [f32; R] {
        let mut d = [0f32; R];
        for (r, d) in d.iter_mut().enumerate() {
            // SAFETY: the caller vouches for rows 0..R and block b.
            *d = unsafe { self.scale(r, b) };
        }
        d
    }
    /// The f16 scales of rows 0..8, block `b`, as 8 halves.
    unsafe fn scales8(self, b: usize) -> __m128i;
    /// Bytes spanned by 8 rows (what a GEMV group reads).
    fn bytes8(self) -> usize;
    /// The first byte of the run.
    fn start(self) -> *const u8;
}

/// Plain Q8_0 rows `rb` bytes apart starting at `w`.
#[derive(Clone, Copy, Debug)]
pub struct PlainRows {
    /// First byte of the first row.
    pub w: *const u8,
    /// Bytes per row (`nb·34`).
    pub rb: usize,
}

impl QRows for PlainRows {
    const SUMS: bool = false;
    #[inline(always)]
    unsafe fn codes(self, r: usize, b: usize) -> *const u8 {
        // SAFETY: the caller vouches for row r and block b.
        unsafe { self.w.add(r * self.rb + B34 * b + 2) }
    }
    #[inline(always)]
    unsafe fn scale(self, r: usize, b: usize) -> f32 {
        // SAFETY: as above.
        unsafe { f16_at(self.w.add(r * self.rb + B34 * b)) }
    }
    #[inline(always)]
    unsafe fn sum(self, _r: usize, _b: usize) -> i32 {
        0
    }
    #[inline(always)]
    unsafe fn scales8(self, b: usize) -> __m128i {
        // SAFETY: as above, for rows 0..8; SSE4.1 comes with every caller's AVX2.
        unsafe {
            // One 16-bit insert per row (a gather is slower on the cores measured).
            let base = self.w.add(B34 * b);
            let sc = |k: usize| i32::from(base.add(k * self.rb).cast::<u16>().read_unaligned());
            let mut h = _mm_cvtsi32_si128(sc(0));
            h = _mm_insert_epi16::<1>(h, sc(1));
            h = _mm_insert_epi16::<2>(h, sc(2));
            h = _mm_insert_epi16::<3>(h, sc(3));
            h = _mm_insert_epi16::<4>(h, sc(4));
            h = _mm_insert_epi16::<5>(h, sc(5));
            h = _mm_insert_epi16::<6>(h, sc(6));
            _mm_insert_epi16::<7>(h, sc(7))
        }
    }
    fn bytes8(self) -> usize {
        8 * self.rb
    }
    fn start(self) -> *const u8 {
        self.w
    }
}

/// Q8_0 rows stored four at a time (`TensorLayout::Q8Rows4`), `gb` bytes per group,
/// starting at the group at `w` (the run's first row is slot 0 of it).
#[derive(Clone, Copy, Debug)]
pub struct Rows4 {
    /// First byte of the first group.
    pub w: *const u8,
    /// Bytes per group of four rows (`nb·144`).
    pub gb: usize,
}

impl Rows4 {
    #[inline(always)]
    unsafe fn record(self, r: usize, b: usize) -> *const u8 {
        // SAFETY: the caller vouches for row r and block b.
        unsafe { self.w.add((r / ROWS4) * self.gb + b * ROWS4_BLOCK_BYTES) }
    }
}

impl QRows for Rows4 {
    const SUMS: bool = true;
    #[inline(always)]
    unsafe fn codes(self, r: usize, b: usize) -> *const u8 {
        // SAFETY: as `record`.
        unsafe { self.record(r, b).add(repack::codes_offset(r % ROWS4)) }
    }
    #[inline(always)]
    unsafe fn scale(self, r: usize, b: usize) -> f32 {
        // SAFETY: as `record`.
        unsafe { f16_at(self.record(r, b).add(repack::scale_offset(r % ROWS4))) }
    }
    #[inline(always)]
    unsafe fn sum(self, r: usize, b: usize) -> i32 {
        // SAFETY: as `record`.
        unsafe {
            let p = self.record(r, b).add(repack::sum_offset(r % ROWS4));
            i32::from(i16::from_le(p.cast::<i16>().read_unaligned()))
        }
    }
    #[inline(always)]
    unsafe fn scales<const R: usize>(self, b: usize) -> [f32; R] {
        // A whole group's four scales are the record's first 8 bytes: one F16C
        // conversion (exact, as the scalar one) instead of four.
        let mut d = [0f32; R];
        if R == ROWS4 {
            // SAFETY: as `record`, for rows 0..4; F16C comes with every caller.
            unsafe {
                let v = _mm_cvtph_ps(_mm_loadl_epi64(self.record(0, b).cast()));
                _mm_storeu_ps(d.as_mut_ptr(), v);
            }
        } else {
            for (r, d) in d.iter_mut().enumerate() {
                // SAFETY: the caller vouches for rows 0..R and block b.
                *d = unsafe { self.scale(r, b) };
            }
        }
        d
    }
    #[inline(always)]
    unsafe fn scales8(self, b: usize) -> __m128i {
        // SAFETY: as `record`, for rows 0..8 (two groups); the 4 scales of a group are
        // the record's first 8 bytes.
        unsafe {
            let lo = _mm_loadl_epi64(self.record(0, b).cast());
            let hi = _mm_loadl_epi64(self.record(ROWS4, b).cast());
            _mm_unpacklo_epi64(lo, hi)
        }
    }
    fn bytes8(self) -> usize {
        2 * self.gb
    }
    fn start(self) -> *const u8 {
        self.w
    }
}

/// IEEE binary16 at `p` to f32 (exact), scalar.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at p.
    let h = unsafe { p.cast::<u16>().read_unaligned() };
    crate::kernels::f16_to_f32(u16::from_le(h))
}

/// Sums the 8 lanes of each of 8 vectors: lane `r` of the result is the sum of `v[r]`.
#[inline(always)]
unsafe fn reduce8(v: &[__m256i; 8]) -> __m256i {
    // SAFETY (whole body): AVX2 is enabled by every caller.
    unsafe {
        let t0 = _mm256_hadd_epi32(v[0], v[1]);
        let t1 = _mm256_hadd_epi32(v[2], v[3]);
        let t2 = _mm256_hadd_epi32(v[4], v[5]);
        let t3 = _mm256_hadd_epi32(v[6], v[7]);
        let u0 = _mm256_hadd_epi32(t0, t1);
        let u1 = _mm256_hadd_epi32(t2, t3);
        let lo = _mm256_permute2x128_si256::<0x20>(u0, u1);
        let hi = _mm256_permute2x128_si256::<0x31>(u0, u1);
        _mm256_add_epi32(lo, hi)
    }
}

/// `acc + Σ u·s` over each 4-byte group (u unsigned, s signed bytes), 8 i32 lanes.
trait Dot4 {
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `vpmaddubsw` then `vpmaddwd` by ones. Exact only when no pair sum of `u·s`
/// exceeds i16 (true for the sign trick, `|u| <= 128`, `|s| <= 127`).
struct MaddubsDot;
impl Dot4 for MaddubsDot {
    #[inline(always)]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX2 is enabled by the caller.
        unsafe {
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
            _mm256_add_epi32(acc, p)
        }
    }
}

/// AVX-VNNI `vpdpbusd` (VEX), exact for all inputs.
struct AvxVnniDot;
impl Dot4 for AvxVnniDot {
    #[inline(always)]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX-VNNI is enabled by the caller.
        unsafe { _mm256_dpbusd_avx_epi32(acc, u, s) }
    }
}

/// AVX-512 VNNI `vpdpbusd` on ymm (EVEX, needs VL), exact for all inputs.
struct Avx512VnniDot;
impl Dot4 for Avx512VnniDot {
    #[inline(always)]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        // SAFETY: AVX-512 VNNI and VL are enabled by the caller.
        unsafe { _mm256_dpbusd_epi32(acc, u, s) }
    }
}

/// Largest 8-row group (bytes) whose successor the GEMV prefetches.
const PREFETCH_GROUP_MAX: usize = 32 * 1024;

/// Q8_0 GEMV over 8 weight rows: returns their 8 outputs for one quantized activation
/// row.
#[inline(always)]
unsafe fn gemv8<D: Dot4, L: QRows>(
    w: L,
    nb: usize,
    a: *const u8,
    da: *const f32,
    next: *const u8,
) -> __m256 {
    // SAFETY (whole body): the caller guarantees 8 rows of `nb` blocks at `w`, `nb·32`
    // codes at `a` and `nb` scales at `da`, plus the target features.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        // The 8 rows are read as 8 short interleaved streams, which the hardware
        // prefetchers follow badly when rows are only a few hundred bytes; so while this
        // group computes, pull in the next one (`next`, 8·rb bytes) a slice per block.
        // Long rows are 8 long sequential streams, which the hardware follows; there a
        // look-ahead of a whole group would only push the current one out of L2.
        let lines = if w.bytes8() <= PREFETCH_GROUP_MAX {
            w.bytes8().div_ceil(64)
        } else {
            0
        };
        let per_block = lines.div_ceil(nb.max(1));
        for b in 0..nb {
            for l in b * per_block..((b + 1) * per_block).min(lines) {
                // A prefetch never faults; wrapping_add keeps the address computation
                // defined even past the end of the matrix.
                _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(64 * l).cast());
            }
            let av = _mm256_loadu_si256(a.add(QK * b).cast());
            let mut p = [_mm256_setzero_si256(); 8];
            for (k, pk) in p.iter_mut().enumerate() {
                let wv = _mm256_loadu_si256(w.codes(k, b).cast());
                // |w| carries the magnitude (a stored -128 becomes 128 as unsigned), the
                // activation (never -128) takes w's sign.
                *pk = D::dp(
                    _mm256_setzero_si256(),
                    _mm256_abs_epi8(wv),
                    _mm256_sign_epi8(av, wv),
                );
            }
            let isum = reduce8(&p);
            let dw = _mm256_cvtph_ps(w.scales8(b));
            let s = _mm256_mul_ps(dw, _mm256_set1_ps(*da.add(b)));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(s, _mm256_cvtepi32_ps(isum)));
        }
        acc
    }
}

/// Q8_0 GEMV, AVX2: `y[0..8] = rows 0..8 of w · a`, prefetching the 8 rows at `next`
/// (any address: a prefetch never faults).
///
/// # Safety
///
/// AVX2 and F16C; `w` holds 8 rows of `nb` blocks, `a` holds `nb·32` codes, `da` `nb`
/// scales, `y` 8 floats.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn gemv8_avx2<L: QRows>(
    w: L,
    nb: usize,
    a: *const u8,
    da: *const f32,
    y: *mut f32,
    next: *const u8,
) {
    // SAFETY: forwarded preconditions.
    unsafe { _mm256_storeu_ps(y, gemv8::<MaddubsDot, L>(w, nb, a, da, next)) }
}

/// [`gemv8_avx2`] with AVX-VNNI.
///
/// # Safety
///
/// As [`gemv8_avx2`], plus AVX-VNNI.
#[target_feature(enable = "avx2,f16c,avxvnni")]
pub unsafe fn gemv8_avxvnni<L: QRows>(
    w: L,
    nb: usize,
    a: *const u8,
    da: *const f32,
    y: *mut f32,
    next: *const u8,
) {
    // SAFETY: forwarded preconditions.
    unsafe { _mm256_storeu_ps(y, gemv8::<AvxVnniDot, L>(w, nb, a, da, next)) }
}

/// [`gemv8_avx2`] with AVX-512 VNNI on ymm registers.
///
/// # Safety
///
/// As [`gemv8_avx2`], plus AVX-512 F/BW/VL/VNNI.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn gemv8_avx512vnni<L: QRows>(
    w: L,
    nb: usize,
    a: *const u8,
    da: *const f32,
    y: *mut f32,
    next: *const u8,
) {
    // SAFETY: forwarded preconditions.
    unsafe { _mm256_storeu_ps(y, gemv8::<Avx512VnniDot, L>(w, nb, a, da, next)) }
}

/// Four codes of weight row `r` at block `b`, quad `q`, as an i32.
#[inline(always)]
unsafe fn wquad<L: QRows>(w: L, r: usize, b: usize, q: usize) -> i32 {
    // SAFETY: the caller guarantees row r holds block b.
    unsafe { w.codes(r, b).add(4 * q).cast::<i32>().read_unaligned() }
}

/// Q8_0 GEMM tile, AVX2: `R` weight rows against one group of 8 activation rows packed
/// `[block][quad][row][4]` (signed codes). Returns `out[r][lane]`.
#[inline(always)]
unsafe fn gemm_avx2_body<L: QRows, const R: usize>(
    w: L,
    nb: usize,
    pa: *const u8,
    ps: *const f32,
) -> [[f32; 8]; R] {
    // SAFETY (whole body): the caller guarantees R rows of nb blocks at w, nb·256 packed
    // codes at pa and nb·8 scales at ps, plus AVX2 and F16C.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut facc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let mut iacc = [_mm256_setzero_si256(); R];
            for q in 0..8 {
                let av = _mm256_loadu_si256(pa.add((b * 8 + q) * 32).cast());
                for (r, ia) in iacc.iter_mut().enumerate() {
                    let wq = _mm256_set1_epi32(wquad(w, r, b, q));
                    let p = _mm256_maddubs_epi16(_mm256_abs_epi8(wq), _mm256_sign_epi8(av, wq));
                    *ia = _mm256_add_epi32(*ia, _mm256_madd_epi16(p, ones));
                }
            }
            let das = _mm256_loadu_ps(ps.add(b * 8));
            let dws = w.scales::<R>(b);
            for ((fa, ia), &dw) in facc.iter_mut().zip(&iacc).zip(&dws) {
                let s = _mm256_mul_ps(_mm256_set1_ps(dw), das);
                *fa = _mm256_add_ps(*fa, _mm256_mul_ps(s, _mm256_cvtepi32_ps(*ia)));
            }
        }
        let mut out = [[0f32; 8]; R];
        for (o, fa) in out.iter_mut().zip(&facc) {
            _mm256_storeu_ps(o.as_mut_ptr(), *fa);
        }
        out
    }
}

/// Q8_0 GEMM tile with VNNI on ymm: as [`gemm_avx2_body`] but the activation codes are
/// stored offset by 128 (unsigned), so one `vpdpbusd` per quad and row does the products,
/// and `128·Σw` is taken off per block.
#[inline(always)]
unsafe fn gemm_vnni256_body<D: Dot4, L: QRows, const R: usize>(
    w: L,
    nb: usize,
    pa: *const u8,
    ps: *const f32,
) -> [[f32; 8]; R] {
    // SAFETY (whole body): as gemm_avx2_body, with the VNNI feature of D.
    unsafe {
        let k80 = _mm256_set1_epi8(-128);
        let mut facc = [_mm256_setzero_ps(); R];
        for b in 0..nb {
            let mut iacc = [_mm256_setzero_si256(); R];
            let mut corr = [_mm256_setzero_si256(); R];
            for q in 0..8 {
                let av = _mm256_loadu_si256(pa.add((b * 8 + q) * 32).cast());
                for r in 0..R {
                    let wq = _mm256_set1_epi32(wquad(w, r, b, q));
                    iacc[r] = D::dp(iacc[r], av, wq);
                    if !L::SUMS {
                        corr[r] = D::dp(corr[r], k80, wq);
                    }
                }
            }
            let das = _mm256_loadu_ps(ps.add(b * 8));
            let dws = w.scales::<R>(b);
            for r in 0..R {
                if L::SUMS {
                    corr[r] = _mm256_set1_epi32(128 * w.sum(r, b));
                }
                let isum = _mm256_sub_epi32(iacc[r], corr[r]);
                let s = _mm256_mul_ps(_mm256_set1_ps(dws[r]), das);
                facc[r] = _mm256_add_ps(facc[r], _mm256_mul_ps(s, _mm256_cvtepi32_ps(isum)));
            }
        }
        let mut out = [[0f32; 8]; R];
        for (o, fa) in out.iter_mut().zip(&facc) {
            _mm256_storeu_ps(o.as_mut_ptr(), *fa);
        }
        out
    }
}

/// Q8_0 GEMM tile, AVX2, over 4 rows (`gemm_avx2_4`) or 1 row (`gemm_avx2_1`) against a
/// group of 8 packed activation rows (signed codes).
///
/// # Safety
///
/// AVX2 and F16C; `w` holds the tile's rows of `nb` blocks each, `pa` `nb·256` packed
/// codes, `ps` `nb·8` scales.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn gemm_avx2_4<L: QRows>(
    w: L,
    nb: usize,
    pa: *const u8,
    ps: *const f32,
) -> [[f32; 8]; 4] {
    // SAFETY: forwarded preconditions.
    unsafe { gemm_avx2_body::<L, 4>(w, nb, pa, ps) }
}

/// See [`gemm_avx2_4`].
///
/// # Safety
///
/// As [`gemm_avx2_4`], for one row.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn gemm_avx2_1<L: QRows>(
    w: L,
    nb: usize,
    pa: *const u8,
    ps: *const f32,
) -> [[f32; 8]; 1] {
    // SAFETY: forwarded preconditions.
    unsafe { gemm_avx2_body::<L, 1>(w, nb, pa, ps) }
}

/// Q8_0 GEMM tile with AVX-VNNI over 4 rows against 8 packed activation rows stored
/// offset by 128.
///
/// # Safety
///
/// As [`gemm_avx2_4`], plus AVX-VNNI, and the codes offset.
#[target_feature(enable = "avx2,f16c,avxvnni")]
pub unsafe fn gemm_avxvnni_4<L: QRows>(
    w: L,
    nb: usize,
    pa: *const u8,
    ps: *const f32,
) -> [[f32; 8]; 4] {
    // SAFETY: forwarded preconditions.
    unsafe { gemm_vnni256_body::<AvxVnniDot, L, 4>(w, nb, pa, ps) }
}

/// See [`gemm_avxvnni_4`].
///
/// # Safety
///
/// As [`gemm_avxvnni_4`], for one row.
#[target_feature(enable = "avx2,f16c,avxvnni")]
pub unsafe fn gemm_avxvnni_1<L: QRows>(
    w: L,
    nb: usize,
    pa: *const u8,
    ps: *const f32,
) -> [[f32; 8]; 1] {
    // SAFETY: forwarded preconditions.
    unsafe { gemm_vnni256_body::<AvxVnniDot, L, 1>(w, nb, pa, ps) }
}

/// Q8_0 GEMM tile with AVX-512 VNNI: `R` weight rows against `A` groups of 16 activation
/// rows (codes offset by 128, packed `[block][quad][row][4]`, groups `gstride` codes and
/// `sstride` scales apart). Returns `out[r][g][lane]`.
#[inline(always)]
unsafe fn gemm_zmm_body<L: QRows, const R: usize, const A: usize>(
    w: L,
    nb: usize,
    pa: *const u8,
    gstride: usize,
    ps: *const f32,
    sstride: usize,
) -> [[[f32; 16]; A]; R] {
    // SAFETY (whole body): the caller guarantees R rows of nb blocks at w, A groups of
    // nb·512 codes and nb·16 scales, and AVX-512 F/BW/VNNI and F16C.
    unsafe {
        let k80 = _mm512_set1_epi8(-128);
        let mut facc = [[_mm512_setzero_ps(); A]; R];
        for b in 0..nb {
            // With stored sums the accumulators start at -128·Σw, so they end at the
            // exact Σ a·w with no subtraction; otherwise Σw is formed alongside.
            let mut iacc = [[_mm512_setzero_si512(); A]; R];
            if L::SUMS {
                for (r, acc) in iacc.iter_mut().enumerate() {
                    *acc = [_mm512_set1_epi32(-128 * w.sum(r, b)); A];
                }
            }
            let mut corr = [_mm512_setzero_si512(); R];
            for q in 0..8 {
                let mut av = [_mm512_setzero_si512(); A];
                for (g, v) in av.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(pa.add(g * gstride + (b * 8 + q) * 64).cast());
                }
                for r in 0..R {
                    let wq = _mm512_set1_epi32(wquad(w, r, b, q));
                    if !L::SUMS {
                        corr[r] = _mm512_dpbusd_epi32(corr[r], k80, wq);
                    }
                    for g in 0..A {
                        iacc[r][g] = _mm512_dpbusd_epi32(iacc[r][g], av[g], wq);
                    }
                }
            }
            let mut das = [_mm512_setzero_ps(); A];
            for (g, d) in das.iter_mut().enumerate() {
                *d = _mm512_loadu_ps(ps.add(g * sstride + b * 16));
            }
            let dws = w.scales::<R>(b);
            for r in 0..R {
                let dw = _mm512_set1_ps(dws[r]);
                for g in 0..A {
                    let isum = if L::SUMS {
                        iacc[r][g]
                    } else {
                        _mm512_sub_epi32(iacc[r][g], corr[r])
                    };
                    let s = _mm512_mul_ps(dw, das[g]);
                    facc[r][g] =
                        _mm512_add_ps(facc[r][g], _mm512_mul_ps(s, _mm512_cvtepi32_ps(isum)));
                }
            }
        }
        let mut out = [[[0f32; 16]; A]; R];
        for (o, fa) in out.iter_mut().zip(&facc) {
            for (o, fa) in o.iter_mut().zip(fa) {
                _mm512_storeu_ps(o.as_mut_ptr(), *fa);
            }
        }
        out
    }
}

/// AVX-512 VNNI GEMM tiles: 4 rows x 2 groups, 4 x 1, 1 x 2 and 1 x 1 (the remainders).
///
/// # Safety
///
/// AVX-512 F/BW/VL/VNNI and F16C; see `gemm_zmm_body` for the buffers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c")]
pub unsafe fn gemm_avx512vnni<L: QRows, const R: usize, const A: usize>(
    w: L,
    nb: usize,
    pa: *const u8,
    gstride: usize,
    ps: *const f32,
    sstride: usize,
) -> [[[f32; 16]; A]; R] {
    // SAFETY: forwarded preconditions.
    unsafe { gemm_zmm_body::<L, R, A>(w, nb, pa, gstride, ps, sstride) }
}

/// Quantize one block of 32 activations to Q8_0 codes exactly as
/// [`quantize_act_q8_0`](crate::kernels::linear::quantize_act_q8_0) does (same amax, same f16
/// scale, same clamp, truncation and half-away-from-zero step), returning the codes (in
/// order, as bytes) and the scale.
///
/// # Safety
///
/// AVX2 and F16C; 32 readable floats at `x`.
#[cfg(test)]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_block_avx2(x: *const f32) -> (__m256i, f32) {
    // SAFETY: forwarded preconditions.
    unsafe { quantize_block(x) }
}

/// The body of [`quantize_block_avx2`], inlined into the row quantizers.
#[inline(always)]
unsafe fn quantize_block(x: *const f32) -> (__m256i, f32) {
    // SAFETY (whole body): 32 floats at x; AVX2 enabled.
    unsafe {
        let v = [
            _mm256_loadu_ps(x),
            _mm256_loadu_ps(x.add(8)),
            _mm256_loadu_ps(x.add(16)),
            _mm256_loadu_ps(x.add(24)),
        ];
        let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        // max(|v|, m) keeps m when |v| is NaN, as the scalar fold's f32::max does.
        let mut m = _mm256_setzero_ps();
        for vk in &v {
            m = _mm256_max_ps(_mm256_and_ps(*vk, abs_mask), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<0b01>(m2, m2));
        let amax = _mm_cvtss_f32(m1);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        // f32 -> f16 (round to nearest even, as `half` does) -> f32, in F16C.
        let scale = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
            _mm_set_ss(d),
        )));
        let idv = _mm256_set1_ps(id);
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let (half_p, half_n, one) = (
            _mm256_set1_ps(0.5),
            _mm256_set1_ps(-0.5),
            _mm256_set1_ps(1.0),
        );
        let mut q = [_mm256_setzero_si256(); 4];
        for (qk, vk) in q.iter_mut().zip(&v) {
            let p = _mm256_mul_ps(*vk, idv);
            let ordered = _mm256_cmp_ps::<_CMP_ORD_Q>(p, p);
            let pc = _mm256_and_ps(_mm256_min_ps(_mm256_max_ps(p, lo), hi), ordered);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(pc);
            let frac = _mm256_sub_ps(pc, t);
            let up = _mm256_and_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half_p), one);
            let down = _mm256_and_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, half_n), one);
            *qk = _mm256_cvtps_epi32(_mm256_sub_ps(_mm256_add_ps(t, up), down));
        }
        let s01 = _mm256_packs_epi32(q[0], q[1]);
        let s23 = _mm256_packs_epi32(q[2], q[3]);
        let b = _mm256_packs_epi16(s01, s23);
        // The packs interleave 4-byte groups per 128-bit lane as 0 2 4 6 | 1 3 5 7.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        (_mm256_permutevar8x32_epi32(b, order), scale)
    }
}

/// Quantize `nb` blocks at `x` into plain codes at `codes` (`nb·32` bytes) and scales at
/// `scales` (`nb`), as [`quantize_act_q8_0`](crate::kernels::linear::quantize_act_q8_0) does.
///
/// # Safety
///
/// AVX2 and F16C; the buffers hold what is listed.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_row_avx2(x: *const f32, nb: usize, codes: *mut u8, scales: *mut f32) {
    // SAFETY: block b reads x[32b..32b+32] and writes codes[32b..32b+32] and scales[b],
    // all inside the buffers the caller guarantees.
    unsafe {
        for b in 0..nb {
            let (v, d) = quantize_block(x.add(QK * b));
            _mm256_storeu_si256(codes.add(QK * b).cast(), v);
            *scales.add(b) = d;
        }
    }
}

/// Quantize `nb` blocks at `x` as row `j` of a packed group of `group` rows: the codes of
/// block `b`, quad `q` go to `gcodes[((8b + q)·group + j)·4 ..][..4]` (each byte XOR
/// `flip`), the scale to `gscales[b·group + j]`.
///
/// # Safety
///
/// AVX2 and F16C; `x` holds `nb·32` floats, `gcodes` `nb·32·group` bytes and `gscales`
/// `nb·group` floats, `j < group`.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn quantize_row_packed_avx2(
    x: *const f32,
    nb: usize,
    group: usize,
    j: usize,
    flip: u8,
    gcodes: *mut u8,
    gscales: *mut f32,
) {
    // SAFETY: every write lands inside the group buffers (b < nb, q < 8, j < group).
    unsafe {
        let f = _mm256_set1_epi8(flip as i8);
        for b in 0..nb {
            let (v, d) = quantize_block(x.add(QK * b));
            let v = _mm256_xor_si256(v, f);
            let lo = _mm256_castsi256_si128(v);
            let hi = _mm256_extracti128_si256::<1>(v);
            let base = gcodes.add((b * 8 * group + j) * 4);
            let stride = group * 4;
            base.cast::<i32>().write_unaligned(_mm_cvtsi128_si32(lo));
            base.add(stride)
                .cast::<i32>()
                .write_unaligned(_mm_extract_epi32::<1>(lo));
            base.add(2 * stride)
                .cast::<i32>()
                .write_unaligned(_mm_extract_epi32::<2>(lo));
            base.add(3 * stride)
                .cast::<i32>()
                .write_unaligned(_mm_extract_epi32::<3>(lo));
            base.add(4 * stride)
                .cast::<i32>()
                .write_unaligned(_mm_cvtsi128_si32(hi));
            base.add(5 * stride)
                .cast::<i32>()
                .write_unaligned(_mm_extract_epi32::<1>(hi));
            base.add(6 * stride)
                .cast::<i32>()
                .write_unaligned(_mm_extract_epi32::<2>(hi));
            base.add(7 * stride)
                .cast::<i32>()
                .write_unaligned(_mm_extract_epi32::<3>(hi));
            *gscales.add(b * group + j) = d;
        }
    }
}

// ---------------------------------------------------------------------------------------
// f32 arithmetic over decoded weights.

/// How a weight format turns 16 stored values (starting at value `16·c` of a row) into
/// two vectors of f32, exactly as the reference decoder does.
pub trait Decode16 {
    /// Decode values `16c .. 16c + 16` of the row at `row`.
    ///
    /// # Safety
    ///
    /// The row holds those values (for block formats, their whole block), and the CPU
    /// implements AVX2 and F16C.
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256);

    /// The same 16 values as one 512-bit vector (lane `k` = value `16c + k`); by default
    /// the two halves of [`Decode16::load`] joined.
    ///
    /// # Safety
    ///
    /// As [`Decode16::load`], and the CPU implements AVX-512F.
    #[inline(always)]
    unsafe fn load512(row: *const u8, c: usize) -> __m512 {
        // SAFETY: forwarded preconditions.
        unsafe {
            let (lo, hi) = Self::load(row, c);
            join512(lo, hi)
        }
    }
}

/// `lo` in lanes 0..8 and `hi` in lanes 8..16.
#[inline(always)]
unsafe fn join512(lo: __m256, hi: __m256) -> __m512 {
    // SAFETY: AVX-512F is enabled by every caller.
    unsafe {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        ))
    }
}

/// f32 weights.
#[derive(Debug)]
pub struct DF32;
impl Decode16 for DF32 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: the caller guarantees the row holds value 16c + 15.
        unsafe {
            let p = row.add(64 * c).cast::<f32>();
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
    }

    #[inline(always)]
    unsafe fn load512(row: *const u8, c: usize) -> __m512 {
        // SAFETY: as `load`; AVX-512F is enabled by the caller.
        unsafe { _mm512_loadu_ps(row.add(64 * c).cast::<f32>()) }
    }
}

/// f16 weights.
#[derive(Debug)]
pub struct DF16;
impl Decode16 for DF16 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: as DF32; F16C is enabled by the caller.
        unsafe {
            let p = row.add(32 * c);
            (
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(16).cast())),
            )
        }
    }

    #[inline(always)]
    unsafe fn load512(row: *const u8, c: usize) -> __m512 {
        // SAFETY: as `load`; AVX-512F is enabled by the caller.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(row.add(32 * c).cast())) }
    }
}

/// bf16 weights.
#[derive(Debug)]
pub struct DBF16;
impl Decode16 for DBF16 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: as DF32.
        unsafe {
            let p = row.add(32 * c);
            let lo = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()));
            let hi = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(16).cast()));
            (
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(lo)),
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(hi)),
            )
        }
    }
}

/// 16 FP8 codes to f16 bit patterns, then f32: E4M3 moves its 7 magnitude bits up by 7
/// (the value comes out 2^-8 times too small, which the caller multiplies back exactly)
/// and maps its one NaN code per sign (0x7f) to an f16 NaN; E5M2 is the top byte of an
/// f16 already.
#[inline(always)]
unsafe fn fp8x16<const E4M3: bool>(p: *const u8) -> (__m256, __m256) {
    // SAFETY (whole body): 16 readable bytes at p; AVX2 and F16C enabled by the caller.
    unsafe {
        let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.cast()));
        let h = if E4M3 {
            let mag = _mm256_and_si256(v, _mm256_set1_epi16(0x7f));
            let sign = _mm256_slli_epi16::<8>(_mm256_and_si256(v, _mm256_set1_epi16(0x80)));
            let nan = _mm256_and_si256(
                _mm256_cmpeq_epi16(mag, _mm256_set1_epi16(0x7f)),
                _mm256_set1_epi16(0x7c00),
            );
            _mm256_or_si256(_mm256_or_si256(sign, _mm256_slli_epi16::<7>(mag)), nan)
        } else {
            _mm256_slli_epi16::<8>(v)
        };
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(h)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)),
        )
    }
}

/// E4M3 codes in blocks of 32 with an f16 scale.
#[derive(Debug)]
pub struct DE4M3;
impl Decode16 for DE4M3 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: the row holds block c/2.
        unsafe {
            let blk = row.add(B34 * (c / 2));
            let d = _mm256_set1_ps(f16_at(blk));
            let (a, b) = fp8x16::<true>(blk.add(2 + 16 * (c % 2)));
            // value · 2^8 is the table entry exactly; the reference multiplies the scale
            // by the table entry.
            let k = _mm256_set1_ps(256.0);
            (
                _mm256_mul_ps(d, _mm256_mul_ps(a, k)),
                _mm256_mul_ps(d, _mm256_mul_ps(b, k)),
            )
        }
    }
}

/// 16 Q8_0 codes at `q` times the f16 scale at `d`, as two vectors of 8 (the
/// reference's `d·q`, exactly).
///
/// # Safety
///
/// AVX2 and F16C; two bytes at `d`, sixteen at `q`.
#[inline(always)]
unsafe fn q8x16(d: *const u8, q: *const u8) -> (__m256, __m256) {
    // SAFETY: forwarded preconditions.
    unsafe {
        let d = _mm256_set1_ps(f16_at(d));
        let lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.cast())));
        let hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(q.add(8).cast())));
        (_mm256_mul_ps(d, lo), _mm256_mul_ps(d, hi))
    }
}

/// [`q8x16`] as one 512-bit vector.
///
/// # Safety
///
/// As [`q8x16`], and AVX-512F.
#[inline(always)]
unsafe fn q8x16_512(d: *const u8, q: *const u8) -> __m512 {
    // SAFETY: forwarded preconditions.
    unsafe {
        let d = _mm512_set1_ps(f16_at(d));
        _mm512_mul_ps(
            d,
            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(q.cast()))),
        )
    }
}

/// Q8_0 blocks widened to f32 (W8A32): `d·q`, one rounding, as the reference decodes.
#[derive(Debug)]
pub struct DQ8;
impl Decode16 for DQ8 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: the row holds block c/2, whose codes are 32 bytes after its scale.
        unsafe {
            let blk = row.add(B34 * (c / 2));
            q8x16(blk, blk.add(2 + 16 * (c % 2)))
        }
    }

    #[inline(always)]
    unsafe fn load512(row: *const u8, c: usize) -> __m512 {
        // SAFETY: as `load`; AVX-512F is enabled by the caller.
        unsafe {
            let blk = row.add(B34 * (c / 2));
            q8x16_512(blk, blk.add(2 + 16 * (c % 2)))
        }
    }
}

/// Q8_0 rows stored four at a time (`TensorLayout::Q8Rows4`). The tiles address row `r`
/// as `w + r·rb`; for this layout the driver passes `rb = 1` and `w` = the group's first
/// byte plus the slot of the tile's first row, so the "row pointer" is the group's
/// address (4-aligned: payloads are 64-aligned and groups are `nb·144` bytes) plus the
/// row's slot in its low two bits. Tiles never straddle a group (they start on a slot and
/// hold at most what is left of it).
#[derive(Debug)]
pub struct DQ8Rows4;
impl DQ8Rows4 {
    /// The block record holding value `16c` of the encoded row, and the row's slot.
    #[inline(always)]
    unsafe fn record(row: *const u8, c: usize) -> (*const u8, usize) {
        let slot = row.addr() % ROWS4;
        // SAFETY: the caller guarantees the encoding above and that the row holds block
        // c/2.
        (
            unsafe { row.sub(slot).add(ROWS4_BLOCK_BYTES * (c / 2)) },
            slot,
        )
    }
}
impl Decode16 for DQ8Rows4 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: see `record`; the codes and scale lie inside the record.
        unsafe {
            let (rec, slot) = Self::record(row, c);
            q8x16(
                rec.add(repack::scale_offset(slot)),
                rec.add(repack::codes_offset(slot) + 16 * (c % 2)),
            )
        }
    }

    #[inline(always)]
    unsafe fn load512(row: *const u8, c: usize) -> __m512 {
        // SAFETY: as `load`; AVX-512F is enabled by the caller.
        unsafe {
            let (rec, slot) = Self::record(row, c);
            q8x16_512(
                rec.add(repack::scale_offset(slot)),
                rec.add(repack::codes_offset(slot) + 16 * (c % 2)),
            )
        }
    }
}

/// E5M2 codes in blocks of 32 with an f16 scale.
#[derive(Debug)]
pub struct DE5M2;
impl Decode16 for DE5M2 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: the row holds block c/2.
        unsafe {
            let blk = row.add(B34 * (c / 2));
            let d = _mm256_set1_ps(f16_at(blk));
            let (a, b) = fp8x16::<false>(blk.add(2 + 16 * (c % 2)));
            (_mm256_mul_ps(d, a), _mm256_mul_ps(d, b))
        }
    }
}

/// MXFP8: E4M3 codes in blocks of 32 with an E8M0 scale.
#[derive(Debug)]
pub struct DMxFp8;
impl Decode16 for DMxFp8 {
    #[inline(always)]
    unsafe fn load(row: *const u8, c: usize) -> (__m256, __m256) {
        // SAFETY: the row holds block c/2 (33 bytes each).
        unsafe {
            let blk = row.add(33 * (c / 2));
            let d = _mm256_set1_ps(glimpse_quant::fp8::e8m0_to_f32(*blk));
            let (a, b) = fp8x16::<true>(blk.add(1 + 16 * (c % 2)));
            let k = _mm256_set1_ps(256.0);
            (
                _mm256_mul_ps(d, _mm256_mul_ps(a, k)),
                _mm256_mul_ps(d, _mm256_mul_ps(b, k)),
            )
        }
    }
}

/// The reference's 16-lane tree (lanes `k` and `k + w` for w = 8, 4, 2, 1), on lanes
/// 0..8 in `lo` and 8..16 in `hi`.
#[inline(always)]
unsafe fn tree16(lo: __m256, hi: __m256) -> f32 {
    // SAFETY (whole body): AVX is enabled by every caller.
    unsafe {
        let s8 = _mm256_add_ps(lo, hi);
        let s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps::<1>(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps::<0b01>(s2, s2));
        _mm_cvtss_f32(s1)
    }
}

/// f32 dot products of `R` weight rows with `A` activation rows over the first `16·chunks`
/// values, in the reference order (16 lane sums, multiply then add, then the tree);
/// `out[r][a]` gets the tree result, to which the caller adds the sequential tail.
#[inline(always)]
unsafe fn f32_tile_body<D: Decode16, const R: usize, const A: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    xs: usize,
    chunks: usize,
) -> [[f32; A]; R] {
    // SAFETY (whole body): the caller guarantees R rows of rb bytes at w and A rows of xs
    // floats at x, each holding 16·chunks values, plus AVX2 and F16C.
    unsafe {
        let mut lo = [[_mm256_setzero_ps(); A]; R];
        let mut hi = [[_mm256_setzero_ps(); A]; R];
        for c in 0..chunks {
            let mut xv = [(_mm256_setzero_ps(), _mm256_setzero_ps()); A];
            for (a, v) in xv.iter_mut().enumerate() {
                let p = x.add(a * xs + 16 * c);
                *v = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            }
            for r in 0..R {
                let (w0, w1) = D::load(w.add(r * rb), c);
                for a in 0..A {
                    lo[r][a] = _mm256_add_ps(lo[r][a], _mm256_mul_ps(xv[a].0, w0));
                    hi[r][a] = _mm256_add_ps(hi[r][a], _mm256_mul_ps(xv[a].1, w1));
                }
            }
        }
        let mut out = [[0f32; A]; R];
        for r in 0..R {
            for a in 0..A {
                out[r][a] = tree16(lo[r][a], hi[r][a]);
            }
        }
        out
    }
}

/// AVX2 f32-arithmetic tile over `R` weight rows stored as `D` and `A` activation rows.
///
/// # Safety
///
/// AVX2 and F16C; `w` holds `R` rows of `rb` bytes and `x` `A` rows `xs` floats apart,
/// each with at least `16·chunks` values (for block formats, `16·chunks` is a multiple of
/// 32 within the row).
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn f32_tile_avx2<D: Decode16, const R: usize, const A: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    xs: usize,
    chunks: usize,
) -> [[f32; A]; R] {
    // SAFETY: forwarded preconditions.
    unsafe { f32_tile_body::<D, R, A>(w, rb, x, xs, chunks) }
}

/// AVX-512 form of [`f32_tile_avx2`]: one 16-lane vector per (row, activation) pair, the
/// same lane sums and tree, so the same bits.
///
/// # Safety
///
/// As [`f32_tile_avx2`], and the CPU implements AVX-512F.
#[target_feature(enable = "avx2,f16c,avx512f")]
pub unsafe fn f32_tile_avx512<D: Decode16, const R: usize, const A: usize>(
    w: *const u8,
    rb: usize,
    x: *const f32,
    xs: usize,
    chunks: usize,
) -> [[f32; A]; R] {
    // SAFETY (whole body): forwarded preconditions.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); A]; R];
        for c in 0..chunks {
            let mut xv = [_mm512_setzero_ps(); A];
            for (a, v) in xv.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(x.add(a * xs + 16 * c));
            }
            for (r, accr) in acc.iter_mut().enumerate() {
                let wv = D::load512(w.add(r * rb), c);
                for (s, &xa) in accr.iter_mut().zip(&xv) {
                    *s = _mm512_add_ps(*s, _mm512_mul_ps(xa, wv));
                }
            }
        }
        let mut out = [[0f32; A]; R];
        for (o, accr) in out.iter_mut().zip(&acc) {
            for (v, &s) in o.iter_mut().zip(accr) {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(s)));
                *v = tree16(_mm512_castps512_ps256(s), hi);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::linear::quantize_act_q8_0;
    use crate::test_util::values;

    #[test]
    fn simd_quantizer_matches_the_reference_on_every_edge() {
        if !std::arch::is_x86_feature_detected!("avx2")
            || !std::arch::is_x86_feature_detected!("f16c")
        {
            return;
        }
        let mut blocks: std::vec::Vec<[f32; QK]> = std::vec::Vec::new();
        // Ties: amax 127 makes id = 1, so k + 0.5 lands exactly on a half.
        let mut t = [0f32; QK];
        for (k, v) in t.iter_mut().enumerate() {
            *v = k as f32 - 15.5;
        }
        t[31] = 127.0;
        blocks.push(t);
        blocks.push([0.0; QK]);
        blocks.push([-0.0; QK]);
        let mut odd = [1.0f32; QK];
        odd[3] = f32::NAN;
        odd[4] = -3.0;
        blocks.push(odd);
        let mut inf = [1.0f32; QK];
        inf[9] = f32::INFINITY;
        blocks.push(inf);
        // Scales whose reciprocal overflows, subnormals, and near-overflow values.
        blocks.push([1e-38; QK]);
        let mut tiny = [3e-39f32; QK];
        tiny[0] = -1e-45;
        blocks.push(tiny);
        let mut big = [1e38f32; QK];
        big[1] = -3e38;
        blocks.push(big);
        for seed in 0..200 {
            let v = values(QK, seed);
            let mut b = [0f32; QK];
            let scale = [1e-3f32, 1.0, 77.0, 1e5][seed as usize % 4];
            for (d, s) in b.iter_mut().zip(&v) {
                *d = s * scale;
            }
            blocks.push(b);
        }
        for (k, b) in blocks.iter().enumerate() {
            let mut want = [0u8; QK];
            let mut ws = [0f32; 1];
            quantize_act_q8_0(b, &mut want, &mut ws);
            let mut got = [0u8; QK];
            // SAFETY: AVX2 and F16C checked above; 32 floats and 32 bytes.
            let gs = unsafe {
                let (v, s) = quantize_block_avx2(b.as_ptr());
                _mm256_storeu_si256(got.as_mut_ptr().cast(), v);
                s
            };
            assert_eq!(got, want, "codes of block {k}: {b:?}");
            assert!(
                gs.to_bits() == ws[0].to_bits() || (gs.is_nan() && ws[0].is_nan()),
                "scale of block {k}: {gs} vs {}",
                ws[0]
            );
        }
    }
}
