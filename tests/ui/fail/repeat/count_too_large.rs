//! A repetition count past the 10,000-layer limit.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        relu x 100000
    }
}

fn main() {}
