//! A declaration whose error loses the shape (a kernel larger than the map): the fallback guesses
//! on (size 1 where the window does not fit), so the output type is still `[10]`; the program
//! builds the model, runs it forward (eval and train) and reads its summary, and only the macro's
//! error shows.
use residual::dfdx::prelude::*;
use residual::{residual, ModelInfo};

residual! {
    model Net[3, 8, 8] {
        conv(16, 9) -> bn -> relu -> global_avgpool -> linear(10)
    }
}

fn main() {
    let dev: Cpu = Default::default();
    let mut m = dev.build_module::<Net<f32, Cpu>, f32>();
    let y: Tensor<Rank2<2, 10>, f32, Cpu> = m.forward(dev.zeros::<Rank4<2, 3, 8, 8>>());
    let z: Tensor<Rank2<2, 10>, f32, Cpu, OwnedTape<f32, Cpu>> = m.forward_mut(dev.zeros::<Rank4<2, 3, 8, 8>>().traced(m.alloc_grads()));
    println!("{:?} {:?} {} {}", y.array(), z.array(), Net::<f32>::NUM_PARAMS, Net::<f32>::SUMMARY);
}
