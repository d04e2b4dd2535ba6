//! AVX-512 builds of the elementwise loops, chosen at run time. The crates build for baseline
//! x86-64, where the compiler vectorises loops with 128-bit SSE; on a CPU with AVX-512 the same
//! code compiled with that feature runs 512-bit vectors. The operations and their order are the
//! same (Rust contracts no multiply and add into an FMA), so the results are bit-identical.

/// Whether this CPU has AVX-512 as x86-64-v4 names it: F, VL, DQ and BW
/// (`is_x86_feature_detected` caches its answers: loads). Every kernel built for AVX-512 here
/// enables all four: with F alone, the 128- and 256-bit instructions a lane reduction ends in
/// can address only registers 0-15, and the compiler kept accumulators of the direct conv's
/// weight gradient on the stack rather than in registers 16-31.
pub(crate) fn wide_vectors() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `wide!(expr)` evaluates `expr` compiled with AVX-512 (F, VL, DQ, BW) where the CPU has it, as is elsewhere.
/// The expression becomes a closure inlined into a `#[target_feature]` function; functions it
/// calls are compiled with the feature only if they inline into it (`#[inline(always)]`).
macro_rules! wide {
    ($body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
            unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            if $crate::wide::wide_vectors() {
                // SAFETY: the CPU has AVX-512 (`wide_vectors`). (Unsafe blocks of the body are
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
