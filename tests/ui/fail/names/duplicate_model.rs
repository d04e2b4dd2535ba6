use residual::residual;

// Each model is a struct: the second `Net` is the error.
residual! {
    model Net[3, 32, 32] { conv(16, 3) }
    model Net[3, 32, 32] { relu }
}

fn main() {}
