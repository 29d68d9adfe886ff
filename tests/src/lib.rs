//! Shared helpers for the workspace integration tests: where fixtures live, where the
//! cached real-model downloads live, and aligned buffers for zero-copy image reads.

use std::path::PathBuf;

/// `tests/fixtures` in the source tree.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// `tests/scripts` in the source tree.
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The workspace root (the repository checkout).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The `glimpse` binary Cargo built beside the running test (`cargo test --workspace`
/// builds it for the tools package's own tests); panics with how to build it if absent.
pub fn glimpse_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target dir");
    let bin = dir.join(format!("glimpse{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} not built; run `cargo build --release -p glimpse-tools` or `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// Cache of downloaded real-model artefacts (never inside the repository).
/// `GLIMPSE_CACHE` overrides; the default is `~/.cache/glimpse`.
pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("GLIMPSE_CACHE") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    home.join(".cache").join("glimpse")
}

/// One 64-byte, 64-aligned chunk of an [`AlignedBytes`] buffer.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A heap buffer whose start is 64-byte aligned, as a memory-mapped image is.
#[derive(Debug)]
pub struct AlignedBytes {
    lines: Vec<Line>,
    len: usize,
}

impl AlignedBytes {
    /// Copy `bytes` into a fresh aligned buffer.
    pub fn new(bytes: &[u8]) -> Self {
        let lines = vec![Line([0; 64]); bytes.len().div_ceil(64)];
        let mut out = Self {
            lines,
            len: bytes.len(),
        };
        out.as_mut_slice().copy_from_slice(bytes);
        out
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes with no padding, the allocation holds
        // `lines.len() * 64` of them, and `len` never exceeds that.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes the slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_bytes_are_64_aligned_and_exact() {
        let data: Vec<u8> = (0..200u8).collect();
        let a = AlignedBytes::new(&data);
        assert_eq!(a.as_slice().as_ptr() as usize % 64, 0);
        assert_eq!(a.as_slice(), &data[..]);
    }
}

/// SplitMix64: tiny, seedable, good enough to pick bytes, positions and test values.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Largest |a - b| (the slices must have one length).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Convert with `opts` (an HF directory or a GGUF to `opts.output`), panicking with the
/// converter's message on failure; returns the output path.
pub fn convert_file(opts: &glimpse_tools::convert::Options) -> PathBuf {
    glimpse_tools::convert::convert(opts)
        .unwrap_or_else(|e| panic!("converting {}: {e:#}", opts.input.display()));
    opts.output.clone()
}

/// `input` converted with `quant` (the CLI's defaults otherwise), as aligned bytes.
pub fn convert_to_bytes(input: &std::path::Path, quant: glimpse_tools::QuantArg) -> AlignedBytes {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = glimpse_tools::convert::Options::new(
        input.to_path_buf(),
        dir.path().join("model.glim"),
        quant,
    );
    convert_bytes(&opts)
}

/// Convert with `opts` and read the output back as aligned bytes.
pub fn convert_bytes(opts: &glimpse_tools::convert::Options) -> AlignedBytes {
    let path = convert_file(opts);
    AlignedBytes::new(&std::fs::read(&path).expect("reading the converted image"))
}
