//! `build_module` asked for another dtype than the model's type names: one error that says so.
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(16, 3, padding = 1) -> bn -> relu -> global_avgpool -> linear(10)
    }
}

fn main() {
    let dev: Cpu = Default::default();
    let _m = dev.build_module::<Net<f32, Cpu>, f64>();
}
