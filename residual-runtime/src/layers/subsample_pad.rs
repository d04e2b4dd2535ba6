//! `SubsamplePad`: the ResNet paper's option-A shortcut as a layer over [`crate::shortcut`].

use dfdx::nn::{Module, NonMutableModule, ZeroSizedModule};
use dfdx::shapes::{Const, Dim, HasShape};
use dfdx::tensor::{Tape, Tensor};
use dfdx::tensor_ops::Device;

use crate::pool::ImageShape;
use crate::shortcut::{self, SubsamplePadKernel, SubsamplePadOp};
use crate::{Element, Error};

/// `(B, IN, H, W)` -> `(B, OUT, OH, OW)`: keeps every `STRIDE`-th pixel and zero-pads channels,
/// `(OUT - IN) / 2` in front and the rest behind. `OH`/`OW` are the sizes the macro computed
/// (`ceil(H / STRIDE)`); monomorphization re-checks them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubsamplePad<const IN: usize, const OUT: usize, const STRIDE: usize, const OH: usize, const OW: usize>;

impl<const IN: usize, const OUT: usize, const STRIDE: usize, const OH: usize, const OW: usize> ZeroSizedModule
    for SubsamplePad<IN, OUT, STRIDE, OH, OW>
{
}
impl<const IN: usize, const OUT: usize, const STRIDE: usize, const OH: usize, const OW: usize> NonMutableModule
    for SubsamplePad<IN, OUT, STRIDE, OH, OW>
{
}

impl<const IN: usize, const OUT: usize, const STRIDE: usize, const OH: usize, const OW: usize>
    SubsamplePad<IN, OUT, STRIDE, OH, OW>
{
    /// The same op for an input of any shape, checked at run time (channels must be `<= OUT`).
    pub fn try_forward_checked<S, E, D, T>(
        &self,
        x: Tensor<S, E, D, T>,
    ) -> Result<Tensor<S::Rechanneled, E, D, T>, Error>
    where
        S: ImageShape,
        E: Element,
        D: Device<E> + SubsamplePadKernel<E>,
        T: Tape<E, D>,
    {
        shortcut::try_subsample_pad(x, OUT, STRIDE)
    }

    fn op<const H: usize, const W: usize>(batch: usize) -> SubsamplePadOp {
        const {
            assert!(IN <= OUT, "SubsamplePad: OUT must be >= IN");
            assert!(STRIDE >= 1 && H >= 1 && W >= 1, "SubsamplePad: stride and sizes must be >= 1");
            assert!(OH == (H - 1) / STRIDE + 1, "SubsamplePad: OH must be ceil(H / STRIDE)");
            assert!(OW == (W - 1) / STRIDE + 1, "SubsamplePad: OW must be ceil(W / STRIDE)");
        }
        SubsamplePadOp {
            batch,
            in_channels: IN,
            out_channels: OUT,
            pad_front: (OUT - IN) / 2,
            stride: STRIDE,
            in_h: H,
            in_w: W,
            out_h: OH,
            out_w: OW,
        }
    }
}

impl<
        B,
        const H: usize,
        const W: usize,
        const IN: usize,
        const OUT: usize,
        const STRIDE: usize,
        const OH: usize,
        const OW: usize,
        E,
        D,
        T,
    > Module<Tensor<(B, Const<IN>, Const<H>, Const<W>), E, D, T>> for SubsamplePad<IN, OUT, STRIDE, OH, OW>
where
    B: Dim,
    E: Element,
    D: Device<E> + SubsamplePadKernel<E>,
    T: Tape<E, D>,
{
    type Output = Tensor<(B, Const<OUT>, Const<OH>, Const<OW>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<IN>, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
        let b = x.shape().0;
        let op = Self::op::<H, W>(b.size());
        shortcut::subsample_pad_unchecked(x, op, (b, Const, Const, Const))
    }
}

impl<
        const H: usize,
        const W: usize,
        const IN: usize,
        const OUT: usize,
        const STRIDE: usize,
        const OH: usize,
        const OW: usize,
        E,
        D,
        T,
    > Module<Tensor<(Const<IN>, Const<H>, Const<W>), E, D, T>> for SubsamplePad<IN, OUT, STRIDE, OH, OW>
where
    E: Element,
    D: Device<E> + SubsamplePadKernel<E>,
    T: Tape<E, D>,
{
    type Output = Tensor<(Const<OUT>, Const<OH>, Const<OW>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(Const<IN>, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
        let op = Self::op::<H, W>(1);
        shortcut::subsample_pad_unchecked(x, op, (Const, Const, Const))
    }
}
