//! `Bias2d`: a learnable per-channel bias for `[B, C, H, W]` / `[C, H, W]` maps, the bias half of
//! PyTorch's `nn.Conv2d(bias=True)`, registered under the conv's name.

use dfdx::nn::{BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Const, Dim, Dtype, HasShape, Rank1};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::{BroadcastTo, Device, TryAdd};

use crate::init::uniform_bound;
use crate::Element;

/// Adds `bias[c]` to every element of channel `c`. Initialised as PyTorch initialises a conv's
/// bias: `U(-1 / sqrt(FAN_IN), 1 / sqrt(FAN_IN))` with `FAN_IN = IN / GROUPS * K * K` of the conv.
#[derive(Clone, Debug)]
pub struct Bias2d<const C: usize, const FAN_IN: usize, E: Dtype, D: Storage<E>> {
    pub bias: Tensor<Rank1<C>, E, D>,
}

impl<const C: usize, const FAN_IN: usize, E: Dtype, D: Storage<E>> NonMutableModule for Bias2d<C, FAN_IN, E, D> {}

impl<const C: usize, const FAN_IN: usize, E: Element, D: Device<E>> TensorCollection<E, D> for Bias2d<C, FAN_IN, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = Bias2d<C, FAN_IN, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "bias",
                |s| &s.bias,
                |s| &mut s.bias,
                TensorOptions::reset_with(|t| t.try_fill_with_distr(uniform_bound::<E>(FAN_IN))),
            ),
            |bias| Bias2d { bias },
        )
    }
}

impl<const C: usize, const FAN_IN: usize, E: Element, D: Device<E>> BuildOnDevice<D, E> for Bias2d<C, FAN_IN, E, D> {
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}

impl<B: Dim, const C: usize, H: Dim, W: Dim, const FAN_IN: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>
    Module<Tensor<(B, Const<C>, H, W), E, D, T>> for Bias2d<C, FAN_IN, E, D>
{
    type Output = Tensor<(B, Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        let shape = *x.shape();
        x.try_add(self.bias.retaped::<T>().try_broadcast_like(&shape)?)
    }
}

impl<const C: usize, H: Dim, W: Dim, const FAN_IN: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>
    Module<Tensor<(Const<C>, H, W), E, D, T>> for Bias2d<C, FAN_IN, E, D>
{
    type Output = Tensor<(Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        let shape = *x.shape();
        x.try_add(self.bias.retaped::<T>().try_broadcast_like(&shape)?)
    }
}
