//! A declaration that does not parse: the model is still declared (with its input shape, read
//! from the tokens), so building and running it adds no error to the parse error. Its output
//! is unknown, so `forward` returns `!`, which fits any annotation (code after it would get an
//! "unreachable" warning: the one trace the fallback leaves).
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(16, 3) bn -> relu
    }
}

fn main() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<Net<f32, Cpu>, f32>();
    let _y: Tensor<Rank4<1, 16, 6, 6>, f32, Cpu> = m.forward(dev.zeros::<Rank4<1, 3, 8, 8>>());
}
