//! `LayerScale`: a learned scale per channel of `[B, C, H, W]` maps (ConvNeXt's `layer_scale`,
//! Touvron et al. 2021), stored `[C, 1, 1]` as torchvision stores it.

use dfdx::nn::{BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Const, Dim, Dtype, HasShape, Rank3};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::{BroadcastTo, Device, ReshapeTo, TryMul};

use crate::Element;

/// `y = gamma * x` per channel. `gamma` starts at `INIT_E9` billionths (ConvNeXt's 1e-6 is
/// 1,000: a const parameter cannot be a float on stable Rust) and is named `layer_scale`.
#[derive(Clone, Debug)]
pub struct LayerScale<const C: usize, const INIT_E9: usize, E: Dtype, D: Storage<E>> {
    pub layer_scale: Tensor<Rank3<C, 1, 1>, E, D>,
}

impl<const C: usize, const INIT_E9: usize, E: Dtype, D: Storage<E>> LayerScale<C, INIT_E9, E, D> {
    /// The initial value of every scale.
    pub const INIT: f64 = INIT_E9 as f64 / 1e9;
}

impl<const C: usize, const I: usize, E: Dtype, D: Storage<E>> NonMutableModule for LayerScale<C, I, E, D> {}

impl<const C: usize, const I: usize, E: Element, D: Device<E>> TensorCollection<E, D> for LayerScale<C, I, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = LayerScale<C, I, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "layer_scale",
                |s| &s.layer_scale,
                |s| &mut s.layer_scale,
                TensorOptions::reset_with(|t| {
                    t.try_fill_with_distr(rand_distr::Uniform::new_inclusive(
                        E::from_f64(Self::INIT).unwrap_or_default(),
                        E::from_f64(Self::INIT).unwrap_or_default(),
                    ))
                }),
            ),
            |layer_scale| LayerScale { layer_scale },
        )
    }
}

impl<const C: usize, const I: usize, E: Element, D: Device<E>> BuildOnDevice<D, E> for LayerScale<C, I, E, D> {
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}

impl<B: Dim, const C: usize, H: Dim, W: Dim, const I: usize, E: Dtype, D: Device<E>, T: Tape<E, D>>
    Module<Tensor<(B, Const<C>, H, W), E, D, T>> for LayerScale<C, I, E, D>
{
    type Output = Tensor<(B, Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        let shape = *x.shape();
        let gamma = self.layer_scale.retaped::<T>().try_reshape_like(&(Const::<C>,))?;
        x.try_mul(gamma.try_broadcast_like(&shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn scales_each_channel_starts_at_init_and_learns() {
        let dev: Cpu = Default::default();
        let mut ls = LayerScale::<2, 1_000, f64, Cpu>::build_on_device(&dev);
        assert_eq!(ls.layer_scale.as_vec(), vec![1e-6, 1e-6]);
        ls.layer_scale = dev.tensor([[[2.0]], [[-3.0]]]);
        let xs: Vec<f64> = (0..2 * 2 * 3).map(|i| i as f64 - 5.0).collect();
        let x: Tensor<Rank4<2, 2, 3, 1>, f64, Cpu> = dev.tensor_from_vec(xs.clone(), (Const, Const, Const, Const));
        let y = ls.forward(x.leaky_trace());
        let want: Vec<f64> = xs.iter().enumerate().map(|(i, v)| v * [2.0, -3.0][(i / 3) % 2]).collect();
        assert_eq!(y.as_vec(), want);
        // d(sum y) / d gamma_c = sum of channel c's inputs.
        let g = y.sum().backward();
        let gg = g.get(&ls.layer_scale).as_vec();
        let sums = [0, 1].map(|c| xs.iter().enumerate().filter(|(i, _)| (i / 3) % 2 == c).map(|(_, v)| v).sum::<f64>());
        assert_eq!(gg, sums.to_vec());
    }
}
