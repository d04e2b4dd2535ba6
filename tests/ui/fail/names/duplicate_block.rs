use residual::residual;

// Two blocks of one name: the second is the error.
residual! {
    block B { relu }
    block B { conv(16, 3) }
    model Net[3, 32, 32] { B }
}

fn main() {}
