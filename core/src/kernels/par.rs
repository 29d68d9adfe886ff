//! How kernels cut their work into tasks for a [`glimpse_hal::Executor`]: the split of an
//! output range into aligned pieces, the shared pointer tasks write their disjoint
//! pieces of one output buffer through, and the process-wide default executor.
//!
//! Every kernel computes each output element with the same sequence of operations
//! whichever task it lands in, so a result never depends on the number of tasks.

use core::marker::PhantomData;
use core::ops::Range;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

use glimpse_hal::{Executor, Sequential};

/// A port's executor, installed as the default with [`install_default_executor`].
pub struct DefaultExecutor {
    exec: &'static mut (dyn Executor + Send),
}

impl core::fmt::Debug for DefaultExecutor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DefaultExecutor")
            .field("parallelism", &self.exec.parallelism())
            .finish()
    }
}

impl DefaultExecutor {
    /// Wrap an executor that lives for the rest of the program.
    pub fn new(exec: &'static mut (dyn Executor + Send)) -> Self {
        DefaultExecutor { exec }
    }
}

/// The installed default executor; null while none is installed or while a call is using
/// it (a call takes it out and puts it back, so it is never used by two calls at once).
static DEFAULT: AtomicPtr<DefaultExecutor> = AtomicPtr::new(ptr::null_mut());

/// Make `slot` the executor that [`with_default_ctx`](super::with_default_ctx) (and so
/// every model call that is handed no executor) splits work across (by default it runs
/// sequentially).
/// Returns the slot it replaces, if that one was not in use.
///
/// A call that finds the default executor busy (another thread, or a kernel called from
/// inside one of its tasks) runs sequentially instead, so nothing ever waits for it.
pub fn install_default_executor(
    slot: &'static mut DefaultExecutor,
) -> Option<&'static mut DefaultExecutor> {
    let old = DEFAULT.swap(slot, Ordering::AcqRel);
    // SAFETY: a non-null pointer in DEFAULT always came from a `&'static mut` handed to
    // this function, and whoever swaps it out owns it exclusively.
    unsafe { old.as_mut() }
}

/// Run `f` with the default executor (see [`install_default_executor`]), or with
/// [`Sequential`] if there is none or it is busy.
pub fn with_default_executor<R>(f: impl FnOnce(&mut dyn Executor) -> R) -> R {
    let p = DEFAULT.swap(ptr::null_mut(), Ordering::AcqRel);
    // SAFETY: as in `install_default_executor`: taking the pointer out of DEFAULT gives
    // this call exclusive use of the slot until it is put back.
    let Some(slot) = (unsafe { p.as_mut() }) else {
        return f(&mut Sequential);
    };
    let r = f(&mut *slot.exec);
    // Put it back unless another slot was installed meanwhile (then this one is dropped
    // from use; it is 'static, so nothing dangles).
    let _ = DEFAULT.compare_exchange(ptr::null_mut(), p, Ordering::AcqRel, Ordering::Acquire);
    r
}

/// Work (multiply-adds) below which a task is not worth handing to another thread: about
/// 2 µs of int8 work, a few times what waking a spinning worker costs.
pub const MIN_TASK_WORK: usize = 1 << 16;

/// Tasks per unit of parallelism for large jobs, so a core slowed down by another process
/// takes fewer pieces and the others take more (the host pool hands tasks out one at a
/// time).
const OVERSPLIT: usize = 4;

/// How many tasks to cut a job of `units` indivisible pieces and `work` multiply-adds
/// into on `exec`.
pub fn task_count(exec: &dyn Executor, units: usize, work: usize) -> usize {
    let par = exec.parallelism().max(1);
    if par == 1 || units <= 1 {
        return 1;
    }
    let by_work = (work / MIN_TASK_WORK).max(1);
    let want = if by_work >= par * OVERSPLIT {
        par * OVERSPLIT
    } else {
        by_work.min(par)
    };
    want.min(units).max(1)
}

/// Piece `t` of `0..total` cut into `tasks` contiguous ranges whose inner boundaries are
/// multiples of `align` (the last range takes the remainder). Pieces cover `0..total`
/// exactly once; some may be empty.
pub fn piece(total: usize, tasks: usize, align: usize, t: usize) -> Range<usize> {
    let align = align.max(1);
    let units = total.div_ceil(align);
    let tasks = tasks.max(1);
    let (base, extra) = (units / tasks, units % tasks);
    let start_unit = t * base + t.min(extra);
    let len_units = base + usize::from(t < extra);
    let start = (start_unit * align).min(total);
    let end = ((start_unit + len_units) * align).min(total);
    start..end.max(start)
}

/// A mutable buffer shared by tasks that each write a disjoint set of its elements.
///
/// Creating one borrows the buffer mutably for its lifetime, so nothing else can look at
/// it meanwhile; the writers promise (with `unsafe`) that no two tasks touch the same
/// element.
pub struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

impl<T> core::fmt::Debug for SharedMut<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SharedMut").field("len", &self.len).finish()
    }
}

// SAFETY: a `SharedMut` only hands out access through `unsafe` methods whose callers
// guarantee that concurrent tasks touch disjoint elements; with that, sharing it between
// threads is sharing a `&mut [T]` split into pieces, which is sound for `T: Send`.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}
// SAFETY: as above; the buffer itself is `Send` when `T` is.
unsafe impl<T: Send> Send for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    /// Share `buf` among tasks.
    pub fn new(buf: &'a mut [T]) -> Self {
        SharedMut {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Length of the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Elements `range` as a slice, or `None` if the range is out of bounds.
    ///
    /// # Safety
    ///
    /// While the returned slice lives, no other task may access any element of `range`
    /// (through this `SharedMut` or otherwise).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: Range<usize>) -> Option<&mut [T]> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        // SAFETY: the range is in bounds of the buffer borrowed for 'a, and the caller
        // guarantees exclusive access to these elements while the slice lives.
        Some(unsafe {
            core::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start)
        })
    }

    /// Write `v` at `i` (ignored if out of bounds).
    ///
    /// # Safety
    ///
    /// No other task may access element `i` concurrently.
    #[inline(always)]
    pub unsafe fn write(&self, i: usize, v: T) {
        if i < self.len {
            // SAFETY: in bounds, and the caller guarantees no concurrent access to `i`.
            unsafe { self.ptr.add(i).write(v) };
        }
    }
}

/// Run `f(range)` over pieces of `0..total` (boundaries multiples of `align`) as
/// `tasks` tasks on `exec`, or inline when there is one task.
pub fn for_pieces(
    exec: &mut dyn Executor,
    total: usize,
    tasks: usize,
    align: usize,
    f: &(dyn Fn(Range<usize>) + Sync),
) {
    if tasks <= 1 {
        f(0..total);
        return;
    }
    exec.run(tasks, &|t| {
        let r = piece(total, tasks, align, t);
        if !r.is_empty() {
            f(r);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_hal::Sequential;

    #[test]
    fn pieces_cover_the_range_once_on_aligned_boundaries() {
        for total in [0usize, 1, 7, 8, 9, 63, 64, 100, 1000] {
            for tasks in 1..10 {
                for align in [1usize, 4, 8] {
                    let mut next = 0;
                    for t in 0..tasks {
                        let r = piece(total, tasks, align, t);
                        assert_eq!(r.start, next, "{total} {tasks} {align} {t}");
                        if r.end < total {
                            assert_eq!(r.end % align, 0);
                        }
                        next = r.end;
                    }
                    assert_eq!(next, total);
                }
            }
        }
    }

    struct Fake(usize);
    impl Executor for Fake {
        fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
            for i in (0..tasks).rev() {
                f(i);
            }
        }
        fn parallelism(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn task_counts() {
        assert_eq!(task_count(&Sequential, 100, 1 << 30), 1);
        assert_eq!(task_count(&Fake(2), 100, 10), 1);
        assert_eq!(task_count(&Fake(2), 100, 3 * MIN_TASK_WORK), 2);
        assert_eq!(task_count(&Fake(2), 100, 1 << 30), 8);
        assert_eq!(task_count(&Fake(2), 3, 1 << 30), 3);
    }

    #[test]
    fn default_executor_is_taken_and_put_back() {
        // Nothing installed: sequential.
        assert_eq!(with_default_executor(|e| e.parallelism()), 1);
        let fake: &'static mut Fake = std::boxed::Box::leak(std::boxed::Box::new(Fake(3)));
        let slot = std::boxed::Box::leak(std::boxed::Box::new(DefaultExecutor::new(fake)));
        assert!(install_default_executor(slot).is_none());
        assert_eq!(with_default_executor(|e| e.parallelism()), 3);
        // Busy (nested use): the inner call runs sequentially.
        let inner = with_default_executor(|_| with_default_executor(|e| e.parallelism()));
        assert_eq!(inner, 1);
        assert_eq!(with_default_executor(|e| e.parallelism()), 3);
        // Uninstall by swapping in a sequential slot again.
        let seq = std::boxed::Box::leak(std::boxed::Box::new(Sequential));
        let slot2 = std::boxed::Box::leak(std::boxed::Box::new(DefaultExecutor::new(seq)));
        assert!(install_default_executor(slot2).is_some());
        assert_eq!(with_default_executor(|e| e.parallelism()), 1);
    }

    #[test]
    fn shared_writes_land() {
        let mut buf = [0u32; 10];
        {
            let s = SharedMut::new(&mut buf);
            for_pieces(&mut Fake(3), 10, 3, 4, &|r| {
                for i in r {
                    // SAFETY: pieces are disjoint.
                    unsafe { s.write(i, i as u32 * 2) };
                }
            });
            // SAFETY: no task is running.
            assert!(unsafe { s.slice(5..11) }.is_none());
        }
        assert_eq!(buf, [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    }
}
