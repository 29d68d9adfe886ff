//! glimpse-hal: the traits a port implements so the core can run on it.
//!
//! Shaped like embedded-hal 1.0: each trait has one required method (the rest are defaults),
//! fallible traits name their error through [`ErrorType`], errors expose a [`Error::kind`],
//! and `&mut T` implements every trait `T` does. The optional `defmt` feature derives
//! `defmt::Format` on the public types; host builds never enable it.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod adapters;
mod clock;
mod error;
mod executor;
mod frame;
mod sink;

pub use clock::MonotonicClock;
pub use error::{Error, ErrorKind, ErrorType};
pub use executor::{Executor, Sequential};
pub use frame::{FrameInfo, FrameSource, PixelFormat};
pub use sink::TokenSink;
