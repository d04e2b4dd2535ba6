use residual::residual;

// `conv` needs its kernel size.
residual! {
    model Net[3, 32, 32] {
        conv(16) -> relu
    }
}

fn main() {}
