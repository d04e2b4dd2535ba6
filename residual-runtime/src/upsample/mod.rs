//! 2-D upsampling of `(B, C, H, W)` images: nearest neighbour (PyTorch's `mode="nearest"`,
//! `src = floor(dst * in / out)`) and bilinear with `align_corners=True` (PyTorch's
//! `mode="bilinear", align_corners=True`, the corners of input and output aligned) by dfdx's
//! kernels; and separable resampling by matrices ([`try_resample`]): bilinear with
//! `align_corners=False` (PyTorch's default, half-pixel centres) and adaptive average pooling
//! with PyTorch's uneven bins, on any device through dfdx's matmul.
//!
//! dfdx 0.13 has both kernels, with backward passes, on the CPU and on CUDA, but exports no trait
//! a generic caller can name as a bound (its `Upscale2DKernel` is crate-private). [`Upsample2d`]
//! is that bound: each device implements it by calling dfdx's kernels on its concrete type.

#[cfg(test)]
mod tests;

use dfdx::shapes::{Axes3, Const, Dim, Dtype, HasShape};
use dfdx::tensor::{Cpu, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Bilinear, Device, NearestNeighbor, PermuteTo, ReshapeTo, TryMatMul, TryUpscale2D};

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

/// How the outputs of a resampled axis read its inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resample {
    /// PyTorch's bilinear with `align_corners=False`: output `o` reads input coordinate
    /// `(o + 0.5) * in / out - 0.5`, clamped at 0, between its two neighbours.
    BilinearHalfPixel,
    /// PyTorch's `AdaptiveAvgPool2d`: output `o` averages inputs `floor(o * in / out)` up to
    /// `ceil((o + 1) * in / out)`.
    AdaptiveAverage,
}

/// The `n_in x n_out` matrix (row-major) whose column `o` holds the weight of every input in
/// output `o`: an axis of `x` times it is the resampled axis.
pub fn resample_matrix(kind: Resample, n_in: usize, n_out: usize) -> Vec<f64> {
    let mut m = vec![0.0; n_in * n_out];
    if n_in == 0 || n_out == 0 {
        return m;
    }
    for o in 0..n_out {
        match kind {
            Resample::BilinearHalfPixel => {
                let src = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
                let i0 = (src.floor() as usize).min(n_in - 1);
                let i1 = (i0 + 1).min(n_in - 1);
                let t = src - i0 as f64;
                m[i0 * n_out + o] += 1.0 - t;
                m[i1 * n_out + o] += t;
            }
            Resample::AdaptiveAverage => {
                let start = o * n_in / n_out;
                let end = ((o + 1) * n_in).div_ceil(n_out);
                let n = (end - start) as f64;
                for i in start..end {
                    m[i * n_out + o] = 1.0 / n;
                }
            }
        }
    }
    m
}

/// Resamples the spatial axes of `x` (`[B, C, H, W]` to `[B, C, OH, OW]`) by `kind`, separably:
/// each row times the width's matrix, each column times the height's. Recorded on `x`'s tape
/// through dfdx's matmul, reshape and permute, so every device has it with its gradient.
#[allow(clippy::type_complexity)]
pub fn try_resample<B, const C: usize, const H: usize, const W: usize, const OH: usize, const OW: usize, E, D, T>(
    x: Tensor<(B, Const<C>, Const<H>, Const<W>), E, D, T>,
    kind: Resample,
) -> Result<Tensor<(B, Const<C>, Const<OH>, Const<OW>), E, D, T>, D::Err>
where
    B: Dim,
    E: crate::Element,
    D: Device<E>,
    T: Tape<E, D>,
{
    let batch = x.shape().0;
    let dev = x.device().clone();
    let matrix = |n_in: usize, n_out: usize| -> Vec<E> {
        resample_matrix(kind, n_in, n_out).into_iter().map(|v| E::from_f64(v).unwrap_or_default()).collect()
    };
    let along_w = dev.try_tensor_from_vec(matrix(W, OW), (Const::<W>, Const::<OW>))?;
    let along_h = dev.try_tensor_from_vec(matrix(H, OH), (Const::<H>, Const::<OH>))?;
    let planes = x.try_reshape_like(&(batch.size() * C, Const::<H>, Const::<W>))?;
    let rows = planes.try_matmul(along_w)?;
    let cols = rows.try_permute::<_, Axes3<0, 2, 1>>()?.try_matmul(along_h)?;
    let out = cols.try_permute::<_, Axes3<0, 2, 1>>()?;
    out.try_reshape_like(&(batch, Const::<C>, Const::<OH>, Const::<OW>))
}
