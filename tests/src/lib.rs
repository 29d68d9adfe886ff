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
