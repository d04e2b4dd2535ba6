//! Non-ASCII layer names are Rust identifiers too: each becomes its own field and key.
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        日本: conv(8, 3) -> 正規化: bn -> relu
    }
}

fn main() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<Net, f32>();
    let _: Tensor<Rank4<1, 8, 6, 6>, f32, Cpu> = m.forward(dev.zeros::<Rank4<1, 3, 8, 8>>());
    let _ = (&m.日本, &m.正規化);
}
