use residual::residual;

// `bias` is a flag.
residual! {
    model Net[3, 32, 32] {
        conv(16, 3, bias = 1) -> relu
    }
}

fn main() {}
