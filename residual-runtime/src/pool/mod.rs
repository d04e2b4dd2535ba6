//! 2D max and average pooling (square kernel, stride and padding; PyTorch's semantics with
//! `ceil_mode = false`, `dilation = 1`, `count_include_pad = true`).
//!
//! [`try_max_pool2d`] / [`try_avg_pool2d`] take a tensor of any rank-3 `(C, H, W)` or rank-4
//! `(B, C, H, W)` shape, check it at run time and record the backward pass on the input's tape.

pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(test)]
mod tests;

use dfdx::shapes::{Dim, Dtype, HasShape, Shape};
use dfdx::tensor::{PutTape, SplitTape, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Device, ReshapeTo};

use crate::error::{fmt_dims, Error};
use crate::kernel_check::product;
use crate::storage::TensorStorage;
use crate::tape::one_mut_one_ref;

/// Everything a pooling kernel needs to know; buffers are contiguous row-major NCHW.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dOp {
    pub batch: usize,
    pub channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

/// Which reduction a pooling window applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// Padding counts as `-inf`; the gradient goes to the first maximum of each window
    /// (row-major order; a NaN counts as a maximum), as in PyTorch.
    Max,
    /// Padding counts as zeros in the divisor (`count_include_pad = true`, PyTorch's default).
    Avg,
}

/// A device that can pool. Backward **accumulates** (`+=`) into `grad_input`, as dfdx's kernels do.
pub trait Pool2dKernel<E: Dtype>: Storage<E> + TensorStorage<E> {
    /// Writes every element of `output` (`[batch, channels, out_h, out_w]`).
    fn pool2d_forward(
        &self,
        kind: PoolKind,
        op: &Pool2dOp,
        input: &Self::Vec,
        output: &mut Self::Vec,
    ) -> Result<(), Self::Err>;

    /// Adds the input's gradient to `grad_input`, given the output's gradient.
    fn pool2d_backward(
        &self,
        kind: PoolKind,
        op: &Pool2dOp,
        input: &Self::Vec,
        output: &Self::Vec,
        grad_input: &mut Self::Vec,
        grad_output: &Self::Vec,
    ) -> Result<(), Self::Err>;
}

/// Kernel size, stride and padding of a square pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dConfig {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Pool2dConfig {
    /// PyTorch's defaults: `stride = kernel`, `padding = 0`.
    pub fn new(kernel: usize) -> Self {
        Self { kernel, stride: kernel, padding: 0 }
    }

    pub fn with_stride(self, stride: usize) -> Self {
        Self { stride, ..self }
    }

    pub fn with_padding(self, padding: usize) -> Self {
        Self { padding, ..self }
    }

    /// `floor((input + 2 * padding - kernel) / stride) + 1`, or `None` when the padded input is
    /// smaller than the window or the config itself is unusable.
    pub fn output_size(&self, input: usize) -> Option<usize> {
        let padded = input.checked_add(self.padding.checked_mul(2)?)?;
        if self.stride == 0 || input == 0 || padded < self.kernel {
            return None;
        }
        Some((padded - self.kernel) / self.stride + 1)
    }

    fn describe(&self, name: &str) -> String {
        format!("{name}(kernel={}, stride={}, padding={})", self.kernel, self.stride, self.padding)
    }

    /// PyTorch's own rules for the config, before any shape is looked at.
    fn check(&self, name: &str) -> Result<(), Error> {
        let op = self.describe(name);
        if self.kernel == 0 {
            return Err(Error::shape(op, "kernel >= 1", "kernel = 0"));
        }
        if self.stride == 0 {
            return Err(Error::shape(op, "stride >= 1", "stride = 0"));
        }
        // Wider padding would leave windows made only of padding (PyTorch rejects it too).
        if self.padding > self.kernel / 2 {
            return Err(Error::shape(
                op,
                format!("padding <= kernel / 2 = {}", self.kernel / 2),
                format!("padding = {}", self.padding),
            ));
        }
        Ok(())
    }
}

/// A rank-3 `(C, H, W)` or rank-4 `(B, C, H, W)` image shape, any mix of `Const` and `usize` dims.
pub trait ImageShape: Shape {
    /// The same shape with new spatial dims (what pooling returns).
    type Resized: Shape;
    /// The same batch dim with new channel and spatial dims (what the option-A shortcut returns).
    type Rechanneled: Shape;
    /// `"[B, C, H, W]"` or `"[C, H, W]"`, for error messages.
    const LAYOUT: &'static str;
    /// `[batch, channels, height, width]`; the batch is 1 for a rank-3 shape.
    fn nchw(&self) -> [usize; 4];
    fn resized(&self, h: usize, w: usize) -> Self::Resized;
    fn rechanneled(&self, c: usize, h: usize, w: usize) -> Self::Rechanneled;
}

impl<C: Dim, H: Dim, W: Dim> ImageShape for (C, H, W) {
    type Resized = (C, usize, usize);
    type Rechanneled = (usize, usize, usize);
    const LAYOUT: &'static str = "[C, H, W]";
    fn nchw(&self) -> [usize; 4] {
        [1, self.0.size(), self.1.size(), self.2.size()]
    }
    fn resized(&self, h: usize, w: usize) -> Self::Resized {
        (self.0, h, w)
    }
    fn rechanneled(&self, c: usize, h: usize, w: usize) -> Self::Rechanneled {
        (c, h, w)
    }
}

impl<B: Dim, C: Dim, H: Dim, W: Dim> ImageShape for (B, C, H, W) {
    type Resized = (B, C, usize, usize);
    type Rechanneled = (B, usize, usize, usize);
    const LAYOUT: &'static str = "[B, C, H, W]";
    fn nchw(&self) -> [usize; 4] {
        [self.0.size(), self.1.size(), self.2.size(), self.3.size()]
    }
    fn resized(&self, h: usize, w: usize) -> Self::Resized {
        (self.0, self.1, h, w)
    }
    fn rechanneled(&self, c: usize, h: usize, w: usize) -> Self::Rechanneled {
        (self.0, c, h, w)
    }
}

/// Max pooling (padding is `-inf`). Errors name the op and the expected and found shapes.
pub fn try_max_pool2d<S, E, D, T>(
    x: Tensor<S, E, D, T>,
    config: Pool2dConfig,
) -> Result<Tensor<S::Resized, E, D, T>, Error>
where
    S: ImageShape,
    E: Dtype,
    D: Device<E> + Pool2dKernel<E>,
    T: Tape<E, D>,
{
    try_pool2d_checked(x, PoolKind::Max, config, "max_pool2d")
}

/// Average pooling with `count_include_pad = true` (every window divides by `kernel * kernel`).
pub fn try_avg_pool2d<S, E, D, T>(
    x: Tensor<S, E, D, T>,
    config: Pool2dConfig,
) -> Result<Tensor<S::Resized, E, D, T>, Error>
where
    S: ImageShape,
    E: Dtype,
    D: Device<E> + Pool2dKernel<E>,
    T: Tape<E, D>,
{
    try_pool2d_checked(x, PoolKind::Avg, config, "avg_pool2d")
}

fn try_pool2d_checked<S, E, D, T>(
    x: Tensor<S, E, D, T>,
    kind: PoolKind,
    config: Pool2dConfig,
    name: &str,
) -> Result<Tensor<S::Resized, E, D, T>, Error>
where
    S: ImageShape,
    E: Dtype,
    D: Device<E> + Pool2dKernel<E>,
    T: Tape<E, D>,
{
    config.check(name)?;
    let shape = *x.shape();
    let op = pool2d_op(&shape, config).ok_or_else(|| {
        let k = config.kernel;
        let p = config.padding;
        Error::shape(
            config.describe(name),
            format!("{} with H >= 1, W >= 1, H + {} >= {k} and W + {} >= {k}", S::LAYOUT, 2 * p, 2 * p),
            fmt_dims(shape.concrete().as_ref()),
        )
    })?;
    let out_shape = shape.resized(op.out_h, op.out_w);
    pool2d_unchecked(x, kind, op, out_shape).map_err(Error::device)
}

impl Pool2dOp {
    /// The lengths of the input and output buffers this op reads and writes, or `None` when the
    /// op is not one the checked pooling functions build (a zero kernel, stride or input size,
    /// padding over half the kernel, an output size that does not follow from the input) or a
    /// size overflows `usize`. Every kernel entry checks its buffers against these
    /// (`kernel_check.rs`).
    pub fn buffer_lens(&self) -> Option<[usize; 2]> {
        let cfg = Pool2dConfig { kernel: self.kernel, stride: self.stride, padding: self.padding };
        // Wider padding leaves windows made only of padding, which would index outside the plane.
        let valid = self.kernel > 0
            && self.padding <= self.kernel / 2
            && self.in_h > 0
            && self.in_w > 0
            && cfg.output_size(self.in_h) == Some(self.out_h)
            && cfg.output_size(self.in_w) == Some(self.out_w);
        if !valid {
            return None;
        }
        Some([
            product(&[self.batch, self.channels, self.in_h, self.in_w])?,
            product(&[self.batch, self.channels, self.out_h, self.out_w])?,
        ])
    }
}

/// The op for `shape` under `config`, or `None` when the input is too small for the window.
pub(crate) fn pool2d_op<S: ImageShape>(shape: &S, config: Pool2dConfig) -> Option<Pool2dOp> {
    let [batch, channels, in_h, in_w] = shape.nchw();
    Some(Pool2dOp {
        batch,
        channels,
        kernel: config.kernel,
        stride: config.stride,
        padding: config.padding,
        in_h,
        in_w,
        out_h: config.output_size(in_h)?,
        out_w: config.output_size(in_w)?,
    })
}

/// Pools `x` (whose dims `op` describes) into a tensor of shape `out_shape`, recording the
/// backward pass on `x`'s tape. The caller guarantees `op` and `out_shape` fit `x`: layers, whose
/// input types fix the shape, and the checked functions above.
pub(crate) fn pool2d_unchecked<S, Dst, E, D, T>(
    x: Tensor<S, E, D, T>,
    kind: PoolKind,
    op: Pool2dOp,
    out_shape: Dst,
) -> Result<Tensor<Dst, E, D, T>, D::Err>
where
    S: Shape,
    Dst: Shape,
    E: Dtype,
    D: Device<E> + Pool2dKernel<E>,
    T: Tape<E, D>,
{
    debug_assert_eq!(out_shape.num_elements(), op.batch * op.channels * op.out_h * op.out_w);
    // The kernels read row-major NCHW; a permuted or broadcast view is copied once here.
    let x = x.try_contiguous()?;
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    let input = dev.try_storage_of(&x)?;
    let mut buf = <D as Storage<E>>::try_alloc_len(&dev, out_shape.num_elements())?;
    dev.pool2d_forward(kind, &op, &input, &mut buf)?;
    if !T::OWNS_TAPE {
        return Ok(dev.try_tensor_from_storage(buf, out_shape)?.put_tape(tape));
    }
    // Backward reads the input and output values: keep the buffers the forward pass used (the
    // output's is a copy, since the tensor takes ownership of the original).
    let output = buf.clone();
    let out = dev.try_tensor_from_storage(buf, out_shape)?;
    let x_ghost = x.ghost();
    let out_ghost = out.ghost();
    drop(x);
    tape.add_backward_op(move |grads| {
        let (grad_x, grad_out) =
            one_mut_one_ref(grads, |g| g.get_or_alloc_mut(&x_ghost), |g| g.get_or_alloc_mut(&out_ghost))?;
        dev.pool2d_backward(kind, &op, &input, &output, grad_x, grad_out)
    });
    Ok(out.put_tape(tape))
}
