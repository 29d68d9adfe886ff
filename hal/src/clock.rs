//! The monotonic clock the core times TTFT and each phase with.

/// A monotonic clock, for TTFT and per-phase timing.
pub trait MonotonicClock {
    /// Microseconds since an arbitrary fixed origin; never decreases.
    fn now_us(&mut self) -> u64;

    /// Microseconds since `since` (an earlier [`now_us`](Self::now_us) reading).
    ///
    /// Saturates at zero rather than wrapping, so a `since` taken from another clock
    /// cannot produce a huge bogus duration.
    fn elapsed_us(&mut self, since: u64) -> u64 {
        self.now_us().saturating_sub(since)
    }
}

impl<T: MonotonicClock + ?Sized> MonotonicClock for &mut T {
    #[inline]
    fn now_us(&mut self) -> u64 {
        T::now_us(self)
    }

    #[inline]
    fn elapsed_us(&mut self, since: u64) -> u64 {
        T::elapsed_us(self, since)
    }
}
