//! 1x1 stride-1 convs in f32 on AVX-512 with at most [`POINTWISE_MAX_CHANNELS`] channels each
//! side, their epilogue (folded batch norm or bias, residual add, relu) in the store.
//!
//! Why: such a conv is the GEMM `Y[O, n] = W[O, C] * X[C, n]` over the `n` pixels, and with few
//! input channels it moves more data than it multiplies. ResNet-50's 56x56 1x1 convs (64 or 256
//! channels in) ran at 70-170 GFLOP/s through the GEMMs at batch 8, then the epilogue read and
//! wrote their output once more (25 MB for 256 x 56 x 56 x 8, with the residual read as well).
//! Here the pixels are the vector (16 per vector) and a block is 8 output channels by 3 vectors,
//! the forward kernel of `direct.rs` with one tap: a task packs 384 columns of every input channel
//! (in L2), which the blocks of output channels sweep, and each output value is written once,
//! with its epilogue.

use std::any::TypeId;

use rayon::prelude::*;

use super::direct::{as_f32, as_f32_mut, with_packed};
use super::winograd::Store;
use super::Conv2dOp;
use crate::real::{grown, Real};
use crate::Knob;

/// 1x1 convs with at most this many channels each side run here (default 256; 0: never).
/// Measured per conv in ResNet-50 inference at batch 8 (BENCHMARKS.md): faster than the GEMM and
/// its epilogue pass on the 56x56 layers (64 -> 256 with the residual 5.5 -> 5.0 ms, 256 -> 64
/// 5.2 -> 4.5, 64 -> 64 2.8 -> 2.2), slower with more outputs on smaller planes (256 -> 1024 at
/// 14x14 3.2 -> 3.7, 128 -> 512 at 28x28 3.6 -> 3.8), where the GEMM runs near its peak.
#[doc(hidden)]
pub static POINTWISE_MAX_CHANNELS: Knob = Knob::new(256);

const LANES: usize = 16;
/// Output channels per block.
pub(super) const OB: usize = 8;
/// Vectors of pixels per block.
const PB: usize = 3;
/// Columns per block.
const COLS: usize = PB * LANES;
/// Columns per task: 8 blocks' (packed X: 96 KB at 64 input channels, 384 KB at 256, in L2).
const CHUNK_COLS: usize = 8 * COLS;

/// Whether `op` runs here: f32, a 1x1 kernel, stride 1, no padding, one group, at most
/// [`POINTWISE_MAX_CHANNELS`] channels each side, AVX-512.
pub(super) fn applies<E: 'static>(op: &Conv2dOp) -> bool {
    TypeId::of::<E>() == TypeId::of::<f32>()
        && op.kernel == 1
        && op.stride == 1
        && op.padding == 0
        && op.groups == 1
        && op.out_h == op.in_h
        && op.out_w == op.in_w
        && op.in_channels.max(op.out_channels) <= POINTWISE_MAX_CHANNELS.get()
        && crate::wide::wide_vectors()
}

/// A [`Store`] on f32: per output channel `scale` and `shift` (absent: 1 and 0), the residual
/// (laid out as the output), relu; or an add into the output (`accumulate`).
pub(super) struct Epilogue<'a> {
    scale: Option<&'a [f32]>,
    shift: Option<&'a [f32]>,
    res: Option<&'a [f32]>,
    relu: bool,
    accumulate: bool,
}

impl<'a> Epilogue<'a> {
    pub(super) fn new<E: 'static>(store: Store<'a, E>) -> Self {
        match store {
            Store::Write => Epilogue { scale: None, shift: None, res: None, relu: false, accumulate: false },
            Store::Add => Epilogue { scale: None, shift: None, res: None, relu: false, accumulate: true },
            Store::Epilogue { scale, shift, res, relu } => Epilogue {
                scale: scale.map(as_f32),
                shift: shift.map(as_f32),
                res: res.map(as_f32),
                relu,
                accumulate: false,
            },
        }
    }

    /// Whether its operands cover `o` output channels and an output of `len` values.
    pub(super) fn fits(&self, o: usize, len: usize) -> bool {
        self.scale.is_none_or(|k| k.len() >= o)
            && self.shift.is_none_or(|s| s.len() >= o)
            && self.res.is_none_or(|r| r.len() >= len)
    }

    pub(super) fn accumulate(&self) -> bool {
        self.accumulate
    }

    pub(super) fn relu(&self) -> bool {
        self.relu
    }

    pub(super) fn res(&self) -> Option<&'a [f32]> {
        self.res
    }

    /// The scale and shift of output channels `ob..ob + OB` (0 past the last).
    pub(super) fn scale_shift(&self, ob: usize) -> ([f32; OB], [f32; OB]) {
        (
            std::array::from_fn(|i| self.scale.map_or(1.0, |k| k.get(ob + i).copied().unwrap_or(0.0))),
            std::array::from_fn(|i| self.shift.map_or(0.0, |s| s.get(ob + i).copied().unwrap_or(0.0))),
        )
    }

    /// Where a block of output channels `ob..ob + OB` (`rows` of them exist) stores, its first
    /// value at index `at` of the output (and of the residual), rows `y_rs` apart, `cols` values
    /// per row.
    ///
    /// The caller passes `at + (rows - 1) * y_rs + cols <= len` (the length `fits` checked).
    pub(super) fn out(&self, y: *mut f32, at: usize, y_rs: usize, ob: usize, rows: usize, cols: usize) -> Out {
        let (scale, shift) = self.scale_shift(ob);
        Out {
            y: y.wrapping_add(at),
            y_rs,
            res: self.res.map(|r| r[at..].as_ptr()),
            rows,
            cols,
            scale,
            shift,
            relu: self.relu,
            accumulate: self.accumulate,
        }
    }
}

/// Where and how a block of `OB` output channels by up to `P` vectors stores ([`store`]).
pub(super) struct Out {
    /// The block's first value; rows (output channels) `y_rs` apart, the residual alike.
    y: *mut f32,
    y_rs: usize,
    res: Option<*const f32>,
    /// Output channels of the block that exist, values per row (at most `P * 16`).
    rows: usize,
    cols: usize,
    scale: [f32; OB],
    shift: [f32; OB],
    relu: bool,
    accumulate: bool,
}

/// The conv into `out` (NCHW, or CNHW when `cnhw`), stored as `store` says. Buffer lengths are
/// checked by the caller; they are checked again here against what the kernel addresses.
pub(super) fn forward<E: 'static>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>) {
    let (c, o, hw) = (op.in_channels, op.out_channels, op.in_h * op.in_w);
    let (x, w, y) = (as_f32(x), as_f32(w), as_f32_mut(out));
    let ep = Epilogue::new(store);
    // CNHW: one matrix, `[C, batch * hw]`; NCHW: one per image, `[C, hw]`.
    let (images, n) = if cnhw { (1, op.batch * hw) } else { (op.batch, hw) };
    let m = Matrices { images, n, x_img: c * n, y_img: o * n };
    let len_y = images * o * n;
    assert!(
        x.len() >= images * c * n && w.len() >= o * c && y.len() >= len_y && ep.fits(o, len_y),
        "pointwise conv buffers too short for {op:?}"
    );
    with_blocked_weights(w, o, c, |wp| run(&m, c, o, x, wp, y, &ep));
}

/// Runs `f` with `w` (`o` rows of `taps` values) packed for blocks of `OB` output channels,
/// `wp[ob][t][OB] = w[ob * OB + i][t]` (zero past `o`), in this thread's packing buffer: the
/// order this kernel's and the phase-plane kernel's blocks read them.
pub(super) fn with_blocked_weights<R>(w: &[f32], o: usize, taps: usize, f: impl FnOnce(&[f32]) -> R) -> R {
    with_packed(o.div_ceil(OB) * taps * OB, |wp| {
        for (ob, wb) in wp.chunks_exact_mut(taps * OB).enumerate() {
            for (t, dst) in wb.chunks_exact_mut(OB).enumerate() {
                for (i, v) in dst.iter_mut().enumerate() {
                    let oi = ob * OB + i;
                    *v = if oi < o { w[oi * taps + t] } else { 0.0 };
                }
            }
        }
        f(wp)
    })
}

/// `images` matrices `X[C, n]` (`x_img` apart) into `Y[O, n]` (`y_img` apart).
struct Matrices {
    images: usize,
    n: usize,
    x_img: usize,
    y_img: usize,
}

/// Tasks: (image, chunk of [`CHUNK_COLS`] columns, run of output-channel blocks), enough of them
/// for the threads (batch 1's deep layers have few columns: there the output channels are
/// split). A task packs its chunk of X, then each block of output channels sweeps the chunk's
/// panels of [`COLS`]: the output and the residual go by as 8 rows of 1.5 KB each (the hardware
/// prefetchers follow that), where a task of one panel for every output channel touched 256-512
/// rows of 192 bytes, each in a page of its own, and ran slower than the GEMM and a separate
/// epilogue together.
fn run(m: &Matrices, c: usize, o: usize, x: &[f32], wp: &[f32], y: &mut [f32], ep: &Epilogue) {
    let blocks = o.div_ceil(OB);
    let chunks = m.n.div_ceil(CHUNK_COLS);
    if m.images == 0 || chunks == 0 || blocks == 0 {
        return;
    }
    let want = 4 * rayon::current_num_threads();
    let runs = want.div_ceil(m.images * chunks).clamp(1, blocks);
    let per_run = blocks.div_ceil(runs);
    let tasks = m.images * chunks * runs;
    let y_addr = y.as_mut_ptr() as usize;
    (0..tasks).into_par_iter().for_each(|task| {
        let (img, chunk, r) = (task / (chunks * runs), task / runs % chunks, task % runs);
        let j0 = chunk * CHUNK_COLS;
        let width = CHUNK_COLS.min(m.n - j0);
        let panels = width.div_ceil(COLS);
        f32::with_scratch(|s| {
            // The chunk's columns of X packed panel by panel, `[panel][c][COLS]` (zero past
            // `width`): a panel is contiguous (rows of a wider packing, 1.5 KB apart, fell into a
            // third of L1's sets).
            let xp = grown(&mut s.col, panels * c * COLS);
            let xs = &x[img * m.x_img + j0..];
            for (panel, xpp) in xp.chunks_exact_mut(c * COLS).enumerate() {
                let (jp, cols) = (panel * COLS, COLS.min(width - panel * COLS));
                for (ci, row) in xpp.chunks_exact_mut(COLS).enumerate() {
                    let src = &xs[ci * m.n + jp..];
                    if cols == COLS && src.len() >= COLS {
                        let dst = row.try_into().expect("rows of COLS values");
                        // SAFETY: AVX-512 (`applies`); `src` holds the COLS values (checked).
                        unsafe { copy_panel_row(dst, src) }
                    } else {
                        row[..cols].copy_from_slice(&src[..cols]);
                        row[cols..].fill(0.0);
                    }
                }
            }
            let xp = &*xp;
            // One block of output channels sweeps the chunk's panels, then the next: its output
            // and residual rows go by as 8 streams of 1.5 KB (4 blocks at a time over each panel,
            // 32 streams, measured slower).
            let run_blocks = r * per_run..((r + 1) * per_run).min(blocks);
            let run_end = run_blocks.end * OB;
            for ob in run_blocks.map(|b| b * OB) {
                for panel in 0..panels {
                    let (jp, cols) = (panel * COLS, COLS.min(width - panel * COLS));
                    let at = img * m.y_img + ob * m.n + j0 + jp;
                    let out = ep.out(y_addr as *mut f32, at, m.n, ob, OB.min(o - ob), cols);
                    let k = Block { xp: &xp[panel * c * COLS..][..c * COLS], wp: &wp[ob * c..][..c * OB], out };
                    // While this block computes, the lines of the next one's output and residual.
                    let (next_ob, next_at) = match panel + 1 < panels {
                        true => (ob, at + COLS),
                        false => (ob + OB, img * m.y_img + (ob + OB) * m.n + j0),
                    };
                    // (Not past this task's blocks: the next run's rows are another task's.)
                    if next_ob < run_end.min(o) {
                        prefetch_rows(y_addr as *const f32, ep.res(), next_at, m.n, OB.min(o - next_ob), COLS);
                    }
                    // SAFETY: AVX-512 (`applies`). Rows ob..ob + rows <= o, columns
                    // j0 + jp.. + cols <= n of image img's Y and of the residual: inside the
                    // buffers (checked in `forward`); lanes past `cols` are neither read nor
                    // written there. Tasks write disjoint (image, rows, columns) ranges of y.
                    unsafe {
                        match cols.div_ceil(LANES) {
                            3 => block::<3>(&k),
                            2 => block::<2>(&k),
                            _ => block::<1>(&k),
                        }
                    }
                }
            }
        })
    });
}

/// Asks for the lines of `rows` rows (`y_rs` apart) of `cols` values from index `at` of the
/// output (to be written) and of the residual to be fetched into L1. A block stores 8 rows of
/// 192 bytes and the next block of the sweep continues them, but a chunk's blocks of output
/// channels visit 256 rows in turn, too many streams for the hardware prefetchers: each run began
/// with misses. Measured on ResNet-50's six 56x56 1x1 convs at batch 8: 49.9/51.4 -> 42.0/46.0
/// ms (with plain prefetches of the output, 42.5/47.1).
#[inline(always)]
fn prefetch_rows(y: *const f32, res: Option<&[f32]>, at: usize, y_rs: usize, rows: usize, cols: usize) {
    #[cfg(target_arch = "x86_64")]
    for row in 0..rows {
        for line in (0..cols).step_by(16) {
            let i = at + row * y_rs + line;
            use std::arch::x86_64::*;
            // SAFETY: a prefetch is a hint: it does not fault, whatever the address (computed
            // with wrapping arithmetic, never dereferenced).
            unsafe {
                _mm_prefetch::<_MM_HINT_ET0>(y.wrapping_add(i) as *const i8);
                if let Some(r) = res {
                    _mm_prefetch::<_MM_HINT_T0>(r.as_ptr().wrapping_add(i) as *const i8);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (y, res, at, y_rs, rows, cols);
}

/// `dst = src[..COLS]`, and a prefetch into L2 of the `COLS` values after them (the next
/// panel's part of this row, packed one panel later). A packing reads a chunk's columns of each
/// input channel, rows 100 KB apart at ResNet-50's 56x56 maps: 64-256 streams, too many for the
/// hardware prefetchers, and a copy of run-time length called memmove (192 bytes a call); memmove
/// was 3.1-3.9% of ResNet-50 b8 inference's samples.
///
/// # Safety
/// AVX-512; `src.len() >= COLS`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn copy_panel_row(dst: &mut [f32; COLS], src: &[f32]) {
    use std::arch::x86_64::*;
    for p in 0..PB {
        _mm512_storeu_ps(dst.as_mut_ptr().add(p * LANES), _mm512_loadu_ps(src.as_ptr().add(p * LANES)));
        // A hint: it never faults, whatever the address (wrapping arithmetic, not dereferenced).
        _mm_prefetch::<_MM_HINT_T1>(src.as_ptr().wrapping_add(COLS + p * LANES) as *const i8);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn copy_panel_row(_: &mut [f32; COLS], _: &[f32]) {
    unreachable!("applies() is false off x86_64")
}

/// One block's operands.
struct Block<'a> {
    /// The panel of packed X, `[c][COLS]`.
    xp: &'a [f32],
    /// The block's packed weights, `[c][OB]`.
    wp: &'a [f32],
    out: Out,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn block<const P: usize>(k: &Block) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); P]; OB];
    for (wc, xc) in k.wp.chunks_exact(OB).zip(k.xp.chunks_exact(COLS)) {
        let mut xv = [_mm512_setzero_ps(); P];
        // A loop, not `from_fn`: a closure is compiled without AVX-512 unless it inlines here.
        #[allow(clippy::needless_range_loop)]
        for p in 0..P {
            xv[p] = _mm512_loadu_ps(xc.as_ptr().add(p * LANES));
        }
        for o in 0..OB {
            let wv = _mm512_set1_ps(wc[o]);
            for p in 0..P {
                acc[o][p] = _mm512_fmadd_ps(wv, xv[p], acc[o][p]);
            }
        }
    }
    store(&acc, &k.out);
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block<const P: usize>(_: &Block) {
    unreachable!("applies() is false off x86_64")
}

/// Stores a block's accumulators (`acc[o][p]`: output channel `o`, vector `p`) as `out` says:
/// the plans' epilogue, operation for operation, `y * scale + shift (+ res)`, then relu (`t <= 0`
/// gives 0; NaN stays), or an add into the output. Lanes past `out.cols` are neither read nor
/// written.
///
/// # Safety
/// AVX-512; `out` addresses `out.rows` rows of `out.cols` values (from [`Epilogue::out`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
#[inline]
pub(super) unsafe fn store<const P: usize>(acc: &[[std::arch::x86_64::__m512; P]; OB], out: &Out) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    for (o, acc_o) in acc.iter().enumerate().take(out.rows) {
        let (kv, sv) = (_mm512_set1_ps(out.scale[o]), _mm512_set1_ps(out.shift[o]));
        for (p, &a) in acc_o.iter().enumerate() {
            let mask = ((1u32 << out.cols.saturating_sub(p * LANES).min(LANES)) - 1) as u16;
            let at = o * out.y_rs + p * LANES;
            let dst = out.y.wrapping_add(at);
            let v = if out.accumulate {
                _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), a)
            } else {
                let mut t = _mm512_add_ps(_mm512_mul_ps(a, kv), sv);
                if let Some(r) = out.res {
                    t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(mask, r.wrapping_add(at)));
                }
                if out.relu {
                    t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(t, zero), t, zero);
                }
                t
            };
            _mm512_mask_storeu_ps(dst, mask, v);
        }
    }
}
