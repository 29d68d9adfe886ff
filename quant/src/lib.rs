//! glimpse-quant: the number formats and block formats Glimpse stores weights in, the
//! decoders that import GGUF checkpoints, and the weights-image byte layout shared by the
//! host writer and the device reader.
//!
//! `no_std` and allocation-free, encoders included (the device quantizes activations
//! with the same code). The `std` feature adds the host-side image writer.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(any(feature = "std", test))]
extern crate std;

pub mod blocks;
pub mod crc32;
pub mod error;
pub mod fp8;
#[cfg(feature = "gguf")]
pub mod gguf;
pub mod layout;
pub mod repack;
pub mod schema;
#[cfg(feature = "std")]
pub mod writer;

pub use blocks::{dequantize_row, quantize_row};
pub use error::QuantError;
#[cfg(feature = "gguf")]
pub use gguf::GgmlType;
pub use layout::DType;
