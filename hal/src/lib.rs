//! glimpse-hal: the traits a port implements so the core can run on it.
//!
//! Shaped like embedded-hal 1.0: each trait has an `ErrorType`, errors expose a `kind()`,
//! and `&mut T` implements every trait `T` does.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// Coarse classes of port errors, so the core can report them without knowing the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device or resource is not there.
    NotFound,
    /// The medium returned an error.
    Io,
    /// Anything else.
    Other,
}

/// A port error.
pub trait Error: core::fmt::Debug {
    /// Which class of error this is.
    fn kind(&self) -> ErrorKind;
}

impl Error for core::convert::Infallible {
    fn kind(&self) -> ErrorKind {
        match *self {}
    }
}

/// Associates an error type with a HAL trait implementor.
pub trait ErrorType {
    /// The error this implementor returns.
    type Error: Error;
}

impl<T: ErrorType + ?Sized> ErrorType for &mut T {
    type Error = T::Error;
}

/// A monotonic clock, for TTFT and per-phase timing.
pub trait MonotonicClock {
    /// Microseconds since an arbitrary fixed origin; never decreases.
    fn now_us(&mut self) -> u64;
}

impl<T: MonotonicClock + ?Sized> MonotonicClock for &mut T {
    fn now_us(&mut self) -> u64 {
        T::now_us(self)
    }
}

/// Where generated text goes (UART, stdout, defmt).
pub trait TokenSink: ErrorType {
    /// Receive one decoded token: its id and the UTF-8 bytes it completes.
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), Self::Error>;
}

impl<T: TokenSink + ?Sized> TokenSink for &mut T {
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        T::token(self, id, bytes)
    }
}
