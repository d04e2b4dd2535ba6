//! Arithmetic in arguments is checked: division by zero is an error at the divisor.
use residual::residual;

residual! {
    block B(w) { conv(w / (w - 16), 3) }
    model Net[3, 8, 8] { B(16) }
}

fn main() {}
