//! `LayerNorm<M>`: PyTorch's `nn.LayerNorm(M)` (eps 1e-5 unless given, affine) over the last dim of
//! `[B, M]` / `[B, S, M]`, and over the channels of `[B, M, H, W]` images (ConvNeXt's
//! `LayerNorm2d`: the same normalisation of each pixel's channels), any tape.

use dfdx::nn::{BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Axes3, Axis, Const, Dim, Dtype, HasShape, Rank1};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::{BroadcastTo, Device, TryAdd, TryMul};

use crate::Element;

/// Normalizes the last dim (biased variance, eps inside the square root) and applies the affine
/// `weight` (ones) and `bias` (zeros), named as in PyTorch.
#[derive(Clone, Debug)]
pub struct LayerNorm<const M: usize, E: Dtype, D: Storage<E>, const EPS_E9: usize = 10_000> {
    pub weight: Tensor<Rank1<M>, E, D>,
    pub bias: Tensor<Rank1<M>, E, D>,
}

impl<const M: usize, E: Dtype, D: Storage<E>, const EPS_E9: usize> LayerNorm<M, E, D, EPS_E9> {
    /// Added to the variance: `EPS_E9` billionths (PyTorch's default 1e-5 is 10,000; ConvNeXt's
    /// 1e-6 is 1,000), an integer since a const parameter cannot be a float on stable Rust.
    pub const EPS: f64 = EPS_E9 as f64 / 1e9;
}

impl<const M: usize, E: Dtype, D: Storage<E>, const EPS_E9: usize> NonMutableModule for LayerNorm<M, E, D, EPS_E9> {}

impl<B: Dim, const M: usize, E: Element, D: Device<E>, T: Tape<E, D>, const EPS_E9: usize>
    Module<Tensor<(B, Const<M>), E, D, T>> for LayerNorm<M, E, D, EPS_E9>
{
    type Output = Tensor<(B, Const<M>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<M>), E, D, T>) -> Result<Self::Output, D::Err> {
        let shape = *x.shape();
        x.try_normalize::<Axis<1>>(Self::EPS)?
            .try_mul(self.weight.retaped::<T>().try_broadcast_like(&shape)?)?
            .try_add(self.bias.retaped::<T>().try_broadcast_like(&shape)?)
    }
}

impl<B: Dim, S: Dim, const M: usize, E: Element, D: Device<E>, T: Tape<E, D>, const EPS_E9: usize>
    Module<Tensor<(B, S, Const<M>), E, D, T>> for LayerNorm<M, E, D, EPS_E9>
{
    type Output = Tensor<(B, S, Const<M>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, S, Const<M>), E, D, T>) -> Result<Self::Output, D::Err> {
        let shape = *x.shape();
        x.try_normalize::<Axis<2>>(Self::EPS)?
            .try_mul(self.weight.retaped::<T>().try_broadcast_like(&shape)?)?
            .try_add(self.bias.retaped::<T>().try_broadcast_like(&shape)?)
    }
}

/// Images: each pixel's `M` channels normalised (ConvNeXt's `LayerNorm2d`).
impl<B: Dim, H: Dim, W: Dim, const M: usize, E: Element, D: Device<E>, T: Tape<E, D>, const EPS_E9: usize>
    Module<Tensor<(B, Const<M>, H, W), E, D, T>> for LayerNorm<M, E, D, EPS_E9>
{
    type Output = Tensor<(B, Const<M>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<M>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        let shape = *x.shape();
        x.try_normalize::<Axis<1>>(Self::EPS)?
            .try_mul(self.weight.retaped::<T>().try_broadcast_like::<_, Axes3<0, 2, 3>>(&shape)?)?
            .try_add(self.bias.retaped::<T>().try_broadcast_like::<_, Axes3<0, 2, 3>>(&shape)?)
    }
}

impl<const M: usize, E: Element, D: Device<E>, const EPS_E9: usize> TensorCollection<E, D>
    for LayerNorm<M, E, D, EPS_E9>
{
    type To<E2: Dtype, D2: Device<E2>> = LayerNorm<M, E2, D2, EPS_E9>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor("weight", |s| &s.weight, |s| &mut s.weight, TensorOptions::reset_to_ones()),
                Self::tensor("bias", |s| &s.bias, |s| &mut s.bias, TensorOptions::reset_to_zeros()),
            ),
            |(weight, bias)| LayerNorm { weight, bias },
        )
    }
}

impl<const M: usize, E: Element, D: Device<E>, const EPS_E9: usize> BuildOnDevice<D, E> for LayerNorm<M, E, D, EPS_E9> {
    type Built = Self;
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn matches_a_naive_layer_norm_with_gradients() {
        let dev: Cpu = Default::default();
        let mut ln = LayerNorm::<4, f64, Cpu>::build_on_device(&dev);
        ln.weight = dev.tensor([0.5, 1.0, -2.0, 3.0]);
        ln.bias = dev.tensor([0.0, 1.0, 0.5, -1.0]);
        let xs: Vec<f64> = (0..2 * 3 * 4).map(|i| ((i * 37) % 17) as f64 / 4.0 - 2.0).collect();
        let reference = |xs: &[f64], w: &[f64; 4]| -> Vec<f64> {
            let mut out = Vec::new();
            for row in xs.chunks(4) {
                let mean = row.iter().sum::<f64>() / 4.0;
                let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 4.0;
                for (j, v) in row.iter().enumerate() {
                    out.push((v - mean) / (var + 1e-5).sqrt() * w[j] + [0.0, 1.0, 0.5, -1.0][j]);
                }
            }
            out
        };
        let w = [0.5, 1.0, -2.0, 3.0];
        let want = reference(&xs, &w);

        let x3: Tensor<Rank3<2, 3, 4>, f64, _> = dev.tensor(xs.clone());
        let y3 = ln.forward(x3.clone());
        let x2: Tensor<(usize, Const<4>), f64, _> = dev.tensor_from_vec(xs.clone(), (6, Const));
        let y2 = ln.forward(x2);
        for ((a, b), c) in y3.as_vec().iter().zip(y2.as_vec()).zip(&want) {
            assert!((a - c).abs() < 1e-10 && (b - c).abs() < 1e-10);
        }

        // d/dweight[j] of sum(y * k) by central differences on the reference.
        let k: Vec<f64> = (0..24).map(|i| (i % 5) as f64 - 2.0).collect();
        let g = (ln.forward(x3.leaky_trace()) * dev.tensor_from_vec(k.clone(), (Const::<2>, Const::<3>, Const::<4>)))
            .sum()
            .backward();
        let gw = g.get(&ln.weight).as_vec();
        for j in 0..4 {
            let f = |d: f64| {
                let mut wp = w;
                wp[j] += d;
                reference(&xs, &wp).iter().zip(&k).map(|(a, b)| a * b).sum::<f64>()
            };
            let fd = (f(1e-6) - f(-1e-6)) / 2e-6;
            assert!((gw[j] - fd).abs() < 1e-6, "{} vs {fd}", gw[j]);
        }
    }

    /// On images each pixel's channels are normalised, with the given eps.
    #[test]
    fn images_normalise_channels_with_their_eps() {
        let dev: Cpu = Default::default();
        let mut ln = LayerNorm::<3, f64, Cpu, 1_000>::build_on_device(&dev);
        ln.weight = dev.tensor([0.5, -1.0, 2.0]);
        ln.bias = dev.tensor([0.1, 0.0, -0.3]);
        let xs: Vec<f64> = (0..2 * 3 * 2 * 2).map(|i| ((i * 29) % 13) as f64 / 3.0 - 2.0).collect();
        let x: Tensor<Rank4<2, 3, 2, 2>, f64, Cpu> = dev.tensor_from_vec(xs.clone(), (Const, Const, Const, Const));
        let y = ln.forward(x).as_vec();
        for b in 0..2 {
            for p in 0..4 {
                let at = |c: usize| (b * 3 + c) * 4 + p;
                let v: Vec<f64> = (0..3).map(|c| xs[at(c)]).collect();
                let mean = v.iter().sum::<f64>() / 3.0;
                let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0;
                for c in 0..3 {
                    let want = (v[c] - mean) / (var + 1e-6).sqrt() * [0.5, -1.0, 2.0][c] + [0.1, 0.0, -0.3][c];
                    assert!((y[at(c)] - want).abs() < 1e-12, "{} vs {want}", y[at(c)]);
                }
            }
        }
    }
}
