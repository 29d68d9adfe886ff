//! glimpse-bare: what every bare-metal Glimpse firmware shares. The request blob the host
//! places in guest memory ([`request`]), where each simulated board expects it and the
//! weights ([`memory`]), running a request against a weights image in a static arena
//! ([`run`]), and the console protocol a firmware prints and `glimpse sim` reads
//! ([`console`]). Boot code, UARTs, counters and exits stay in the firmware crates.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

#[cfg(test)]
extern crate std;

pub mod console;
pub mod cpu;
pub mod error;
pub mod memory;
pub mod request;
pub mod run;

pub use console::{ConsoleSink, exit, serve};
pub use error::Error;
pub use memory::{MemoryMap, Window};
pub use request::{Request, RequestError};
pub use run::{
    Counter, FrameObserver, FrameOutcome, NoCounter, Phases, Report, StreamReport, run_request,
    run_stream,
};
