//! A block may not take a built-in layer'\''s name.
use residual::residual;

residual! {
    block conv(w) { relu }
    model Net[3, 8, 8] { relu }
}

fn main() {}
