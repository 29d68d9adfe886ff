//! The GGUF container (v2/v3): header, metadata key/values, tensor infos and where the
//! data is, parsed from a memory-mapped file.
//!
//! The parser trusts no length in the file: every read is bounds-checked against the
//! mapped bytes and names what it was reading and where when it runs out. Counts are
//! never used to pre-allocate more than the remaining bytes could hold, so a corrupt
//! count costs an error, not a giant allocation.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail, ensure};
use glimpse_quant::gguf::{GgmlType, dequantize};

/// First four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8.
    Str(String),
    /// Type 9.
    Array(Vec<Value>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer of any width that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float or an integer.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::Str(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }
}

/// The metadata key/value section.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    map: BTreeMap<String, Value>,
}

impl Metadata {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// All keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// A string value; `Ok(None)` when absent, an error when of another type.
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A non-negative integer value of any width.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// A float (or integer) value.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    /// A bool value.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    /// An array value.
    pub fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        self.typed(key, "an array", Value::as_array)
    }

    /// A u32 value that must be present.
    pub fn req_u32(&self, key: &str) -> Result<u32> {
        let v = self
            .u64(key)?
            .ok_or_else(|| anyhow!("GGUF metadata lacks `{key}`"))?;
        u32::try_from(v).map_err(|_| anyhow!("GGUF metadata `{key}` = {v} does not fit u32"))
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        f: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.map.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                anyhow!(
                    "GGUF metadata `{key}` should be {what} but is a {}",
                    v.type_name()
                )
            }),
        }
    }
}

/// One entry of the tensor-info section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// GGUF tensor name.
    pub name: String,
    /// Dimensions as stored: innermost (`ne0`) first.
    pub dims: Vec<u64>,
    /// Raw GGML type code.
    pub ggml_type: u32,
    /// Offset of the payload from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elems(&self) -> Option<u64> {
        self.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
    }

    /// Shape outermost first, as the image stores it.
    pub fn shape(&self) -> Result<Vec<u32>> {
        self.dims
            .iter()
            .rev()
            .map(|&d| {
                u32::try_from(d)
                    .map_err(|_| anyhow!("tensor `{}`: dimension {d} too large", self.name))
            })
            .collect()
    }
}

/// A parsed GGUF header: everything before the data section, plus where the data is.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata.
    pub metadata: Metadata,
    /// Tensor infos, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Data alignment (`general.alignment`, default 32).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// Why a GGUF file could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    BadMagic([u8; 4]),
    /// A version other than 2 or 3.
    UnsupportedVersion(u32),
    /// The file ends inside a structure.
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        at: u64,
        /// Bytes it needs.
        need: u64,
        /// File length.
        len: u64,
    },
    /// A structurally invalid value.
    Invalid(String),
}

impl fmt::Display for GgufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufError::BadMagic(m) => write!(f, "not a GGUF file: magic is {m:02x?}, not \"GGUF\""),
            GgufError::UnsupportedVersion(v) => {
                write!(f, "GGUF version {v} is not supported (only 2 and 3)")
            }
            GgufError::Truncated {
                what,
                at,
                need,
                len,
            } => write!(
                f,
                "truncated GGUF file: {what} at offset {at} needs {need} bytes but the file has {len}"
            ),
            GgufError::Invalid(m) => write!(f, "corrupt GGUF file: {m}"),
        }
    }
}

impl std::error::Error for GgufError {}

/// Longest key or string this parser accepts; real files stay far below (chat templates
/// are a few KB), and it bounds what a corrupt length can make us copy.
const MAX_STRING: u64 = 1 << 26;
/// Deepest array nesting accepted (real files use 1).
const MAX_DEPTH: u32 = 4;

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what(),
                at: self.pos as u64,
                need: n,
                len: self.b.len() as u64,
            }),
        }
    }

    fn arr<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.arr(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.arr(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > MAX_STRING {
            return Err(GgufError::Invalid(format!(
                "{} at offset {at} claims a length of {n} bytes",
                what()
            )));
        }
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| GgufError::Invalid(format!("{} at offset {at} is not UTF-8", what())))
    }

    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn value(
        &mut self,
        ty: u32,
        depth: u32,
        what: &dyn Fn() -> String,
    ) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(what)?[0]),
            1 => Value::I8(i8::from_le_bytes(self.arr(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => {
                let at = self.pos;
                match self.arr::<1>(what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(GgufError::Invalid(format!(
                            "{} at offset {at}: bool byte {b}",
                            what()
                        )));
                    }
                }
            }
            8 => Value::Str(self.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(GgufError::Invalid(format!(
                        "{}: arrays nested too deep",
                        what()
                    )));
                }
                let at = self.pos;
                let elem_ty = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte, so a count above the remaining
                // bytes is corrupt; checking it first keeps the allocation honest.
                if n > self.remaining() {
                    return Err(GgufError::Truncated {
                        what: format!("{} ({n} elements)", what()),
                        at: at as u64,
                        need: n,
                        len: self.b.len() as u64,
                    });
                }
                let mut items = Vec::with_capacity(n as usize);
                for i in 0..n {
                    let item_what = || format!("{}[{i}]", what());
                    items.push(self.value(elem_ty, depth + 1, &item_what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            t => {
                return Err(GgufError::Invalid(format!(
                    "{}: unknown value type {t}",
                    what()
                )));
            }
        })
    }
}

impl GgufHeader {
    /// Parse the header, metadata and tensor infos from the start of `bytes`, and check
    /// that every tensor info is sane (rank, dims, alignment). Payload bounds need the
    /// GGML type's size, which [`GgufHeader::tensor_bytes`] checks.
    pub fn parse(bytes: &[u8]) -> Result<Self, GgufError> {
        let mut r = Reader { b: bytes, pos: 0 };
        let magic: [u8; 4] = r.arr(&|| "magic".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_kv = r.u64(&|| "metadata count".into())?;

        let mut map = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata `{key}`");
            let ty = r.u32(&what)?;
            let v = r.value(ty, 0, &what)?;
            if map.insert(key.clone(), v).is_some() {
                return Err(GgufError::Invalid(format!(
                    "duplicate metadata key `{key}`"
                )));
            }
        }
        let metadata = Metadata { map };
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => {
                    return Err(GgufError::Invalid(format!(
                        "general.alignment {v:?} is not a power of two"
                    )));
                }
            },
        };

        // A tensor info takes at least 8 + 4 + 4 + 8 bytes.
        if n_tensors > r.remaining() / 24 {
            return Err(GgufError::Invalid(format!(
                "tensor count {n_tensors} cannot fit in the remaining {} bytes",
                r.remaining()
            )));
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut seen = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = r.string(&|| format!("tensor info #{i} name"))?;
            let what = || format!("tensor info `{name}`");
            let rank = r.u32(&what)?;
            if rank == 0 || rank > 4 {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` has rank {rank}"
                )));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(r.u64(&what)?);
            }
            let ggml_type = r.u32(&what)?;
            let offset = r.u64(&what)?;
            if dims.contains(&0) {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` has a zero dimension {dims:?}"
                )));
            }
            if !offset.is_multiple_of(alignment) {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if !seen.insert(name.clone()) {
                return Err(GgufError::Invalid(format!("duplicate tensor `{name}`")));
            }
            let info = TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            };
            if info.elems().is_none() {
                return Err(GgufError::Invalid(format!(
                    "tensor `{}` has too many elements {:?}",
                    info.name, info.dims
                )));
            }
            tensors.push(info);
        }
        let end = r.pos as u64;
        let data_offset = end.div_ceil(alignment) * alignment;
        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The payload of `t` inside `file` (the whole file), bounds-checked, with its type.
    pub fn tensor_bytes<'a>(&self, file: &'a [u8], t: &TensorInfo) -> Result<(GgmlType, &'a [u8])> {
        let ty = GgmlType::from_u32(t.ggml_type).map_err(|_| {
            anyhow!(
                "tensor `{}` has GGML type {} which this converter does not decode",
                t.name,
                t.ggml_type
            )
        })?;
        let inner = t.dims[0];
        let be = ty.block_elems() as u64;
        ensure!(
            inner.is_multiple_of(be),
            "tensor `{}`: innermost dimension {inner} is not a multiple of the {ty:?} block ({be})",
            t.name
        );
        let elems = t.elems().unwrap_or(u64::MAX);
        let nbytes = (elems / be)
            .checked_mul(ty.block_bytes() as u64)
            .ok_or_else(|| anyhow!("tensor `{}` size overflows", t.name))?;
        let start = self.data_offset.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(nbytes));
        match (start, end) {
            (Some(s), Some(e)) if e <= file.len() as u64 => Ok((ty, &file[s as usize..e as usize])),
            _ => bail!(
                "tensor `{}` ({nbytes} bytes at data offset {}) lies outside the file ({} bytes)",
                t.name,
                t.offset,
                file.len()
            ),
        }
    }
}

/// A memory-mapped GGUF file with its parsed header.
#[derive(Debug)]
pub struct GgufFile {
    map: memmap2::Mmap,
    /// The parsed header.
    pub header: GgufHeader,
}

impl GgufFile {
    /// Map and parse `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY: the map is read-only and private to this process; the converter does not
        // expect the file to change under it (as any reader of a file it was handed), and
        // a concurrent truncation would at worst fault the process, not corrupt memory we
        // hand out as initialized data of another type: we only ever read it as bytes.
        let map = unsafe { memmap2::Mmap::map(&f) }
            .with_context(|| format!("cannot map {}", path.display()))?;
        let header = GgufHeader::parse(&map).with_context(|| path.display().to_string())?;
        Ok(GgufFile { map, header })
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// Dequantize tensor `t` to f32 (GGUF element order: `ne0` fastest).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let (ty, bytes) = self.header.tensor_bytes(&self.map, t)?;
        let n = usize::try_from(t.elems().unwrap_or(u64::MAX))?;
        let mut out = vec![0f32; n];
        dequantize(ty, bytes, &mut out)
            .map_err(|e| anyhow!("tensor `{}`: cannot decode {ty:?}: {e}", t.name))?;
        Ok(out)
    }
}
