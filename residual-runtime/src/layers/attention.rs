//! `SelfAttention`: multi-head self-attention on sequences `[B, S, M]`, with an optional causal
//! mask, stored as PyTorch's `nn.MultiheadAttention` stores it: one packed `in_proj_weight`
//! `[3M, M]` and `in_proj_bias` `[3M]` (queries, keys, values in that order), and `out_proj`.
//! So torchvision's ViT keys (`self_attention.in_proj_weight`, `self_attention.out_proj.weight`)
//! fall out, and its checkpoints load as they are.
//!
//! dfdx 0.13's `MultiHeadAttention` computes the same thing, but with four separate `Linear`s
//! (`w_q`, `w_k`, `w_v`, `w_o`) and no mask: neither PyTorch's names nor GPT's causality. This is
//! its computation, over a packed projection, built of dfdx ops, so the backward pass is dfdx's
//! tape and the `cuda` feature has it too.

use dfdx::nn::{BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Axes2, Axes4, Axes5, Axis, Const, Dim, Dtype, HasShape, Rank1, Rank2};
use dfdx::tensor::{PutTape, SplitTape, Storage, Tape, Tensor, TensorFrom};
use dfdx::tensor_ops::{BroadcastTo, Device, PermuteTo, ReshapeTo, SelectTo, TryAdd, TryMatMul, TryMul};

use crate::Element;

/// Self-attention of `H` heads on `[B, S, M]` (`M3` is `3 * M`, spelled out because a const
/// parameter cannot be computed from another on stable Rust; the macro fills it in, and
/// [`SelfAttention::HEAD_DIM`] checks both at compile time). `CAUSAL`: position `i` attends
/// to positions `0..=i` only (a decoder); otherwise to all.
#[derive(Clone, Debug)]
pub struct SelfAttention<const M: usize, const M3: usize, const H: usize, const CAUSAL: bool, E: Dtype, D: Storage<E>> {
    /// `[3M, M]`: the query, key and value projections stacked, as PyTorch packs them.
    pub in_proj_weight: Tensor<Rank2<M3, M>, E, D>,
    pub in_proj_bias: Tensor<Rank1<M3>, E, D>,
    /// `out_proj.weight`, `[M, M]`.
    pub out_proj_weight: Tensor<Rank2<M, M>, E, D>,
    /// `out_proj.bias`, `[M]`.
    pub out_proj_bias: Tensor<Rank1<M>, E, D>,
}

impl<const M: usize, const M3: usize, const H: usize, const C: bool, E: Dtype, D: Storage<E>>
    SelfAttention<M, M3, H, C, E, D>
{
    /// The width of one head, `M / H`; evaluating it checks the const parameters.
    pub const HEAD_DIM: usize = {
        assert!(H > 0 && M.is_multiple_of(H), "the model width must be a multiple of the number of heads");
        assert!(M3 == 3 * M, "M3 must be 3 * M");
        M / H
    };
}

impl<const M: usize, const M3: usize, const H: usize, const C: bool, E: Dtype, D: Storage<E>> NonMutableModule
    for SelfAttention<M, M3, H, C, E, D>
{
}

impl<const M: usize, const M3: usize, const H: usize, const C: bool, E: Element, D: Device<E>> TensorCollection<E, D>
    for SelfAttention<M, M3, H, C, E, D>
{
    type To<E2: Dtype, D2: Device<E2>> = SelfAttention<M, M3, H, C, E2, D2>;

    /// PyTorch's initialisation: Xavier-uniform packed projection, zero biases, and `out_proj`'s
    /// weight as a `Linear`'s (uniform in +-1/sqrt(M)).
    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            (
                Self::tensor(
                    "in_proj_weight",
                    |s| &s.in_proj_weight,
                    |s| &mut s.in_proj_weight,
                    TensorOptions::reset_with(|t| {
                        // Xavier-uniform over the packed [3M, M] weight, as PyTorch.
                        t.try_fill_with_distr(crate::init::uniform::<E>((6.0 / (M + M3).max(1) as f64).sqrt()))
                    }),
                ),
                Self::tensor(
                    "in_proj_bias",
                    |s| &s.in_proj_bias,
                    |s| &mut s.in_proj_bias,
                    TensorOptions::reset_to_zeros(),
                ),
                Self::tensor(
                    "out_proj.weight",
                    |s| &s.out_proj_weight,
                    |s| &mut s.out_proj_weight,
                    TensorOptions::reset_with(|t| t.try_fill_with_distr(crate::init::uniform_bound::<E>(M))),
                ),
                Self::tensor(
                    "out_proj.bias",
                    |s| &s.out_proj_bias,
                    |s| &mut s.out_proj_bias,
                    TensorOptions::reset_to_zeros(),
                ),
            ),
            |(in_proj_weight, in_proj_bias, out_proj_weight, out_proj_bias)| SelfAttention {
                in_proj_weight,
                in_proj_bias,
                out_proj_weight,
                out_proj_bias,
            },
        )
    }
}

impl<const M: usize, const M3: usize, const H: usize, const C: bool, E: Element, D: Device<E>> BuildOnDevice<D, E>
    for SelfAttention<M, M3, H, C, E, D>
{
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}

impl<B, S, const M: usize, const M3: usize, const H: usize, const C: bool, E, D, T>
    Module<Tensor<(B, S, Const<M>), E, D, T>> for SelfAttention<M, M3, H, C, E, D>
where
    B: Dim,
    S: Dim,
    E: Element,
    D: Device<E>,
    T: Tape<E, D>,
{
    type Output = Tensor<(B, S, Const<M>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, S, Const<M>), E, D, T>) -> Result<Self::Output, D::Err> {
        let head = Self::HEAD_DIM;
        let (b, s, _) = *x.shape();
        // [B, S, 3M] = x W_in^T + b_in, then [3, B, H, S, M/H]: queries, keys, values by head.
        let qkv = x
            .try_matmul(self.in_proj_weight.retaped::<T>().try_permute::<_, Axes2<1, 0>>()?)?
            .try_add(self.in_proj_bias.retaped::<T>().try_broadcast_like(&(b, s, Const::<M3>))?)?;
        let qkv =
            qkv.try_reshape_like(&(b, s, Const::<3>, Const::<H>, head))?.try_permute::<_, Axes5<2, 0, 3, 1, 4>>()?;
        // The three selects share `qkv`'s tape: the first carries it, the others start empty
        // ones, and the products below merge them (dfdx's own attention does the same).
        let (qkv, tape) = qkv.split_tape();
        let dev = qkv.device().clone();
        let q = qkv.clone().put_tape(tape).try_select(dev.tensor(0usize))?;
        let k = qkv.clone().retaped::<T>().try_select(dev.tensor(1usize))?;
        let v = qkv.retaped::<T>().try_select(dev.tensor(2usize))?;

        // Scores [B, H, S, S], scaled by 1/sqrt(M/H); a causal model masks the future with -inf,
        // as PyTorch's `is_causal` does (the diagonal is never masked, so no row is all -inf).
        let scale = E::from_f64(1.0 / (head as f64).sqrt()).unwrap_or_default();
        let scores = q.try_matmul(k.try_permute::<_, Axes4<0, 1, 3, 2>>()?)?.try_mul(scale)?;
        let scores = if C {
            let shape = *scores.shape();
            let mask = dev.try_upper_tri_like(&(s, s), E::neg_infinity(), 1)?;
            scores.try_add(mask.try_broadcast_like::<_, Axes2<0, 1>>(&shape)?)?
        } else {
            scores
        };
        let weights = scores.try_softmax::<Axis<3>>()?;

        // [B, H, S, M/H] -> [B, S, M], then the output projection.
        let heads = weights.try_matmul(v)?.try_permute::<_, Axes4<0, 2, 1, 3>>()?;
        let joined = heads.try_reshape_like(&(b, s, Const::<M>))?;
        joined
            .try_matmul(self.out_proj_weight.retaped::<T>().try_permute::<_, Axes2<1, 0>>()?)?
            .try_add(self.out_proj_bias.retaped::<T>().try_broadcast_like(&(b, s, Const::<M>))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    /// A naive f64 loop: `softmax(q k^T / sqrt(d)) v` per head with PyTorch's packing.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f64],
        s: usize,
        m: usize,
        h: usize,
        causal: bool,
        w: &[f64],
        bw: &[f64],
        wo: &[f64],
        bo: &[f64],
    ) -> Vec<f64> {
        let d = m / h;
        let proj = |i: usize, row: usize| -> f64 {
            // Output feature `row` of the packed projection of token `i`.
            bw[row] + (0..m).map(|c| w[row * m + c] * x[i * m + c]).sum::<f64>()
        };
        let mut joined = vec![0.0; s * m];
        for head in 0..h {
            for i in 0..s {
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        if causal && j > i {
                            f64::NEG_INFINITY
                        } else {
                            (0..d).map(|e| proj(i, head * d + e) * proj(j, m + head * d + e)).sum::<f64>()
                                / (d as f64).sqrt()
                        }
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                for e in 0..d {
                    joined[i * m + head * d + e] = (0..s).map(|j| exps[j] / sum * proj(j, 2 * m + head * d + e)).sum();
                }
            }
        }
        (0..s * m)
            .map(|k| bo[k % m] + (0..m).map(|c| wo[(k % m) * m + c] * joined[(k / m) * m + c]).sum::<f64>())
            .collect()
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        (0..n as u64).map(|i| (((i * 7919 + seed * 104729) % 1000) as f64 / 500.0 - 1.0) * 0.7).collect()
    }

    fn check<const CAUSAL: bool>() {
        let dev: Cpu = Default::default();
        let mut att = SelfAttention::<4, 12, 2, CAUSAL, f64, Cpu>::build_on_device(&dev);
        let (w, bw, wo, bo) = (values(48, 1), values(12, 2), values(16, 3), values(4, 4));
        att.in_proj_weight.copy_from(&w);
        att.in_proj_bias.copy_from(&bw);
        att.out_proj_weight.copy_from(&wo);
        att.out_proj_bias.copy_from(&bo);
        let xs = values(2 * 3 * 4, 5);
        let x: Tensor<Rank3<2, 3, 4>, f64, Cpu> = dev.tensor_from_vec(xs.clone(), (Const, Const, Const));
        let y = att.forward(x).as_vec();
        for batch in 0..2 {
            let want = naive(&xs[batch * 12..(batch + 1) * 12], 3, 4, 2, CAUSAL, &w, &bw, &wo, &bo);
            for (a, b) in y[batch * 12..(batch + 1) * 12].iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "causal {CAUSAL}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn matches_a_naive_loop() {
        check::<false>();
        check::<true>();
    }

    /// With a causal mask, token 0's output depends on token 0 only.
    #[test]
    fn causal_ignores_the_future() {
        let dev: Cpu = Default::default();
        let att = SelfAttention::<4, 12, 2, true, f64, Cpu>::build_on_device(&dev);
        let mut xs = values(12, 6);
        let x: Tensor<Rank2<3, 4>, f64, Cpu> = dev.tensor_from_vec(xs.clone(), (Const, Const));
        let a = att.forward(x.reshape::<Rank3<1, 3, 4>>()).as_vec();
        xs[4..].iter_mut().for_each(|v| *v += 1.0);
        let x: Tensor<Rank2<3, 4>, f64, Cpu> = dev.tensor_from_vec(xs, (Const, Const));
        let b = att.forward(x.reshape::<Rank3<1, 3, 4>>()).as_vec();
        assert_eq!(a[..4], b[..4]);
        assert_ne!(a[4..8], b[4..8]);
    }
}
