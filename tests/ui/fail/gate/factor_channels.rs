use residual::residual;

// A squeeze-and-excitation gate whose last conv gives the wrong channel count: one error at
// `gate`, with the shape a factor must have and an example.
residual! {
    block Se(c) {
        se: gate { adaptive_avgpool(1) -> fc1: conv(c / 4, 1, bias = true) -> relu -> fc2: conv(c / 2, 1, bias = true) -> hardsigmoid }
    }
    model Net[3, 32, 32] {
        conv(64, 3, padding = 1) -> bn -> relu -> Se(64)
    }
}

fn main() {}
