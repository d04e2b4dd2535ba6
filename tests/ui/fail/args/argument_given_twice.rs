//! The same argument named twice.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(16, 3, stride = 1, stride = 2)
    }
}

fn main() {}
