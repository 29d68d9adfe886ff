//! CPU features a bare-metal port learns from the CPU itself and hands to the core's
//! kernels (the host port does the same with `is_*_feature_detected!`).

use glimpse_core::kernels::cpu::Cpu;

/// Read the aarch64 ID registers at EL1 and install NEON (AdvSIMD) and the dot-product
/// extension (FEAT_DotProd, `sdot`) when the CPU has them. Returns what is active
/// afterwards. Without this the Q8_0 kernels stay on the portable loops: a binary for
/// `aarch64-unknown-none` is not compiled with `+dotprod`.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub fn detect_and_install() -> Cpu {
    let (isar0, pfr0): (u64, u64);
    // SAFETY: reading ID registers at EL1 has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, ID_AA64ISAR0_EL1", out(reg) isar0, options(nomem, nostack));
        core::arch::asm!("mrs {}, ID_AA64PFR0_EL1", out(reg) pfr0, options(nomem, nostack));
    }
    let features = from_id_registers(isar0, pfr0);
    // SAFETY: every feature comes from this CPU's own ID registers.
    unsafe { glimpse_core::kernels::cpu::install(features) };
    Cpu::active()
}

/// The features the aarch64 ID register values `isar0` (ID_AA64ISAR0_EL1) and `pfr0`
/// (ID_AA64PFR0_EL1) say the CPU has: AdvSIMD is PFR0 bits 23..20 (0 or 1 = present,
/// 0xF = absent), DotProd is ISAR0 bits 47..44 (>= 1) and needs AdvSIMD.
pub fn from_id_registers(isar0: u64, pfr0: u64) -> Cpu {
    let advsimd = (pfr0 >> 20) & 0xF;
    if advsimd == 0xF {
        return Cpu::SCALAR;
    }
    let mut c = Cpu::NEON;
    if (isar0 >> 44) & 0xF >= 1 {
        c = c.union(Cpu::DOTPROD);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_register_fields() {
        // QEMU -cpu max style: AdvSIMD 1 (with FP16), DotProd 1.
        assert_eq!(
            from_id_registers(1 << 44, 1 << 20),
            Cpu::NEON.union(Cpu::DOTPROD)
        );
        // Cortex-A53: AdvSIMD 0, no DotProd.
        assert_eq!(from_id_registers(0, 0), Cpu::NEON);
        // No AdvSIMD at all: nothing, whatever ISAR0 says.
        assert_eq!(from_id_registers(1 << 44, 0xF << 20), Cpu::SCALAR);
    }
}
