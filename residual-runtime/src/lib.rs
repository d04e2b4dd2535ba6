//! Ops that dfdx 0.13 lacks on stable Rust (conv2d, 2D pooling, flatten, the ResNet paper's
//! option-A shortcut), with backward passes on dfdx's tape, and the statically shaped layers the
//! `residual!` macro instantiates. See `docs/ARCHITECTURE.md` for the contracts.

#[macro_use]
mod wide;

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
mod threads;
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

/// A dispatch threshold of the CPU kernels that benchmarks may change, to measure one choice
/// against another on the machine at hand (`bench_models --crate-gemm-rows`, `--row-split-depth`,
/// `--cnhw-train-max-batch`, `--winograd-min-tiles`, `--winograd-tile`).
#[doc(hidden)]
pub struct Knob(std::sync::atomic::AtomicUsize);

impl Knob {
    pub(crate) const fn new(v: usize) -> Self {
        Knob(std::sync::atomic::AtomicUsize::new(v))
    }

    /// Sets the threshold; returns the previous one.
    pub fn set(&self, v: usize) -> usize {
        self.0.swap(v, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}
