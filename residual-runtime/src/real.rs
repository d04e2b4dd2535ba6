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
    /// Runs `f` with the process's cache of derived parameters, locked.
    #[doc(hidden)]
    fn with_derived<R>(f: impl FnOnce(&mut DerivedCache<Self>) -> R) -> R;
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

/// Values derived from a parameter (Winograd's transformed weights), kept across calls with a
/// copy of the parameter they came from: a lookup finds an entry by the parameter's address and
/// uses it only if the parameter's bits are still those copied (parameters may change between
/// calls, in place). One per element type, shared by the threads.
#[doc(hidden)]
pub struct DerivedCache<E> {
    entries: Vec<Derived<E>>,
    bytes: usize,
    lookups: u64,
}

/// What a derived value was derived as: a caller's own description, which must tell apart every
/// layout of the value that one source could give (Winograd: the variant and the input channels,
/// which with the weights' length fix the output channels).
pub(crate) type Tag = [usize; 2];

struct Derived<E> {
    /// The parameter's address and length, and what was derived.
    key: (usize, usize, Tag),
    source: Vec<E>,
    value: std::sync::Arc<Vec<E>>,
    bytes: usize,
    /// The lookup count when last used.
    used: u64,
}

impl<E: Real> DerivedCache<E> {
    const fn new() -> Self {
        DerivedCache { entries: Vec::new(), bytes: 0, lookups: 0 }
    }

    /// What was derived as `tag` from `source`, if this cache holds it and `source` has not
    /// changed since.
    pub(crate) fn get(&mut self, source: &[E], tag: Tag) -> Option<std::sync::Arc<Vec<E>>> {
        self.lookups += 1;
        let i = self.find(source, tag)?;
        if same_bits(&self.entries[i].source, source) {
            self.entries[i].used = self.lookups;
            return Some(self.entries[i].value.clone());
        }
        // Changed in place (an optimizer step): stale.
        self.remove(i);
        None
    }

    /// Whether an entry of `bytes` fits in `budget` bytes, after dropping entries not used in the
    /// last `fresh` lookups (oldest first) as needed: a dropped model's, or a moved parameter's.
    /// One larger than the budget never fits, and drops nothing.
    pub(crate) fn make_room(&mut self, bytes: usize, budget: usize, fresh: u64) -> bool {
        if bytes > budget {
            return false;
        }
        let now = self.lookups;
        while self.bytes.saturating_add(bytes) > budget {
            let stale = self
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| now - e.used > fresh)
                .min_by_key(|(_, e)| e.used)
                .map(|(i, _)| i);
            match stale {
                Some(i) => self.remove(i),
                None => return false,
            }
        }
        true
    }

    /// Keeps `value`, derived as `tag` from `source`, if it fits ([`Self::make_room`]); returns
    /// whether it was kept.
    pub(crate) fn insert(
        &mut self,
        source: &[E],
        tag: Tag,
        value: std::sync::Arc<Vec<E>>,
        budget: usize,
        fresh: u64,
    ) -> bool {
        if let Some(i) = self.find(source, tag) {
            self.remove(i);
        }
        let bytes = (source.len() + value.len()).saturating_mul(std::mem::size_of::<E>());
        if !self.make_room(bytes, budget, fresh) {
            return false;
        }
        self.bytes += bytes;
        let key = key(source, tag);
        self.entries.push(Derived { key, source: source.to_vec(), value, bytes, used: self.lookups });
        true
    }

    /// Whether an entry for `source` derived as `tag` is held (whatever `source`'s bits now).
    #[cfg(test)]
    pub(crate) fn holds(&self, source: &[E], tag: Tag) -> bool {
        self.find(source, tag).is_some()
    }

    /// The index of the entry for `source` derived as `tag`.
    fn find(&self, source: &[E], tag: Tag) -> Option<usize> {
        let key = key(source, tag);
        self.entries.iter().position(|e| e.key == key)
    }

    fn remove(&mut self, i: usize) {
        let gone = self.entries.swap_remove(i);
        self.bytes -= gone.bytes;
    }
}

/// An entry's key: the parameter's address and length, and what was derived.
fn key<E>(source: &[E], tag: Tag) -> (usize, usize, Tag) {
    (source.as_ptr() as usize, source.len(), tag)
}

/// Whether `a` and `b` hold the same bits (`==` on floats would take -0.0 for 0.0 and never a
/// NaN for itself).
fn same_bits<E: Real>(a: &[E], b: &[E]) -> bool {
    let bytes = |v: &[E]| {
        // SAFETY: `E` is f32 or f64 (sealed): plain bytes, no padding; the view covers exactly
        // `v`'s elements and lives no longer than the borrow of `v`.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    };
    a.len() == b.len() && bytes(a) == bytes(b)
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
            fn with_derived<R>(f: impl FnOnce(&mut DerivedCache<Self>) -> R) -> R {
                static DERIVED: std::sync::Mutex<DerivedCache<$t>> = std::sync::Mutex::new(DerivedCache::new());
                // A panic while locked leaves the cache consistent (each method updates its
                // entries and byte count together before anything can panic): keep using it.
                f(&mut DERIVED.lock().unwrap_or_else(|e| e.into_inner()))
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::DerivedCache;

    /// The cache's rules: a hit needs the same buffer with the same bits (`-0.0` is not `0.0`); a
    /// changed source drops its entry; what does not fit the budget is not kept unless entries
    /// older than `fresh` lookups make room, oldest first.
    #[test]
    fn derived_cache_keeps_what_fits_and_drops_what_changed() {
        let mut cache = DerivedCache::<f32>::new();
        let value = |n: usize| Arc::new(vec![1.0f32; n]);
        let mut a = vec![0.0f32, 1.0, 2.0, 3.0];
        // 4 + 4 values of 4 bytes: 32 bytes an entry.
        assert!(cache.insert(&a, [2, 0], value(4), 64, 10));
        assert!(cache.get(&a, [2, 0]).is_some());
        assert!(cache.get(&a, [4, 0]).is_none(), "another tag is another entry");
        assert!(cache.get(&a, [2, 1]).is_none(), "another layout (the tag's second word) is another entry");
        let copy = a.clone();
        assert!(cache.get(&copy, [2, 0]).is_none(), "another buffer is another entry");
        a[0] = -0.0;
        assert!(cache.get(&a, [2, 0]).is_none(), "-0.0 for 0.0 is a change");
        assert_eq!((cache.entries.len(), cache.bytes), (0, 0), "a changed source's entry is dropped");

        let (b, c, d) = (vec![1.0f32; 4], vec![2.0f32; 4], vec![3.0f32; 4]);
        cache.insert(&a, [2, 0], value(4), 64, 10);
        cache.insert(&b, [2, 0], value(4), 64, 10);
        assert!(!cache.insert(&c, [2, 0], value(4), 64, 10), "over the budget, nothing old enough to drop: not kept");
        assert!(cache.get(&c, [2, 0]).is_none());
        assert_eq!(cache.bytes, 64);
        for _ in 0..11 {
            assert!(cache.get(&b, [2, 0]).is_some());
        }
        cache.insert(&d, [2, 0], value(4), 64, 10);
        assert!(cache.get(&a, [2, 0]).is_none(), "unused for over 10 lookups: dropped for d");
        assert!(cache.get(&b, [2, 0]).is_some() && cache.get(&d, [2, 0]).is_some());
        assert!(!cache.insert(&c, [2, 0], value(100), 64, 10), "larger than the budget: never kept");
        assert!(cache.get(&c, [2, 0]).is_none());
        assert_eq!(cache.bytes, 64);
        // Two stale entries, one room needed: the older goes.
        for _ in 0..11 {
            assert!(cache.get(&c, [9, 9]).is_none());
        }
        assert!(cache.get(&d, [2, 0]).is_some());
        for _ in 0..11 {
            assert!(cache.get(&c, [9, 9]).is_none());
        }
        assert!(cache.insert(&c, [2, 0], value(4), 64, 10));
        assert!(cache.holds(&d, [2, 0]) && !cache.holds(&b, [2, 0]), "b, used before d, was the older");
        assert_eq!(cache.bytes, 64);
        // An entry larger than the budget drops nothing, stale entries included.
        for _ in 0..11 {
            assert!(cache.get(&a, [9, 9]).is_none());
        }
        assert!(!cache.insert(&a, [2, 0], value(100), 64, 10));
        assert!(cache.holds(&c, [2, 0]) && cache.holds(&d, [2, 0]));
        assert_eq!(cache.bytes, 64);
    }
}
