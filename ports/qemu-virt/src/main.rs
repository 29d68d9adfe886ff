//! Glimpse firmware for QEMU's aarch64 `virt` board: boots at EL1, turns on the MMU and
//! caches, counts instructions with the PMU, runs the request blob `glimpse sim` placed in
//! memory against the weights image beside it, prints on the PL011 UART and exits through
//! semihosting. Any error, panic or exception prints a line and exits non-zero.
//!
//! Run it with `glimpse sim --port qemu-virt IMAGE.glim --prompt ...`.
#![no_std]
#![no_main]

mod boot;
mod pmu;
mod uart;

use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};

use glimpse_bare::memory::{QEMU_VIRT, Window};
use glimpse_bare::{exit, serve};

unsafe extern "C" {
    static mut __arena_start: u8;
    static __arena_end: u8;
}

/// Set once a panic or an exception is being reported, so a second one inside the report
/// exits at once instead of recursing.
static DYING: AtomicBool = AtomicBool::new(false);

/// The arena: the linker script's ARENA region.
fn arena() -> &'static mut [u8] {
    let start = &raw mut __arena_start;
    let end = &raw const __arena_end;
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: link.x reserves [__arena_start, __arena_end) for the arena alone: it is RAM,
    // outside every section, the stack and the emulator's windows (checked in `run`), and
    // this function is called once, so the slice is the only reference to it.
    unsafe { core::slice::from_raw_parts_mut(start, len) }
}

/// A window of guest memory the emulator filled before reset.
fn window(w: &Window) -> &'static [u8] {
    // SAFETY: the window is RAM on this board (memory.rs; QEMU -m 2G), identity-mapped
    // and never written by the firmware, so a shared slice over it is sound for the
    // program's whole life.
    unsafe { core::slice::from_raw_parts(w.addr as *const u8, w.len as usize) }
}

fn run() -> i32 {
    let mut out = uart::Pl011;
    let map = &QEMU_VIRT;
    let arena = arena();
    let arena_window = Window {
        addr: arena.as_ptr() as u64,
        len: arena.len() as u64,
    };
    let cpu = glimpse_bare::cpu::detect_and_install();
    let _ = writeln!(
        out,
        "glimpse qemu-virt: aarch64 EL{}, MMU and caches on, {:?}, arena {} MiB at {:#x}",
        boot::current_el(),
        cpu,
        arena.len() >> 20,
        arena_window.addr
    );
    if arena_window.overlaps(&map.request) || arena_window.overlaps(&map.weights) {
        let _ = writeln!(
            out,
            "error: the arena overlaps the request or weights window"
        );
        return exit::FAILURE;
    }
    let mut pmu = pmu::Pmu::start();
    let source = pmu.source_name();
    serve(
        map,
        window(&map.request),
        window(&map.weights),
        arena,
        &mut out,
        &mut pmu,
        source,
    )
}

/// Entered from `_start` with a stack, FP/SIMD and `.bss` ready.
#[unsafe(no_mangle)]
extern "C" fn glimpse_boot() -> ! {
    boot::enable_mmu();
    let code = run();
    semihosting::process::exit(code)
}

/// Entered from every exception vector: nothing here is expected to trap.
#[unsafe(no_mangle)]
extern "C" fn glimpse_fault(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    if !DYING.swap(true, Ordering::SeqCst) {
        let _ = writeln!(
            uart::Pl011,
            "\nfault: {} exception, ESR {esr:#x} (class {:#x}), ELR {elr:#x}, FAR {far:#x}",
            boot::vector_name(kind),
            esr >> 26,
        );
    }
    semihosting::process::exit(exit::FAULT)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !DYING.swap(true, Ordering::SeqCst) {
        glimpse_bare::console::print_panic(&mut uart::Pl011, info);
    }
    semihosting::process::exit(exit::PANIC)
}
