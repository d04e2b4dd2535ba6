//! `conv(2000000000, 1)` once passed `cargo check`: every tensor is capped at 2^31 elements,
//! like the input dims, and the error is at the argument that broke it.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(2000000000, 1) -> global_avgpool
    }
}

fn main() {}
