//! Attention (causal or not) works on sequences; an image must become tokens first.
use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(64, 8, stride = 8) -> attention(4, causal = true)
    }
}

fn main() {}
