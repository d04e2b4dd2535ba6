//! `token(i)` reads one token of the sequence: `i` must be below its length.
use residual::residual;

residual! {
    model Net[16, 32] {
        layernorm -> token(16) -> linear(10)
    }
}

fn main() {}
