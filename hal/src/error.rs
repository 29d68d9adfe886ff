//! The error vocabulary shared by every HAL trait: `ErrorKind`, `Error`, `ErrorType`.

/// Coarse classes of port errors, so the core can report them without knowing the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ErrorKind {
    /// The device or resource is not there.
    NotFound,
    /// The medium returned an error.
    Io,
    /// A read or write reached past the end of the medium.
    OutOfRange,
    /// The implementor was given arguments it cannot work with (a buffer too small,
    /// a size that is not a power of two, ...).
    InvalidInput,
    /// Anything else.
    Other,
}

impl Error for ErrorKind {
    fn kind(&self) -> ErrorKind {
        *self
    }
}

impl core::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self {
            Self::NotFound => "device or resource not found",
            Self::Io => "the medium returned an error",
            Self::OutOfRange => "access past the end of the medium",
            Self::InvalidInput => "invalid argument",
            Self::Other => "other error",
        };
        f.write_str(text)
    }
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
