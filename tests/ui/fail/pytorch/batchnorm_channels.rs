use residual::residual;

// PyTorch's `BatchNorm2d(64)`: here the channels are inferred and the first argument is eps.
residual! {
    model Net[3, 32, 32] {
        conv(64, 3, padding = 1) -> bn(64) -> relu
    }
}

fn main() {}
