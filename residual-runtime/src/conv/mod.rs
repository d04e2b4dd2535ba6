//! 2D convolution (no bias) on dfdx tensors: the op struct, the kernel trait each device
//! implements, and the tensor-level functions that record the backward pass on dfdx's tape.
//!
//! Layout: input `[B, C, H, W]` (or `[C, H, W]`), weight `[O, C / groups, K, K]`, output
//! `[B, O, OH, OW]` with `OH = (H + 2 * padding - dilation * (K - 1) - 1) / stride + 1`, the same
//! arithmetic and weight layout as PyTorch's `nn.Conv2d(bias=False)`.

pub(crate) mod cpu;
#[doc(hidden)]
pub use cpu::{CRATE_GEMM_MIN_ROWS, ROW_SPLIT_MIN_DEPTH};
#[doc(hidden)]
pub use winograd::{WINOGRAD_CACHE_BYTES, WINOGRAD_MIN_TILES, WINOGRAD_TILE};
#[cfg(feature = "cuda")]
mod cuda;
mod direct;
#[doc(hidden)]
pub use direct::DIRECT_MAX_CHANNELS;
mod phases;
#[doc(hidden)]
pub use phases::PHASES_MAX_CHANNELS;
mod pointwise;
#[doc(hidden)]
pub use pointwise::POINTWISE_MAX_CHANNELS;
mod sgemm;
#[cfg(test)]
mod tests;
pub(crate) mod transpose;
pub(crate) mod winograd;

use dfdx::shapes::{Dtype, HasShape, Shape};
use dfdx::tensor::{Merge, PutTape, SplitTape, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Device, ReshapeTo};

use crate::error::fmt_dims;
use crate::kernel_check::product;
use crate::storage::TensorStorage;
use crate::tape::two_mut_one_ref;
use crate::Error;

/// Everything a conv kernel needs to know, in one `#[repr(C)]` struct so the CUDA kernels can
/// take it by value. Square kernel, stride, padding and dilation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOp {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub groups: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Conv2dOp {
    /// Builds the op for a `[batch, in_channels, in_h, in_w]` input, computing the output size.
    /// Returns `None` when the (padded) input is smaller than the dilated kernel or when a
    /// parameter is zero; the callers turn that into a shape error.
    pub fn new(
        cfg: Conv2dConfig,
        batch: usize,
        in_channels: usize,
        out_channels: usize,
        in_h: usize,
        in_w: usize,
    ) -> Option<Self> {
        let out_h = conv_out_size(in_h, cfg.kernel, cfg.stride, cfg.padding, cfg.dilation)?;
        let out_w = conv_out_size(in_w, cfg.kernel, cfg.stride, cfg.padding, cfg.dilation)?;
        Some(Conv2dOp {
            batch,
            in_channels,
            out_channels,
            groups: cfg.groups,
            kernel: cfg.kernel,
            stride: cfg.stride,
            padding: cfg.padding,
            dilation: cfg.dilation,
            in_h,
            in_w,
            out_h,
            out_w,
        })
    }

    /// Input channels per group (the weight's second dim).
    pub fn in_per_group(&self) -> usize {
        self.in_channels / self.groups
    }

    /// Multiply-accumulates of the forward pass (saturating at `usize::MAX`, never wrapping).
    pub fn macs(&self) -> usize {
        let per_output = self.in_per_group().saturating_mul(self.kernel).saturating_mul(self.kernel);
        [self.batch, self.out_channels, self.out_h, self.out_w].iter().fold(per_output, |acc, &d| acc.saturating_mul(d))
    }

    /// The lengths of the input, weight and output buffers this op reads and writes, or `None`
    /// when no `Conv2dOp::new` builds this op (a zero parameter, channel count or input size,
    /// channels not divisible by the groups, an output size that does not follow from the input)
    /// or a size, or one image's im2col matrix, overflows `usize`. Every kernel entry checks its
    /// buffers against these (`kernel_check.rs`).
    pub fn buffer_lens(&self) -> Option<[usize; 3]> {
        let cfg = Conv2dConfig {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        };
        // Zero channels or planes would make the kernels chunk by zero.
        let valid = self.groups > 0
            && self.in_channels > 0
            && self.out_channels > 0
            && self.in_h > 0
            && self.in_w > 0
            && self.in_channels.is_multiple_of(self.groups)
            && self.out_channels.is_multiple_of(self.groups)
            && Conv2dOp::new(cfg, self.batch, self.in_channels, self.out_channels, self.in_h, self.in_w) == Some(*self);
        if !valid {
            return None;
        }
        let kk = [self.in_per_group(), self.kernel, self.kernel];
        product(&[kk[0], kk[1], kk[2], self.out_h, self.out_w])?;
        Some([
            product(&[self.batch, self.in_channels, self.in_h, self.in_w])?,
            product(&[self.out_channels, kk[0], kk[1], kk[2]])?,
            product(&[self.batch, self.out_channels, self.out_h, self.out_w])?,
        ])
    }
}

/// `(size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1`, or `None` when the padded
/// input is smaller than the dilated kernel or a parameter is zero. `const` so layers can check
/// their const parameters with it at monomorphization.
pub const fn conv_out_size(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
) -> Option<usize> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    // Checked: sizes a user passes at run time must give `None`, not a wrapped size.
    let Some(reach) = dilation.checked_mul(kernel - 1) else { return None };
    let Some(span) = reach.checked_add(1) else { return None };
    let Some(both_sides) = padding.checked_mul(2) else { return None };
    let Some(padded) = size.checked_add(both_sides) else { return None };
    if padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// The hyper-parameters of a convolution, as PyTorch's `nn.Conv2d` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

impl Conv2dConfig {
    /// A `kernel x kernel` convolution with stride 1, no padding, dilation 1, one group.
    pub fn new(kernel: usize) -> Self {
        Conv2dConfig { kernel, stride: 1, padding: 0, dilation: 1, groups: 1 }
    }
    pub fn stride(self, stride: usize) -> Self {
        Conv2dConfig { stride, ..self }
    }
    pub fn padding(self, padding: usize) -> Self {
        Conv2dConfig { padding, ..self }
    }
    pub fn dilation(self, dilation: usize) -> Self {
        Conv2dConfig { dilation, ..self }
    }
    pub fn groups(self, groups: usize) -> Self {
        Conv2dConfig { groups, ..self }
    }
}

/// A device's conv kernels. Buffers are contiguous row-major; weight layout
/// `[out_channels, in_channels / groups, kernel, kernel]`. `TensorStorage` (see `storage.rs`)
/// is how buffers get in and out of dfdx tensors, which dfdx 0.13 keeps crate-private.
pub trait Conv2dKernel<E: Dtype>: Storage<E> + TensorStorage<E> {
    /// Writes (overwrites) every element of `output` (`[batch, out_channels, out_h, out_w]`).
    fn conv2d_forward(
        &self,
        op: &Conv2dOp,
        input: &Self::Vec,
        weight: &Self::Vec,
        output: &mut Self::Vec,
    ) -> Result<(), Self::Err>;

    /// Accumulates (`+=`) the gradients of the input and of the weight, as dfdx's kernels do.
    fn conv2d_backward(
        &self,
        op: &Conv2dOp,
        input: &Self::Vec,
        weight: &Self::Vec,
        grad_input: &mut Self::Vec,
        grad_weight: &mut Self::Vec,
        grad_output: &Self::Vec,
    ) -> Result<(), Self::Err>;
}

/// Convolves `x` (`[B, C, H, W]` or `[C, H, W]`, any shape type) with `weight`
/// (`[O, C / groups, K, K]`), returning a tensor of the caller's shape type `out_shape`, which
/// must equal `[B, O, OH, OW]` (or `[O, OH, OW]` for an unbatched input).
///
/// Gradients flow to `x` and `weight` through the tape of `x` (merged with the weight's tape if
/// it has one). Every shape is checked at run time: a mismatch returns [`Error::Shape`] naming
/// the expected and found dims, never a panic.
pub fn try_conv2d<S, WS, O, E, D, T, R>(
    x: Tensor<S, E, D, T>,
    weight: Tensor<WS, E, D, R>,
    cfg: Conv2dConfig,
    out_shape: O,
) -> Result<Tensor<O, E, D, T>, Error>
where
    S: Shape,
    WS: Shape,
    O: Shape,
    E: Dtype,
    D: Device<E> + Conv2dKernel<E>,
    T: Tape<E, D> + Merge<R>,
    R: Tape<E, D>,
{
    let op = check_conv2d(x.shape().concrete().as_ref(), weight.shape().concrete().as_ref(), cfg)?;
    let expected = expected_out_dims(&op, S::NUM_DIMS);
    let found = out_shape.concrete();
    if found.as_ref() != expected.as_slice() {
        return Err(Error::shape("conv2d (output shape)", fmt_dims(&expected), fmt_dims(found.as_ref())));
    }
    let (weight, weight_tape) = weight.split_tape();
    let (x, tape) = x.split_tape();
    let x = x.put_tape(tape.merge(weight_tape));
    conv2d_unchecked(x, weight, op, out_shape).map_err(Error::device)
}

/// [`try_conv2d`] with the output shape `(B, O, OH, OW)` as plain `usize`s; an unbatched
/// `[C, H, W]` input gives `B = 1`.
#[allow(clippy::type_complexity)]
pub fn try_conv2d_nchw<S, WS, E, D, T, R>(
    x: Tensor<S, E, D, T>,
    weight: Tensor<WS, E, D, R>,
    cfg: Conv2dConfig,
) -> Result<Tensor<(usize, usize, usize, usize), E, D, T>, Error>
where
    S: Shape,
    WS: Shape,
    E: Dtype,
    D: Device<E> + Conv2dKernel<E>,
    T: Tape<E, D> + Merge<R>,
    R: Tape<E, D>,
{
    let op = check_conv2d(x.shape().concrete().as_ref(), weight.shape().concrete().as_ref(), cfg)?;
    let out_shape = (op.batch, op.out_channels, op.out_h, op.out_w);
    let (weight, weight_tape) = weight.split_tape();
    let (x, tape) = x.split_tape();
    let x = x.put_tape(tape.merge(weight_tape));
    conv2d_unchecked(x, weight, op, out_shape).map_err(Error::device)
}

/// The output dims of `op` for an input of rank `rank` (3: unbatched, 4: batched).
fn expected_out_dims(op: &Conv2dOp, rank: usize) -> Vec<usize> {
    if rank == 3 {
        vec![op.out_channels, op.out_h, op.out_w]
    } else {
        vec![op.batch, op.out_channels, op.out_h, op.out_w]
    }
}

/// Checks an input's and a weight's dims against `cfg` and returns the op they describe.
pub(crate) fn check_conv2d(x: &[usize], w: &[usize], cfg: Conv2dConfig) -> Result<Conv2dOp, Error> {
    const OP: &str = "conv2d";
    let (batch, c, h, wd) = match *x {
        [b, c, h, w] => (b, c, h, w),
        [c, h, w] => (1, c, h, w),
        _ => return Err(Error::shape(OP, "[B, C, H, W] or [C, H, W]", fmt_dims(x))),
    };
    if cfg.kernel == 0 || cfg.stride == 0 || cfg.dilation == 0 || cfg.groups == 0 {
        return Err(Error::shape(OP, "kernel, stride, dilation and groups >= 1", format!("{cfg:?}")));
    }
    let &[o, cg, kh, kw] = w else {
        return Err(Error::shape("conv2d (weight)", format!("[O, C / groups, {k}, {k}]", k = cfg.kernel), fmt_dims(w)));
    };
    if kh != cfg.kernel || kw != cfg.kernel || o % cfg.groups != 0 || cg == 0 {
        return Err(Error::shape(
            "conv2d (weight)",
            format!("[O, C / groups, {k}, {k}] with O a multiple of groups = {g}", k = cfg.kernel, g = cfg.groups),
            fmt_dims(w),
        ));
    }
    let want_c = cg * cfg.groups;
    let batched = x.len() == 4;
    let fmt_in = |c: String, hw: &str| {
        if batched {
            format!("[{batch}, {c}, {hw}]")
        } else {
            format!("[{c}, {hw}]")
        }
    };
    if c != want_c {
        return Err(Error::shape(OP, fmt_in(want_c.to_string(), "H, W"), fmt_dims(x)));
    }
    let Some(op) = Conv2dOp::new(cfg, batch, c, o, h, wd) else {
        let span = cfg.dilation * (cfg.kernel - 1) + 1;
        let min = span.saturating_sub(2 * cfg.padding).max(1);
        return Err(Error::shape(OP, fmt_in(c.to_string(), &format!("H >= {min}, W >= {min}")), fmt_dims(x)));
    };
    Ok(op)
}

/// The convolution without shape checks, for layers whose types already guarantee them.
/// `op` must describe `x` and `weight`, and `out_shape` must hold `op`'s output dims.
pub(crate) fn conv2d_unchecked<S, WS, O, E, D, T>(
    x: Tensor<S, E, D, T>,
    weight: Tensor<WS, E, D>,
    op: Conv2dOp,
    out_shape: O,
) -> Result<Tensor<O, E, D, T>, D::Err>
where
    S: Shape,
    WS: Shape,
    O: Shape,
    E: Dtype,
    D: Device<E> + Conv2dKernel<E>,
    T: Tape<E, D>,
{
    // Kernels read dense NCHW; a strided view (permute, broadcast) is made contiguous first, and
    // that copy is itself recorded on the tape. Contiguous tensors pass through as they are.
    let x = x.try_contiguous()?;
    let weight = weight.try_contiguous()?;
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    // dfdx 0.13 lends no tensor's buffer to code outside it (storage.rs): on the CPU this is
    // one memcpy each, and backward reuses these copies instead of reading the tensors again.
    let input = dev.try_storage_of(&x)?;
    let weights = dev.try_storage_of(&weight)?;
    let mut buf = <D as Storage<E>>::try_alloc_len(&dev, out_shape.num_elements())?;
    dev.conv2d_forward(&op, &input, &weights, &mut buf)?;
    let out = dev.try_tensor_from_storage(buf, out_shape)?;
    if T::OWNS_TAPE {
        let x_ghost = x.ghost();
        let w_ghost = weight.ghost();
        let out_ghost = out.ghost();
        drop(x);
        drop(weight);
        tape.add_backward_op(move |grads| {
            let (grad_x, grad_w, grad_out) = two_mut_one_ref(
                grads,
                |g| g.get_or_alloc_mut(&x_ghost),
                |g| g.get_or_alloc_mut(&w_ghost),
                |g| g.get_or_alloc_mut(&out_ghost),
            )?;
            dev.conv2d_backward(&op, &input, &weights, grad_x, grad_w, grad_out)
        });
    }
    Ok(out.put_tape(tape))
}

/// Row-major `c[m x n] = a[m x k] * b[k x n]` with the f32 GEMM the CPU conv kernels run for
/// this shape (our AVX-512 or AVX2 + FMA kernels, or the `gemm` crate: `cpu::crate_runs`), so a
/// benchmark can state the kernels' speed as a fraction of their own GEMM's. Returns `false`
/// when a length does not match (or a size product overflows).
#[doc(hidden)]
pub fn cpu_sgemm(m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    cpu::sgemm_row_major(m, n, k, a, b, c)
}
