//! Pictures from files: PNG and JPEG decoded to RGB888 ([`Picture`]), and a
//! [`FrameSource`] that hands a list of files to the core one capture at a time
//! ([`PictureFiles`]), the host's stand-in for a camera.

use std::path::{Path, PathBuf};

use glimpse_core::preprocess::Frame;
use glimpse_hal::{ErrorKind, ErrorType, FrameInfo, FrameSource, PixelFormat};

/// A decoded picture: RGB888 rows, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Picture {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub rgb: Vec<u8>,
}

/// Why a picture could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PictureError {
    /// The file could not be read or decoded. (The decoder's error is part of the
    /// message rather than a `source`: its own chain repeats itself.)
    #[error("decoding {}: {error}", path.display())]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        error: image::ImageError,
    },
    /// Every file of a [`PictureFiles`] has been captured.
    #[error("no more pictures")]
    Exhausted,
    /// The capture buffer is smaller than the decoded frame.
    #[error("{}: a {width}x{height} frame needs {needed} bytes, the buffer has {capacity}", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Frame width.
        width: usize,
        /// Frame height.
        height: usize,
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes the buffer has.
        capacity: usize,
    },
}

impl glimpse_hal::Error for PictureError {
    fn kind(&self) -> ErrorKind {
        match self {
            PictureError::Decode { error, .. } => match error {
                image::ImageError::IoError(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ErrorKind::NotFound
                }
                _ => ErrorKind::Io,
            },
            PictureError::Exhausted => ErrorKind::OutOfRange,
            PictureError::TooLarge { .. } => ErrorKind::InvalidInput,
        }
    }
}

impl Picture {
    /// Decode a PNG or JPEG into RGB888 (alpha dropped, grey widened).
    pub fn open(path: &Path) -> Result<Picture, PictureError> {
        let img = image::open(path)
            .map_err(|error| PictureError::Decode {
                path: path.to_path_buf(),
                error,
            })?
            .to_rgb8();
        let (w, h) = img.dimensions();
        Ok(Picture {
            width: w as usize,
            height: h as usize,
            rgb: img.into_raw(),
        })
    }

    /// The picture as a camera frame for the core.
    pub fn frame(&self) -> Frame<'_> {
        Frame {
            width: self.width,
            height: self.height,
            format: PixelFormat::Rgb888,
            data: &self.rgb,
        }
    }
}

/// Picture files as a camera: each [`FrameSource::capture`] decodes the next file into
/// the capture buffer as RGB888; after the last one it returns
/// [`PictureError::Exhausted`]. A frame that does not fit the buffer is an error, and the
/// file stays next in line.
#[derive(Clone, Debug)]
pub struct PictureFiles {
    paths: Vec<PathBuf>,
    next: usize,
}

impl PictureFiles {
    /// A source over `paths`, in order.
    pub fn new(paths: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        PictureFiles {
            paths: paths.into_iter().map(Into::into).collect(),
            next: 0,
        }
    }

    /// The file the next capture decodes.
    pub fn peek(&self) -> Option<&Path> {
        self.paths.get(self.next).map(PathBuf::as_path)
    }
}

impl ErrorType for PictureFiles {
    type Error = PictureError;
}

impl FrameSource for PictureFiles {
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, PictureError> {
        let path = self.paths.get(self.next).ok_or(PictureError::Exhausted)?;
        let pic = Picture::open(path)?;
        let capacity = buf.len();
        let too_large = || PictureError::TooLarge {
            path: path.clone(),
            width: pic.width,
            height: pic.height,
            needed: pic.rgb.len(),
            capacity,
        };
        let (Ok(width), Ok(height)) = (u32::try_from(pic.width), u32::try_from(pic.height)) else {
            return Err(too_large());
        };
        let Some(dst) = buf.get_mut(..pic.rgb.len()) else {
            return Err(too_large());
        };
        dst.copy_from_slice(&pic.rgb);
        self.next += 1;
        Ok(FrameInfo {
            width,
            height,
            format: PixelFormat::Rgb888,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_hal::Error as _;

    fn write_png(dir: &Path, name: &str, w: u32, h: u32) -> PathBuf {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let p = dir.join(name);
        img.save(&p).unwrap();
        p
    }

    #[test]
    fn files_are_captured_in_order_then_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_png(dir.path(), "a.png", 3, 2);
        let b = write_png(dir.path(), "b.png", 2, 4);
        let mut src = PictureFiles::new([&a, &b]);
        let mut buf = [0u8; 64];
        let info = src.capture(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height, info.format),
            (3, 2, PixelFormat::Rgb888)
        );
        // Pixel (x=2, y=1) of a: [2, 1, 7].
        assert_eq!(&buf[(3 + 2) * 3..(3 + 2) * 3 + 3], &[2, 1, 7]);
        assert_eq!(src.capture(&mut buf).unwrap().height, 4);
        let e = src.capture(&mut buf).unwrap_err();
        assert!(matches!(e, PictureError::Exhausted));
        assert_eq!(e.kind(), ErrorKind::OutOfRange);
    }

    #[test]
    fn a_frame_that_does_not_fit_is_refused_and_stays_next() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_png(dir.path(), "a.png", 4, 4);
        let mut src = PictureFiles::new([&a]);
        let mut small = [0xAAu8; 47];
        let e = src.capture(&mut small).unwrap_err();
        assert!(
            matches!(
                e,
                PictureError::TooLarge {
                    needed: 48,
                    capacity: 47,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(small.iter().all(|&b| b == 0xAA), "buffer written on error");
        assert_eq!(src.peek(), Some(a.as_path()));
        let mut buf = [0u8; 48];
        assert_eq!(src.capture(&mut buf).unwrap().width, 4);
    }

    #[test]
    fn missing_and_corrupt_files_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.png");
        let e = Picture::open(&missing).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert!(e.to_string().contains("nope.png"), "{e}");
        let bad = dir.path().join("bad.png");
        std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let e = Picture::open(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("bad.png"), "{e}");
    }
}
