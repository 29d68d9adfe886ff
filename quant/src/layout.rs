//! The weights-image (`.glim`) byte layout, shared by the host writer and the device reader.
//!
//! ```text
//! offset 0     fixed header, HEADER_LEN bytes (magic, version, region table, CRCs)
//! config       postcard-encoded ModelConfig (the schema, crate::schema)
//! table        tensor_count fixed ENTRY_LEN-byte records, sorted by name (strictly)
//! names        UTF-8 name pool the records point into
//! (zero padding to DATA_ALIGN)
//! data         tensor payloads, each DATA_ALIGN-aligned (absolute file offsets), in
//!              table order, zero padding between them
//! ```
//!
//! All integers are little-endian. Fixed offsets for everything that must be read first
//! mean a reader can validate the header before it trusts a single length. The header
//! carries its own CRC, the config/table/names regions share one (`meta_crc`), and every
//! tensor has its own so a device can verify tensors lazily.

use serde::{Deserialize, Serialize};

use crate::crc32::crc32;

/// First eight bytes of every image. The high byte and CR/LF/SUB catch text-mode mangling.
pub const MAGIC: [u8; 8] = *b"\x89GLIM\r\n\x1a";
/// Major format version: a reader refuses any other.
pub const VERSION_MAJOR: u16 = 1;
/// Minor format version: additive changes only.
pub const VERSION_MINOR: u16 = 0;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 128;
/// Size of one tensor-table record.
pub const ENTRY_LEN: usize = 64;
/// Alignment of the data region and of every tensor payload, in bytes.
pub const DATA_ALIGN: usize = 64;
/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 4;
/// Longest tensor name.
pub const MAX_NAME_LEN: usize = 255;
/// Number of elements in one quantization block along the innermost axis.
pub const QK: usize = 32;

/// What can be wrong with the bytes of a header or a table record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum LayoutError {
    /// Fewer bytes than the structure needs.
    Truncated,
    /// The first eight bytes are not [`MAGIC`].
    BadMagic,
    /// A major version this reader does not know.
    UnsupportedVersion { major: u16, minor: u16 },
    /// The header's own CRC does not match.
    HeaderChecksum,
    /// A dtype code that no [`DType`] has.
    UnknownDType(u8),
    /// A rank of zero or above [`MAX_DIMS`].
    BadRank(u8),
    /// A dimension that is zero, or non-zero past the rank.
    BadShape,
    /// A reserved byte that is not zero.
    ReservedNotZero,
    /// A layout tag this reader does not know.
    UnknownLayout(u8),
}

/// Element or block format of a stored tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum DType {
    /// IEEE binary32.
    F32 = 0,
    /// IEEE binary16.
    F16 = 1,
    /// bfloat16.
    BF16 = 2,
    /// `{ f16 d; i8 qs[32] }`, 34 bytes per 32 values, GGUF-compatible.
    Q8_0 = 3,
    /// `{ f16 d; u8 e4m3[32] }`, 34 bytes per 32 values (OCP E4M3FN codes).
    E4M3 = 4,
    /// `{ f16 d; u8 e5m2[32] }`, 34 bytes per 32 values.
    E5M2 = 5,
    /// `{ u8 e8m0; u8 e4m3[32] }`, 33 bytes per 32 values (OCP MXFP8, E4M3 elements).
    MxFp8 = 6,
    /// Raw bytes (tokenizer tables).
    U8 = 7,
    /// Little-endian u32 (tokenizer tables).
    U32 = 8,
    /// Little-endian i32.
    I32 = 9,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 10] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::E4M3,
        DType::E5M2,
        DType::MxFp8,
        DType::U8,
        DType::U32,
        DType::I32,
    ];

    /// Decode a stored code.
    pub fn from_code(code: u8) -> Result<Self, LayoutError> {
        Self::ALL
            .iter()
            .copied()
            .find(|d| *d as u8 == code)
            .ok_or(LayoutError::UnknownDType(code))
    }

    /// Values per block (1 for plain element types).
    pub const fn block_elems(self) -> usize {
        match self {
            DType::Q8_0 | DType::E4M3 | DType::E5M2 | DType::MxFp8 => QK,
            _ => 1,
        }
    }

    /// Bytes per block (per element for plain element types).
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
            DType::Q8_0 | DType::E4M3 | DType::E5M2 => 34,
            DType::MxFp8 => 33,
        }
    }

    /// True for the block-quantized formats.
    pub const fn is_block(self) -> bool {
        self.block_elems() > 1
    }

    /// Short lowercase name, as the CLI spells it.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::E4M3 => "e4m3",
            DType::E5M2 => "e5m2",
            DType::MxFp8 => "mxfp8",
            DType::U8 => "u8",
            DType::U32 => "u32",
            DType::I32 => "i32",
        }
    }

    /// Payload bytes of a tensor of this dtype and shape, or `None` if the shape does not
    /// fit the format (innermost dimension not a multiple of the block) or overflows.
    pub fn payload_bytes(self, shape: &[u32]) -> Option<u64> {
        let (&inner, outer) = shape.split_last()?;
        let inner = inner as u64;
        let be = self.block_elems() as u64;
        if !inner.is_multiple_of(be) {
            return None;
        }
        let mut rows: u64 = 1;
        for &d in outer {
            rows = rows.checked_mul(d as u64)?;
        }
        rows.checked_mul(inner / be)?
            .checked_mul(self.block_bytes() as u64)
    }
}

/// How a tensor's rows are arranged in its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[repr(u8)]
pub enum TensorLayout {
    /// Plain row-major: blocks follow each other along the innermost axis, rows in order.
    RowMajor = 0,
    /// Q8_0 matrices only (`[rows, cols]`, `rows` a multiple of 4): the rows taken four at
    /// a time, and within a group of four, block column after block column, one
    /// [`ROWS4_BLOCK_BYTES`]-byte record each: the four rows' f16 scales, the four rows'
    /// code sums (i16, `Σ q` over the block, what an unsigned-by-signed dot product must
    /// take off), then the four rows' 32 codes, row after row. Records are 16-byte
    /// aligned when the payload is, so a kernel reads four rows' block with aligned loads
    /// and no per-call pass over the codes. See `repack`.
    Q8Rows4 = 1,
}

/// Rows per group of [`TensorLayout::Q8Rows4`].
pub const ROWS4: usize = 4;
/// Bytes of one record (four rows' block) of [`TensorLayout::Q8Rows4`]: 4 scales, 4 sums,
/// 4 × 32 codes.
pub const ROWS4_BLOCK_BYTES: usize = ROWS4 * 2 + ROWS4 * 2 + ROWS4 * QK;

impl TensorLayout {
    /// Decode a stored tag.
    pub fn from_code(code: u8) -> Result<Self, LayoutError> {
        match code {
            0 => Ok(TensorLayout::RowMajor),
            1 => Ok(TensorLayout::Q8Rows4),
            c => Err(LayoutError::UnknownLayout(c)),
        }
    }

    /// Short lowercase name, as `inspect` prints it.
    pub const fn name(self) -> &'static str {
        match self {
            TensorLayout::RowMajor => "rows",
            TensorLayout::Q8Rows4 => "rows4",
        }
    }

    /// How `inspect` and `convert` spell a `dtype` tensor in this layout: the dtype's
    /// name, with `/rows4` for four-row groups.
    pub fn storage_name(self, dtype: DType) -> &'static str {
        match (self, dtype) {
            (TensorLayout::Q8Rows4, DType::Q8_0) => "q8_0/rows4",
            (TensorLayout::Q8Rows4, _) => "?/rows4",
            (TensorLayout::RowMajor, d) => d.name(),
        }
    }

    /// Payload bytes of a `dtype` tensor of this shape in this layout, or `None` if the
    /// layout cannot hold it (see [`DType::payload_bytes`]; [`TensorLayout::Q8Rows4`]
    /// takes only Q8_0 matrices with a multiple of 4 rows).
    pub fn payload_bytes(self, dtype: DType, shape: &[u32]) -> Option<u64> {
        match self {
            TensorLayout::RowMajor => dtype.payload_bytes(shape),
            TensorLayout::Q8Rows4 => {
                let &[rows, cols] = shape else { return None };
                if dtype != DType::Q8_0
                    || !(rows as usize).is_multiple_of(ROWS4)
                    || !(cols as usize).is_multiple_of(QK)
                {
                    return None;
                }
                (rows as u64 / ROWS4 as u64)
                    .checked_mul(cols as u64 / QK as u64)?
                    .checked_mul(ROWS4_BLOCK_BYTES as u64)
            }
        }
    }
}

/// A byte range inside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Region {
    /// Absolute offset from the start of the image.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// One past the last byte, or `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

/// The fixed-size header at offset 0.
///
/// ```text
///   0  [u8; 8]  magic
///   8  u16      version major
///  10  u16      version minor
///  12  u32      header length (HEADER_LEN)
///  16  u64      file length
///  24  u64,u64  config region
///  40  u64      table offset
///  48  u32      tensor count
///  52  u32      flags (must be 0 in version 1)
///  56  u64,u64  names region
///  72  u64,u64  data region
///  88  u32      meta CRC (config, table and names regions, in that order)
///  92  ..124    reserved, zero
/// 124  u32      header CRC (bytes 0..124)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Header {
    /// Minor version of the writer.
    pub version_minor: u16,
    /// Total bytes of the image.
    pub file_len: u64,
    /// postcard-encoded [`ModelConfig`](crate::schema::ModelConfig).
    pub config: Region,
    /// Offset of the first tensor record.
    pub table_offset: u64,
    /// Number of tensor records.
    pub tensor_count: u32,
    /// Feature flags; none are defined in version 1.
    pub flags: u32,
    /// UTF-8 name pool.
    pub names: Region,
    /// Tensor payloads.
    pub data: Region,
    /// CRC-32 over the config, table and names regions.
    pub meta_crc: u32,
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

impl Header {
    /// Serialize, computing the header CRC.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&VERSION_MAJOR.to_le_bytes());
        b[10..12].copy_from_slice(&self.version_minor.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.file_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.config.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.config.len.to_le_bytes());
        b[40..48].copy_from_slice(&self.table_offset.to_le_bytes());
        b[48..52].copy_from_slice(&self.tensor_count.to_le_bytes());
        b[52..56].copy_from_slice(&self.flags.to_le_bytes());
        b[56..64].copy_from_slice(&self.names.offset.to_le_bytes());
        b[64..72].copy_from_slice(&self.names.len.to_le_bytes());
        b[72..80].copy_from_slice(&self.data.offset.to_le_bytes());
        b[80..88].copy_from_slice(&self.data.len.to_le_bytes());
        b[88..92].copy_from_slice(&self.meta_crc.to_le_bytes());
        let crc = crc32(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parse and check magic, version, header length, reserved bytes and the header CRC.
    /// Region bounds are the reader's job: it knows the image length.
    pub fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let b = bytes.get(..HEADER_LEN).ok_or(LayoutError::Truncated)?;
        if b[0..8] != MAGIC {
            return Err(LayoutError::BadMagic);
        }
        let major = get_u16(b, 8);
        let minor = get_u16(b, 10);
        if major != VERSION_MAJOR {
            return Err(LayoutError::UnsupportedVersion { major, minor });
        }
        if get_u32(b, 124) != crc32(&b[..124]) {
            return Err(LayoutError::HeaderChecksum);
        }
        if get_u32(b, 12) as usize != HEADER_LEN || b[92..124].iter().any(|&x| x != 0) {
            return Err(LayoutError::ReservedNotZero);
        }
        let flags = get_u32(b, 52);
        if flags != 0 {
            return Err(LayoutError::ReservedNotZero);
        }
        Ok(Header {
            version_minor: minor,
            file_len: get_u64(b, 16),
            config: Region {
                offset: get_u64(b, 24),
                len: get_u64(b, 32),
            },
            table_offset: get_u64(b, 40),
            tensor_count: get_u32(b, 48),
            flags,
            names: Region {
                offset: get_u64(b, 56),
                len: get_u64(b, 64),
            },
            data: Region {
                offset: get_u64(b, 72),
                len: get_u64(b, 80),
            },
            meta_crc: get_u32(b, 88),
        })
    }
}

/// One tensor-table record.
///
/// ```text
///  0  u32       name offset (into the names region)
///  4  u16       name length
///  6  u8        dtype code
///  7  u8        rank (1..=MAX_DIMS)
///  8  [u32; 4]  shape, outermost first; unused trailing dims are 0
/// 24  u64       payload offset (absolute, DATA_ALIGN-aligned)
/// 32  u64       payload length in bytes
/// 40  u32       payload CRC-32
/// 44  u8        layout tag
/// 45  ..64      reserved, zero
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TensorEntry {
    /// Offset of the name in the names region.
    pub name_offset: u32,
    /// Length of the name in bytes.
    pub name_len: u16,
    /// Storage format.
    pub dtype: DType,
    /// Number of dimensions in use.
    pub rank: u8,
    /// Shape, outermost first; entries past `rank` are zero.
    pub shape: [u32; MAX_DIMS],
    /// Where the payload starts (absolute).
    pub offset: u64,
    /// Payload length.
    pub nbytes: u64,
    /// CRC-32 of the payload.
    pub crc: u32,
    /// Row arrangement.
    pub layout: TensorLayout,
}

impl TensorEntry {
    /// The dimensions in use.
    pub fn dims(&self) -> &[u32] {
        // `decode` guarantees rank <= MAX_DIMS; `get` keeps hand-built entries panic-free.
        self.shape.get(..self.rank as usize).unwrap_or(&self.shape)
    }

    /// Number of logical elements.
    pub fn elems(&self) -> u64 {
        self.dims().iter().map(|&d| d as u64).product()
    }

    /// Serialize.
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[0..4].copy_from_slice(&self.name_offset.to_le_bytes());
        b[4..6].copy_from_slice(&self.name_len.to_le_bytes());
        b[6] = self.dtype as u8;
        b[7] = self.rank;
        for (i, d) in self.shape.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.nbytes.to_le_bytes());
        b[40..44].copy_from_slice(&self.crc.to_le_bytes());
        b[44] = self.layout as u8;
        b
    }

    /// Parse one record and check what can be checked without the rest of the image:
    /// known dtype and layout, rank, non-zero dims, zero reserved bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, LayoutError> {
        let b = bytes.get(..ENTRY_LEN).ok_or(LayoutError::Truncated)?;
        let dtype = DType::from_code(b[6])?;
        let rank = b[7];
        if rank == 0 || rank as usize > MAX_DIMS {
            return Err(LayoutError::BadRank(rank));
        }
        let mut shape = [0u32; MAX_DIMS];
        for (i, d) in shape.iter_mut().enumerate() {
            *d = get_u32(b, 8 + 4 * i);
            let in_use = i < rank as usize;
            if in_use == (*d == 0) {
                return Err(LayoutError::BadShape);
            }
        }
        let layout = TensorLayout::from_code(b[44])?;
        if b[45..].iter().any(|&x| x != 0) {
            return Err(LayoutError::ReservedNotZero);
        }
        Ok(TensorEntry {
            name_offset: get_u32(b, 0),
            name_len: get_u16(b, 4),
            dtype,
            rank,
            shape,
            offset: get_u64(b, 24),
            nbytes: get_u64(b, 32),
            crc: get_u32(b, 40),
            layout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::*;

    #[test]
    fn header_roundtrip_and_crc() {
        let h = Header {
            version_minor: VERSION_MINOR,
            file_len: 4096,
            config: Region {
                offset: 128,
                len: 100,
            },
            table_offset: 228,
            tensor_count: 3,
            flags: 0,
            names: Region {
                offset: 420,
                len: 30,
            },
            data: Region {
                offset: 512,
                len: 3584,
            },
            meta_crc: 0xDEAD_BEEF,
        };
        let b = h.encode();
        assert_eq!(Header::decode(&b), Ok(h));
        for i in 0..HEADER_LEN {
            let mut c = b;
            c[i] ^= 0x10;
            assert!(Header::decode(&c).is_err(), "flip at byte {i} undetected");
        }
        assert_eq!(Header::decode(&b[..127]), Err(LayoutError::Truncated));
    }

    #[test]
    fn entry_roundtrip_and_validation() {
        let e = TensorEntry {
            name_offset: 7,
            name_len: 12,
            dtype: DType::Q8_0,
            rank: 2,
            shape: [64, 96, 0, 0],
            offset: 640,
            nbytes: DType::Q8_0.payload_bytes(&[64, 96]).unwrap(),
            crc: 1234,
            layout: TensorLayout::RowMajor,
        };
        let b = e.encode();
        assert_eq!(TensorEntry::decode(&b), Ok(e));
        let mut bad = b;
        bad[6] = 99;
        assert_eq!(
            TensorEntry::decode(&bad),
            Err(LayoutError::UnknownDType(99))
        );
        let mut bad = b;
        bad[7] = 5;
        assert_eq!(TensorEntry::decode(&bad), Err(LayoutError::BadRank(5)));
        let mut bad = b;
        bad[16] = 1; // a dim past the rank
        assert_eq!(TensorEntry::decode(&bad), Err(LayoutError::BadShape));
        let mut bad = b;
        bad[63] = 1;
        assert_eq!(TensorEntry::decode(&bad), Err(LayoutError::ReservedNotZero));
    }

    #[test]
    fn payload_sizes() {
        assert_eq!(DType::Q8_0.payload_bytes(&[2, 64]), Some(2 * 2 * 34));
        assert_eq!(DType::MxFp8.payload_bytes(&[32]), Some(33));
        assert_eq!(DType::F16.payload_bytes(&[3, 5]), Some(30));
        assert_eq!(DType::Q8_0.payload_bytes(&[2, 48]), None);
        let r4 = TensorLayout::Q8Rows4;
        assert_eq!(r4.payload_bytes(DType::Q8_0, &[8, 64]), Some(2 * 2 * 144));
        assert_eq!(r4.payload_bytes(DType::Q8_0, &[6, 64]), None);
        assert_eq!(r4.payload_bytes(DType::Q8_0, &[8, 48]), None);
        assert_eq!(r4.payload_bytes(DType::Q8_0, &[2, 4, 64]), None);
        assert_eq!(r4.payload_bytes(DType::E4M3, &[8, 64]), None);
        assert_eq!(TensorLayout::from_code(1), Ok(r4));
        assert_eq!(
            TensorLayout::from_code(2),
            Err(LayoutError::UnknownLayout(2))
        );
        assert_eq!(DType::F32.payload_bytes(&[]), None);
        assert_eq!(
            DType::F32.payload_bytes(&[u32::MAX, u32::MAX, u32::MAX, 2]),
            None
        );
    }

    #[test]
    fn config_roundtrips_through_postcard() {
        let mut stages = heapless::Vec::new();
        stages
            .push(VisionStage {
                depth: 2,
                dim: 96,
                ffn_dim: 384,
                mixer: TokenMixer::RepMixer,
                pos_emb: false,
            })
            .unwrap();
        let cfg = ModelConfig {
            name: heapless::String::try_from("t").unwrap(),
            family: ModelFamily::FastVlm,
            vision: Some(VisionConfig {
                image_size: 64,
                in_channels: 3,
                stages,
                head_dim: 32,
                mixer_kernel: 3,
                ffn_kernel: 7,
                down_kernel: 7,
                pos_kernel: 7,
                out_dim: 192,
                se_dim: 12,
                norm_eps: 1e-5,
            }),
            projector: None,
            decoder: None,
            tokenizer: None,
            recipe: QuantRecipe {
                weights: DType::Q8_0,
                kept: DType::F32,
                source: heapless::String::try_from("test").unwrap(),
            },
        };
        let mut buf = [0u8; 256];
        let used = postcard::to_slice(&cfg, &mut buf).unwrap();
        let n = used.len();
        assert_eq!(decode_config(&buf[..n]).unwrap(), cfg);
        assert!(decode_config(&buf[..n - 1]).is_err());
    }
}
