//! glimpse-core: the `no_std`, heap-free runtime. It reads a weights image in place from a
//! `&[u8]`, and (as the capabilities land) plans one arena and runs FastViTHD, the
//! projector and the decoder inside it.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(test)]
extern crate std;

pub mod arena;
pub mod chat;
pub mod decoder;
pub mod error;
pub mod image;
pub mod kernels;
pub mod planner;
pub mod preprocess;
pub mod projector;
pub mod sampler;
pub mod session;
pub mod stream;
#[cfg(test)]
mod test_util;
pub mod tokenizer;
pub mod vision;

pub use error::Error;
pub use image::{ImageError, Model, TensorView};
