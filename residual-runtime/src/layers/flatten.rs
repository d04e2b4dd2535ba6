//! `Flatten<N>`: everything after the batch dim into one dim of `N` (PyTorch's `nn.Flatten()`).

use dfdx::nn::{Module, NonMutableModule, ZeroSizedModule};
use dfdx::shapes::{Const, Dim, HasShape};
use dfdx::tensor::{Tape, Tensor};
use dfdx::tensor_ops::{Device, ReshapeTo};

use crate::Element;

/// Flattens `(B, C, H, W)` or `(B, S, D)` into `(B, N)`; `(B, N)` passes through unchanged.
/// `N` is the size the macro computed; monomorphization re-checks it. Uses dfdx's reshape, which
/// is free for a contiguous input and works on every device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flatten<const N: usize>;

impl<const N: usize> ZeroSizedModule for Flatten<N> {}
impl<const N: usize> NonMutableModule for Flatten<N> {}

impl<B: Dim, const C: usize, const H: usize, const W: usize, const N: usize, E, D, T>
    Module<Tensor<(B, Const<C>, Const<H>, Const<W>), E, D, T>> for Flatten<N>
where
    E: Element,
    D: Device<E>,
    T: Tape<E, D>,
{
    type Output = Tensor<(B, Const<N>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<C>, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
        const { assert!(C * H * W == N, "Flatten<N>: N must be C * H * W") };
        let b = x.shape().0;
        x.try_reshape_like(&(b, Const::<N>))
    }
}

impl<B: Dim, const S: usize, const M: usize, const N: usize, E, D, T> Module<Tensor<(B, Const<S>, Const<M>), E, D, T>>
    for Flatten<N>
where
    E: Element,
    D: Device<E>,
    T: Tape<E, D>,
{
    type Output = Tensor<(B, Const<N>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<S>, Const<M>), E, D, T>) -> Result<Self::Output, D::Err> {
        const { assert!(S * M == N, "Flatten<N>: N must be S * D") };
        let b = x.shape().0;
        x.try_reshape_like(&(b, Const::<N>))
    }
}

impl<B: Dim, const N: usize, E, D, T> Module<Tensor<(B, Const<N>), E, D, T>> for Flatten<N>
where
    E: Element,
    D: Device<E>,
    T: Tape<E, D>,
{
    type Output = Tensor<(B, Const<N>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<N>), E, D, T>) -> Result<Self::Output, D::Err> {
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn flattens_in_row_major_order_and_passes_gradients() {
        let dev: Cpu = Default::default();
        let values: Vec<f64> = (0..2 * 3 * 2 * 2).map(|i| i as f64 * 0.5 - 3.0).collect();
        let x: Tensor<Rank4<2, 3, 2, 2>, f64, _> = dev.tensor(values.clone());
        let y: Tensor<Rank2<2, 12>, f64, _, _> = Flatten::<12>.forward(x.leaky_trace());
        assert_eq!(y.as_vec(), values);
        // d/dx sum(y * w) = w, laid back out in the input's shape.
        let w: Vec<f64> = (0..24).map(|i| (i * 7 % 5) as f64).collect();
        let g = (y * dev.tensor_from_vec(w.clone(), (Const::<2>, Const::<12>))).sum().backward();
        assert_eq!(g.get(&x).as_vec(), w);

        let s: Tensor<(usize, Const<4>, Const<3>), f64, _> = dev.zeros_like(&(5, Const, Const));
        let y: Tensor<(usize, Const<12>), f64, _> = Flatten::<12>.forward(s);
        assert_eq!(y.shape().0, 5);
        let z2: Tensor<Rank2<2, 12>, f64, _> = dev.tensor(values.clone());
        let z: Tensor<Rank2<2, 12>, f64, _> = Flatten::<12>.forward(z2);
        assert_eq!(z.as_vec(), values);
    }
}
