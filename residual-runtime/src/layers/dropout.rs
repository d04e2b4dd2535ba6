//! `Dropout<P_PER_MILLION>`: identity in `Module` (evaluation), dropout in `ModuleMut` (training).

use dfdx::nn::{Module, ModuleMut, ZeroSizedModule};
use dfdx::shapes::Shape;
use dfdx::tensor::{Tape, Tensor};
use dfdx::tensor_ops::Device;

use crate::Element;

/// Zeroes each element with probability `P_PER_MILLION / 1e6` and scales the rest by
/// `1 / (1 - p)` in `ModuleMut`; does nothing in `Module`. Unlike dfdx's `Dropout`, both work with
/// any tape, so evaluation can trace gradients and training can run without a tape. `p` is an
/// integer parameter because const generics cannot be floats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropout<const P_PER_MILLION: u32>;

impl<const P: u32> Dropout<P> {
    /// The drop probability.
    pub const PROB: f64 = {
        assert!(P < 1_000_000, "Dropout: p must be below 1");
        P as f64 / 1e6
    };
}

impl<const P: u32> ZeroSizedModule for Dropout<P> {}

impl<const P: u32, S: Shape, E: Element, D: Device<E>, T: Tape<E, D>> Module<Tensor<S, E, D, T>> for Dropout<P> {
    type Output = Tensor<S, E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<S, E, D, T>) -> Result<Self::Output, D::Err> {
        Ok(x)
    }
}

impl<const P: u32, S: Shape, E: Element, D: Device<E>, T: Tape<E, D>> ModuleMut<Tensor<S, E, D, T>> for Dropout<P> {
    type Output = Tensor<S, E, D, T>;
    type Error = D::Err;

    fn try_forward_mut(&mut self, x: Tensor<S, E, D, T>) -> Result<Self::Output, D::Err> {
        if P == 0 {
            return Ok(x);
        }
        x.try_dropout(Self::PROB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn eval_is_identity_and_train_drops_and_rescales() {
        let dev: Cpu = Default::default();
        let x: Tensor<Rank1<4000>, f64, _> = dev.ones();
        let mut layer = Dropout::<250_000>;
        assert_eq!(layer.forward(x.clone()).as_vec(), x.as_vec());

        let y = layer.forward_mut(x.leaky_trace());
        let v = y.as_vec();
        // Survivors are scaled by 1 / (1 - 0.25); the rest are zero.
        assert!(v.iter().all(|&e| e == 0.0 || (e - 4.0 / 3.0).abs() < 1e-12));
        let dropped = v.iter().filter(|&&e| e == 0.0).count() as f64 / 4000.0;
        // 4000 Bernoulli(0.25) draws: the standard deviation of the rate is ~0.007.
        assert!((dropped - 0.25).abs() < 0.05, "dropped fraction {dropped}");
        // The gradient follows the mask.
        let g = y.sum().backward();
        let gx = g.get(&x).as_vec();
        for (gi, yi) in gx.iter().zip(&v) {
            assert_eq!(*gi, *yi);
        }
    }
}
