//! Attention heads must split the model width evenly.
use residual::residual;

residual! {
    model Net[16, 64] {
        residual { layernorm -> attention(5) }
    }
}

fn main() {}
