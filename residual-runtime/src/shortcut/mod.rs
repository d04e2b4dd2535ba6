//! The ResNet paper's option-A shortcut: subsample by the stride, then zero-pad channels.
//!
//! `out[b, pad_front + c, y, x] = in[b, c, y * stride, x * stride]`, every other channel 0. In
//! PyTorch: `F.pad(x[:, :, ::s, ::s], (0, 0, 0, 0, pad_front, pad_back))`, with
//! `pad_front = (out - in) / 2` and the odd channel, if any, at the back.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(test)]
mod tests;

use dfdx::shapes::{Dtype, HasShape, Shape};
use dfdx::tensor::{PutTape, SplitTape, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Device, ReshapeTo};

use crate::error::{fmt_dims, Error};
use crate::kernel_check::product;
use crate::pool::ImageShape;
use crate::storage::TensorStorage;
use crate::tape::one_mut_one_ref;

/// Everything the kernel needs to know; buffers are contiguous row-major NCHW.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubsamplePadOp {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub pad_front: usize,
    pub stride: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl SubsamplePadOp {
    /// The op for `[batch, in_channels, in_h, in_w]` -> `out_channels` at `stride`, or `None`
    /// when `out_channels < in_channels`, `stride == 0` or a spatial dim is 0.
    pub fn new(nchw: [usize; 4], out_channels: usize, stride: usize) -> Option<Self> {
        let [batch, in_channels, in_h, in_w] = nchw;
        if out_channels < in_channels || stride == 0 || in_h == 0 || in_w == 0 {
            return None;
        }
        Some(Self {
            batch,
            in_channels,
            out_channels,
            pad_front: (out_channels - in_channels) / 2,
            stride,
            in_h,
            in_w,
            // `x[::s]` keeps indices 0, s, 2s, ...: ceil(in / s) of them.
            out_h: (in_h - 1) / stride + 1,
            out_w: (in_w - 1) / stride + 1,
        })
    }

    /// The lengths of the input and output buffers this op reads and writes, or `None` when
    /// `SubsamplePadOp::new` would not build this op or a size overflows `usize`. Every kernel
    /// entry checks its buffers against these (`kernel_check.rs`).
    pub fn buffer_lens(&self) -> Option<[usize; 2]> {
        let rebuilt =
            SubsamplePadOp::new([self.batch, self.in_channels, self.in_h, self.in_w], self.out_channels, self.stride);
        if rebuilt != Some(*self) {
            return None;
        }
        Some([
            product(&[self.batch, self.in_channels, self.in_h, self.in_w])?,
            product(&[self.batch, self.out_channels, self.out_h, self.out_w])?,
        ])
    }
}

/// A device that can run the option-A shortcut. Backward **accumulates** into `grad_input`.
pub trait SubsamplePadKernel<E: Dtype>: Storage<E> + TensorStorage<E> {
    /// Writes every element of `output` (`[batch, out_channels, out_h, out_w]`), padding included.
    fn subsample_pad_forward(
        &self,
        op: &SubsamplePadOp,
        input: &Self::Vec,
        output: &mut Self::Vec,
    ) -> Result<(), Self::Err>;

    /// Adds the input's gradient (the kept pixels of the output gradient's real channels).
    fn subsample_pad_backward(
        &self,
        op: &SubsamplePadOp,
        grad_input: &mut Self::Vec,
        grad_output: &Self::Vec,
    ) -> Result<(), Self::Err>;
}

/// Subsamples `x` by `stride` and zero-pads its channels to `out_channels`. Errors name the op and
/// the expected and found shapes.
pub fn try_subsample_pad<S, E, D, T>(
    x: Tensor<S, E, D, T>,
    out_channels: usize,
    stride: usize,
) -> Result<Tensor<S::Rechanneled, E, D, T>, Error>
where
    S: ImageShape,
    E: Dtype,
    D: Device<E> + SubsamplePadKernel<E>,
    T: Tape<E, D>,
{
    let shape = *x.shape();
    let name = format!("subsample_pad(out_channels={out_channels}, stride={stride})");
    if stride == 0 {
        return Err(Error::shape(name, "stride >= 1", "stride = 0"));
    }
    let op = SubsamplePadOp::new(shape.nchw(), out_channels, stride).ok_or_else(|| {
        Error::shape(
            name.clone(),
            format!("{} with C <= {out_channels}, H >= 1 and W >= 1", S::LAYOUT),
            fmt_dims(shape.concrete().as_ref()),
        )
    })?;
    let out_shape = shape.rechanneled(out_channels, op.out_h, op.out_w);
    subsample_pad_unchecked(x, op, out_shape).map_err(Error::device)
}

/// As [`try_subsample_pad`], for callers whose types already guarantee that `op` and
/// `out_shape` fit `x` (the layer).
pub(crate) fn subsample_pad_unchecked<S, Dst, E, D, T>(
    x: Tensor<S, E, D, T>,
    op: SubsamplePadOp,
    out_shape: Dst,
) -> Result<Tensor<Dst, E, D, T>, D::Err>
where
    S: Shape,
    Dst: Shape,
    E: Dtype,
    D: Device<E> + SubsamplePadKernel<E>,
    T: Tape<E, D>,
{
    debug_assert_eq!(out_shape.num_elements(), op.batch * op.out_channels * op.out_h * op.out_w);
    let x = x.try_contiguous()?;
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let input = dev.try_storage_of(&x)?;
    let mut buf = <D as Storage<E>>::try_alloc_len(&dev, out_shape.num_elements())?;
    dev.subsample_pad_forward(&op, &input, &mut buf)?;
    let out = dev.try_tensor_from_storage(buf, out_shape)?;
    if T::OWNS_TAPE {
        // Backward needs no values, only the gradients: keep ghosts, not the buffers.
        let x_ghost = x.ghost();
        let out_ghost = out.ghost();
        tape.add_backward_op(move |grads| {
            let (grad_x, grad_out) =
                one_mut_one_ref(grads, |g| g.get_or_alloc_mut(&x_ghost), |g| g.get_or_alloc_mut(&out_ghost))?;
            dev.subsample_pad_backward(&op, grad_x, grad_out)
        });
    }
    Ok(out.put_tape(tape))
}
