//! A whole-run instruction count on a Cortex-M55 in QEMU, from SysTick.
//!
//! M-profile QEMU has no instruction counter a guest can read: the DWT cycle counter is
//! not modelled and semihosting's SYS_ELAPSED and SYS_CLOCK report host time. What is
//! exact is virtual time under `-icount shift=0`: QEMU advances the virtual clock by
//! exactly 1 ns per executed instruction (2^shift ns), and the firmware never sleeps, so
//! virtual time never warps ahead. SysTick, clocked from the processor clock, counts that
//! virtual time at [`CPU_HZ`]. Counting its wraps in the SysTick exception gives a 64-bit
//! tick count, and `ticks * 1e9 / CPU_HZ` is the instruction count, to within one tick
//! (1e9 / CPU_HZ instructions) and the few instructions the exception itself takes each
//! wrap (one per 2^24 ticks).
//!
//! On a real board the same counter reads processor cycles instead.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m_rt::exception;
use glimpse_bare::Counter;

/// Processor clock of the AN547 image in QEMU (and on the FPGA board).
pub const CPU_HZ: u64 = 32_000_000;

const SYST_CSR: usize = 0xE000_E010;
const SYST_RVR: usize = 0xE000_E014;
const SYST_CVR: usize = 0xE000_E018;
const SCB_ICSR: usize = 0xE000_ED04;
/// CSR: enable, interrupt on wrap, processor clock as the source.
const CSR_ENABLE: u32 = 1 << 0;
const CSR_TICKINT: u32 = 1 << 1;
const CSR_CLKSOURCE: u32 = 1 << 2;
/// ICSR: the SysTick exception is pending.
const ICSR_PENDSTSET: u32 = 1 << 26;
/// SysTick's counter is 24 bits wide.
const RELOAD: u32 = 0x00FF_FFFF;

/// Wraps of the 24-bit counter so far.
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// SysTick as a 64-bit free-running counter.
#[derive(Debug)]
pub struct SysTickCounter;

impl SysTickCounter {
    /// Start SysTick from zero.
    pub fn start() -> Self {
        WRAPS.store(0, Ordering::Relaxed);
        // SAFETY: the SysTick registers belong to this firmware alone; reload, clear, then
        // enable, as the architecture asks.
        unsafe {
            write_volatile(SYST_RVR as *mut u32, RELOAD);
            write_volatile(SYST_CVR as *mut u32, 0);
            write_volatile(
                SYST_CSR as *mut u32,
                CSR_ENABLE | CSR_TICKINT | CSR_CLKSOURCE,
            );
        }
        SysTickCounter
    }

    /// Ticks since [`SysTickCounter::start`].
    pub fn ticks(&self) -> u64 {
        loop {
            let w0 = WRAPS.load(Ordering::SeqCst);
            // SAFETY: reads of SysTick's current value and of the SCB's ICSR, no side
            // effects.
            let (pend0, cvr, pend1) = unsafe {
                (
                    read_volatile(SCB_ICSR as *const u32) & ICSR_PENDSTSET,
                    read_volatile(SYST_CVR as *const u32),
                    read_volatile(SCB_ICSR as *const u32) & ICSR_PENDSTSET,
                )
            };
            let w1 = WRAPS.load(Ordering::SeqCst);
            if w0 != w1 || pend0 != pend1 {
                continue; // the counter wrapped during the reads: try again
            }
            // A wrap whose exception is still pending is not in WRAPS yet.
            let wraps = u64::from(w1) + u64::from(pend1 != 0);
            return wraps * (u64::from(RELOAD) + 1) + u64::from(RELOAD.saturating_sub(cvr));
        }
    }
}

impl Counter for SysTickCounter {
    fn read(&mut self) -> u64 {
        // Instructions: 1 ns of icount virtual time each.
        let ns = u128::from(self.ticks()) * 1_000_000_000 / u128::from(CPU_HZ);
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}
