//! `ConvTranspose2d`: a statically shaped, bias-free 2D transposed convolution (PyTorch's
//! `nn.ConvTranspose2d(bias=False)`, the U-Net's "up-conv"); compose with [`super::Bias2d`] for a
//! bias.

use std::marker::PhantomData;

use dfdx::nn::{BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Const, Dim, Dtype, HasShape, Rank4};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::Device;

use crate::conv::transpose::conv_transpose2d_unchecked;
use crate::conv::{Conv2dKernel, Conv2dOp};
use crate::init::{ConvInit, TorchDefaultInit};
use crate::Element;

/// `IN -> OUT` channels, a `K x K` kernel, stride, padding, output padding, dilation and groups
/// as PyTorch's `ConvTranspose2d`: `OH = (H - 1) * STRIDE - 2 * PAD + DIL * (K - 1) + OUT_PAD + 1`.
/// The output size is a parameter because stable Rust cannot compute it in a type; the
/// `residual!` macro fills it in and the forward pass re-checks it at monomorphization.
///
/// Parameters: `weight [IN, OUT_PER_GROUP, K, K]` (PyTorch's layout), `OUT_PER_GROUP = OUT /
/// GROUPS`, initialised by `I` with PyTorch's fan-in, `OUT_PER_GROUP * K * K`.
#[derive(Clone, Debug)]
pub struct ConvTranspose2d<
    const IN: usize,
    const OUT: usize,
    const K: usize,
    const STRIDE: usize,
    const PAD: usize,
    const OUT_PAD: usize,
    const DIL: usize,
    const GROUPS: usize,
    const OUT_PER_GROUP: usize,
    const OH: usize,
    const OW: usize,
    E: Dtype,
    D: Storage<E>,
    I = TorchDefaultInit,
> {
    pub weight: Tensor<Rank4<IN, OUT_PER_GROUP, K, K>, E, D>,
    init: PhantomData<I>,
}

/// The output size along one axis, or `None` when it is not positive.
pub const fn conv_transpose_out_size(
    size: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
) -> Option<usize> {
    if size == 0 || kernel == 0 || stride == 0 || dilation == 0 {
        return None;
    }
    let full = (size - 1) * stride + dilation * (kernel - 1) + output_padding + 1;
    if full <= 2 * padding {
        return None;
    }
    Some(full - 2 * padding)
}

/// `true` when the const parameters describe a valid transposed conv mapping `H x W` to `OH x OW`
/// (PyTorch also requires the output padding to be below the stride or the dilation).
#[allow(clippy::too_many_arguments)]
const fn consistent(
    (inp, out, k, stride, pad, out_pad, dil, groups, out_per_group): (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
    ),
    (h, w, oh, ow): (usize, usize, usize, usize),
) -> bool {
    if groups == 0 || out != groups * out_per_group || inp % groups != 0 || (out_pad >= stride && out_pad >= dil) {
        return false;
    }
    let oh_ok = matches!(conv_transpose_out_size(h, k, stride, pad, out_pad, dil), Some(v) if v == oh);
    let ow_ok = matches!(conv_transpose_out_size(w, k, stride, pad, out_pad, dil), Some(v) if v == ow);
    oh_ok && ow_ok
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const OUT_PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const OUT_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Dtype,
        D: Storage<E>,
        I,
    > ConvTranspose2d<IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP, OH, OW, E, D, I>
{
    #[allow(clippy::type_complexity)]
    const PARAMS: (usize, usize, usize, usize, usize, usize, usize, usize, usize) =
        (IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP);

    /// The conv this one transposes: from our output (its input) to our input (its output).
    fn op_for(batch: usize, h: usize, w: usize) -> Conv2dOp {
        Conv2dOp {
            batch,
            in_channels: OUT,
            out_channels: IN,
            groups: GROUPS,
            kernel: K,
            stride: STRIDE,
            padding: PAD,
            dilation: DIL,
            in_h: OH,
            in_w: OW,
            out_h: h,
            out_w: w,
        }
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const OUT_PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const OUT_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        const H: usize,
        const W: usize,
        B: Dim,
        E: Element,
        D: Device<E> + Conv2dKernel<E>,
        T: Tape<E, D>,
        I,
    > Module<Tensor<(B, Const<IN>, Const<H>, Const<W>), E, D, T>>
    for ConvTranspose2d<IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP, OH, OW, E, D, I>
{
    type Output = Tensor<(B, Const<OUT>, Const<OH>, Const<OW>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<IN>, Const<H>, Const<W>), E, D, T>) -> Result<Self::Output, D::Err> {
        const {
            assert!(
                consistent(Self::PARAMS, (H, W, OH, OW)),
                "ConvTranspose2d: OH/OW do not match the arithmetic for this input, or OUT != GROUPS * OUT_PER_GROUP, or IN is not a multiple of GROUPS, or OUT_PAD is not below STRIDE or DIL"
            )
        };
        let batch = x.shape().0;
        let op = Self::op_for(batch.size(), H, W);
        conv_transpose2d_unchecked(x, self.weight.clone(), op, (batch, Const, Const, Const))
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const OUT_PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const OUT_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Dtype,
        D: Storage<E>,
        I,
    > NonMutableModule
    for ConvTranspose2d<IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP, OH, OW, E, D, I>
{
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const OUT_PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const OUT_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Element,
        D: Device<E>,
        I: ConvInit,
    > TensorCollection<E, D>
    for ConvTranspose2d<IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP, OH, OW, E, D, I>
{
    type To<E2: Dtype, D2: Device<E2>> =
        ConvTranspose2d<IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP, OH, OW, E2, D2, I>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "weight",
                |s| &s.weight,
                |s| &mut s.weight,
                // PyTorch's fans for this layout: dim 1 times the kernel area is the fan-in.
                TensorOptions::reset_with(|t| I::init(t, OUT_PER_GROUP * K * K, IN / GROUPS.max(1) * K * K)),
            ),
            |weight| ConvTranspose2d { weight, init: PhantomData },
        )
    }
}

impl<
        const IN: usize,
        const OUT: usize,
        const K: usize,
        const STRIDE: usize,
        const PAD: usize,
        const OUT_PAD: usize,
        const DIL: usize,
        const GROUPS: usize,
        const OUT_PER_GROUP: usize,
        const OH: usize,
        const OW: usize,
        E: Element,
        D: Device<E>,
        I: ConvInit,
    > BuildOnDevice<D, E>
    for ConvTranspose2d<IN, OUT, K, STRIDE, PAD, OUT_PAD, DIL, GROUPS, OUT_PER_GROUP, OH, OW, E, D, I>
{
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    /// PyTorch's definition, written as a scatter in f64: every input pixel adds its value times
    /// the kernel to the output window it maps to.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        w: &[f64],
        (b, cin, h, wd): (usize, usize, usize, usize),
        (cout, k, s, p, op, d, g): (usize, usize, usize, usize, usize, usize, usize),
    ) -> (Vec<f64>, usize, usize) {
        let oh = (h - 1) * s + d * (k - 1) + op + 1 - 2 * p;
        let ow = (wd - 1) * s + d * (k - 1) + op + 1 - 2 * p;
        let (ipg, opg) = (cin / g, cout / g);
        let mut y = vec![0.0; b * cout * oh * ow];
        for bi in 0..b {
            for ci in 0..cin {
                let grp = ci / ipg;
                for i in 0..h {
                    for j in 0..wd {
                        for oc in 0..opg {
                            for ki in 0..k {
                                for kj in 0..k {
                                    let (yi, yj) = (
                                        (i * s + ki * d) as isize - p as isize,
                                        (j * s + kj * d) as isize - p as isize,
                                    );
                                    if yi < 0 || yj < 0 || yi as usize >= oh || yj as usize >= ow {
                                        continue;
                                    }
                                    let co = grp * opg + oc;
                                    y[((bi * cout + co) * oh + yi as usize) * ow + yj as usize] +=
                                        x[((bi * cin + ci) * h + i) * wd + j] * w[((ci * opg + oc) * k + ki) * k + kj];
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, oh, ow)
    }

    fn values(n: usize, salt: usize) -> Vec<f64> {
        (0..n).map(|i| (((i + salt) * 7919 % 101) as f64 - 50.0) / 37.0).collect()
    }

    /// Forward against the naive scatter, and both gradients against finite differences, for one
    /// configuration `ConvTranspose2d<4, 6, K, S, P, OP, DIL, G, 6 / G, OH, OW>` on a 2x4x3x5 input.
    macro_rules! case {
        ($name:ident, $k:literal, $s:literal, $p:literal, $op:literal, $d:literal, $g:literal, $oh:literal, $ow:literal) => {
            #[test]
            fn $name() {
                type L = ConvTranspose2d<4, 6, $k, $s, $p, $op, $d, $g, { 6 / $g }, $oh, $ow, f64, Cpu>;
                let dev: Cpu = Default::default();
                let mut layer = L::build_on_device(&dev);
                let wv = values(4 * (6 / $g) * $k * $k, 3);
                layer.weight = dev.tensor_from_vec(wv.clone(), (Const, Const, Const, Const));
                let xv = values(2 * 4 * 3 * 5, 11);
                let (want, oh, ow) = naive(&xv, &wv, (2, 4, 3, 5), (6, $k, $s, $p, $op, $d, $g));
                assert_eq!((oh, ow), ($oh, $ow));
                let x: Tensor<Rank4<2, 4, 3, 5>, f64, Cpu> =
                    dev.tensor_from_vec(xv.clone(), (Const, Const, Const, Const));
                let y = layer.forward(x.leaky_trace());
                for (i, (a, b)) in y.as_vec().iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-12, "y[{i}]: {a} vs {b}");
                }
                let r = values(want.len(), 5);
                let rt: Tensor<Rank4<2, 6, $oh, $ow>, f64, Cpu> =
                    dev.tensor_from_vec(r.clone(), (Const, Const, Const, Const));
                let grads = (y * rt).sum::<Rank0, _>().backward();
                let (gx, gw) = (grads.get(&x).as_vec(), grads.get(&layer.weight).as_vec());
                let loss = |x: &[f64], w: &[f64]| -> f64 {
                    let (y, _, _) = naive(x, w, (2, 4, 3, 5), (6, $k, $s, $p, $op, $d, $g));
                    y.iter().zip(&r).map(|(a, b)| a * b).sum()
                };
                let h = 1e-6;
                for i in 0..xv.len() {
                    let (mut p, mut m) = (xv.clone(), xv.clone());
                    p[i] += h;
                    m[i] -= h;
                    let num = (loss(&p, &wv) - loss(&m, &wv)) / (2.0 * h);
                    assert!((gx[i] - num).abs() < 1e-6, "dx[{i}]: {} vs {num}", gx[i]);
                }
                for i in 0..wv.len() {
                    let (mut p, mut m) = (wv.clone(), wv.clone());
                    p[i] += h;
                    m[i] -= h;
                    let num = (loss(&xv, &p) - loss(&xv, &m)) / (2.0 * h);
                    assert!((gw[i] - num).abs() < 1e-6, "dw[{i}]: {} vs {num}", gw[i]);
                }
            }
        };
    }

    // U-Net's up-conv: kernel 2, stride 2.
    case!(kernel2_stride2, 2, 2, 0, 0, 1, 1, 6, 10);
    // Kernel 3, stride 2, padding 1, output padding 1: exactly twice the size.
    case!(stride2_same_with_output_padding, 3, 2, 1, 1, 1, 1, 6, 10);
    // Groups and dilation.
    case!(grouped_dilated, 3, 1, 1, 0, 2, 2, 5, 7);

    #[test]
    fn out_size_as_pytorch() {
        assert_eq!(conv_transpose_out_size(28, 2, 2, 0, 0, 1), Some(56));
        assert_eq!(conv_transpose_out_size(7, 3, 2, 1, 1, 1), Some(14));
        assert_eq!(conv_transpose_out_size(1, 1, 1, 1, 0, 1), None);
        assert_eq!(conv_transpose_out_size(0, 3, 1, 0, 0, 1), None);
    }
}
