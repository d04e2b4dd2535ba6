//! Max and average pooling on dfdx's `Cuda`: one thread per output (forward) or per input
//! element (backward, gathering from the windows that cover it: no atomics, the CPU's order).

use cudarc::driver::{CudaSlice, DeviceRepr, DeviceSlice, LaunchAsync};
use dfdx::tensor::{Cuda, CudaError};

use super::{Pool2dKernel, Pool2dOp, PoolKind};
use crate::cuda::{launch_cfg, CudaElem, KernelSource};
use crate::kernel_check::check_lens;

pub(crate) static SOURCE: KernelSource = KernelSource::new(
    "residual_pool2d",
    include_str!("pool2d.cu"),
    &[
        "max_pool_fwd_f32",
        "avg_pool_fwd_f32",
        "max_pool_bwd_f32",
        "avg_pool_bwd_f32",
        "max_pool_fwd_f64",
        "avg_pool_fwd_f64",
        "max_pool_bwd_f64",
        "avg_pool_bwd_f64",
    ],
);

// SAFETY: `#[repr(C)]` of `usize`s, mirrored field for field by `struct Pool2dOp` in pool2d.cu.
unsafe impl DeviceRepr for Pool2dOp {}

fn forward<E: CudaElem>(
    kind: PoolKind,
    op: &Pool2dOp,
    input: &CudaSlice<E>,
    output: &mut CudaSlice<E>,
) -> Result<(), CudaError> {
    check_lens(op.buffer_lens(), [input.len(), output.len()]).map_err(CudaError::Cpu)?;
    let n = op.batch * op.channels * op.out_h * op.out_w;
    if n == 0 {
        return Ok(());
    }
    let dev = input.device();
    let name = match kind {
        PoolKind::Max => "max_pool_fwd",
        PoolKind::Avg => "avg_pool_fwd",
    };
    let f = SOURCE.function::<E>(&dev, name)?;
    unsafe { f.launch(launch_cfg(n), (*op, input, output)) }?;
    Ok(())
}

fn backward<E: CudaElem>(
    kind: PoolKind,
    op: &Pool2dOp,
    input: &CudaSlice<E>,
    output_len: usize,
    grad_input: &mut CudaSlice<E>,
    grad_output: &CudaSlice<E>,
) -> Result<(), CudaError> {
    let lens = op.buffer_lens();
    check_lens(lens, [input.len(), output_len]).map_err(CudaError::Cpu)?;
    check_lens(lens, [grad_input.len(), grad_output.len()]).map_err(CudaError::Cpu)?;
    let n = op.batch * op.channels * op.in_h * op.in_w;
    if n == 0 || op.out_h * op.out_w == 0 {
        return Ok(());
    }
    let dev = input.device();
    match kind {
        PoolKind::Max => {
            let f = SOURCE.function::<E>(&dev, "max_pool_bwd")?;
            unsafe { f.launch(launch_cfg(n), (*op, input, grad_input, grad_output)) }?;
        }
        PoolKind::Avg => {
            let f = SOURCE.function::<E>(&dev, "avg_pool_bwd")?;
            unsafe { f.launch(launch_cfg(n), (*op, grad_input, grad_output)) }?;
        }
    }
    Ok(())
}

macro_rules! impl_pool2d_cuda {
    ($e:ty) => {
        impl Pool2dKernel<$e> for Cuda {
            fn pool2d_forward(
                &self,
                kind: PoolKind,
                op: &Pool2dOp,
                input: &Self::Vec,
                output: &mut Self::Vec,
            ) -> Result<(), Self::Err> {
                forward::<$e>(kind, op, input, output)
            }

            fn pool2d_backward(
                &self,
                kind: PoolKind,
                op: &Pool2dOp,
                input: &Self::Vec,
                output: &Self::Vec,
                grad_input: &mut Self::Vec,
                grad_output: &Self::Vec,
            ) -> Result<(), Self::Err> {
                // Max recomputes each window's argmax from the input, as the CPU kernel does, so ties
                // resolve identically on both devices.
                backward::<$e>(kind, op, input, output.len(), grad_input, grad_output)
            }
        }
    };
}
impl_pool2d_cuda!(f32);
impl_pool2d_cuda!(f64);

#[cfg(test)]
mod tests {
    #[test]
    fn nvrtc_compiles_pool2d_kernels() {
        crate::cuda::assert_compiles(&super::SOURCE);
    }
}
