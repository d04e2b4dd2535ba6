//! A model whose MAC count passes `u64::MAX` (each conv is about 4.5e18 MACs): an error at the
//! layer where the total overflows, where `MACS` once saturated silently.
use residual::residual;

residual! {
    model Net[1, 46000, 46000] {
        conv(1, 46000, padding = 22999) x 5
    }
}

fn main() {}
