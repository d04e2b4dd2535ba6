//! Token ids are the model's input: only its first layer can embed them.
use residual::residual;

residual! {
    model Net[16] {
        linear(16) -> embedding(100, 8)
    }
}

fn main() {}
