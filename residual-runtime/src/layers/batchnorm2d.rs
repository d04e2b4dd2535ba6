//! `BatchNorm2d`: PyTorch's `nn.BatchNorm2d` (eps 1e-5, momentum 0.1 unless given) for inputs
//! with any tape.
//!
//! dfdx's own `BatchNorm2D` implements `Module` only for `NoneTape` and `ModuleMut` only for
//! `OwnedTape`, and names its parameters `scale`/`bias`; this one takes any tape both ways and
//! uses torchvision's names, so checkpoints load key for key. It composes dfdx tensor ops, so it
//! runs on every device.

use dfdx::nn::{BuildOnDevice, Module, ModuleMut, ModuleVisitor, TensorCollection, TensorOptions};
use dfdx::shapes::{Axes, Axes2, Axes3, Const, Dim, Dtype, HasAxes, HasShape, Rank1, ReduceShapeTo, Shape};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::{BroadcastTo, Device, MeanTo, TryAdd, TryDiv, TryMul, TrySub};

use crate::Element;

/// Batch normalization over the channels of `(B, C, H, W)` (or `(C, H, W)`) images.
///
/// - `Module::forward` (evaluation) normalizes with the running statistics.
/// - `ModuleMut::forward_mut` (training) normalizes with the batch's statistics over `(B, H, W)`
///   (biased variance) and updates the running statistics with momentum 0.1, using the
///   *unbiased* batch variance for `running_var`, exactly as PyTorch.
///
/// `ZERO_GAMMA = true` initialises `weight` to zeros (torchvision's `zero_init_residual`).
#[derive(Clone, Debug)]
pub struct BatchNorm2d<
    const C: usize,
    E: Dtype,
    D: Storage<E>,
    const ZERO_GAMMA: bool = false,
    const EPS_E9: usize = 10_000,
    const MOMENTUM_E6: usize = 100_000,
> {
    /// gamma, trainable. Ones (zeros when `ZERO_GAMMA`).
    pub weight: Tensor<Rank1<C>, E, D>,
    /// beta, trainable. Zeros.
    pub bias: Tensor<Rank1<C>, E, D>,
    /// A buffer (never updated by optimizers). Zeros.
    pub running_mean: Tensor<Rank1<C>, E, D>,
    /// A buffer (never updated by optimizers). Ones.
    pub running_var: Tensor<Rank1<C>, E, D>,
}

impl<const C: usize, E: Dtype, D: Storage<E>, const Z: bool, const EPS_E9: usize, const MOM_E6: usize>
    BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    /// Added to the variance before the square root: `EPS_E9` billionths (PyTorch's default
    /// 1e-5 is 10,000; MobileNetV3's 1e-3 is 1,000,000). Integers, since a const parameter
    /// cannot be a float on stable Rust.
    pub const EPS: f64 = EPS_E9 as f64 / 1e9;
    /// `running = (1 - momentum) * running + momentum * batch_stat`: `MOMENTUM_E6` millionths
    /// (PyTorch's default 0.1 is 100,000).
    pub const MOMENTUM: f64 = MOM_E6 as f64 / 1e6;
}

impl<const C: usize, E: Element, D: Device<E>, const Z: bool, const EPS_E9: usize, const MOM_E6: usize>
    BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    fn try_eval<S, Ax, T>(&self, x: Tensor<S, E, D, T>) -> Result<Tensor<S, E, D, T>, D::Err>
    where
        S: Shape + ReduceShapeTo<Rank1<C>, Ax>,
        Ax: Axes,
        T: Tape<E, D>,
    {
        let shape = *x.shape();
        // The running statistics are constants here: kept off the tape.
        let std = self.running_var.clone().try_add(Self::eps())?.try_sqrt()?;
        let scale = self.weight.retaped::<T>().try_div(std)?;
        let centered = x.try_sub(self.running_mean.clone().try_broadcast_like(&shape)?)?;
        centered
            .try_mul(scale.try_broadcast_like(&shape)?)?
            .try_add(self.bias.retaped::<T>().try_broadcast_like(&shape)?)
    }

    fn try_train<S, Ax, T>(&mut self, x: Tensor<S, E, D, T>) -> Result<Tensor<S, E, D, T>, D::Err>
    where
        S: Shape + HasAxes<Ax> + ReduceShapeTo<Rank1<C>, Ax>,
        Ax: Axes,
        T: Tape<E, D>,
    {
        let shape = *x.shape();
        let n = <S as HasAxes<Ax>>::size(&shape) as f64;

        // Batch statistics, on the tape: the gradient flows through mean and variance. Each
        // statistic's tape holds its backward ops, so it is moved (not `retaped`) into its use.
        let mean = x.retaped::<T>().try_mean::<Rank1<C>, Ax>()?;
        // Running statistics are updated off the tape (axpy reads the values only).
        self.running_mean.try_axpy(1.0 - Self::MOMENTUM, &mean, Self::MOMENTUM)?;
        let centered = x.try_sub(mean.try_broadcast_like(&shape)?)?;
        let var = centered.retaped::<T>().try_square()?.try_mean::<Rank1<C>, Ax>()?;

        // PyTorch updates running_var with the unbiased variance; with one value per channel
        // that is undefined (PyTorch refuses to train), so running_var is then left as it is.
        if n > 1.0 {
            self.running_var.try_axpy(1.0 - Self::MOMENTUM, &var, Self::MOMENTUM * n / (n - 1.0))?;
        }

        let std = var.try_add(Self::eps())?.try_sqrt()?;
        let scale = self.weight.retaped::<T>().try_div(std)?;
        centered
            .try_mul(scale.try_broadcast_like(&shape)?)?
            .try_add(self.bias.retaped::<T>().try_broadcast_like(&shape)?)
    }

    fn eps() -> E {
        E::from(Self::EPS).unwrap_or_else(E::epsilon)
    }
}

impl<
        B: Dim,
        const C: usize,
        H: Dim,
        W: Dim,
        E: Element,
        D: Device<E>,
        T: Tape<E, D>,
        const Z: bool,
        const EPS_E9: usize,
        const MOM_E6: usize,
    > Module<Tensor<(B, Const<C>, H, W), E, D, T>> for BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    type Output = Tensor<(B, Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        self.try_eval::<_, Axes3<0, 2, 3>, T>(x)
    }
}

impl<
        const C: usize,
        H: Dim,
        W: Dim,
        E: Element,
        D: Device<E>,
        T: Tape<E, D>,
        const Z: bool,
        const EPS_E9: usize,
        const MOM_E6: usize,
    > Module<Tensor<(Const<C>, H, W), E, D, T>> for BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    type Output = Tensor<(Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        self.try_eval::<_, Axes2<1, 2>, T>(x)
    }
}

impl<
        B: Dim,
        const C: usize,
        H: Dim,
        W: Dim,
        E: Element,
        D: Device<E>,
        T: Tape<E, D>,
        const Z: bool,
        const EPS_E9: usize,
        const MOM_E6: usize,
    > ModuleMut<Tensor<(B, Const<C>, H, W), E, D, T>> for BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    type Output = Tensor<(B, Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward_mut(&mut self, x: Tensor<(B, Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        self.try_train::<_, Axes3<0, 2, 3>, T>(x)
    }
}

/// An unbatched image trains as a batch of one: statistics over `(H, W)`.
impl<
        const C: usize,
        H: Dim,
        W: Dim,
        E: Element,
        D: Device<E>,
        T: Tape<E, D>,
        const Z: bool,
        const EPS_E9: usize,
        const MOM_E6: usize,
    > ModuleMut<Tensor<(Const<C>, H, W), E, D, T>> for BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    type Output = Tensor<(Const<C>, H, W), E, D, T>;
    type Error = D::Err;

    fn try_forward_mut(&mut self, x: Tensor<(Const<C>, H, W), E, D, T>) -> Result<Self::Output, D::Err> {
        self.try_train::<_, Axes2<1, 2>, T>(x)
    }
}

impl<const C: usize, E: Element, D: Device<E>, const Z: bool, const EPS_E9: usize, const MOM_E6: usize>
    TensorCollection<E, D> for BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    type To<E2: Dtype, D2: Device<E2>> = BatchNorm2d<C, E2, D2, Z, EPS_E9, MOM_E6>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        let weight_init = if Z { TensorOptions::reset_to_zeros() } else { TensorOptions::reset_to_ones() };
        visitor.visit_fields(
            (
                Self::tensor("weight", |s| &s.weight, |s| &mut s.weight, weight_init),
                Self::tensor("bias", |s| &s.bias, |s| &mut s.bias, TensorOptions::reset_to_zeros()),
                // Buffers: `detached` keeps optimizers off them and out of `num_trainable_params`.
                Self::tensor(
                    "running_mean",
                    |s| &s.running_mean,
                    |s| &mut s.running_mean,
                    TensorOptions::detached(|t| t.try_fill_with_zeros()),
                ),
                Self::tensor(
                    "running_var",
                    |s| &s.running_var,
                    |s| &mut s.running_var,
                    TensorOptions::detached(|t| t.try_fill_with_ones()),
                ),
            ),
            |(weight, bias, running_mean, running_var)| BatchNorm2d { weight, bias, running_mean, running_var },
        )
    }
}

impl<const C: usize, E: Element, D: Device<E>, const Z: bool, const EPS_E9: usize, const MOM_E6: usize>
    BuildOnDevice<D, E> for BatchNorm2d<C, E, D, Z, EPS_E9, MOM_E6>
{
    type Built = Self;
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    const B: usize = 3;
    const CH: usize = 2;
    const H: usize = 3;
    const W: usize = 2;
    const EPS: f64 = 1e-5;

    /// PyTorch's training-mode batch norm, written out in f64: returns the output and updates
    /// the running statistics in place.
    fn reference_train(x: &[f64], gamma: &[f64], beta: &[f64], rm: &mut [f64], rv: &mut [f64]) -> Vec<f64> {
        let n = (B * H * W) as f64;
        let mut y = vec![0.0; x.len()];
        for c in 0..CH {
            let idx = |b: usize, i: usize| (b * CH + c) * H * W + i;
            let mut sum = 0.0;
            for b in 0..B {
                for i in 0..H * W {
                    sum += x[idx(b, i)];
                }
            }
            let mean = sum / n;
            let mut sq = 0.0;
            for b in 0..B {
                for i in 0..H * W {
                    sq += (x[idx(b, i)] - mean).powi(2);
                }
            }
            let var = sq / n;
            for b in 0..B {
                for i in 0..H * W {
                    y[idx(b, i)] = (x[idx(b, i)] - mean) / (var + EPS).sqrt() * gamma[c] + beta[c];
                }
            }
            rm[c] = 0.9 * rm[c] + 0.1 * mean;
            rv[c] = 0.9 * rv[c] + 0.1 * sq / (n - 1.0);
        }
        y
    }

    fn input(seed: u64) -> Vec<f64> {
        // A deterministic, uneven spread per channel.
        (0..B * CH * H * W)
            .map(|i| ((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 250.0 - 2.0 + (i % 7) as f64 * 0.3)
            .collect()
    }

    type Bn = BatchNorm2d<CH, f64, Cpu>;

    fn build(dev: &Cpu) -> Bn {
        let mut bn = Bn::build_on_device(dev);
        bn.weight = dev.tensor([1.5, -0.5]);
        bn.bias = dev.tensor([0.25, 2.0]);
        bn
    }

    /// A scalar loss with uneven weights, so every output element matters differently.
    fn loss_weights() -> Vec<f64> {
        (0..B * CH * H * W).map(|i| ((i * 13) % 11) as f64 / 5.0 - 1.0).collect()
    }

    #[test]
    fn train_matches_pytorch_semantics_over_two_steps() {
        let dev: Cpu = Default::default();
        let mut bn = build(&dev);
        let (mut rm, mut rv) = (vec![0.0; CH], vec![1.0; CH]);
        for step in 0..2u64 {
            let xs = input(step);
            let x: Tensor<Rank4<B, CH, H, W>, f64, _> = dev.tensor(xs.clone());
            let y = bn.forward_mut(x);
            let want = reference_train(&xs, &[1.5, -0.5], &[0.25, 2.0], &mut rm, &mut rv);
            for (a, b) in y.as_vec().iter().zip(&want) {
                assert!((a - b).abs() < 1e-10, "step {step}: {a} vs {b}");
            }
            for (a, b) in bn.running_mean.as_vec().iter().zip(&rm) {
                assert!((a - b).abs() < 1e-12, "running_mean {a} vs {b}");
            }
            for (a, b) in bn.running_var.as_vec().iter().zip(&rv) {
                assert!((a - b).abs() < 1e-12, "running_var {a} vs {b}");
            }
        }
        // Evaluation uses the running statistics.
        let xs = input(5);
        let y = bn.forward(dev.tensor_from_vec(xs.clone(), (Const::<B>, Const::<CH>, Const::<H>, Const::<W>)));
        for (i, a) in y.as_vec().iter().enumerate() {
            let c = (i / (H * W)) % CH;
            let want = (xs[i] - rm[c]) / (rv[c] + EPS).sqrt() * [1.5, -0.5][c] + [0.25, 2.0][c];
            assert!((a - want).abs() < 1e-10);
        }
    }

    #[test]
    fn train_gradients_match_finite_differences() {
        let dev: Cpu = Default::default();
        let xs = input(1);
        let wl = loss_weights();
        let loss_of = |x: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
            let (mut rm, mut rv) = (vec![0.0; CH], vec![1.0; CH]);
            let y = reference_train(x, gamma, beta, &mut rm, &mut rv);
            y.iter().zip(&wl).map(|(a, b)| a * b).sum()
        };
        let (gamma, beta) = ([1.5, -0.5], [0.25, 2.0]);

        let mut bn = build(&dev);
        let x: Tensor<Rank4<B, CH, H, W>, f64, _> = dev.tensor(xs.clone());
        // A leaky tape keeps the input's gradient too (`alloc_grads` keeps only parameters').
        let y = bn.forward_mut(x.leaky_trace());
        let w: Tensor<Rank4<B, CH, H, W>, f64, _> = dev.tensor(wl.clone());
        let g = (y * w).sum().backward();

        let h = 1e-6;
        let central = |f: &dyn Fn(f64) -> f64| (f(h) - f(-h)) / (2.0 * h);
        let gx = g.get(&x).as_vec();
        for i in 0..xs.len() {
            let fd = central(&|d| {
                let mut xp = xs.clone();
                xp[i] += d;
                loss_of(&xp, &gamma, &beta)
            });
            assert!((gx[i] - fd).abs() < 1e-6, "d/dx[{i}]: tape {} vs fd {fd}", gx[i]);
        }
        let gw = g.get(&bn.weight).as_vec();
        let gb = g.get(&bn.bias).as_vec();
        for c in 0..CH {
            let fd_w = central(&|d| {
                let mut gp = gamma;
                gp[c] += d;
                loss_of(&xs, &gp, &beta)
            });
            let fd_b = central(&|d| {
                let mut bp = beta;
                bp[c] += d;
                loss_of(&xs, &gamma, &bp)
            });
            assert!((gw[c] - fd_w).abs() < 1e-6, "d/dweight[{c}]: {} vs {fd_w}", gw[c]);
            assert!((gb[c] - fd_b).abs() < 1e-6, "d/dbias[{c}]: {} vs {fd_b}", gb[c]);
        }
    }

    #[test]
    fn parameters_use_torchvision_names_and_buffers_are_not_trainable() {
        let dev: Cpu = Default::default();
        let bn = BatchNorm2d::<4, f32, Cpu>::build_on_device(&dev);
        assert_eq!(bn.weight.as_vec(), vec![1.0; 4]);
        assert_eq!(bn.running_var.as_vec(), vec![1.0; 4]);
        assert_eq!(bn.running_mean.as_vec(), vec![0.0; 4]);
        // weight + bias only: the running statistics are buffers.
        assert_eq!(bn.num_trainable_params(), 8);
        let zero = BatchNorm2d::<4, f32, Cpu, true>::build_on_device(&dev);
        assert_eq!(zero.weight.as_vec(), vec![0.0; 4]);
    }

    #[test]
    fn works_with_any_tape_and_unbatched() {
        let dev: Cpu = Default::default();
        let mut bn = build(&dev);
        // Evaluation with a tape: gradients reach weight and bias.
        let x: Tensor<Rank3<CH, H, W>, f64, _> = dev.tensor(input(2)[..CH * H * W].to_vec());
        let g = bn.forward(x.leaky_trace()).sum().backward();
        // d/dbias of a sum is the number of elements per channel.
        assert_eq!(g.get(&bn.bias).as_vec(), vec![(H * W) as f64; CH]);
        // Training without a tape still updates the running statistics.
        let before = bn.running_mean.as_vec();
        let _ = bn.forward_mut(dev.tensor_from_vec(input(3), (Const::<B>, Const::<CH>, Const::<H>, Const::<W>)));
        assert_ne!(bn.running_mean.as_vec(), before);
    }

    /// `EPS_E9` and `MOMENTUM_E6` (MobileNetV3's eps 1e-3, momentum 0.01) reach both modes.
    #[test]
    fn eps_and_momentum_are_parameters() {
        type Small = BatchNorm2d<CH, f64, Cpu, false, 1_000_000, 10_000>;
        assert_eq!((Small::EPS, Small::MOMENTUM), (1e-3, 0.01));
        assert_eq!((Bn::EPS, Bn::MOMENTUM), (1e-5, 0.1));
        let dev: Cpu = Default::default();
        let mut bn = Small::build_on_device(&dev);
        bn.running_mean = dev.tensor([0.5, -1.0]);
        bn.running_var = dev.tensor([0.002, 4.0]);
        let x = input(5);
        let t = dev.tensor_from_vec(x.clone(), (Const::<B>, Const::<CH>, Const::<H>, Const::<W>));
        let y = bn.forward(t.clone()).as_vec();
        for (i, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
            let c = (i / (H * W)) % CH;
            let (m, v) = ([0.5, -1.0][c], [0.002, 4.0][c]);
            let want = (xi - m) / (v + 1e-3f64).sqrt();
            assert!((yi - want).abs() < 1e-12, "eval [{i}]: {yi} vs {want}");
        }
        let _ = bn.forward_mut(t);
        let mean0: f64 = (0..B).flat_map(|b| (0..H * W).map(move |j| (b * CH) * H * W + j)).map(|k| x[k]).sum::<f64>()
            / (B * H * W) as f64;
        let rm = bn.running_mean.as_vec();
        assert!((rm[0] - (0.99 * 0.5 + 0.01 * mean0)).abs() < 1e-12, "running mean {rm:?}");
    }
}
