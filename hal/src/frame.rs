//! The frame source (camera or file) and the description of a captured frame.

use crate::ErrorType;

/// How the pixels of a captured frame are laid out, row-major with no row padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PixelFormat {
    /// 3 bytes per pixel: R, G, B.
    Rgb888,
    /// 2 bytes per pixel, a little-endian `u16` with R in bits 15..11, G in 10..5, B in 4..0
    /// (the usual layout of camera and display controllers).
    Rgb565,
}

impl PixelFormat {
    /// Bytes one pixel occupies.
    pub const fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb888 => 3,
            Self::Rgb565 => 2,
        }
    }
}

/// What [`FrameSource::capture`] wrote into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FrameInfo {
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Pixel layout.
    pub format: PixelFormat,
}

impl FrameInfo {
    /// Bytes the frame occupies at the start of the capture buffer, or `None` if that
    /// does not fit in `usize` (a lying source must not make the core overflow).
    pub fn byte_len(&self) -> Option<usize> {
        let w = usize::try_from(self.width).ok()?;
        let h = usize::try_from(self.height).ok()?;
        w.checked_mul(h)?.checked_mul(self.format.bytes_per_pixel())
    }
}

/// A camera, a file, or a test pattern.
pub trait FrameSource: ErrorType {
    /// Capture one frame into the start of `buf` and describe it.
    ///
    /// The frame occupies the first [`FrameInfo::byte_len`] bytes of `buf`; a source whose
    /// frame does not fit returns an error (kind [`ErrorKind::InvalidInput`](crate::ErrorKind))
    /// instead of truncating.
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, Self::Error>;
}

impl<T: FrameSource + ?Sized> FrameSource for &mut T {
    #[inline]
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, Self::Error> {
        T::capture(self, buf)
    }
}
