//! Turning a buffer one of our kernels filled into a dfdx tensor, without a copy.
//!
//! dfdx 0.13 builds tensors from device buffers only inside its own crate (`build_tensor` is
//! `pub(crate)`), and `Tensor`'s fields are private. Our kernels write into `&mut D::Vec`
//! (the contract in `docs/ARCHITECTURE.md`), so each device says here how such a buffer becomes
//! a tensor. The kernel traits have this as a supertrait, so layer bounds stay
//! `D: Device<E> + <kernel trait>`.

use dfdx::shapes::{Dtype, Shape};
use dfdx::tensor::{Cpu, Storage, Tensor, TensorFromVec};

/// A device whose buffers (`Self::Vec`) can become tensors.
pub trait TensorFromStorage<E: Dtype>: Storage<E> {
    /// Wraps `buf`, laid out contiguous row-major for `shape`, in a tensor with no tape.
    fn try_tensor_from_storage<S: Shape>(
        &self,
        buf: Self::Vec,
        shape: S,
    ) -> Result<Tensor<S, E, Self>, Self::Err>;
}

impl<E: Dtype> TensorFromStorage<E> for Cpu {
    fn try_tensor_from_storage<S: Shape>(
        &self,
        mut buf: Self::Vec,
        shape: S,
    ) -> Result<Tensor<S, E, Self>, Self::Err> {
        // `CachableVec` derefs to `Vec<E>`: taking the Vec moves the allocation out (no copy);
        // the emptied shell dropped here holds nothing. `try_tensor_from_vec` checks the length.
        let data: Vec<E> = std::mem::take(&mut *buf);
        self.try_tensor_from_vec(data, shape)
    }
}
