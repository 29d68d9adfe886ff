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

/// Path of the `glimpse` binary built for these tests, if Cargo built it.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
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

/// A heap buffer whose start is 64-byte aligned, as a memory-mapped image is.
#[derive(Debug)]
pub struct AlignedBytes {
    words: Vec<[u64; 8]>,
    len: usize,
}

impl AlignedBytes {
    /// Copy `bytes` into a fresh aligned buffer.
    pub fn new(bytes: &[u8]) -> Self {
        let mut words = vec![[0u64; 8]; bytes.len().div_ceil(64)];
        let mut out = Self {
            words: Vec::new(),
            len: bytes.len(),
        };
        // SAFETY: [u64; 8] is 64 plain bytes with no padding; the slice covers exactly the
        // allocation, and `bytes.len()` <= 64 * words.len().
        let dst = unsafe {
            std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), words.len() * 64)
        };
        dst[..bytes.len()].copy_from_slice(bytes);
        out.words = words;
        out
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: as in `new`; `len` never exceeds the allocation.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `new`.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast::<u8>(), self.len) }
    }
}
