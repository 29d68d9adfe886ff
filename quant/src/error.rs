//! The error type of the number-format encoders, the block row functions and the GGUF
//! decoders.

use core::fmt;

/// What can go wrong when converting numbers to or from a stored format.
///
/// Every variant is `Copy` and carries only integers, so a device can log it without an
/// allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QuantError {
    /// An input value is NaN or infinite. `index` is its position in the input slice
    /// (0 for the single-value encoders).
    NonFinite {
        /// Position of the offending value.
        index: usize,
    },
    /// A finite input does not fit the target format: an f16/bf16 element, or a block
    /// scale stored as f16, would round to infinity. `index` is the offending element (for a
    /// block scale, the element of largest magnitude in the block).
    Overflow {
        /// Position of the offending value.
        index: usize,
    },
    /// A slice has the wrong length for the other one.
    LengthMismatch {
        /// Length the other arguments call for.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// A length is not a whole number of blocks.
    NotBlockMultiple {
        /// The length given (elements, or bytes where only bytes are given).
        len: usize,
    },
    /// A type that holds no numbers, or a GGUF type this crate does not decode; carries the
    /// type's numeric code.
    UnsupportedType(u32),
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            QuantError::NonFinite { index } => write!(f, "non-finite input at index {index}"),
            QuantError::Overflow { index } => {
                write!(f, "value at index {index} overflows the target format")
            }
            QuantError::LengthMismatch { expected, got } => {
                write!(f, "length mismatch: expected {expected}, got {got}")
            }
            QuantError::NotBlockMultiple { len } => {
                write!(f, "length {len} is not a whole number of blocks")
            }
            QuantError::UnsupportedType(code) => write!(f, "unsupported type code {code}"),
        }
    }
}

impl core::error::Error for QuantError {}
