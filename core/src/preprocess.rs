//! Camera-frame preprocessing: turns an RGB888 or RGB565 frame of any size into the planar
//! `3 x R x R` tensor in [0, 1] that the vision encoder takes, the way Apple's predict.py
//! does it (spec section 6.1).
//!
//! The steps, each chosen to reproduce PIL bit for bit rather than approximately:
//! 1. pad to a black square of side `max(w, h)`, the frame centred with the floor of the
//!    slack on the top/left (LLaVA's `expand2square`);
//! 2. resize the uint8 square to `R x R` with PIL's `Image.resize(.., BICUBIC)`: separable,
//!    horizontal pass then vertical pass, cubic with a = -0.5 whose support widens with the
//!    downscale factor (antialiasing), weights normalised in f64 and then rounded to
//!    22-bit fixed point, each pass rounded and clamped to u8; when `R == max(w, h)` PIL
//!    returns the square unchanged and so does this module;
//! 3. `v / 255`, computed in f64 and stored as f32 (what the HF image processor does).
//!
//! The padded square never exists in memory: reads outside the frame return black. The
//! only buffer besides the output is the caller's scratch (see [`scratch_bytes`]), which
//! holds the fixed-point weights and the result of the horizontal pass.

use core::fmt;

use crate::error::Error;

/// Largest frame side (and output resolution) this module accepts whatever bound the caller
/// configures: PIL keeps coordinates in `float` and sizes in `int`, and staying well inside
/// both keeps the port exact.
pub const SIDE_LIMIT: usize = 1 << 16;

/// Fractional bits of PIL's fixed-point weights (`PRECISION_BITS` = 32 - 8 - 2 in
/// Pillow's Resample.c: 8 bits for the sample, 2 spare for the cubic's overshoot).
const PRECISION_BITS: u32 = 22;

/// Support of the cubic kernel (in source pixels, before widening for downscaling).
const CUBIC_SUPPORT: f64 = 2.0;

/// How the bytes of a [`Frame`] encode a pixel: the HAL's type, so a frame source's
/// capture feeds preprocessing directly. RGB565 is widened as [`rgb565_to_888`] says.
pub use glimpse_hal::PixelFormat;

/// A camera frame: `height` rows of `width` pixels, row-major with no row padding.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Pixel encoding.
    pub format: PixelFormat,
    /// `width * height * format.bytes_per_pixel()` bytes.
    pub data: &'a [u8],
}

/// Why a [`Frame`] cannot be preprocessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FrameError {
    /// Width or height is zero.
    Empty {
        /// Pixels per row.
        width: usize,
        /// Rows.
        height: usize,
    },
    /// The longer side is past the configured bound (or past [`SIDE_LIMIT`]).
    TooLarge {
        /// Pixels per row.
        width: usize,
        /// Rows.
        height: usize,
        /// Longest side accepted.
        max_side: usize,
    },
    /// The buffer length does not match width, height and pixel format.
    DataLength {
        /// `width * height * bytes per pixel`.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Empty { width, height } => {
                write!(f, "frame {width}x{height} has no pixels")
            }
            FrameError::TooLarge {
                width,
                height,
                max_side,
            } => write!(
                f,
                "frame {width}x{height} is larger than the {max_side}-pixel bound"
            ),
            FrameError::DataLength { expected, got } => write!(
                f,
                "frame buffer holds {got} bytes, its size and format call for {expected}"
            ),
        }
    }
}

/// The resampling plan shared by both passes (the padded image is square, so the
/// horizontal and vertical weights are the same).
#[derive(Clone, Copy)]
struct Plan {
    /// Source pixels per output pixel.
    scale: f64,
    /// Half-width of the (widened) kernel, in source pixels.
    support: f64,
    /// Kernel argument per source pixel (1 / widening).
    step: f64,
    /// Weights stored per output pixel.
    taps: usize,
}

impl Plan {
    fn new(side: usize, resolution: usize) -> Self {
        // PIL passes the box edges as `float`; both are exact there under SIDE_LIMIT.
        let scale = side as f64 / resolution as f64;
        let widen = if scale < 1.0 { 1.0 } else { scale };
        let support = CUBIC_SUPPORT * widen;
        Plan {
            scale,
            support,
            step: 1.0 / widen,
            taps: (libm::ceil(support) as usize)
                .saturating_mul(2)
                .saturating_add(1),
        }
    }
}

/// Layout of the caller's scratch: fixed-point weights, then per-output-pixel bounds, then
/// the horizontally resized square (`side` rows of `R` RGB pixels).
struct ScratchLayout {
    weights: usize,
    bounds: usize,
    rows: usize,
}

impl ScratchLayout {
    fn new(side: usize, resolution: usize) -> Option<Self> {
        if side == resolution {
            return Some(ScratchLayout {
                weights: 0,
                bounds: 0,
                rows: 0,
            });
        }
        let plan = Plan::new(side, resolution);
        Some(ScratchLayout {
            weights: resolution.checked_mul(plan.taps)?,
            bounds: resolution.checked_mul(2)?,
            rows: side.checked_mul(resolution)?.checked_mul(3)?,
        })
    }

    /// Bytes, including up to 3 of slack to 4-align the weights wherever the scratch starts.
    fn bytes(&self) -> Option<usize> {
        if self.rows == 0 {
            return Some(0);
        }
        self.weights
            .checked_add(self.bounds)?
            .checked_mul(4)?
            .checked_add(self.rows)?
            .checked_add(3)
    }
}

/// Scratch bytes [`preprocess`] needs for a `width x height` frame at `resolution`
/// (0 when the padded square already has that side, as nothing is resampled then).
/// Saturates at `usize::MAX` for sizes no buffer could hold.
pub fn scratch_bytes(width: usize, height: usize, resolution: usize) -> usize {
    let side = width.max(height);
    ScratchLayout::new(side, resolution)
        .and_then(|l| l.bytes())
        .unwrap_or(usize::MAX)
}

/// Scratch bytes [`preprocess`] may need for any frame whose longer side is at most
/// `max_side`, at `resolution`: what a plan must reserve before it knows the frame.
///
/// The scratch grows with the frame's side, except that a frame whose padded square
/// already has the output's side needs none; so the largest need is at `max_side`, or at
/// `max_side - 1` when `max_side` is the resolution itself.
pub fn max_scratch_bytes(max_side: usize, resolution: usize) -> usize {
    let side = max_side.min(SIDE_LIMIT);
    let at = |s: usize| {
        if s == 0 {
            0
        } else {
            scratch_bytes(s, s, resolution)
        }
    };
    at(side).max(at(side.saturating_sub(1)))
}

/// Check a frame without touching it: non-empty, longer side within `max_side` (and
/// [`SIDE_LIMIT`]), buffer length matching its size and format. [`preprocess`] runs this
/// first; a caller can run it before any other work.
pub fn check_frame(frame: &Frame<'_>, max_side: usize) -> Result<(), Error> {
    let (w, h) = (frame.width, frame.height);
    if w == 0 || h == 0 {
        return Err(FrameError::Empty {
            width: w,
            height: h,
        }
        .into());
    }
    let bound = max_side.min(SIDE_LIMIT);
    if w.max(h) > bound {
        return Err(FrameError::TooLarge {
            width: w,
            height: h,
            max_side: bound,
        }
        .into());
    }
    // Saturating: on a 32-bit target a frame near SIDE_LIMIT squared has no valid length.
    let expected = w
        .checked_mul(h)
        .and_then(|p| p.checked_mul(frame.format.bytes_per_pixel()))
        .unwrap_or(usize::MAX);
    if frame.data.len() != expected {
        return Err(FrameError::DataLength {
            expected,
            got: frame.data.len(),
        }
        .into());
    }
    Ok(())
}

/// Pads `frame` to a black square, resizes it to `resolution x resolution` like PIL's
/// bicubic, and writes it to `out` as planar `3 x resolution x resolution` (channel, row,
/// column: the encoder's pixel input) in [0, 1].
///
/// `max_side` bounds the frame's longer side (and so the scratch a caller must provide).
/// `scratch` must hold at least [`scratch_bytes`]`(width, height, resolution)` bytes; its
/// contents on entry do not matter.
///
/// Every argument is checked before anything is written: on error `out` and `scratch` are
/// unchanged.
pub fn preprocess(
    frame: &Frame<'_>,
    resolution: usize,
    max_side: usize,
    out: &mut [f32],
    scratch: &mut [u8],
) -> Result<(), Error> {
    check_frame(frame, max_side)?;
    let side = frame.width.max(frame.height);
    if resolution == 0 || resolution > SIDE_LIMIT {
        return Err(Error::Config {
            what: "preprocess resolution must be between 1 and 65536",
        });
    }
    let plane = resolution.saturating_mul(resolution);
    let out_len = plane.saturating_mul(3);
    if out.len() != out_len {
        return Err(Error::Length {
            what: "preprocessed pixels (3 x resolution x resolution)",
            expected: out_len,
            got: out.len(),
        });
    }
    let layout = ScratchLayout::new(side, resolution);
    let needed = layout
        .as_ref()
        .and_then(|l| l.bytes())
        .unwrap_or(usize::MAX);
    if scratch.len() < needed {
        return Err(Error::Arena {
            needed,
            capacity: scratch.len(),
        });
    }

    let src = Source::new(frame);
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    let mut planes = [red, green, blue];

    let Some(layout) = layout.filter(|_| side != resolution) else {
        // PIL returns the square as is: only the padding and the scaling remain.
        for y in 0..side {
            for x in 0..side {
                let px = src.padded(x, y);
                for (plane, v) in planes.iter_mut().zip(px) {
                    if let Some(o) = plane.get_mut(y * side + x) {
                        *o = to_unit(v);
                    }
                }
            }
        }
        return Ok(());
    };

    // Checked above: scratch holds `needed` bytes, which includes the alignment slack.
    let lead = scratch.as_ptr().align_offset(4).min(3);
    let scratch = scratch.get_mut(lead..).unwrap_or_default();
    let (table, rows) = scratch.split_at_mut((layout.weights + layout.bounds) * 4);
    let rows = rows.get_mut(..layout.rows).unwrap_or_default();
    let table: &mut [i32] = bytemuck::try_cast_slice_mut(table).map_err(|_| Error::Arena {
        needed,
        capacity: 0,
    })?;
    let (weights, bounds) = table.split_at_mut(layout.weights);

    let plan = Plan::new(side, resolution);
    build_weights(&plan, side, resolution, weights, bounds);
    let taps = plan.taps;

    // Horizontal pass: every row of the padded square, to `resolution` columns.
    for (y, row) in rows.chunks_exact_mut(resolution * 3).enumerate() {
        let Some(iy) = src.row_index(y) else {
            // An all-padding row stays black: the rounding offset alone shifts to 0.
            row.fill(0);
            continue;
        };
        let line = src.row(iy);
        for ((px, k), b) in row
            .chunks_exact_mut(3)
            .zip(weights.chunks_exact(taps))
            .zip(bounds.chunks_exact(2))
        {
            let (x0, n) = span(b);
            let mut acc = [HALF; 3];
            for (t, &kt) in k.iter().take(n).enumerate() {
                let Some(ix) = src.col_index(x0 + t) else {
                    continue;
                };
                let p = src.pixel(line, ix);
                for (a, v) in acc.iter_mut().zip(p) {
                    *a = a.wrapping_add(i32::from(v).wrapping_mul(kt));
                }
            }
            for (o, a) in px.iter_mut().zip(acc) {
                *o = clip8(a);
            }
        }
    }

    // Vertical pass: `resolution` output rows from the intermediate rows.
    let stride = resolution * 3;
    for (yy, (k, b)) in weights
        .chunks_exact(taps)
        .zip(bounds.chunks_exact(2))
        .enumerate()
    {
        let (y0, n) = span(b);
        for xx in 0..resolution {
            let mut acc = [HALF; 3];
            for (t, &kt) in k.iter().take(n).enumerate() {
                let at = (y0 + t) * stride + xx * 3;
                let p = rows.get(at..at + 3).unwrap_or(&[0; 3]);
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a = a.wrapping_add(i32::from(v).wrapping_mul(kt));
                }
            }
            for (plane, a) in planes.iter_mut().zip(acc) {
                if let Some(o) = plane.get_mut(yy * resolution + xx) {
                    *o = to_unit(clip8(a));
                }
            }
        }
    }
    Ok(())
}

/// Rounding offset PIL starts every accumulator at (one half in fixed point).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// PIL's `clip8`: drop the fraction (arithmetic shift, so negatives floor) and clamp.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `v / 255` in f64, stored as f32, as the HF processor's rescale does.
fn to_unit(v: u8) -> f32 {
    (f64::from(v) / 255.0) as f32
}

/// First source index and tap count stored for one output pixel.
fn span(b: &[i32]) -> (usize, usize) {
    match b {
        [first, count, ..] => (
            usize::try_from(*first).unwrap_or(0),
            usize::try_from(*count).unwrap_or(0),
        ),
        _ => (0, 0),
    }
}

/// PIL's cubic convolution kernel with a = -0.5, written in the same operation order so the
/// f64 results (and so the fixed-point weights) agree to the last bit.
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = if x < 0.0 { -x } else { x };
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fills `weights` (`taps` per output pixel, fixed point) and `bounds` (first source index
/// and count per output pixel) as Pillow's `precompute_coeffs` and `normalize_coeffs_8bpc`
/// do: weights evaluated in f64, divided by their sum, then rounded half away from zero to
/// 22 fractional bits. The fixed-point weights need not sum to exactly one; matching PIL
/// means keeping that.
fn build_weights(
    plan: &Plan,
    in_size: usize,
    resolution: usize,
    weights: &mut [i32],
    bounds: &mut [i32],
) {
    let in_size = in_size as i64;
    for (xx, (k, b)) in weights
        .chunks_exact_mut(plan.taps)
        .zip(bounds.chunks_exact_mut(2))
        .enumerate()
        .take(resolution)
    {
        let center = (xx as f64 + 0.5) * plan.scale;
        // `as` truncates toward zero, like C's (int) cast.
        let first = ((center - plan.support + 0.5) as i64).max(0);
        let last = ((center + plan.support + 0.5) as i64).min(in_size);
        let count = (last - first).clamp(0, plan.taps as i64);
        let arg = |t: i64| ((t + first) as f64 - center + 0.5) * plan.step;
        let mut sum = 0.0;
        for t in 0..count {
            sum += cubic(arg(t));
        }
        for (t, slot) in k.iter_mut().enumerate() {
            let t = t as i64;
            *slot = if t < count {
                let mut v = cubic(arg(t));
                if sum != 0.0 {
                    v /= sum;
                }
                let scaled = v * f64::from(1u32 << PRECISION_BITS);
                if v < 0.0 {
                    (scaled - 0.5) as i32
                } else {
                    (scaled + 0.5) as i32
                }
            } else {
                0
            };
        }
        if let [b0, b1] = b {
            *b0 = first as i32;
            *b1 = count as i32;
        }
    }
}

/// Reads pixels of the padded square from a validated frame.
struct Source<'a> {
    frame: &'a Frame<'a>,
    /// Left and top offsets of the frame inside the square.
    left: usize,
    top: usize,
    row_bytes: usize,
}

impl<'a> Source<'a> {
    fn new(frame: &'a Frame<'a>) -> Self {
        let side = frame.width.max(frame.height);
        Source {
            frame,
            left: (side - frame.width) / 2,
            top: (side - frame.height) / 2,
            row_bytes: frame.width * frame.format.bytes_per_pixel(),
        }
    }

    /// Frame row under square row `y`, if any.
    fn row_index(&self, y: usize) -> Option<usize> {
        y.checked_sub(self.top).filter(|&r| r < self.frame.height)
    }

    /// Frame column under square column `x`, if any.
    fn col_index(&self, x: usize) -> Option<usize> {
        x.checked_sub(self.left).filter(|&c| c < self.frame.width)
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let start = r * self.row_bytes;
        self.frame
            .data
            .get(start..start + self.row_bytes)
            .unwrap_or(&[])
    }

    /// RGB of column `c` in a frame row (black if out of range).
    fn pixel(&self, line: &[u8], c: usize) -> [u8; 3] {
        match self.frame.format {
            PixelFormat::Rgb888 => match line.get(c * 3..c * 3 + 3) {
                Some(&[r, g, b]) => [r, g, b],
                _ => [0; 3],
            },
            PixelFormat::Rgb565 => match line.get(c * 2..c * 2 + 2) {
                Some(&[lo, hi]) => rgb565_to_888(u16::from_le_bytes([lo, hi])),
                _ => [0; 3],
            },
        }
    }

    /// RGB of square pixel (`x`, `y`), black in the padding.
    fn padded(&self, x: usize, y: usize) -> [u8; 3] {
        match (self.col_index(x), self.row_index(y)) {
            (Some(c), Some(r)) => self.pixel(self.row(r), c),
            _ => [0; 3],
        }
    }
}

/// Widens one RGB565 pixel (a little-endian u16: red in bits 15..11, green in 10..5, blue
/// in 4..0) to RGB888 by replicating each channel's top bits into the new low bits
/// (`(v << 3) | (v >> 2)` for 5 bits, `(v << 2) | (v >> 4)` for 6), as camera drivers and
/// display controllers do, so full scale maps to 255 and zero to 0.
pub fn rgb565_to_888(v: u16) -> [u8; 3] {
    let r = ((v >> 11) & 0x1f) as u8;
    let g = ((v >> 5) & 0x3f) as u8;
    let b = (v & 0x1f) as u8;
    [
        (r << 3) | (r >> 2),
        (g << 2) | (g >> 4),
        (b << 3) | (b >> 2),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn rgb565_widening_hits_both_ends() {
        assert_eq!(rgb565_to_888(0), [0, 0, 0]);
        assert_eq!(rgb565_to_888(0xffff), [255, 255, 255]);
        assert_eq!(rgb565_to_888(0xf800), [255, 0, 0]);
        assert_eq!(rgb565_to_888(0x07e0), [0, 255, 0]);
        // 0b10000 -> 0b10000_100 and 0b100000 -> 0b100000_10.
        assert_eq!(
            rgb565_to_888((0b10000 << 11) | (0b10_0000 << 5) | 0b10000),
            [132, 130, 132]
        );
    }

    #[test]
    fn weights_sum_close_to_one_and_bounds_stay_inside() {
        for &(side, r) in &[
            (7usize, 64usize),
            (129, 96),
            (129, 64),
            (1000, 17),
            (64, 65),
        ] {
            let plan = Plan::new(side, r);
            let mut w = vec![0i32; r * plan.taps];
            let mut b = vec![0i32; r * 2];
            build_weights(&plan, side, r, &mut w, &mut b);
            for (k, b) in w.chunks_exact(plan.taps).zip(b.chunks_exact(2)) {
                let (first, n) = span(b);
                assert!(n >= 1 && first + n <= side, "{side}->{r}: {first}+{n}");
                let s: i64 = k.iter().map(|&v| i64::from(v)).sum();
                // Each weight is rounded to within half a unit, so the sum is within
                // `taps / 2` units of one.
                assert!(
                    (s - (1 << 22)).abs() <= plan.taps as i64,
                    "{side}->{r}: {s}"
                );
            }
        }
    }

    #[test]
    fn cubic_kernel_shape() {
        assert_eq!(cubic(0.0), 1.0);
        assert_eq!(cubic(1.0), 0.0);
        assert_eq!(cubic(-2.0), 0.0);
        assert!(cubic(1.5) < 0.0);
        assert_eq!(cubic(0.5), cubic(-0.5));
    }

    #[test]
    fn max_scratch_bounds_every_smaller_frame() {
        for r in [1usize, 7, 64, 96] {
            for max in [1usize, 2, r - r.min(1), r, r + 1, 3 * r + 5, 200] {
                let bound = max_scratch_bytes(max, r);
                let worst = (1..=max).map(|s| scratch_bytes(s, s, r)).max().unwrap_or(0);
                assert_eq!(bound, worst, "resolution {r}, max side {max}");
                // Non-square frames need what their longer side's square needs.
                assert!(scratch_bytes(max, 1, r) <= bound);
            }
        }
    }

    #[test]
    fn check_frame_refuses_before_reading() {
        let data = [0u8; 12];
        let f = |w, h, n| Frame {
            width: w,
            height: h,
            format: PixelFormat::Rgb888,
            data: &data[..n],
        };
        assert!(check_frame(&f(2, 2, 12), 2).is_ok());
        assert!(matches!(
            check_frame(&f(0, 2, 0), 8),
            Err(Error::Frame(FrameError::Empty { .. }))
        ));
        assert!(matches!(
            check_frame(&f(4, 1, 12), 3),
            Err(Error::Frame(FrameError::TooLarge { max_side: 3, .. }))
        ));
        assert!(matches!(
            check_frame(&f(2, 2, 11), 8),
            Err(Error::Frame(FrameError::DataLength {
                expected: 12,
                got: 11
            }))
        ));
    }
}
