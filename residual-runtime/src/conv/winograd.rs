//! Winograd's F(2x2, 3x3) for 3x3, stride-1 convs: the same outputs from 2.25x fewer
//! multiplications, and from a smaller intermediate matrix than im2col's.
//!
//! Why: 3x3 stride-1 convs are 37% of ResNet-50's multiply-adds and 47% of ResNet-152's, and the
//! batched inference of both is bound by the GEMM's arithmetic (BENCHMARKS.md). Each output tile
//! of 2x2 pixels is computed from a 4x4 input tile `d` (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016):
//!
//! ```text
//! Y = A^T [ (G g G^T) .* (B^T d B) ] A      (the product .* summed over input channels)
//! ```
//!
//! so per tile the 16 transformed positions `xi` are 16 independent GEMMs `M[xi] (O x T) =
//! U[xi] (O x C) * V[xi] (C x T)` over the tiles `T`, each `C` deep: 16 multiplies per 4 outputs
//! where the direct conv does 36. The input is read once into `V` (4x the input: im2col writes 9x),
//! and `M` (4x the output) is read once into the output. The transforms' coefficients are 0, +-1
//! and 1/2, so the rounding is that of a few more additions: against the naive f64 loop, f32
//! outputs stay within the 2e-5 (relative to the largest output) the direct conv's tests allow,
//! and every model test (torchvision logits, plan against layers, training steps) passes as before.
//!
//! Work is cut into chunks of whole tile rows (a row of tiles of one image), sized so a chunk's
//! `V` and `M` stay in a core's L2. With many chunks every thread takes whole chunks (transform,
//! 16 GEMMs, inverse transform, alone); with few (a deep layer's small maps), the chunks run in
//! turn with each phase split between the threads (channels, then the 16 GEMMs, then outputs).
//!
//! Layouts: NCHW and CNHW (compiled plans' batches), by where plane (image, channel) lies.

use rayon::prelude::*;

use super::cpu::{matmul, whole_chunks_per_thread};
use super::Conv2dOp;
use crate::real::{grown, Real};
use crate::Knob;

/// Tiles (over all images) from which a 3x3 stride-1 conv runs as Winograd (default 128; 0:
/// always; `usize::MAX`: never). Below it the transformed weights (`16 * O * C`, 1.8x the
/// weights, computed on every call) cost more than the multiplies they save: a deep layer at
/// batch 1 has 16 tiles.
#[doc(hidden)]
pub static WINOGRAD_MIN_TILES: Knob = Knob::new(128);

/// Input and output channels from which Winograd runs: with fewer, each of the 16 GEMMs is too
/// shallow (or too thin) to run near the GEMM's speed, and the transforms dominate.
const MIN_CHANNELS: usize = 16;

/// Tiles per chunk aimed for when threads take whole chunks: each GEMM then has this many
/// columns, and a 64-channel layer's `V` and `M` (`16 * (C + O) * 256` floats, 2 MiB) stay in L2.
const CHUNK_TILES: usize = 256;

/// Upper bound on a chunk's `V` plus `M`, in elements.
const MAX_CHUNK_ELEMS: usize = 1 << 24;

/// Tiles of a row segment transformed at once (stack buffers of this many).
const SEG: usize = 64;

/// Whether `op` runs as Winograd: a 3x3 kernel, stride 1, no dilation, one group, padding up to
/// 2, enough channels and tiles.
pub(super) fn applies(op: &Conv2dOp) -> bool {
    op.kernel == 3
        && op.stride == 1
        && op.dilation == 1
        && op.groups == 1
        && op.padding <= 2
        && op.in_channels >= MIN_CHANNELS
        && op.out_channels >= MIN_CHANNELS
        && op.out_h + 2 == op.in_h + 2 * op.padding
        && op.out_w + 2 == op.in_w + 2 * op.padding
        && Geom::new(op, false).tiles() >= WINOGRAD_MIN_TILES.get()
}

/// Sizes of one Winograd conv.
#[derive(Clone, Copy)]
struct Geom {
    batch: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    pad: usize,
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
    cnhw: bool,
}

impl Geom {
    fn new(op: &Conv2dOp, cnhw: bool) -> Self {
        Geom {
            batch: op.batch,
            c: op.in_channels,
            o: op.out_channels,
            h: op.in_h,
            w: op.in_w,
            oh: op.out_h,
            ow: op.out_w,
            pad: op.padding,
            th: op.out_h.div_ceil(2),
            tw: op.out_w.div_ceil(2),
            cnhw,
        }
    }

    fn tiles(&self) -> usize {
        self.batch.saturating_mul(self.th).saturating_mul(self.tw)
    }

    /// Where input plane (image `b`, channel `c`) starts.
    fn in_plane(&self, b: usize, c: usize) -> usize {
        let plane = if self.cnhw { c * self.batch + b } else { b * self.c + c };
        plane * self.h * self.w
    }

    /// Where output plane (image `b`, channel `o`) starts.
    fn out_plane(&self, b: usize, o: usize) -> usize {
        let plane = if self.cnhw { o * self.batch + b } else { b * self.o + o };
        plane * self.oh * self.ow
    }
}

/// The conv `op` (which [`applies`]) of `x` with `w` into `out`, adding into it when
/// `accumulate`; activations NCHW, or CNHW when `cnhw`.
pub(super) fn forward<E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], accumulate: bool) {
    forward_to(op, cnhw, x, w, out, if accumulate { Store::Add } else { Store::Write })
}

/// What the inverse transform does with each output value `y`.
#[derive(Clone, Copy)]
pub(crate) enum Store<'a, E> {
    Write,
    Add,
    /// `y * scale[o] + shift[o] (+ res at y's index)`, then `max(., 0)` when `relu` (NaN stays):
    /// a folded batch norm or bias, a residual add and a relu, in the pass that writes `y`
    /// instead of one more pass over the output. The same operations in the same order as the
    /// plans' separate epilogue, so the same rounding.
    Epilogue {
        scale: Option<&'a [E]>,
        shift: Option<&'a [E]>,
        res: Option<&'a [E]>,
        relu: bool,
    },
}

/// [`forward`], storing as `store` says.
pub(crate) fn forward_to<E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>) {
    let g = Geom::new(op, cnhw);
    let out_len = g.batch * g.o * g.oh * g.ow;
    assert!(
        x.len() >= g.batch * g.c * g.h * g.w && w.len() >= g.o * g.c * 9 && out.len() >= out_len,
        "winograd buffers too short for {op:?}"
    );
    if let Store::Epilogue { scale, shift, res, .. } = store {
        assert!(
            scale.is_none_or(|k| k.len() >= g.o)
                && shift.is_none_or(|s| s.len() >= g.o)
                && res.is_none_or(|r| r.len() >= out_len),
            "winograd epilogue operands too short for {op:?}"
        );
    }
    let mut u_buf = E::with_scratch(|s| std::mem::take(&mut s.winograd_u));
    let u = grown(&mut u_buf, 16 * g.o * g.c);
    transform_weights(&g, w, u);
    let u = &*u;
    // Chunks write disjoint output rows (those of their own tile rows): `out` travels as an address.
    let out_addr = out.as_mut_ptr() as usize;
    let rows = g.batch * g.th;
    let mem_rows = (MAX_CHUNK_ELEMS / (16 * (g.c + g.o) * g.tw)).max(1);
    let threads = rayon::current_num_threads().max(1);
    let small = CHUNK_TILES.div_ceil(g.tw).min(mem_rows);
    // A multiple of the threads, so that none waits for another's last chunk.
    let chunks = rows.div_ceil(small).next_multiple_of(threads);
    if whole_chunks_per_thread(chunks) {
        let per = rows.div_ceil(chunks);
        (0..rows.div_ceil(per)).into_par_iter().for_each(|i| {
            let r0 = i * per;
            E::with_scratch(|s| {
                let (v, m) = (&mut s.col, &mut s.tmp);
                // SAFETY: chunk i writes the output rows of its tile rows r0.. only.
                unsafe { run_chunk(&g, x, u, out_addr as *mut E, store, r0..(r0 + per).min(rows), v, m, false) }
            })
        });
    } else {
        let per = rows.min(mem_rows);
        let (mut v, mut m) = E::with_scratch(|s| (std::mem::take(&mut s.col), std::mem::take(&mut s.tmp)));
        for r0 in (0..rows).step_by(per) {
            // SAFETY: one chunk at a time, each writing the output rows of its tile rows.
            unsafe { run_chunk(&g, x, u, out_addr as *mut E, store, r0..(r0 + per).min(rows), &mut v, &mut m, true) }
        }
        E::with_scratch(|s| (s.col, s.tmp) = (v, m));
    }
    E::with_scratch(|s| s.winograd_u = u_buf);
}

/// Tile rows `rows` (row `r` is tile row `r % th` of image `r / th`): input transform into `V`
/// (`[c][xi][t]`), the 16 GEMMs into `M` (`[o][xi][t]`), inverse transform into the output.
///
/// # Safety
/// `out` holds the op's output (checked by [`forward`]); no other thread writes the output rows
/// of these tile rows meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_chunk<E: Real>(
    g: &Geom,
    x: &[E],
    u: &[E],
    out: *mut E,
    store: Store<E>,
    rows: std::ops::Range<usize>,
    v: &mut Vec<E>,
    m: &mut Vec<E>,
    parallel: bool,
) {
    let tc = rows.len() * g.tw;
    let v = grown(v, g.c * 16 * tc);
    let m = grown(m, g.o * 16 * tc);
    let input = |c: usize, vc: &mut [E]| {
        let mut lines = InputLines::new();
        wide!(for r in rows.clone() {
            input_tile_row(g, x, c, r, &mut vc[(r - rows.start) * g.tw..], tc, &mut lines);
        })
    };
    if parallel {
        v.par_chunks_mut(16 * tc).enumerate().for_each(|(c, vc)| input(c, vc));
    } else {
        v.chunks_mut(16 * tc).enumerate().for_each(|(c, vc)| input(c, vc));
    }
    // M[xi] (o x tc, row stride 16 tc) = U[xi] (o x c, row stride 16 c) * V[xi] (c x tc, row
    // stride 16 tc): the 16 GEMMs write disjoint elements of m.
    assert!(u.len() >= g.o * 16 * g.c);
    let (m_addr, v_addr, u_addr) = (m.as_mut_ptr() as usize, v.as_ptr() as usize, u.as_ptr() as usize);
    let gemm = |xi: usize| {
        // SAFETY: m, u and v hold [o|c][16][tc|c] (grown and asserted above); GEMM xi writes
        // column block xi of m's rows only, reads u and v.
        unsafe {
            matmul(
                (g.o, tc, g.c),
                (m_addr as *mut E).add(xi * tc),
                16 * tc,
                false,
                (u_addr as *const E).add(xi * g.c),
                (16 * g.c, 1),
                (v_addr as *const E).add(xi * tc),
                (16 * tc, 1),
                false,
            )
        }
    };
    if parallel {
        (0..16).into_par_iter().for_each(gemm);
    } else {
        (0..16).for_each(gemm);
    }
    let m = &*m;
    let out_addr = out as usize;
    let output = |o: usize| {
        let mut lines = [[E::ZERO; 2 * SEG]; 2];
        wide!(for r in rows.clone() {
            let mo = &m[o * 16 * tc + (r - rows.start) * g.tw..];
            // SAFETY: the caller's contract: these output rows are this chunk's alone.
            unsafe { output_tile_row(g, mo, tc, out_addr as *mut E, o, r, store, &mut lines) };
        })
    };
    if parallel {
        (0..g.o).into_par_iter().for_each(output);
    } else {
        (0..g.o).for_each(output);
    }
}

/// `u[o][xi][c] = (G g G^T)[xi]` for each 3x3 kernel `g = w[o, c]`, with
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`.
fn transform_weights<E: Real>(g: &Geom, w: &[E], u: &mut [E]) {
    u.par_chunks_mut(16 * g.c).enumerate().for_each(|(o, uo)| {
        let wo = &w[o * g.c * 9..][..g.c * 9];
        let mut taps = [[E::ZERO; SEG]; 9];
        for c0 in (0..g.c).step_by(SEG) {
            let n = SEG.min(g.c - c0);
            // The segment's kernels transposed to [tap][c], so the transform runs along c.
            for (j, kc) in wo[c0 * 9..][..n * 9].chunks_exact(9).enumerate() {
                for t in 0..9 {
                    taps[t][j] = kc[t];
                }
            }
            wide!(transform_kernels(&taps, n, &mut uo[c0..], g.c));
        }
    });
}

/// [`transform_weights`] of `n` kernels given as `taps[tap][j]`, into `u[xi * stride + j]`.
#[inline(always)]
fn transform_kernels<E: Real>(taps: &[[E; SEG]; 9], n: usize, u: &mut [E], stride: usize) {
    let half = E::from_f64_lossy(0.5);
    // G g: row 0 is g's row 0, rows 1 and 2 half the sum and difference, row 3 g's row 2; then
    // each of those rows times G^T the same way.
    let gt = |p: E, q: E, r: E| [p, (p + q + r) * half, (p - q + r) * half, r];
    for j in 0..n {
        let col = |k: usize| gt(taps[k][j], taps[3 + k][j], taps[6 + k][j]);
        let (c0, c1, c2) = (col(0), col(1), col(2));
        for a in 0..4 {
            let row = gt(c0[a], c1[a], c2[a]);
            for (b, v) in row.into_iter().enumerate() {
                u[(a * 4 + b) * stride + j] = v;
            }
        }
    }
}

/// One channel's input rows of a tile row, split into even and odd columns (see
/// [`input_tile_row`]); reused across tile rows.
struct InputLines<E> {
    even: [[E; SEG + 1]; 4],
    odd: [[E; SEG + 1]; 4],
}

impl<E: Real> InputLines<E> {
    fn new() -> Self {
        InputLines { even: [[E::ZERO; SEG + 1]; 4], odd: [[E::ZERO; SEG + 1]; 4] }
    }
}

/// The input transform of one tile row `r` of channel `c`: `V[xi][t] = (B^T d B)[xi]` for each
/// tile's 4x4 input `d` (zero outside the image), with `B^T = [[1, 0, -1, 0], [0, 1, 1, 0],
/// [0, -1, 1, 0], [0, 1, 0, -1]]`. `vc` is this channel's `[16][tc]` from the row's first tile.
#[inline(always)]
fn input_tile_row<E: Real>(g: &Geom, x: &[E], c: usize, r: usize, vc: &mut [E], tc: usize, lines: &mut InputLines<E>) {
    let (b, ty) = (r / g.th, r % g.th);
    let plane = &x[g.in_plane(b, c)..][..g.h * g.w];
    for tx0 in (0..g.tw).step_by(SEG) {
        let n = SEG.min(g.tw - tx0);
        // Tile j of the segment reads columns 2 (tx0 + j) - pad + 0..4 of its 4 rows: even[j],
        // odd[j], even[j + 1], odd[j + 1].
        let col0 = (2 * tx0) as isize - g.pad as isize;
        for i in 0..4 {
            let (even, odd) = (&mut lines.even[i][..=n], &mut lines.odd[i][..=n]);
            let y = (2 * ty + i) as isize - g.pad as isize;
            if y < 0 || y >= g.h as isize {
                even.fill(E::ZERO);
                odd.fill(E::ZERO);
                continue;
            }
            let row = &plane[y as usize * g.w..][..g.w];
            let at = |xx: isize| if xx >= 0 && (xx as usize) < g.w { row[xx as usize] } else { E::ZERO };
            // Tiles whose columns all lie in the row are copied without checks, the edges with.
            let lo = ((-col0).max(0) as usize).div_ceil(2).min(n + 1);
            let hi = ((g.w as isize - col0) / 2).clamp(lo as isize, n as isize + 1) as usize;
            for j in (0..lo).chain(hi..=n) {
                even[j] = at(col0 + 2 * j as isize);
                odd[j] = at(col0 + 2 * j as isize + 1);
            }
            let src = &row[(col0 + 2 * lo as isize) as usize..][..2 * (hi - lo)];
            for ((pair, e), o) in src.chunks_exact(2).zip(&mut even[lo..hi]).zip(&mut odd[lo..hi]) {
                *e = pair[0];
                *o = pair[1];
            }
        }
        transform_inputs(lines, n, &mut vc[tx0..], tc);
    }
}

/// Tiles per block of the transforms' inner loops: fixed-size arrays, which the compiler turns
/// into whole-vector operations (with slices of run-time length and sixteen output streams it
/// could not rule out aliasing and kept them scalar).
const LANES: usize = 16;

/// `dst = src` for the shorter's length: a whole block as one fixed-size copy (vector moves,
/// where `copy_from_slice` of a run-time length calls `memmove`).
#[inline(always)]
fn copy_lanes<E: Real>(dst: &mut [E], src: &[E]) {
    match (<&mut [E; LANES]>::try_from(&mut *dst), <&[E; LANES]>::try_from(src)) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => {
            let len = dst.len().min(src.len());
            dst[..len].iter_mut().zip(&src[..len]).for_each(|(d, &s)| *d = s);
        }
    }
}

/// `B^T d B` of `n` tiles from their rows' even and odd columns, into `v[xi * tc + j]`.
#[inline(always)]
fn transform_inputs<E: Real>(lines: &InputLines<E>, n: usize, v: &mut [E], tc: usize) {
    let mut h = [[[E::ZERO; LANES]; 4]; 4];
    let mut block = [[E::ZERO; LANES]; 16];
    for j0 in (0..n).step_by(LANES) {
        // Lanes j0.. of a line, shifted by `off` (j0 + 1 + LANES <= SEG + 1: j0 < n <= SEG).
        let lanes = |a: &[E; SEG + 1], off: usize| -> [E; LANES] { a[j0 + off..][..LANES].try_into().unwrap() };
        // d B per input row i: columns d0 - d2, d1 + d2, d2 - d1, d1 - d3.
        for (i, hi) in h.iter_mut().enumerate() {
            let (d0, d1) = (lanes(&lines.even[i], 0), lanes(&lines.odd[i], 0));
            let (d2, d3) = (lanes(&lines.even[i], 1), lanes(&lines.odd[i], 1));
            for l in 0..LANES {
                hi[0][l] = d0[l] - d2[l];
                hi[1][l] = d1[l] + d2[l];
                hi[2][l] = d2[l] - d1[l];
                hi[3][l] = d1[l] - d3[l];
            }
        }
        // B^T down the rows: h0 - h2, h1 + h2, h2 - h1, h1 - h3.
        for col in 0..4 {
            for l in 0..LANES {
                block[col][l] = h[0][col][l] - h[2][col][l];
                block[4 + col][l] = h[1][col][l] + h[2][col][l];
                block[8 + col][l] = h[2][col][l] - h[1][col][l];
                block[12 + col][l] = h[1][col][l] - h[3][col][l];
            }
        }
        let len = LANES.min(n - j0);
        for (xi, row) in block.iter().enumerate() {
            copy_lanes(&mut v[xi * tc + j0..][..len], row);
        }
    }
}

/// The inverse transform of one tile row `r` of output channel `o`: the 2x2 outputs
/// `A^T M A` of each tile, `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`, from `mo` (this channel's
/// `[16][tc]` from the row's first tile), stored into the output as `store` says. `lines` holds
/// the two output rows of a segment.
///
/// # Safety
/// `out` holds the op's output; nothing else accesses these output rows meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_tile_row<E: Real>(
    g: &Geom,
    mo: &[E],
    tc: usize,
    out: *mut E,
    o: usize,
    r: usize,
    store: Store<E>,
    lines: &mut [[E; 2 * SEG]; 2],
) {
    let (b, ty) = (r / g.th, r % g.th);
    for tx0 in (0..g.tw).step_by(SEG) {
        let n = SEG.min(g.tw - tx0);
        transform_outputs(&mo[tx0..], n, tc, lines);
        for (dy, line) in lines.iter().enumerate() {
            let y = 2 * ty + dy;
            if y >= g.oh {
                break;
            }
            let x0 = 2 * tx0;
            let len = (2 * n).min(g.ow - x0);
            let at = g.out_plane(b, o) + y * g.ow + x0;
            let dst = std::slice::from_raw_parts_mut(out.add(at), len);
            let line = &line[..len];
            match store {
                Store::Write => dst.copy_from_slice(line),
                Store::Add => dst.iter_mut().zip(line).for_each(|(d, &v)| *d += v),
                Store::Epilogue { scale, shift, res, relu } => {
                    let k = scale.map_or(E::ONE, |k| k[o]);
                    let s = shift.map_or(E::ZERO, |s| s[o]);
                    let relu_if = |t: E| if relu && t <= E::ZERO { E::ZERO } else { t };
                    match res {
                        Some(res) => {
                            let res = &res[at..][..len];
                            dst.iter_mut().zip(line).zip(res).for_each(|((d, &v), &r)| *d = relu_if(v * k + s + r));
                        }
                        None => dst.iter_mut().zip(line).for_each(|(d, &v)| *d = relu_if(v * k + s)),
                    }
                }
            }
        }
    }
}

/// `A^T M A` of `n` tiles from `m[xi * tc + j]`, into the pixel pairs `(2 j, 2 j + 1)` of the
/// two output rows.
#[inline(always)]
fn transform_outputs<E: Real>(m: &[E], n: usize, tc: usize, lines: &mut [[E; 2 * SEG]; 2]) {
    let mut mb = [[E::ZERO; LANES]; 16];
    let mut px = [[E::ZERO; LANES]; 4];
    for j0 in (0..n).step_by(LANES) {
        let len = LANES.min(n - j0);
        for (xi, row) in mb.iter_mut().enumerate() {
            copy_lanes(row, &m[xi * tc + j0..][..len]);
        }
        // A^T down the rows (m0 + m1 + m2, m1 - m2 - m3 per column), then across.
        for l in 0..LANES {
            let s = |col: usize| {
                let (m0, m1, m2, m3) = (mb[col][l], mb[4 + col][l], mb[8 + col][l], mb[12 + col][l]);
                (m0 + m1 + m2, m1 - m2 - m3)
            };
            let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
            px[0][l] = s0.0 + s1.0 + s2.0;
            px[1][l] = s1.0 - s2.0 - s3.0;
            px[2][l] = s0.1 + s1.1 + s2.1;
            px[3][l] = s1.1 - s2.1 - s3.1;
        }
        for (line, (even, odd)) in lines.iter_mut().zip([(&px[0], &px[1]), (&px[2], &px[3])]) {
            for (l, pair) in line[2 * j0..][..2 * len].chunks_exact_mut(2).enumerate() {
                pair[0] = even[l];
                pair[1] = odd[l];
            }
        }
    }
}
