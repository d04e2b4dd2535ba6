//! Another library'\''s layer name: did-you-mean gives ours.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(8, 3) -> batchnorm2d -> relu
    }
}

fn main() {}
