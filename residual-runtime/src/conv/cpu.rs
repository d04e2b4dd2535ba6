//! CPU conv kernels: im2col + GEMM for dense and grouped convs, Winograd F(2x2, 3x3) for 3x3
//! stride-1 ones with enough channels and tiles (`winograd.rs`), a direct loop for depthwise ones.
//! The f32 GEMM is our own (`sgemm.rs`) or the `gemm` crate's, whichever measured faster for the
//! shape on this CPU (`crate_runs`); f64 always runs on the crate.
//!
//! Forward, per group: `out_g [Og, P] = W_g [Og, Kg] x col [Kg, P]`, where `col` is the im2col
//! matrix (`Kg = C/groups * K * K` rows, `P = OH * OW` columns). Backward: `dW_g += dout_g x
//! col^T` and `dcol = W_g^T x dout_g`, scattered back into `dx` (col2im).
//!
//! Small feature maps (the 7x7 and 14x14 stages of a ResNet) make thin GEMMs (`P = 49`) that run
//! far below peak, so the columns of several images are laid side by side into one GEMM
//! (`[Kg, n_img * P]`); the result is scattered back to NCHW afterwards, a copy that is small
//! next to the GEMM. A 1x1, stride-1, unpadded conv on one image needs no im2col at all: the
//! input plane is already the column matrix.
//!
//! The generic code is instantiated here for f32 and f64 only (the `Conv2dKernel` impls at the
//! bottom), so it is compiled and optimised in this crate. Scratch buffers are kept per thread
//! and grown, never shrunk, so a training loop allocates them once.

use dfdx::tensor::Cpu;

use gemm::Parallelism;
use rayon::prelude::*;

use super::winograd::Store;
use super::{direct, phases, pointwise, sgemm, winograd, Conv2dKernel, Conv2dOp};
use crate::kernel_check::{check_lens, product};
use crate::real::{grown, Real, Scratch};
use crate::Knob;

/// Aim for at least this many GEMM columns by batching images (measured on the ResNet-50 layers
/// with examples/bench_conv.rs: below ~1000 columns the GEMM loses efficiency).
const TARGET_COLS: usize = 1536;
/// Upper bound on the im2col buffer, in elements, when batching images.
const MAX_COL_ELEMS: usize = 1 << 24;

/// Derived sizes of one conv.
#[derive(Clone, Copy)]
struct Dims {
    c: usize,
    o: usize,
    cg: usize,
    og: usize,
    /// Rows of the im2col matrix of one group: `cg * k * k`.
    kg: usize,
    /// Input plane size `H * W`.
    hw: usize,
    /// Output plane size `OH * OW`.
    p: usize,
    /// 1x1, stride 1, no padding: the input plane is its own column matrix.
    pointwise: bool,
    depthwise: bool,
    /// Where input plane (image `b`, channel `c`) lies: plane `b * img_planes + c * ch_planes`
    /// (NCHW: `C` and 1; CNHW: 1 and `B`).
    img_planes: usize,
    ch_planes: usize,
}

impl Dims {
    fn new(op: &Conv2dOp) -> Self {
        let cg = op.in_channels / op.groups;
        Dims {
            c: op.in_channels,
            o: op.out_channels,
            cg,
            og: op.out_channels / op.groups,
            kg: cg * op.kernel * op.kernel,
            hw: op.in_h * op.in_w,
            p: op.out_h * op.out_w,
            pointwise: op.kernel == 1 && op.stride == 1 && op.padding == 0,
            depthwise: cg == 1 && op.groups > 1,
            img_planes: op.in_channels,
            ch_planes: 1,
        }
    }

    /// As [`Dims::new`], for activations laid out CNHW (see [`forward_cnhw`]).
    fn cnhw(op: &Conv2dOp) -> Self {
        Dims { img_planes: 1, ch_planes: op.batch, ..Dims::new(op) }
    }

    /// How many images share one GEMM.
    fn images_per_chunk(&self, op: &Conv2dOp) -> usize {
        if self.p >= TARGET_COLS || op.batch <= 1 {
            return 1;
        }
        let by_cols = TARGET_COLS.div_ceil(self.p);
        let by_mem = (MAX_COL_ELEMS / (self.kg * self.p).max(1)).max(1);
        by_cols.min(by_mem).min(op.batch)
    }
}

/// Output positions `o` in `0..out_len` whose input index `o * stride + offset` lies in
/// `0..in_len`, as a half-open range.
#[inline]
fn valid_range(out_len: usize, in_len: usize, stride: usize, offset: isize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { (-offset + s - 1) / s };
    let end = in_len as isize - offset;
    let hi = if end <= 0 { 0 } else { (end + s - 1) / s };
    let hi = (hi as usize).min(out_len);
    ((lo as usize).min(hi), hi)
}

/// Rows of `C` from which an f32 GEMM on an AVX-512 CPU goes to the `gemm` crate (0.19, `x86-v4`:
/// AVX-512 on stable) instead of [`sgemm`] (default 128; 0: always the crate; `usize::MAX`:
/// never). See [`crate_runs`].
#[doc(hidden)]
pub static CRATE_GEMM_MIN_ROWS: Knob = Knob::new(128);

/// Depth `k` from which a parallel GEMM on the `gemm` crate is split by rows between the threads,
/// each running the crate on one thread (default 1024; `usize::MAX`: never). See [`row_parts`].
#[doc(hidden)]
pub static ROW_SPLIT_MIN_DEPTH: Knob = Knob::new(1024);

/// Whether an f32 GEMM of `m` rows runs on the `gemm` crate. Measured whole-model on an AVX-512
/// Xeon (BENCHMARKS.md, A/B in one session): the crate's AVX-512 kernels are faster on GEMMs with
/// many rows (ResNet-50: -10% inference at batch 8, -11% a training step; 4096^3: 329 against 259
/// GFLOP/s) and slower with few (the 16-64 channels of ResNet-56, where our 8 x 48 tile fills its
/// slivers: all-crate made that training step 10-20% slower). 128 rows was the best threshold of
/// 0, 128, 256 and never. Without AVX-512 our AVX2 tile was measured against the gemm crate (0.15)
/// only, so there it keeps every f32 GEMM.
fn crate_runs(m: usize) -> bool {
    sgemm::best_isa() == Some(sgemm::Isa::Avx512) && m >= CRATE_GEMM_MIN_ROWS.get()
}

/// Rows of `C` below which a part of a row split would not fill the crate's AVX-512 tile
/// (4 vectors of 16 f32).
const ROW_SPLIT_MIN_PART: usize = 64;

/// How many row parts a parallel crate GEMM runs as, 1 for the crate's own threading. The crate
/// splits columns between threads, and every thread packs all of `A` (here the weights, `m x k`)
/// for its columns: with the few columns of batch-1 and deep layers (ResNet-50 layer4 at batch 1:
/// 49 columns against 512 x 4608 weights) that packing rivals the arithmetic. Split by rows, each
/// thread packs half of `A` and all of the (small) `B`. Measured on the GEMMs alone (2 threads,
/// AVX-512 Xeon, GFLOP/s, crate's threading vs row split): 512x49x4608 147 vs 230, 512x49x2048
/// 159 vs 218, 256x196x2304 174 vs 251, 512x392x4608 219 vs 281; with shallow `k` it is a tie or
/// a loss (1024x196x256 260 vs 236, 2048x392x512 292 vs 253).
fn row_parts(m: usize, k: usize, parallel: bool) -> usize {
    let threads = rayon::current_num_threads();
    if !parallel || threads < 2 || k < ROW_SPLIT_MIN_DEPTH.get() {
        return 1;
    }
    threads.min(m / ROW_SPLIT_MIN_PART).max(1)
}

/// `dst[m x n] (row stride dst_rs) = [dst +] lhs[m x k] * rhs[k x n]`, all strides in elements.
///
/// # Safety
/// Every pointer must be valid for the elements its strides and sizes address, and `dst` must
/// not overlap `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<E: Real>(
    (m, n, k): (usize, usize, usize),
    dst: *mut E,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const E,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const E,
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    if std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>() && sgemm::available() && !crate_runs(m) {
        // SAFETY: E is f32 (checked above), so the casts only rename the pointee type; the
        // caller's guarantees carry over.
        return sgemm::sgemm(
            m,
            n,
            k,
            dst as *mut f32,
            dst_rs,
            accumulate,
            sgemm::Mat { ptr: lhs as *const f32, rs: lhs_rs, cs: lhs_cs },
            sgemm::Mat { ptr: rhs as *const f32, rs: rhs_rs, cs: rhs_cs },
            parallel,
        );
    }
    // The crate on rows `r0..r0 + rows` of `dst` and `lhs` (addresses: raw pointers are not
    // Send, and the row parts below run on the threads).
    let (dst, lhs, rhs) = (dst as usize, lhs as usize, rhs as usize);
    let run = move |r0: usize, rows: usize, threads: Parallelism| {
        // SAFETY: callers below pass r0 + rows <= m, so these rows lie inside the caller's
        // matrices (this function's contract); rhs is only read.
        unsafe {
            gemm::gemm(
                rows,
                n,
                k,
                (dst as *mut E).add(r0 * dst_rs),
                1,
                dst_rs as isize,
                accumulate,
                (lhs as *const E).add(r0 * lhs_rs),
                lhs_cs as isize,
                lhs_rs as isize,
                rhs as *const E,
                rhs_cs as isize,
                rhs_rs as isize,
                E::ONE,
                E::ONE,
                false,
                false,
                false,
                threads,
            )
        }
    };
    let parts = row_parts(m, k, parallel);
    if parts > 1 {
        // Row parts of a multiple of 16 rows (whole AVX-512 vectors), the last one taking the
        // rest; no two parts write one row of dst.
        let per = m.div_ceil(parts).next_multiple_of(16);
        (0..parts).into_par_iter().for_each(|p| {
            let r0 = (p * per).min(m);
            if r0 < m {
                run(r0, per.min(m - r0), Parallelism::None);
            }
        });
    } else {
        run(0, m, if parallel { Parallelism::Rayon(rayon::current_num_threads()) } else { Parallelism::None });
    }
}

/// Writes the im2col matrix of images `b0..b0 + n_img`, group `g`, into `col`
/// (`[kg, n_img * p]`, row `(c * K + ky) * K + kx`, column `img * p + oy * OW + ox`).
#[allow(clippy::too_many_arguments)]
fn im2col<E: Real>(op: &Conv2dOp, d: &Dims, x: &[E], b0: usize, n_img: usize, g: usize, col: &mut [E], parallel: bool) {
    let ncols = n_img * d.p;
    let (k, s, w) = (op.kernel, op.stride, op.in_w);
    for_each_chunk(col, ncols, parallel, |r, row| {
        let c = r / (k * k);
        let ky = (r / k) % k;
        let kx = r % k;
        let off_y = (ky * op.dilation) as isize - op.padding as isize;
        let off_x = (kx * op.dilation) as isize - op.padding as isize;
        let (ylo, yhi) = valid_range(op.out_h, op.in_h, s, off_y);
        let (xlo, xhi) = valid_range(op.out_w, op.in_w, s, off_x);
        for img in 0..n_img {
            let plane = &x[((b0 + img) * d.img_planes + (g * d.cg + c) * d.ch_planes) * d.hw..][..d.hw];
            let dst = &mut row[img * d.p..][..d.p];
            dst[..ylo * op.out_w].fill(E::ZERO);
            dst[yhi * op.out_w..].fill(E::ZERO);
            for oy in ylo..yhi {
                let iy = (oy * s) as isize + off_y;
                let src = &plane[iy as usize * w..][..w];
                let drow = &mut dst[oy * op.out_w..][..op.out_w];
                drow[..xlo].fill(E::ZERO);
                drow[xhi..].fill(E::ZERO);
                if xlo < xhi {
                    let ix0 = ((xlo * s) as isize + off_x) as usize;
                    if s == 1 {
                        drow[xlo..xhi].copy_from_slice(&src[ix0..ix0 + (xhi - xlo)]);
                    } else {
                        for (j, v) in drow[xlo..xhi].iter_mut().enumerate() {
                            *v = src[ix0 + j * s];
                        }
                    }
                }
            }
        }
    });
}

/// Adds the column gradient `dcol` (`[kg, n_img * p]`, laid out as in [`im2col`]) into the
/// input gradient planes of images `b0..b0 + n_img`, group `g`. Parallel over planes, which are
/// disjoint, so no two threads add into the same element.
/// `planes` holds exactly those images' input gradients.
#[allow(clippy::too_many_arguments)]
fn col2im_add<E: Real>(
    op: &Conv2dOp,
    d: &Dims,
    dcol: &[E],
    b0: usize,
    n_img: usize,
    g: usize,
    planes: &mut [E],
    parallel: bool,
) {
    let ncols = n_img * d.p;
    let (k, s, w) = (op.kernel, op.stride, op.in_w);
    for_each_chunk(planes, d.hw, parallel, |i, plane| {
        // The plane's image (counted from b0) and channel, by the layout's plane strides.
        let (b, cc) =
            if d.ch_planes == 1 { (i / d.img_planes, i % d.img_planes) } else { (i % d.ch_planes, i / d.ch_planes) };
        let Some(img) = b.checked_sub(b0).filter(|&img| img < n_img) else {
            return;
        };
        if cc / d.cg != g {
            return;
        }
        let c = cc - g * d.cg;
        for ky in 0..k {
            let off_y = (ky * op.dilation) as isize - op.padding as isize;
            let (ylo, yhi) = valid_range(op.out_h, op.in_h, s, off_y);
            for kx in 0..k {
                let off_x = (kx * op.dilation) as isize - op.padding as isize;
                let (xlo, xhi) = valid_range(op.out_w, op.in_w, s, off_x);
                if xlo >= xhi {
                    continue;
                }
                let r = (c * k + ky) * k + kx;
                let src = &dcol[r * ncols + img * d.p..][..d.p];
                for oy in ylo..yhi {
                    let iy = ((oy * s) as isize + off_y) as usize;
                    let ix0 = ((xlo * s) as isize + off_x) as usize;
                    let srow = &src[oy * op.out_w + xlo..oy * op.out_w + xhi];
                    let drow = &mut plane[iy * w..][..w];
                    if s == 1 {
                        for (dv, &sv) in drow[ix0..ix0 + srow.len()].iter_mut().zip(srow) {
                            *dv += sv;
                        }
                    } else {
                        for (j, &sv) in srow.iter().enumerate() {
                            drow[ix0 + j * s] += sv;
                        }
                    }
                }
            }
        }
    });
}

pub(crate) fn forward<E: Real>(op: &Conv2dOp, x: &[E], w: &[E], out: &mut [E]) {
    forward_into(op, x, w, out, false)
}

/// [`forward`] on activations laid out CNHW: `x` is `[C, B, H, W]` and `out` `[O, B, OH, OW]`
/// (the batch inside each channel), the layout compiled plans run batched inference in. The
/// output is then the GEMM's own `[O, B * OH * OW]` matrix: the GEMM writes it in place (no
/// scatter of a batched GEMM's columns into images), and a 1x1 stride-1 conv multiplies the
/// input as it lies (no im2col). Buffer lengths are those of NCHW ([`Conv2dOp::buffer_lens`]),
/// checked by the caller.
pub(crate) fn forward_cnhw<E: Real>(op: &Conv2dOp, x: &[E], w: &[E], out: &mut [E]) {
    forward_cnhw_into(op, x, w, out, false)
}

/// The conv into `out` (NCHW, or CNHW when `cnhw`) stored as `store` says (an epilogue fused
/// into the pass that writes the output), where the conv runs as Winograd, whose inverse
/// transform writes every output once anyway, or as a direct 3x3 conv (`direct.rs`), a shallow
/// 1x1 conv (`pointwise.rs`) or a stride-2 conv of few input channels (`phases.rs`), whose
/// kernels store each output once; elsewhere false, with nothing written (the caller
/// runs the conv and its epilogue apart). Buffer lengths are checked by the caller.
pub(crate) fn forward_fused<E: Real>(
    op: &Conv2dOp,
    cnhw: bool,
    x: &[E],
    w: &[E],
    out: &mut [E],
    store: winograd::Store<E>,
) -> bool {
    if pointwise::applies::<E>(op) {
        pointwise::forward(op, cnhw, x, w, out, store);
        return true;
    }
    if stored_forward(op, cnhw, x, w, out, store) {
        return true;
    }
    let runs = winograd::applies(op);
    if runs {
        winograd::forward_fused(op, cnhw, x, w, out, store);
    }
    runs
}

/// The conv on the kernels that store as `store` says in training and inference alike, the
/// direct 3x3 conv (`direct.rs`) and the stride-2 conv of few input channels (`phases.rs`), where
/// one applies; false, with nothing written, elsewhere.
fn stored_forward<E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>) -> bool {
    if direct::applies::<E>(op) {
        direct::forward(op, cnhw, x, w, out, store);
    } else if phases::applies::<E>(op) {
        phases::forward(op, cnhw, x, w, out, store);
    } else {
        return false;
    }
    true
}

/// [`forward_cnhw`], adding into `out` when `accumulate` (the transposed conv that is a stride-1
/// conv's input gradient). As in NCHW, many chunks of images go to the threads whole
/// ([`whole_chunks_per_thread`]): each writes the output columns of its own images.
fn forward_cnhw_into<E: Real>(op: &Conv2dOp, x: &[E], w: &[E], out: &mut [E], accumulate: bool) {
    let d = Dims::cnhw(op);
    let n = op.batch * d.p;
    if n == 0 || out.len() < d.o * n {
        return;
    }
    if stored_forward(op, true, x, w, out, Store::plain(accumulate)) {
        return;
    }
    if winograd::applies(op) {
        return winograd::forward(op, true, x, w, out, accumulate);
    }
    // Threads write disjoint column ranges of `out`: it travels as an address.
    let out_addr = out.as_mut_ptr() as usize;
    // Group g's output rows, columns col0..col0 + ncols, from rhs (kg x ncols, row stride rhs_rs).
    let gemm = |g: usize, col0: usize, ncols: usize, rhs: &[E], rhs_rs: usize, parallel: bool| {
        let w_g = &w[g * d.og * d.kg..][..d.og * d.kg];
        assert!(col0 + ncols <= n && holds(rhs.len(), d.kg, rhs_rs, ncols));
        // SAFETY: rows g * og.. of og of out (o x n, checked above) and columns col0..col0 +
        // ncols <= n (asserted); w_g is og x kg and rhs kg x ncols (asserted), both read only.
        // Callers that run in parallel pass disjoint column ranges.
        unsafe {
            matmul(
                (d.og, ncols, d.kg),
                (out_addr as *mut E).add(g * d.og * n + col0),
                n,
                accumulate,
                w_g.as_ptr(),
                (d.kg, 1),
                rhs.as_ptr(),
                (rhs_rs, 1),
                parallel,
            )
        }
    };
    if d.pointwise {
        for g in 0..op.groups {
            gemm(g, 0, n, &x[g * d.cg * n..][..d.cg * n], n, true);
        }
        return;
    }
    let nb = d.images_per_chunk(op);
    let chunks = op.batch.div_ceil(nb);
    let run_chunk = |s: &mut Scratch<E>, b0: usize, parallel: bool| {
        let n_img = nb.min(op.batch - b0);
        let ncols = n_img * d.p;
        for g in 0..op.groups {
            let col = grown(&mut s.col, d.kg * ncols);
            im2col(op, &d, x, b0, n_img, g, col, parallel);
            gemm(g, b0 * d.p, ncols, col, ncols, parallel);
        }
    };
    if whole_chunks_per_thread(chunks) {
        (0..chunks).into_par_iter().for_each(|i| E::with_scratch(|s| run_chunk(s, i * nb, false)));
    } else {
        E::with_scratch(|s| (0..chunks).for_each(|i| run_chunk(s, i * nb, true)));
    }
}

/// [`backward`] on CNHW activations (see [`forward_cnhw`]): `gx` (`[C, B, H, W]`) and `gw` get
/// the gradients added, from `gout` (`[O, B, OH, OW]`). Here the output gradient is the GEMMs'
/// `[O, B * P]` matrix as it lies (NCHW gathers each chunk's columns first), and a 1x1 stride-1
/// conv needs no im2col in either direction. The input gradient of a stride-1 conv is the
/// transposed conv's forward pass, as in NCHW; of any other, a col2im of `W^T * gout`.
///
/// With `gx_overwrite`, `gx` holds no gradient yet (its contents are garbage): the input gradient
/// is written, not added (the plans' first gradient of a value; no zero-fill and no read of it
/// where the kernel can write).
pub(crate) fn backward_cnhw<E: Real>(
    op: &Conv2dOp,
    x: &[E],
    w: &[E],
    gx: &mut [E],
    gx_overwrite: bool,
    gw: &mut [E],
    gout: &[E],
) {
    let d = Dims::cnhw(op);
    let n = op.batch * d.p;
    if n == 0 || d.hw == 0 {
        if gx_overwrite {
            gx.fill(E::ZERO);
        }
        return;
    }
    if direct::applies::<E>(op) {
        return direct::backward(op, true, x, w, gx, !gx_overwrite, gw, gout);
    }
    if d.pointwise {
        for g in 0..op.groups {
            let (w_g, gw_g) = (&w[g * d.og * d.kg..][..d.og * d.kg], &mut gw[g * d.og * d.kg..][..d.og * d.kg]);
            let (x_g, gout_g) = (&x[g * d.cg * n..][..d.cg * n], &gout[g * d.og * n..][..d.og * n]);
            let gx_g = &mut gx[g * d.cg * n..][..d.cg * n];
            weight_grad(&d, n, gw_g, gout_g, n, x_g, n, true);
            weight_gemm(&d, true, n, gx_g, n, !gx_overwrite, w_g, gout_g, n, true);
        }
        return;
    }
    let transposed = transposed_input_grad(op);
    if gx_overwrite && transposed.is_none() {
        // col2im adds.
        gx.fill(E::ZERO);
    }
    let nb = d.images_per_chunk(op);
    let chunks = op.batch.div_ceil(nb);
    // The weight gradient of images b0.. added into gw, and, given gx, their col2im input gradient.
    let chunk = |s: &mut Scratch<E>, b0: usize, gw: &mut [E], mut gx: Option<&mut [E]>, parallel: bool| {
        let Scratch { col, dcol, .. } = s;
        let n_img = nb.min(op.batch - b0);
        let ncols = n_img * d.p;
        for g in 0..op.groups {
            let w_g = &w[g * d.og * d.kg..][..d.og * d.kg];
            let gw_g = &mut gw[g * d.og * d.kg..][..d.og * d.kg];
            // This chunk's columns of the group's output gradient: og x ncols, row stride n.
            let gout_g = &gout[g * d.og * n + b0 * d.p..][..(d.og - 1) * n + ncols];
            let c = grown(col, d.kg * ncols);
            im2col(op, &d, x, b0, n_img, g, c, parallel);
            weight_grad(&d, ncols, gw_g, gout_g, n, c, ncols, parallel);
            if let Some(gx) = gx.as_deref_mut() {
                let dc = grown(dcol, d.kg * ncols);
                weight_gemm(&d, true, ncols, dc, ncols, false, w_g, gout_g, n, parallel);
                col2im_add(op, &d, dc, b0, n_img, g, gx, parallel);
            }
        }
    };
    if transposed.is_some() && whole_chunks_per_thread(chunks) {
        let per_thread = chunks.div_ceil(rayon::current_num_threads());
        let runs = (0..chunks.div_ceil(per_thread)).collect();
        per_thread_weight_grads(gw, runs, |_, gw_t, t| {
            E::with_scratch(|s| {
                for i in (t * per_thread..(t + 1) * per_thread).take_while(|&i| i < chunks) {
                    chunk(s, i * nb, gw_t, None, false);
                }
            })
        });
    } else {
        E::with_scratch(|s| {
            for i in 0..chunks {
                let gx = if transposed.is_none() { Some(&mut *gx) } else { None };
                chunk(s, i * nb, gw, gx, true);
            }
        });
    }
    if let Some(op_t) = transposed {
        let mut wt = E::with_scratch(|s| std::mem::take(&mut s.wt));
        flipped_transposed(op, w, grown(&mut wt, w.len()));
        forward_cnhw_into(&op_t, gout, &wt[..w.len()], gx, !gx_overwrite);
        E::with_scratch(|s| s.wt = wt);
    }
}

/// Runs `f(t, gw_t, item)` for each of `items` (one per task: a run of whole chunks) in
/// parallel, each with a weight-gradient part of its own (the first one's is `gw` itself), then
/// sums the parts into `gw`.
pub(super) fn per_thread_weight_grads<E: Real, T: Send>(
    gw: &mut [E],
    items: Vec<T>,
    f: impl Fn(usize, &mut [E], T) + Sync,
) {
    let tasks = items.len().max(1);
    let mut parts = E::with_scratch(|s| std::mem::take(&mut s.gw_parts));
    let gw_len = gw.len().max(1);
    let parts_s = grown(&mut parts, (tasks - 1) * gw_len);
    parts_s.fill(E::ZERO);
    let gws: Vec<&mut [E]> = std::iter::once(&mut *gw).chain(parts_s.chunks_mut(gw_len)).collect();
    gws.into_par_iter().zip(items).enumerate().for_each(|(t, (gw_t, item))| f(t, gw_t, item));
    for part in parts_s.chunks(gw_len) {
        add_into(gw, part);
    }
    E::with_scratch(|s| s.gw_parts = parts);
}

/// `wt[c, o, ky, kx] = w[o, c, K-1-ky, K-1-kx]`: the kernel of the transposed conv that is a
/// stride-1, one-group conv's input gradient.
fn flipped_transposed<E: Real>(op: &Conv2dOp, w: &[E], wt: &mut [E]) {
    let kk = op.kernel * op.kernel;
    for o in 0..op.out_channels {
        for c in 0..op.in_channels {
            let src = &w[(o * op.in_channels + c) * kk..][..kk];
            let dst = &mut wt[(c * op.out_channels + o) * kk..][..kk];
            for (t, v) in dst.iter_mut().enumerate() {
                *v = src[kk - 1 - t];
            }
        }
    }
}

/// Whether a conv's `chunks` of images go to the threads whole, each thread running the im2col,
/// GEMMs and copies of its chunks alone; otherwise the chunks run one after another, every thread
/// in each step. With many chunks (a CIFAR net at batch 128 has 64 per conv), whole chunks make a
/// few large tasks instead of a fork and join per im2col, GEMM and copy of every chunk, where the
/// threads waited for each other (rayon's yields were 14% of the CPU time of a ResNet-56 step).
pub(super) fn whole_chunks_per_thread(chunks: usize) -> bool {
    let threads = rayon::current_num_threads();
    threads > 1 && chunks >= 2 * threads
}

/// Runs `f` on each `len`-sized chunk of `buf` (with its index), on the threads or on this one.
fn for_each_chunk<E: Send>(buf: &mut [E], len: usize, parallel: bool, f: impl Fn(usize, &mut [E]) + Send + Sync) {
    if parallel {
        buf.par_chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        buf.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// [`forward`], adding into `out` when `accumulate` (the input gradient of a stride-1 conv, run
/// as a transposed conv's forward pass, adds into the gradient it is given). Depthwise convs only
/// overwrite: their input gradient has its own loop.
fn forward_into<E: Real>(op: &Conv2dOp, x: &[E], w: &[E], out: &mut [E], accumulate: bool) {
    let d = Dims::new(op);
    if d.depthwise && !accumulate {
        return depthwise_forward(op, &d, x, w, out);
    }
    if stored_forward(op, false, x, w, out, Store::plain(accumulate)) {
        return;
    }
    if winograd::applies(op) {
        return winograd::forward(op, false, x, w, out, accumulate);
    }
    let nb = d.images_per_chunk(op);
    let chunk_len = nb * d.o * d.p;
    if chunk_len == 0 {
        return;
    }
    if whole_chunks_per_thread(op.batch.div_ceil(nb)) {
        out.par_chunks_mut(chunk_len).enumerate().for_each(|(i, out_c)| {
            E::with_scratch(|s| forward_chunk(op, &d, x, w, i * nb, out_c, accumulate, false, s));
        });
    } else {
        E::with_scratch(|s| {
            for (i, out_c) in out.chunks_mut(chunk_len).enumerate() {
                forward_chunk(op, &d, x, w, i * nb, out_c, accumulate, true, s);
            }
        });
    }
}

/// The forward pass of images `b0..` into `out_c`, their outputs (so `out_c.len() / (O * P)`
/// images), on all threads or on this one (`parallel`).
#[allow(clippy::too_many_arguments)]
fn forward_chunk<E: Real>(
    op: &Conv2dOp,
    d: &Dims,
    x: &[E],
    w: &[E],
    b0: usize,
    out_c: &mut [E],
    accumulate: bool,
    parallel: bool,
    scratch: &mut Scratch<E>,
) {
    let n_img = out_c.len() / (d.o * d.p);
    let ncols = n_img * d.p;
    for g in 0..op.groups {
        let w_g = &w[g * d.og * d.kg..][..d.og * d.kg];
        let (rhs, rhs_rs): (&[E], usize) = if d.pointwise && n_img == 1 {
            (&x[(b0 * d.c + g * d.cg) * d.hw..][..d.cg * d.hw], d.hw)
        } else {
            let col = grown(&mut scratch.col, d.kg * ncols);
            im2col(op, d, x, b0, n_img, g, col, parallel);
            (col, ncols)
        };
        if n_img == 1 {
            let dst = &mut out_c[g * d.og * d.p..][..d.og * d.p];
            weight_gemm(d, false, d.p, dst, d.p, accumulate, w_g, rhs, rhs_rs, parallel);
        } else {
            let tmp = grown(&mut scratch.tmp, d.og * ncols);
            weight_gemm(d, false, ncols, tmp, ncols, false, w_g, rhs, rhs_rs, parallel);
            let tmp = &*tmp;
            for img in 0..n_img {
                let dst = &mut out_c[(img * d.o + g * d.og) * d.p..][..d.og * d.p];
                for_each_chunk(dst, d.p, parallel, |oc, drow| {
                    let src = &tmp[oc * ncols + img * d.p..][..d.p];
                    if accumulate {
                        drow.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
                    } else {
                        drow.copy_from_slice(src);
                    }
                });
            }
        }
    }
}

/// `gx` and `gw` get the gradients added, from `gout`; with `gx_overwrite`, `gx` holds no
/// gradient yet and the input gradient is written instead (see [`backward_cnhw`]).
pub(crate) fn backward<E: Real>(
    op: &Conv2dOp,
    x: &[E],
    w: &[E],
    gx: &mut [E],
    gx_overwrite: bool,
    gw: &mut [E],
    gout: &[E],
) {
    let d = Dims::new(op);
    if direct::applies::<E>(op) {
        return direct::backward(op, false, x, w, gx, !gx_overwrite, gw, gout);
    }
    let transposed = transposed_input_grad(op);
    if gx_overwrite && transposed.is_none() {
        // Only the transposed conv's forward pass can write; the others (col2im, depthwise) add.
        gx.fill(E::ZERO);
    }
    if d.depthwise {
        depthwise_backward_input(op, &d, w, gx, gout);
        depthwise_backward_weight(op, &d, x, gw, gout);
        return;
    }
    let nb = d.images_per_chunk(op);
    let chunks = op.batch.div_ceil(nb);
    // A stride-1 conv's input gradient is itself a conv (of the output gradient with the flipped,
    // transposed kernel): one long-K GEMM instead of a K = out_channels GEMM plus a col2im scatter,
    // which wins most where channels are few (CIFAR nets' 16-channel stages).
    let image_len = d.c * d.hw;
    if chunks > 0 && image_len > 0 && whole_chunks_per_thread(chunks) {
        // Each thread takes a run of whole chunks (and their disjoint input gradients: a thread's
        // images are a contiguous run of gx); its weight gradients go to a part of its own.
        let has_tr = transposed.is_some();
        let per_thread = chunks.div_ceil(rayon::current_num_threads());
        let gx_parts: Vec<&mut [E]> = gx.chunks_mut(per_thread * nb * image_len).collect();
        per_thread_weight_grads(gw, gx_parts, |t, gw_t, gx_t| {
            E::with_scratch(|s| {
                for (i, gx_c) in gx_t.chunks_mut(nb * image_len).enumerate() {
                    let b0 = (t * per_thread + i) * nb;
                    backward_chunk(op, &d, x, w, b0, gx_c, gw_t, gout, has_tr, false, s);
                }
            });
        });
    } else if image_len > 0 {
        E::with_scratch(|s| {
            for (i, gx_c) in gx.chunks_mut(nb * image_len).enumerate() {
                backward_chunk(op, &d, x, w, i * nb, gx_c, gw, gout, transposed.is_some(), true, s);
            }
        });
    }
    if let Some(op_t) = transposed {
        // dx += conv(dout, wt) with padding K-1-p. wt is borrowed out of this thread's scratch,
        // since `forward_into` takes the scratch itself.
        let mut wt = E::with_scratch(|s| std::mem::take(&mut s.wt));
        let wt_s = &mut grown(&mut wt, w.len())[..w.len()];
        flipped_transposed(op, w, wt_s);
        // Straight into gx: no separate buffer and pass to add it.
        forward_into(&op_t, gout, wt_s, gx, !gx_overwrite);
        E::with_scratch(|s| s.wt = wt);
    }
}

/// `dst += src`, elementwise.
fn add_into<E: Real>(dst: &mut [E], src: &[E]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

/// The weight gradient of images `b0..` added into `gw`, and (unless `skip_input_grad`, when the
/// transposed conv computes it afterwards) their input gradient added into `gx_c`, which holds
/// exactly those images; on all threads or on this one (`parallel`).
#[allow(clippy::too_many_arguments)]
fn backward_chunk<E: Real>(
    op: &Conv2dOp,
    d: &Dims,
    x: &[E],
    w: &[E],
    b0: usize,
    gx_c: &mut [E],
    gw: &mut [E],
    gout: &[E],
    skip_input_grad: bool,
    parallel: bool,
    scratch: &mut Scratch<E>,
) {
    let Scratch { col, tmp, dcol, .. } = scratch;
    let n_img = gx_c.len() / (d.c * d.hw);
    let ncols = n_img * d.p;
    for g in 0..op.groups {
        let w_g = &w[g * d.og * d.kg..][..d.og * d.kg];
        // The output gradient of this group as an og x ncols matrix.
        let (dout, dout_rs): (&[E], usize) = if n_img == 1 {
            (&gout[(b0 * d.o + g * d.og) * d.p..][..d.og * d.p], d.p)
        } else {
            let t = grown(tmp, d.og * ncols);
            for_each_chunk(t, ncols, parallel, |oc, trow| {
                for img in 0..n_img {
                    trow[img * d.p..][..d.p].copy_from_slice(&gout[((b0 + img) * d.o + g * d.og + oc) * d.p..][..d.p]);
                }
            });
            (t, ncols)
        };
        let direct = d.pointwise && n_img == 1;
        let (cols, cols_rs): (&[E], usize) = if direct {
            (&x[(b0 * d.c + g * d.cg) * d.hw..][..d.cg * d.hw], d.hw)
        } else {
            let c = grown(col, d.kg * ncols);
            im2col(op, d, x, b0, n_img, g, c, parallel);
            (c, ncols)
        };
        let gw_g = &mut gw[g * d.og * d.kg..][..d.og * d.kg];
        weight_grad(d, ncols, gw_g, dout, dout_rs, cols, cols_rs, parallel);
        if skip_input_grad {
            // The caller runs the transposed conv.
        } else if direct {
            // dx_g [cg x hw] += W_g^T [cg x og] * dout [og x hw]
            let gx_g = &mut gx_c[g * d.cg * d.hw..][..d.cg * d.hw];
            weight_gemm(d, true, ncols, gx_g, d.hw, true, w_g, dout, dout_rs, parallel);
        } else {
            let dc = grown(dcol, d.kg * ncols);
            weight_gemm(d, true, ncols, dc, ncols, false, w_g, dout, dout_rs, parallel);
            col2im_add(op, d, dc, 0, n_img, g, gx_c, parallel);
        }
    }
}

/// Whether `len` elements hold a matrix of `rows` x `cols` with row stride `rs`.
fn holds(len: usize, rows: usize, rs: usize, cols: usize) -> bool {
    rows == 0 || len >= (rows - 1) * rs + cols
}

/// `dst (+)= w_g * rhs`, or with `transposed`, `dst (+)= w_g^T * rhs`, `w_g` being a group's
/// `og x kg` weights: a conv's output (`og x ncols` from the `kg x ncols` columns), or the column
/// gradient (`kg x ncols` from the `og x ncols` output gradient; for a 1x1 stride-1 conv, the
/// input gradient itself). The row strides as given. The CNHW forward shares its output rows
/// between threads, so it calls `matmul` itself.
#[allow(clippy::too_many_arguments)]
fn weight_gemm<E: Real>(
    d: &Dims,
    transposed: bool,
    ncols: usize,
    dst: &mut [E],
    dst_rs: usize,
    accumulate: bool,
    w_g: &[E],
    rhs: &[E],
    rhs_rs: usize,
    parallel: bool,
) {
    let (rows, inner, w_s) = if transposed { (d.kg, d.og, (1, d.kg)) } else { (d.og, d.kg, (d.kg, 1)) };
    assert!(
        holds(dst.len(), rows, dst_rs, ncols) && w_g.len() >= d.og * d.kg && holds(rhs.len(), inner, rhs_rs, ncols)
    );
    // SAFETY: each slice holds its matrix (asserted); dst, a &mut, is distinct from both.
    unsafe {
        matmul(
            (rows, ncols, inner),
            dst.as_mut_ptr(),
            dst_rs,
            accumulate,
            w_g.as_ptr(),
            w_s,
            rhs.as_ptr(),
            (rhs_rs, 1),
            parallel,
        )
    }
}

/// `gw_g [og x kg] += dout [og x ncols] * cols^T`, `cols` being `kg x ncols`; the row strides as
/// given (either layout's chunks).
#[allow(clippy::too_many_arguments)]
fn weight_grad<E: Real>(
    d: &Dims,
    ncols: usize,
    gw_g: &mut [E],
    dout: &[E],
    dout_rs: usize,
    cols: &[E],
    cols_rs: usize,
    parallel: bool,
) {
    assert!(
        gw_g.len() >= d.og * d.kg && holds(dout.len(), d.og, dout_rs, ncols) && holds(cols.len(), d.kg, cols_rs, ncols)
    );
    // SAFETY: each slice holds its matrix (asserted); gw_g, a &mut, is distinct from both.
    unsafe {
        matmul(
            (d.og, d.kg, ncols),
            gw_g.as_mut_ptr(),
            d.kg,
            true,
            dout.as_ptr(),
            (dout_rs, 1),
            cols.as_ptr(),
            (1, cols_rs),
            parallel,
        )
    }
}

/// The conv whose forward pass is `op`'s input gradient, when `op` has stride 1, no dilation,
/// one group, a kernel over 1x1 and padding below the kernel: output gradient in, input size out.
fn transposed_input_grad(op: &Conv2dOp) -> Option<Conv2dOp> {
    if op.groups != 1 || op.stride != 1 || op.dilation != 1 || op.kernel < 2 || op.padding >= op.kernel {
        return None;
    }
    let padding = op.kernel - 1 - op.padding;
    let t = Conv2dOp {
        batch: op.batch,
        in_channels: op.out_channels,
        out_channels: op.in_channels,
        groups: 1,
        kernel: op.kernel,
        stride: 1,
        padding,
        dilation: 1,
        in_h: op.out_h,
        in_w: op.out_w,
        out_h: op.in_h,
        out_w: op.in_w,
    };
    let fits = super::conv_out_size(t.in_h, t.kernel, 1, padding, 1) == Some(t.out_h)
        && super::conv_out_size(t.in_w, t.kernel, 1, padding, 1) == Some(t.out_w);
    fits.then_some(t)
}

/// Depthwise (one input channel per group): `out[b, o] = sum_k w[o, k] * x[b, o / og]`,
/// one output plane per task.
fn depthwise_forward<E: Real>(op: &Conv2dOp, d: &Dims, x: &[E], w: &[E], out: &mut [E]) {
    let (k, s, kk) = (op.kernel, op.stride, op.kernel * op.kernel);
    out.par_chunks_mut(d.p).enumerate().for_each(|(i, oplane)| {
        let (b, o) = (i / d.o, i % d.o);
        let xplane = &x[(b * d.c + o / d.og) * d.hw..][..d.hw];
        oplane.fill(E::ZERO);
        for ky in 0..k {
            let off_y = (ky * op.dilation) as isize - op.padding as isize;
            let (ylo, yhi) = valid_range(op.out_h, op.in_h, s, off_y);
            for kx in 0..k {
                let off_x = (kx * op.dilation) as isize - op.padding as isize;
                let (xlo, xhi) = valid_range(op.out_w, op.in_w, s, off_x);
                if xlo >= xhi {
                    continue;
                }
                let wv = w[o * kk + ky * k + kx];
                for oy in ylo..yhi {
                    let iy = ((oy * s) as isize + off_y) as usize;
                    let ix0 = ((xlo * s) as isize + off_x) as usize;
                    let xrow = &xprow(xplane, iy, op.in_w)[ix0..];
                    let orow = &mut oplane[oy * op.out_w + xlo..oy * op.out_w + xhi];
                    for (j, ov) in orow.iter_mut().enumerate() {
                        *ov += wv * xrow[j * s];
                    }
                }
            }
        }
    });
}

#[inline]
fn xprow<E>(plane: &[E], y: usize, w: usize) -> &[E] {
    &plane[y * w..][..w]
}

/// Depthwise input gradient: one input plane per task, summing over its `og` output channels.
fn depthwise_backward_input<E: Real>(op: &Conv2dOp, d: &Dims, w: &[E], gx: &mut [E], gout: &[E]) {
    let (k, s, kk) = (op.kernel, op.stride, op.kernel * op.kernel);
    gx.par_chunks_mut(d.hw).enumerate().for_each(|(i, xplane)| {
        let (b, c) = (i / d.c, i % d.c);
        for o in c * d.og..(c + 1) * d.og {
            let gplane = &gout[(b * d.o + o) * d.p..][..d.p];
            for ky in 0..k {
                let off_y = (ky * op.dilation) as isize - op.padding as isize;
                let (ylo, yhi) = valid_range(op.out_h, op.in_h, s, off_y);
                for kx in 0..k {
                    let off_x = (kx * op.dilation) as isize - op.padding as isize;
                    let (xlo, xhi) = valid_range(op.out_w, op.in_w, s, off_x);
                    if xlo >= xhi {
                        continue;
                    }
                    let wv = w[o * kk + ky * k + kx];
                    for oy in ylo..yhi {
                        let iy = ((oy * s) as isize + off_y) as usize;
                        let ix0 = ((xlo * s) as isize + off_x) as usize;
                        let grow = &gplane[oy * op.out_w + xlo..oy * op.out_w + xhi];
                        let xrow = &mut xplane[iy * op.in_w..][..op.in_w];
                        for (j, &gv) in grow.iter().enumerate() {
                            xrow[ix0 + j * s] += wv * gv;
                        }
                    }
                }
            }
        }
    });
}

/// Depthwise weight gradient: one output channel's `K x K` taps per task, summed over the batch.
fn depthwise_backward_weight<E: Real>(op: &Conv2dOp, d: &Dims, x: &[E], gw: &mut [E], gout: &[E]) {
    let (k, s, kk) = (op.kernel, op.stride, op.kernel * op.kernel);
    gw.par_chunks_mut(kk).enumerate().for_each(|(o, taps)| {
        for b in 0..op.batch {
            let xplane = &x[(b * d.c + o / d.og) * d.hw..][..d.hw];
            let gplane = &gout[(b * d.o + o) * d.p..][..d.p];
            for ky in 0..k {
                let off_y = (ky * op.dilation) as isize - op.padding as isize;
                let (ylo, yhi) = valid_range(op.out_h, op.in_h, s, off_y);
                for kx in 0..k {
                    let off_x = (kx * op.dilation) as isize - op.padding as isize;
                    let (xlo, xhi) = valid_range(op.out_w, op.in_w, s, off_x);
                    if xlo >= xhi {
                        continue;
                    }
                    let mut acc = E::ZERO;
                    for oy in ylo..yhi {
                        let iy = ((oy * s) as isize + off_y) as usize;
                        let ix0 = ((xlo * s) as isize + off_x) as usize;
                        let grow = &gplane[oy * op.out_w..][xlo..xhi];
                        let xrow = &xprow(xplane, iy, op.in_w)[ix0..];
                        for (j, &gv) in grow.iter().enumerate() {
                            acc += gv * xrow[j * s];
                        }
                    }
                    taps[ky * k + kx] += acc;
                }
            }
        }
    });
}

macro_rules! impl_conv_kernel {
    ($t:ty) => {
        impl Conv2dKernel<$t> for Cpu {
            fn conv2d_forward(
                &self,
                op: &Conv2dOp,
                input: &Self::Vec,
                weight: &Self::Vec,
                output: &mut Self::Vec,
            ) -> Result<(), Self::Err> {
                // The GEMMs write through raw pointers sized from `op`.
                check_lens(op.buffer_lens(), [input.len(), weight.len(), output.len()])?;
                forward::<$t>(op, input, weight, output);
                Ok(())
            }

            fn conv2d_backward(
                &self,
                op: &Conv2dOp,
                input: &Self::Vec,
                weight: &Self::Vec,
                grad_input: &mut Self::Vec,
                grad_weight: &mut Self::Vec,
                grad_output: &Self::Vec,
            ) -> Result<(), Self::Err> {
                let lens = op.buffer_lens();
                check_lens(lens, [input.len(), weight.len(), grad_output.len()])?;
                check_lens(lens, [grad_input.len(), grad_weight.len(), grad_output.len()])?;
                backward::<$t>(op, input, weight, grad_input, false, grad_weight, grad_output);
                Ok(())
            }
        }
    };
}
impl_conv_kernel!(f32);
impl_conv_kernel!(f64);

/// Row-major `c[m x n] = a[m x k] * b[k x n]` through [`matmul`], the f32 GEMM the conv kernels
/// use. Returns `false` (and does nothing) when a length does not match.
pub(crate) fn sgemm_row_major(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    // Checked products: sizes whose product wraps would otherwise pass with short buffers.
    let lens = (|| Some([product(&[m, k])?, product(&[k, n])?, product(&[m, n])?]))();
    if check_lens(lens, [a.len(), b.len(), c.len()]).is_err() {
        return false;
    }
    // SAFETY: lengths checked above; c is a distinct &mut slice.
    unsafe { matmul((m, n, k), c.as_mut_ptr(), n, false, a.as_ptr(), (k, 1), b.as_ptr(), (n, 1), true) };
    true
}
