//! Glimpse firmware for the Arm MPS3 board with the AN547 image (Cortex-M55, Helium),
//! in QEMU (`-M mps3-an547`) or on the board: runs the request blob `glimpse sim` placed
//! in DDR against the weights image at the start of DDR, prints on UART0 and exits through
//! semihosting. Any error, panic or fault prints a line and exits non-zero.
//!
//! Run it with `glimpse sim --port mps3-an547 IMAGE.glim --prompt ...`.
#![no_std]
#![no_main]

mod counter;
mod uart;

use core::fmt::Write;
use core::ptr::read_volatile;
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::{ExceptionFrame, entry, exception};
use glimpse_bare::memory::{MPS3_AN547, Window};
use glimpse_bare::{exit, serve};

unsafe extern "C" {
    static mut __arena_start: u8;
    static __arena_end: u8;
}

/// Set once a panic or a fault is being reported, so a second one inside the report exits
/// at once instead of recursing.
static DYING: AtomicBool = AtomicBool::new(false);

/// Configurable Fault Status, HardFault Status, MemManage and BusFault address registers.
const SCB_CFSR: usize = 0xE000_ED28;
const SCB_HFSR: usize = 0xE000_ED2C;
const SCB_MMFAR: usize = 0xE000_ED34;
const SCB_BFAR: usize = 0xE000_ED38;

/// The arena: memory.x's `__arena_start..__arena_end`, in DDR.
fn arena() -> &'static mut [u8] {
    let start = &raw mut __arena_start;
    let end = &raw const __arena_end;
    let len = (end as usize).saturating_sub(start as usize);
    // SAFETY: memory.x reserves [__arena_start, __arena_end) in DDR for the arena alone:
    // no section, the stack or the emulator's windows lie there (checked in `run`), and
    // this function is called once, so the slice is the only reference to it.
    unsafe { core::slice::from_raw_parts_mut(start, len) }
}

/// A window of guest memory the emulator filled before reset.
fn window(w: &Window) -> &'static [u8] {
    // SAFETY: the window is DDR on this board (memory.rs), never written by the firmware,
    // so a shared slice over it is sound for the program's whole life.
    unsafe { core::slice::from_raw_parts(w.addr as *const u8, w.len as usize) }
}

fn run() -> i32 {
    let mut out = uart::CmsdkUart::init();
    let map = &MPS3_AN547;
    let arena = arena();
    let arena_window = Window {
        addr: arena.as_ptr() as u64,
        len: arena.len() as u64,
    };
    let _ = writeln!(
        out,
        "glimpse mps3-an547: Cortex-M55 (Helium), arena {} MiB at {:#x}",
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
    let mut ticks = counter::SysTickCounter::start();
    serve(
        map,
        window(&map.request),
        window(&map.weights),
        arena,
        &mut out,
        &mut ticks,
        "icount virtual time, SysTick at 32 MHz",
    )
}

#[entry]
fn main() -> ! {
    let code = run();
    semihosting::process::exit(code)
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    if !DYING.swap(true, Ordering::SeqCst) {
        // SAFETY: reads of the SCB's fault status and address registers.
        let (cfsr, hfsr, mmfar, bfar) = unsafe {
            (
                read_volatile(SCB_CFSR as *const u32),
                read_volatile(SCB_HFSR as *const u32),
                read_volatile(SCB_MMFAR as *const u32),
                read_volatile(SCB_BFAR as *const u32),
            )
        };
        let _ = writeln!(
            uart::CmsdkUart::init(),
            "\nfault: HardFault at PC {:#010x} (LR {:#010x}), CFSR {cfsr:#010x}, HFSR {hfsr:#010x}, MMFAR {mmfar:#010x}, BFAR {bfar:#010x}",
            ef.pc(),
            ef.lr(),
        );
    }
    semihosting::process::exit(exit::FAULT)
}

#[exception]
unsafe fn DefaultHandler(irqn: i16) {
    if !DYING.swap(true, Ordering::SeqCst) {
        let _ = writeln!(
            uart::CmsdkUart::init(),
            "\nfault: unexpected exception or interrupt {irqn}"
        );
    }
    semihosting::process::exit(exit::FAULT)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !DYING.swap(true, Ordering::SeqCst) {
        glimpse_bare::console::print_panic(&mut uart::CmsdkUart::init(), info);
    }
    semihosting::process::exit(exit::PANIC)
}
