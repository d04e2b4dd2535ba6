//! Every unit, shortcut kind, layer and attribute, in one file; `f64` on the CPU.
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    block PreAct(planes, stride = 1, out = planes) {
        bn0: bn -> relu -> residual {
            conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(out, 3, padding = 1, dilation = 1, groups = 2, bias = true)
        } shortcut pad
    }
    block Proj(c) {
        residual { conv(c, 3, stride = 2, padding = 1) -> bn } shortcut proj: { conv(c, 1, stride = 2) -> bn }
    }
    block Mobile(oup, stride = 1, hidden = 2 * in_channels) {
        residual {
            conv(hidden, 1) -> bn(eps = 0.001, momentum = 0.01) -> relu6
            -> conv(hidden, 3, stride = stride, padding = 1, groups = hidden) -> bn -> hardswish
            -> se: gate { adaptive_avgpool(1) -> fc1: conv(4, 1, bias = true) -> relu -> fc2: conv(hidden, 1, bias = true) -> hardsigmoid }
            -> conv(oup, 1) -> bn
        } shortcut optional
    }
    #[zero_init_residual]
    #[init(torch_default)]
    pub(crate) model Everything[4, 16, 16] {
        stem: conv(8, 3, padding = 1) -> tap(s)
        -> stage: PreAct(8) x 2 (first: out = 8) -> add(s) -> cat(s)
        -> down: Proj(32) -> avgpool(2) -> maxpool(3, stride = 1, padding = 1)
        -> residual { conv(32, 1) } shortcut identity
        -> Mobile(32) -> Mobile(48, 2) -> gate { global_maxpool -> linear(48) -> sigmoid } -> adaptive_avgpool(2)
        -> (bn -> silu) x 1 -> flatten -> dropout(0.25) -> linear(16, bias = false)
        -> leaky_relu(0.1) -> sigmoid -> tanh -> gelu -> identity -> head: linear(4)
    }
    model Seq[10, 8] { residual { layernorm -> linear(8) } -> flatten -> linear(2) }
}

fn main() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<Everything<f64>, f64>();
    let _: Tensor<Rank2<1, 4>, f64, Cpu> = m.forward(dev.zeros::<Rank4<1, 4, 16, 16>>());
    let s = dev.build_module::<Seq, f32>();
    let _: Tensor<Rank2<3, 2>, f32, Cpu> = s.forward(dev.zeros::<Rank3<3, 10, 8>>());
}
