//! Winograd's minimal filtering for 3x3, stride-1 convs: the same outputs from fewer
//! multiplications, and from a smaller intermediate matrix than im2col's.
//!
//! Why: 3x3 stride-1 convs are 37% of ResNet-50's multiply-adds and 47% of ResNet-152's, and the
//! batched inference of both is bound by the GEMM's arithmetic (BENCHMARKS.md). Each output tile
//! of `M x M` pixels is computed from a `T x T` input tile `d`, `T = M + 2` (Lavin & Gray, "Fast
//! Algorithms for Convolutional Neural Networks", 2016):
//!
//! ```text
//! Y = A^T [ (G g G^T) .* (B^T d B) ] A      (the product .* summed over input channels)
//! ```
//!
//! so the `T * T` transformed positions `xi` of the tiles are as many independent GEMMs
//! `M[xi] (O x tiles) = U[xi] (O x C) * V[xi] (C x tiles)`, each `C` deep. F(2x2, 3x3) does 16
//! multiplies per 4 outputs where the direct conv does 36 (2.25x fewer), with coefficients 0,
//! +-1 and 1/2; F(4x4, 3x3) 36 per 16 (4x fewer), with coefficients up to 8 and 1/24, which round
//! more, so it runs only in compiled plans' inference ([`forward_fused`]). The input is read once
//! into `V` (4x or 2.25x the input: im2col writes 9x), and `M` is read once into the output.
//! Against the naive f64 loop, f32 outputs of both stay within the 2e-5 (relative to the largest
//! output) the direct conv's tests allow.
//!
//! Work is cut into chunks of whole tile rows (a row of tiles of one image), sized so a chunk's
//! `V` and `M` stay in a core's L2. With many chunks every thread takes whole chunks (transform,
//! GEMMs, inverse transform, alone); with few (a deep layer's small maps), the chunks run in turn
//! with each phase split between the threads (channels, then the GEMMs, then outputs).
//!
//! Layouts: NCHW and CNHW (compiled plans' batches), by where plane (image, channel) lies.

use rayon::prelude::*;

use super::cpu::{matmul, whole_chunks_per_thread};
use super::Conv2dOp;
use crate::real::{grown, Real};
use crate::Knob;

/// Tiles of 2x2 outputs (over all images) from which a 3x3 stride-1 conv runs as Winograd
/// (default 128; 0: always; `usize::MAX`: never). Below it the transformed weights (1.8x the
/// weights for F(2x2, 3x3), 4x for F(4x4, 3x3), computed on every call) cost more than the
/// multiplies they save: a deep layer at batch 1 has 16 tiles.
#[doc(hidden)]
pub static WINOGRAD_MIN_TILES: Knob = Knob::new(128);

/// The output tile side of compiled plans' inference convs whose maps F(4x4)'s tiles cover
/// well enough ([`F4_MIN_COVERAGE_PERCENT`]): 4 for F(4x4, 3x3), 2 for F(2x2, 3x3) everywhere
/// (training always runs F(2x2), see [`forward_fused`]).
#[doc(hidden)]
pub static WINOGRAD_TILE: Knob = Knob::new(4);

/// Outputs per 100 that F(4x4, 3x3)'s tiles must cover for compiled plans' inference to run it
/// rather than F(2x2). ResNet-50's 14x14 maps (196 outputs in 256 tile places, 77%): F(4x4)
/// 4.5-5.3 ms a 256-channel conv at batch 8, F(2x2) 5.5-6.7 (both with the transforms on whole
/// vectors; before them F(4x4) lost there). 36 multiplies per 16 tile places against F(2x2)'s 64
/// outweigh a quarter of the places left empty.
const F4_MIN_COVERAGE_PERCENT: usize = 75;

/// Bytes of transformed weights (with the copies of the weights they came from) that compiled
/// plans' inference keeps across calls (`DerivedCache`; default 256 MiB, 0: none). The transform
/// of a 256-channel conv's weights for F(4x4) took 1.0-1.2 ms of its 4.3-4.5 at batch 8; a
/// cached one costs the comparison of the weights with their copy. ResNet-50's Winograd convs
/// keep 82 MB, ResNet-152's would keep 424 MB: those past the budget are transformed per call.
#[doc(hidden)]
pub static WINOGRAD_CACHE_BYTES: Knob = Knob::new(256 << 20);

/// An entry of the cache not used in this many lookups gives way to a new one that does not fit
/// (a dropped model's): far more than the Winograd convs of one pass of any model.
const CACHE_FRESH_LOOKUPS: u64 = 1 << 12;

/// Input and output channels from which Winograd runs: with fewer, each GEMM is too shallow (or
/// too thin) to run near the GEMM's speed, and the transforms dominate.
const MIN_CHANNELS: usize = 16;

/// Transformed values per chunk aimed for when threads take whole chunks (tiles times the
/// variant's positions): 256 tiles of F(2x2) or 113 of F(4x4), so that a 64-channel layer's `V`
/// and `M` stay in a core's L2 and each GEMM still has over 100 columns.
const CHUNK_VALUES: usize = 16 * 256;

/// Upper bound on a chunk's `V` plus `M`, in elements.
const MAX_CHUNK_ELEMS: usize = 1 << 24;

/// Tiles of a row segment transformed at once (stack buffers of this many).
const SEG: usize = 64;

/// Tiles per block of the transforms' inner loops: fixed-size arrays, which the compiler turns
/// into whole-vector operations (with slices of run-time length and many output streams it could
/// not rule out aliasing and kept them scalar).
const LANES: usize = 16;

/// A block of `LANES` values, one per tile.
type Lanes<E> = [E; LANES];

/// Outputs per 100 that F(2x2, 3x3)'s tiles must cover before Winograd runs: odd output sides
/// leave a half-empty tile at each row's and column's end, whose transforms and multiplies are
/// spent for nothing. ResNet's 7x7 maps (49 outputs in 64 tile places, 77%) measured slower than
/// im2col and the GEMM at batch 8 (two 512-channel convs, 19.1-20.2 against 14.5 ms).
const MIN_COVERAGE_PERCENT: usize = 80;

/// Whether output tiles of side `tile` cover at least `percent` per 100 of their places on an
/// `oh x ow` map.
fn covers(oh: usize, ow: usize, tile: usize, percent: usize) -> bool {
    let places = oh.next_multiple_of(tile).saturating_mul(ow.next_multiple_of(tile));
    oh.saturating_mul(ow).saturating_mul(100) >= places.saturating_mul(percent)
}

/// Whether `op` runs as Winograd: a 3x3 kernel, stride 1, no dilation, one group, padding up to
/// 2, enough channels and tiles, and tiles mostly covered.
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
        && op.batch.saturating_mul(op.out_h.div_ceil(2)).saturating_mul(op.out_w.div_ceil(2))
            >= WINOGRAD_MIN_TILES.get()
        && covers(op.out_h, op.out_w, 2, MIN_COVERAGE_PERCENT)
}

/// One of the algorithms: the 1D transforms along one side of a tile, on `LANES` tiles at once.
/// A 2D transform is the 1D one down the columns, then along the rows (arrays are sized for the
/// largest variant; a variant uses the first `T` or `M` entries).
trait Variant {
    /// Output tile side.
    const M: usize;
    /// Input tile side, `M + 2`.
    const T: usize;
    /// `B^T d` of an input tile's column `d` (`T` values).
    fn input<E: Real>(d: &[Lanes<E>; 6]) -> [Lanes<E>; 6];
    /// `A^T m` of a transformed column `m` (`T` values), `M` values.
    fn output<E: Real>(m: &[Lanes<E>; 6]) -> [Lanes<E>; 4];
    /// `G g` of a kernel column `(p, q, r)`, `T` values.
    fn kernel<E: Real>(p: E, q: E, r: E) -> [E; 6];
}

/// F(2x2, 3x3): `B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`,
/// `G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`,
/// `A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`: coefficients 0, +-1 and 1/2, no rounding of its own.
struct F2;

impl Variant for F2 {
    const M: usize = 2;
    const T: usize = 4;

    #[inline(always)]
    fn input<E: Real>(d: &[Lanes<E>; 6]) -> [Lanes<E>; 6] {
        let mut t = [[E::ZERO; LANES]; 6];
        for l in 0..LANES {
            let (d0, d1, d2, d3) = (d[0][l], d[1][l], d[2][l], d[3][l]);
            t[0][l] = d0 - d2;
            t[1][l] = d1 + d2;
            t[2][l] = d2 - d1;
            t[3][l] = d1 - d3;
        }
        t
    }

    #[inline(always)]
    fn output<E: Real>(m: &[Lanes<E>; 6]) -> [Lanes<E>; 4] {
        let mut y = [[E::ZERO; LANES]; 4];
        for l in 0..LANES {
            let (m0, m1, m2, m3) = (m[0][l], m[1][l], m[2][l], m[3][l]);
            y[0][l] = m0 + m1 + m2;
            y[1][l] = m1 - m2 - m3;
        }
        y
    }

    #[inline(always)]
    fn kernel<E: Real>(p: E, q: E, r: E) -> [E; 6] {
        let half = E::from_f64_lossy(0.5);
        [p, (p + q + r) * half, (p - q + r) * half, r, E::ZERO, E::ZERO]
    }
}

/// F(4x4, 3x3) (Lavin & Gray's matrices): `B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
/// [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]`,
/// `G = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6], [1/24, 1/12, 1/6],
/// [1/24, -1/12, 1/6], [0, 0, 1]]`, `A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
/// [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]`: 36 multiplies per 16 outputs (the direct conv
/// does 144, F(2x2) 64), at the cost of larger coefficients (more rounding: see the tests).
struct F4;

impl Variant for F4 {
    const M: usize = 4;
    const T: usize = 6;

    #[inline(always)]
    fn input<E: Real>(d: &[Lanes<E>; 6]) -> [Lanes<E>; 6] {
        let (two, four, five) = (E::from_f64_lossy(2.0), E::from_f64_lossy(4.0), E::from_f64_lossy(5.0));
        let mut t = [[E::ZERO; LANES]; 6];
        for l in 0..LANES {
            let (d0, d1, d2, d3, d4, d5) = (d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]);
            t[0][l] = four * d0 - five * d2 + d4;
            t[1][l] = (d3 + d4) - four * (d1 + d2);
            t[2][l] = (d4 - d3) + four * (d1 - d2);
            t[3][l] = (d4 - d2) + two * (d3 - d1);
            t[4][l] = (d4 - d2) - two * (d3 - d1);
            t[5][l] = four * d1 - five * d3 + d5;
        }
        t
    }

    #[inline(always)]
    fn output<E: Real>(m: &[Lanes<E>; 6]) -> [Lanes<E>; 4] {
        let (two, four, eight) = (E::from_f64_lossy(2.0), E::from_f64_lossy(4.0), E::from_f64_lossy(8.0));
        let mut y = [[E::ZERO; LANES]; 4];
        for l in 0..LANES {
            let (m0, m5) = (m[0][l], m[5][l]);
            let (s12, d12) = (m[1][l] + m[2][l], m[1][l] - m[2][l]);
            let (s34, d34) = (m[3][l] + m[4][l], m[3][l] - m[4][l]);
            y[0][l] = m0 + s12 + s34;
            y[1][l] = d12 + two * d34;
            y[2][l] = s12 + four * s34;
            y[3][l] = d12 + eight * d34 + m5;
        }
        y
    }

    #[inline(always)]
    fn kernel<E: Real>(p: E, q: E, r: E) -> [E; 6] {
        let c = |v: f64| E::from_f64_lossy(v);
        [
            p * c(0.25),
            (p + q + r) * c(-1.0 / 6.0),
            (p - q + r) * c(-1.0 / 6.0),
            p * c(1.0 / 24.0) + q * c(1.0 / 12.0) + r * c(1.0 / 6.0),
            p * c(1.0 / 24.0) - q * c(1.0 / 12.0) + r * c(1.0 / 6.0),
            r,
        ]
    }
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
    /// Transformed positions per tile, `T * T`.
    n: usize,
    cnhw: bool,
}

impl Geom {
    fn new<V: Variant>(op: &Conv2dOp, cnhw: bool) -> Self {
        Geom {
            batch: op.batch,
            c: op.in_channels,
            o: op.out_channels,
            h: op.in_h,
            w: op.in_w,
            oh: op.out_h,
            ow: op.out_w,
            pad: op.padding,
            th: op.out_h.div_ceil(V::M),
            tw: op.out_w.div_ceil(V::M),
            n: V::T * V::T,
            cnhw,
        }
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
/// `accumulate`; activations NCHW, or CNHW when `cnhw`. Always F(2x2, 3x3): this is the conv of
/// training (forward and input gradient) and of the layer-by-layer path (see [`forward_fused`]).
pub(super) fn forward<E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], accumulate: bool) {
    forward_tiles(2, op, cnhw, x, w, out, Store::plain(accumulate))
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

impl<E> Store<'_, E> {
    /// A plain conv's store: an add into the output when `accumulate`, else a write.
    pub(crate) fn plain(accumulate: bool) -> Self {
        if accumulate {
            Store::Add
        } else {
            Store::Write
        }
    }
}

/// The conv of compiled plans' inference, storing as `store` says (their epilogue): F(4x4, 3x3)
/// where its tiles cover the map well enough (and [`WINOGRAD_TILE`] is 4), F(2x2, 3x3)
/// elsewhere. F(4x4)'s larger coefficients round more: measured on ResNet-56, its f32 weight
/// gradients were 4.1e-2 (max error over max value) off f64 where F(2x2)'s were 4.4e-3 and the
/// im2col GEMM's 1.0e-2, so training keeps F(2x2) ([`forward`]); inference outputs stay within
/// the model tests' tolerances (torchvision logits against onnxruntime, plan against layers).
pub(crate) fn forward_fused<E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>) {
    let f4 = WINOGRAD_TILE.get() == 4 && covers(op.out_h, op.out_w, 4, F4_MIN_COVERAGE_PERCENT);
    match f4 {
        true => run::<F4, E>(op, cnhw, x, w, out, store, true),
        false => run::<F2, E>(op, cnhw, x, w, out, store, true),
    }
}

/// The conv with output tiles of side `tile` (2 or 4; the tests run both).
pub(super) fn forward_tiles<E: Real>(
    tile: usize,
    op: &Conv2dOp,
    cnhw: bool,
    x: &[E],
    w: &[E],
    out: &mut [E],
    store: Store<E>,
) {
    match tile {
        4 => run::<F4, E>(op, cnhw, x, w, out, store, false),
        _ => run::<F2, E>(op, cnhw, x, w, out, store, false),
    }
}

/// The conv; with `cache`, the transformed weights come from (or go into) the derived-values
/// cache ([`WINOGRAD_CACHE_BYTES`]), else they are transformed into this thread's scratch.
fn run<V: Variant, E: Real>(op: &Conv2dOp, cnhw: bool, x: &[E], w: &[E], out: &mut [E], store: Store<E>, cache: bool) {
    let g = Geom::new::<V>(op, cnhw);
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
    let w = &w[..g.o * g.c * 9];
    let cached = if cache { cached_weights::<V, E>(&g, w) } else { None };
    let mut u_buf = E::with_scratch(|s| std::mem::take(&mut s.winograd_u));
    let u: &[E] = match &cached {
        Some(u) => u,
        None => {
            let u = grown(&mut u_buf, g.n * g.o * g.c);
            transform_weights::<V, E>(&g, w, u);
            u
        }
    };
    // Chunks write disjoint output rows (those of their own tile rows): `out` travels as an address.
    let out_addr = out.as_mut_ptr() as usize;
    let rows = g.batch * g.th;
    let mem_rows = (MAX_CHUNK_ELEMS / (g.n * (g.c + g.o) * g.tw)).max(1);
    let threads = rayon::current_num_threads().max(1);
    let small = (CHUNK_VALUES / g.n).div_ceil(g.tw).min(mem_rows);
    // A multiple of the threads, so that none waits for another's last chunk.
    let chunks = rows.div_ceil(small).next_multiple_of(threads);
    if whole_chunks_per_thread(chunks) {
        let per = rows.div_ceil(chunks);
        (0..rows.div_ceil(per)).into_par_iter().for_each(|i| {
            let r0 = i * per;
            E::with_scratch(|s| {
                let (v, m) = (&mut s.col, &mut s.tmp);
                // SAFETY: chunk i writes the output rows of its tile rows r0.. only.
                unsafe { run_chunk::<V, E>(&g, x, u, out_addr as *mut E, store, r0..(r0 + per).min(rows), v, m, false) }
            })
        });
    } else {
        let per = rows.min(mem_rows);
        let (mut v, mut m) = E::with_scratch(|s| (std::mem::take(&mut s.col), std::mem::take(&mut s.tmp)));
        for r0 in (0..rows).step_by(per) {
            let chunk = r0..(r0 + per).min(rows);
            // SAFETY: one chunk at a time, each writing the output rows of its tile rows.
            unsafe { run_chunk::<V, E>(&g, x, u, out_addr as *mut E, store, chunk, &mut v, &mut m, true) }
        }
        E::with_scratch(|s| (s.col, s.tmp) = (v, m));
    }
    E::with_scratch(|s| s.winograd_u = u_buf);
}

/// `w`'s transformed weights from the cache, or transformed now and kept there if they fit its
/// budget; `None` when they do not (or the budget is 0).
fn cached_weights<V: Variant, E: Real>(g: &Geom, w: &[E]) -> Option<std::sync::Arc<Vec<E>>> {
    let budget = WINOGRAD_CACHE_BYTES.get();
    let len = g.n * g.o * g.c;
    let bytes = (len + w.len()).saturating_mul(std::mem::size_of::<E>());
    if budget == 0 || bytes > budget {
        return None;
    }
    // The layout of u, [o][xi][c], also depends on how w's length splits into o and c.
    let tag = [V::M, g.c];
    if let Some(u) = E::with_derived(|cache| cache.get(w, tag)) {
        return Some(u);
    }
    // Past the budget: transformed into the scratch as without the cache (no allocation per call).
    if !E::with_derived(|cache| cache.make_room(bytes, budget, CACHE_FRESH_LOOKUPS)) {
        return None;
    }
    let mut u = vec![E::ZERO; len];
    transform_weights::<V, E>(g, w, &mut u);
    let u = std::sync::Arc::new(u);
    E::with_derived(|cache| cache.insert(w, tag, u.clone(), budget, CACHE_FRESH_LOOKUPS));
    Some(u)
}

/// Tile rows `rows` (row `r` is tile row `r % th` of image `r / th`): input transform into `V`
/// (`[c][xi][t]`), the `n` GEMMs into `M` (`[o][xi][t]`), inverse transform into the output.
///
/// # Safety
/// `out` holds the op's output (checked by [`run`]); no other thread writes the output rows of
/// these tile rows meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_chunk<V: Variant, E: Real>(
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
    let (n, tc) = (g.n, rows.len() * g.tw);
    let v = grown(v, g.c * n * tc);
    let m = grown(m, g.o * n * tc);
    let input = |c: usize, vc: &mut [E]| {
        let mut tiles = InputTiles::new();
        wide!(for t0 in (0..tc).step_by(SEG) {
            let n = SEG.min(tc - t0);
            gather_inputs::<V, E>(g, x, c, rows.start, t0, n, &mut tiles);
            transform_inputs::<V, E>(&tiles, n, &mut vc[t0..], tc);
        })
    };
    if parallel {
        v.par_chunks_mut(n * tc).enumerate().for_each(|(c, vc)| input(c, vc));
    } else {
        v.chunks_mut(n * tc).enumerate().for_each(|(c, vc)| input(c, vc));
    }
    // M[xi] (o x tc, row stride n tc) = U[xi] (o x c, row stride n c) * V[xi] (c x tc, row
    // stride n tc): the n GEMMs write disjoint elements of m.
    assert!(u.len() >= g.o * n * g.c);
    let (m_addr, v_addr, u_addr) = (m.as_mut_ptr() as usize, v.as_ptr() as usize, u.as_ptr() as usize);
    let gemm = |xi: usize| {
        // SAFETY: m, u and v hold [o|c][n][tc|c] (grown and asserted above); GEMM xi writes
        // column block xi of m's rows only, reads u and v.
        unsafe {
            matmul(
                (g.o, tc, g.c),
                (m_addr as *mut E).add(xi * tc),
                n * tc,
                false,
                (u_addr as *const E).add(xi * g.c),
                (n * g.c, 1),
                (v_addr as *const E).add(xi * tc),
                (n * tc, 1),
                false,
            )
        }
    };
    if parallel {
        (0..n).into_par_iter().for_each(gemm);
    } else {
        (0..n).for_each(gemm);
    }
    let m = &*m;
    let out_addr = out as usize;
    let output = |o: usize| {
        let mut lines = [[E::ZERO; 4 * SEG]; 4];
        let mo = &m[o * n * tc..][..n * tc];
        wide!(for t0 in (0..tc).step_by(SEG) {
            // SAFETY: the caller's contract: these output rows are this chunk's alone.
            unsafe {
                output_tiles::<V, E>(
                    g,
                    mo,
                    tc,
                    out_addr as *mut E,
                    o,
                    rows.start,
                    t0,
                    SEG.min(tc - t0),
                    store,
                    &mut lines,
                )
            };
        })
    };
    if parallel {
        (0..g.o).into_par_iter().for_each(output);
    } else {
        (0..g.o).for_each(output);
    }
}

/// `u[o][xi][c] = (G g G^T)[xi]` for each 3x3 kernel `g = w[o, c]`.
fn transform_weights<V: Variant, E: Real>(g: &Geom, w: &[E], u: &mut [E]) {
    u.par_chunks_mut(g.n * g.c).enumerate().for_each(|(o, uo)| {
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
            wide!(transform_kernels::<V, E>(&taps, n, &mut uo[c0..], g.c));
        }
    });
}

/// [`transform_weights`] of `n` kernels given as `taps[tap][j]`, into `u[xi * stride + j]`.
#[inline(always)]
fn transform_kernels<V: Variant, E: Real>(taps: &[[E; SEG]; 9], n: usize, u: &mut [E], stride: usize) {
    for j in 0..n {
        // G g (down each kernel column), then each row of it times G^T.
        let col = |k: usize| V::kernel(taps[k][j], taps[3 + k][j], taps[6 + k][j]);
        let (c0, c1, c2) = (col(0), col(1), col(2));
        for a in 0..V::T {
            let row = V::kernel(c0[a], c1[a], c2[a]);
            for (b, &v) in row[..V::T].iter().enumerate() {
                u[(a * V::T + b) * stride + j] = v;
            }
        }
    }
}

/// The `T x T` inputs of up to `SEG` tiles of one channel: `cols[i][q][k]` is row `i`, column
/// `q` of tile `k`'s input (zero outside the image). The tiles are consecutive in the chunk's
/// order (tile rows one after another), so the transforms run on whole vectors of tiles even
/// where a row holds few tiles (7 on ResNet-50's 14x14 and 28x28 maps: with a transform per row,
/// most of each vector went unused).
struct InputTiles<E> {
    cols: [[[E; SEG]; 6]; 6],
}

impl<E: Real> InputTiles<E> {
    fn new() -> Self {
        InputTiles { cols: [[[E::ZERO; SEG]; 6]; 6] }
    }
}

/// Gathers into `tiles` the inputs of channel `c`'s tiles `t0..t0 + n` of the chunk that starts
/// at tile row `r0` (chunk tile `t` is column `t % tw` of tile row `r0 + t / tw`; row `r` is tile
/// row `r % th` of image `r / th`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn gather_inputs<V: Variant, E: Real>(
    g: &Geom,
    x: &[E],
    c: usize,
    r0: usize,
    t0: usize,
    n: usize,
    tiles: &mut InputTiles<E>,
) {
    let (m, t) = (V::M, V::T);
    let mut k = 0;
    while k < n {
        // A run of tiles on one tile row.
        let (r, tx0) = (r0 + (t0 + k) / g.tw, (t0 + k) % g.tw);
        let run = (g.tw - tx0).min(n - k);
        let (b, ty) = (r / g.th, r % g.th);
        let plane = &x[g.in_plane(b, c)..][..g.h * g.w];
        // Tile j of the run reads columns col0 + M j + 0..T of its T rows.
        let col0 = (m * tx0) as isize - g.pad as isize;
        // Tiles whose T columns lie in the row, [lo, hi), are copied without checks.
        let lo = ((-col0).max(0) as usize).div_ceil(m).min(run);
        let room = g.w as isize - col0 - t as isize;
        let hi = if room >= 0 { room as usize / m + 1 } else { 0 }.clamp(lo, run);
        for (i, rows) in tiles.cols[..t].iter_mut().enumerate() {
            let y = (m * ty + i) as isize - g.pad as isize;
            if y < 0 || y >= g.h as isize {
                rows[..t].iter_mut().for_each(|q| q[k..k + run].fill(E::ZERO));
                continue;
            }
            let row = &plane[y as usize * g.w..][..g.w];
            let at = |xx: isize| if xx >= 0 && (xx as usize) < g.w { row[xx as usize] } else { E::ZERO };
            for j in (0..lo).chain(hi..run) {
                for (q, lane) in rows[..t].iter_mut().enumerate() {
                    lane[k + j] = at(col0 + (m * j + q) as isize);
                }
            }
            if hi > lo {
                // Column q of tiles lo..hi: every M-th value of the row from column q.
                let src = &row[(col0 + (m * lo) as isize) as usize..][..m * (hi - lo - 1) + t];
                for (q, lane) in rows[..t].iter_mut().enumerate() {
                    for (d, s) in lane[k + lo..k + hi].iter_mut().zip(src[q..].iter().step_by(m)) {
                        *d = *s;
                    }
                }
            }
        }
        k += run;
    }
}

/// `dst = src` for the shorter's length: a whole block as one fixed-size copy (vector moves,
/// where `copy_from_slice` of a run-time length calls `memmove`).
#[inline(always)]
fn copy_lanes<E: Real>(dst: &mut [E], src: &[E]) {
    match (<&mut Lanes<E>>::try_from(&mut *dst), <&Lanes<E>>::try_from(src)) {
        (Ok(d), Ok(s)) => *d = *s,
        _ => {
            let len = dst.len().min(src.len());
            dst[..len].iter_mut().zip(&src[..len]).for_each(|(d, &s)| *d = s);
        }
    }
}

/// `B^T d B` of the `n` tiles gathered in `tiles`, into `v[xi * tc + j]`.
#[inline(always)]
fn transform_inputs<V: Variant, E: Real>(tiles: &InputTiles<E>, n: usize, v: &mut [E], tc: usize) {
    let t = V::T;
    let mut rows = [[[E::ZERO; LANES]; 6]; 6];
    for j0 in (0..n).step_by(LANES) {
        // Lanes j0.. of column q of row i (j0 + LANES <= SEG: j0 < n <= SEG, SEG % LANES == 0).
        let lanes = |i: usize, q: usize| -> Lanes<E> { tiles.cols[i][q][j0..][..LANES].try_into().unwrap() };
        // d B along each input row i (B^T of the row's T values, as a column).
        for (i, row) in rows[..t].iter_mut().enumerate() {
            let d: [Lanes<E>; 6] = std::array::from_fn(|q| if q < t { lanes(i, q) } else { [E::ZERO; LANES] });
            *row = V::input(&d);
        }
        // B^T down each column b of that.
        let len = LANES.min(n - j0);
        for b in 0..t {
            let col: [Lanes<E>; 6] = std::array::from_fn(|i| rows[i][b]);
            let out = V::input(&col);
            for (a, vals) in out[..t].iter().enumerate() {
                copy_lanes(&mut v[(a * t + b) * tc + j0..][..len], vals);
            }
        }
    }
}

/// The inverse transform of output channel `o`'s tiles `t0..t0 + n` of the chunk that starts at
/// tile row `r0` (see [`gather_inputs`]): the `M x M` outputs `A^T M A` of each tile from `mo`
/// (this channel's `[n][tc]`), stored into the output as `store` says. `lines` holds the `M`
/// output rows of the tiles, one tile after another; a run of tiles on one tile row is contiguous
/// there and in the output.
///
/// # Safety
/// `out` holds the op's output; nothing else accesses these output rows meanwhile.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn output_tiles<V: Variant, E: Real>(
    g: &Geom,
    mo: &[E],
    tc: usize,
    out: *mut E,
    o: usize,
    r0: usize,
    t0: usize,
    n: usize,
    store: Store<E>,
    lines: &mut [[E; 4 * SEG]; 4],
) {
    let m = V::M;
    transform_outputs::<V, E>(&mo[t0..], n, tc, lines);
    let mut k = 0;
    while k < n {
        let (r, tx0) = (r0 + (t0 + k) / g.tw, (t0 + k) % g.tw);
        let run = (g.tw - tx0).min(n - k);
        let (b, ty) = (r / g.th, r % g.th);
        for (dy, line) in lines[..m].iter().enumerate() {
            let y = m * ty + dy;
            if y >= g.oh {
                break;
            }
            let x0 = m * tx0;
            let len = (m * run).min(g.ow - x0);
            let at = g.out_plane(b, o) + y * g.ow + x0;
            let dst = std::slice::from_raw_parts_mut(out.add(at), len);
            let line = &line[m * k..][..len];
            match store {
                Store::Write => dst.copy_from_slice(line),
                Store::Add => dst.iter_mut().zip(line).for_each(|(d, &v)| *d += v),
                Store::Epilogue { scale, shift, res, relu } => {
                    let mul = scale.map_or(E::ONE, |k| k[o]);
                    let add = shift.map_or(E::ZERO, |s| s[o]);
                    let relu_if = |t: E| if relu && t <= E::ZERO { E::ZERO } else { t };
                    match res {
                        Some(res) => {
                            let res = &res[at..][..len];
                            dst.iter_mut().zip(line).zip(res).for_each(|((d, &v), &r)| *d = relu_if(v * mul + add + r));
                        }
                        None => dst.iter_mut().zip(line).for_each(|(d, &v)| *d = relu_if(v * mul + add)),
                    }
                }
            }
        }
        k += run;
    }
}

/// `A^T M A` of `n` tiles from `m[xi * tc + j]`, into pixels `M j + 0..M` of the `M` output rows.
#[inline(always)]
fn transform_outputs<V: Variant, E: Real>(m: &[E], n: usize, tc: usize, lines: &mut [[E; 4 * SEG]; 4]) {
    let (ms, t) = (V::M, V::T);
    let mut cols = [[[E::ZERO; LANES]; 4]; 6];
    for j0 in (0..n).step_by(LANES) {
        let len = LANES.min(n - j0);
        // A^T down each column b.
        for (b, cb) in cols[..t].iter_mut().enumerate() {
            let mut col = [[E::ZERO; LANES]; 6];
            for (a, lane) in col[..t].iter_mut().enumerate() {
                copy_lanes(lane, &m[(a * t + b) * tc + j0..][..len]);
            }
            *cb = V::output(&col);
        }
        // Then along each output row dy.
        for (dy, line) in lines[..ms].iter_mut().enumerate() {
            let row: [Lanes<E>; 6] = std::array::from_fn(|b| cols[b][dy]);
            let px = V::output(&row);
            for (l, group) in line[ms * j0..][..ms * len].chunks_exact_mut(ms).enumerate() {
                for (dx, p) in group.iter_mut().enumerate() {
                    *p = px[dx][l];
                }
            }
        }
    }
}
