//! 2-D upsampling of `(B, C, H, W)` images: nearest neighbour (PyTorch's `mode="nearest"`,
//! `src = floor(dst * in / out)`) and bilinear with `align_corners=True` (PyTorch's
//! `mode="bilinear", align_corners=True`, the corners of input and output aligned).
//!
//! dfdx 0.13 has both kernels, with backward passes, on the CPU and on CUDA, but exports no trait
//! a generic caller can name as a bound (its `Upscale2DKernel` is crate-private). [`Upsample2d`]
//! is that bound: each device implements it by calling dfdx's kernels on its concrete type.

#[cfg(test)]
mod tests;

use dfdx::shapes::{Dim, Dtype};
use dfdx::tensor::{Cpu, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Bilinear, NearestNeighbor, TryUpscale2D};

/// An upsampled batch of images, or the device's error.
pub type Upsampled<B, C, OH, OW, E, D, T> = Result<Tensor<(B, C, OH, OW), E, D, T>, <D as dfdx::tensor::HasErr>::Err>;

/// Upsampling `(B, C, H, W)` to `(B, C, OH, OW)` on a device, recorded on the input's tape.
pub trait Upsample2d<E: Dtype>: Storage<E> + Sized {
    /// Nearest neighbour: `out[y][x] = in[floor(y * H / OH)][floor(x * W / OW)]`.
    fn try_upsample_nearest<B: Dim, C: Dim, H: Dim, W: Dim, OH: Dim, OW: Dim, T: 'static + Tape<E, Self>>(
        x: Tensor<(B, C, H, W), E, Self, T>,
        oh: OH,
        ow: OW,
    ) -> Upsampled<B, C, OH, OW, E, Self, T>;

    /// Bilinear with aligned corners: output pixel `y` reads input row `y * (H - 1) / (OH - 1)`.
    fn try_upsample_bilinear<B: Dim, C: Dim, H: Dim, W: Dim, OH: Dim, OW: Dim, T: 'static + Tape<E, Self>>(
        x: Tensor<(B, C, H, W), E, Self, T>,
        oh: OH,
        ow: OW,
    ) -> Upsampled<B, C, OH, OW, E, Self, T>;
}

impl<E: crate::Element> Upsample2d<E> for Cpu {
    fn try_upsample_nearest<B: Dim, C: Dim, H: Dim, W: Dim, OH: Dim, OW: Dim, T: 'static + Tape<E, Self>>(
        x: Tensor<(B, C, H, W), E, Self, T>,
        oh: OH,
        ow: OW,
    ) -> Upsampled<B, C, OH, OW, E, Self, T> {
        x.try_upscale2d_like(NearestNeighbor, oh, ow)
    }

    fn try_upsample_bilinear<B: Dim, C: Dim, H: Dim, W: Dim, OH: Dim, OW: Dim, T: 'static + Tape<E, Self>>(
        x: Tensor<(B, C, H, W), E, Self, T>,
        oh: OH,
        ow: OW,
    ) -> Upsampled<B, C, OH, OW, E, Self, T> {
        x.try_upscale2d_like(Bilinear, oh, ow)
    }
}

/// dfdx has CUDA upsampling kernels for `f32` and `f64` (each its own impl there).
#[cfg(feature = "cuda")]
macro_rules! cuda_upsample {
    ($($e:ty),*) => {$(
        impl Upsample2d<$e> for dfdx::tensor::Cuda {
            fn try_upsample_nearest<B: Dim, C: Dim, H: Dim, W: Dim, OH: Dim, OW: Dim, T: 'static + Tape<$e, Self>>(
                x: Tensor<(B, C, H, W), $e, Self, T>,
                oh: OH,
                ow: OW,
            ) -> Upsampled<B, C, OH, OW, $e, Self, T> {
                x.try_upscale2d_like(NearestNeighbor, oh, ow)
            }

            fn try_upsample_bilinear<B: Dim, C: Dim, H: Dim, W: Dim, OH: Dim, OW: Dim, T: 'static + Tape<$e, Self>>(
                x: Tensor<(B, C, H, W), $e, Self, T>,
                oh: OH,
                ow: OW,
            ) -> Upsampled<B, C, OH, OW, $e, Self, T> {
                x.try_upscale2d_like(Bilinear, oh, ow)
            }
        }
    )*};
}
#[cfg(feature = "cuda")]
cuda_upsample!(f32, f64);
