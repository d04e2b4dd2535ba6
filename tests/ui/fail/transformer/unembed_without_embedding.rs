//! `unembed` ties the head to the model's token embedding, which this model lacks.
use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(64, 8, stride = 8) -> to_tokens -> layernorm -> unembed
    }
}

fn main() {}
