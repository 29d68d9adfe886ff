//! The crate-wide error type: everything the core can refuse, as data a device can log
//! without an allocator.

use core::fmt;

use glimpse_quant::DType;
use glimpse_quant::error::QuantError;

use crate::image::ImageError;
use crate::preprocess::FrameError;
use crate::tokenizer::TokenizerError;

/// Longest tensor name an [`Error`] keeps; longer names are cut (canonical names are far
/// shorter, see `tools/src/convert/model.rs`).
pub const ERROR_NAME_LEN: usize = 64;

/// A tensor name carried by an error.
pub type TensorName = heapless::String<ERROR_NAME_LEN>;

/// `name`, cut at a character boundary to fit a [`TensorName`].
pub fn tensor_name(name: &str) -> TensorName {
    let mut out = TensorName::new();
    for c in name.chars() {
        if out.push(c).is_err() {
            break;
        }
    }
    out
}

/// A tensor shape in an error message, outermost first.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Dims {
    rank: u8,
    dims: [u32; 4],
}

impl Dims {
    /// Up to four dimensions; extra ones are dropped (images have at most four).
    pub fn new(dims: &[u32]) -> Self {
        let mut out = Dims {
            rank: 0,
            dims: [0; 4],
        };
        for (slot, &d) in out.dims.iter_mut().zip(dims) {
            *slot = d;
            out.rank += 1;
        }
        out
    }

    /// The dimensions.
    pub fn as_slice(&self) -> &[u32] {
        self.dims.get(..self.rank as usize).unwrap_or(&[])
    }
}

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// What the core can refuse. Every check happens before the state it guards changes, so
/// after an error the caller may fix the input and retry.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// The weights image is malformed, or an image accessor refused.
    Model(ImageError),
    /// A number-format routine refused (length, block multiple, unsupported type).
    Quant(QuantError),
    /// An image accessor refused while looking at a particular tensor (most often: no
    /// tensor of that name).
    Tensor {
        /// The tensor's canonical name.
        tensor: TensorName,
        /// What the image reader said.
        error: ImageError,
    },
    /// A tensor's shape is not the one the model config implies.
    Shape {
        /// The tensor's canonical name.
        tensor: TensorName,
        /// Shape the config implies.
        expected: Dims,
        /// Shape stored.
        got: Dims,
    },
    /// A tensor is stored in a format the code using it does not take (e.g. a block
    /// format for a norm weight, or a tokenizer table where numbers are needed).
    DType {
        /// The tensor's canonical name.
        tensor: TensorName,
        /// Format stored.
        dtype: DType,
    },
    /// The arena cannot hold what is asked of it. `needed` counts every byte from the
    /// arena's start, alignment padding included, so an arena of `needed` bytes (with the
    /// same start alignment) is enough for this request.
    Arena {
        /// Bytes the arena would need.
        needed: usize,
        /// Bytes it has.
        capacity: usize,
    },
    /// A buffer or an argument has the wrong length for the others.
    Length {
        /// Which buffer or argument.
        what: &'static str,
        /// Length the other arguments call for.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// The model config is missing a part, or has values the runtime cannot run.
    Config {
        /// What is wrong.
        what: &'static str,
    },
    /// The input would run past the context the state was sized for.
    ContextOverflow {
        /// Positions the call needs (current position plus input length).
        needed: usize,
        /// Positions the KV cache holds.
        max: usize,
    },
    /// A token id at or past the vocabulary size.
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Embedding rows.
        vocab: u32,
    },
    /// A call that needs at least one input row got none.
    EmptyInput,
    /// A camera frame handed to preprocessing is empty, larger than the configured bound,
    /// or its buffer does not match its size and pixel format.
    Frame(FrameError),
    /// The tokenizer refused the prompt (or the image has none).
    Tokenizer(TokenizerError),
    /// The token sink (UART, stdout, ...) failed; generation stopped there.
    Sink(glimpse_hal::ErrorKind),
}

impl From<ImageError> for Error {
    fn from(e: ImageError) -> Self {
        Error::Model(e)
    }
}

impl From<FrameError> for Error {
    fn from(e: FrameError) -> Self {
        Error::Frame(e)
    }
}

impl From<QuantError> for Error {
    fn from(e: QuantError) -> Self {
        Error::Quant(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Model(e) => write!(f, "weights image: {e}"),
            Error::Quant(e) => write!(f, "number format: {e}"),
            Error::Tensor { tensor, error } => write!(f, "tensor {tensor}: {error}"),
            Error::Shape {
                tensor,
                expected,
                got,
            } => write!(
                f,
                "tensor {tensor}: shape {got}, the model config implies {expected}"
            ),
            Error::DType { tensor, dtype } => write!(
                f,
                "tensor {tensor}: stored as {}, which this use does not take",
                dtype.name()
            ),
            Error::Arena { needed, capacity } => write!(
                f,
                "arena too small: {needed} bytes needed, {capacity} available"
            ),
            Error::Length {
                what,
                expected,
                got,
            } => write!(f, "{what}: length {got}, expected {expected}"),
            Error::Config { what } => write!(f, "model config: {what}"),
            Error::ContextOverflow { needed, max } => write!(
                f,
                "context overflow: {needed} positions needed, the KV cache holds {max}"
            ),
            Error::TokenOutOfRange { id, vocab } => {
                write!(f, "token id {id} is outside the vocabulary (size {vocab})")
            }
            Error::EmptyInput => f.write_str("empty input"),
            Error::Frame(e) => write!(f, "camera frame: {e}"),
            Error::Tokenizer(e) => write!(f, "tokenizer: {e}"),
            Error::Sink(kind) => write!(f, "token sink: {kind}"),
        }
    }
}

impl core::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn messages_name_the_tensor_and_sizes() {
        let e = Error::Shape {
            tensor: tensor_name("decoder.layers.3.attn.q.weight"),
            expected: Dims::new(&[64, 64]),
            got: Dims::new(&[64, 32]),
        };
        let m = format!("{e}");
        assert!(m.contains("decoder.layers.3.attn.q.weight"), "{m}");
        assert!(m.contains("[64, 32]") && m.contains("[64, 64]"), "{m}");
        let m = format!(
            "{}",
            Error::Arena {
                needed: 1000,
                capacity: 10
            }
        );
        assert!(m.contains("1000") && m.contains("10 available"), "{m}");
    }

    #[test]
    fn long_names_are_cut_not_refused() {
        let long = "x".repeat(200);
        assert_eq!(tensor_name(&long).len(), ERROR_NAME_LEN);
        assert_eq!(Dims::new(&[1, 2, 3, 4, 5]).as_slice(), &[1, 2, 3, 4]);
    }
}
