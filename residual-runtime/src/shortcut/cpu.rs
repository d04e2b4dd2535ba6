//! The option-A shortcut on the CPU: one rayon task per output (batch, channel) plane.

use dfdx::tensor::{Cpu, CpuError};
use num_traits::Float;
use rayon::prelude::*;

use crate::kernel_check::check_lens;

use super::{SubsamplePadKernel, SubsamplePadOp};

/// The input channel that output channel `oc` copies, or `None` for a padding channel.
#[inline]
fn source_channel(op: &SubsamplePadOp, oc: usize) -> Option<usize> {
    oc.checked_sub(op.pad_front).filter(|&c| c < op.in_channels)
}

pub(crate) fn forward<E: Float + Send + Sync>(op: &SubsamplePadOp, inp: &[E], out: &mut [E]) {
    let in_plane = op.in_h * op.in_w;
    let out_plane = op.out_h * op.out_w;
    if out_plane == 0 {
        return;
    }
    out.par_chunks_mut(out_plane).enumerate().for_each(|(plane, o)| {
        let (b, oc) = (plane / op.out_channels, plane % op.out_channels);
        let Some(c) = source_channel(op, oc) else {
            // The buffer may come from dfdx's allocation cache: write the zeros explicitly.
            o.fill(E::zero());
            return;
        };
        let src = &inp[(b * op.in_channels + c) * in_plane..][..in_plane];
        for (y, row) in o.chunks_exact_mut(op.out_w).enumerate() {
            let src_row = &src[y * op.stride * op.in_w..];
            for (x, v) in row.iter_mut().enumerate() {
                *v = src_row[x * op.stride];
            }
        }
    });
}

pub(crate) fn backward<E: Float + Send + Sync + std::ops::AddAssign>(
    op: &SubsamplePadOp,
    grad_inp: &mut [E],
    grad_out: &[E],
) {
    let in_plane = op.in_h * op.in_w;
    let out_plane = op.out_h * op.out_w;
    if in_plane == 0 {
        return;
    }
    grad_inp.par_chunks_mut(in_plane).enumerate().for_each(|(plane, gi)| {
        let (b, c) = (plane / op.in_channels, plane % op.in_channels);
        let go = &grad_out[(b * op.out_channels + op.pad_front + c) * out_plane..][..out_plane];
        for (y, row) in go.chunks_exact(op.out_w).enumerate() {
            let gi_row = &mut gi[y * op.stride * op.in_w..];
            for (x, &g) in row.iter().enumerate() {
                gi_row[x * op.stride] += g;
            }
        }
    });
}

macro_rules! impl_subsample_pad_cpu {
    ($e:ty) => {
        impl SubsamplePadKernel<$e> for Cpu {
            fn subsample_pad_forward(
                &self,
                op: &SubsamplePadOp,
                input: &Self::Vec,
                output: &mut Self::Vec,
            ) -> Result<(), CpuError> {
                check_lens(op.buffer_lens(), [input.len(), output.len()])?;
                forward::<$e>(op, input, output);
                Ok(())
            }

            fn subsample_pad_backward(
                &self,
                op: &SubsamplePadOp,
                grad_input: &mut Self::Vec,
                grad_output: &Self::Vec,
            ) -> Result<(), CpuError> {
                check_lens(op.buffer_lens(), [grad_input.len(), grad_output.len()])?;
                backward::<$e>(op, grad_input, grad_output);
                Ok(())
            }
        }
    };
}

impl_subsample_pad_cpu!(f32);
impl_subsample_pad_cpu!(f64);
