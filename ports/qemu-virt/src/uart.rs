//! The PL011 UART at 0x0900_0000 on QEMU's `virt` board, transmit only.
//!
//! QEMU's PL011 transmits without being configured; a real board's boot loader has set
//! the baud rate by the time this firmware runs, so there is no init sequence here.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

const BASE: usize = 0x0900_0000;
const DR: usize = 0x00;
const FR: usize = 0x18;
/// FR: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// Status polls before a byte is written anyway: far longer than a character takes.
const TX_POLLS: u32 = 1_000_000;

/// The console UART.
#[derive(Debug)]
pub struct Pl011;

impl Pl011 {
    fn put(&mut self, byte: u8) {
        // SAFETY: BASE is the PL011's MMIO block, mapped as Device memory by the boot code
        // (and identity-mapped before the MMU is on); FR is read-only status and DR takes
        // one byte per write.
        unsafe {
            // Bounded: a transmitter that never drains must not turn an error report into
            // a hang; the exit code still reports the error.
            for _ in 0..TX_POLLS {
                if read_volatile((BASE + FR) as *const u32) & FR_TXFF == 0 {
                    break;
                }
            }
            write_volatile((BASE + DR) as *mut u32, u32::from(byte));
        }
    }
}

impl fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.put(b);
        }
        Ok(())
    }
}
