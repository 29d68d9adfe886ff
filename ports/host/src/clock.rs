//! The host's [`MonotonicClock`]: microseconds since the clock was made, from
//! [`std::time::Instant`].

use std::time::Instant;

use glimpse_hal::MonotonicClock;

/// A monotonic clock over [`Instant`], for the core's timings.
#[derive(Clone, Copy, Debug)]
pub struct HostClock(Instant);

impl HostClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        HostClock(Instant::now())
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl MonotonicClock for HostClock {
    fn now_us(&mut self) -> u64 {
        u64::try_from(self.0.elapsed().as_micros()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_back_and_advances() {
        let mut c = HostClock::new();
        let a = c.now_us();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = c.now_us();
        assert!(b >= a + 2_000, "{a} -> {b}");
    }
}
