//! A decoder with an error after its embedding: `forward` still takes token ids (`usize`) and
//! keeps its output type, so the user's training code adds no errors of its own.
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    model Gpt[8] {
        wte: embedding(50, 16) -> pos_embedding
        -> residual { layernorm -> attention(3, causal = true) }
        -> layernorm -> unembed
    }
}

fn main() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<Gpt, f32>();
    let ids: Tensor<Rank2<2, 8>, usize, Cpu> = dev.zeros();
    let y: Tensor<Rank3<2, 8, 50>, f32, Cpu> = m.forward(ids);
    println!("{:?}", y.array());
}
