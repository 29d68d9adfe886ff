//! The host's parallel executor: a persistent pool of worker threads that runs the
//! core's kernel tasks, with the calling thread working alongside them.
//!
//! Decode calls the executor a few hundred times per token with jobs of a few
//! microseconds, so threads are created once and, between jobs, spin briefly before they
//! sleep: a job posted within the spin window starts without a system call. Tasks are
//! handed out one at a time from a shared counter, so a core slowed down by another
//! process simply takes fewer of them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use glimpse_core::kernels::par::{DefaultExecutor, install_default_executor};
use glimpse_hal::Executor;

/// How long an idle worker spins for the next job before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

/// A task closure with its borrow's lifetime erased. Only dereferenced while the `run`
/// call that posted it is still waiting (see [`ThreadPool::run`]).
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync + 'static),
    tasks: usize,
}

// SAFETY: the closure behind `f` is `Sync`, so calling it from several threads is sound;
// the pointer is only used while the posting `run` call keeps the closure alive.
unsafe impl Send for Job {}

struct Slot {
    job: Option<Job>,
    generation: u64,
    shutdown: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    /// Mirror of `slot.generation`, polled by spinning workers without the lock.
    generation: AtomicU64,
    /// Next task index to hand out.
    next: AtomicUsize,
    /// Tasks finished (panicked ones included).
    done: AtomicUsize,
    /// Workers that took the current job and have not yet run out of tasks.
    active: AtomicUsize,
    sleepers: AtomicUsize,
    panicked: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A worker never panics while holding the lock, so poisoning cannot happen; if
        // it did, the slot's plain data is still consistent.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claim and run tasks of `job` until none are left.
    fn work(&self, job: Job) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= job.tasks {
                return;
            }
            // SAFETY: `job` was taken from the slot while its `run` call was waiting for
            // this task to finish (it waits for `done == tasks` and `active == 0`), so the
            // closure is alive.
            let f = unsafe { &*job.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Release);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// A fixed set of worker threads implementing [`Executor`]; `threads` counts the caller.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl ThreadPool {
    /// A pool running tasks on `threads` threads in all: the caller of [`Executor::run`]
    /// plus `threads - 1` workers (`0` is taken as `1`).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                job: None,
                generation: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for k in 1..threads {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("glimpse-worker-{k}"))
                .spawn(move || worker(&s))?;
            workers.push(h);
        }
        Ok(ThreadPool {
            shared,
            workers,
            threads,
        })
    }

    /// A pool with one thread per physical core ([`physical_cores`]).
    pub fn with_physical_cores() -> std::io::Result<Self> {
        Self::new(physical_cores())
    }

    /// A pool with one thread per available core.
    pub fn with_available_parallelism() -> std::io::Result<Self> {
        Self::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Threads in all, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

/// Physical cores this process may use: the CPUs it may run on, counting SMT siblings
/// (Linux `topology/thread_siblings_list`) once, as llama.cpp does (a second hardware
/// thread on a core adds little to int8 GEMMs and contends for its caches). Falls back to
/// the available parallelism where the topology cannot be read.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = std::collections::BTreeSet::new();
    for cpu in 0..logical.max(1) * 4 {
        let path = format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list");
        if let Ok(s) = std::fs::read_to_string(path) {
            cores.insert(s.trim().to_string());
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().clamp(1, logical)
    }
}

/// Create a pool of `threads` threads and make it the core's default executor (the one
/// `with_default_ctx` and sessions handed no executor use) for the rest of the
/// program. Meant to be called once at start-up: the pool is never freed. Returns the
/// pool's parallelism.
pub fn install_default_pool(threads: usize) -> std::io::Result<usize> {
    let pool: &'static mut ThreadPool = Box::leak(Box::new(ThreadPool::new(threads)?));
    let par = pool.threads();
    let slot = Box::leak(Box::new(DefaultExecutor::new(pool)));
    // A replaced slot stays leaked: another thread may have been about to use it.
    let _ = install_default_executor(slot);
    Ok(par)
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin for a new generation, then sleep on the condvar.
        let start = Instant::now();
        let mut spins = 0u32;
        while s.generation.load(Ordering::Acquire) == seen {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                break;
            }
        }
        let mut slot = s.lock();
        while slot.generation == seen && !slot.shutdown {
            s.sleepers.fetch_add(1, Ordering::AcqRel);
            slot = s.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_sub(1, Ordering::AcqRel);
        }
        if slot.shutdown {
            return;
        }
        seen = slot.generation;
        let job = slot.job;
        if job.is_some() {
            // Joining under the lock: once `run` has cleared the job, nobody can join.
            s.active.fetch_add(1, Ordering::AcqRel);
        }
        drop(slot);
        if let Some(job) = job {
            s.work(job);
            s.active.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Executor for ThreadPool {
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if self.threads == 1 || tasks == 1 {
            for i in 0..tasks {
                f(i);
            }
            return;
        }
        let s = &*self.shared;
        let short: *const (dyn Fn(usize) + Sync + '_) = f;
        // SAFETY: only the pointer's lifetime changes. Workers dereference it only for
        // tasks of this job, and this call returns only after every task has finished and
        // every worker that took the job has left it (`done == tasks`, `active == 0`,
        // and the slot cleared so no one else joins), so `f` outlives every use.
        let f_static: *const (dyn Fn(usize) + Sync + 'static) =
            unsafe { std::mem::transmute(short) };
        let job = Job { f: f_static, tasks };
        {
            let mut slot = s.lock();
            s.next.store(0, Ordering::Release);
            s.done.store(0, Ordering::Release);
            s.panicked.store(false, Ordering::Release);
            slot.job = Some(job);
            slot.generation += 1;
            s.generation.store(slot.generation, Ordering::Release);
        }
        if s.sleepers.load(Ordering::Acquire) > 0 {
            s.wake.notify_all();
        }
        s.work(job);
        wait_until(|| s.done.load(Ordering::Acquire) >= tasks);
        s.lock().job = None;
        wait_until(|| s.active.load(Ordering::Acquire) == 0);
        if s.panicked.load(Ordering::Acquire) {
            panic!("a task of a glimpse thread pool job panicked");
        }
    }

    fn parallelism(&self) -> usize {
        self.threads
    }
}

/// Spin until `cond`, yielding the core once the wait gets long (a worker may have been
/// descheduled by another process).
fn wait_until(cond: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !cond() {
        spins = spins.saturating_add(1);
        if spins < 1 << 14 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_task_runs_once_per_job() {
        for threads in [1, 2, 3, 7] {
            let mut pool = ThreadPool::new(threads).unwrap();
            assert_eq!(pool.parallelism(), threads);
            for tasks in [0usize, 1, 2, 5, 64, 1000] {
                let hits: Vec<AtomicU32> = (0..tasks).map(|_| AtomicU32::new(0)).collect();
                pool.run(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn back_to_back_jobs_and_sleeping_workers() {
        let mut pool = ThreadPool::new(3).unwrap();
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
            if round % 500 == 0 {
                // Let the workers fall asleep, so the condvar path runs too.
                std::thread::sleep(SPIN * 3);
            }
        }
        assert_eq!(total.load(Ordering::Relaxed), 2000 * 10);
    }

    #[test]
    fn a_panicking_task_is_reported_and_the_pool_survives() {
        let mut pool = ThreadPool::new(2).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, &|i| {
                if i == 5 {
                    panic!("task 5");
                }
            })
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(8, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 8);
    }
}
