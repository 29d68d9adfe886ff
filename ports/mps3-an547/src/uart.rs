//! The CMSDK APB UART0 of the AN547 FPGA image (secure alias 0x5930_3000), transmit only.

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// UART0 through the secure alias: the firmware runs in Secure state with the SAU off,
/// and the peripheral protection controllers leave every port secure after reset.
const BASE: usize = 0x5930_3000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
/// STATE: transmit buffer full.
const STATE_TX_FULL: u32 = 1 << 0;
/// CTRL: transmitter enable.
const CTRL_TX_EN: u32 = 1 << 0;
/// The AN547's peripheral clock.
const PCLK_HZ: u32 = 32_000_000;
const BAUD: u32 = 115_200;
/// Status polls before a byte is written anyway: far longer than one character takes at
/// 115200 baud on the board, instant in QEMU.
const TX_POLLS: u32 = 1_000_000;

/// The console UART.
#[derive(Debug)]
pub struct CmsdkUart;

impl CmsdkUart {
    /// Set the baud rate and enable the transmitter. Idempotent, so fault and panic
    /// handlers call it too, in case they run before `main` did.
    pub fn init() -> Self {
        // SAFETY: BASE is UART0's register block; these two writes configure it before
        // any other code uses it.
        unsafe {
            write_volatile((BASE + BAUDDIV) as *mut u32, PCLK_HZ / BAUD);
            write_volatile((BASE + CTRL) as *mut u32, CTRL_TX_EN);
        }
        CmsdkUart
    }

    fn put(&mut self, byte: u8) {
        // SAFETY: UART0's status and data registers, enabled by `init`.
        unsafe {
            // Bounded: a transmitter that never drains (disabled, or broken) must not
            // turn an error report into a hang; the exit code still reports the error.
            for _ in 0..TX_POLLS {
                if read_volatile((BASE + STATE) as *const u32) & STATE_TX_FULL == 0 {
                    break;
                }
            }
            write_volatile((BASE + DATA) as *mut u32, u32::from(byte));
        }
    }
}

impl fmt::Write for CmsdkUart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.put(b);
        }
        Ok(())
    }
}
