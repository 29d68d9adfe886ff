//! The parallel executor the core splits work through, and its single-threaded default.

/// Runs independent tasks, possibly in parallel.
///
/// The core stays single-threaded code: it cuts a kernel into `tasks` pieces that write
/// disjoint outputs and hands the closure here. Ports with more cores override this with a
/// thread pool or per-core dispatch.
pub trait Executor {
    /// Call `f(i)` once for every `i` in `0..tasks`, in any order and on any thread, and
    /// return only after all calls have finished.
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync));

    /// How many tasks can make progress at once; the core uses it to size its splits.
    fn parallelism(&self) -> usize {
        1
    }
}

impl<T: Executor + ?Sized> Executor for &mut T {
    #[inline]
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        T::run(self, tasks, f);
    }

    #[inline]
    fn parallelism(&self) -> usize {
        T::parallelism(self)
    }
}

/// Runs every task in order on the calling thread.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Sequential;

impl Executor for Sequential {
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        for i in 0..tasks {
            f(i);
        }
    }
}
