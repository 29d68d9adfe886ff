//! Frame streams: captions for a sequence of camera frames from one [`Session`], with
//! the prompt prefix kept in the KV cache and frames that barely changed not re-encoded.
//!
//! Each captioned frame is a [`Session::run`] with the stream's prompt and the frame, so
//! it starts a new conversation about the frame that keeps the cached positions before
//! the picture (the system prompt and the template head, prefilled by the first frame
//! only, when the plan keeps the cache through the vision phases). Its caption is the one
//! a fresh session gives that frame, to the bit.
//!
//! Change gating: every frame is reduced to a [`Thumbnail`] (its luma box-averaged to
//! 16 x 16). A frame whose mean absolute difference from the last *captioned* frame's
//! thumbnail is below the stream's threshold is skipped: not encoded, its caption is the
//! previous one. Comparing with the last captioned frame (not the last seen) means a slow
//! drift still triggers a caption once it adds up.

use glimpse_hal::{MonotonicClock, PixelFormat, TokenSink};

use crate::error::Error;
use crate::preprocess::{Frame, check_frame, rgb565_to_888};
use crate::session::{ImageInput, Prompt, Report, Runner, Session};

/// Side of a [`Thumbnail`], in cells.
pub const THUMB_SIDE: usize = 16;

/// A frame's luma (ITU-R BT.601 weights, 0-255) averaged over a 16 x 16 grid of cells.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thumbnail {
    cells: [f32; THUMB_SIDE * THUMB_SIDE],
}

impl Thumbnail {
    /// The thumbnail of `frame`; refuses a frame whose data does not match its size.
    pub fn of(frame: &Frame<'_>) -> Result<Self, Error> {
        check_frame(frame, usize::MAX)?;
        let (w, h) = (frame.width, frame.height);
        let bpp = frame.format.bytes_per_pixel();
        let mut sums = [0f32; THUMB_SIDE * THUMB_SIDE];
        let mut counts = [0u32; THUMB_SIDE * THUMB_SIDE];
        for (y, row) in frame.data.chunks_exact(w * bpp).take(h).enumerate() {
            let cy = y * THUMB_SIDE / h;
            for (x, px) in row.chunks_exact(bpp).enumerate() {
                let [r, g, b] = match (frame.format, px) {
                    (PixelFormat::Rgb888, &[r, g, b]) => [r, g, b],
                    (PixelFormat::Rgb565, &[lo, hi]) => rgb565_to_888(u16::from_le_bytes([lo, hi])),
                    _ => [0; 3],
                };
                let luma = 0.299 * f32::from(r) + 0.587 * f32::from(g) + 0.114 * f32::from(b);
                let cell = cy * THUMB_SIDE + x * THUMB_SIDE / w;
                if let (Some(s), Some(c)) = (sums.get_mut(cell), counts.get_mut(cell)) {
                    *s += luma;
                    *c += 1;
                }
            }
        }
        // A frame narrower or shorter than the grid leaves cells empty: they copy the
        // nearest filled cell along the row, then the column, so every cell means
        // something.
        let mut cells = [0f32; THUMB_SIDE * THUMB_SIDE];
        for (i, cell) in cells.iter_mut().enumerate() {
            let (cy, cx) = (i / THUMB_SIDE, i % THUMB_SIDE);
            let src_y = (cy * h / THUMB_SIDE) * THUMB_SIDE / h;
            let src_x = (cx * w / THUMB_SIDE) * THUMB_SIDE / w;
            let j = src_y * THUMB_SIDE + src_x;
            let (s, c) = (
                sums.get(j).copied().unwrap_or(0.0),
                counts.get(j).copied().unwrap_or(0),
            );
            *cell = if c > 0 { s / c as f32 } else { 0.0 };
        }
        Ok(Thumbnail { cells })
    }

    /// Mean absolute difference of the cells, as a fraction of full scale (0 to 1).
    pub fn difference(&self, other: &Thumbnail) -> f32 {
        let sum: f32 = self
            .cells
            .iter()
            .zip(&other.cells)
            .map(|(a, b)| (a - b).abs())
            .sum();
        sum / (255.0 * (THUMB_SIDE * THUMB_SIDE) as f32)
    }
}

/// What [`FrameStream::caption`] did with one frame.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FrameReport {
    /// 0-based index of the frame in the stream.
    pub frame: usize,
    /// Whether the frame was skipped (too little change; its caption is the last one).
    pub skipped: bool,
    /// Its difference from the last captioned frame (1.0 for the first frame).
    pub change: f32,
    /// The session's report when the frame was captioned.
    pub run: Option<Report>,
}

/// Counts of a stream so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounts {
    /// Frames seen.
    pub frames: usize,
    /// Frames captioned.
    pub captioned: usize,
    /// Frames skipped by the gate.
    pub skipped: usize,
}

/// A caption loop over frames (see the module docs).
#[derive(Clone, Debug)]
pub struct FrameStream {
    min_change: f32,
    last: Option<Thumbnail>,
    counts: StreamCounts,
}

impl FrameStream {
    /// A stream that skips frames changed by less than `min_change` (a fraction of full
    /// scale, see [`Thumbnail::difference`]); 0 captions every frame.
    pub fn new(min_change: f32) -> Self {
        FrameStream {
            min_change: if min_change.is_finite() {
                min_change.max(0.0)
            } else {
                0.0
            },
            last: None,
            counts: StreamCounts::default(),
        }
    }

    /// Counts so far.
    pub fn counts(&self) -> StreamCounts {
        self.counts
    }

    /// Caption `frame` with `prompt` through `session`, streaming the caption to `sink`,
    /// unless the gate skips it (then nothing reaches the sink). A frame the session
    /// refuses is an error and leaves the stream as it was.
    pub fn caption<C: MonotonicClock, X: Runner, S: TokenSink>(
        &mut self,
        session: &mut Session<'_, '_, C, X>,
        prompt: Prompt<'_>,
        frame: Frame<'_>,
        sink: &mut S,
    ) -> Result<FrameReport, Error> {
        let thumb = Thumbnail::of(&frame)?;
        let change = self.last.as_ref().map_or(1.0, |t| thumb.difference(t));
        let index = self.counts.frames;
        if self.last.is_some() && self.min_change > 0.0 && change < self.min_change {
            self.counts.frames += 1;
            self.counts.skipped += 1;
            return Ok(FrameReport {
                frame: index,
                skipped: true,
                change,
                run: None,
            });
        }
        let run = session.run(prompt, Some(ImageInput::Frame(frame)), sink)?;
        self.last = Some(thumb);
        self.counts.frames += 1;
        self.counts.captioned += 1;
        Ok(FrameReport {
            frame: index,
            skipped: false,
            change,
            run: Some(run),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn flat(w: usize, h: usize, rgb: [u8; 3]) -> Vec<u8> {
        (0..w * h).flat_map(|_| rgb).collect()
    }

    #[test]
    fn thumbnails_measure_change_in_full_scale_units() {
        let grey = flat(64, 48, [100, 100, 100]);
        let white = flat(64, 48, [255, 255, 255]);
        let f = |d: &'static [u8]| Frame {
            width: 64,
            height: 48,
            format: PixelFormat::Rgb888,
            data: d,
        };
        let grey: &'static [u8] = grey.leak();
        let white: &'static [u8] = white.leak();
        let a = Thumbnail::of(&f(grey)).unwrap();
        let b = Thumbnail::of(&f(white)).unwrap();
        assert_eq!(a.difference(&a), 0.0);
        // Luma 100 vs 255 everywhere (the weights sum to 1 up to f32 rounding).
        assert!((a.difference(&b) - 155.0 / 255.0).abs() < 1e-4);
        // One quarter of the frame changed: a quarter of the difference.
        let mut part = flat(64, 48, [100, 100, 100]);
        for y in 0..24 {
            for x in 0..32 {
                part[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&[255; 3]);
            }
        }
        let c = Thumbnail::of(&Frame {
            data: &part,
            ..f(grey)
        })
        .unwrap();
        assert!((a.difference(&c) - 155.0 / 255.0 / 4.0).abs() < 1e-4);
    }

    #[test]
    fn tiny_and_rgb565_frames_fill_every_cell() {
        // 3 x 2 pixels of RGB565 white: every cell reads full scale.
        let data = vec![0xffu8; 3 * 2 * 2];
        let t = Thumbnail::of(&Frame {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb565,
            data: &data,
        })
        .unwrap();
        assert!(
            t.cells.iter().all(|&c| (c - 255.0).abs() < 1e-3),
            "{:?}",
            t.cells
        );
        // A short buffer is refused, not read past.
        assert!(
            Thumbnail::of(&Frame {
                width: 4,
                height: 2,
                format: PixelFormat::Rgb565,
                data: &data,
            })
            .is_err()
        );
    }
}
