//! AVX-512 builds of the elementwise loops, chosen at run time. The crates build for baseline
//! x86-64, where the compiler vectorises loops with 128-bit SSE; on a CPU with AVX-512F the same
//! code compiled with that feature runs 512-bit vectors. The operations and their order are the
//! same (Rust contracts no multiply and add into an FMA), so the results are bit-identical.

/// Whether this CPU has AVX-512F (`is_x86_feature_detected` caches its answer: a load).
pub(crate) fn wide_vectors() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `wide!(expr)` evaluates `expr` compiled with AVX-512F where the CPU has it, as is elsewhere.
/// The expression becomes a closure inlined into a `#[target_feature]` function; functions it
/// calls are compiled with the feature only if they inline into it (`#[inline(always)]`).
macro_rules! wide {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if $crate::wide::wide_vectors() {
                // SAFETY: the CPU has AVX-512F (`wide_vectors`). (Unsafe blocks of the body are
                // needed in the other branch.)
                #[allow(unused_unsafe)]
                let r = unsafe {
                    wide(
                        #[inline(always)]
                        || $body,
                    )
                };
                r
            } else {
                $body
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $body
        }
    }};
}
