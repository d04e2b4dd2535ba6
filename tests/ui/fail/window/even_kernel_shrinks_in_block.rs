//! A 2x2 conv inside a residual body: no padding keeps the size of an even kernel, and the
//! help says so.
use residual::residual;

residual! {
    model Net[8, 16, 16] {
        residual { conv(8, 2) -> bn } -> relu
    }
}

fn main() {}
