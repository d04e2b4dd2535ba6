//! Direct 3x3 "same" convs (stride 1, padding 1, one group) in f32 on AVX-512: the forward pass,
//! the input gradient and the weight gradient, with no im2col, no Winograd transforms and no GEMM
//! packing.
//!
//! Why: with 16 to 64 channels (the CIFAR ResNets) a conv as a GEMM is thin on the channels' side
//! (`O x C*9` weights times `C*9 x pixels` columns), and what a GEMM does around its micro-kernel
//! (im2col or Winograd's transforms, packing) moved more data than the micro-kernels multiplied:
//! a ResNet-56 b16 training step spent 27% of its time in the Winograd transforms, 15% packing
//! and 14% in the micro-kernels. Here a vector holds 16 positions of one plane (pixels row after
//! row), so the long side (pixels) is the vector and the short side (channels) is what the kernel
//! loops over. Tap `(ky, kx)` reads the input plane shifted by `(ky - 1) * W + kx - 1` elements,
//! with a lane mask (`tap_masks`) that zeroes the positions whose shifted pixel is padding, or
//! that lie past the plane; masked-off lanes are not read.
//!
//! - forward: a block of `OB` output channels by `PB` vectors of positions (24 accumulators); for
//!   each tap and input channel, `PB` masked loads and `OB` broadcast weights feed `OB * PB` FMAs.
//! - input gradient: the forward pass of the output gradient with the flipped, transposed kernel
//!   (a stride-1, padding-1 3x3 conv's input gradient is such a conv), added into `gx`.
//! - weight gradient: for `GB` output channels and one input channel, `GB x 9` accumulators (one
//!   vector per tap) summed over the images' positions, then across lanes once per chunk of
//!   images. The threads take runs of images, each with a weight-gradient part of its own. Where
//!   the lane masks repeat every two vectors (planes 16 or 32 wide, or of a width dividing 16),
//!   the vectors away from the plane's first and last rows run with the masks in registers
//!   (`Geom::inner`); elsewhere every vector loads its four masks.
//!
//! Layouts: NCHW and CNHW (compiled plans' batches), by where plane (image, channel) lies.
//! f64, other convs and CPUs without AVX-512 run the GEMM paths (`cpu.rs`, `winograd.rs`).

use std::any::TypeId;

use rayon::prelude::*;

use super::pointwise::Epilogue;
use super::winograd::Store;
use super::Conv2dOp;
use crate::real::{grown, Real};
use crate::Knob;

/// Convs whose input and output channels are both at most this many run here (default 64; 0:
/// never). Above it the GEMM paths' deeper products run near the GEMM's peak, and Winograd does
/// fewer multiplies than a direct conv.
#[doc(hidden)]
pub static DIRECT_MAX_CHANNELS: Knob = Knob::new(64);

/// Positions per vector.
const LANES: usize = 16;
/// Taps of a 3x3 kernel.
const TAPS: usize = 9;
/// Masks per vector: one per tap, then the lanes inside the plane (`KEEP`).
const MASKS: usize = TAPS + 1;
const KEEP: usize = TAPS;
/// Output channels per forward block.
const OB: usize = 8;
/// Vectors of positions per forward block.
const PB: usize = 3;
/// Output channels per weight-gradient block (`GB * 3` accumulators: one row of taps at a time;
/// with 8, the compiler ran out of vector registers). `grad_block` is written out for 6.
const GB: usize = 6;
/// Positions per plane a weight-gradient chunk of images aims for: one kernel call sweeps `GB`
/// output-gradient planes and one input plane of each image of the chunk, 28 KB at 1024
/// positions, which stay in L1 while the call's input channels go by; and 64 vectors of FMAs
/// per lane reduction at its end.
const CHUNK_POSITIONS: usize = 1024;

/// Whether `op` runs here: f32, a 3x3 kernel, stride 1, padding 1, no dilation, one group, output
/// size = input size, at most [`DIRECT_MAX_CHANNELS`] channels each side, and AVX-512.
pub(super) fn applies<E: 'static>(op: &Conv2dOp) -> bool {
    TypeId::of::<E>() == TypeId::of::<f32>()
        && op.kernel == 3
        && op.stride == 1
        && op.padding == 1
        && op.dilation == 1
        && op.groups == 1
        && op.out_h == op.in_h
        && op.out_w == op.in_w
        && op.in_channels.max(op.out_channels) <= DIRECT_MAX_CHANNELS.get()
        && crate::wide::wide_vectors()
}

/// `s` as f32 (callers pass only what [`applies`] accepted).
pub(super) fn as_f32<E: 'static>(s: &[E]) -> &[f32] {
    assert!(TypeId::of::<E>() == TypeId::of::<f32>());
    // SAFETY: E is f32 (asserted): the same memory, renamed.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) }
}

pub(super) fn as_f32_mut<E: 'static>(s: &mut [E]) -> &mut [f32] {
    assert!(TypeId::of::<E>() == TypeId::of::<f32>());
    // SAFETY: E is f32 (asserted): the same memory, renamed.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut f32, s.len()) }
}

/// Where plane (image `b`, channel `c`) of a `[.., H, W]` tensor lies: plane `b * img + c * ch`.
#[derive(Clone, Copy)]
struct Planes {
    img: usize,
    ch: usize,
}

impl Planes {
    fn new(cnhw: bool, batch: usize, channels: usize) -> Self {
        if cnhw {
            Planes { img: 1, ch: batch }
        } else {
            Planes { img: channels, ch: 1 }
        }
    }
}

/// The plane geometry shared by a conv's passes: `H x W` planes, `batch` images, the lane masks
/// of every (vector, tap) and the taps' shifts.
///
/// The vectors of a plane start `lead` positions before it, so that they lie on 64-byte lines
/// of the buffer the hot loop reads most: a vector that straddles two lines costs two loads,
/// and allocators align large buffers to 16 bytes (every load of a 16-lane grid from the
/// plane's start straddled). Where `H * W` is not a multiple of 16 the planes of one buffer
/// start at different offsets of a line, and `lead` is 0.
struct Geom<'a> {
    batch: usize,
    hw: usize,
    /// Plane width.
    w: usize,
    /// Positions of the first vector before the plane's start (masked off), below 16.
    lead: usize,
    /// Vectors per plane, `ceil((lead + H * W) / 16)`.
    vecs: usize,
    /// `masks[v * MASKS + t]`: the lanes of vector `v` whose pixel shifted by tap `t` lies inside
    /// the image; `masks[v * MASKS + KEEP]`: its lanes inside the plane.
    masks: &'a [u16],
    shifts: [isize; TAPS],
}

impl Geom<'_> {
    /// The inner vectors of tap row `ky`, an even number of them: all lanes inside the plane and
    /// their pixels shifted by `ky - 1` rows inside the image, where the lane masks repeat every
    /// 2 vectors (a width that is a multiple of 16 up to 32, or that divides 16). Their masks are
    /// then those of taps `kx = 0` and `2` at the row's edges ([`Geom::row_edges`]) and all lanes
    /// for the rest. Empty where the masks do not repeat so.
    fn inner(&self, ky: usize) -> std::ops::Range<usize> {
        let repeats = matches!(self.w, 16 | 32) || (self.w > 0 && LANES.is_multiple_of(self.w));
        // Positions whose pixel one row up (ky = 0) or down (ky = 2) is inside the image.
        let (lo, hi) = match ky {
            0 => (self.w, self.hw),
            2 => (0, self.hw.saturating_sub(self.w)),
            _ => (0, self.hw),
        };
        let first = (lo + self.lead).div_ceil(LANES);
        let end = ((hi + self.lead) / LANES).max(first);
        if !repeats {
            return first..first;
        }
        first..first + (end - first) / 2 * 2
    }

    /// Vector `v`'s masks of taps `(ky, 0)` and `(ky, 2)`.
    fn row_edges(&self, v: usize, ky: usize) -> (u16, u16) {
        (self.masks[v * MASKS + ky * 3], self.masks[v * MASKS + ky * 3 + 2])
    }
}

/// Fills `masks` (`ceil((lead + h * w) / 16) * MASKS`) for `h x w` planes whose vectors start
/// `lead` positions early; returns the taps' shifts.
fn tap_masks(h: usize, w: usize, lead: usize, masks: &mut Vec<u16>) -> [isize; TAPS] {
    let hw = h * w;
    masks.clear();
    masks.resize((lead + hw).div_ceil(LANES) * MASKS, 0);
    for p in 0..hw {
        let (y, x) = (p / w, p % w);
        let (v, lane) = ((lead + p) / LANES, (lead + p) % LANES);
        masks[v * MASKS + KEEP] |= 1 << lane;
        for t in 0..TAPS {
            // The input pixel (y + ky - 1, x + kx - 1), here shifted by one to stay unsigned.
            let (iy, ix) = (y + t / 3, x + t % 3);
            if (1..=h).contains(&iy) && (1..=w).contains(&ix) {
                masks[v * MASKS + t] |= 1 << lane;
            }
        }
    }
    std::array::from_fn(|t| (t / 3) as isize * w as isize - w as isize + (t % 3) as isize - 1)
}

/// Runs `f` with this thread's mask buffer filled for `op`'s planes, their vectors on the lines
/// of the buffer at `aligned_to` where `align` (taken out of the scratch, since the tasks `f`
/// starts may run on this thread).
fn with_geom<R>(op: &Conv2dOp, aligned_to: *const f32, align: bool, f: impl FnOnce(&Geom) -> R) -> R {
    let mut masks = f32::with_scratch(|s| std::mem::take(&mut s.direct_masks));
    let hw = op.in_h * op.in_w;
    let lead = if align && hw.is_multiple_of(LANES) { aligned_to as usize % 64 / size_of::<f32>() } else { 0 };
    let shifts = tap_masks(op.in_h, op.in_w, lead, &mut masks);
    let r =
        f(&Geom { batch: op.batch, hw, w: op.in_w, lead, vecs: (lead + hw).div_ceil(LANES), masks: &masks, shifts });
    f32::with_scratch(|s| s.direct_masks = masks);
    r
}

/// Whether a conv's vectors are aligned to its input's lines: only on planes of at least 256
/// positions, where the extra vector per plane costs at most 1/16 more FMAs (an 8x8 plane's 5
/// vectors instead of 4 measured 20% slower; its input loads at taps kx = 0 and 2 straddle lines
/// whatever the alignment).
fn align_conv(op: &Conv2dOp) -> bool {
    op.in_h * op.in_w >= 256
}

/// `wp[ob][t][c][OB]` = `weight(o, c, t)` for `o = ob * OB + ..` (zero past `outs`): a forward
/// block's weights in the order its loops read them.
fn pack_weights(outs: usize, ins: usize, weight: impl Fn(usize, usize, usize) -> f32, wp: &mut [f32]) {
    let blocks = outs.div_ceil(OB);
    assert!(wp.len() >= blocks * TAPS * ins * OB);
    for ob in 0..blocks {
        for t in 0..TAPS {
            for c in 0..ins {
                let dst = &mut wp[((ob * TAPS + t) * ins + c) * OB..][..OB];
                for (i, v) in dst.iter_mut().enumerate() {
                    let o = ob * OB + i;
                    *v = if o < outs { weight(o, c, t) } else { 0.0 };
                }
            }
        }
    }
}

/// Runs `f` with this thread's packing buffer of at least `len` elements.
pub(super) fn with_packed<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut wp = f32::with_scratch(|s| std::mem::take(&mut s.wt));
    let r = f(&mut grown(&mut wp, len)[..len]);
    f32::with_scratch(|s| s.wt = wp);
    r
}

/// The conv into `out` (NCHW, or CNHW when `cnhw`), stored as `store` says (a write, an add, or
/// the plans' inference epilogue). Buffer lengths are checked by the caller; they are checked
/// again here against what the kernels address.
pub(super) fn forward<E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>) {
    let (c, o) = (op.in_channels, op.out_channels);
    let w = as_f32(w);
    assert!(w.len() >= o * c * TAPS);
    let (xp, yp) = (Planes::new(cnhw, op.batch, c), Planes::new(cnhw, op.batch, o));
    let ep = Epilogue::new(store);
    packed_conv(op, c, o, |oi, ci, t| w[(oi * c + ci) * TAPS + t], as_f32(x), xp, as_f32_mut(out), yp, &ep);
}

/// The input gradient of `op` (NCHW, or CNHW when `cnhw`) into `gx` (added when `accumulate`)
/// and `gw += ` its weight gradient, from the output gradient `gout`.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward<E: Real>(
    op: &Conv2dOp,
    cnhw: bool,
    x: &[E],
    w: &[E],
    gx: &mut [E],
    accumulate: bool,
    gw: &mut [E],
    gout: &[E],
) {
    let (c, o) = (op.in_channels, op.out_channels);
    let (w, gw) = (as_f32(w), as_f32_mut(gw));
    assert!(w.len() >= o * c * TAPS && gw.len() >= o * c * TAPS);
    let (xp, yp) = (Planes::new(cnhw, op.batch, c), Planes::new(cnhw, op.batch, o));
    let gout = as_f32(gout);
    // Aligned to the output gradient, which the weight gradient reads six planes at a time (the
    // extra vector of small planes measured cheaper than their straddling loads).
    with_geom(op, gout.as_ptr(), true, |g| weight_grad(g, c, o, as_f32(x), xp, gout, yp, gw));
    // The input gradient: the conv of gout (o channels in) with w flipped and transposed.
    let flipped = |ci: usize, oi: usize, t: usize| w[(oi * c + ci) * TAPS + TAPS - 1 - t];
    let ep = Epilogue::new::<f32>(Store::plain(accumulate));
    packed_conv(op, o, c, flipped, gout, yp, as_f32_mut(gx), xp, &ep);
}

/// `y = conv(x, weight)`, stored as `ep` says, on `op`'s planes, `ins` channels in and `outs` out, `weight(o, c, t)`
/// packed for the forward blocks first ([`pack_weights`]): the forward pass and the input
/// gradient (the flipped, transposed kernel) alike.
#[allow(clippy::too_many_arguments)]
fn packed_conv(
    op: &Conv2dOp,
    ins: usize,
    outs: usize,
    weight: impl Fn(usize, usize, usize) -> f32,
    x: &[f32],
    xp: Planes,
    y: &mut [f32],
    yp: Planes,
    ep: &Epilogue,
) {
    with_packed(outs.div_ceil(OB) * TAPS * ins * OB, |wp| {
        pack_weights(outs, ins, weight, wp);
        with_geom(op, x.as_ptr(), align_conv(op), |g| same_conv(g, ins, outs, x, xp, wp, y, yp, ep))
    })
}

/// `y (+)= conv(x, w)` for `ins` input and `outs` output channels, `wp` packed by
/// [`pack_weights`]. Tasks: (image, block of `OB` output channels, run of vectors), each writing
/// its own output rows.
#[allow(clippy::too_many_arguments)]
fn same_conv(
    g: &Geom,
    ins: usize,
    outs: usize,
    x: &[f32],
    xp: Planes,
    wp: &[f32],
    y: &mut [f32],
    yp: Planes,
    ep: &Epilogue,
) {
    let (hw, vecs) = (g.hw, g.vecs);
    let blocks = outs.div_ceil(OB);
    if hw == 0 || g.batch == 0 || blocks == 0 {
        return;
    }
    // Every plane the kernels address lies inside its buffer (plane indices below batch * channels,
    // whichever layout), and so do the packed weights and masks.
    assert!(
        x.len() >= g.batch * ins * hw
            && y.len() >= g.batch * outs * hw
            && wp.len() >= blocks * TAPS * ins * OB
            && g.masks.len() >= vecs * MASKS
            && ep.fits(outs, g.batch * outs * hw)
    );
    let groups = VectorGroups::new(vecs);
    let groups_n = groups.len();
    // Enough tasks for the threads to balance: split the planes' vectors when images and blocks
    // are few (batch 1).
    let want = 4 * rayon::current_num_threads();
    let runs = want.div_ceil(g.batch * blocks).clamp(1, groups_n);
    let per_run = groups_n.div_ceil(runs);
    let tasks = g.batch * blocks * runs;
    let (x_addr, y_addr) = (x.as_ptr() as usize, y.as_mut_ptr() as usize);
    (0..tasks).into_par_iter().for_each(|task| {
        let (b, ob, run) = (task / (blocks * runs), task / runs % blocks, task % runs);
        let o0 = ob * OB;
        let rows = OB.min(outs - o0);
        let x0 = (x_addr as *const f32).wrapping_add(b * xp.img * hw);
        let at = (b * yp.img + o0 * yp.ch) * hw;
        let y0 = (y_addr as *mut f32).wrapping_add(at);
        let res0 = ep.res().map(|r| r.as_ptr().wrapping_add(at));
        let (scale, shift) = ep.scale_shift(o0);
        let wb = &wp[ob * TAPS * ins * OB..][..TAPS * ins * OB];
        for group in (run * per_run..(run + 1) * per_run).take_while(|&i| i < groups_n) {
            let (v0, n) = groups.get(group);
            let (x_cs, y_cs) = (xp.ch * hw, yp.ch * hw);
            let (relu, accumulate) = (ep.relu(), ep.accumulate());
            let k = Block { x0, x_cs, ins, wp: wb, g, v0, y0, y_cs, res0, rows, scale, shift, relu, accumulate };
            // SAFETY: this CPU has AVX-512 (`applies`: `wide_vectors`). The addresses: the planes of image b
            // (channels below ins, outputs o0..o0 + rows) lie inside x and y (asserted above);
            // the kernel reads input lanes only where their mask is set, which is only for
            // pixels inside the plane, and reads the residual and writes output lanes only below
            // hw. Tasks write
            // disjoint (image, output-channel, vector) ranges of y.
            unsafe {
                match n {
                    3 => forward_block::<3>(&k),
                    2 => forward_block::<2>(&k),
                    _ => forward_block::<1>(&k),
                }
            }
        }
    });
}

/// A plane's vectors cut into forward blocks of `PB` (3) vectors, or 2 where 3 do not divide
/// them: a block of 1 would load 9 values per 8 FMAs (3 do 11 per 24).
#[derive(Clone, Copy)]
struct VectorGroups {
    vecs: usize,
    /// Blocks of 3, then the rest in blocks of 2 (or one of 1, for a plane of one vector).
    threes: usize,
}

impl VectorGroups {
    fn new(vecs: usize) -> Self {
        let threes = match vecs % PB {
            1 => (vecs / PB).saturating_sub(1),
            _ => vecs / PB,
        };
        VectorGroups { vecs, threes }
    }

    fn len(&self) -> usize {
        self.threes + (self.vecs - PB * self.threes).div_ceil(2)
    }

    /// Block `i`: its first vector and its vectors.
    fn get(&self, i: usize) -> (usize, usize) {
        if i < self.threes {
            (PB * i, PB)
        } else {
            let v0 = PB * self.threes + 2 * (i - self.threes);
            (v0, 2.min(self.vecs - v0))
        }
    }
}

/// One forward block's operands.
struct Block<'a> {
    /// Plane (image, channel 0) of the input; channel planes `x_cs` apart.
    x0: *const f32,
    x_cs: usize,
    ins: usize,
    /// The block's packed weights, `[t][c][OB]`.
    wp: &'a [f32],
    g: &'a Geom<'a>,
    /// First vector of the block.
    v0: usize,
    /// Plane (image, first output channel of the block) of the output; `y_cs` apart.
    y0: *mut f32,
    y_cs: usize,
    /// The residual's plane (image, first output channel of the block), laid out as `y`.
    res0: Option<*const f32>,
    /// Output channels of the block that exist (the rest of the `OB` are zero weights).
    rows: usize,
    /// The epilogue of [`pointwise::store`](super::pointwise::store), per output channel.
    scale: [f32; OB],
    shift: [f32; OB],
    relu: bool,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn forward_block<const P: usize>(k: &Block) {
    use std::arch::x86_64::*;
    let g = k.g;
    let mut acc = [[_mm512_setzero_ps(); P]; OB];
    for t in 0..TAPS {
        let m: [u16; P] = std::array::from_fn(|p| g.masks[(k.v0 + p) * MASKS + t]);
        let xt = k.x0.wrapping_offset((k.v0 * LANES) as isize - g.lead as isize + g.shifts[t]);
        let wt = &k.wp[t * k.ins * OB..][..k.ins * OB];
        for (c, wc) in wt.chunks_exact(OB).enumerate() {
            let xc = xt.wrapping_add(c * k.x_cs);
            let mut xv = [_mm512_setzero_ps(); P];
            for p in 0..P {
                xv[p] = _mm512_maskz_loadu_ps(m[p], xc.wrapping_add(p * LANES));
            }
            for o in 0..OB {
                let wv = _mm512_set1_ps(wc[o]);
                for p in 0..P {
                    acc[o][p] = _mm512_fmadd_ps(wv, xv[p], acc[o][p]);
                }
            }
        }
    }
    for (o, acc_o) in acc.iter().enumerate().take(k.rows) {
        for (p, &a) in acc_o.iter().enumerate() {
            let q = ((k.v0 + p) * LANES) as isize - g.lead as isize;
            let keep = g.masks[(k.v0 + p) * MASKS + KEEP];
            let dst = k.y0.wrapping_add(o * k.y_cs).wrapping_offset(q);
            let v = if k.accumulate {
                _mm512_add_ps(_mm512_maskz_loadu_ps(keep, dst), a)
            } else {
                // The plans' epilogue, operation for operation (as `pointwise::store`).
                let mut t = _mm512_add_ps(_mm512_mul_ps(a, _mm512_set1_ps(k.scale[o])), _mm512_set1_ps(k.shift[o]));
                if let Some(r) = k.res0 {
                    let r = r.wrapping_add(o * k.y_cs).wrapping_offset(q);
                    t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(keep, r));
                }
                if k.relu {
                    let zero = _mm512_setzero_ps();
                    t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(t, zero), t, zero);
                }
                t
            };
            _mm512_mask_storeu_ps(dst, keep, v);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_block<const P: usize>(_: &Block) {
    unreachable!("applies() is false off x86_64")
}

/// `gw[o, c, t] += sum over images and positions of gy[o] * x[c] shifted by tap t`. The threads
/// take runs of images, each adding into a part of its own; with fewer images than threads, one
/// run.
#[allow(clippy::too_many_arguments)]
fn weight_grad(g: &Geom, ins: usize, outs: usize, x: &[f32], xp: Planes, gy: &[f32], yp: Planes, gw: &mut [f32]) {
    let hw = g.hw;
    if hw == 0 || g.batch == 0 || ins == 0 || outs == 0 {
        return;
    }
    assert!(
        x.len() >= g.batch * ins * hw
            && gy.len() >= g.batch * outs * hw
            && gw.len() >= outs * ins * TAPS
            && g.masks.len() >= g.vecs * MASKS
    );
    let gw = &mut gw[..outs * ins * TAPS];
    let per_chunk = (CHUNK_POSITIONS / hw).clamp(1, g.batch);
    let threads = rayon::current_num_threads().min(g.batch);
    let per_run = g.batch.div_ceil(threads);
    let runs: Vec<usize> = (0..g.batch.div_ceil(per_run)).collect();
    let run = |gw_t: &mut [f32], r: usize| {
        let end = ((r + 1) * per_run).min(g.batch);
        let mut b0 = r * per_run;
        while b0 < end {
            let n_img = per_chunk.min(end - b0);
            for o0 in (0..outs).step_by(GB) {
                let rows = GB.min(outs - o0);
                for c in 0..ins {
                    let k = GradBlock {
                        x0: x.as_ptr().wrapping_add((b0 * xp.img + c * xp.ch) * hw),
                        x_bs: xp.img * hw,
                        g0: gy.as_ptr().wrapping_add((b0 * yp.img + o0 * yp.ch) * hw),
                        g_bs: yp.img * hw,
                        g_os: yp.ch * hw,
                        n_img,
                        g,
                    };
                    for ky in 0..3 {
                        let mut sums = [[0.0; 3]; GB];
                        let sums = &mut sums[..rows];
                        // SAFETY: AVX-512 (`applies`). Images b0..b0 + n_img <= batch, channel
                        // c < ins and outputs o0..o0 + rows <= outs (the kernel's G is rows):
                        // their planes lie inside x and gy (asserted above); input lanes are
                        // read only where their tap mask is set (pixels inside the plane),
                        // output-gradient lanes only below hw.
                        unsafe {
                            match rows {
                                6 => grad_block::<6>(&k, ky, sums),
                                5 => grad_block::<5>(&k, ky, sums),
                                4 => grad_block::<4>(&k, ky, sums),
                                3 => grad_block::<3>(&k, ky, sums),
                                2 => grad_block::<2>(&k, ky, sums),
                                _ => grad_block::<1>(&k, ky, sums),
                            }
                        }
                        for (o, s) in sums.iter().enumerate() {
                            let dst = &mut gw_t[((o0 + o) * ins + c) * TAPS + ky * 3..][..3];
                            dst.iter_mut().zip(s).for_each(|(d, &v)| *d += v);
                        }
                    }
                }
            }
            b0 += n_img;
        }
    };
    if runs.len() == 1 {
        run(gw, 0);
    } else {
        super::cpu::per_thread_weight_grads(gw, runs, |_, gw_t, r| run(gw_t, r));
    }
}

/// One weight-gradient block's operands: one input channel, the kernel's `G` (up to `GB`) output
/// channels, `n_img` images.
struct GradBlock<'a> {
    /// Plane (first image, the input channel); images `x_bs` apart.
    x0: *const f32,
    x_bs: usize,
    /// Plane (first image, first output channel); images `g_bs`, channels `g_os` apart.
    g0: *const f32,
    g_bs: usize,
    g_os: usize,
    n_img: usize,
    g: &'a Geom<'a>,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
unsafe fn grad_block<const G: usize>(k: &GradBlock, ky: usize, sums: &mut [[f32; 3]]) {
    use std::arch::x86_64::*;
    let g = k.g;
    // One variable per accumulator (row o, tap kx), the rows past G unused: with arrays, the
    // compiler kept several accumulators on the stack and shuffled the others between registers
    // every iteration.
    let z = _mm512_setzero_ps();
    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (z, z, z, z, z, z);
    let (mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (z, z, z, z, z, z);
    let (mut a40, mut a41, mut a42, mut a50, mut a51, mut a52) = (z, z, z, z, z, z);
    let (s0, s1, s2) = (g.shifts[ky * 3], g.shifts[ky * 3 + 1], g.shifts[ky * 3 + 2]);
    let masks = &g.masks[..g.vecs * MASKS];
    // One vector of positions: the three taps' input vectors under their masks, then each output
    // channel's gradient vector under `keep` into its three accumulators. Pointers are bumped
    // vector by vector (fewer live registers than indices).
    macro_rules! vector {
        ($xq:ident, $gq:ident, $m0:expr, $m1:expr, $m2:expr, $keep:expr) => {{
            let x0 = _mm512_maskz_loadu_ps($m0, $xq.wrapping_offset(s0));
            let x1 = _mm512_maskz_loadu_ps($m1, $xq.wrapping_offset(s1));
            let x2 = _mm512_maskz_loadu_ps($m2, $xq.wrapping_offset(s2));
            let keep = $keep;
            macro_rules! row {
                ($o:literal, $c0:ident, $c1:ident, $c2:ident) => {
                    if $o < G {
                        let gv = _mm512_maskz_loadu_ps(keep, $gq.wrapping_add($o * k.g_os));
                        $c0 = _mm512_fmadd_ps(gv, x0, $c0);
                        $c1 = _mm512_fmadd_ps(gv, x1, $c1);
                        $c2 = _mm512_fmadd_ps(gv, x2, $c2);
                    }
                };
            }
            row!(0, a00, a01, a02);
            row!(1, a10, a11, a12);
            row!(2, a20, a21, a22);
            row!(3, a30, a31, a32);
            row!(4, a40, a41, a42);
            row!(5, a50, a51, a52);
            $xq = $xq.wrapping_add(LANES);
            $gq = $gq.wrapping_add(LANES);
        }};
    }
    let general = |v: usize| {
        let m = &masks[v * MASKS..][..MASKS];
        (m[ky * 3], m[ky * 3 + 1], m[ky * 3 + 2], m[KEEP])
    };
    let inner = g.inner(ky);
    let (pair0, pair1) = if inner.is_empty() {
        ((0, 0), (0, 0))
    } else {
        (g.row_edges(inner.start, ky), g.row_edges(inner.start + 1, ky))
    };
    for b in 0..k.n_img {
        let mut xq = k.x0.wrapping_add(b * k.x_bs).wrapping_sub(g.lead);
        let mut gq = k.g0.wrapping_add(b * k.g_bs).wrapping_sub(g.lead);
        for v in 0..inner.start {
            let (m0, m1, m2, keep) = general(v);
            vector!(xq, gq, m0, m1, m2, keep);
        }
        // The inner vectors, in pairs: masks held in registers (only taps kx = 0 and 2 mask a
        // lane there, the same ones every pair), no mask loads.
        for _ in inner.clone().step_by(2) {
            vector!(xq, gq, pair0.0, u16::MAX, pair0.1, u16::MAX);
            vector!(xq, gq, pair1.0, u16::MAX, pair1.1, u16::MAX);
        }
        for v in inner.end..g.vecs {
            let (m0, m1, m2, keep) = general(v);
            vector!(xq, gq, m0, m1, m2, keep);
        }
    }
    let rows = [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22], [a30, a31, a32], [a40, a41, a42], [a50, a51, a52]];
    // Loops, not `map` closures: a closure is compiled without AVX-512 unless it inlines here.
    for (s, r) in sums.iter_mut().zip(&rows).take(G) {
        for kx in 0..3 {
            s[kx] = _mm512_reduce_add_ps(r[kx]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_block<const G: usize>(_: &GradBlock, _: usize, _: &mut [[f32; 3]]) {
    unreachable!("applies() is false off x86_64")
}
