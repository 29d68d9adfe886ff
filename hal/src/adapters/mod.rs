//! Weight stores: random-access reads of a weights image from somewhere other than
//! memory the core can address (a slice for tests, SPI NOR flash over embedded-hal with a
//! page cache).
//!
//! Not yet a way to run a model: the core reads its weights in place from one
//! `&[u8]` (memory-mapped file, XIP flash, RAM), so a board whose flash is not
//! memory-mapped must copy the image to RAM first. These stores are the building block
//! for that copy and for a future core that pages weights in.

pub mod spi_flash;
pub mod weights;

pub use spi_flash::{AddressMode, CacheStats, SpiNorError, SpiNorStore};
pub use weights::{DirectWeights, SliceStore, SliceStoreError, StoreSize, WeightStore};
