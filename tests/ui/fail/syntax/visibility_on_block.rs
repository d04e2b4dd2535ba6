//! Blocks are templates, not types: no visibility.
use residual::residual;

residual! {
    pub block B(w) { conv(w, 3, padding = 1) }
    model Net[3, 32, 32] { B(16) }
}

fn main() {}
