//! `MaxPool2d` and `AvgPool2d`: statically shaped pooling layers over [`crate::pool`].

use dfdx::nn::{Module, NonMutableModule, ZeroSizedModule};
use dfdx::shapes::{Const, Dim, HasShape};
use dfdx::tensor::{Tape, Tensor};
use dfdx::tensor_ops::Device;

use crate::pool::{self, ImageShape, Pool2dConfig, Pool2dKernel, Pool2dOp, PoolKind};
use crate::{Element, Error};

/// `floor((input + 2 * pad - kernel) / stride) + 1`, checked when a layer is monomorphized.
const fn pooled(input: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (input + 2 * pad - kernel) / stride + 1
}

macro_rules! pool_layer {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $checked:path) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name<
            const K: usize,
            const STRIDE: usize,
            const PAD: usize,
            const OH: usize,
            const OW: usize,
        >;

        impl<const K: usize, const STRIDE: usize, const PAD: usize, const OH: usize, const OW: usize>
            ZeroSizedModule for $name<K, STRIDE, PAD, OH, OW>
        {
        }
        impl<const K: usize, const STRIDE: usize, const PAD: usize, const OH: usize, const OW: usize>
            NonMutableModule for $name<K, STRIDE, PAD, OH, OW>
        {
        }

        impl<const K: usize, const STRIDE: usize, const PAD: usize, const OH: usize, const OW: usize>
            $name<K, STRIDE, PAD, OH, OW>
        {
            pub const CONFIG: Pool2dConfig = Pool2dConfig { kernel: K, stride: STRIDE, padding: PAD };

            /// The same pooling for an input of any shape (e.g. `usize` dims), checked at run
            /// time; errors name the expected and found shapes. The output is `OH x OW` only when
            /// the input is `H x W` as the layer was declared for.
            pub fn try_forward_checked<S, E, D, T>(
                &self,
                x: Tensor<S, E, D, T>,
            ) -> Result<Tensor<S::Resized, E, D, T>, Error>
            where
                S: ImageShape,
                E: Element,
                D: Device<E> + Pool2dKernel<E>,
                T: Tape<E, D>,
            {
                $checked(x, Self::CONFIG)
            }

            fn op<const H: usize, const W: usize>(batch: usize, channels: usize) -> Pool2dOp {
                const {
                    assert!(K >= 1 && STRIDE >= 1 && PAD <= K / 2, "invalid pooling config");
                    assert!(H + 2 * PAD >= K && W + 2 * PAD >= K, "input smaller than the pooling window");
                    assert!(OH == pooled(H, K, STRIDE, PAD), "OH does not match the pooling arithmetic");
                    assert!(OW == pooled(W, K, STRIDE, PAD), "OW does not match the pooling arithmetic");
                }
                Pool2dOp {
                    batch,
                    channels,
                    kernel: K,
                    stride: STRIDE,
                    padding: PAD,
                    in_h: H,
                    in_w: W,
                    out_h: OH,
                    out_w: OW,
                }
            }
        }

        impl<B, C, const H: usize, const W: usize, const K: usize, const STRIDE: usize, const PAD: usize, const OH: usize, const OW: usize, E, D, T>
            Module<Tensor<(B, C, Const<H>, Const<W>), E, D, T>> for $name<K, STRIDE, PAD, OH, OW>
        where
            B: Dim,
            C: Dim,
            E: Element,
            D: Device<E> + Pool2dKernel<E>,
            T: Tape<E, D>,
        {
            type Output = Tensor<(B, C, Const<OH>, Const<OW>), E, D, T>;
            type Error = D::Err;

            fn try_forward(&self, x: Tensor<(B, C, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
                let (b, c, _, _) = *x.shape();
                let op = Self::op::<H, W>(b.size(), c.size());
                pool::pool2d_unchecked(x, $kind, op, (b, c, Const, Const))
            }
        }

        impl<C, const H: usize, const W: usize, const K: usize, const STRIDE: usize, const PAD: usize, const OH: usize, const OW: usize, E, D, T>
            Module<Tensor<(C, Const<H>, Const<W>), E, D, T>> for $name<K, STRIDE, PAD, OH, OW>
        where
            C: Dim,
            E: Element,
            D: Device<E> + Pool2dKernel<E>,
            T: Tape<E, D>,
        {
            type Output = Tensor<(C, Const<OH>, Const<OW>), E, D, T>;
            type Error = D::Err;

            fn try_forward(&self, x: Tensor<(C, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
                let (c, _, _) = *x.shape();
                let op = Self::op::<H, W>(1, c.size());
                pool::pool2d_unchecked(x, $kind, op, (c, Const, Const))
            }
        }
    };
}

pool_layer!(
    /// Max pooling, `K x K` window, padding counted as `-inf` (PyTorch's `nn.MaxPool2d`).
    /// `OH`/`OW` are the output size the macro computed; monomorphization re-checks them.
    MaxPool2d,
    PoolKind::Max,
    pool::try_max_pool2d
);

pool_layer!(
    /// Average pooling, `K x K` window, `count_include_pad = true` (PyTorch's `nn.AvgPool2d`).
    /// `OH`/`OW` are the output size the macro computed; monomorphization re-checks them.
    AvgPool2d,
    PoolKind::Avg,
    pool::try_avg_pool2d
);
