//! An input of more than 2^31 values per sample.
use residual::residual;

residual! {
    model Net[1024, 1024, 4096] {
        relu
    }
}

fn main() {}
