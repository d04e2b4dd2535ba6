//! Pooling on the CPU: one rayon task per (batch, channel) plane. Instantiated here for `f32`
//! and `f64` so the loops are optimised in this crate, not left generic for the caller.

use dfdx::tensor::{Cpu, CpuError};
use num_traits::Float;
use rayon::prelude::*;

use crate::kernel_check::check_lens;

use super::{Pool2dKernel, Pool2dOp, PoolKind};

/// The input rows or columns a window covers: `[lo, hi)` clipped to `[0, len)`.
#[inline]
fn window(out_index: usize, op: &Pool2dOp, len: usize) -> (usize, usize) {
    let start = (out_index * op.stride) as isize - op.padding as isize;
    let end = start + op.kernel as isize;
    (start.max(0) as usize, (end.max(0) as usize).min(len))
}

/// The flat index of the window's maximum: the first one in row-major order, except that a NaN
/// wins (and a later NaN wins over an earlier one), as PyTorch's CPU kernel does.
#[inline]
fn argmax<E: Float>(plane: &[E], w: usize, (y0, y1): (usize, usize), (x0, x1): (usize, usize)) -> usize {
    let mut best = y0 * w + x0;
    let mut max = E::neg_infinity();
    for y in y0..y1 {
        for x in x0..x1 {
            let v = plane[y * w + x];
            if v > max || v.is_nan() {
                max = v;
                best = y * w + x;
            }
        }
    }
    best
}

/// The larger of `m` and `v`, a NaN winning: max pooling's value (see [`argmax`]).
#[inline(always)]
fn nan_max<E: Float>(m: E, v: E) -> E {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// Input rows up to which max pooling's forward pass runs separably, from a row buffer on the
/// stack.
const SEPARABLE_MAX_W: usize = 256;

/// Max pooling's values (no argmax): per output row, the column maxima over the window's rows
/// (a pass over whole rows, which vectorises), then the maxima over each window's columns. Every
/// window gets the same value as [`argmax`]'s element (the maximum, or a NaN if one is there);
/// only which of two equal values (`0.0` and `-0.0`) is taken may differ. Twice as fast as the
/// argmax loop on ResNet's 3x3 stride-2 stem pool.
fn max_plane_separable<E: Float>(op: &Pool2dOp, inp: &[E], out: &mut [E]) {
    let mut colmax = [E::neg_infinity(); SEPARABLE_MAX_W];
    let colmax = &mut colmax[..op.in_w];
    // Output columns whose windows lie inside the row: [lo, hi). For ResNet's 3x3 stride-2 pool
    // their maxima run without the clipping of `window`, the kernel's size and stride constants
    // (the stem's: 5.2 -> 2.4 ms at batch 8 with the clipped fold for every column).
    let lo = op.padding.div_ceil(op.stride).min(op.out_w);
    let reach = op.in_w + op.padding;
    let hi = if reach >= op.kernel { (reach - op.kernel) / op.stride + 1 } else { 0 }.clamp(lo, op.out_w);
    let inner = if (op.kernel, op.stride) == (3, 2) { lo..hi } else { 0..0 };
    for oy in 0..op.out_h {
        let (y0, y1) = window(oy, op, op.in_h);
        wide!({
            colmax.fill(E::neg_infinity());
            for y in y0..y1 {
                for (m, &v) in colmax.iter_mut().zip(&inp[y * op.in_w..][..op.in_w]) {
                    *m = nan_max(*m, v);
                }
            }
        });
        let row = &mut out[oy * op.out_w..][..op.out_w];
        for ox in (0..inner.start).chain(inner.end..op.out_w) {
            let (x0, x1) = window(ox, op, op.in_w);
            row[ox] = window_max(&colmax[x0..x1]);
        }
        if !inner.is_empty() {
            // Window `inner.start` starts inside the row (lo * stride >= padding).
            let first = inner.start * 2 - op.padding;
            wide!(window_maxima::<E, 3, 2>(&colmax[first..], &mut row[inner.clone()]));
        }
    }
}

/// The largest of `vals`, a NaN winning ([`nan_max`]); -inf for none.
#[inline(always)]
fn window_max<E: Float>(vals: &[E]) -> E {
    vals.iter().fold(E::neg_infinity(), |m, &v| nan_max(m, v))
}

/// `out[i]` = the maximum of `K` values of `cols` from `S i` (windows inside `cols`).
#[inline(always)]
fn window_maxima<E: Float, const K: usize, const S: usize>(cols: &[E], out: &mut [E]) {
    let need = out.len().saturating_sub(1) * S + K;
    let cols = &cols[..need.min(cols.len())];
    for (i, o) in out.iter_mut().enumerate() {
        let w: &[E; K] = cols[i * S..][..K].try_into().expect("window inside the row");
        *o = window_max(w);
    }
}

fn forward_plane<E: Float>(kind: PoolKind, op: &Pool2dOp, inp: &[E], out: &mut [E]) {
    if kind == PoolKind::Max && op.in_w <= SEPARABLE_MAX_W {
        return max_plane_separable(op, inp, out);
    }
    // count_include_pad: windows never reach past the padded border when ceil_mode is off, so
    // every window divides by the full kernel area.
    let inv_area = E::one() / E::from(op.kernel * op.kernel).unwrap_or_else(E::one);
    for oy in 0..op.out_h {
        let rows = window(oy, op, op.in_h);
        for ox in 0..op.out_w {
            let cols = window(ox, op, op.in_w);
            out[oy * op.out_w + ox] = match kind {
                PoolKind::Max => inp[argmax(inp, op.in_w, rows, cols)],
                PoolKind::Avg => {
                    let mut sum = E::zero();
                    for y in rows.0..rows.1 {
                        for &v in &inp[y * op.in_w + cols.0..y * op.in_w + cols.1] {
                            sum = sum + v;
                        }
                    }
                    sum * inv_area
                }
            };
        }
    }
}

fn backward_plane<E: Float + std::ops::AddAssign>(
    kind: PoolKind,
    op: &Pool2dOp,
    inp: &[E],
    grad_inp: &mut [E],
    grad_out: &[E],
) {
    let inv_area = E::one() / E::from(op.kernel * op.kernel).unwrap_or_else(E::one);
    for oy in 0..op.out_h {
        let rows = window(oy, op, op.in_h);
        for ox in 0..op.out_w {
            let cols = window(ox, op, op.in_w);
            let g = grad_out[oy * op.out_w + ox];
            match kind {
                PoolKind::Max => grad_inp[argmax(inp, op.in_w, rows, cols)] += g,
                PoolKind::Avg => {
                    let share = g * inv_area;
                    for y in rows.0..rows.1 {
                        for gi in &mut grad_inp[y * op.in_w + cols.0..y * op.in_w + cols.1] {
                            *gi += share;
                        }
                    }
                }
            }
        }
    }
}

pub(crate) fn forward<E: Float + Send + Sync>(kind: PoolKind, op: &Pool2dOp, inp: &[E], out: &mut [E]) {
    let in_plane = op.in_h * op.in_w;
    let out_plane = op.out_h * op.out_w;
    if in_plane == 0 || out_plane == 0 {
        return;
    }
    out.par_chunks_mut(out_plane).zip(inp.par_chunks(in_plane)).for_each(|(o, i)| forward_plane(kind, op, i, o));
}

pub(crate) fn backward<E: Float + Send + Sync + std::ops::AddAssign>(
    kind: PoolKind,
    op: &Pool2dOp,
    inp: &[E],
    grad_inp: &mut [E],
    grad_out: &[E],
) {
    let in_plane = op.in_h * op.in_w;
    let out_plane = op.out_h * op.out_w;
    if in_plane == 0 || out_plane == 0 {
        return;
    }
    grad_inp
        .par_chunks_mut(in_plane)
        .zip(inp.par_chunks(in_plane))
        .zip(grad_out.par_chunks(out_plane))
        .for_each(|((gi, i), go)| backward_plane(kind, op, i, gi, go));
}

macro_rules! impl_pool2d_cpu {
    ($e:ty) => {
        impl Pool2dKernel<$e> for Cpu {
            fn pool2d_forward(
                &self,
                kind: PoolKind,
                op: &Pool2dOp,
                input: &Self::Vec,
                output: &mut Self::Vec,
            ) -> Result<(), CpuError> {
                check_lens(op.buffer_lens(), [input.len(), output.len()])?;
                forward::<$e>(kind, op, input, output);
                Ok(())
            }

            fn pool2d_backward(
                &self,
                kind: PoolKind,
                op: &Pool2dOp,
                input: &Self::Vec,
                output: &Self::Vec,
                grad_input: &mut Self::Vec,
                grad_output: &Self::Vec,
            ) -> Result<(), CpuError> {
                let lens = op.buffer_lens();
                check_lens(lens, [input.len(), output.len()])?;
                check_lens(lens, [grad_input.len(), grad_output.len()])?;
                // Max recomputes each window's argmax from the input rather than comparing with
                // the output, so ties go to the first maximum exactly as in the forward pass.
                backward::<$e>(kind, op, input, grad_input, grad_output);
                Ok(())
            }
        }
    };
}

impl_pool2d_cpu!(f32);
impl_pool2d_cpu!(f64);
