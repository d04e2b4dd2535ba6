//! Keeping rayon's threads awake through a compiled plan's many short parallel regions.
//!
//! Why: a rayon worker with nothing to do spins briefly, then sleeps on a futex, and waking it
//! is a cross-CPU interrupt. On the virtual machines this project measures on, that wake-up cost
//! 25-125 us per parallel region after a serial gap of 20-200 us (the regions themselves: 20-100
//! us), where OpenMP runtimes (PyTorch's) spin for milliseconds before sleeping. A ResNet-56
//! training step at batch 16 runs about a thousand regions. `hot` runs a plan's pass on a worker
//! of the pool while every other worker spins in a task that keeps taking the pool's jobs
//! (`rayon::yield_now`), so a region's jobs are taken at once; the spinning ends with the pass.

use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` on a thread of the current rayon pool, the pool's other threads spinning for jobs
/// until it returns (or unwinds). With one thread, `f` runs here.
pub(crate) fn hot<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() < 2 {
        return f();
    }
    let active = AtomicBool::new(true);
    rayon::scope(|s| {
        // The scope's body runs on a worker (this one, or one the call is injected into).
        let body = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            let active = &active;
            s.spawn(move |_| {
                // Taken by the body's own thread while it waits inside a join: return, or the
                // body could never go on to end the spinning.
                if rayon::current_thread_index() == body {
                    return;
                }
                while active.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        /// Ends the spinning when the body returns or unwinds (the scope then waits for the
        /// spinning tasks, which would otherwise never end).
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _stop = Stop(&active);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::hot;
    use rayon::prelude::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// A parallel sum, as a plan's regions run inside `hot`.
    fn work(n: u64) -> u64 {
        (0..n).into_par_iter().map(|i| i * i % 7).sum()
    }

    fn want(n: u64) -> u64 {
        (0..n).map(|i| i * i % 7).sum()
    }

    #[test]
    fn returns_what_the_body_returns_on_one_and_two_threads() {
        for threads in [1, 2, 3] {
            pool(threads).install(|| {
                for _ in 0..50 {
                    assert_eq!(hot(|| work(10_000)), want(10_000));
                }
            });
        }
    }

    #[test]
    fn a_panicking_body_unwinds_and_the_pool_goes_on() {
        let p = pool(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.install(|| hot(|| -> u64 { panic!("body fails") }))
        }));
        assert!(r.is_err());
        assert_eq!(p.install(|| hot(|| work(1000))), want(1000));
    }

    /// Several threads entering `hot` on one pool at once, and `hot` inside `hot`: a spinning
    /// task takes the other calls' jobs (their bodies too); each call ends.
    #[test]
    fn concurrent_and_nested_calls_all_end() {
        let p = pool(2);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let p = &p;
                s.spawn(move || {
                    for i in 0..20 {
                        let n = 1000 + 100 * t + i;
                        let got = p.install(|| hot(|| work(n) + hot(|| work(n))));
                        assert_eq!(got, 2 * want(n));
                    }
                });
            }
        });
    }
}
