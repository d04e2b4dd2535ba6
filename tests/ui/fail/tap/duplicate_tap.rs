//! A tap name bound twice in one body.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        conv(8, 3, padding = 1) -> tap(a) -> relu -> tap(a) -> add(a)
    }
}

fn main() {}
