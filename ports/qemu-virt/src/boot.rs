//! Reset to Rust on an AArch64 core at EL1: stack, FP/SIMD, exception vectors, `.bss`, then
//! an identity-mapped MMU with caches on (`enable_mmu`).
//!
//! Without the MMU every data access is Device-nGnRnE: uncached and, on hardware, trapping
//! on any unaligned access; the int8 kernels would crawl. One level-1 table of 1 GiB blocks
//! is enough for this board: the low gigabyte (flash, GIC, PL011) as Device memory, the
//! two RAM gigabytes as Normal write-back memory, the rest unmapped so a stray pointer
//! faults instead of reading nothing.

use core::arch::{asm, global_asm};

global_asm!(
    r#"
    .section .text.boot, "ax"
    .global _start
_start:
    // Only core 0 runs the firmware; any other core parks.
    mrs     x0, mpidr_el1
    and     x0, x0, #0xff
    cbnz    x0, 9f
    ldr     x0, =__stack_top
    mov     sp, x0
    // FP/SIMD on at EL1 and EL0 before any Rust code: the compiler uses vector registers
    // for copies and the kernels for arithmetic.
    mov     x0, #(3 << 20)
    msr     cpacr_el1, x0
    ldr     x0, =glimpse_vectors
    msr     vbar_el1, x0
    isb
    ldr     x0, =__bss_start
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:  bl      glimpse_boot
9:  wfe
    b       9b

    // Sixteen entries (current EL with SP0 / SPx, lower EL AArch64 / AArch32; each
    // synchronous, IRQ, FIQ, SError). Every one reports and exits: none returns.
    .section .text.vectors, "ax"
    .balign 2048
glimpse_vectors:
    .irp kind, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 128
    mov     x0, #\kind
    mrs     x1, esr_el1
    mrs     x2, elr_el1
    mrs     x3, far_el1
    b       glimpse_fault
    .endr
"#
);

/// MAIR_EL1: attribute 0 is Device-nGnRnE (encoding 0x00), attribute 1 is Normal, inner
/// and outer write-back, read- and write-allocate (0xFF).
const MAIR: u64 = 0xFF << 8;
const ATTR_DEVICE: u64 = 0 << 2;
const ATTR_NORMAL: u64 = 1 << 2;
/// Valid block descriptor (level 1: 1 GiB).
const BLOCK: u64 = 0b01;
/// Access flag: set, or the first access faults.
const AF: u64 = 1 << 10;
/// Inner shareable.
const SH_INNER: u64 = 0b11 << 8;
/// Execute-never at EL1 and EL0: device memory must never be fetched from.
const XN: u64 = (1 << 53) | (1 << 54);

/// TCR_EL1: 32-bit input addresses (T0SZ = 32, so the walk starts at level 1 with four
/// entries), 4 KiB granule, table walks cacheable (write-back) and inner shareable, TTBR1
/// walks disabled (EPD1), 32-bit physical addresses (IPS = 0).
const TCR: u64 = 32 | (0b01 << 8) | (0b01 << 10) | (0b11 << 12) | (1 << 23);

/// SCTLR_EL1 bits: MMU, data cache, instruction cache.
const SCTLR_M: u64 = 1 << 0;
const SCTLR_A: u64 = 1 << 1;
const SCTLR_C: u64 = 1 << 2;
const SCTLR_I: u64 = 1 << 12;

#[repr(C, align(4096))]
struct Table([u64; 4]);

/// A level-1 block descriptor mapping the `gib`-th gigabyte to itself.
const fn block(gib: u64, attrs: u64) -> u64 {
    (gib << 30) | BLOCK | AF | attrs
}

static LEVEL1: Table = Table([
    // 0x0000_0000: flash, GIC, UART, RTC, virtio.
    block(0, ATTR_DEVICE | XN),
    // 0x4000_0000, 0x8000_0000: the 2 GiB of RAM.
    block(1, ATTR_NORMAL | SH_INNER),
    block(2, ATTR_NORMAL | SH_INNER),
    // 0xC000_0000: nothing (PCIe windows are not used).
    0,
]);

/// Identity-map the address space and turn on the MMU and both caches.
pub fn enable_mmu() {
    let table = &raw const LEVEL1 as u64;
    // SAFETY: the table maps every address this firmware touches (code, stack, windows,
    // arena, UART) to itself, so execution continues at the same addresses once SCTLR is
    // written; TLBs and the instruction cache are invalidated first so no stale entry
    // from before reset is used. Alignment checking (A) stays off: the core's code is
    // compiled with strict alignment anyway, and Normal memory allows unaligned access.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {table}",
            "dsb ish",
            "isb",
            "tlbi vmalle1",
            "ic iallu",
            "dsb ish",
            "isb",
            "mrs {tmp}, sctlr_el1",
            "orr {tmp}, {tmp}, {set}",
            "bic {tmp}, {tmp}, {clear}",
            "msr sctlr_el1, {tmp}",
            "isb",
            mair = in(reg) MAIR,
            tcr = in(reg) TCR,
            table = in(reg) table,
            set = in(reg) SCTLR_M | SCTLR_C | SCTLR_I,
            clear = in(reg) SCTLR_A,
            tmp = out(reg) _,
            options(nostack),
        );
    }
}

/// The exception level the firmware runs at.
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effect.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    (el >> 2) & 3
}

/// Name of a vector-table entry.
pub fn vector_name(kind: u64) -> &'static str {
    const NAMES: [&str; 16] = [
        "synchronous (EL1, SP0)",
        "IRQ (EL1, SP0)",
        "FIQ (EL1, SP0)",
        "SError (EL1, SP0)",
        "synchronous",
        "IRQ",
        "FIQ",
        "SError",
        "synchronous (lower EL, AArch64)",
        "IRQ (lower EL, AArch64)",
        "FIQ (lower EL, AArch64)",
        "SError (lower EL, AArch64)",
        "synchronous (lower EL, AArch32)",
        "IRQ (lower EL, AArch32)",
        "FIQ (lower EL, AArch32)",
        "SError (lower EL, AArch32)",
    ];
    NAMES.get(kind as usize).copied().unwrap_or("unknown")
}
