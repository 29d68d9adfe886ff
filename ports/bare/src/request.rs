//! The request blob: what the host asks a firmware to run (prompt, sampling, an optional
//! camera frame or a ring of frames to caption as a stream), written by `glimpse sim`
//! into guest memory next to the weights image.
//!
//! ```text
//! offset 0   fixed header, HEADER_LEN bytes
//!  0  [u8; 8]  magic
//!  8  u16      version (VERSION)
//! 10  u16      flags (FLAG_RAW, FLAG_SYSTEM, FLAG_NO_PREFIX_REUSE)
//! 12  u32      total length of the blob, header included
//! 16  u64      weights image length in bytes
//! 24  u32      most tokens to generate
//! 28  u32      prompt length in bytes
//! 32  u32      system prompt length in bytes
//! 36  u32      repetition-penalty window
//! 40  u64      sampler seed
//! 48  f32      temperature (<= 0 is greedy)
//! 52  f32      top-p
//! 56  u32      top-k (0 is no limit)
//! 60  f32      repetition penalty (1 is none)
//! 64  u32      frame offset from the blob's start (FRAME_ALIGN-aligned), 0 without a frame
//! 68  u32      frame width
//! 72  u32      frame height
//! 76  u8       frame pixel format (0 none, 1 RGB888, 2 RGB565)
//! 77  ..80     reserved, zero
//! 80  u32      frames: 0 without a frame, 1 for one, N >= 2 for a stream of N
//! 84  f32      stream: skip frames that changed less than this (0 captions all)
//! 88  ..92     reserved, zero
//! 92  u32      CRC-32 of bytes 0..92 followed by bytes HEADER_LEN..total
//! 96  prompt (UTF-8), then the system prompt (UTF-8), then zero padding, then the frames
//! ```
//!
//! A stream's frames all have the first frame's size and format and follow each other,
//! each starting FRAME_ALIGN-aligned (stride: the frame's bytes rounded up to FRAME_ALIGN,
//! zero padded): the frame ring the firmware's [`RingSource`] captures from.
//!
//! A fixed little-endian header rather than postcard: the firmware validates it before it
//! trusts a single length, the same way the weights image's header is read, and a reader
//! in any language can produce it. The CRC catches a stale or half-written blob (a wrong
//! `-device loader` address) as a clear error instead of a garbage prompt.

use core::fmt;

use glimpse_core::preprocess::Frame;
use glimpse_core::sampler::SamplerConfig;
use glimpse_hal::PixelFormat;
use glimpse_quant::crc32::Crc32;

/// First eight bytes of every request. Same shape as the weights image's magic, another
/// name, so neither is ever mistaken for the other.
pub const MAGIC: [u8; 8] = *b"\x89GREQ\r\n\x1a";
/// Layout version: a reader refuses any other.
pub const VERSION: u16 = 2;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 96;
/// Alignment of the frame within the blob (and so in memory, the blob being placed on a
/// page boundary): enough for word-wise copies of the pixels.
pub const FRAME_ALIGN: usize = 16;
/// Flag: use the prompt as given, without the model's chat template.
pub const FLAG_RAW: u16 = 1 << 0;
/// Flag: a system prompt is present (an empty one included); without it the template's
/// default is used.
pub const FLAG_SYSTEM: u16 = 1 << 1;
/// Flag: a stream prefills its whole prompt for every frame instead of keeping the
/// prefix before the picture in the KV cache (to measure what keeping it saves).
pub const FLAG_NO_PREFIX_REUSE: u16 = 1 << 2;
const KNOWN_FLAGS: u16 = FLAG_RAW | FLAG_SYSTEM | FLAG_NO_PREFIX_REUSE;
const CRC_AT: usize = 92;

/// What is wrong with a request blob, or why one cannot be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum RequestError {
    /// Fewer bytes than the header, or than the header's total length.
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes there.
        got: u64,
    },
    /// The first eight bytes are not [`MAGIC`] (nothing was loaded at the address).
    BadMagic,
    /// A version this reader does not know.
    UnsupportedVersion(u16),
    /// The CRC does not match.
    Checksum,
    /// A flag this reader does not know, or a reserved byte that is not zero.
    Reserved,
    /// The lengths and offsets in the header do not add up.
    Lengths,
    /// The prompt or the system prompt is not UTF-8.
    NotUtf8,
    /// An unknown pixel-format code, or a frame whose size overflows.
    Frame,
    /// The output buffer is too small to encode into.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// A field does not fit its header slot (a prompt of 4 GiB or more).
    TooLarge,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Truncated { needed, got } => {
                write!(
                    f,
                    "request blob truncated: {needed} bytes needed, {got} there"
                )
            }
            RequestError::BadMagic => {
                f.write_str("no request blob at the request address (bad magic)")
            }
            RequestError::UnsupportedVersion(v) => {
                write!(f, "request blob version {v}, this firmware reads {VERSION}")
            }
            RequestError::Checksum => f.write_str("request blob checksum mismatch"),
            RequestError::Reserved => {
                f.write_str("request blob: unknown flag or reserved byte set")
            }
            RequestError::Lengths => f.write_str("request blob: lengths and offsets do not add up"),
            RequestError::NotUtf8 => f.write_str("request blob: prompt is not UTF-8"),
            RequestError::Frame => f.write_str("request blob: bad frame description"),
            RequestError::BufferTooSmall { needed, got } => {
                write!(f, "request blob needs {needed} bytes, the buffer has {got}")
            }
            RequestError::TooLarge => f.write_str("request blob: a field is too large"),
        }
    }
}

impl core::error::Error for RequestError {}

/// A request, borrowing its text and pixels from the blob (or, when encoding, from the
/// caller).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The user's message.
    pub prompt: &'a str,
    /// System prompt; `None` uses the chat template's default.
    pub system: Option<&'a str>,
    /// Use the prompt as given, without the chat template.
    pub raw: bool,
    /// Most tokens to generate (a stop token counts and ends the run).
    pub max_tokens: u32,
    /// Sampling settings.
    pub sampler: SamplerConfig,
    /// Length of the weights image the emulator placed beside the request.
    pub weights_len: u64,
    /// Camera frame, for VLM images (a stream's first frame).
    pub frame: Option<Frame<'a>>,
    /// A stream of frames to caption one after the other (its first frame is `frame`).
    pub stream: Option<Stream<'a>>,
}

/// Frames of one size and format, each starting [`FRAME_ALIGN`]-aligned one stride after
/// the other in `data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRing<'a> {
    /// Pixels per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// Pixel encoding.
    pub format: PixelFormat,
    /// Frames.
    pub count: usize,
    /// `stride * (count - 1) + frame_len` bytes.
    pub data: &'a [u8],
}

impl<'a> FrameRing<'a> {
    /// Bytes of one frame.
    pub fn frame_len(&self) -> usize {
        self.width
            .saturating_mul(self.height)
            .saturating_mul(self.format.bytes_per_pixel())
    }

    /// Bytes from one frame's start to the next's.
    pub fn stride(&self) -> usize {
        self.frame_len().next_multiple_of(FRAME_ALIGN)
    }

    /// Bytes `count` frames take.
    pub fn byte_len(&self) -> Option<usize> {
        self.stride()
            .checked_mul(self.count.checked_sub(1)?)?
            .checked_add(self.frame_len())
    }

    /// Frame `i`.
    pub fn frame(&self, i: usize) -> Option<Frame<'a>> {
        if i >= self.count {
            return None;
        }
        let at = i.checked_mul(self.stride())?;
        Some(Frame {
            width: self.width,
            height: self.height,
            format: self.format,
            data: self.data.get(at..at.checked_add(self.frame_len())?)?,
        })
    }
}

/// A frame stream request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stream<'a> {
    /// The frames.
    pub frames: FrameRing<'a>,
    /// Frames that changed less than this since the last captioned one are skipped.
    pub min_change: f32,
    /// Keep the prompt prefix in the KV cache from frame to frame.
    pub keep_prefix: bool,
}

/// A [`FrameSource`](glimpse_hal::FrameSource) over a [`FrameRing`] in memory: each
/// capture copies the next frame into the caller's buffer, as a camera's DMA would.
#[derive(Clone, Debug)]
pub struct RingSource<'a> {
    ring: FrameRing<'a>,
    next: usize,
}

impl<'a> RingSource<'a> {
    /// Frames of `ring`, from the first.
    pub fn new(ring: FrameRing<'a>) -> Self {
        RingSource { ring, next: 0 }
    }

    /// Frames not captured yet.
    pub fn remaining(&self) -> usize {
        self.ring.count.saturating_sub(self.next)
    }
}

/// Why a [`RingSource`] could not capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RingError {
    /// Every frame was captured.
    Exhausted,
    /// The buffer is smaller than a frame.
    BufferTooSmall,
}

impl glimpse_hal::Error for RingError {
    fn kind(&self) -> glimpse_hal::ErrorKind {
        match self {
            RingError::Exhausted => glimpse_hal::ErrorKind::OutOfRange,
            RingError::BufferTooSmall => glimpse_hal::ErrorKind::InvalidInput,
        }
    }
}

impl glimpse_hal::ErrorType for RingSource<'_> {
    type Error = RingError;
}

impl glimpse_hal::FrameSource for RingSource<'_> {
    fn capture(&mut self, buf: &mut [u8]) -> Result<glimpse_hal::FrameInfo, RingError> {
        let f = self.ring.frame(self.next).ok_or(RingError::Exhausted)?;
        let dst = buf
            .get_mut(..f.data.len())
            .ok_or(RingError::BufferTooSmall)?;
        dst.copy_from_slice(f.data);
        self.next += 1;
        let dim = |v: usize| u32::try_from(v).map_err(|_| RingError::BufferTooSmall);
        Ok(glimpse_hal::FrameInfo {
            width: dim(f.width)?,
            height: dim(f.height)?,
            format: f.format,
        })
    }
}

fn format_code(f: Option<PixelFormat>) -> u8 {
    match f {
        None => 0,
        Some(PixelFormat::Rgb888) => 1,
        Some(PixelFormat::Rgb565) => 2,
    }
}

fn format_from_code(c: u8) -> Result<Option<PixelFormat>, RequestError> {
    match c {
        0 => Ok(None),
        1 => Ok(Some(PixelFormat::Rgb888)),
        2 => Ok(Some(PixelFormat::Rgb565)),
        _ => Err(RequestError::Frame),
    }
}

fn u16_at(b: &[u8; HEADER_LEN], at: usize) -> u16 {
    let mut x = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        x.copy_from_slice(s);
    }
    u16::from_le_bytes(x)
}

fn u32_at(b: &[u8; HEADER_LEN], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8; HEADER_LEN], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_le_bytes(x)
}

fn put(b: &mut [u8; HEADER_LEN], at: usize, bytes: &[u8]) {
    if let Some(dst) = b.get_mut(at..at + bytes.len()) {
        dst.copy_from_slice(bytes);
    }
}

/// CRC of a blob: the header up to the CRC field, then everything after the header.
fn blob_crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(header.get(..CRC_AT).unwrap_or(header));
    c.update(payload);
    c.finish()
}

/// Where the parts of an encoded request go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Placement {
    system_at: usize,
    text_end: usize,
    frame_at: usize,
    total: usize,
}

fn place(prompt: usize, system: usize, frame: Option<usize>) -> Option<Placement> {
    let system_at = HEADER_LEN.checked_add(prompt)?;
    let text_end = system_at.checked_add(system)?;
    let (frame_at, total) = match frame {
        None => (0, text_end),
        Some(n) => {
            let at = text_end.checked_next_multiple_of(FRAME_ALIGN)?;
            (at, at.checked_add(n)?)
        }
    };
    Some(Placement {
        system_at,
        text_end,
        frame_at,
        total,
    })
}

impl<'a> Request<'a> {
    /// A greedy text request with the chat template and no frame.
    pub fn text(prompt: &'a str, max_tokens: u32, weights_len: u64) -> Self {
        Request {
            prompt,
            system: None,
            raw: false,
            max_tokens,
            sampler: SamplerConfig::default(),
            weights_len,
            frame: None,
            stream: None,
        }
    }

    /// The bytes of the frame part: the stream's ring, or the single frame.
    fn frame_bytes(&self) -> Result<Option<&'a [u8]>, RequestError> {
        match (&self.stream, &self.frame) {
            (Some(s), Some(f)) => {
                let first = s.frames.frame(0).ok_or(RequestError::Frame)?;
                if s.frames.count < 2
                    || s.frames.byte_len() != Some(s.frames.data.len())
                    || (first.width, first.height, first.format) != (f.width, f.height, f.format)
                {
                    return Err(RequestError::Frame);
                }
                Ok(Some(s.frames.data))
            }
            (Some(_), None) => Err(RequestError::Frame),
            (None, f) => Ok(f.map(|f| f.data)),
        }
    }

    fn placement(&self) -> Result<Placement, RequestError> {
        let frame = self.frame_bytes()?.map(<[u8]>::len);
        let system = self.system.map_or(0, str::len);
        let p = place(self.prompt.len(), system, frame).ok_or(RequestError::TooLarge)?;
        if u32::try_from(p.total).is_err() {
            return Err(RequestError::TooLarge);
        }
        Ok(p)
    }

    /// Bytes [`Request::encode`] writes.
    pub fn encoded_len(&self) -> Result<usize, RequestError> {
        Ok(self.placement()?.total)
    }

    /// Write the blob into the start of `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, RequestError> {
        let p = self.placement()?;
        let got = out.len();
        let out = out.get_mut(..p.total).ok_or(RequestError::BufferTooSmall {
            needed: p.total,
            got,
        })?;
        let too_large = |_| RequestError::TooLarge;
        let mut flags = 0u16;
        if self.raw {
            flags |= FLAG_RAW;
        }
        if self.system.is_some() {
            flags |= FLAG_SYSTEM;
        }
        if self.stream.is_some_and(|s| !s.keep_prefix) {
            flags |= FLAG_NO_PREFIX_REUSE;
        }
        let s = &self.sampler;
        let mut h = [0u8; HEADER_LEN];
        put(&mut h, 0, &MAGIC);
        put(&mut h, 8, &VERSION.to_le_bytes());
        put(&mut h, 10, &flags.to_le_bytes());
        put(&mut h, 12, &(p.total as u32).to_le_bytes());
        put(&mut h, 16, &self.weights_len.to_le_bytes());
        put(&mut h, 24, &self.max_tokens.to_le_bytes());
        put(&mut h, 28, &(self.prompt.len() as u32).to_le_bytes());
        let system_len = self.system.map_or(0, str::len) as u32;
        put(&mut h, 32, &system_len.to_le_bytes());
        let last_n = u32::try_from(s.repeat_last_n).map_err(too_large)?;
        put(&mut h, 36, &last_n.to_le_bytes());
        put(&mut h, 40, &s.seed.to_le_bytes());
        put(&mut h, 48, &s.temperature.to_le_bytes());
        put(&mut h, 52, &s.top_p.to_le_bytes());
        let top_k = u32::try_from(s.top_k).map_err(too_large)?;
        put(&mut h, 56, &top_k.to_le_bytes());
        put(&mut h, 60, &s.repeat_penalty.to_le_bytes());
        if let Some(f) = &self.frame {
            let w = u32::try_from(f.width).map_err(too_large)?;
            let ht = u32::try_from(f.height).map_err(too_large)?;
            put(&mut h, 64, &(p.frame_at as u32).to_le_bytes());
            put(&mut h, 68, &w.to_le_bytes());
            put(&mut h, 72, &ht.to_le_bytes());
        }
        h[76] = format_code(self.frame.map(|f| f.format));
        let count = match (&self.stream, &self.frame) {
            (Some(s), _) => u32::try_from(s.frames.count).map_err(too_large)?,
            (None, Some(_)) => 1,
            (None, None) => 0,
        };
        put(&mut h, 80, &count.to_le_bytes());
        let min_change = self.stream.map_or(0.0, |s| s.min_change);
        put(&mut h, 84, &min_change.to_le_bytes());

        out.fill(0);
        let (head, payload) = out.split_at_mut(HEADER_LEN);
        let rel = |at: usize| at - HEADER_LEN;
        payload[..rel(p.system_at)].copy_from_slice(self.prompt.as_bytes());
        if let Some(sys) = self.system {
            payload[rel(p.system_at)..rel(p.text_end)].copy_from_slice(sys.as_bytes());
        }
        if let Some(data) = self.frame_bytes()? {
            payload[rel(p.frame_at)..].copy_from_slice(data);
        }
        let crc = blob_crc(&h, payload);
        put(&mut h, CRC_AT, &crc.to_le_bytes());
        head.copy_from_slice(&h);
        Ok(p.total)
    }

    /// Read a blob from the start of `bytes` (which may run on past it: a firmware passes
    /// its whole request window). Checks magic, version, CRC, lengths and UTF-8.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, RequestError> {
        let got = bytes.len() as u64;
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(bytes.get(..HEADER_LEN).ok_or(RequestError::Truncated {
            needed: HEADER_LEN as u64,
            got,
        })?);
        if h[..8] != MAGIC {
            return Err(RequestError::BadMagic);
        }
        let version = u16_at(&h, 8);
        if version != VERSION {
            return Err(RequestError::UnsupportedVersion(version));
        }
        let total = u32_at(&h, 12) as usize;
        let blob = bytes.get(..total).ok_or(RequestError::Truncated {
            needed: total as u64,
            got,
        })?;
        let payload = blob.get(HEADER_LEN..).ok_or(RequestError::Lengths)?;
        if blob_crc(&h, payload) != u32_at(&h, CRC_AT) {
            return Err(RequestError::Checksum);
        }
        let flags = u16_at(&h, 10);
        let reserved = h[77..80].iter().chain(&h[88..CRC_AT]);
        if flags & !KNOWN_FLAGS != 0 || reserved.into_iter().any(|&b| b != 0) {
            return Err(RequestError::Reserved);
        }

        let prompt_len = u32_at(&h, 28) as usize;
        let system_len = u32_at(&h, 32) as usize;
        let format = format_from_code(h[76])?;
        let (frame_at, width, height) = (
            u32_at(&h, 64) as usize,
            u32_at(&h, 68) as usize,
            u32_at(&h, 72) as usize,
        );
        let count = u32_at(&h, 80) as usize;
        let min_change = f32::from_le_bytes(u32_at(&h, 84).to_le_bytes());
        let frame_len = match format {
            None => None,
            Some(f) => Some(
                width
                    .checked_mul(height)
                    .and_then(|n| n.checked_mul(f.bytes_per_pixel()))
                    .ok_or(RequestError::Frame)?,
            ),
        };
        // Count, format and gate agree: no frame and 0, one frame and 1 (gate 0), or a
        // stream of N >= 2 with a finite gate >= 0.
        match (format, count) {
            (None, 0) | (Some(_), 1) if min_change.to_bits() == 0 => {}
            (Some(_), n) if n >= 2 && min_change.is_finite() && min_change >= 0.0 => {}
            _ => return Err(RequestError::Frame),
        }
        if count < 2 && flags & FLAG_NO_PREFIX_REUSE != 0 {
            return Err(RequestError::Reserved);
        }
        let frame_len = match frame_len {
            Some(n) if count >= 2 => Some(
                n.next_multiple_of(FRAME_ALIGN)
                    .checked_mul(count - 1)
                    .and_then(|a| a.checked_add(n))
                    .ok_or(RequestError::Frame)?,
            ),
            other => other,
        };
        // The writer's placement is the only valid one: recompute it and compare.
        let p = place(prompt_len, system_len, frame_len).ok_or(RequestError::Lengths)?;
        if p.total != total || p.frame_at != frame_at {
            return Err(RequestError::Lengths);
        }
        let text = |from: usize, to: usize| -> Result<&'a str, RequestError> {
            let b = blob.get(from..to).ok_or(RequestError::Lengths)?;
            core::str::from_utf8(b).map_err(|_| RequestError::NotUtf8)
        };
        let prompt = text(HEADER_LEN, p.system_at)?;
        let system = if flags & FLAG_SYSTEM != 0 {
            Some(text(p.system_at, p.text_end)?)
        } else if system_len != 0 {
            return Err(RequestError::Lengths);
        } else {
            None
        };
        if blob
            .get(
                p.text_end..if format.is_some() {
                    p.frame_at
                } else {
                    p.total
                },
            )
            .is_none_or(|pad| pad.iter().any(|&b| b != 0))
        {
            return Err(RequestError::Reserved);
        }
        let frame = match format {
            None => {
                if frame_at != 0 || width != 0 || height != 0 {
                    return Err(RequestError::Frame);
                }
                None
            }
            Some(format) => {
                let data = blob.get(p.frame_at..p.total).ok_or(RequestError::Lengths)?;
                let first = width
                    .saturating_mul(height)
                    .saturating_mul(format.bytes_per_pixel());
                Some(Frame {
                    width,
                    height,
                    format,
                    data: data.get(..first).ok_or(RequestError::Lengths)?,
                })
            }
        };
        let stream = match (frame, count) {
            (Some(f), n) if n >= 2 => {
                let data = blob.get(p.frame_at..p.total).ok_or(RequestError::Lengths)?;
                // The padding between frames is zero, like every other gap in the blob.
                let ring = FrameRing {
                    width: f.width,
                    height: f.height,
                    format: f.format,
                    count: n,
                    data,
                };
                let (len, stride) = (ring.frame_len(), ring.stride());
                if (0..n - 1).any(|i| {
                    data.get(i * stride + len..(i + 1) * stride)
                        .is_none_or(|pad| pad.iter().any(|&b| b != 0))
                }) {
                    return Err(RequestError::Reserved);
                }
                Some(Stream {
                    frames: ring,
                    min_change,
                    keep_prefix: flags & FLAG_NO_PREFIX_REUSE == 0,
                })
            }
            _ => None,
        };
        let f32_at = |at: usize| f32::from_le_bytes(u32_at(&h, at).to_le_bytes());
        Ok(Request {
            prompt,
            system,
            raw: flags & FLAG_RAW != 0,
            max_tokens: u32_at(&h, 24),
            sampler: SamplerConfig {
                temperature: f32_at(48),
                top_k: u32_at(&h, 56) as usize,
                top_p: f32_at(52),
                repeat_penalty: f32_at(60),
                repeat_last_n: u32_at(&h, 36) as usize,
                seed: u64_at(&h, 40),
            },
            weights_len: u64_at(&h, 16),
            frame,
            stream,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn encode(r: &Request<'_>) -> Vec<u8> {
        let mut out = vec![0u8; r.encoded_len().unwrap()];
        let n = r.encode(&mut out).unwrap();
        assert_eq!(n, out.len());
        out
    }

    fn sample() -> (Vec<u8>, Request<'static>) {
        static PIXELS: [u8; 2 * 3 * 3] = [7; 18];
        let r = Request {
            prompt: "Describe the image in détail.",
            system: Some(""),
            raw: true,
            max_tokens: 17,
            sampler: SamplerConfig {
                temperature: 0.7,
                top_k: 40,
                top_p: 0.9,
                repeat_penalty: 1.1,
                repeat_last_n: 32,
                seed: 0xDEAD_BEEF_0123,
            },
            weights_len: 123_456_789_012,
            frame: Some(Frame {
                width: 3,
                height: 2,
                format: PixelFormat::Rgb888,
                data: &PIXELS,
            }),
            stream: None,
        };
        (encode(&r), r)
    }

    #[test]
    fn roundtrip_with_frame_and_system() {
        let (blob, r) = sample();
        // 96 header + 30 prompt bytes ("é" is two) = 126, padded to 128, then 18 pixels.
        assert_eq!(blob.len(), 128 + 18);
        let mut window = blob.clone();
        window.extend_from_slice(&[0xAA; 100]); // the rest of the window is not the blob's
        let d = Request::decode(&window).unwrap();
        assert_eq!(d.prompt, r.prompt);
        assert_eq!(d.system, Some(""));
        assert!(d.raw);
        assert_eq!(d.max_tokens, 17);
        assert_eq!(d.sampler, r.sampler);
        assert_eq!(d.weights_len, r.weights_len);
        let f = d.frame.unwrap();
        assert_eq!((f.width, f.height, f.format), (3, 2, PixelFormat::Rgb888));
        assert_eq!(f.data, &[7u8; 18][..]);
        let at = f.data.as_ptr() as usize - window.as_ptr() as usize;
        assert_eq!(at % FRAME_ALIGN, 0);
    }

    #[test]
    fn text_request_has_no_frame_and_default_system() {
        let r = Request::text("Hi", 8, 4096);
        let blob = encode(&r);
        assert_eq!(blob.len(), HEADER_LEN + 2);
        let d = Request::decode(&blob).unwrap();
        assert_eq!(
            (d.prompt, d.system, d.raw, d.max_tokens),
            ("Hi", None, false, 8)
        );
        assert!(d.frame.is_none() && d.sampler.is_greedy());
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let (blob, _) = sample();
        for i in 0..blob.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = blob.clone();
                b[i] ^= bit;
                assert!(
                    Request::decode(&b).is_err(),
                    "flip {bit:#x} at byte {i} accepted"
                );
            }
        }
    }

    #[test]
    fn short_and_empty_windows_are_errors() {
        let (blob, _) = sample();
        assert_eq!(
            Request::decode(&[]).unwrap_err(),
            RequestError::Truncated { needed: 96, got: 0 }
        );
        assert!(matches!(
            Request::decode(&blob[..blob.len() - 1]),
            Err(RequestError::Truncated { .. })
        ));
        assert_eq!(
            Request::decode(&[0u8; 256]).unwrap_err(),
            RequestError::BadMagic
        );
    }

    #[test]
    fn resealed_inconsistent_headers_are_rejected() {
        // Rewrite a field and fix the CRC, so only the consistency checks can object.
        let (blob, _) = sample();
        let reseal = |mut b: Vec<u8>| {
            let crc = blob_crc(&b[..HEADER_LEN], &b[HEADER_LEN..]);
            b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
            b
        };
        let mut b = blob.clone();
        b[28] += 3; // prompt 3 bytes longer: the frame would have to start at 144, not 128
        assert_eq!(
            Request::decode(&reseal(b)).unwrap_err(),
            RequestError::Lengths
        );
        let mut b = blob.clone();
        b[76] = 9;
        assert_eq!(
            Request::decode(&reseal(b)).unwrap_err(),
            RequestError::Frame
        );
        let mut b = blob.clone();
        b[88] = 1;
        assert_eq!(
            Request::decode(&reseal(b)).unwrap_err(),
            RequestError::Reserved
        );
        let mut b = blob.clone();
        b[HEADER_LEN] = 0xFF; // first prompt byte
        assert_eq!(
            Request::decode(&reseal(b)).unwrap_err(),
            RequestError::NotUtf8
        );
    }

    #[test]
    fn a_stream_roundtrips_and_its_frames_are_captured_in_order() {
        use glimpse_hal::FrameSource;
        // Three 3x2 RGB888 frames of 18 bytes: stride 32, 14 zero bytes between frames.
        let mut ring = vec![0u8; 32 * 2 + 18];
        for i in 0..3 {
            ring[i * 32..i * 32 + 18].fill(i as u8 + 1);
        }
        let frames = FrameRing {
            width: 3,
            height: 2,
            format: PixelFormat::Rgb888,
            count: 3,
            data: &ring,
        };
        let r = Request {
            frame: frames.frame(0),
            stream: Some(Stream {
                frames,
                min_change: 0.25,
                keep_prefix: false,
            }),
            ..Request::text("Describe the image.", 8, 1)
        };
        let blob = encode(&r);
        let d = Request::decode(&blob).unwrap();
        let s = d.stream.unwrap();
        assert_eq!(
            (s.frames.count, s.min_change, s.keep_prefix),
            (3, 0.25, false)
        );
        assert_eq!(d.frame.unwrap().data, &[1u8; 18][..]);
        let mut src = RingSource::new(s.frames);
        let mut buf = [0u8; 18];
        for i in 0..3u8 {
            let info = src.capture(&mut buf).unwrap();
            assert_eq!((info.width, info.height), (3, 2));
            assert_eq!(buf, [i + 1; 18]);
        }
        assert_eq!(src.capture(&mut buf), Err(RingError::Exhausted));
        assert_eq!(
            RingSource::new(s.frames).capture(&mut [0u8; 17]),
            Err(RingError::BufferTooSmall)
        );
        // Every byte matters: flips anywhere are refused.
        for i in 0..blob.len() {
            let mut b = blob.clone();
            b[i] ^= 0x40;
            assert!(Request::decode(&b).is_err(), "flip at {i} accepted");
        }
        // A ring whose length does not match its count is refused when encoding.
        let bad = Request {
            stream: Some(Stream {
                frames: FrameRing { count: 4, ..frames },
                min_change: 0.0,
                keep_prefix: true,
            }),
            ..r
        };
        assert_eq!(bad.encoded_len().unwrap_err(), RequestError::Frame);
    }

    #[test]
    fn encode_refuses_a_small_buffer() {
        let r = Request::text("Hello", 1, 1);
        let mut out = [0u8; HEADER_LEN];
        assert_eq!(
            r.encode(&mut out).unwrap_err(),
            RequestError::BufferTooSmall {
                needed: HEADER_LEN + 5,
                got: HEADER_LEN
            }
        );
    }
}
