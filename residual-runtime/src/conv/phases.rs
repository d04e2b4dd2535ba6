//! Stride-2 convs with few input channels (the 7x7 stem of ImageNet ResNets, 3 channels in) in
//! f32 on AVX-512, on the input's four phase planes, their epilogue in the store.
//!
//! Why: as a GEMM, the stem's im2col matrix is `C * K * K = 147` rows by every output pixel
//! (59 MB at batch 8), written, then packed and read; with 64 output channels the GEMM's other
//! side is thin too: 21 ms of a 290 ms ResNet-50 b8 inference, at 90 GFLOP/s. Here the padded
//! input is split once into its four phases (even or odd rows by even or odd columns, 4.2 MB at
//! batch 8), where tap `(ky, kx)` of output pixel `(oy, ox)` is pixel `(oy + ky / 2, ox + kx / 2)`
//! of phase `(ky % 2, kx % 2)`: 16 consecutive outputs of a row read 16 consecutive values of a
//! phase row, a plain load. A block is 8 output channels by up to 3 vectors of one output row
//! (the forward kernel of `direct.rs`, with the phase planes' taps).

use std::any::TypeId;

use rayon::prelude::*;

use super::direct::{as_f32, as_f32_mut};
use super::pointwise::{store, with_blocked_weights, Epilogue, OB};
use super::winograd::Store;
use super::Conv2dOp;
use crate::real::{grown, Real};
use crate::Knob;

/// Stride-2 convs with at most this many input channels run here (default 4; 0: never). With
/// more, the im2col GEMM's depth (`C * K * K`) is long enough for the GEMMs.
#[doc(hidden)]
pub static PHASES_MAX_CHANNELS: Knob = Knob::new(4);

const LANES: usize = 16;
/// Vectors of a row per block, at most.
const PB: usize = 3;

/// Whether `op` runs here: f32, stride 2, no dilation, one group, a kernel of at least 2 (a 1x1
/// conv reads one phase: a gather, not this), at most [`PHASES_MAX_CHANNELS`] input channels,
/// AVX-512.
pub(super) fn applies<E: 'static>(op: &Conv2dOp) -> bool {
    TypeId::of::<E>() == TypeId::of::<f32>()
        && op.stride == 2
        && op.dilation == 1
        && op.groups == 1
        && op.kernel >= 2
        && op.in_channels <= PHASES_MAX_CHANNELS.get()
        && crate::wide::wide_vectors()
}

/// The phase planes' geometry: per (image, channel) four planes of `rows x cols` (`cols` a row's
/// stride), covering every value a block reads: rows up to `OH - 1 + (K - 1) / 2`, columns up to
/// the output rows' last vector's last lane plus `(K - 1) / 2`.
#[derive(Clone, Copy)]
struct Phases {
    rows: usize,
    cols: usize,
}

impl Phases {
    fn new(op: &Conv2dOp) -> Self {
        let half = (op.kernel - 1) / 2;
        Phases { rows: op.out_h + half, cols: op.out_w.next_multiple_of(LANES) + half }
    }

    fn plane(&self) -> usize {
        self.rows * self.cols
    }
}

/// The conv into `out` (NCHW, or CNHW when `cnhw`), stored as `store` says. Buffer lengths are
/// checked by the caller; they are checked again here against what the kernel addresses.
pub(super) fn forward<E: 'static>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>) {
    let (c, o, k) = (op.in_channels, op.out_channels, op.kernel);
    let (x, w, y) = (as_f32(x), as_f32(w), as_f32_mut(out));
    let ep = Epilogue::new(store);
    let (in_plane, out_plane) = (op.in_h * op.in_w, op.out_h * op.out_w);
    let len_y = op.batch * o * out_plane;
    assert!(
        x.len() >= op.batch * c * in_plane && w.len() >= o * c * k * k && y.len() >= len_y && ep.fits(o, len_y),
        "phase conv buffers too short for {op:?}"
    );
    if len_y == 0 || c == 0 {
        return;
    }
    // Plane (image b, channel ch) of the input and output: b * img + ch * chs planes in.
    let (x_img, x_ch, y_img, y_ch) = if cnhw { (1, op.batch, 1, op.batch) } else { (c, 1, o, 1) };
    let ph = Phases::new(op);
    let mut buf = f32::with_scratch(|s| std::mem::take(&mut s.tmp));
    let phases = grown(&mut buf, op.batch * c * 4 * ph.plane());
    // phases[(b * c + ch) * 4 + py * 2 + px][r][q] = padded input (2r + py, 2q + px), zero in
    // the padding and past the input.
    phases.par_chunks_mut(4 * ph.plane()).enumerate().for_each(|(bc, four)| {
        let (b, ch) = (bc / c, bc % c);
        let src = &x[(b * x_img + ch * x_ch) * in_plane..][..in_plane];
        for (phase, plane) in four.chunks_exact_mut(ph.plane()).enumerate() {
            let (py, px) = (phase / 2, phase % 2);
            for (r, row) in plane.chunks_exact_mut(ph.cols).enumerate() {
                let iy = (2 * r + py).checked_sub(op.padding).filter(|&iy| iy < op.in_h);
                for (q, v) in row.iter_mut().enumerate() {
                    let ix = (2 * q + px).checked_sub(op.padding).filter(|&ix| ix < op.in_w);
                    *v = match (iy, ix) {
                        (Some(iy), Some(ix)) => src[iy * op.in_w + ix],
                        _ => 0.0,
                    };
                }
            }
        }
    });
    let phases = &*phases;
    let blocks = o.div_ceil(OB);
    let taps = c * k * k;
    // Tasks: (image, block of output channels, run of output rows).
    let row_vecs = op.out_w.div_ceil(LANES);
    let rows_per_task = (2048 / (row_vecs * LANES)).clamp(1, op.out_h);
    let runs = op.out_h.div_ceil(rows_per_task);
    let y_addr = y.as_mut_ptr() as usize;
    // wp[ob][ch][ky][kx][OB] = w[ob * OB + i][ch][ky][kx], zero past o.
    with_blocked_weights(w, o, taps, |wp| {
        (0..op.batch * blocks * runs).into_par_iter().for_each(|task| {
            let (b, ob, run) = (task / (blocks * runs), task / runs % blocks, task % runs);
            let o0 = ob * OB;
            let base = &phases[b * c * 4 * ph.plane()..][..c * 4 * ph.plane()];
            let wb = &wp[ob * taps * OB..][..taps * OB];
            for oy in (run * rows_per_task..(run + 1) * rows_per_task).take_while(|&r| r < op.out_h) {
                let mut v0 = 0;
                while v0 < row_vecs {
                    // Blocks of 3 vectors, the rest in 2s (or one 1).
                    let n = match row_vecs - v0 {
                        1 => 1,
                        2 | 4 => 2,
                        _ => PB,
                    };
                    let ox0 = v0 * LANES;
                    let at = (b * y_img + o0 * y_ch) * out_plane + oy * op.out_w + ox0;
                    let cols = (op.out_w - ox0).min(n * LANES);
                    let out = ep.out(y_addr as *mut f32, at, y_ch * out_plane, o0, OB.min(o - o0), cols);
                    let blk = Block { phases: base, ph, c, k, oy, ox0, wp: wb, out };
                    // SAFETY: AVX-512 (`applies`). The kernel reads phase rows oy + ky / 2 <
                    // ph.rows and columns ox0 + 16 * n - 1 + kx / 2 < ph.cols of image b's planes
                    // (asserted in the kernel); it stores rows o0..o0 + rows <= o of output row oy,
                    // columns ox0..ox0 + cols <= out_w, inside y and the residual (checked above).
                    // Tasks write disjoint (image, channels, rows) ranges of y.
                    unsafe {
                        match n {
                            3 => block::<3>(&blk),
                            2 => block::<2>(&blk),
                            _ => block::<1>(&blk),
                        }
                    }
                    v0 += n;
                }
            }
        });
    });
    f32::with_scratch(|s| s.tmp = buf);
}

/// One block's operands: output row `oy`, columns from `ox0`, `OB` output channels.
struct Block<'a> {
    /// Image b's phase planes, `[c][4][rows][cols]`.
    phases: &'a [f32],
    ph: Phases,
    c: usize,
    k: usize,
    oy: usize,
    ox0: usize,
    /// The block's packed weights, `[c][K][K][OB]`.
    wp: &'a [f32],
    out: super::pointwise::Out,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn block<const P: usize>(b: &Block) {
    use std::arch::x86_64::*;
    let (ph, k) = (b.ph, b.k);
    let half = (k - 1) / 2;
    assert!(
        b.oy + half < ph.rows
            && b.ox0 + P * LANES + half <= ph.cols
            && b.phases.len() >= b.c * 4 * ph.plane()
            && b.wp.len() >= b.c * k * k * OB
    );
    let mut acc = [[_mm512_setzero_ps(); P]; OB];
    let mut wc = b.wp.as_ptr();
    for ch in 0..b.c {
        for ky in 0..k {
            for kx in 0..k {
                let plane = (ch * 4 + (ky % 2) * 2 + kx % 2) * ph.plane();
                let src = b.phases.as_ptr().add(plane + (b.oy + ky / 2) * ph.cols + b.ox0 + kx / 2);
                let mut xv = [_mm512_setzero_ps(); P];
                // A loop, not `from_fn`: a closure is compiled without AVX-512 unless it inlines.
                #[allow(clippy::needless_range_loop)]
                for p in 0..P {
                    xv[p] = _mm512_loadu_ps(src.add(p * LANES));
                }
                for (o, acc_o) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*wc.add(o));
                    for p in 0..P {
                        acc_o[p] = _mm512_fmadd_ps(wv, xv[p], acc_o[p]);
                    }
                }
                wc = wc.add(OB);
            }
        }
    }
    store(&acc, &b.out);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block<const P: usize>(_: &Block) {
    unreachable!("applies() is false off x86_64")
}
