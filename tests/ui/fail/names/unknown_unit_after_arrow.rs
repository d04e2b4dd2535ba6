//! An unknown unit with arguments: one error at its name (not "unknown parameter `x`"), and no
//! shape error after it (what it would do to the shape is unknown).
use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(16, 3, padding = 1) -> tap(x) -> conv(16, 3, padding = 1) -> mul(x) -> global_avgpool -> linear(10)
    }
}

fn main() {}
