use residual::residual;

// `adaptive_avgpool(3)` on a 7x7 map: PyTorch's uneven bins have no kernel here; one error at
// the argument.
residual! {
    model Net[3, 28, 28] {
        conv(8, 3, stride = 4, padding = 1) -> adaptive_avgpool(3) -> flatten -> linear(10)
    }
}

fn main() {}
