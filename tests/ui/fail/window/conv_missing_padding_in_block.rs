//! A 3x3 conv without `padding = 1` inside a repeated block: the error is at that conv, once,
//! with the padding that keeps the size (not at `shortcut auto` with a projection to the
//! shrunken shape, which would bake the bug in).
use residual::residual;

residual! {
    block Basic(planes) {
        residual {
            conv1: conv(planes, 3, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(planes, 3) -> bn2: bn
        } shortcut auto
        -> relu
    }
    model Net[3, 32, 32] {
        conv(16, 3, padding = 1) -> layer1: Basic(16) x 3 -> global_avgpool -> linear(10)
    }
}

fn main() {}
