//! An AVX-512 f32 GEMM for the conv kernels.
//!
//! Why: the `gemm` crate 0.15 (the one dfdx uses) enables its AVX-512 kernels only with its
//! `nightly` feature, so on stable Rust it runs AVX2 (8 lanes). This machine's cores (AMD family
//! 1Ah, full-width AVX-512) do twice the f32 FMAs per cycle with 16 lanes, and AVX-512
//! intrinsics are stable since Rust 1.89. When the CPU lacks AVX-512F the caller falls back to
//! the `gemm` crate.
//!
//! Layout: the classic Goto/BLIS blocking. `B` is packed in `KC x NR` slivers, `A` in `MR x KC`
//! slivers, and a register tile of 24 zmm accumulators is updated per `k` step. Two tiles: `12 x 32`
//! (two loads of `B`, twelve broadcasts of `A`) for large problems, and `8 x 48` (three loads,
//! eight broadcasts) where `A` has few rows (conv output channels <= 256) and `C`'s columns fill
//! its 48-wide slivers: 16 channels fill two 8-row slivers where the 12-row tile runs 67% full
//! (BENCHMARKS.md has the A/B). Threads split the columns of `C`, or its rows when columns are few.

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
    /// AVX-512F is available; `ap`, `bp` hold `kc` packed steps; `c` has `MR` rows of `NR`.
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

/// The largest `MR * NR` of the tiles (the edge-tile buffer).
const MAX_TILE: usize = 12 * 48;

/// Whether [`sgemm`] can run here (checked once; `is_x86_feature_detected` caches).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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
/// address; `c` must not overlap `a` or `b`.
// BLAS's own argument list (sizes, C and its stride, the accumulate flag, A, B): grouping them in a
// struct would only rename the same eight values at every call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(m: usize, n: usize, k: usize, c: *mut f32, ldc: usize, accumulate: bool, a: Mat, b: Mat) {
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
    if m <= 256 && (n.is_multiple_of(Wide::NR) || n >= 1536) {
        sgemm_with::<Wide>(m, n, k, c, ldc, accumulate, a, b)
    } else {
        sgemm_with::<Tall>(m, n, k, c, ldc, accumulate, a, b)
    }
}

#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_with<T: Tile>(m: usize, n: usize, k: usize, c: *mut f32, ldc: usize, accumulate: bool, a: Mat, b: Mat) {
    let threads = rayon::current_num_threads().max(1);
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
    // Few columns (a 7x7 map at batch 1 is 49): give each thread rows instead, so every thread
    // gets whole micro-tiles; each packs the (small) B itself.
    let col_slivers = n.div_ceil(T::NR);
    let rows_per = m.div_ceil(threads).div_ceil(T::MR) * T::MR;
    if col_slivers < 2 * threads && rows_per < m {
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
        if pa.len() < pa_len {
            pa.resize(pa_len, 0.0);
        }
        if pb.len() < pb_len {
            pb.resize(pb_len, 0.0);
        }
        let mut jc = j0;
        while jc < j1 {
            let nc = T::NC.min(j1 - jc);
            let mut pc = 0;
            while pc < k {
                let kc = T::KC.min(k - pc);
                pack_b::<T>(&mut pb[..], b, pc, kc, jc, nc);
                let acc = accumulate || pc > 0;
                let mut ic = 0;
                while ic < m {
                    let mc = T::MC.min(m - ic);
                    pack_a::<T>(&mut pa[..], a, ic, mc, pc, kc);
                    for jr in (0..nc).step_by(T::NR) {
                        let nr = T::NR.min(nc - jr);
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
        for p in 0..kc {
            let row = &mut out[p * T::NR..(p + 1) * T::NR];
            let src = b.ptr.add((pc + p) * b.rs + (jc + j) * b.cs);
            if b.cs == 1 {
                row[..nr].copy_from_slice(std::slice::from_raw_parts(src, nr));
            } else {
                for (q, v) in row[..nr].iter_mut().enumerate() {
                    *v = *src.add(q * b.cs);
                }
            }
            row[nr..].fill(0.0);
        }
    }
}

/// Packs `a[ic..ic+mc, pc..pc+kc]` as slivers of T::MR rows: `[sliver][p][0..T::MR]`, zero-padded.
unsafe fn pack_a<T: Tile>(dst: &mut [f32], a: Mat, ic: usize, mc: usize, pc: usize, kc: usize) {
    for (s, i) in (0..mc).step_by(T::MR).enumerate() {
        let mr = T::MR.min(mc - i);
        let out = &mut dst[s * T::MR * kc..(s + 1) * T::MR * kc];
        if a.rs == 1 {
            // Columns of A are contiguous (a transposed weight): copy T::MR at a time.
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
#[target_feature(enable = "avx512f")]
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
#[target_feature(enable = "avx512f")]
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

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_12x32(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("sgemm::available() is false off x86_64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel_8x48(_: usize, _: *const f32, _: *const f32, _: *mut f32, _: usize, _: bool) {
    unreachable!("sgemm::available() is false off x86_64")
}
