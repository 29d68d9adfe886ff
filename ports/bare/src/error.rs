//! The firmware-side error type: why a request could not be run, printable on a UART.

use core::fmt;

use glimpse_core::tokenizer::TokenizerError;
use glimpse_core::{Error as CoreError, ImageError};
use glimpse_hal::ErrorKind;

use crate::request::RequestError;

/// Why a firmware could not run its request.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// The request blob is missing or malformed.
    Request(RequestError),
    /// The request names a weights image longer than the board's weights window.
    WeightsWindow {
        /// Length the request gives.
        len: u64,
        /// Bytes the window holds.
        window: u64,
    },
    /// The weights image failed a structural check or a checksum.
    Model(ImageError),
    /// The tokenizer refused (no tokenizer in the image, bad tables, prompt too long).
    Tokenizer(TokenizerError),
    /// The core refused (arena too small, context overflow, model config).
    Core(CoreError),
    /// The request asks for something this build cannot do yet.
    Unsupported(&'static str),
    /// The token sink (the UART) failed.
    Sink(ErrorKind),
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        Error::Request(e)
    }
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::Model(e)
    }
}

impl From<TokenizerError> for Error {
    fn from(e: TokenizerError) -> Self {
        Error::Tokenizer(e)
    }
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        match e {
            // One spelling for image errors, however they reached us.
            CoreError::Model(i) => Error::Model(i),
            e => Error::Core(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Request(e) => write!(f, "{e}"),
            Error::WeightsWindow { len, window } => write!(
                f,
                "weights image of {len} bytes does not fit the board's {window}-byte window"
            ),
            Error::Model(e) => write!(f, "weights image: {e}"),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Error::Core(e) => write!(f, "{e}"),
            Error::Unsupported(what) => write!(f, "unsupported: {what}"),
            Error::Sink(kind) => write!(f, "token sink: {kind}"),
        }
    }
}

impl core::error::Error for Error {}
