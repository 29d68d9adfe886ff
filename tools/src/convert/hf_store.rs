//! The tensors of one safetensors checkpoint (one or more memory-mapped shards), read by
//! name with shape checks, dtype conversion and a record of what was consumed.
//!
//! Every loader path asks for tensors by their source name and the shape its config
//! implies; whatever nobody asked for is reported as unknown at the end, so a checkpoint
//! that carries more (or other) tensors than the model we build is an error rather than
//! a silently incomplete image.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

/// Where one tensor lives.
#[derive(Clone, Debug)]
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the file.
    start: usize,
    end: usize,
}

/// All tensors of a checkpoint, addressed by name.
#[derive(Debug)]
pub struct Store {
    files: Vec<PathBuf>,
    maps: Vec<Mmap>,
    index: BTreeMap<String, Entry>,
    used: RefCell<BTreeSet<String>>,
}

impl Store {
    /// Map every file and index its tensors. A name in two files is an error.
    pub fn open(files: &[PathBuf]) -> Result<Store> {
        let mut maps = Vec::with_capacity(files.len());
        let mut index = BTreeMap::new();
        for (fi, path) in files.iter().enumerate() {
            let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
            // SAFETY: the map is read-only and lives as long as the store. Another process
            // truncating the checkpoint while we convert it would fault us; that is the
            // usual caveat of mmap-based readers and acceptable for a host tool.
            let map = unsafe { Mmap::map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            let (n, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
            let base = 8 + n;
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                let entry = Entry {
                    file: fi,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: base + s,
                    end: base + e,
                };
                if let Some(prev) = index.insert(name.clone(), entry) {
                    bail!(
                        "tensor `{name}` appears in both {} and {}",
                        files[prev.file].display(),
                        path.display()
                    );
                }
            }
            maps.push(map);
        }
        Ok(Store {
            files: files.to_vec(),
            maps,
            index,
            used: RefCell::new(BTreeSet::new()),
        })
    }

    /// Whether a tensor of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored shape of a tensor, if it exists.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// Names starting with `prefix`, in order.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.index
            .range(prefix.to_string()..)
            .map(|(k, _)| k.as_str())
            .take_while(move |k| k.starts_with(prefix))
    }

    /// All names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Mark a tensor as deliberately ignored (a classifier head, BatchNorm counters).
    pub fn ignore(&self, name: &str) {
        if self.has(name) {
            self.used.borrow_mut().insert(name.to_string());
        }
    }

    /// Names nobody consumed or ignored.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.index
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect()
    }

    /// The most common floating-point dtype by element count, for the recipe's source tag.
    pub fn dominant_dtype(&self) -> Option<Dtype> {
        let mut counts: BTreeMap<Dtype, u64> = BTreeMap::new();
        for e in self.index.values() {
            let n: u64 = e.shape.iter().map(|&d| d as u64).product();
            *counts.entry(e.dtype).or_default() += n;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d)
    }

    fn entry(&self, name: &str, expected: &[usize]) -> Result<(&Entry, &[u8])> {
        let e = self
            .index
            .get(name)
            .ok_or_else(|| anyhow!("missing tensor `{name}`"))?;
        if e.shape != expected {
            bail!(
                "tensor `{name}`: expected shape {expected:?}, found {:?}",
                e.shape
            );
        }
        let bytes = self.maps[e.file]
            .get(e.start..e.end)
            .ok_or_else(|| anyhow!("tensor `{name}`: data out of bounds"))?;
        self.used.borrow_mut().insert(name.to_string());
        Ok((e, bytes))
    }

    /// Drop a tensor's pages from our resident set once it has been converted: the f32
    /// copy is what the converter keeps, and without this the mapped source would add
    /// its whole size (1.4 GB for FastVLM-0.5B) to the peak.
    fn release(&self, e: &Entry) {
        #[cfg(unix)]
        {
            // SAFETY: `Mmap::map` makes a read-only shared file mapping, for which
            // MADV_DONTNEED only discards cached pages; a later access faults the same
            // file contents back in, so no reader can observe a change. Failure is harmless.
            let _ = unsafe {
                self.maps[e.file].unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    e.start,
                    e.end - e.start,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = e;
    }

    /// Read a tensor as f32, checking its shape. F64 is rounded to nearest.
    pub fn f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let (e, b) = self.entry(name, expected)?;
        let v = self.convert_f32(name, e, b)?;
        self.release(e);
        Ok(v)
    }

    fn convert_f32(&self, name: &str, e: &Entry, b: &[u8]) -> Result<Vec<f32>> {
        Ok(match e.dtype {
            Dtype::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::BF16 => b
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            Dtype::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            d => {
                bail!("tensor `{name}` has unsupported dtype {d} (expected F32, F16, BF16 or F64)")
            }
        })
    }

    /// Read a tensor as f64 (exact for every supported source dtype), checking its shape.
    /// Used wherever the converter does arithmetic on weights, so rounding happens once.
    pub fn f64(&self, name: &str, expected: &[usize]) -> Result<Vec<f64>> {
        let (e, b) = self.entry(name, expected)?;
        let v = match e.dtype {
            Dtype::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            _ => self
                .convert_f32(name, e, b)?
                .into_iter()
                .map(f64::from)
                .collect(),
        };
        self.release(e);
        Ok(v)
    }
}

/// Resolve a checkpoint input to its shard files and the config.json to use.
///
/// A directory holds `model.safetensors.index.json` (then exactly the shards it names are
/// read) or one or more `*.safetensors`; a file is read alone. The config is the override,
/// else `config.json` beside the checkpoint, else none.
pub fn resolve(
    input: &Path,
    config_override: Option<&Path>,
) -> Result<(Vec<PathBuf>, Option<PathBuf>)> {
    let (files, dir) = if input.is_dir() {
        let idx = input.join("model.safetensors.index.json");
        let files = if idx.is_file() {
            shards_from_index(&idx)?
                .into_iter()
                .map(|f| input.join(f))
                .collect::<Vec<_>>()
        } else {
            let mut v = Vec::new();
            for ent in std::fs::read_dir(input)
                .with_context(|| format!("reading directory {}", input.display()))?
            {
                let p = ent?.path();
                if p.is_file() && p.extension().is_some_and(|x| x == "safetensors") {
                    v.push(p);
                }
            }
            v.sort();
            v
        };
        if files.is_empty() {
            bail!("no *.safetensors files in {}", input.display());
        }
        (files, input.to_path_buf())
    } else if input.is_file() {
        let dir = input.parent().map(Path::to_path_buf).unwrap_or_default();
        (vec![input.to_path_buf()], dir)
    } else {
        bail!("{}: no such file or directory", input.display());
    };
    let config = match config_override {
        Some(p) => {
            if !p.is_file() {
                bail!("config {}: no such file", p.display());
            }
            Some(p.to_path_buf())
        }
        None => {
            let p = dir.join("config.json");
            p.is_file().then_some(p)
        }
    };
    Ok((files, config))
}

/// The distinct shard file names of an index, in first-appearance order.
fn shards_from_index(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| anyhow!("{}: no `weight_map` object", path.display()))?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, f) in map {
        let f = f
            .as_str()
            .ok_or_else(|| anyhow!("{}: shard of `{name}` is not a string", path.display()))?;
        if f.contains('/') || f.contains('\\') {
            bail!(
                "{}: shard name `{f}` must be a plain file name",
                path.display()
            );
        }
        if seen.insert(f.to_string()) {
            out.push(f.to_string());
        }
    }
    Ok(out)
}

/// Check that every tensor an index promises is in the shard it names.
pub fn check_index(input: &Path, store: &Store) -> Result<()> {
    let idx = input.join("model.safetensors.index.json");
    if !input.is_dir() || !idx.is_file() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&idx)?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    if let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) {
        for (name, f) in map {
            let f = f.as_str().unwrap_or_default();
            let e = store.index.get(name).ok_or_else(|| {
                anyhow!("index lists tensor `{name}` in {f}, but no shard holds it")
            })?;
            let actual = store.files[e.file]
                .file_name()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if actual != f {
                bail!("index lists tensor `{name}` in {f}, but it is in {actual}");
            }
        }
        if map.len() != store.index.len() {
            let missing: Vec<_> = store
                .index
                .keys()
                .filter(|k| !map.contains_key(*k))
                .take(5)
                .cloned()
                .collect();
            bail!("shards hold tensors the index does not list, e.g. {missing:?}");
        }
    }
    Ok(())
}
