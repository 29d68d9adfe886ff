//! The host-side weights-image writer: collects named tensors and a [`ModelConfig`] and
//! lays them out exactly as [`crate::layout`] describes.
//!
//! Payloads are taken by value and written straight from their `Vec`s, so an image of
//! a gigabyte costs a gigabyte of memory, not two. Each payload's CRC is computed when it
//! is added, which lets the table (which precedes the data) be written in one pass.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::crc32::{Crc32, crc32};
use crate::layout::{
    DATA_ALIGN, DType, ENTRY_LEN, HEADER_LEN, Header, MAX_DIMS, MAX_NAME_LEN, Region, TensorEntry,
    TensorLayout, VERSION_MINOR,
};
use crate::schema::ModelConfig;

/// Why a tensor or an image could not be written.
#[derive(Debug)]
#[non_exhaustive]
pub enum WriteError {
    /// The name is empty, longer than [`MAX_NAME_LEN`] bytes, or contains whitespace or
    /// control characters.
    InvalidName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tensor of this name was already added.
    DuplicateName {
        /// The repeated name.
        name: String,
    },
    /// Rank zero or above [`MAX_DIMS`].
    BadRank {
        /// Tensor name.
        name: String,
        /// The rank given.
        rank: usize,
    },
    /// A dimension is zero.
    ZeroDim {
        /// Tensor name.
        name: String,
        /// The shape given.
        shape: Vec<u32>,
    },
    /// The innermost dimension is not a multiple of the dtype's block, or the size
    /// overflows.
    ShapeNotStorable {
        /// Tensor name.
        name: String,
        /// Storage format.
        dtype: DType,
        /// The shape given.
        shape: Vec<u32>,
    },
    /// The payload length does not match the dtype and shape.
    DataLength {
        /// Tensor name.
        name: String,
        /// Bytes the dtype and shape call for.
        expected: u64,
        /// Bytes given.
        got: u64,
    },
    /// The config does not encode (postcard error text).
    Config(String),
    /// More tensors, name bytes or payload bytes than the format can address.
    TooLarge(&'static str),
    /// The sink failed.
    Io(std::io::Error),
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteError::InvalidName { name, reason } => {
                write!(f, "invalid tensor name {name:?}: {reason}")
            }
            WriteError::DuplicateName { name } => write!(f, "tensor {name:?} added twice"),
            WriteError::BadRank { name, rank } => {
                write!(f, "tensor {name:?}: rank {rank} is outside 1..={MAX_DIMS}")
            }
            WriteError::ZeroDim { name, shape } => {
                write!(f, "tensor {name:?}: shape {shape:?} has a zero dimension")
            }
            WriteError::ShapeNotStorable { name, dtype, shape } => write!(
                f,
                "tensor {name:?}: shape {shape:?} cannot be stored as {} \
                 (innermost dimension must be a multiple of {}, size must fit in u64)",
                dtype.name(),
                dtype.block_elems()
            ),
            WriteError::DataLength {
                name,
                expected,
                got,
            } => write!(
                f,
                "tensor {name:?}: payload is {got} bytes, dtype and shape call for {expected}"
            ),
            WriteError::Config(e) => write!(f, "model config does not encode: {e}"),
            WriteError::TooLarge(what) => write!(f, "image too large: {what}"),
            WriteError::Io(e) => write!(f, "writing the image: {e}"),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WriteError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        WriteError::Io(e)
    }
}

/// A tensor waiting to be written.
#[derive(Debug)]
struct Pending {
    dtype: DType,
    layout: TensorLayout,
    rank: u8,
    shape: [u32; MAX_DIMS],
    crc: u32,
    data: Vec<u8>,
}

/// Collects tensors for one image. Names are sorted at write time, so tensors may be
/// added in any order.
#[derive(Debug)]
pub struct ImageBuilder {
    config: ModelConfig,
    tensors: BTreeMap<String, Pending>,
}

/// Where everything goes, computed before the first byte is written.
#[derive(Debug)]
struct Plan {
    header: Header,
    /// Config, table and names, contiguous (they are written back to back).
    meta: Vec<u8>,
    /// Absolute payload offsets, in table (name) order.
    offsets: Vec<u64>,
}

fn align_up(x: u64) -> Option<u64> {
    let a = DATA_ALIGN as u64;
    x.checked_add(a - 1).map(|y| y / a * a)
}

/// Zeros for padding; no gap is ever longer than `DATA_ALIGN - 1` bytes.
const ZEROS: [u8; DATA_ALIGN] = [0; DATA_ALIGN];

fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("longer than MAX_NAME_LEN bytes");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    Ok(())
}

impl ImageBuilder {
    /// An empty image carrying `config`.
    pub fn new(config: ModelConfig) -> Self {
        Self {
            config,
            tensors: BTreeMap::new(),
        }
    }

    /// The config the image will carry.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Number of tensors added so far.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor was added yet.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Whether a tensor of this name was added.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Payload bytes added so far (without padding).
    pub fn payload_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.data.len() as u64).sum()
    }

    /// Add a tensor. `shape` is outermost first; `data` is the payload in `dtype`'s
    /// storage format (see [`DType`]) and is moved in, not copied.
    pub fn add(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[u32],
        data: Vec<u8>,
    ) -> Result<(), WriteError> {
        self.add_with_layout(name, dtype, TensorLayout::RowMajor, shape, data)
    }

    /// [`ImageBuilder::add`] with the rows arranged as `layout` says (`data` already in
    /// that arrangement, e.g. from [`crate::repack::repack_rows4`]).
    pub fn add_with_layout(
        &mut self,
        name: &str,
        dtype: DType,
        layout: TensorLayout,
        shape: &[u32],
        data: Vec<u8>,
    ) -> Result<(), WriteError> {
        check_name(name).map_err(|reason| WriteError::InvalidName {
            name: name.to_string(),
            reason,
        })?;
        if self.tensors.contains_key(name) {
            return Err(WriteError::DuplicateName {
                name: name.to_string(),
            });
        }
        let rank = shape.len();
        if rank == 0 || rank > MAX_DIMS {
            return Err(WriteError::BadRank {
                name: name.to_string(),
                rank,
            });
        }
        if shape.contains(&0) {
            return Err(WriteError::ZeroDim {
                name: name.to_string(),
                shape: shape.to_vec(),
            });
        }
        let expected =
            layout
                .payload_bytes(dtype, shape)
                .ok_or_else(|| WriteError::ShapeNotStorable {
                    name: name.to_string(),
                    dtype,
                    shape: shape.to_vec(),
                })?;
        let got = data.len() as u64;
        if got != expected {
            return Err(WriteError::DataLength {
                name: name.to_string(),
                expected,
                got,
            });
        }
        let mut dims = [0u32; MAX_DIMS];
        dims[..rank].copy_from_slice(shape);
        self.tensors.insert(
            name.to_string(),
            Pending {
                dtype,
                layout,
                // rank <= MAX_DIMS (4), checked above.
                rank: rank as u8,
                shape: dims,
                crc: crc32(&data),
                data,
            },
        );
        Ok(())
    }

    /// Lay out header, config, table and names, and every payload's offset.
    fn plan(&self) -> Result<Plan, WriteError> {
        let too_large = WriteError::TooLarge;
        let config =
            postcard::to_allocvec(&self.config).map_err(|e| WriteError::Config(e.to_string()))?;
        let count = u32::try_from(self.tensors.len()).map_err(|_| too_large("tensor count"))?;

        let config_region = Region {
            offset: HEADER_LEN as u64,
            len: config.len() as u64,
        };
        let table_offset = config_region.end().ok_or(too_large("config"))?;
        let table_len = (count as u64)
            .checked_mul(ENTRY_LEN as u64)
            .ok_or(too_large("table"))?;
        let names_offset = table_offset
            .checked_add(table_len)
            .ok_or(too_large("table"))?;
        let names_len: u64 = self.tensors.keys().map(|n| n.len() as u64).sum();
        let names_region = Region {
            offset: names_offset,
            len: names_len,
        };
        let names_end = names_region.end().ok_or(too_large("names"))?;
        let data_offset = align_up(names_end).ok_or(too_large("names"))?;

        let mut offsets = Vec::with_capacity(self.tensors.len());
        let mut table = Vec::with_capacity(self.tensors.len() * ENTRY_LEN);
        let mut names = Vec::with_capacity(names_len as usize);
        let mut at = data_offset;
        let mut data_end = data_offset;
        for (name, t) in &self.tensors {
            let offset = align_up(at).ok_or(too_large("payloads"))?;
            let nbytes = t.data.len() as u64;
            data_end = offset.checked_add(nbytes).ok_or(too_large("payloads"))?;
            at = data_end;
            let entry = TensorEntry {
                name_offset: u32::try_from(names.len()).map_err(|_| too_large("names"))?,
                // check_name keeps names within MAX_NAME_LEN (255).
                name_len: u16::try_from(name.len()).map_err(|_| too_large("name"))?,
                dtype: t.dtype,
                rank: t.rank,
                shape: t.shape,
                offset,
                nbytes,
                crc: t.crc,
                layout: t.layout,
            };
            table.extend_from_slice(&entry.encode());
            names.extend_from_slice(name.as_bytes());
            offsets.push(offset);
        }

        let mut meta = config;
        meta.extend_from_slice(&table);
        meta.extend_from_slice(&names);
        let header = Header {
            version_minor: VERSION_MINOR,
            file_len: data_end,
            config: config_region,
            table_offset,
            tensor_count: count,
            flags: 0,
            names: names_region,
            data: Region {
                offset: data_offset,
                len: data_end - data_offset,
            },
            meta_crc: {
                let mut c = Crc32::new();
                c.update(&meta);
                c.finish()
            },
        };
        Ok(Plan {
            header,
            meta,
            offsets,
        })
    }

    /// Total image size in bytes.
    pub fn file_len(&self) -> Result<u64, WriteError> {
        Ok(self.plan()?.header.file_len)
    }

    /// Write the image and return the number of bytes written. `w` is written in a few
    /// large pieces; wrap a file in a `BufWriter` only if it is unbuffered and small
    /// writes matter to you (the padding writes are tiny).
    pub fn write_to<W: Write>(self, mut w: W) -> Result<u64, WriteError> {
        let plan = self.plan()?;
        w.write_all(&plan.header.encode())?;
        w.write_all(&plan.meta)?;
        let mut at = (HEADER_LEN + plan.meta.len()) as u64;
        for (t, &offset) in self.tensors.values().zip(&plan.offsets) {
            pad(&mut w, &mut at, offset)?;
            w.write_all(&t.data)?;
            at += t.data.len() as u64;
        }
        pad(&mut w, &mut at, plan.header.data.offset)?;
        w.flush()?;
        debug_assert_eq!(at, plan.header.file_len);
        Ok(at)
    }

    /// The image as one buffer.
    pub fn to_bytes(self) -> Result<Vec<u8>, WriteError> {
        let len = self.file_len()?;
        let cap = usize::try_from(len).map_err(|_| WriteError::TooLarge("file length"))?;
        let mut out = Vec::with_capacity(cap);
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// Write zeros from `*at` up to `to` (no-op when already there or past it).
fn pad<W: Write>(w: &mut W, at: &mut u64, to: u64) -> Result<(), WriteError> {
    while *at < to {
        let n = (to - *at).min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..n])?;
        *at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ModelFamily, QuantRecipe, decode_config};
    use std::vec;

    fn config() -> ModelConfig {
        ModelConfig {
            name: heapless::String::try_from("writer-test").unwrap(),
            family: ModelFamily::TextOnly,
            vision: None,
            projector: None,
            decoder: None,
            tokenizer: None,
            recipe: QuantRecipe {
                weights: DType::Q8_0,
                kept: DType::F32,
                source: heapless::String::try_from("unit").unwrap(),
            },
        }
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn lays_out_sorted_aligned_and_checksummed() {
        let mut b = ImageBuilder::new(config());
        b.add("z.bias", DType::F32, &[3], vec![1; 12]).unwrap();
        b.add("a.weight", DType::Q8_0, &[2, 32], vec![2; 68])
            .unwrap();
        b.add("m.tokens", DType::U8, &[5], vec![3; 5]).unwrap();
        let expected_len = b.file_len().unwrap();
        let bytes = b.to_bytes().unwrap();
        assert_eq!(bytes.len() as u64, expected_len);

        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h.file_len, bytes.len() as u64);
        assert_eq!(h.tensor_count, 3);
        assert_eq!(h.config.offset, HEADER_LEN as u64);
        assert_eq!(h.table_offset, h.config.end().unwrap());
        assert_eq!(h.names.offset, h.table_offset + 3 * ENTRY_LEN as u64);
        assert_eq!(h.data.offset % DATA_ALIGN as u64, 0);
        assert_eq!(h.data.end(), Some(h.file_len));

        let cfg = &bytes[h.config.offset as usize..h.config.end().unwrap() as usize];
        assert_eq!(decode_config(cfg).unwrap(), config());
        let meta = &bytes[h.config.offset as usize..h.names.end().unwrap() as usize];
        assert_eq!(crc32(meta), h.meta_crc);

        let names = &bytes[h.names.offset as usize..h.names.end().unwrap() as usize];
        let mut prev_end = h.data.offset;
        let mut seen = vec![];
        for i in 0..3 {
            let at = h.table_offset as usize + i * ENTRY_LEN;
            let e = TensorEntry::decode(&bytes[at..]).unwrap();
            let name = &names[e.name_offset as usize..][..e.name_len as usize];
            seen.push(std::str::from_utf8(name).unwrap().to_string());
            assert_eq!(e.offset % DATA_ALIGN as u64, 0);
            assert!(e.offset >= prev_end);
            // Padding between payloads is zero.
            assert!(
                bytes[prev_end as usize..e.offset as usize]
                    .iter()
                    .all(|&x| x == 0)
            );
            let payload = &bytes[e.offset as usize..(e.offset + e.nbytes) as usize];
            assert_eq!(crc32(payload), e.crc);
            prev_end = e.offset + e.nbytes;
        }
        assert_eq!(seen, ["a.weight", "m.tokens", "z.bias"]);
        assert_eq!(prev_end, h.file_len);
        // The gap between the names and the data is zero too.
        let names_end = h.names.end().unwrap() as usize;
        assert!(
            bytes[names_end..h.data.offset as usize]
                .iter()
                .all(|&x| x == 0)
        );
        assert_eq!(u64_at(&bytes, 16), h.file_len);
    }

    #[test]
    fn empty_image_is_header_config_and_padding() {
        let bytes = ImageBuilder::new(config()).to_bytes().unwrap();
        let h = Header::decode(&bytes).unwrap();
        assert_eq!(h.tensor_count, 0);
        assert_eq!(h.data.len, 0);
        assert_eq!(bytes.len() as u64, h.data.offset);
        assert_eq!(bytes.len() % DATA_ALIGN, 0);
    }

    #[test]
    fn rejects_bad_tensors_naming_them() {
        let mut b = ImageBuilder::new(config());
        b.add("x", DType::U8, &[1], vec![0]).unwrap();
        let err = |r: Result<(), WriteError>| r.unwrap_err();
        assert!(matches!(
            err(b.add("x", DType::U8, &[1], vec![0])),
            WriteError::DuplicateName { name } if name == "x"
        ));
        assert!(matches!(
            err(b.add("", DType::U8, &[1], vec![0])),
            WriteError::InvalidName { .. }
        ));
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            err(b.add(&long, DType::U8, &[1], vec![0])),
            WriteError::InvalidName { .. }
        ));
        assert!(
            b.add(&long[..MAX_NAME_LEN], DType::U8, &[1], vec![0])
                .is_ok()
        );
        assert!(matches!(
            err(b.add("a b", DType::U8, &[1], vec![0])),
            WriteError::InvalidName { .. }
        ));
        assert!(matches!(
            err(b.add("r0", DType::U8, &[], vec![])),
            WriteError::BadRank { rank: 0, .. }
        ));
        assert!(matches!(
            err(b.add("r5", DType::U8, &[1, 1, 1, 1, 1], vec![0])),
            WriteError::BadRank { rank: 5, .. }
        ));
        assert!(matches!(
            err(b.add("z", DType::U8, &[2, 0], vec![])),
            WriteError::ZeroDim { .. }
        ));
        assert!(matches!(
            err(b.add("q", DType::Q8_0, &[2, 48], vec![0; 102])),
            WriteError::ShapeNotStorable { .. }
        ));
        let e = err(b.add("f", DType::F32, &[2, 3], vec![0; 23]));
        assert!(matches!(
            e,
            WriteError::DataLength {
                expected: 24,
                got: 23,
                ..
            }
        ));
        assert!(e.to_string().contains("\"f\""), "{e}");
        // Failed adds leave nothing behind.
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn io_errors_surface() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let e = ImageBuilder::new(config()).write_to(Full).unwrap_err();
        assert!(matches!(e, WriteError::Io(_)));
        assert!(std::error::Error::source(&e).is_some());
    }
}
