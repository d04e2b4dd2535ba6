//! Conv2d on dfdx's `Cuda`: im2col + cuBLAS GEMM (forward, weight gradient, input gradient) and
//! col2im, all on the device's stream.
//!
//! A chunk of `nb` images is unfolded into `col` (`[C * K * K, nb * OH * OW]`: the images' columns
//! side by side), so each group is one large GEMM per chunk rather than one small GEMM per image:
//! ResNet's late layers have `OH * OW = 49`, which per-image GEMMs would run at a fraction of the
//! GPU. The output is produced as `[O, nb, OH * OW]` and shuffled into NCHW; the backward pass
//! shuffles the output gradient the other way, so the weight gradient is one GEMM over the whole
//! chunk that accumulates (`beta = 1`) straight into dfdx's gradient buffer. `nb` is chosen so
//! the scratch buffers stay under `MAX_SCRATCH` elements.

use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{CudaSlice, DeviceRepr, DeviceSlice, LaunchAsync};
use dfdx::tensor::{Cuda, CudaError};

use super::{Conv2dKernel, Conv2dOp};
use crate::cuda::{blas, gemm_row_major, launch_cfg, CudaElem, KernelSource};
use crate::kernel_check::check_lens;

pub(crate) static SOURCE: KernelSource = KernelSource::new(
    "residual_conv2d",
    include_str!("conv2d.cu"),
    &[
        "im2col_f32",
        "col2im_f32",
        "cbp_to_nchw_f32",
        "nchw_to_cbp_f32",
        "im2col_f64",
        "col2im_f64",
        "cbp_to_nchw_f64",
        "nchw_to_cbp_f64",
    ],
);

/// Elements in each scratch buffer (`col`, and the `[O, nb, OH * OW]` output) per chunk: 256 MiB
/// of f32. Large enough that every ResNet layer at batch 32 runs in one or two chunks.
const MAX_SCRATCH: usize = 1 << 26;

// SAFETY: `#[repr(C)]` of `usize`s, mirrored field for field by `struct Conv2dOp` in conv2d.cu.
unsafe impl DeviceRepr for Conv2dOp {}

/// Dims of the per-chunk GEMMs.
struct Plan {
    /// Rows of `col`: `C * K * K`.
    rows: usize,
    /// Rows of `col` per group: `C / groups * K * K` (the GEMMs' inner dimension).
    rows_g: usize,
    /// Output channels per group.
    out_g: usize,
    /// `OH * OW`.
    plane: usize,
    /// Images per chunk.
    nb: usize,
}

impl Plan {
    fn new(op: &Conv2dOp) -> Self {
        let kk = op.kernel * op.kernel;
        let rows = op.in_channels * kk;
        let plane = op.out_h * op.out_w;
        let per_image = rows.max(op.out_channels) * plane;
        let nb = (MAX_SCRATCH / per_image.max(1)).clamp(1, op.batch.max(1));
        Plan { rows, rows_g: op.in_per_group() * kk, out_g: op.out_channels / op.groups, plane, nb }
    }

    /// `(first image, images)` of each chunk.
    fn chunks(&self, batch: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..batch).step_by(self.nb).map(move |b0| (b0, self.nb.min(batch - b0)))
    }
}

fn forward<E: CudaElem>(
    op: &Conv2dOp,
    input: &CudaSlice<E>,
    weight: &CudaSlice<E>,
    output: &mut CudaSlice<E>,
) -> Result<(), CudaError>
where
    CudaBlas: Gemm<E>,
{
    check_lens(op.buffer_lens(), [input.len(), weight.len(), output.len()]).map_err(CudaError::Cpu)?;
    let plan = Plan::new(op);
    if op.batch == 0 || plan.plane == 0 {
        return Ok(());
    }
    let dev = input.device();
    let blas = blas(&dev)?;
    // SAFETY: every element of both scratch buffers is written (im2col, then the GEMM with
    // beta = 0) before it is read.
    let mut col = unsafe { dev.alloc::<E>(plan.rows * plan.nb * plan.plane) }?;
    let mut out_t = unsafe { dev.alloc::<E>(op.out_channels * plan.nb * plan.plane) }?;
    for (b0, nb) in plan.chunks(op.batch) {
        let cols = nb * plan.plane;
        let f = SOURCE.function::<E>(&dev, "im2col")?;
        unsafe { f.launch(launch_cfg(plan.rows * cols), (*op, b0, nb, input, &mut col)) }?;
        for g in 0..op.groups {
            let w = weight.slice(g * plan.out_g * plan.rows_g..(g + 1) * plan.out_g * plan.rows_g);
            let c = col.slice(g * plan.rows_g * cols..(g + 1) * plan.rows_g * cols);
            let mut o = out_t.slice_mut(g * plan.out_g * cols..(g + 1) * plan.out_g * cols);
            gemm_row_major(
                &blas,
                (false, false),
                (plan.out_g, cols, plan.rows_g),
                E::ONE,
                (&w, plan.rows_g),
                (&c, cols),
                E::default(),
                (&mut o, cols),
            )?;
        }
        let f = SOURCE.function::<E>(&dev, "cbp_to_nchw")?;
        let n = op.out_channels * cols;
        unsafe { f.launch(launch_cfg(n), (op.out_channels, plan.plane, b0, nb, &out_t, &mut *output)) }?;
    }
    Ok(())
}

fn backward<E: CudaElem>(
    op: &Conv2dOp,
    input: &CudaSlice<E>,
    weight: &CudaSlice<E>,
    grad_input: &mut CudaSlice<E>,
    grad_weight: &mut CudaSlice<E>,
    grad_output: &CudaSlice<E>,
) -> Result<(), CudaError>
where
    CudaBlas: Gemm<E>,
{
    let lens = op.buffer_lens();
    check_lens(lens, [input.len(), weight.len(), grad_output.len()]).map_err(CudaError::Cpu)?;
    check_lens(lens, [grad_input.len(), grad_weight.len(), grad_output.len()]).map_err(CudaError::Cpu)?;
    let plan = Plan::new(op);
    if op.batch == 0 || plan.plane == 0 {
        return Ok(());
    }
    let dev = input.device();
    let blas = blas(&dev)?;
    // SAFETY: as in `forward`; `col` is rewritten by im2col for every chunk and `gout_t` by the
    // shuffle, before any read.
    let mut col = unsafe { dev.alloc::<E>(plan.rows * plan.nb * plan.plane) }?;
    let mut gout_t = unsafe { dev.alloc::<E>(op.out_channels * plan.nb * plan.plane) }?;
    for (b0, nb) in plan.chunks(op.batch) {
        let cols = nb * plan.plane;
        let f = SOURCE.function::<E>(&dev, "im2col")?;
        unsafe { f.launch(launch_cfg(plan.rows * cols), (*op, b0, nb, input, &mut col)) }?;
        let f = SOURCE.function::<E>(&dev, "nchw_to_cbp")?;
        let n = op.out_channels * cols;
        unsafe { f.launch(launch_cfg(n), (op.out_channels, plan.plane, b0, nb, grad_output, &mut gout_t)) }?;
        for g in 0..op.groups {
            let w_range = g * plan.out_g * plan.rows_g..(g + 1) * plan.out_g * plan.rows_g;
            let col_range = g * plan.rows_g * cols..(g + 1) * plan.rows_g * cols;
            let go = gout_t.slice(g * plan.out_g * cols..(g + 1) * plan.out_g * cols);
            // grad_weight_g [O_g, C_g K K] += gout_g [O_g, cols] @ col_g^T
            {
                let c = col.slice(col_range.clone());
                let mut gw = grad_weight.slice_mut(w_range.clone());
                gemm_row_major(
                    &blas,
                    (false, true),
                    (plan.out_g, plan.rows_g, cols),
                    E::ONE,
                    (&go, cols),
                    (&c, cols),
                    E::ONE,
                    (&mut gw, plan.rows_g),
                )?;
            }
            // col_g [C_g K K, cols] = weight_g^T @ gout_g   (col_g is no longer needed: the
            // weight GEMM above reads it first, in stream order)
            let w = weight.slice(w_range);
            let mut gc = col.slice_mut(col_range);
            gemm_row_major(
                &blas,
                (true, false),
                (plan.rows_g, cols, plan.out_g),
                E::ONE,
                (&w, plan.rows_g),
                (&go, cols),
                E::default(),
                (&mut gc, cols),
            )?;
        }
        let f = SOURCE.function::<E>(&dev, "col2im")?;
        let n = nb * op.in_channels * op.in_h * op.in_w;
        unsafe { f.launch(launch_cfg(n), (*op, b0, nb, &col, &mut *grad_input)) }?;
    }
    Ok(())
}

macro_rules! impl_conv2d_cuda {
    ($e:ty) => {
        impl Conv2dKernel<$e> for Cuda {
            fn conv2d_forward(
                &self,
                op: &Conv2dOp,
                input: &Self::Vec,
                weight: &Self::Vec,
                output: &mut Self::Vec,
            ) -> Result<(), Self::Err> {
                forward::<$e>(op, input, weight, output)
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
                backward::<$e>(op, input, weight, grad_input, grad_weight, grad_output)
            }
        }
    };
}
impl_conv2d_cuda!(f32);
impl_conv2d_cuda!(f64);

#[cfg(test)]
mod tests {
    #[test]
    fn nvrtc_compiles_conv2d_kernels() {
        crate::cuda::assert_compiles(&super::SOURCE);
    }
}
