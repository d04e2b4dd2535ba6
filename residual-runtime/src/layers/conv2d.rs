//! `Conv2d`: a statically shaped, bias-free 2D convolution layer (PyTorch's
//! `nn.Conv2d(bias=False)`); compose with [`super::Bias2d`] for a bias.

use std::marker::PhantomData;

use dfdx::nn::{BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Const, Dim, Dtype, HasShape, Rank4, Shape};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::Device;

use crate::conv::{check_conv2d, conv2d_unchecked, conv_out_size, Conv2dConfig, Conv2dKernel, Conv2dOp};
use crate::error::fmt_dims;
use crate::init::{ConvInit, TorchDefaultInit};
use crate::{Element, Error};

/// A 2D convolution with a `K x K` kernel, `IN -> OUT` channels, square stride, padding and
/// dilation, and `GROUPS` groups (`GROUPS == IN` is depthwise). Its output size `OH x OW` is a
/// parameter because stable Rust cannot compute it in a type; the `residual!` macro fills it in
/// and the forward pass re-checks it at monomorphization.
///
/// Parameters: `weight [OUT, IN_PER_GROUP, K, K]`, `IN_PER_GROUP = IN / GROUPS`, initialised by
/// `I` (PyTorch's default unless chosen otherwise).
#[derive(Clone, Debug)]
pub struct Conv2d<
    const IN: usize,
    const OUT: usize,
    const K: usize,
    const STRIDE: usize,
    const PAD: usize,
    const DIL: usize,
    const GROUPS: usize,
    const IN_PER_GROUP: usize,
    const OH: usize,
    const OW: usize,
    E: Dtype,
    D: Storage<E>,
    I = TorchDefaultInit,
> {
    pub weight: Tensor<Rank4<OUT, IN_PER_GROUP, K, K>, E, D>,
    init: PhantomData<I>,
}

/// `true` when the const parameters describe a valid conv mapping `H x W` to `OH x OW`.
const fn consistent(
    (inp, out, k, stride, pad, dil, groups, in_per_group): (usize, usize, usize, usize, usize, usize, usize, usize),
    (h, w, oh, ow): (usize, usize, usize, usize),
) -> bool {
    if groups == 0 || inp != groups * in_per_group || out % groups != 0 {
        return false;
    }
    let oh_ok = matches!(conv_out_size(h, k, stride, pad, dil), Some(v) if v == oh);
    let ow_ok = matches!(conv_out_size(w, k, stride, pad, dil), Some(v) if v == ow);
    oh_ok && ow_ok
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Dtype,
        D: Storage<E>,
        I,
    > Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
    const PARAMS: (usize, usize, usize, usize, usize, usize, usize, usize) =
        (IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP);

    fn config() -> Conv2dConfig {
        Conv2dConfig { kernel: K, stride: STRIDE, padding: PAD, dilation: DIL, groups: GROUPS }
    }

    fn op_for(batch: usize, h: usize, w: usize) -> Conv2dOp {
        Conv2dOp {
            batch,
            in_channels: IN,
            out_channels: OUT,
            groups: GROUPS,
            kernel: K,
            stride: STRIDE,
            padding: PAD,
            dilation: DIL,
            in_h: h,
            in_w: w,
            out_h: OH,
            out_w: OW,
        }
    }

    /// The layer's name in error messages, e.g. `Conv2d<64, 128, k=3, s=2, p=1, d=1, g=1>`.
    pub fn name() -> String {
        format!("Conv2d<{IN}, {OUT}, k={K}, s={STRIDE}, p={PAD}, d={DIL}, g={GROUPS}>")
    }

    /// The input sizes that map to `out` along one axis, as text: `56` or `55..=56`.
    fn input_sizes_for(out: usize) -> String {
        let span = DIL * (K.max(1) - 1) + 1;
        let lo = (out.max(1) - 1) * STRIDE + span;
        let lo = lo.saturating_sub(2 * PAD).max(1);
        let hi = (out.max(1) - 1) * STRIDE + span + STRIDE.max(1) - 1;
        let hi = hi.saturating_sub(2 * PAD).max(1);
        if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}..={hi}")
        }
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Element,
        D: Device<E> + Conv2dKernel<E>,
        I,
    > Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
    /// Runs the layer on an input whose shape type is not statically known (e.g.
    /// `(usize, usize, usize, usize)`, or `[C, H, W]`, which counts as a batch of one). Returns
    /// [`Error::Shape`] naming this layer's expected input and the found dims when they do not
    /// fit; never panics on a bad shape.
    #[allow(clippy::type_complexity)]
    pub fn try_forward_checked<S: Shape, T: Tape<E, D>>(
        &self,
        x: Tensor<S, E, D, T>,
    ) -> Result<Tensor<(usize, Const<OUT>, Const<OH>, Const<OW>), E, D, T>, Error> {
        let dims = x.shape().concrete();
        let dims = dims.as_ref();
        let w_dims = [OUT, IN_PER_GROUP, K, K];
        let op = match check_conv2d(dims, &w_dims, Self::config()) {
            Ok(op) if op.out_h == OH && op.out_w == OW => op,
            _ => {
                let batch = if dims.len() == 4 { "B, " } else { "" };
                return Err(Error::shape(
                    Self::name(),
                    format!(
                        "[{batch}{IN}, {}, {}] (output [{batch}{OUT}, {OH}, {OW}])",
                        Self::input_sizes_for(OH),
                        Self::input_sizes_for(OW)
                    ),
                    fmt_dims(dims),
                ));
            }
        };
        let out_shape = (op.batch, Const::<OUT>, Const::<OH>, Const::<OW>);
        conv2d_unchecked(x, self.weight.clone(), op, out_shape).map_err(Error::device)
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        const H: usize,
        const W: usize,
        B: Dim,
        E: Element,
        D: Device<E> + Conv2dKernel<E>,
        T: Tape<E, D>,
        I,
    > Module<Tensor<(B, Const<IN>, Const<H>, Const<W>), E, D, T>>
    for Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
    type Output = Tensor<(B, Const<OUT>, Const<OH>, Const<OW>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<IN>, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
        const {
            assert!(
                consistent(Self::PARAMS, (H, W, OH, OW)),
                "Conv2d: OH/OW do not match the conv arithmetic for this input, or IN != GROUPS * IN_PER_GROUP, or OUT is not a multiple of GROUPS"
            )
        };
        let batch = x.shape().0;
        let op = Self::op_for(batch.size(), H, W);
        conv2d_unchecked(x, self.weight.clone(), op, (batch, Const, Const, Const))
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        const H: usize,
        const W: usize,
        E: Element,
        D: Device<E> + Conv2dKernel<E>,
        T: Tape<E, D>,
        I,
    > Module<Tensor<(Const<IN>, Const<H>, Const<W>), E, D, T>>
    for Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
    type Output = Tensor<(Const<OUT>, Const<OH>, Const<OW>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(Const<IN>, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
        const {
            assert!(
                consistent(Self::PARAMS, (H, W, OH, OW)),
                "Conv2d: OH/OW do not match the conv arithmetic for this input, or IN != GROUPS * IN_PER_GROUP, or OUT is not a multiple of GROUPS"
            )
        };
        let op = Self::op_for(1, H, W);
        conv2d_unchecked(x, self.weight.clone(), op, (Const, Const, Const))
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Dtype,
        D: Storage<E>,
        I,
    > NonMutableModule for Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Element,
        D: Device<E>,
        I: ConvInit,
    > TensorCollection<E, D> for Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
    type To<E2: Dtype, D2: Device<E2>> = Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E2, D2, I>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                TensorOptions::reset_with(|t| I::init(t, IN_PER_GROUP * K * K, OUT * K * K)),
            ),
            |weight| Conv2d { weight, init: PhantomData },
        )
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const IN_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Element,
        D: Device<E>,
        I: ConvInit,
    > BuildOnDevice<D, E> for Conv2d<IN, OUT, K, STRIDE, PAD, DIL, GROUPS, IN_PER_GROUP, OH, OW, E, D, I>
{
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}
