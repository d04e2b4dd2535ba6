//! Arguments for the first copy without `first:`.
use residual::residual;

residual! {
    block B(w, stride = 1) { conv(w, 3, stride = stride, padding = 1) }
    model Net[3, 32, 32] {
        B(16) x 2 (stride = 2)
    }
}

fn main() {}
