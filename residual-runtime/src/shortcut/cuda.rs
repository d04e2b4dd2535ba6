//! The option-A shortcut on dfdx's `Cuda`: one thread per output element (forward) or per kept
//! input pixel (backward; each receives at most one gradient, so no atomics).

use cudarc::driver::{CudaSlice, DeviceRepr, DeviceSlice, LaunchAsync};
use dfdx::tensor::{Cuda, CudaError};

use super::{SubsamplePadKernel, SubsamplePadOp};
use crate::cuda::{launch_cfg, CudaElem, KernelSource};
use crate::kernel_check::check_lens;

pub(crate) static SOURCE: KernelSource = KernelSource::new(
    "residual_subsample_pad",
    include_str!("subsample_pad.cu"),
    &["subsample_pad_fwd_f32", "subsample_pad_bwd_f32", "subsample_pad_fwd_f64", "subsample_pad_bwd_f64"],
);

// SAFETY: `#[repr(C)]` of `usize`s, mirrored field for field by `struct SubsamplePadOp` in
// subsample_pad.cu.
unsafe impl DeviceRepr for SubsamplePadOp {}

fn forward<E: CudaElem>(op: &SubsamplePadOp, input: &CudaSlice<E>, output: &mut CudaSlice<E>) -> Result<(), CudaError> {
    check_lens(op.buffer_lens(), [input.len(), output.len()]).map_err(CudaError::Cpu)?;
    let n = op.batch * op.out_channels * op.out_h * op.out_w;
    if n == 0 {
        return Ok(());
    }
    let dev = output.device();
    let f = SOURCE.function::<E>(&dev, "subsample_pad_fwd")?;
    unsafe { f.launch(launch_cfg(n), (*op, input, output)) }?;
    Ok(())
}

fn backward<E: CudaElem>(
    op: &SubsamplePadOp,
    grad_input: &mut CudaSlice<E>,
    grad_output: &CudaSlice<E>,
) -> Result<(), CudaError> {
    check_lens(op.buffer_lens(), [grad_input.len(), grad_output.len()]).map_err(CudaError::Cpu)?;
    let n = op.batch * op.in_channels * op.out_h * op.out_w;
    if n == 0 {
        return Ok(());
    }
    let dev = grad_output.device();
    let f = SOURCE.function::<E>(&dev, "subsample_pad_bwd")?;
    unsafe { f.launch(launch_cfg(n), (*op, grad_input, grad_output)) }?;
    Ok(())
}

macro_rules! impl_subsample_pad_cuda {
    ($e:ty) => {
        impl SubsamplePadKernel<$e> for Cuda {
            fn subsample_pad_forward(
                &self,
                op: &SubsamplePadOp,
                input: &Self::Vec,
                output: &mut Self::Vec,
            ) -> Result<(), Self::Err> {
                forward::<$e>(op, input, output)
            }

            fn subsample_pad_backward(
                &self,
                op: &SubsamplePadOp,
                grad_input: &mut Self::Vec,
                grad_output: &Self::Vec,
            ) -> Result<(), Self::Err> {
                backward::<$e>(op, grad_input, grad_output)
            }
        }
    };
}
impl_subsample_pad_cuda!(f32);
impl_subsample_pad_cuda!(f64);

#[cfg(test)]
mod tests {
    #[test]
    fn nvrtc_compiles_subsample_pad_kernels() {
        crate::cuda::assert_compiles(&super::SOURCE);
    }
}
