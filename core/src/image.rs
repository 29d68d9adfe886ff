//! The model reader: validates a model file's (`.glim`, a weights image) structure once, in
//! place and without allocating, then hands out zero-copy views of its tensors. The type
//! is [`Model`]; "image" in this module's names means the file's bytes, never a picture.
//!
//! [`Model::parse`] checks everything that can be checked without reading the payloads
//! (header, region bounds and order, the metadata CRC, the config, every table record,
//! names, payload placement and sizes), so every accessor afterwards is a few bounds-checked
//! slice operations. [`Model::verify`] reads every byte: tensor CRCs and zero padding. A
//! device short on time may skip it and check tensors one by one with
//! [`TensorView::verify`]. Together the two reject any single-byte corruption: the header,
//! the metadata and each payload carry a CRC, and every other byte must be zero.

use core::cmp::Ordering;
use core::fmt;
use core::iter::FusedIterator;

use glimpse_quant::crc32::{Crc32, crc32};
use glimpse_quant::layout::{
    DATA_ALIGN, DType, ENTRY_LEN, HEADER_LEN, Header, LayoutError, MAX_DIMS, MAX_NAME_LEN, Region,
    TensorEntry, TensorLayout,
};
use glimpse_quant::schema::ModelConfig;

/// Alignment the image's first byte must have. Payloads sit at multiples of
/// [`DATA_ALIGN`] from it, so every payload is at least this aligned in memory: enough for
/// `f32`/`u32` views and for targets that trap on unaligned access.
pub const BASE_ALIGN: usize = 16;

/// Why an image, or a tensor in it, was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ImageError {
    /// The header (or a buffer shorter than one) is malformed.
    Layout(LayoutError),
    /// The image's start (or a typed view) is not aligned to `align` bytes.
    Misaligned {
        /// Required alignment in bytes.
        align: usize,
    },
    /// The header's file length differs from the buffer's.
    LengthMismatch {
        /// Length the header records.
        header: u64,
        /// Length of the buffer.
        actual: u64,
    },
    /// A region is out of bounds, out of order, overlapping, or misaligned.
    Region {
        /// `"config"`, `"table"`, `"names"` or `"data"`.
        which: &'static str,
    },
    /// The CRC over config, table and names does not match.
    MetaChecksum,
    /// The config region does not decode to exactly one [`ModelConfig`].
    Config,
    /// A tensor record does not decode.
    Entry {
        /// Record number (table order).
        index: u32,
        /// What is wrong with it.
        error: LayoutError,
    },
    /// A tensor name is out of the names region, empty, too long, not UTF-8, or contains
    /// whitespace or control characters.
    Name {
        /// Record number.
        index: u32,
    },
    /// A tensor name is not strictly greater than the one before it.
    NamesNotSorted {
        /// Record number of the second of the pair.
        index: u32,
    },
    /// A payload is misaligned, outside the data region, or not after the previous one.
    Payload {
        /// Record number.
        index: u32,
    },
    /// A payload's length does not match its dtype and shape.
    PayloadSize {
        /// Record number.
        index: u32,
    },
    /// A payload's CRC does not match.
    TensorChecksum {
        /// Record number.
        index: u32,
    },
    /// A byte outside every region and payload is not zero.
    Padding {
        /// Absolute offset of the first such byte.
        offset: u64,
    },
    /// No tensor has the requested name.
    MissingTensor,
    /// A tensor number at or past the tensor count.
    IndexOutOfRange {
        /// The number asked for.
        index: usize,
    },
    /// A tensor has a different dtype than its user needs.
    WrongDType {
        /// Record number.
        index: u32,
        /// The dtype needed.
        expected: DType,
        /// The dtype stored.
        got: DType,
    },
    /// A tensor has a different shape than its user needs.
    WrongShape {
        /// Record number.
        index: u32,
    },
}

fn layout_message(e: &LayoutError) -> &'static str {
    match e {
        LayoutError::Truncated => "truncated",
        LayoutError::BadMagic => "bad magic (not a weights image)",
        LayoutError::UnsupportedVersion { .. } => "unsupported format version",
        LayoutError::HeaderChecksum => "header checksum mismatch",
        LayoutError::UnknownDType(_) => "unknown dtype code",
        LayoutError::BadRank(_) => "rank outside 1..=4",
        LayoutError::BadShape => "zero dimension, or non-zero dimension past the rank",
        LayoutError::ReservedNotZero => "reserved field not zero",
        LayoutError::UnknownLayout(_) => "unknown layout tag",
        _ => "malformed",
    }
}

struct Layout<'e>(&'e LayoutError);

impl fmt::Display for Layout<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(layout_message(self.0))?;
        match self.0 {
            LayoutError::UnsupportedVersion { major, minor } => write!(f, " {major}.{minor}"),
            LayoutError::UnknownDType(c) | LayoutError::UnknownLayout(c) => write!(f, " {c}"),
            LayoutError::BadRank(r) => write!(f, " ({r})"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Layout(e) => write!(f, "image header: {}", Layout(e)),
            ImageError::Misaligned { align } => {
                write!(f, "buffer is not aligned to {align} bytes")
            }
            ImageError::LengthMismatch { header, actual } => write!(
                f,
                "image is {actual} bytes but its header says {header} (truncated or padded?)"
            ),
            ImageError::Region { which } => {
                write!(
                    f,
                    "{which} region is out of bounds, out of order or misaligned"
                )
            }
            ImageError::MetaChecksum => {
                f.write_str("checksum of the config, tensor table and names does not match")
            }
            ImageError::Config => f.write_str("model config does not decode"),
            ImageError::Entry { index, error } => {
                write!(f, "tensor record #{index}: {}", Layout(error))
            }
            ImageError::Name { index } => write!(f, "tensor #{index}: invalid name"),
            ImageError::NamesNotSorted { index } => {
                write!(f, "tensor #{index}: name not after the previous one")
            }
            ImageError::Payload { index } => write!(
                f,
                "tensor #{index}: payload misaligned, outside the data region or out of order"
            ),
            ImageError::PayloadSize { index } => write!(
                f,
                "tensor #{index}: payload length does not match its dtype and shape"
            ),
            ImageError::TensorChecksum { index } => {
                write!(f, "tensor #{index}: payload checksum mismatch")
            }
            ImageError::Padding { offset } => {
                write!(f, "non-zero padding byte at offset {offset}")
            }
            ImageError::MissingTensor => f.write_str("no tensor of that name"),
            ImageError::IndexOutOfRange { index } => write!(f, "no tensor #{index}"),
            ImageError::WrongDType {
                index,
                expected,
                got,
            } => write!(
                f,
                "tensor #{index}: dtype {} where {} is needed",
                got.name(),
                expected.name()
            ),
            ImageError::WrongShape { index } => {
                write!(f, "tensor #{index}: shape differs from the config's")
            }
        }
    }
}

impl core::error::Error for ImageError {}

/// `bytes[region]`, or `None` when it does not fit (in the buffer or in `usize`).
fn slice(bytes: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let len = usize::try_from(len).ok()?;
    bytes.get(start..start.checked_add(len)?)
}

/// End of `r` if it starts at or after `min_start` and ends within `limit`.
fn region_end(
    r: Region,
    min_start: u64,
    limit: u64,
    which: &'static str,
) -> Result<u64, ImageError> {
    let err = ImageError::Region { which };
    let end = r.end().ok_or(err)?;
    if r.offset < min_start || end > limit {
        return Err(err);
    }
    Ok(end)
}

/// Offset of the first non-zero byte in `bytes[from..to]`.
fn check_zero(bytes: &[u8], from: u64, to: u64) -> Result<(), ImageError> {
    let len = to
        .checked_sub(from)
        .ok_or(ImageError::Padding { offset: from })?;
    let gap = slice(bytes, from, len).ok_or(ImageError::Padding { offset: from })?;
    match gap.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(p) => Err(ImageError::Padding {
            offset: from.saturating_add(p as u64),
        }),
    }
}

fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The parts of an image the tensor accessors need; `Copy`, so iterators do not borrow
/// the [`Model`].
#[derive(Clone, Copy)]
struct Tables<'a> {
    bytes: &'a [u8],
    table: &'a [u8],
    names: &'a [u8],
    count: u32,
}

impl<'a> Tables<'a> {
    fn entry(&self, index: u32) -> Result<TensorEntry, ImageError> {
        let start = (index as usize)
            .checked_mul(ENTRY_LEN)
            .ok_or(ImageError::IndexOutOfRange {
                index: index as usize,
            })?;
        let rec = self.table.get(start..).ok_or(ImageError::IndexOutOfRange {
            index: index as usize,
        })?;
        TensorEntry::decode(rec).map_err(|error| ImageError::Entry { index, error })
    }

    fn name(&self, index: u32, e: &TensorEntry) -> Result<&'a str, ImageError> {
        let err = ImageError::Name { index };
        let raw = slice(self.names, e.name_offset.into(), e.name_len.into()).ok_or(err)?;
        let name = core::str::from_utf8(raw).map_err(|_| err)?;
        if !name_ok(name) {
            return Err(err);
        }
        Ok(name)
    }

    fn view(&self, index: u32) -> Result<TensorView<'a>, ImageError> {
        if index >= self.count {
            return Err(ImageError::IndexOutOfRange {
                index: index as usize,
            });
        }
        let e = self.entry(index)?;
        let name = self.name(index, &e)?;
        let data = slice(self.bytes, e.offset, e.nbytes).ok_or(ImageError::Payload { index })?;
        Ok(TensorView {
            name,
            dtype: e.dtype,
            data,
            crc: e.crc,
            layout: e.layout,
            index,
            offset: e.offset,
            shape: e.shape,
            rank: e.rank,
        })
    }
}

/// A validated model (a `.glim` weights image) borrowed from a byte buffer (memory-mapped
/// file, flash, or a `static`).
pub struct Model<'a> {
    tables: Tables<'a>,
    header: Header,
    config: ModelConfig,
}

impl fmt::Debug for Model<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Model")
            .field("file_len", &self.header.file_len)
            .field("tensors", &self.tables.count)
            .field("model", &self.config.name)
            .finish_non_exhaustive()
    }
}

impl<'a> Model<'a> {
    /// Validate the structure of `bytes` (see the module docs) and borrow it. Does not
    /// read the payloads; call [`Model::verify`] for that.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ImageError> {
        // Length first: an empty slice's dangling pointer would otherwise report a
        // confusing misalignment.
        if bytes.len() < HEADER_LEN {
            return Err(ImageError::Layout(LayoutError::Truncated));
        }
        if !bytes.as_ptr().addr().is_multiple_of(BASE_ALIGN) {
            return Err(ImageError::Misaligned { align: BASE_ALIGN });
        }
        let header = Header::decode(bytes).map_err(ImageError::Layout)?;
        let actual = bytes.len() as u64;
        if header.file_len != actual {
            return Err(ImageError::LengthMismatch {
                header: header.file_len,
                actual,
            });
        }

        // Regions follow each other in a fixed order; gaps are allowed but must be zero
        // (checked by `verify`), and the data region runs to the end of the file.
        let config_end = region_end(header.config, HEADER_LEN as u64, actual, "config")?;
        let table = Region {
            offset: header.table_offset,
            len: u64::from(header.tensor_count)
                .checked_mul(ENTRY_LEN as u64)
                .ok_or(ImageError::Region { which: "table" })?,
        };
        let table_end = region_end(table, config_end, actual, "table")?;
        let names_end = region_end(header.names, table_end, actual, "names")?;
        let data_end = region_end(header.data, names_end, actual, "data")?;
        if !header.data.offset.is_multiple_of(DATA_ALIGN as u64) || data_end != actual {
            return Err(ImageError::Region { which: "data" });
        }
        let config_bytes = slice(bytes, header.config.offset, header.config.len)
            .ok_or(ImageError::Region { which: "config" })?;
        let table_bytes =
            slice(bytes, table.offset, table.len).ok_or(ImageError::Region { which: "table" })?;
        let names_bytes = slice(bytes, header.names.offset, header.names.len)
            .ok_or(ImageError::Region { which: "names" })?;

        let mut crc = Crc32::new();
        crc.update(config_bytes);
        crc.update(table_bytes);
        crc.update(names_bytes);
        if crc.finish() != header.meta_crc {
            return Err(ImageError::MetaChecksum);
        }

        let config = match postcard::take_from_bytes::<ModelConfig>(config_bytes) {
            Ok((config, [])) => config,
            _ => return Err(ImageError::Config),
        };

        let tables = Tables {
            bytes,
            table: table_bytes,
            names: names_bytes,
            count: header.tensor_count,
        };
        let mut prev_name: Option<&str> = None;
        let mut prev_end = header.data.offset;
        for index in 0..header.tensor_count {
            let e = tables.entry(index)?;
            let name = tables.name(index, &e)?;
            // Strict byte order makes names unique and lets `find` binary-search.
            if prev_name.is_some_and(|p| p.as_bytes() >= name.as_bytes()) {
                return Err(ImageError::NamesNotSorted { index });
            }
            prev_name = Some(name);
            if e.layout.payload_bytes(e.dtype, e.dims()) != Some(e.nbytes) {
                return Err(ImageError::PayloadSize { index });
            }
            let end = e
                .offset
                .checked_add(e.nbytes)
                .ok_or(ImageError::Payload { index })?;
            if !e.offset.is_multiple_of(DATA_ALIGN as u64) || e.offset < prev_end || end > data_end
            {
                return Err(ImageError::Payload { index });
            }
            prev_end = end;
        }

        Ok(Model {
            tables,
            header,
            config,
        })
    }

    /// Check every tensor's CRC and that every byte outside the regions and payloads is
    /// zero. Reads the whole image once.
    pub fn verify(&self) -> Result<(), ImageError> {
        for t in self.iter() {
            t.verify()?;
        }
        self.verify_padding()
    }

    /// Check that every gap (between regions, before, between and after payloads) is zero.
    /// Part of [`Model::verify`]; separate so a caller can check tensors one by one.
    pub fn verify_padding(&self) -> Result<(), ImageError> {
        let h = &self.header;
        let b = self.tables.bytes;
        // parse() established that these ends exist and are in order.
        let end = |r: Region| r.end().ok_or(ImageError::Padding { offset: r.offset });
        let table_end = h
            .table_offset
            .saturating_add(self.tables.table.len() as u64);
        check_zero(b, HEADER_LEN as u64, h.config.offset)?;
        check_zero(b, end(h.config)?, h.table_offset)?;
        check_zero(b, table_end, h.names.offset)?;
        check_zero(b, end(h.names)?, h.data.offset)?;
        let mut at = h.data.offset;
        for t in self.iter() {
            check_zero(b, at, t.offset)?;
            at = t.offset.saturating_add(t.data.len() as u64);
        }
        check_zero(b, at, end(h.data)?)
    }

    /// The model config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The whole image.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.tables.bytes
    }

    /// Image length in bytes.
    pub fn file_len(&self) -> u64 {
        self.header.file_len
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tables.count as usize
    }

    /// Whether the image holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tables.count == 0
    }

    /// Tensor number `index` (table order, which is name order).
    pub fn tensor(&self, index: usize) -> Result<TensorView<'a>, ImageError> {
        let i = u32::try_from(index).map_err(|_| ImageError::IndexOutOfRange { index })?;
        self.tables.view(i)
    }

    /// The tensor called `name`, by binary search over the sorted table.
    pub fn find(&self, name: &str) -> Result<TensorView<'a>, ImageError> {
        let (mut lo, mut hi) = (0u32, self.tables.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = self.tables.entry(mid)?;
            let here = self.tables.name(mid, &e)?;
            match here.as_bytes().cmp(name.as_bytes()) {
                Ordering::Less => lo = mid + 1,
                Ordering::Greater => hi = mid,
                Ordering::Equal => return self.tables.view(mid),
            }
        }
        Err(ImageError::MissingTensor)
    }

    /// Every tensor, in table (name) order.
    pub fn iter(&self) -> Iter<'a> {
        Iter {
            tables: self.tables,
            next: 0,
        }
    }
}

impl<'a> IntoIterator for &Model<'a> {
    type Item = TensorView<'a>;
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Iterator over an image's tensors. Every record was validated by [`Model::parse`], so
/// it yields views, not results.
#[derive(Clone)]
pub struct Iter<'a> {
    tables: Tables<'a>,
    next: u32,
}

impl fmt::Debug for Iter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("next", &self.next)
            .field("count", &self.tables.count)
            .finish()
    }
}

impl<'a> Iterator for Iter<'a> {
    type Item = TensorView<'a>;

    fn next(&mut self) -> Option<TensorView<'a>> {
        if self.next >= self.tables.count {
            return None;
        }
        let view = self.tables.view(self.next).ok();
        // A record that does not decode cannot come out of parse(); end rather than skip.
        self.next = if view.is_some() {
            self.next.saturating_add(1)
        } else {
            self.tables.count
        };
        view
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.tables.count.saturating_sub(self.next) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Iter<'_> {}
impl FusedIterator for Iter<'_> {}

/// Plain number types a payload may be viewed as: every bit pattern is a valid value and
/// there is no padding.
trait Plain: Copy {}
impl Plain for u8 {}
impl Plain for u32 {}
impl Plain for i32 {}
impl Plain for f32 {}
impl Plain for half::f16 {}
impl Plain for half::bf16 {}

/// One tensor of a [`Model`], borrowed from it.
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    /// Canonical name.
    pub name: &'a str,
    /// Storage format.
    pub dtype: DType,
    /// The payload, in `dtype`'s storage format.
    pub data: &'a [u8],
    /// The payload's stored CRC-32.
    pub crc: u32,
    /// Row arrangement.
    pub layout: TensorLayout,
    /// Position in the table.
    pub index: u32,
    /// Absolute offset of the payload in the image.
    pub offset: u64,
    shape: [u32; MAX_DIMS],
    rank: u8,
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorView")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("dims", &self.dims())
            .field("bytes", &self.data.len())
            .field("offset", &self.offset)
            .field("index", &self.index)
            .finish()
    }
}

impl<'a> TensorView<'a> {
    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[u32] {
        self.shape.get(..self.rank as usize).unwrap_or(&[])
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.rank as usize
    }

    /// Number of logical elements.
    pub fn elems(&self) -> u64 {
        self.dims().iter().map(|&d| u64::from(d)).product()
    }

    /// Payload length in bytes.
    pub fn nbytes(&self) -> usize {
        self.data.len()
    }

    /// Check the payload against its CRC.
    pub fn verify(&self) -> Result<(), ImageError> {
        if crc32(self.data) == self.crc {
            Ok(())
        } else {
            Err(ImageError::TensorChecksum { index: self.index })
        }
    }

    /// Check the dtype (when `dtype` is `Some`) and the exact shape.
    pub fn expect(&self, dtype: Option<DType>, dims: &[u32]) -> Result<(), ImageError> {
        if let Some(want) = dtype {
            self.expect_dtype(want)?;
        }
        if self.dims() != dims {
            return Err(ImageError::WrongShape { index: self.index });
        }
        Ok(())
    }

    fn expect_dtype(&self, want: DType) -> Result<(), ImageError> {
        if self.dtype != want {
            return Err(ImageError::WrongDType {
                index: self.index,
                expected: want,
                got: self.dtype,
            });
        }
        Ok(())
    }

    /// The payload as `T`s, without copying.
    fn cast<T: Plain>(&self, want: DType) -> Result<&'a [T], ImageError> {
        self.expect_dtype(want)?;
        // SAFETY: `T: Plain` is a primitive number type (or a transparent wrapper of one):
        // no padding, no invalid bit patterns, no drop glue. `align_to` only reinterprets
        // the correctly aligned middle part; we refuse to return a partial view below.
        let (head, body, tail) = unsafe { self.data.align_to::<T>() };
        if !head.is_empty() || !tail.is_empty() {
            return Err(ImageError::Misaligned {
                align: core::mem::align_of::<T>(),
            });
        }
        Ok(body)
    }

    /// A [`DType::U8`] payload.
    pub fn as_u8(&self) -> Result<&'a [u8], ImageError> {
        self.cast::<u8>(DType::U8)
    }

    /// A [`DType::F32`] payload as `f32`s (stored little-endian, so little-endian
    /// targets only).
    #[cfg(target_endian = "little")]
    pub fn as_f32(&self) -> Result<&'a [f32], ImageError> {
        self.cast::<f32>(DType::F32)
    }

    /// A [`DType::U32`] payload as `u32`s.
    #[cfg(target_endian = "little")]
    pub fn as_u32(&self) -> Result<&'a [u32], ImageError> {
        self.cast::<u32>(DType::U32)
    }

    /// A [`DType::I32`] payload as `i32`s.
    #[cfg(target_endian = "little")]
    pub fn as_i32(&self) -> Result<&'a [i32], ImageError> {
        self.cast::<i32>(DType::I32)
    }

    /// A [`DType::F16`] payload as `f16`s.
    #[cfg(target_endian = "little")]
    pub fn as_f16(&self) -> Result<&'a [half::f16], ImageError> {
        self.cast::<half::f16>(DType::F16)
    }

    /// A [`DType::BF16`] payload as `bf16`s.
    #[cfg(target_endian = "little")]
    pub fn as_bf16(&self) -> Result<&'a [half::bf16], ImageError> {
        self.cast::<half::bf16>(DType::BF16)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use glimpse_quant::schema::{
        ChatTemplate, DecoderArch, DecoderConfig, ModelFamily, PreTokenizer, QuantRecipe,
        TokenizerConfig, TokenizerModel,
    };
    use glimpse_quant::writer::ImageBuilder;
    use std::vec;
    use std::vec::Vec;

    /// Heap buffer holding the bytes at a chosen distance from a 64-byte boundary,
    /// like a mapped file (distance 0) or a carelessly placed copy.
    struct Aligned {
        words: Vec<[u64; 8]>,
        shift: usize,
        len: usize,
    }

    impl Aligned {
        fn new(bytes: &[u8]) -> Self {
            Self::shifted(bytes, 0)
        }

        fn shifted(bytes: &[u8], shift: usize) -> Self {
            assert!(shift < 64);
            let words = vec![[0u64; 8]; (bytes.len() + shift).div_ceil(64)];
            let mut out = Self {
                words,
                shift,
                len: bytes.len(),
            };
            // SAFETY: the allocation holds 64 * words.len() >= shift + len initialized
            // bytes, and [u64; 8] has no padding.
            let all = unsafe {
                std::slice::from_raw_parts_mut(
                    out.words.as_mut_ptr().cast::<u8>(),
                    out.words.len() * 64,
                )
            };
            all[shift..shift + bytes.len()].copy_from_slice(bytes);
            out
        }

        fn bytes(&self) -> &[u8] {
            // SAFETY: as in `shifted`.
            let all = unsafe {
                std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.words.len() * 64)
            };
            &all[self.shift..self.shift + self.len]
        }
    }

    fn config() -> ModelConfig {
        let mut eos = heapless::Vec::new();
        eos.push(2).unwrap();
        ModelConfig {
            name: heapless::String::try_from("image-unit").unwrap(),
            family: ModelFamily::TextOnly,
            vision: None,
            projector: None,
            decoder: Some(DecoderConfig {
                arch: DecoderArch::Llama,
                hidden: 32,
                layers: 1,
                heads: 2,
                kv_heads: 1,
                head_dim: 16,
                intermediate: 64,
                vocab: 8,
                rope_theta: 10000.0,
                norm_eps: 1e-5,
                max_positions: 128,
                tied_embeddings: true,
                qkv_bias: false,
                image_token_id: None,
                bos_token_id: Some(1),
                eos_token_ids: eos,
            }),
            tokenizer: Some(TokenizerConfig {
                model: TokenizerModel::ByteLevelBpe,
                pretokenizer: PreTokenizer::SmolLm,
                vocab_size: 8,
                merges: 0,
                bos: Some(1),
                eos: Some(2),
                pad: None,
                add_bos: false,
                chat: ChatTemplate::ImStart {
                    default_system: heapless::String::try_from("Be brief.").unwrap(),
                },
            }),
            recipe: QuantRecipe {
                weights: DType::Q8_0,
                kept: DType::F32,
                source: heapless::String::try_from("unit").unwrap(),
            },
        }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn sample() -> Vec<u8> {
        let mut b = ImageBuilder::new(config());
        let norm: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 / 8.0).collect();
        b.add("decoder.norm.weight", DType::F32, &[32], f32_bytes(&norm))
            .unwrap();
        let q: Vec<u8> = (0..8 * 34).map(|i| (i * 7 % 251) as u8).collect();
        b.add("decoder.embed.weight", DType::Q8_0, &[8, 32], q)
            .unwrap();
        let offs: Vec<u8> = (0u32..9).flat_map(|i| (i * 3).to_le_bytes()).collect();
        b.add("tokenizer.token_offsets", DType::U32, &[9], offs)
            .unwrap();
        b.add(
            "tokenizer.token_bytes",
            DType::U8,
            &[24],
            (b'a'..b'a' + 24).collect(),
        )
        .unwrap();
        b.add("x.half", DType::F16, &[3], vec![0, 0x3c, 0, 0x40, 0, 0xc0])
            .unwrap();
        b.to_bytes().unwrap()
    }

    #[test]
    fn parses_finds_and_views() {
        let buf = Aligned::new(&sample());
        let img = Model::parse(buf.bytes()).unwrap();
        img.verify().unwrap();
        assert_eq!(img.config(), &config());
        assert_eq!(img.len(), 5);
        assert!(!img.is_empty());
        assert_eq!(img.file_len(), buf.bytes().len() as u64);

        let names: Vec<&str> = img.iter().map(|t| t.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        assert_eq!(img.iter().len(), 5);

        for (i, name) in names.iter().enumerate() {
            let t = img.find(name).unwrap();
            assert_eq!(t.index as usize, i);
            assert_eq!(t.name, *name);
            assert_eq!(t.offset % DATA_ALIGN as u64, 0);
        }
        for missing in ["", "a", "decoder", "decoder.norm.weighu", "zzz", "x.half2"] {
            assert_eq!(img.find(missing).unwrap_err(), ImageError::MissingTensor);
        }

        let norm = img.find("decoder.norm.weight").unwrap();
        let v = norm.as_f32().unwrap();
        assert_eq!(v.len(), 32);
        assert_eq!(v[8], 2.0);
        assert_eq!(norm.dims(), &[32]);
        norm.expect(Some(DType::F32), &[32]).unwrap();
        norm.expect(None, &[32]).unwrap();
        assert_eq!(
            norm.expect(Some(DType::F16), &[32]),
            Err(ImageError::WrongDType {
                index: norm.index,
                expected: DType::F16,
                got: DType::F32
            })
        );
        assert_eq!(
            norm.expect(None, &[1, 32]),
            Err(ImageError::WrongShape { index: norm.index })
        );
        assert!(matches!(norm.as_u32(), Err(ImageError::WrongDType { .. })));

        let offs = img
            .find("tokenizer.token_offsets")
            .unwrap()
            .as_u32()
            .unwrap();
        assert_eq!(offs, &[0, 3, 6, 9, 12, 15, 18, 21, 24]);
        let tb = img.find("tokenizer.token_bytes").unwrap().as_u8().unwrap();
        assert_eq!(&tb[..3], b"abc");
        let h = img.find("x.half").unwrap().as_f16().unwrap();
        assert_eq!(
            h.iter().map(|x| x.to_f32()).collect::<Vec<_>>(),
            [1.0, 2.0, -2.0]
        );
        let emb = img.find("decoder.embed.weight").unwrap();
        assert_eq!(emb.dims(), &[8, 32]);
        assert_eq!(emb.elems(), 256);
        assert_eq!(emb.nbytes(), 8 * 34);
        assert!(matches!(emb.as_u8(), Err(ImageError::WrongDType { .. })));

        assert_eq!(
            img.tensor(5).unwrap_err(),
            ImageError::IndexOutOfRange { index: 5 }
        );
        assert_eq!(
            img.tensor(usize::MAX).unwrap_err(),
            ImageError::IndexOutOfRange { index: usize::MAX }
        );
    }

    #[test]
    fn empty_image() {
        let bytes = ImageBuilder::new(config()).to_bytes().unwrap();
        let buf = Aligned::new(&bytes);
        let img = Model::parse(buf.bytes()).unwrap();
        img.verify().unwrap();
        assert!(img.is_empty());
        assert_eq!(img.iter().count(), 0);
        assert_eq!(img.find("x").unwrap_err(), ImageError::MissingTensor);
    }

    #[test]
    fn rejects_misaligned_base() {
        let bytes = sample();
        for shift in [1, 4, 8] {
            let buf = Aligned::shifted(&bytes, shift);
            assert_eq!(
                Model::parse(buf.bytes()).unwrap_err(),
                ImageError::Misaligned { align: BASE_ALIGN }
            );
        }
        // 16 is all the reader asks for; payloads then sit on 16-byte boundaries.
        let buf = Aligned::shifted(&bytes, 16);
        let img = Model::parse(buf.bytes()).unwrap();
        img.verify().unwrap();
        assert_eq!(
            img.find("decoder.norm.weight").unwrap().as_f32().unwrap()[0],
            1.0
        );
    }

    #[test]
    fn every_single_byte_flip_is_caught() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let buf = Aligned::new(&b);
                let r = Model::parse(buf.bytes()).and_then(|img| img.verify());
                assert!(r.is_err(), "flip {bit:#x} at {i} accepted");
            }
        }
    }

    /// Re-seal an edited image: fix the meta and header CRCs so that the structural
    /// checks behind them are what fails.
    fn reseal(bytes: &mut [u8]) {
        let h = Header::decode(bytes).unwrap();
        let region = |offset: u64, len: u64| &bytes[offset as usize..(offset + len) as usize];
        let mut crc = Crc32::new();
        crc.update(region(h.config.offset, h.config.len));
        crc.update(region(
            h.table_offset,
            u64::from(h.tensor_count) * ENTRY_LEN as u64,
        ));
        crc.update(region(h.names.offset, h.names.len));
        let h = Header {
            meta_crc: crc.finish(),
            ..h
        };
        bytes[..HEADER_LEN].copy_from_slice(&h.encode());
    }

    fn entry_at(bytes: &[u8], i: usize) -> (usize, TensorEntry) {
        let h = Header::decode(bytes).unwrap();
        let at = h.table_offset as usize + i * ENTRY_LEN;
        (at, TensorEntry::decode(&bytes[at..]).unwrap())
    }

    fn parse_err(bytes: &[u8]) -> ImageError {
        let buf = Aligned::new(bytes);
        Model::parse(buf.bytes()).unwrap_err()
    }

    #[test]
    fn structural_errors_behind_valid_checksums() {
        let good = sample();

        // Swap two records: names out of order.
        let mut b = good.clone();
        let (a0, _) = entry_at(&b, 0);
        let (r0, r1) = b[a0..a0 + 2 * ENTRY_LEN].split_at_mut(ENTRY_LEN);
        r0.swap_with_slice(r1);
        reseal(&mut b);
        assert_eq!(parse_err(&b), ImageError::NamesNotSorted { index: 1 });

        // Payload length that disagrees with the shape.
        let mut b = good.clone();
        let (at, mut e) = entry_at(&b, 2);
        e.nbytes -= 1;
        b[at..at + ENTRY_LEN].copy_from_slice(&e.encode());
        reseal(&mut b);
        assert_eq!(parse_err(&b), ImageError::PayloadSize { index: 2 });

        // Misaligned payload.
        let mut b = good.clone();
        let (at, mut e) = entry_at(&b, 3);
        e.offset += 4;
        b[at..at + ENTRY_LEN].copy_from_slice(&e.encode());
        reseal(&mut b);
        assert_eq!(parse_err(&b), ImageError::Payload { index: 3 });

        // Payload overlapping the previous one.
        let mut b = good.clone();
        let (_, prev) = entry_at(&b, 2);
        let (at, mut e) = entry_at(&b, 3);
        e.offset = prev.offset;
        b[at..at + ENTRY_LEN].copy_from_slice(&e.encode());
        reseal(&mut b);
        assert_eq!(parse_err(&b), ImageError::Payload { index: 3 });

        // Name pointing outside the pool.
        let mut b = good.clone();
        let (at, mut e) = entry_at(&b, 4);
        e.name_offset = 10_000;
        b[at..at + ENTRY_LEN].copy_from_slice(&e.encode());
        reseal(&mut b);
        assert_eq!(parse_err(&b), ImageError::Name { index: 4 });

        // Unknown dtype code.
        let mut b = good.clone();
        let (at, _) = entry_at(&b, 1);
        b[at + 6] = 200;
        reseal(&mut b);
        assert_eq!(
            parse_err(&b),
            ImageError::Entry {
                index: 1,
                error: LayoutError::UnknownDType(200)
            }
        );

        // Data region not 64-aligned / regions out of order.
        let mut b = good.clone();
        let mut h = Header::decode(&b).unwrap();
        h.data.offset += 1;
        h.data.len -= 1;
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        assert_eq!(parse_err(&b), ImageError::Region { which: "data" });
        let mut b = good.clone();
        let mut h = Header::decode(&b).unwrap();
        h.table_offset -= 1;
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        assert_eq!(parse_err(&b), ImageError::Region { which: "table" });
        let mut b = good.clone();
        let mut h = Header::decode(&b).unwrap();
        h.tensor_count = u32::MAX;
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        assert_eq!(parse_err(&b), ImageError::Region { which: "table" });

        // Trailing config byte: decodes, but does not use all bytes.
        let mut b = good.clone();
        let mut h = Header::decode(&b).unwrap();
        h.config.len -= 1;
        b[..HEADER_LEN].copy_from_slice(&h.encode());
        // Shrinking the config leaves a gap before the table; parse must still object
        // to the truncated config itself.
        reseal(&mut b);
        assert_eq!(parse_err(&b), ImageError::Config);

        // A non-zero byte in the gap before the data: only verify() sees it.
        let mut b = good.clone();
        let h = Header::decode(&b).unwrap();
        let gap = h.names.end().unwrap();
        assert!(gap < h.data.offset, "sample needs a gap before the data");
        b[gap as usize] = 1;
        let buf = Aligned::new(&b);
        let img = Model::parse(buf.bytes()).unwrap();
        assert_eq!(img.verify(), Err(ImageError::Padding { offset: gap }));

        // Wrong length.
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            parse_err(&b),
            ImageError::LengthMismatch {
                header: good.len() as u64,
                actual: good.len() as u64 + 1
            }
        );
        assert_eq!(
            parse_err(&good[..100]),
            ImageError::Layout(LayoutError::Truncated)
        );
    }

    #[test]
    fn tensor_checksum_names_the_index() {
        let mut b = sample();
        let (_, e) = entry_at(&b, 2);
        b[e.offset as usize] ^= 0xff;
        let buf = Aligned::new(&b);
        let img = Model::parse(buf.bytes()).unwrap();
        assert_eq!(img.verify(), Err(ImageError::TensorChecksum { index: 2 }));
        assert!(img.tensor(1).unwrap().verify().is_ok());
        let msg = std::format!("{}", img.verify().unwrap_err());
        assert!(msg.contains("#2"), "{msg}");
    }
}
