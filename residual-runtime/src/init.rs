//! Weight initialisations for conv layers, matching PyTorch's and torchvision's.
//!
//! `TensorOptions::reset` is a plain `fn` pointer, so an init is a type with an associated
//! function (no state), chosen by a type parameter of the layer.

use dfdx::shapes::Shape;
use dfdx::tensor::Tensor;
use dfdx::tensor_ops::Device;
use rand_distr::{Distribution, StandardNormal, Uniform};

use crate::Element;

/// How a conv layer fills its weight when built or reset.
pub trait ConvInit: 'static + Clone + Copy + std::fmt::Debug + Default + Send + Sync {
    /// Fills `weight` (`[OUT, IN_PER_GROUP, K, K]`). `fan_in = IN_PER_GROUP * K * K` and
    /// `fan_out = OUT * K * K`, as `torch.nn.init._calculate_fan_in_and_fan_out` computes them.
    fn init<S: Shape, E: Element, D: Device<E>>(
        weight: &mut Tensor<S, E, D>,
        fan_in: usize,
        fan_out: usize,
    ) -> Result<(), D::Err>;
}

/// PyTorch's default for `nn.Conv2d`: `kaiming_uniform_(a = sqrt(5))`, which works out to
/// `U(-1 / sqrt(fan_in), 1 / sqrt(fan_in))`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TorchDefaultInit;

impl ConvInit for TorchDefaultInit {
    fn init<S: Shape, E: Element, D: Device<E>>(
        weight: &mut Tensor<S, E, D>,
        fan_in: usize,
        _fan_out: usize,
    ) -> Result<(), D::Err> {
        weight.try_fill_with_distr(uniform_bound::<E>(fan_in))
    }
}

/// torchvision's ResNet init: `kaiming_normal_(mode = "fan_out", nonlinearity = "relu")`,
/// i.e. `N(0, sqrt(2 / fan_out))`.
#[derive(Clone, Copy, Debug, Default)]
pub struct KaimingNormalFanOut;

impl ConvInit for KaimingNormalFanOut {
    fn init<S: Shape, E: Element, D: Device<E>>(
        weight: &mut Tensor<S, E, D>,
        _fan_in: usize,
        fan_out: usize,
    ) -> Result<(), D::Err> {
        let std = (2.0 / fan_out.max(1) as f64).sqrt();
        weight.try_fill_with_distr(NormalAsE { std })
    }
}

/// `U(-1 / sqrt(fan), 1 / sqrt(fan))`: PyTorch's default for conv weights and conv biases.
pub(crate) fn uniform_bound<E: Element>(fan: usize) -> Uniform<E> {
    uniform(1.0 / (fan.max(1) as f64).sqrt())
}

/// `U(-bound, bound)` in `E`.
pub(crate) fn uniform<E: Element>(bound: f64) -> Uniform<E> {
    let bound = <E as num_traits::NumCast>::from(bound).unwrap_or_else(E::one);
    Uniform::new_inclusive(-bound, bound)
}

/// `N(0, std)` sampled in f64 and cast, so no `StandardNormal: Distribution<E>` bound is needed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormalAsE {
    pub std: f64,
}

impl<E: Element> Distribution<E> for NormalAsE {
    fn sample<R: rand::Rng + ?Sized>(&self, rng: &mut R) -> E {
        let z: f64 = StandardNormal.sample(rng);
        <E as num_traits::NumCast>::from(z * self.std).unwrap_or_else(E::zero)
    }
}
