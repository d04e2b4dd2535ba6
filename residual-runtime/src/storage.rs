//! Moving buffers between dfdx tensors and our kernels, with dfdx 0.13's public API only.
//!
//! dfdx 0.13 keeps a tensor's buffer to itself: `Tensor`'s fields are `pub(crate)`, and so are
//! the `Tensorlike` trait (whose `data()` would lend the buffer) and `GhostTensor`'s name
//! (checked: `dfdx/src/tensor/mod.rs` re-exports both `pub(crate)` only). Building a tensor from a
//! device buffer (`build_tensor`) is crate-private too. So each device says here how our kernels
//! get their inputs and how their outputs become tensors. The kernel traits have this as a
//! supertrait, so layer bounds stay `D: Device<E> + <kernel trait>`.
//!
//! On the CPU, output buffers become tensors without a copy; reading an input costs one memcpy
//! (`CopySlice::copy_into`), the cheapest read dfdx 0.13 allows from outside.

use dfdx::shapes::{Dtype, HasShape, Shape};
use dfdx::tensor::{Cpu, Storage, Tensor, TensorFromVec};

/// A device whose buffers (`Self::Vec`) our kernels can fill and read.
pub trait TensorStorage<E: Dtype>: Storage<E> {
    /// Wraps `buf`, laid out contiguous row-major for `shape`, in a tensor with no tape.
    fn try_tensor_from_storage<S: Shape>(&self, buf: Self::Vec, shape: S) -> Result<Tensor<S, E, Self>, Self::Err>;

    /// A buffer holding `t`'s elements, contiguous row-major. `t` must be contiguous (callers
    /// run `try_contiguous` first): its physical buffer is what is read.
    fn try_storage_of<S: Shape, T>(&self, t: &Tensor<S, E, Self, T>) -> Result<Self::Vec, Self::Err>;
}

impl<E: Dtype> TensorStorage<E> for Cpu {
    fn try_tensor_from_storage<S: Shape>(&self, mut buf: Self::Vec, shape: S) -> Result<Tensor<S, E, Self>, Self::Err> {
        // `CachableVec` derefs to `Vec<E>`: taking the Vec moves the allocation out (no copy);
        // the emptied shell dropped here holds nothing. `try_tensor_from_vec` checks the length.
        let data: Vec<E> = std::mem::take(&mut *buf);
        self.try_tensor_from_vec(data, shape)
    }

    fn try_storage_of<S: Shape, T>(&self, t: &Tensor<S, E, Self, T>) -> Result<Self::Vec, Self::Err> {
        // `alloc_len` zero-fills through calloc (dfdx's default `fast-alloc`), so the pages are
        // first touched by the copy itself.
        let mut buf = self.try_alloc_len(t.shape().num_elements())?;
        t.copy_into(&mut buf);
        Ok(buf)
    }
}
