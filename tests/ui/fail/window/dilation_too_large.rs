//! A dilation that makes the window wider than the map: the error is at `dilation` and says
//! how large it may be.
use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(16, 3, dilation = 20) -> relu
    }
}

fn main() {}
