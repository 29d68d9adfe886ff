//! glimpse-host, the std port: weights images memory-mapped from files (read-only and
//! zero-copy, so the page cache is the only copy), writing images to disk safely, a
//! thread-pool [`Executor`](glimpse_hal::Executor) ([`ThreadPool`]) and CPU feature
//! detection for the core's SIMD kernels ([`cpu`]), a monotonic clock ([`HostClock`]) and
//! PNG/JPEG files as frames ([`Picture`], and [`PictureFiles`] as a camera).

pub mod clock;
pub mod cpu;
pub mod picture;
pub mod pool;
pub mod video;

pub use clock::HostClock;
pub use picture::{Picture, PictureError, PictureFiles};
pub use pool::{ThreadPool, install_default_pool, physical_cores};

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use glimpse_core::image::{ImageError, Model};
use glimpse_quant::writer::{ImageBuilder, WriteError};
use memmap2::{Mmap, MmapOptions};

/// What went wrong with an image file; every variant names the path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The file could not be opened or inspected.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file could not be memory-mapped.
    #[error("cannot map {}: {source}", path.display())]
    Map {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid image.
    #[error("{}: {source}", path.display())]
    Model {
        /// The file.
        path: PathBuf,
        /// What the reader found.
        #[source]
        source: ImageError,
    },
    /// Writing an image failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: WriteError,
    },
}

/// A weights image file mapped read-only into memory.
///
/// The map starts on a page boundary, which satisfies the reader's alignment
/// requirement. The file must not be modified while mapped: the reader trusts what it
/// validated once.
#[derive(Debug)]
pub struct MappedImage {
    path: PathBuf,
    map: Mmap,
}

impl MappedImage {
    /// Map `path` read-only.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, HostError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| HostError::Open {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the map is read-only and private to this process. Another process
        // truncating or rewriting the file while it is mapped would change the bytes
        // under us (or fault); that is the documented contract of `MappedImage`, and the
        // writer in this crate replaces files by rename, never in place.
        let map = unsafe { MmapOptions::new().map(&file) }.map_err(|source| HostError::Map {
            path: path.clone(),
            source,
        })?;
        Ok(Self { path, map })
    }

    /// The file this image was mapped from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// File length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Parse the image (structure only; see [`Model::parse`]).
    pub fn image(&self) -> Result<Model<'_>, ImageError> {
        Model::parse(&self.map)
    }

    /// Parse and fully verify the image (every checksum and padding byte), with the
    /// path in the error.
    pub fn verified(&self) -> Result<Model<'_>, HostError> {
        let img = self.parsed()?;
        img.verify().map_err(|source| self.error(source))?;
        Ok(img)
    }

    /// Parse the image, with the path in the error.
    pub fn parsed(&self) -> Result<Model<'_>, HostError> {
        self.image().map_err(|source| self.error(source))
    }

    fn error(&self, source: ImageError) -> HostError {
        HostError::Model {
            path: self.path.clone(),
            source,
        }
    }
}

/// Write `builder`'s image to `path` and return its length. The image goes to a
/// temporary file beside `path`, is synced, and then renamed over `path`, so a reader
/// never sees (or maps) a half-written image and a failed write leaves any old file.
pub fn write_image(builder: ImageBuilder, path: impl AsRef<Path>) -> Result<u64, HostError> {
    let path = path.as_ref();
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".partial");
    let tmp = path.with_file_name(tmp_name);
    let werr = |source: WriteError| HostError::Write {
        path: path.to_path_buf(),
        source,
    };
    let ioerr = |e: std::io::Error| werr(WriteError::Io(e));

    let result = (|| {
        let file = File::create(&tmp).map_err(ioerr)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let n = builder.write_to(&mut w).map_err(werr)?;
        let file = w.into_inner().map_err(|e| ioerr(e.into_error()))?;
        file.sync_all().map_err(ioerr)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(ioerr)?;
        Ok(n)
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than a leftover file.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Write an image to a file with a plain buffered writer (no rename), for callers that
/// manage the destination themselves.
pub fn write_image_to(builder: ImageBuilder, file: File) -> Result<u64, WriteError> {
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let n = builder.write_to(&mut w)?;
    w.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_quant::DType;
    use glimpse_quant::schema::{ModelConfig, ModelFamily, QuantRecipe};

    fn builder() -> ImageBuilder {
        let config = ModelConfig {
            name: "host-test".try_into().unwrap(),
            family: ModelFamily::TextOnly,
            vision: None,
            projector: None,
            decoder: None,
            tokenizer: None,
            recipe: QuantRecipe {
                weights: DType::F32,
                kept: DType::F32,
                source: "unit".try_into().unwrap(),
            },
        };
        let mut b = ImageBuilder::new(config);
        let v: Vec<u8> = [1.5f32, -2.0, 3.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        b.add("w", DType::F32, &[3], v).unwrap();
        b
    }

    #[test]
    fn write_map_and_read_back() {
        let dir = std::env::temp_dir().join(format!("glimpse-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.glim");
        let n = write_image(builder(), &path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), n);
        assert!(!dir.join("t.glim.partial").exists());

        let m = MappedImage::open(&path).unwrap();
        assert_eq!(m.len() as u64, n);
        let img = m.verified().unwrap();
        assert_eq!(img.find("w").unwrap().as_f32().unwrap(), &[1.5, -2.0, 3.25]);
        assert_eq!(img.config().name.as_str(), "host-test");
        drop(m);

        // A corrupt file is reported with its path.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let m = MappedImage::open(&path).unwrap();
        assert!(m.image().is_ok(), "payload damage is verify's to find");
        let e = m.verified().unwrap_err();
        assert!(e.to_string().contains("t.glim"), "{e}");
        assert!(matches!(
            e,
            HostError::Model {
                source: ImageError::TensorChecksum { index: 0 },
                ..
            }
        ));

        std::fs::write(&path, b"").unwrap();
        let m = MappedImage::open(&path).unwrap();
        assert!(m.is_empty());
        assert!(m.image().is_err());

        std::fs::remove_dir_all(&dir).unwrap();
        let e = MappedImage::open(&path).unwrap_err();
        assert!(matches!(e, HostError::Open { .. }));
        assert!(e.to_string().contains("t.glim"), "{e}");
    }
}
