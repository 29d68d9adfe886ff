//! Where each simulated board's emulator places the request blob and the weights image:
//! the one definition both the firmware (which reads there) and `glimpse sim` (which
//! passes the addresses to QEMU's `-device loader`) use.
//!
//! The arena is not here: it is a linker-script region of each firmware (`__arena_start`,
//! `__arena_end` in its `memory.x`), checked at boot not to overlap these windows.

/// A range of guest physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Window {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Window {
    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.addr + self.len
    }

    /// Whether the two windows share an address.
    pub const fn overlaps(&self, other: &Window) -> bool {
        self.addr < other.end() && other.addr < self.end()
    }
}

/// One board's memory map, as far as the host needs to know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MemoryMap {
    /// The port's name (`--port` of `glimpse sim`, the directory under `ports/`).
    pub port: &'static str,
    /// The request blob.
    pub request: Window,
    /// The weights image; the longest image the board takes is `weights.len`.
    pub weights: Window,
}

/// QEMU `-M virt` with `-m 2G`: RAM from 0x4000_0000 to 0xC000_0000. QEMU puts the device
/// tree at the start of RAM, the firmware links at 0x4010_0000, the arena follows the
/// request window, and the weights take the upper 1.5 GiB (64-byte aligned, as the image
/// reader and aarch64's strict alignment want).
pub const QEMU_VIRT: MemoryMap = MemoryMap {
    port: "qemu-virt",
    request: Window {
        addr: 0x4100_0000,
        len: 16 << 20,
    },
    weights: Window {
        addr: 0x6000_0000,
        len: 1536 << 20,
    },
};

/// QEMU `-M mps3-an547`: the weights at the start of the 2 GiB DDR (0x6000_0000), as on
/// the board. Only 0x6000_0000..0xA000_0000 is Normal memory in the ARMv8-M default map
/// (above it is Device: no unaligned access, no caching), so weights, arena and request
/// all stay below 0xA000_0000: 768 MiB of weights, then the arena, then the request.
pub const MPS3_AN547: MemoryMap = MemoryMap {
    port: "mps3-an547",
    request: Window {
        addr: 0x9F00_0000,
        len: 16 << 20,
    },
    weights: Window {
        addr: 0x6000_0000,
        len: 768 << 20,
    },
};

/// Every simulated board.
pub const PORTS: [MemoryMap; 2] = [QEMU_VIRT, MPS3_AN547];

/// The board called `port`.
pub fn by_name(port: &str) -> Option<&'static MemoryMap> {
    PORTS.iter().find(|m| m.port == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_disjoint_and_aligned() {
        for m in PORTS {
            assert!(!m.request.overlaps(&m.weights), "{}", m.port);
            // 4 KiB: QEMU's loader and the MMU both work in pages; 64 covers the image.
            assert_eq!(m.weights.addr % 4096, 0);
            assert_eq!(m.request.addr % 4096, 0);
            assert_eq!(by_name(m.port), Some(&m));
        }
        assert!(by_name("nope").is_none());
        let a = Window { addr: 0, len: 10 };
        assert!(a.overlaps(&Window { addr: 9, len: 1 }));
        assert!(!a.overlaps(&Window { addr: 10, len: 1 }));
    }
}
