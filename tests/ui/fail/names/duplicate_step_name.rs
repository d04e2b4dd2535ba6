use residual::residual;

// Names in a sequence become parameter paths: the second `conv1` is the error.
residual! {
    model Net[3, 32, 32] {
        conv1: conv(16, 3) -> conv1: conv(16, 3)
    }
}

fn main() {}
