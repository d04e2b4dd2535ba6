//! A positional argument after a named one.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(16, kernel = 3, 1)
    }
}

fn main() {}
