//! Which instruction-set extensions the kernels may use, and which kernel each choice
//! selects.
//!
//! The core is `no_std`, so it cannot ask the CPU itself (`is_x86_feature_detected!` lives
//! in std). Instead a port that can ask installs the answer once with [`install`]; until
//! then, and on ports that never do, only what the build enables at compile time
//! (`-C target-cpu=...`, `cfg(target_feature)`) is used, and that defaults to the scalar
//! reference kernels. A kernel never runs code the CPU cannot execute: [`Cpu::active`] is
//! the union of the compiled-in features and the installed ones, and callers that ask for
//! a particular set (tests, benchmarks) get its intersection with the active one.

use core::sync::atomic::{AtomicU32, Ordering};

/// A set of CPU features, as bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Cpu(u32);

/// Features a port has installed (see [`install`]).
static INSTALLED: AtomicU32 = AtomicU32::new(0);

impl Cpu {
    /// No extension: the scalar reference kernels (which LLVM may still vectorise to the
    /// target's baseline, SSE2 on x86_64).
    pub const SCALAR: Cpu = Cpu(0);
    /// x86 AVX2 (256-bit integer SIMD).
    pub const AVX2: Cpu = Cpu(1 << 0);
    /// x86 fused multiply-add.
    pub const FMA: Cpu = Cpu(1 << 1);
    /// x86 half-precision conversions (`vcvtph2ps`).
    pub const F16C: Cpu = Cpu(1 << 2);
    /// x86 AVX-512 Foundation.
    pub const AVX512F: Cpu = Cpu(1 << 3);
    /// x86 AVX-512 byte and word instructions.
    pub const AVX512BW: Cpu = Cpu(1 << 4);
    /// x86 AVX-512 on 128/256-bit registers.
    pub const AVX512VL: Cpu = Cpu(1 << 5);
    /// x86 AVX-512 VNNI (`vpdpbusd` on zmm, and on ymm with AVX512VL).
    pub const AVX512VNNI: Cpu = Cpu(1 << 6);
    /// x86 AVX-VNNI (VEX-encoded `vpdpbusd` on ymm, Alder Lake and later, Zen 5).
    pub const AVXVNNI: Cpu = Cpu(1 << 7);
    /// AArch64 Advanced SIMD.
    pub const NEON: Cpu = Cpu(1 << 8);
    /// AArch64 `sdot`/`udot`.
    pub const DOTPROD: Cpu = Cpu(1 << 9);

    /// Every feature this type knows, with its name (for reports).
    pub const NAMED: [(Cpu, &'static str); 10] = [
        (Cpu::AVX2, "avx2"),
        (Cpu::FMA, "fma"),
        (Cpu::F16C, "f16c"),
        (Cpu::AVX512F, "avx512f"),
        (Cpu::AVX512BW, "avx512bw"),
        (Cpu::AVX512VL, "avx512vl"),
        (Cpu::AVX512VNNI, "avx512vnni"),
        (Cpu::AVXVNNI, "avxvnni"),
        (Cpu::NEON, "neon"),
        (Cpu::DOTPROD, "dotprod"),
    ];

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// A set from raw bits (unknown bits are kept but select nothing).
    pub const fn from_bits(bits: u32) -> Cpu {
        Cpu(bits)
    }

    /// Both sets together.
    #[must_use]
    pub const fn union(self, other: Cpu) -> Cpu {
        Cpu(self.0 | other.0)
    }

    /// The features in both sets.
    #[must_use]
    pub const fn intersect(self, other: Cpu) -> Cpu {
        Cpu(self.0 & other.0)
    }

    /// This set without `other`'s features.
    #[must_use]
    pub const fn without(self, other: Cpu) -> Cpu {
        Cpu(self.0 & !other.0)
    }

    /// Whether every feature of `other` is in this set.
    pub const fn contains(self, other: Cpu) -> bool {
        self.0 & other.0 == other.0
    }

    /// What the build enables at compile time (`-C target-feature` / `-C target-cpu`):
    /// always safe to use, no detection needed.
    pub const fn compiled() -> Cpu {
        let mut c = 0;
        if cfg!(all(target_arch = "x86_64", target_feature = "avx2")) {
            c |= Cpu::AVX2.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "fma")) {
            c |= Cpu::FMA.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "f16c")) {
            c |= Cpu::F16C.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "avx512f")) {
            c |= Cpu::AVX512F.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "avx512bw")) {
            c |= Cpu::AVX512BW.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "avx512vl")) {
            c |= Cpu::AVX512VL.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "avx512vnni")) {
            c |= Cpu::AVX512VNNI.0;
        }
        if cfg!(all(target_arch = "x86_64", target_feature = "avxvnni")) {
            c |= Cpu::AVXVNNI.0;
        }
        if cfg!(all(target_arch = "aarch64", target_feature = "neon")) {
            c |= Cpu::NEON.0;
        }
        if cfg!(all(target_arch = "aarch64", target_feature = "dotprod")) {
            c |= Cpu::DOTPROD.0;
        }
        Cpu(c)
    }

    /// What the kernels use by default: the compiled-in features plus what a port
    /// [`install`]ed.
    #[inline]
    pub fn active() -> Cpu {
        Cpu(Cpu::compiled().0 | INSTALLED.load(Ordering::Relaxed))
    }

    /// The features of `self` the running CPU is known to have (a request can only
    /// narrow what is active, never widen it).
    #[inline]
    #[must_use]
    pub fn usable(self) -> Cpu {
        self.intersect(Cpu::active())
    }

    /// The Q8_0 x Q8_0 kernel family this set selects.
    pub fn q8_kernel(self) -> Q8Kernel {
        if self.contains(Cpu::AVX512F.union(Cpu::AVX512BW).union(Cpu::AVX512VL))
            && self.contains(Cpu::AVX512VNNI.union(Cpu::F16C))
        {
            Q8Kernel::Avx512Vnni
        } else if self.contains(Cpu::AVXVNNI.union(Cpu::AVX2).union(Cpu::F16C)) {
            Q8Kernel::AvxVnni
        } else if self.contains(Cpu::AVX2.union(Cpu::F16C)) {
            Q8Kernel::Avx2
        } else if self.contains(Cpu::NEON.union(Cpu::DOTPROD)) {
            Q8Kernel::Dotprod
        } else {
            Q8Kernel::Scalar
        }
    }

    /// The f32-arithmetic kernel family (F32/F16/BF16/FP8 weights, convolutions) this set
    /// selects.
    pub fn f32_kernel(self) -> F32Kernel {
        if self.contains(Cpu::AVX512F.union(Cpu::AVX2).union(Cpu::F16C)) {
            F32Kernel::Avx512
        } else if self.contains(Cpu::AVX2.union(Cpu::F16C)) {
            F32Kernel::Avx2
        } else {
            F32Kernel::Scalar
        }
    }
}

impl core::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Cpu[")?;
        let mut first = true;
        for (c, name) in Cpu::NAMED {
            if self.contains(c) {
                if !first {
                    f.write_str(" ")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        f.write_str("]")
    }
}

/// The Q8_0 x Q8_0 kernels (W8A8: int8 weights times activations quantized per block of
/// 32). Every one computes each block's int32 dot product exactly and accumulates
/// `(d_w·d_a)·isum` in the reference order, so all of them give bit-identical results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Q8Kernel {
    /// Plain Rust slice loops.
    Scalar,
    /// x86 AVX2: `vpmaddubsw` + `vpmaddwd` with the sign trick.
    Avx2,
    /// x86 AVX-VNNI: VEX `vpdpbusd` on ymm.
    AvxVnni,
    /// x86 AVX-512 VNNI: `vpdpbusd` on zmm (matrix-matrix) and ymm (matrix-vector).
    Avx512Vnni,
    /// AArch64 `sdot`, reached by autovectorising slice loops compiled with `dotprod`.
    Dotprod,
}

impl Q8Kernel {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Q8Kernel::Scalar => "scalar",
            Q8Kernel::Avx2 => "avx2",
            Q8Kernel::AvxVnni => "avx-vnni",
            Q8Kernel::Avx512Vnni => "avx512-vnni",
            Q8Kernel::Dotprod => "neon-dotprod",
        }
    }
}

/// The kernels doing f32 arithmetic (decoded weights, convolutions). They keep the
/// reference's order of operations and never fuse a multiply into an add, so they are
/// bit-identical to the scalar code too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum F32Kernel {
    /// Plain Rust slice loops.
    Scalar,
    /// x86 AVX2 (+F16C for the f16 / FP8 decodes).
    Avx2,
    /// x86 AVX-512F (with AVX2 and F16C): convolutions vectorised at 512 bits; linear
    /// layers use the AVX2 tiles.
    Avx512,
}

impl F32Kernel {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            F32Kernel::Scalar => "scalar",
            F32Kernel::Avx2 => "avx2",
            F32Kernel::Avx512 => "avx512",
        }
    }
}

/// Let the kernels use `features` from now on (added to what is already installed).
///
/// # Safety
///
/// The CPU running this program must implement every feature in `features` (a port
/// learns that from the CPU itself, e.g. `is_x86_feature_detected!`); the kernels run
/// instructions of every installed feature without checking again.
pub unsafe fn install(features: Cpu) {
    INSTALLED.fetch_or(features.0, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_algebra_and_kernel_choice() {
        let avx2 = Cpu::AVX2.union(Cpu::F16C).union(Cpu::FMA);
        assert!(avx2.contains(Cpu::AVX2));
        assert!(!avx2.contains(Cpu::AVX512F));
        assert_eq!(avx2.without(Cpu::FMA).intersect(Cpu::FMA), Cpu::SCALAR);
        assert_eq!(avx2.q8_kernel(), Q8Kernel::Avx2);
        assert_eq!(avx2.f32_kernel(), F32Kernel::Avx2);
        assert_eq!(Cpu::AVX2.q8_kernel(), Q8Kernel::Scalar, "needs F16C too");
        let zen4 = avx2
            .union(Cpu::AVX512F)
            .union(Cpu::AVX512BW)
            .union(Cpu::AVX512VL)
            .union(Cpu::AVX512VNNI);
        assert_eq!(zen4.q8_kernel(), Q8Kernel::Avx512Vnni);
        assert_eq!(zen4.without(Cpu::AVX512VNNI).q8_kernel(), Q8Kernel::Avx2);
        assert_eq!(avx2.union(Cpu::AVXVNNI).q8_kernel(), Q8Kernel::AvxVnni);
        assert_eq!(Cpu::SCALAR.q8_kernel(), Q8Kernel::Scalar);
        assert_eq!(std::format!("{avx2:?}"), "Cpu[avx2 fma f16c]");
    }

    #[test]
    fn requests_never_exceed_what_is_active() {
        let all = Cpu::from_bits(u32::MAX);
        assert_eq!(all.usable(), Cpu::active());
        assert_eq!(Cpu::SCALAR.usable(), Cpu::SCALAR);
        assert!(Cpu::active().contains(Cpu::compiled()));
    }
}
