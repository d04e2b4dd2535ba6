//! The learned tensors of a sequence model: ViT's class token (prepended to the patch tokens) and
//! the learned position embedding (added to the tokens), stored as torchvision stores them:
//! `class_token` `[1, 1, M]` and `pos_embedding` `[1, LEN, M]`.

use dfdx::nn::{BuildModule, BuildOnDevice, Module, ModuleVisitor, NonMutableModule, TensorCollection, TensorOptions};
use dfdx::shapes::{Axis, Const, Dim, Dtype, HasShape, Rank3};
use dfdx::tensor::{Storage, Tape, Tensor};
use dfdx::tensor_ops::{BroadcastTo, Device, ReshapeTo, TryAdd, TryConcatAlong};

use crate::Element;

/// A learned token put before the sequence: `[B, S, M] -> [B, S + 1, M]` (`S1` is `S + 1`,
/// spelled out because a const parameter cannot be computed on stable Rust; the macro fills it
/// in). Named `class_token`, `[1, 1, M]`, zeros at first, as torchvision's ViT.
#[derive(Clone, Debug)]
pub struct ClassToken<const M: usize, E: Dtype, D: Storage<E>> {
    pub class_token: Tensor<Rank3<1, 1, M>, E, D>,
}

impl<const M: usize, E: Dtype, D: Storage<E>> NonMutableModule for ClassToken<M, E, D> {}

impl<const M: usize, E: Element, D: Device<E>> TensorCollection<E, D> for ClassToken<M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = ClassToken<M, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor("class_token", |s| &s.class_token, |s| &mut s.class_token, TensorOptions::reset_to_zeros()),
            |class_token| ClassToken { class_token },
        )
    }
}

impl<const M: usize, E: Element, D: Device<E>> BuildOnDevice<D, E> for ClassToken<M, E, D> {
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}

impl<B: Dim, const S: usize, const M: usize, E: Element, D: Device<E>, T: Tape<E, D>>
    Module<Tensor<(B, Const<S>, Const<M>), E, D, T>> for ClassToken<M, E, D>
{
    /// `[B, S + 1, M]` with a runtime middle dim: the caller (generated code, which knows
    /// `S + 1`) reshapes it to its constant.
    type Output = Tensor<(B, usize, Const<M>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<S>, Const<M>), E, D, T>) -> Result<Self::Output, D::Err> {
        let b = x.shape().0;
        let token = self.class_token.retaped::<T>().try_reshape_like(&(Const::<M>,))?;
        let tokens = token.try_broadcast_like(&(b, 1usize, Const::<M>))?;
        let rest = x.try_reshape_like(&(b, S, Const::<M>))?;
        (tokens, rest).try_concat_along(Axis::<1>)
    }
}

/// A learned position embedding added to `[B, S, M]`: `[1, LEN, M]`, named `pos_embedding`, drawn
/// from N(0, 0.02^2) as torchvision's ViT. A sequence shorter than `LEN` (a decoder declared for
/// shorter inputs than its context) gets the first `S` positions.
#[derive(Clone, Debug)]
pub struct PosEmbedding<const LEN: usize, const M: usize, E: Dtype, D: Storage<E>> {
    pub pos_embedding: Tensor<Rank3<1, LEN, M>, E, D>,
}

impl<const L: usize, const M: usize, E: Dtype, D: Storage<E>> NonMutableModule for PosEmbedding<L, M, E, D> {}

impl<const L: usize, const M: usize, E: Element, D: Device<E>> TensorCollection<E, D> for PosEmbedding<L, M, E, D> {
    type To<E2: Dtype, D2: Device<E2>> = PosEmbedding<L, M, E2, D2>;

    fn iter_tensors<V: ModuleVisitor<Self, E, D>>(visitor: &mut V) -> Result<Option<Self::To<V::E2, V::D2>>, V::Err> {
        visitor.visit_fields(
            Self::tensor(
                "pos_embedding",
                |s| &s.pos_embedding,
                |s| &mut s.pos_embedding,
                TensorOptions::reset_with(|t| t.try_fill_with_distr(crate::init::NormalAsE { std: 0.02 })),
            ),
            |pos_embedding| PosEmbedding { pos_embedding },
        )
    }
}

impl<const L: usize, const M: usize, E: Element, D: Device<E>> BuildOnDevice<D, E> for PosEmbedding<L, M, E, D> {
    type Built = Self;
    fn try_build_on_device(device: &D) -> Result<Self, D::Err> {
        <Self as BuildModule<D, E>>::try_build(device)
    }
}

impl<B: Dim, const S: usize, const L: usize, const M: usize, E: Element, D: Device<E>, T: Tape<E, D>>
    Module<Tensor<(B, Const<S>, Const<M>), E, D, T>> for PosEmbedding<L, M, E, D>
{
    type Output = Tensor<(B, Const<S>, Const<M>), E, D, T>;
    type Error = D::Err;

    fn try_forward(&self, x: Tensor<(B, Const<S>, Const<M>), E, D, T>) -> Result<Self::Output, D::Err> {
        const { assert!(S <= L, "the sequence is longer than the position embedding") };
        let shape = *x.shape();
        let table = self.pos_embedding.retaped::<T>().try_reshape_like(&(Const::<L>, Const::<M>))?;
        let first = if S == L {
            table.try_reshape_like(&(Const::<S>, Const::<M>))?
        } else {
            table.try_slice((0..S, ..))?.try_reshape_like(&(Const::<S>, Const::<M>))?
        };
        x.try_add(first.try_broadcast_like(&shape)?)
    }
}

/// Checks that every token id is below `num`, the size of the embedding table it indexes, before
/// dfdx's gather reads row `id` (on the CPU an id past the table is an index panic deep inside
/// dfdx; on a GPU, a read out of the buffer). The generated `forward` of a model on token ids
/// calls it first.
///
/// # Panics
/// On an id `>= num`, naming it, its position and the table's size: a model's `forward` returns
/// the device's error type, which has no variant for a bad input value.
pub fn check_token_ids<S: dfdx::shapes::Shape, D: Storage<usize>, T>(ids: &Tensor<S, usize, D, T>, num: usize) {
    if let Some((at, id)) = ids.as_vec().into_iter().enumerate().find(|(_, id)| *id >= num) {
        panic!("token id {id} (at flat position {at} of the ids) is out of range for an embedding of {num} tokens");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn class_token_goes_first_and_learns() {
        let dev: Cpu = Default::default();
        let mut ct = ClassToken::<2, f64, Cpu>::build_on_device(&dev);
        assert_eq!(ct.class_token.as_vec(), vec![0.0, 0.0]);
        ct.class_token = dev.tensor([[[5.0, 6.0]]]);
        let x: Tensor<Rank3<2, 1, 2>, f64, Cpu> = dev.tensor([[[1.0, 2.0]], [[3.0, 4.0]]]);
        let y = ct.forward(x.leaky_trace());
        assert_eq!(y.as_vec(), vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0, 3.0, 4.0]);
        let g = (y * dev
            .tensor_from_vec(vec![1.0, 2.0, 0.0, 0.0, 3.0, 4.0, 0.0, 0.0], (Const::<2>, 2usize, Const::<2>)))
        .sum()
        .backward();
        assert_eq!(g.get(&ct.class_token).as_vec(), vec![4.0, 6.0]);
    }

    #[test]
    #[should_panic(
        expected = "token id 7 (at flat position 2 of the ids) is out of range for an embedding of 7 tokens"
    )]
    fn token_ids_past_the_table_are_refused_by_name() {
        let dev: Cpu = Default::default();
        let ids: Tensor<Rank2<1, 3>, usize, Cpu> = dev.tensor([[0, 6, 7]]);
        check_token_ids(&ids, 6 + 1);
    }

    #[test]
    fn position_embedding_adds_its_first_rows() {
        let dev: Cpu = Default::default();
        let mut pe = PosEmbedding::<3, 2, f64, Cpu>::build_on_device(&dev);
        pe.pos_embedding = dev.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]);
        let x: Tensor<Rank3<1, 2, 2>, f64, Cpu> = dev.tensor([[[10.0, 20.0], [30.0, 40.0]]]);
        let y = pe.forward(x.leaky_trace());
        assert_eq!(y.as_vec(), vec![11.0, 22.0, 33.0, 44.0]);
        let g = y.sum().backward();
        assert_eq!(g.get(&pe.pos_embedding).as_vec(), vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
    }
}
