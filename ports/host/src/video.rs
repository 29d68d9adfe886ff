//! Frame sequences for streams: a directory of pictures (sorted by name), an animated
//! GIF or APNG, or raw RGB24 frames from a reader (a pipe from ffmpeg, a V4L2 grabber),
//! yielded one [`Picture`] at a time with a label that names the frame in errors.
//!
//! An animation's frames are expanded by their display time: a frame shown for three
//! times the shortest delay counts as three frames, as a camera sampling the clip at its
//! frame rate would see it (encoders merge identical consecutive frames into one longer
//! one, so this is also what keeps a still scene still).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use image::AnimationDecoder;

use crate::picture::Picture;

/// Why a frame could not be had. Every variant names the frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VideoError {
    /// A file (a picture of a directory, or the animation) could not be read or decoded.
    #[error("frame {frame} ({}): {error}", path.display())]
    Decode {
        /// 0-based frame index.
        frame: usize,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        error: String,
    },
    /// Raw input ended inside a frame.
    #[error(
        "frame {frame}: raw input ended after {got} of {expected} bytes ({width}x{height} RGB24)"
    )]
    ShortRaw {
        /// 0-based frame index.
        frame: usize,
        /// Bytes read.
        got: usize,
        /// Bytes a frame has.
        expected: usize,
        /// Frame width.
        width: usize,
        /// Frame height.
        height: usize,
    },
    /// Reading raw input failed.
    #[error("frame {frame}: reading raw input: {error}")]
    Read {
        /// 0-based frame index.
        frame: usize,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A directory without pictures, or a bad raw size.
    #[error("{0}")]
    Input(String),
}

/// Picture file extensions a directory is read for.
const PICTURE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The picture files of `dir`, sorted by name.
pub fn picture_files(dir: &Path) -> Result<Vec<PathBuf>, VideoError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| VideoError::Input(format!("reading {}: {e}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| PICTURE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(VideoError::Input(format!(
            "{} has no .png or .jpg pictures",
            dir.display()
        )));
    }
    Ok(files)
}

/// Frames of a directory of pictures, decoded one at a time.
pub fn directory_frames(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<Picture, VideoError>> + use<>, VideoError> {
    let files = picture_files(dir)?;
    Ok(files.into_iter().enumerate().map(|(frame, path)| {
        Picture::open(&path).map_err(|e| VideoError::Decode {
            frame,
            error: e.to_string(),
            path,
        })
    }))
}

/// Every frame of an animated GIF or PNG (a still PNG or JPEG is one frame), expanded
/// by display time (see the module docs).
pub fn animation_frames(path: &Path) -> Result<Vec<Picture>, VideoError> {
    let bad = |frame: usize, error: String| VideoError::Decode {
        frame,
        path: path.to_path_buf(),
        error,
    };
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| bad(0, e.to_string()))
    };
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let frames: Vec<image::Frame> = if ext == "gif" {
        let dec =
            image::codecs::gif::GifDecoder::new(open()?).map_err(|e| bad(0, e.to_string()))?;
        collect(dec.into_frames(), &bad)?
    } else if ext == "png" || ext == "apng" {
        let dec =
            image::codecs::png::PngDecoder::new(open()?).map_err(|e| bad(0, e.to_string()))?;
        if dec.is_apng().map_err(|e| bad(0, e.to_string()))? {
            let apng = dec.apng().map_err(|e| bad(0, e.to_string()))?;
            collect(apng.into_frames(), &bad)?
        } else {
            let pic = Picture::open(path).map_err(|e| bad(0, e.to_string()))?;
            return Ok(vec![pic]);
        }
    } else {
        let pic = Picture::open(path).map_err(|e| bad(0, e.to_string()))?;
        return Ok(vec![pic]);
    };
    let delay_ms = |f: &image::Frame| {
        let (n, d) = f.delay().numer_denom_ms();
        if d == 0 {
            0.0
        } else {
            f64::from(n) / f64::from(d)
        }
    };
    let unit = frames
        .iter()
        .map(delay_ms)
        .filter(|&d| d > 0.0)
        .fold(f64::INFINITY, f64::min);
    let mut out = Vec::new();
    for f in frames {
        let repeat = if unit.is_finite() {
            ((delay_ms(&f) / unit).round() as usize).max(1)
        } else {
            1
        };
        let rgba = f.into_buffer();
        let (w, h) = rgba.dimensions();
        let rgb: Vec<u8> = rgba
            .pixels()
            .flat_map(|p| [p.0[0], p.0[1], p.0[2]])
            .collect();
        let pic = Picture {
            width: w as usize,
            height: h as usize,
            rgb,
        };
        for _ in 1..repeat {
            out.push(pic.clone());
        }
        out.push(pic);
    }
    Ok(out)
}

fn collect(
    frames: image::Frames<'_>,
    bad: &dyn Fn(usize, String) -> VideoError,
) -> Result<Vec<image::Frame>, VideoError> {
    frames
        .enumerate()
        .map(|(i, f)| f.map_err(|e| bad(i, e.to_string())))
        .collect()
}

/// Raw RGB24 frames of `width x height` read from `input` until it ends; input that
/// ends inside a frame is an error naming it.
#[derive(Debug)]
pub struct RawFrames<R> {
    input: R,
    width: usize,
    height: usize,
    frame: usize,
    done: bool,
}

impl<R: Read> RawFrames<R> {
    /// Frames of `width x height` from `input`.
    pub fn new(input: R, width: usize, height: usize) -> Result<Self, VideoError> {
        if width == 0 || height == 0 || width.checked_mul(height).is_none_or(|p| p > 1 << 28) {
            return Err(VideoError::Input(format!(
                "raw frames of {width}x{height} pixels: each side must be at least 1 and the frame at most 2^28 pixels"
            )));
        }
        Ok(RawFrames {
            input,
            width,
            height,
            frame: 0,
            done: false,
        })
    }
}

impl<R: Read> Iterator for RawFrames<R> {
    type Item = Result<Picture, VideoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let expected = self.width * self.height * 3;
        let mut rgb = vec![0u8; expected];
        let mut got = 0;
        while got < expected {
            match self.input.read(&mut rgb[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.done = true;
                    return Some(Err(VideoError::Read {
                        frame: self.frame,
                        error,
                    }));
                }
            }
        }
        let frame = self.frame;
        self.frame += 1;
        if got == 0 {
            self.done = true;
            return None;
        }
        if got < expected {
            self.done = true;
            return Some(Err(VideoError::ShortRaw {
                frame,
                got,
                expected,
                width: self.width,
                height: self.height,
            }));
        }
        Some(Ok(Picture {
            width: self.width,
            height: self.height,
            rgb,
        }))
    }
}

/// Parse `WxH` (e.g. `640x480`).
pub fn parse_size(s: &str) -> Result<(usize, usize), VideoError> {
    let bad = || VideoError::Input(format!("{s:?} is not WIDTHxHEIGHT (e.g. 640x480)"));
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((
        w.trim().parse().map_err(|_| bad())?,
        h.trim().parse().map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_frames_split_the_input_and_name_a_short_one() {
        let data: Vec<u8> = (0..2 * 2 * 3 * 2 + 5).map(|i| i as u8).collect();
        let mut frames = RawFrames::new(&data[..], 2, 2).unwrap();
        let a = frames.next().unwrap().unwrap();
        assert_eq!(
            (a.width, a.height, a.rgb[..3].to_vec()),
            (2, 2, vec![0, 1, 2])
        );
        let b = frames.next().unwrap().unwrap();
        assert_eq!(b.rgb[0], 12);
        let err = frames.next().unwrap().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("frame 2: raw input ended after 5 of 12 bytes"),
            "{err}"
        );
        assert!(frames.next().is_none());
        // Whole frames only: ends cleanly.
        assert_eq!(RawFrames::new(&data[..24], 2, 2).unwrap().count(), 2);
        assert!(RawFrames::new(&data[..], 0, 2).is_err());
        assert_eq!(parse_size("640x480").unwrap(), (640, 480));
        assert!(parse_size("640").is_err() && parse_size("ax3").is_err());
    }

    #[test]
    fn gif_frames_are_expanded_by_their_delay() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, RgbaImage};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.gif");
        {
            let file = std::fs::File::create(&path).unwrap();
            let mut enc = GifEncoder::new(file);
            // Flat frames: GIF's palette holds these colours exactly.
            for (v, ms) in [(0u8, 100u32), (255, 300), (0, 100)] {
                let img = RgbaImage::from_pixel(4, 3, image::Rgba([v, v, v, 255]));
                enc.encode_frame(Frame::from_parts(
                    img,
                    0,
                    0,
                    Delay::from_numer_denom_ms(ms, 1),
                ))
                .unwrap();
            }
        }
        let frames = animation_frames(&path).unwrap();
        let firsts: Vec<u8> = frames.iter().map(|p| p.rgb[0]).collect();
        // The 300 ms frame is three 100 ms frames.
        assert_eq!(firsts, vec![0, 255, 255, 255, 0]);
        assert!(frames.iter().all(|p| (p.width, p.height) == (4, 3)));
        std::fs::write(dir.path().join("bad.gif"), b"GIF89a nonsense").unwrap();
        let err = animation_frames(&dir.path().join("bad.gif"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("frame 0 (") && err.contains("bad.gif"),
            "{err}"
        );
    }

    #[test]
    fn directories_are_sorted_and_bad_files_named() {
        let dir = tempfile::tempdir().unwrap();
        for (name, v) in [("b.png", 20u8), ("a.png", 10)] {
            image::RgbImage::from_pixel(3, 2, image::Rgb([v, v, v]))
                .save(dir.path().join(name))
                .unwrap();
        }
        std::fs::write(dir.path().join("c.png"), b"not a png").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let frames: Vec<_> = directory_frames(dir.path()).unwrap().collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].as_ref().unwrap().rgb[0], 10);
        assert_eq!(frames[1].as_ref().unwrap().rgb[0], 20);
        let err = frames[2].as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("frame 2 (") && err.contains("c.png"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(directory_frames(empty.path()).is_err());
    }
}
