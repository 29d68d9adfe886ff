//! The weight store: where the weights image is read from (XIP flash, mmap, SPI flash).

use crate::{Error, ErrorKind, ErrorType};

/// Random-access, read-only storage holding a weights image.
pub trait WeightStore: ErrorType {
    /// Fill all of `buf` with the bytes starting at `offset`.
    ///
    /// A range reaching past the end of the store is an error of kind
    /// [`ErrorKind::OutOfRange`], never a short read.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error>;
}

impl<T: WeightStore + ?Sized> WeightStore for &mut T {
    #[inline]
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        T::read(self, offset, buf)
    }
}

/// A store whose size is known up front, so the core can bound-check a header before
/// reading anything it points at.
///
/// Kept apart from [`WeightStore`] so that each trait has one required method.
pub trait StoreSize {
    /// Size of the store in bytes.
    fn size_bytes(&self) -> u64;
}

impl<T: StoreSize + ?Sized> StoreSize for &mut T {
    #[inline]
    fn size_bytes(&self) -> u64 {
        T::size_bytes(self)
    }
}

impl<T: StoreSize + ?Sized> StoreSize for &T {
    #[inline]
    fn size_bytes(&self) -> u64 {
        T::size_bytes(self)
    }
}

/// A store that is addressable memory (XIP flash, mmap), so the core can use tensors in
/// place with no copy.
pub trait DirectWeights {
    /// The whole store.
    fn as_slice(&self) -> &[u8];
}

impl<T: DirectWeights + ?Sized> DirectWeights for &mut T {
    #[inline]
    fn as_slice(&self) -> &[u8] {
        T::as_slice(self)
    }
}

impl<T: DirectWeights + ?Sized> DirectWeights for &T {
    #[inline]
    fn as_slice(&self) -> &[u8] {
        T::as_slice(self)
    }
}

/// Why a [`SliceStore`] read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SliceStoreError {
    /// The requested range reaches past the end of the slice.
    OutOfRange {
        /// First byte requested.
        offset: u64,
        /// Bytes requested.
        len: usize,
        /// Size of the store.
        size: u64,
    },
}

impl Error for SliceStoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::OutOfRange { .. } => ErrorKind::OutOfRange,
        }
    }
}

/// A weight store over memory: execute-in-place flash or a memory-mapped file.
#[derive(Clone, Copy, Debug)]
pub struct SliceStore<'a> {
    bytes: &'a [u8],
}

impl<'a> SliceStore<'a> {
    /// Serve reads from `bytes`.
    pub const fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The underlying slice, with its full lifetime (unlike [`DirectWeights::as_slice`]).
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl ErrorType for SliceStore<'_> {
    type Error = SliceStoreError;
}

impl WeightStore for SliceStore<'_> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        let out_of_range = SliceStoreError::OutOfRange {
            offset,
            len: buf.len(),
            size: self.size_bytes(),
        };
        let start = usize::try_from(offset).map_err(|_| out_of_range)?;
        let end = start.checked_add(buf.len()).ok_or(out_of_range)?;
        let src = self.bytes.get(start..end).ok_or(out_of_range)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl StoreSize for SliceStore<'_> {
    fn size_bytes(&self) -> u64 {
        // usize is at most 64 bits on every target Rust supports.
        self.bytes.len() as u64
    }
}

impl DirectWeights for SliceStore<'_> {
    fn as_slice(&self) -> &[u8] {
        self.bytes
    }
}
