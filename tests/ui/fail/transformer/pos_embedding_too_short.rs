//! A position embedding must have a position for every token.
use residual::residual;

residual! {
    model Net[16, 32] {
        pos_embedding(len = 8) -> linear(10)
    }
}

fn main() {}
