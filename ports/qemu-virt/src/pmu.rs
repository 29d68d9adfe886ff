//! Instruction counting with the Armv8 PMU: event counter 0 counts INST_RETIRED (0x08).
//!
//! QEMU implements INST_RETIRED only with `-icount shift=N`, and then exactly: every
//! retired guest instruction counts once. With FEAT_PMUv3p5 (QEMU's `-cpu max`) event
//! counters are 64 bits wide (PMCR_EL0.LP), so a run of many billions of instructions
//! does not wrap. Without it the firmware falls back to the 64-bit cycle counter, which
//! QEMU drives from virtual time at 1 GHz: with `-icount shift=0` one instruction is one
//! nanosecond, so that too counts instructions.

use core::arch::asm;

use glimpse_bare::Counter;

/// PMCR_EL0: enable, reset event counters, reset the cycle counter, 64-bit cycle counter
/// (LC), 64-bit event counters (LP).
const PMCR_E: u64 = 1 << 0;
const PMCR_P: u64 = 1 << 1;
const PMCR_C: u64 = 1 << 2;
const PMCR_LC: u64 = 1 << 6;
const PMCR_LP: u64 = 1 << 7;
/// Architectural event number of INST_RETIRED.
const INST_RETIRED: u64 = 0x08;
/// ID_AA64DFR0_EL1.PMUVer of FEAT_PMUv3p5.
const PMUV3P5: u64 = 6;

/// What the counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// PMU event counter 0, INST_RETIRED, 64 bits.
    InstRetired,
    /// PMCCNTR_EL0.
    Cycles,
    /// No PMU.
    None,
}

/// The PMU, set up by [`Pmu::start`].
#[derive(Debug)]
pub struct Pmu {
    source: Source,
}

impl Pmu {
    /// Configure and start counting.
    pub fn start() -> Self {
        let dfr0: u64;
        // SAFETY: reading an ID register has no side effect.
        unsafe { asm!("mrs {}, id_aa64dfr0_el1", out(reg) dfr0, options(nomem, nostack)) };
        let ver = (dfr0 >> 8) & 0xF;
        // 0 is no PMU, 0xF an IMPLEMENTATION DEFINED one this code does not know.
        let source = match ver {
            0 | 0xF => Source::None,
            v if v >= PMUV3P5 => Source::InstRetired,
            _ => Source::Cycles,
        };
        if source != Source::None {
            let pmcr = PMCR_E | PMCR_P | PMCR_C | PMCR_LC | PMCR_LP;
            // SAFETY: EL1 owns the PMU (no EL2 here); these writes only configure and
            // enable counter 0 and the cycle counter. Filter bits of 0 count at EL1 and EL0.
            unsafe {
                asm!(
                    "msr pmevtyper0_el0, {ev}",
                    "msr pmccfiltr_el0, xzr",
                    "msr pmcr_el0, {pmcr}",
                    "msr pmcntenset_el0, {en}",
                    "isb",
                    ev = in(reg) INST_RETIRED,
                    pmcr = in(reg) pmcr,
                    en = in(reg) (1u64 << 31) | 1,
                    options(nostack),
                );
            }
        }
        Pmu { source }
    }

    /// How the statistics line names the source.
    pub fn source_name(&self) -> &'static str {
        match self.source {
            Source::InstRetired => "PMU INST_RETIRED",
            Source::Cycles => "PMU cycles at 1 GHz virtual time",
            Source::None => "no PMU",
        }
    }
}

impl Counter for Pmu {
    fn read(&mut self) -> u64 {
        let v: u64;
        match self.source {
            // SAFETY: reading an enabled counter has no side effect; the isb keeps the
            // read from being hoisted over the work it measures.
            Source::InstRetired => unsafe {
                asm!("isb", "mrs {}, pmevcntr0_el0", out(reg) v, options(nostack))
            },
            // SAFETY: as above.
            Source::Cycles => unsafe {
                asm!("isb", "mrs {}, pmccntr_el0", out(reg) v, options(nostack))
            },
            Source::None => v = 0,
        }
        v
    }
}
