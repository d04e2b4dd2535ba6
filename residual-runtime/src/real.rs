//! The element types the CPU kernels are compiled for (`f32`, `f64`), and the per-thread memory
//! they reuse: the conv kernels' scratch and the buffer pool of compiled plans.
//!
//! `Real` is sealed: the kernels are instantiated for exactly these two types, in this crate, so
//! they are optimised once here instead of in every user crate.

use std::cell::RefCell;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// `f32` or `f64`: what the CPU kernels compute in. Sealed; a bound of [`crate::Element`].
pub trait Real:
    sealed::Sealed
    + num_traits::Float
    + Copy
    + Send
    + Sync
    + 'static
    + Default
    + PartialEq
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::AddAssign
{
    const ZERO: Self;
    const ONE: Self;
    #[doc(hidden)]
    fn from_f64_lossy(v: f64) -> Self;
    #[doc(hidden)]
    fn to_f64_lossless(self) -> f64;
    #[doc(hidden)]
    fn sqrt_(self) -> Self;
    /// Runs `f` with this thread's conv scratch buffers (or fresh ones on re-entry).
    #[doc(hidden)]
    fn with_scratch<R>(f: impl FnOnce(&mut Scratch<Self>) -> R) -> R;
    /// Runs `f` with this thread's plan buffer pool (or a fresh one on re-entry).
    #[doc(hidden)]
    fn with_pool<R>(f: impl FnOnce(&mut BufPool<Self>) -> R) -> R;
}

/// Reusable buffers of the conv kernels: the im2col matrix, a GEMM output or gathered gradient,
/// and the column gradient of the backward pass.
#[doc(hidden)]
#[derive(Default)]
pub struct Scratch<E> {
    pub(crate) col: Vec<E>,
    pub(crate) tmp: Vec<E>,
    pub(crate) dcol: Vec<E>,
    /// The flipped, transposed weight of a stride-1 backward pass.
    pub(crate) wt: Vec<E>,
    /// The other threads' weight-gradient parts when threads take whole chunks of images.
    pub(crate) gw_parts: Vec<E>,
    /// The Winograd-transformed weights of a 3x3 conv (`conv/winograd.rs`).
    pub(crate) winograd_u: Vec<E>,
    /// The tap masks of the direct 3x3 conv's planes (`conv/direct.rs`).
    pub(crate) direct_masks: Vec<u16>,
}

/// The first `len` elements of `v`, growing it (zero-filled, once) if it is too short. Callers
/// overwrite what they use, so stale contents never leak into results.
pub(crate) fn grown<E: Real>(v: &mut Vec<E>, len: usize) -> &mut [E] {
    if v.len() < len {
        v.resize(len, E::ZERO);
    }
    &mut v[..len]
}

/// Free buffers of a thread, reused by best fit: a plan asks for the same sizes in the same order
/// on every call, so after the first call no request allocates.
#[doc(hidden)]
#[derive(Default)]
pub struct BufPool<E> {
    free: Vec<Vec<E>>,
}

/// How many free buffers a pool keeps; beyond that the smallest is released.
const POOL_MAX: usize = 4096;

impl<E: Real> BufPool<E> {
    /// A buffer of exactly `len` elements with unspecified contents (callers overwrite it).
    pub(crate) fn take(&mut self, len: usize) -> Vec<E> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        let mut v = match best {
            Some(i) => self.free.swap_remove(i),
            None => Vec::with_capacity(len),
        };
        // Within capacity: `resize` writes only the grown tail, and only the first time.
        if v.len() < len {
            v.resize(len, E::ZERO);
        }
        v.truncate(len);
        v
    }

    pub(crate) fn give(&mut self, v: Vec<E>) {
        if v.capacity() == 0 {
            return;
        }
        if self.free.len() >= POOL_MAX {
            if let Some((i, _)) = self.free.iter().enumerate().min_by_key(|(_, v)| v.capacity()) {
                self.free.swap_remove(i);
            }
        }
        self.free.push(v);
    }
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline]
            fn from_f64_lossy(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_f64_lossless(self) -> f64 {
                self as f64
            }
            #[inline]
            fn sqrt_(self) -> Self {
                self.sqrt()
            }
            fn with_scratch<R>(f: impl FnOnce(&mut Scratch<Self>) -> R) -> R {
                thread_local! {
                    static SCRATCH: RefCell<Scratch<$t>> = RefCell::new(Scratch::default());
                }
                SCRATCH.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut s) => f(&mut s),
                    Err(_) => f(&mut Scratch::default()),
                })
            }
            fn with_pool<R>(f: impl FnOnce(&mut BufPool<Self>) -> R) -> R {
                thread_local! {
                    static POOL: RefCell<BufPool<$t>> = RefCell::new(BufPool::default());
                }
                let mut f = Some(f);
                let r = POOL.try_with(|cell| match cell.try_borrow_mut() {
                    Ok(mut p) => (f.take().expect("called once"))(&mut p),
                    Err(_) => (f.take().expect("called once"))(&mut BufPool::default()),
                });
                match r {
                    Ok(r) => r,
                    // The thread is being torn down: work without a pool.
                    Err(_) => (f.take().expect("called once"))(&mut BufPool::default()),
                }
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);
