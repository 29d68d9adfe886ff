//! A weight store on SPI NOR flash, read through `embedded_hal::spi::SpiDevice` with a
//! small page cache living in caller-provided memory (normally a slice of the arena).
//!
//! Reads use the plain READ commands every NOR part supports: `0x03` with a 3-byte address
//! for parts up to 16 MiB, `0x13` with a 4-byte address above that. `0x13` is the dedicated
//! 4-byte read, so the part never has to be switched into 4-byte address mode.

use core::fmt;

use embedded_hal::spi::{Operation, SpiDevice};

use super::weights::{StoreSize, WeightStore};
use crate::{Error, ErrorKind, ErrorType};

/// The largest part a 3-byte address reaches.
const THREE_BYTE_LIMIT: u64 = 1 << 24;
/// The largest part a 4-byte address reaches.
const FOUR_BYTE_LIMIT: u64 = 1 << 32;
/// Smallest accepted cache page: below this the 4-5 command bytes dominate every fill.
pub const MIN_PAGE_SIZE: usize = 16;
/// Largest accepted cache page.
pub const MAX_PAGE_SIZE: usize = 64 * 1024;
/// Marks a cache slot that holds no page.
const EMPTY: u64 = u64::MAX;

/// How the read command addresses the flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AddressMode {
    /// `0x03` READ, 3 address bytes: parts up to 16 MiB.
    ThreeByte,
    /// `0x13` READ4B, 4 address bytes: parts up to 4 GiB.
    FourByte,
}

impl AddressMode {
    /// The narrowest mode that reaches every byte of a part of `flash_size` bytes.
    pub const fn for_size(flash_size: u64) -> Self {
        if flash_size <= THREE_BYTE_LIMIT {
            Self::ThreeByte
        } else {
            Self::FourByte
        }
    }

    /// The read opcode this mode sends.
    pub const fn read_opcode(self) -> u8 {
        match self {
            Self::ThreeByte => 0x03,
            Self::FourByte => 0x13,
        }
    }

    const fn reach(self) -> u64 {
        match self {
            Self::ThreeByte => THREE_BYTE_LIMIT,
            Self::FourByte => FOUR_BYTE_LIMIT,
        }
    }
}

/// Why a [`SpiNorStore`] could not be built or could not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SpiNorError<E> {
    /// The SPI device failed.
    Spi(E),
    /// The requested range reaches past the end of the flash.
    OutOfRange {
        /// First byte requested.
        offset: u64,
        /// Bytes requested.
        len: usize,
        /// Size of the flash.
        size: u64,
    },
    /// The page size is not a power of two in `MIN_PAGE_SIZE..=MAX_PAGE_SIZE`.
    BadPageSize(usize),
    /// The cache buffer is shorter than pages x page size, or there are no pages.
    CacheTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// The flash is larger than the address mode reaches.
    FlashTooLarge(u64),
}

impl<E: embedded_hal::spi::Error> Error for SpiNorError<E> {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Spi(_) => ErrorKind::Io,
            Self::OutOfRange { .. } => ErrorKind::OutOfRange,
            Self::BadPageSize(_) | Self::CacheTooSmall { .. } | Self::FlashTooLarge(_) => {
                ErrorKind::InvalidInput
            }
        }
    }
}

/// Counters for judging the cache size; reset with [`SpiNorStore::reset_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CacheStats {
    /// Page lookups served from the cache.
    pub hits: u64,
    /// Page lookups that had to fill a page from flash.
    pub misses: u64,
    /// Reads at least as large as the whole cache, sent straight to flash.
    pub bypassed: u64,
    /// SPI transactions issued.
    pub transactions: u64,
    /// Data bytes clocked in from flash (command bytes not counted).
    pub bytes_transferred: u64,
}

/// Weights on SPI NOR flash with an `N`-page read cache.
///
/// The cache is `N` pages of `page_size` bytes carved from a caller buffer; replacement is
/// least-recently-used. Reads at least as large as the whole cache skip it, so streaming a
/// big tensor does not evict the small, hot ones.
///
/// The cache assumes the flash does not change underneath it: after programming the part
/// through another handle, call [`invalidate`](Self::invalidate).
pub struct SpiNorStore<'a, SPI, const N: usize> {
    spi: SPI,
    flash_size: u64,
    mode: AddressMode,
    page_shift: u32,
    cache: &'a mut [u8],
    /// Flash page index held by each slot, or `EMPTY`.
    tags: [u64; N],
    /// `tick` value at each slot's last use; the smallest is evicted.
    last_use: [u64; N],
    tick: u64,
    stats: CacheStats,
}

impl<'a, SPI: SpiDevice, const N: usize> SpiNorStore<'a, SPI, N> {
    /// A store over a part of `flash_size` bytes, picking the address mode from the size.
    ///
    /// `page_size` must be a power of two in [`MIN_PAGE_SIZE`]`..=`[`MAX_PAGE_SIZE`]; the
    /// cache uses the first `N * page_size` bytes of `cache`.
    pub fn new(
        spi: SPI,
        flash_size: u64,
        page_size: usize,
        cache: &'a mut [u8],
    ) -> Result<Self, SpiNorError<SPI::Error>> {
        Self::with_address_mode(
            spi,
            flash_size,
            AddressMode::for_size(flash_size),
            page_size,
            cache,
        )
    }

    /// As [`new`](Self::new), with an explicit address mode (some parts of 16 MiB or less
    /// also understand `0x13`; some larger ones are strapped to 3-byte mode and banked).
    pub fn with_address_mode(
        spi: SPI,
        flash_size: u64,
        mode: AddressMode,
        page_size: usize,
        cache: &'a mut [u8],
    ) -> Result<Self, SpiNorError<SPI::Error>> {
        if !page_size.is_power_of_two() || !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(SpiNorError::BadPageSize(page_size));
        }
        if flash_size > mode.reach() {
            return Err(SpiNorError::FlashTooLarge(flash_size));
        }
        let given = cache.len();
        let needed = match N.checked_mul(page_size) {
            Some(n) if n > 0 && n <= given => n,
            _ => {
                return Err(SpiNorError::CacheTooSmall {
                    needed: N.saturating_mul(page_size).max(page_size),
                    given,
                });
            }
        };
        let (cache, _) = cache.split_at_mut(needed);
        Ok(Self {
            spi,
            flash_size,
            mode,
            page_shift: page_size.trailing_zeros(),
            cache,
            tags: [EMPTY; N],
            last_use: [0; N],
            tick: 0,
            stats: CacheStats::default(),
        })
    }

    /// Bytes per cache page.
    pub fn page_size(&self) -> usize {
        1 << self.page_shift
    }

    /// The read command in use.
    pub fn address_mode(&self) -> AddressMode {
        self.mode
    }

    /// Counters since construction or the last [`reset_stats`](Self::reset_stats).
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Zero the counters.
    pub fn reset_stats(&mut self) {
        self.stats = CacheStats::default();
    }

    /// Forget every cached page.
    pub fn invalidate(&mut self) {
        self.tags = [EMPTY; N];
    }

    /// Give back the SPI device (and end the borrow of the cache buffer).
    pub fn release(self) -> SPI {
        self.spi
    }

    /// One READ transaction: `buf.len()` bytes from flash address `addr`.
    fn read_flash(&mut self, addr: u64, buf: &mut [u8]) -> Result<(), SpiNorError<SPI::Error>> {
        let out_of_range = SpiNorError::OutOfRange {
            offset: addr,
            len: buf.len(),
            size: self.flash_size,
        };
        let addr = u32::try_from(addr).map_err(|_| out_of_range)?;
        let [a3, a2, a1, a0] = addr.to_be_bytes();
        let op = self.mode.read_opcode();
        let cmd4;
        let cmd5;
        let cmd: &[u8] = match self.mode {
            AddressMode::ThreeByte => {
                cmd4 = [op, a2, a1, a0];
                &cmd4
            }
            AddressMode::FourByte => {
                cmd5 = [op, a3, a2, a1, a0];
                &cmd5
            }
        };
        self.stats.transactions += 1;
        let len = buf.len() as u64;
        self.spi
            .transaction(&mut [Operation::Write(cmd), Operation::Read(buf)])
            .map_err(SpiNorError::Spi)?;
        self.stats.bytes_transferred += len;
        Ok(())
    }

    /// The slot holding flash page `page`, filling one on a miss.
    fn slot_for(&mut self, page: u64) -> Result<usize, SpiNorError<SPI::Error>> {
        self.tick += 1;
        if let Some(slot) = self.tags.iter().position(|&t| t == page) {
            self.stats.hits += 1;
            if let Some(stamp) = self.last_use.get_mut(slot) {
                *stamp = self.tick;
            }
            return Ok(slot);
        }
        self.stats.misses += 1;
        // Empty slots have never been used, so the least-recent stamp also finds them first.
        let victim = (0..N)
            .min_by_key(|&s| match self.tags.get(s) {
                Some(&EMPTY) | None => 0,
                Some(_) => self.last_use.get(s).copied().unwrap_or(0),
            })
            .unwrap_or(0);
        let page_size = self.page_size();
        let base = page << self.page_shift;
        let fill = self.flash_size.saturating_sub(base).min(page_size as u64) as usize;
        let start = victim * page_size;
        let out_of_range = SpiNorError::OutOfRange {
            offset: base,
            len: fill,
            size: self.flash_size,
        };
        // Detach the slot from its old page first, so a failed fill leaves no stale tag.
        if let Some(tag) = self.tags.get_mut(victim) {
            *tag = EMPTY;
        }
        // Take the cache out of `self` for the transaction, which also borrows `self`.
        let cache = core::mem::take(&mut self.cache);
        let result = match cache.get_mut(start..start + fill) {
            Some(dst) => self.read_flash(base, dst),
            None => Err(out_of_range),
        };
        self.cache = cache;
        result?;
        if let (Some(tag), Some(stamp)) = (self.tags.get_mut(victim), self.last_use.get_mut(victim))
        {
            *tag = page;
            *stamp = self.tick;
        }
        Ok(victim)
    }
}

impl<SPI, const N: usize> fmt::Debug for SpiNorStore<'_, SPI, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiNorStore")
            .field("flash_size", &self.flash_size)
            .field("mode", &self.mode)
            .field("page_size", &(1usize << self.page_shift))
            .field("pages", &N)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<SPI: SpiDevice, const N: usize> ErrorType for SpiNorStore<'_, SPI, N> {
    type Error = SpiNorError<SPI::Error>;
}

impl<SPI: SpiDevice, const N: usize> WeightStore for SpiNorStore<'_, SPI, N> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let (len, size) = (buf.len(), self.flash_size);
        let out_of_range = move || SpiNorError::OutOfRange { offset, len, size };
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => {}
            _ => return Err(out_of_range()),
        }
        if buf.is_empty() {
            return Ok(());
        }
        if buf.len() >= self.cache.len() {
            self.stats.bypassed += 1;
            return self.read_flash(offset, buf);
        }
        let page_size = self.page_size();
        let mut pos = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let page = pos >> self.page_shift;
            // The mask keeps this below page_size, which fits in usize.
            let within = (pos & (page_size as u64 - 1)) as usize;
            let take = (page_size - within).min(rest.len());
            let slot = self.slot_for(page)?;
            let start = slot * page_size + within;
            let src = self
                .cache
                .get(start..start + take)
                .ok_or_else(out_of_range)?;
            let (dst, tail) = rest.split_at_mut(take);
            dst.copy_from_slice(src);
            rest = tail;
            pos += take as u64;
        }
        Ok(())
    }
}

impl<SPI: SpiDevice, const N: usize> StoreSize for SpiNorStore<'_, SPI, N> {
    fn size_bytes(&self) -> u64 {
        self.flash_size
    }
}
