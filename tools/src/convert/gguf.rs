//! GGUF checkpoints: the container parser (v2/v3) and the `llama` / `qwen2` decoder loader.
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
use glimpse_quant::DType;
use glimpse_quant::gguf::{GgmlType, dequantize};
use glimpse_quant::schema::{
    DecoderArch, DecoderConfig, MAX_EOS, ModelConfig, ModelFamily, QuantRecipe,
};

use super::model::{CanonTensor, ConvertedModel, Role};
use super::quantize::par_map;
use super::{tokenizer, truncate_str};

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

/// Undo llama.cpp's reordering of the rows of `attn_q` / `attn_k` for the `llama`
/// architecture.
///
/// Hugging Face Llama checkpoints rotate pairs `(i, i + d/2)` of each head (rotate-half,
/// "NEOX" style); llama.cpp's `llama` graph rotates adjacent pairs `(2i, 2i + 1)` (GGML
/// "NORM" rope). So `convert_hf_to_gguf.py` (`LlamaModel.permute`) rewrites each head's
/// rows with `reshape(n_head, 2, d/2, ...).swapaxes(1, 2)`: GGUF row `2j + t` of a head
/// holds HF row `t * d/2 + j`. Our decoder uses rotate-half, so we put every row back.
/// `qwen2` needs nothing: llama.cpp runs it with NEOX rope on the unpermuted HF rows.
///
/// `data` is `[n_head * head_dim, cols]` row-major (biases: `cols` = 1).
pub fn unpermute_rope_rows(data: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    let rows = rope_rows(data, n_head, cols)?;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        let base = h * 2 * half;
        for j in 0..half {
            for t in 0..2 {
                let src = (base + 2 * j + t) * cols;
                let dst = (base + t * half + j) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

/// The reordering llama.cpp applies (the inverse of [`unpermute_rope_rows`]); used by
/// tests and by anything that writes GGUF-ordered rows.
pub fn permute_rope_rows(data: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    let rows = rope_rows(data, n_head, cols)?;
    let half = rows / n_head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        let base = h * 2 * half;
        for j in 0..half {
            for t in 0..2 {
                let src = (base + t * half + j) * cols;
                let dst = (base + 2 * j + t) * cols;
                out[dst..dst + cols].copy_from_slice(&data[src..src + cols]);
            }
        }
    }
    Ok(out)
}

fn rope_rows(data: &[f32], n_head: usize, cols: usize) -> Result<usize> {
    ensure!(
        n_head > 0 && cols > 0,
        "rope permutation needs heads and columns"
    );
    ensure!(
        data.len().is_multiple_of(cols),
        "rope permutation: {} values are not rows of {cols}",
        data.len()
    );
    let rows = data.len() / cols;
    ensure!(
        rows.is_multiple_of(2 * n_head),
        "rope permutation: {rows} rows do not split into {n_head} heads of even width"
    );
    Ok(rows)
}

/// What a GGUF tensor becomes.
struct Mapped {
    canon: String,
    role: Role,
    /// Heads whose rope rows need un-permuting (llama q/k).
    unpermute_heads: Option<u32>,
}

fn map_name(name: &str, arch: DecoderArch, heads: u32, kv_heads: u32) -> Option<Mapped> {
    let plain = |canon: &str, role| {
        Some(Mapped {
            canon: canon.to_string(),
            role,
            unpermute_heads: None,
        })
    };
    match name {
        "token_embd.weight" => return plain("decoder.embed.weight", Role::Quantize),
        "output_norm.weight" => return plain("decoder.norm.weight", Role::Keep),
        "output.weight" => return plain("decoder.lm_head.weight", Role::Quantize),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer_str, rest) = rest.split_once('.')?;
    let layer: u32 = layer_str.parse().ok()?;
    // `blk.01` would alias `blk.1`; llama.cpp never writes it, so treat it as unknown.
    if layer.to_string() != layer_str {
        return None;
    }
    let (part, kind) = rest.rsplit_once('.')?;
    let role = match kind {
        "weight" => Role::Quantize,
        "bias" => Role::Keep,
        _ => return None,
    };
    let (canon_part, role, heads) = match (part, kind) {
        ("attn_norm", "weight") => ("attn_norm", Role::Keep, None),
        ("ffn_norm", "weight") => ("mlp_norm", Role::Keep, None),
        ("attn_q", _) => ("attn.q", role, Some(heads)),
        ("attn_k", _) => ("attn.k", role, Some(kv_heads)),
        ("attn_v", _) => ("attn.v", role, None),
        ("attn_output", "weight") => ("attn.o", role, None),
        ("ffn_gate", "weight") => ("mlp.gate", role, None),
        ("ffn_up", "weight") => ("mlp.up", role, None),
        ("ffn_down", "weight") => ("mlp.down", role, None),
        _ => return None,
    };
    Some(Mapped {
        canon: format!("decoder.layers.{layer}.{canon_part}.{kind}"),
        role,
        unpermute_heads: if arch == DecoderArch::Llama {
            heads
        } else {
            None
        },
    })
}

/// Build the decoder config from `{arch}.*` keys.
fn decoder_config(h: &GgufHeader, arch: DecoderArch, prefix: &str) -> Result<DecoderConfig> {
    let m = &h.metadata;
    let key = |k: &str| format!("{prefix}.{k}");
    let hidden = m.req_u32(&key("embedding_length"))?;
    let layers = m.req_u32(&key("block_count"))?;
    let heads = m.req_u32(&key("attention.head_count"))?;
    let kv_heads = match m.u64(&key("attention.head_count_kv"))? {
        Some(v) => u32::try_from(v)?,
        None => heads,
    };
    ensure!(
        heads > 0 && kv_heads > 0,
        "GGUF head counts must be positive"
    );
    ensure!(
        heads.is_multiple_of(kv_heads),
        "{heads} query heads do not divide into {kv_heads} key/value heads"
    );
    let head_dim = match m.u64(&key("attention.key_length"))? {
        Some(v) => u32::try_from(v)?,
        None => {
            ensure!(
                hidden.is_multiple_of(heads),
                "embedding_length {hidden} is not a multiple of {heads} heads"
            );
            hidden / heads
        }
    };
    if let Some(v) = m.u64(&key("attention.value_length"))? {
        ensure!(
            v == u64::from(head_dim),
            "value_length {v} differs from key_length {head_dim}: not supported"
        );
    }
    if let Some(rd) = m.u64(&key("rope.dimension_count"))? {
        ensure!(
            rd == u64::from(head_dim),
            "partial rotary embeddings (rope.dimension_count {rd} < head_dim {head_dim}) are not supported"
        );
    }
    ensure!(
        head_dim.is_multiple_of(2),
        "head_dim {head_dim} must be even for RoPE"
    );
    let intermediate = m.req_u32(&key("feed_forward_length"))?;
    let rope_theta = m.f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32;
    let norm_eps = m
        .f64(&key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| {
            anyhow!(
                "GGUF metadata lacks `{}`",
                key("attention.layer_norm_rms_epsilon")
            )
        })? as f32;
    let max_positions = m.req_u32(&key("context_length"))?;
    let embd = h
        .tensor("token_embd.weight")
        .ok_or_else(|| anyhow!("GGUF file has no `token_embd.weight`"))?;
    let shape = embd.shape()?;
    ensure!(
        shape.len() == 2 && shape[1] == hidden,
        "token_embd.weight has shape {shape:?}, expected [vocab, {hidden}]"
    );
    let vocab = shape[0];
    let tied = h.tensor("output.weight").is_none();
    let qkv_bias = h.tensor("blk.0.attn_q.bias").is_some();

    let bos = m
        .u64("tokenizer.ggml.bos_token_id")?
        .map(u32::try_from)
        .transpose()?;
    let mut eos_ids = heapless::Vec::<u32, MAX_EOS>::new();
    for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
        if let Some(id) = m.u64(k)? {
            let id = u32::try_from(id)?;
            if !eos_ids.contains(&id) {
                let _ = eos_ids.push(id);
            }
        }
    }
    Ok(DecoderConfig {
        arch,
        hidden,
        layers,
        heads,
        kv_heads,
        head_dim,
        intermediate,
        vocab,
        rope_theta,
        norm_eps,
        max_positions,
        tied_embeddings: tied,
        qkv_bias,
        image_token_id: None,
        bos_token_id: bos,
        eos_token_ids: eos_ids,
    })
}

/// Expected shape (outermost first) of a canonical decoder tensor.
fn expected_shape(canon: &str, d: &DecoderConfig) -> Option<Vec<u32>> {
    let q = d.heads * d.head_dim;
    let kv = d.kv_heads * d.head_dim;
    let (hidden, inter, vocab) = (d.hidden, d.intermediate, d.vocab);
    Some(match canon {
        "decoder.embed.weight" | "decoder.lm_head.weight" => vec![vocab, hidden],
        "decoder.norm.weight" => vec![hidden],
        _ => {
            let rest = canon.strip_prefix("decoder.layers.")?;
            let (_, part) = rest.split_once('.')?;
            match part {
                "attn_norm.weight" | "mlp_norm.weight" => vec![hidden],
                "attn.q.weight" => vec![q, hidden],
                "attn.k.weight" | "attn.v.weight" => vec![kv, hidden],
                "attn.q.bias" => vec![q],
                "attn.k.bias" | "attn.v.bias" => vec![kv],
                "attn.o.weight" => vec![hidden, q],
                "mlp.gate.weight" | "mlp.up.weight" => vec![inter, hidden],
                "mlp.down.weight" => vec![hidden, inter],
                _ => return None,
            }
        }
    })
}

/// Name of the most common GGML type among the matrices, for the recipe's source.
fn dominant_type(h: &GgufHeader) -> String {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for t in h.tensors.iter().filter(|t| t.dims.len() >= 2) {
        *counts.entry(t.ggml_type).or_default() += 1;
    }
    let best = counts
        .iter()
        .max_by_key(|&(code, n)| (*n, std::cmp::Reverse(*code)));
    match best.map(|(&c, _)| GgmlType::from_u32(c)) {
        Some(Ok(ty)) => format!("{ty:?}"),
        Some(Err(_)) => "unknown".to_string(),
        None => "none".to_string(),
    }
}

/// Load a `llama` or `qwen2` GGUF decoder, with its tokenizer when the metadata has one.
pub fn load(path: &Path) -> Result<ConvertedModel> {
    load_noted(path, true).map(|(m, _)| m)
}

/// [`load`], also returning notes worth showing the user (tokenizer oddities). With
/// `read_tokenizer` false the tokenizer metadata is not even looked at (the caller brings
/// its own).
pub fn load_noted(path: &Path, read_tokenizer: bool) -> Result<(ConvertedModel, Vec<String>)> {
    let file = GgufFile::open(path)?;
    let h = &file.header;
    let m = &h.metadata;
    let arch_name = m
        .str("general.architecture")?
        .ok_or_else(|| anyhow!("GGUF metadata lacks `general.architecture`"))?;
    let arch = match arch_name {
        "llama" => DecoderArch::Llama,
        "qwen2" => DecoderArch::Qwen2,
        other => bail!("GGUF architecture `{other}` is not supported (supported: llama, qwen2)"),
    };
    let dec = decoder_config(h, arch, arch_name)?;

    // Map every tensor first, so an unknown one fails before any decoding work.
    let mut jobs = Vec::with_capacity(h.tensors.len());
    let mut unknown = Vec::new();
    for t in &h.tensors {
        match map_name(&t.name, arch, dec.heads, dec.kv_heads) {
            Some(mp) => {
                if let Some(layer) = mp.canon.strip_prefix("decoder.layers.")
                    && let Some(i) = layer.split('.').next().and_then(|s| s.parse::<u32>().ok())
                    && i >= dec.layers
                {
                    bail!(
                        "tensor `{}` belongs to layer {i} but block_count is {}",
                        t.name,
                        dec.layers
                    );
                }
                let shape = t.shape()?;
                let want = expected_shape(&mp.canon, &dec)
                    .ok_or_else(|| anyhow!("no expected shape for `{}`", mp.canon))?;
                ensure!(
                    shape == want,
                    "tensor `{}` has shape {shape:?} (outermost first), expected {want:?} from the metadata",
                    t.name
                );
                jobs.push((t, mp, shape));
            }
            None => unknown.push(t.name.clone()),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "GGUF file has tensors this converter does not know: {}",
            unknown.join(", ")
        );
    }
    let mut required = vec![
        "decoder.embed.weight".to_string(),
        "decoder.norm.weight".to_string(),
    ];
    for i in 0..dec.layers {
        for p in [
            "attn_norm.weight",
            "mlp_norm.weight",
            "attn.q.weight",
            "attn.k.weight",
            "attn.v.weight",
            "attn.o.weight",
            "mlp.gate.weight",
            "mlp.up.weight",
            "mlp.down.weight",
        ] {
            required.push(format!("decoder.layers.{i}.{p}"));
        }
        if dec.qkv_bias {
            for p in ["attn.q.bias", "attn.k.bias", "attn.v.bias"] {
                required.push(format!("decoder.layers.{i}.{p}"));
            }
        }
    }
    let present: std::collections::HashSet<&str> =
        jobs.iter().map(|(_, mp, _)| mp.canon.as_str()).collect();
    let missing: Vec<&str> = required
        .iter()
        .map(String::as_str)
        .filter(|r| !present.contains(r))
        .collect();
    if !missing.is_empty() {
        bail!("GGUF file lacks tensors: {}", missing.join(", "));
    }

    let decoded = par_map(&jobs, |(t, mp, shape)| -> Result<CanonTensor> {
        let mut data = file.tensor_f32(t)?;
        if let Some(n_head) = mp.unpermute_heads {
            let cols = if shape.len() == 2 {
                shape[1] as usize
            } else {
                1
            };
            data = unpermute_rope_rows(&data, n_head as usize, cols)
                .with_context(|| format!("tensor `{}`", t.name))?;
        }
        Ok(CanonTensor {
            name: mp.canon.clone(),
            shape: shape.clone(),
            data,
            role: mp.role,
        })
    });
    let tensors = decoded.into_iter().collect::<Result<Vec<_>>>()?;

    let name = m.str("general.name")?.unwrap_or(arch_name);
    let source = format!("gguf:{}", dominant_type(h));
    let mut config = ModelConfig {
        name: truncate_str(name),
        family: ModelFamily::TextOnly,
        vision: None,
        projector: None,
        decoder: Some(dec),
        tokenizer: None,
        recipe: QuantRecipe {
            weights: DType::F32,
            kept: DType::F32,
            source: truncate_str(&source),
        },
    };
    let mut tables = Vec::new();
    let mut notes = Vec::new();
    if read_tokenizer && let Some(tok) = tokenizer::from_gguf(m)? {
        config.tokenizer = Some(tok.config);
        tables = tok.tables;
        notes = tok.notes;
    }
    Ok((
        ConvertedModel {
            config,
            tensors,
            tables,
        },
        notes,
    ))
}
