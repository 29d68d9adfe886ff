//! The token sink: where generated text leaves the core.

use crate::ErrorType;

/// Where generated text goes (UART, stdout, defmt).
pub trait TokenSink: ErrorType {
    /// Receive one decoded token: its id and the UTF-8 bytes it completes.
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), Self::Error>;

    /// Generation has ended; flush anything buffered.
    ///
    /// Unbuffered sinks have nothing to do, hence the default.
    fn finish(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

impl<T: TokenSink + ?Sized> TokenSink for &mut T {
    #[inline]
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        T::token(self, id, bytes)
    }

    #[inline]
    fn finish(&mut self) -> Result<(), Self::Error> {
        T::finish(self)
    }
}
