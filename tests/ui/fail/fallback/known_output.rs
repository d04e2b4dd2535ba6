//! A declaration with an error after which the output shape is still known (a residual body
//! that changes the shape without a projection): `forward` keeps the declared types, so the
//! program's own shape annotations still type-check, and only the macro's error shows.
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(16, 3, padding = 1) -> residual { conv(32, 3, padding = 1) -> bn }
        -> global_avgpool -> linear(10)
    }
}

fn main() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<Net, f32>();
    let y: Tensor<Rank2<2, 10>, f32, Cpu> = m.forward(dev.zeros::<Rank4<2, 3, 8, 8>>());
    println!("{:?}", y.array());
}
