//! glimpse-quant: the number formats and block formats Glimpse stores weights in, the
//! decoders that import GGUF checkpoints, and the weights-image byte layout shared by the
//! host writer and the device reader.
//!
//! `no_std` and allocation-free. The `std` feature adds host-only encoders (quantizers)
//! and the image writer.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod crc32;
pub mod layout;

pub use layout::DType;
