//! The detail behind the last error code: a NUL-terminated string, per thread in a host
//! build, one for the program on bare metal (which runs one thread).

use core::ffi::c_char;
use core::fmt::{self, Write as _};

/// Bytes kept of a detail (longer ones are cut at a character boundary).
const CAP: usize = 256;

/// A fixed buffer a detail is formatted into.
struct Detail {
    buf: [u8; CAP],
    len: usize,
}

impl Detail {
    const fn new() -> Self {
        Detail {
            buf: [0; CAP],
            len: 0,
        }
    }

    fn set(&mut self, args: fmt::Arguments<'_>) {
        self.len = 0;
        let _ = self.write_fmt(args);
        let end = self.len.min(CAP - 1);
        if let Some(b) = self.buf.get_mut(end) {
            *b = 0;
        }
    }
}

impl fmt::Write for Detail {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the NUL; cut at a character boundary.
        let room = (CAP - 1).saturating_sub(self.len);
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        if let Some(dst) = self.buf.get_mut(self.len..self.len + take) {
            dst.copy_from_slice(&s.as_bytes()[..take]);
        }
        self.len += take;
        Ok(())
    }
}

#[cfg(feature = "std")]
std::thread_local! {
    static LAST: core::cell::RefCell<Detail> = const { core::cell::RefCell::new(Detail::new()) };
}

#[cfg(feature = "std")]
pub(crate) fn set_last_error(args: fmt::Arguments<'_>) {
    LAST.with(|d| {
        if let Ok(mut d) = d.try_borrow_mut() {
            d.set(args);
        }
    });
}

#[cfg(feature = "std")]
fn last_ptr() -> *const c_char {
    // The thread-local lives as long as the thread, and only a later error on this
    // thread rewrites it.
    LAST.with(|d| d.as_ptr().cast_const().cast::<c_char>())
}

#[cfg(not(feature = "std"))]
mod single {
    use super::*;
    use core::cell::UnsafeCell;
    use core::sync::atomic::{AtomicBool, Ordering};

    /// The bare-metal detail, guarded by a flag: a write that finds it taken (an
    /// interrupt handler calling in) is dropped rather than waited for.
    pub(crate) struct Shared {
        busy: AtomicBool,
        detail: UnsafeCell<Detail>,
    }

    // SAFETY: every access to `detail` holds `busy`.
    unsafe impl Sync for Shared {}

    pub(crate) static LAST: Shared = Shared {
        busy: AtomicBool::new(false),
        detail: UnsafeCell::new(Detail::new()),
    };

    impl Shared {
        pub(crate) fn set(&self, args: fmt::Arguments<'_>) {
            if self.busy.swap(true, Ordering::Acquire) {
                return;
            }
            // SAFETY: `busy` is held.
            unsafe { (*self.detail.get()).set(args) };
            self.busy.store(false, Ordering::Release);
        }

        pub(crate) fn ptr(&self) -> *const c_char {
            // SAFETY: only the address is taken.
            unsafe { (*self.detail.get()).buf.as_ptr().cast() }
        }
    }
}

#[cfg(not(feature = "std"))]
pub(crate) fn set_last_error(args: fmt::Arguments<'_>) {
    single::LAST.set(args);
}

#[cfg(not(feature = "std"))]
fn last_ptr() -> *const c_char {
    single::LAST.ptr()
}

/// The detail of the last error on this thread (a host build) or in the program (bare
/// metal): NUL-terminated, valid until the next failing call on the same thread; "" when
/// there was none.
#[unsafe(no_mangle)]
pub extern "C" fn glimpse_last_error() -> *const c_char {
    last_ptr()
}
