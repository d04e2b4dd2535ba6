//! Ops that dfdx 0.13 lacks on stable Rust (conv2d, 2D pooling, flatten, the ResNet paper's
//! option-A shortcut), with backward passes on dfdx's tape, and the statically shaped layers the
//! `residual!` macro instantiates. See `docs/ARCHITECTURE.md` for the contracts.

pub mod conv;
#[cfg(feature = "cuda")]
mod cuda;
pub mod error;
pub mod init;
mod kernel_check;
pub mod layers;
pub mod model;
pub mod plan;
pub mod pool;
pub mod real;
pub mod shortcut;
pub mod storage;
pub mod summary;
mod tape;
pub mod upsample;

pub use error::Error;

use dfdx::shapes::Dtype;
use dfdx::tensor_ops::Device;

/// The element types the runtime computes in: `f32` and `f64`.
pub trait Element: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform + real::Real {}
impl<E: Dtype + num_traits::Float + rand_distr::uniform::SampleUniform + real::Real> Element for E {}

/// Everything a generated model needs from a device: dfdx's own kernels plus ours.
pub trait Backend<E: Element>:
    Device<E>
    + conv::Conv2dKernel<E>
    + pool::Pool2dKernel<E>
    + shortcut::SubsamplePadKernel<E>
    + upsample::Upsample2d<E>
    + plan::PlanDevice<E>
{
}
impl<E, D> Backend<E> for D
where
    E: Element,
    D: Device<E>
        + conv::Conv2dKernel<E>
        + pool::Pool2dKernel<E>
        + shortcut::SubsamplePadKernel<E>
        + upsample::Upsample2d<E>
        + plan::PlanDevice<E>,
{
}
