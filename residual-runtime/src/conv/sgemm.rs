//! The f32 GEMM of the conv kernels: AVX-512 where the CPU has it, AVX2 + FMA otherwise.
//!
//! Why: the `gemm` crate 0.15 (the one dfdx uses) enables its AVX-512 kernels only with its
//! `nightly` feature, so on stable Rust it runs AVX2 (8 lanes); and its AVX2 path reached 98-100
//! GFLOP/s on two Zen 3 cores (4096^3) where those cores' two 256-bit FMA pipes allow about 190.
//! Cores with full-width AVX-512 do twice the f32 FMAs per cycle with 16 lanes (AVX-512
//! intrinsics are stable since Rust 1.89). Where the CPU has neither AVX-512F nor AVX2 + FMA the
//! caller falls back to the `gemm` crate. The `gemm` crate 0.19 with its `x86-v4` feature has
//! AVX-512 kernels on stable too; measured against these tiles it wins on GEMMs with many rows and
//! loses on few, so the conv kernels run it from 128 rows on AVX-512 CPUs (`cpu::crate_runs`).
//!
//! Layout: the classic Goto/BLIS blocking. `B` is packed in `KC x NR` slivers, `A` in `MR x KC`
//! slivers, and a register tile of accumulators is updated per `k` step. AVX-512 has two tiles:
//! `12 x 32` (24 zmm accumulators, two loads of `B` per step) for large problems and `8 x 48`
//! (three loads, eight broadcasts) where `A` has few rows (conv output channels <= 256) and `C`'s
//! columns fill its slivers: 16 channels fill two 8-row slivers where the 12-row tile runs 67% full
//! (BENCHMARKS.md has the A/B). AVX2 has one, `6 x 16` (12 of the 16 ymm registers accumulate,
//! two hold `B`, one a broadcast of `A`): a `4 x 24` tile for few rows was tried and dropped, since
//! LLVM spilled an accumulator to the stack in its loop (16 live registers), which made the
//! ResNet-56 training step 38% slower than the `6 x 16` tile alone. Threads split the columns of
//! `C`, or its rows when columns are few.

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

/// A register tile and the blocking that goes with it.
trait Tile {
    const MR: usize;
    const NR: usize;
    const KC: usize;
    const MC: usize;
    const NC: usize;
    /// `c[MR x NR] (+)= ap[MR x kc] * bp[kc x NR]` from packed slivers.
    ///
    /// # Safety
    /// The tile's ISA is available; `ap`, `bp` hold `kc` packed steps; `c` has `MR` rows of `NR`.
    unsafe fn kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool);
}

/// 12 x 32: the large problems.
struct Tall;
impl Tile for Tall {
    const MR: usize = 12;
    const NR: usize = 32;
    const KC: usize = 256;
    const MC: usize = 144;
    const NC: usize = 2048;
    unsafe fn kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
        kernel_12x32(kc, ap, bp, c, ldc, accumulate)
    }
}

/// 8 x 48: few rows.
struct Wide;
impl Tile for Wide {
    const MR: usize = 8;
    const NR: usize = 48;
    // A 192 x 48 sliver of B (36 KiB) stays in a 48 KiB L1.
    const KC: usize = 192;
    const MC: usize = 144;
    const NC: usize = 2016;
    unsafe fn kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
        kernel_8x48(kc, ap, bp, c, ldc, accumulate)
    }
}

/// AVX2 6 x 16: the large problems (12 ymm accumulators, two loads of `B`, six broadcasts).
struct Tall2;
impl Tile for Tall2 {
    const MR: usize = 6;
    const NR: usize = 16;
    // A 256 x 16 sliver of B (16 KiB) stays in a 32 KiB L1; A's 144 x 256 block (144 KiB) in L2.
    const KC: usize = 256;
    const MC: usize = 144;
    const NC: usize = 2048;
    unsafe fn kernel(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
        kernel_6x16(kc, ap, bp, c, ldc, accumulate)
    }
}

/// The largest `MR * NR` of the tiles (the edge-tile buffer).
const MAX_TILE: usize = 12 * 48;

/// The instruction sets [`sgemm`] has tiles for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    Avx512,
    Avx2Fma,
}

/// Every [`Isa`], best first.
const ISAS: [Isa; 2] = [Isa::Avx512, Isa::Avx2Fma];

/// Whether this CPU runs `isa` (`is_x86_feature_detected` caches its answer: a load).
fn runs(isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Avx512 => crate::wide::wide_vectors(),
            Isa::Avx2Fma => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        false
    }
}

/// The best [`Isa`] this CPU runs, if any. Runs before every GEMM, so it allocates nothing.
pub(crate) fn best_isa() -> Option<Isa> {
    ISAS.into_iter().find(|&isa| runs(isa))
}

/// Every [`Isa`] this CPU runs, best first (the tests run each).
#[cfg(test)]
pub(crate) fn supported_isas() -> Vec<Isa> {
    ISAS.into_iter().filter(|&isa| runs(isa)).collect()
}

/// Whether [`sgemm`] can run here.
pub(crate) fn available() -> bool {
    best_isa().is_some()
}

/// A matrix operand: element `(i, j)` at `ptr + i * rs + j * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

/// `c[m x n] (row stride ldc, unit column stride) (+)= a[m x k] * b[k x n]`.
///
/// # Safety
/// [`available`] must be true; every pointer must be valid for the elements the sizes and strides
/// address; `c` must not overlap `a` or `b`. `parallel`: split the work over rayon's threads
/// (false when the caller already runs one task per thread).
// BLAS's own argument list (sizes, C and its stride, the accumulate flag, A, B) and the threading
// flag: grouping them in a struct would only rename the same values at every call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0);
            }
        }
        return;
    }
    match best_isa() {
        Some(isa) => sgemm_on(isa, m, n, k, c, ldc, accumulate, a, b, parallel),
        None => unreachable!("sgemm called where available() is false"),
    }
}

/// [`sgemm`] with the tiles of `isa`.
///
/// # Safety
/// As [`sgemm`], and `isa` is one of [`supported_isas`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_on(
    isa: Isa,
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    parallel: bool,
) {
    let threads = if parallel { rayon::current_num_threads().max(1) } else { 1 };
    match isa {
        Isa::Avx512 if m <= 256 && (n.is_multiple_of(Wide::NR) || n >= 1536) => {
            sgemm_with::<Wide>(threads, m, n, k, c, ldc, accumulate, a, b)
        }
        Isa::Avx512 => sgemm_with::<Tall>(threads, m, n, k, c, ldc, accumulate, a, b),
        Isa::Avx2Fma => sgemm_with::<Tall2>(threads, m, n, k, c, ldc, accumulate, a, b),
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_with<T: Tile>(
    threads: usize,
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    // Columns per thread, a multiple of T::NR; small problems stay on one thread.
    let per = n.div_ceil(threads).div_ceil(T::NR) * T::NR;
    let work = m.saturating_mul(n).saturating_mul(k);
    let c_addr = c as usize;
    if threads == 1 || work < 1 << 21 {
        block::<T>(m, 0, n, k, c, ldc, accumulate, a, b);
        return;
    }
    // Raw pointers are not Send: cross the thread boundary as addresses.
    let (a_ptr, a_rs, a_cs) = (a.ptr as usize, a.rs, a.cs);
    let (b_ptr, b_rs, b_cs) = (b.ptr as usize, b.rs, b.cs);
    // Few columns (a 7x7 map at batch 1 is 49), or an A larger than B (a deep layer's weights
    // against a small map): give each thread rows instead. Each thread then packs all of B and
    // its own rows of A, where a column split has every thread pack all of A (at batch 1, that
    // duplicated packing of the weights was 10% of ResNet-50's time).
    let col_slivers = n.div_ceil(T::NR);
    let rows_per = m.div_ceil(threads).div_ceil(T::MR) * T::MR;
    if (col_slivers < 2 * threads || m > n) && rows_per < m {
        (0..m.div_ceil(rows_per)).into_par_iter().for_each(|t| {
            let i0 = t * rows_per;
            let rows = rows_per.min(m - i0);
            let a = Mat { ptr: (a_ptr as *const f32).wrapping_add(i0 * a_rs), rs: a_rs, cs: a_cs };
            let b = Mat { ptr: b_ptr as *const f32, rs: b_rs, cs: b_cs };
            // SAFETY: threads write disjoint row ranges of c; a's rows i0.. exist (i0 < m).
            unsafe { block::<T>(rows, 0, n, k, (c_addr as *mut f32).add(i0 * ldc), ldc, accumulate, a, b) };
        });
        return;
    }
    if per >= n {
        block::<T>(m, 0, n, k, c, ldc, accumulate, a, b);
        return;
    }
    (0..n.div_ceil(per)).into_par_iter().for_each(|t| {
        let j0 = t * per;
        let j1 = (j0 + per).min(n);
        let a = Mat { ptr: a_ptr as *const f32, rs: a_rs, cs: a_cs };
        let b = Mat { ptr: b_ptr as *const f32, rs: b_rs, cs: b_cs };
        // SAFETY: threads write disjoint column ranges of c; a and b are only read.
        unsafe { block::<T>(m, j0, j1, k, c_addr as *mut f32, ldc, accumulate, a, b) };
    });
}

thread_local! {
    static PACKS: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Columns `j0..j1` of `c`.
#[allow(clippy::too_many_arguments)]
unsafe fn block<T: Tile>(
    m: usize,
    j0: usize,
    j1: usize,
    k: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    PACKS.with(|cell| {
        let mut fresh = (Vec::new(), Vec::new());
        let mut guard = cell.try_borrow_mut().ok();
        let (pa, pb) = match guard.as_deref_mut() {
            Some(p) => p,
            None => &mut fresh,
        };
        let pa_len = T::MC.div_ceil(T::MR) * T::MR * T::KC;
        let pb_len = T::NC.div_ceil(T::NR) * T::NR * T::KC;
        // Slivers start on a cache line (16 floats of slack for the offset), so no vector load of
        // a sliver row straddles two lines.
        if pa.len() < pa_len + 16 {
            pa.resize(pa_len + 16, 0.0);
        }
        if pb.len() < pb_len + 16 {
            pb.resize(pb_len + 16, 0.0);
        }
        let (pa_off, pb_off) = (pa.as_ptr().align_offset(64), pb.as_ptr().align_offset(64));
        let pa = &mut pa[pa_off..][..pa_len];
        let pb = &mut pb[pb_off..][..pb_len];
        let mut jc = j0;
        while jc < j1 {
            let nc = T::NC.min(j1 - jc);
            let mut pc = 0;
            while pc < k {
                let kc = T::KC.min(k - pc);
                // Few rows (one block of A): each sliver of B is packed just before its tiles use
                // it, so they read it from L1. Packing the whole panel first would leave it in L3
                // (a 2048-column panel is 1-2 MiB), from where a 16-row A reuses each sliver only
                // a few times: the conv GEMMs of CIFAR nets stalled on it.
                let sliver_by_sliver = m <= T::MC;
                if !sliver_by_sliver {
                    pack_b::<T>(&mut pb[..], b, pc, kc, jc, nc);
                }
                let acc = accumulate || pc > 0;
                let mut ic = 0;
                while ic < m {
                    let mc = T::MC.min(m - ic);
                    pack_a::<T>(&mut pa[..], a, ic, mc, pc, kc);
                    for jr in (0..nc).step_by(T::NR) {
                        let nr = T::NR.min(nc - jr);
                        if sliver_by_sliver {
                            pack_b::<T>(&mut pb[jr * kc..], b, pc, kc, jc + jr, nr);
                        }
                        for ir in (0..mc).step_by(T::MR) {
                            let mr = T::MR.min(mc - ir);
                            let ap = pa.as_ptr().add(ir * kc);
                            let bp = pb.as_ptr().add(jr * kc);
                            let cp = c.add((ic + ir) * ldc + jc + jr);
                            if mr == T::MR && nr == T::NR {
                                T::kernel(kc, ap, bp, cp, ldc, acc);
                            } else {
                                let mut tile = [0.0f32; MAX_TILE];
                                T::kernel(kc, ap, bp, tile.as_mut_ptr(), T::NR, false);
                                for i in 0..mr {
                                    let row = std::slice::from_raw_parts_mut(cp.add(i * ldc), nr);
                                    let src = &tile[i * T::NR..i * T::NR + nr];
                                    if acc {
                                        row.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                                    } else {
                                        row.copy_from_slice(src);
                                    }
                                }
                            }
                        }
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}

/// Packs `b[pc..pc+kc, jc..jc+nc]` as slivers of T::NR columns: `[sliver][p][0..T::NR]`, zero-padded.
unsafe fn pack_b<T: Tile>(dst: &mut [f32], b: Mat, pc: usize, kc: usize, jc: usize, nc: usize) {
    for (s, j) in (0..nc).step_by(T::NR).enumerate() {
        let nr = T::NR.min(nc - j);
        let out = &mut dst[s * T::NR * kc..(s + 1) * T::NR * kc];
        if b.cs == 1 && nr == T::NR {
            // A whole sliver: copies of the constant length T::NR, which compile to a few vector
            // moves (a copy of a run-time length is a call to memmove, 6% of a ResNet-56 step).
            for p in 0..kc {
                let src = std::slice::from_raw_parts(b.ptr.add((pc + p) * b.rs + jc + j), T::NR);
                out[p * T::NR..(p + 1) * T::NR].copy_from_slice(src);
            }
        } else if b.cs == 1 {
            for p in 0..kc {
                let row = &mut out[p * T::NR..(p + 1) * T::NR];
                let src = b.ptr.add((pc + p) * b.rs + jc + j);
                row[..nr].copy_from_slice(std::slice::from_raw_parts(src, nr));
                row[nr..].fill(0.0);
            }
        } else if b.rs == 1 {
            // A transposed B (the weight gradient's im2col matrix, read as `cols^T`): its columns
            // are contiguous, so read each one along `p` rather than striding across them (row by
            // row, every element is a cache line of its own when the stride is a long image row).
            for q in 0..T::NR {
                if q < nr {
                    let src = std::slice::from_raw_parts(b.ptr.add(pc + (jc + j + q) * b.cs), kc);
                    for (p, v) in src.iter().enumerate() {
                        out[p * T::NR + q] = *v;
                    }
                } else {
                    for p in 0..kc {
                        out[p * T::NR + q] = 0.0;
                    }
                }
            }
        } else {
            for p in 0..kc {
                let row = &mut out[p * T::NR..(p + 1) * T::NR];
                let src = b.ptr.add((pc + p) * b.rs + (jc + j) * b.cs);
                for (q, v) in row[..nr].iter_mut().enumerate() {
                    *v = *src.add(q * b.cs);
                }
                row[nr..].fill(0.0);
            }
        }
    }
}

/// Packs `a[ic..ic+mc, pc..pc+kc]` as slivers of T::MR rows: `[sliver][p][0..T::MR]`, zero-padded.
unsafe fn pack_a<T: Tile>(dst: &mut [f32], a: Mat, ic: usize, mc: usize, pc: usize, kc: usize) {
    for (s, i) in (0..mc).step_by(T::MR).enumerate() {
        let mr = T::MR.min(mc - i);
        let out = &mut dst[s * T::MR * kc..(s + 1) * T::MR * kc];
        if a.rs == 1 && mr == T::MR {
            // Columns of A are contiguous (a transposed weight): copy T::MR (a constant) at a time.
            for p in 0..kc {
                let src = std::slice::from_raw_parts(a.ptr.add((ic + i) + (pc + p) * a.cs), T::MR);
                out[p * T::MR..(p + 1) * T::MR].copy_from_slice(src);
            }
        } else if a.rs == 1 {
            for p in 0..kc {
                let src = a.ptr.add((ic + i) + (pc + p) * a.cs);
                out[p * T::MR..p * T::MR + mr].copy_from_slice(std::slice::from_raw_parts(src, mr));
                out[p * T::MR + mr..(p + 1) * T::MR].fill(0.0);
            }
        } else {
            for r in 0..T::MR {
                if r < mr {
                    let src = a.ptr.add((ic + i + r) * a.rs + pc * a.cs);
                    for p in 0..kc {
                        out[p * T::MR + r] = *src.add(p * a.cs);
                    }
                } else {
                    for p in 0..kc {
                        out[p * T::MR + r] = 0.0;
                    }
                }
            }
        }
    }
}

/// `c[12 x 32] (+)= ap[12 x kc] * bp[kc x 32]` from packed slivers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn kernel_12x32(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; 12];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(bp.add(p * 32));
        let b1 = _mm512_loadu_ps(bp.add(p * 32 + 16));
        let a = ap.add(p * 12);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*a.add(i));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let cp = c.add(i * ldc);
        if accumulate {
            _mm512_storeu_ps(cp, _mm512_add_ps(_mm512_loadu_ps(cp), row[0]));
            _mm512_storeu_ps(cp.add(16), _mm512_add_ps(_mm512_loadu_ps(cp.add(16)), row[1]));
        } else {
            _mm512_storeu_ps(cp, row[0]);
            _mm512_storeu_ps(cp.add(16), row[1]);
        }
    }
}

/// `c[8 x 48] (+)= ap[8 x kc] * bp[kc x 48]` from packed slivers: 24 zmm accumulators, three
/// vector loads of `B` and eight broadcasts of `A` per `k` step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn kernel_8x48(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    let mut acc = [[_mm512_setzero_ps(); 3]; 8];
    for p in 0..kc {
        let b0 = _mm512_loadu_ps(bp.add(p * 48));
        let b1 = _mm512_loadu_ps(bp.add(p * 48 + 16));
        let b2 = _mm512_loadu_ps(bp.add(p * 48 + 32));
        let a = ap.add(p * 8);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm512_set1_ps(*a.add(i));
            row[0] = _mm512_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm512_fmadd_ps(ai, b1, row[1]);
            row[2] = _mm512_fmadd_ps(ai, b2, row[2]);
        }
    }
    for (i, row) in acc.iter().enumerate() {
        let cp = c.add(i * ldc);
        for (j, v) in row.iter().enumerate() {
            let cj = cp.add(16 * j);
            if accumulate {
                _mm512_storeu_ps(cj, _mm512_add_ps(_mm512_loadu_ps(cj), *v));
            } else {
                _mm512_storeu_ps(cj, *v);
            }
        }
    }
}

/// `c[6 x 16] (+)= ap[6 x kc] * bp[kc x 16]` from packed slivers: 12 ymm accumulators, two
/// vector loads of `B` and six broadcasts of `A` per `k` step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, accumulate: bool) {
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..kc {
        let b0 = _mm256_loadu_ps(bp.add(p * 16));
        let b1 = _mm256_loadu_ps(bp.add(p * 16 + 8));
        let a = ap.add(p * 6);
        for (i, row) in acc.iter_mut().enumerate() {
            let ai = _mm256_broadcast_ss(&*a.add(i));
            row[0] = _mm256_fmadd_ps(ai, b0, row[0]);
            row[1] = _mm256_fmadd_ps(ai, b1, row[1]);
        }
    }
    store_rows_256(&acc, c, ldc, accumulate);
}

/// Writes (or adds) a tile of ymm accumulators, `R` rows of `V` vectors, to `c`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn store_rows_256<const R: usize, const V: usize>(
    acc: &[[__m256; V]; R],
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for (i, row) in acc.iter().enumerate() {
        let cp = c.add(i * ldc);
        for (j, v) in row.iter().enumerate() {
            let cj = cp.add(8 * j);
            if accumulate {
                _mm256_storeu_ps(cj, _mm256_add_ps(_mm256_loadu_ps(cj), *v));
            } else {
                _mm256_storeu_ps(cj, *v);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_12x32(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_8x48(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_6x16(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("sgemm::available() is false off x86_64")
}
