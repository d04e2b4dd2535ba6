//! `padding = 1` on a 1x1 conv inside a block repeated 7 times: one error, at the padding
//! (it once repeated for each block, as the map grew).
use residual::residual;

residual! {
    block Bottleneck(width) {
        residual {
            conv1: conv(width, 1, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(width, 3, padding = 1) -> bn2: bn
        }
        -> relu
    }
    model Net[3, 32, 32] {
        conv(16, 3, padding = 1) -> layer1: Bottleneck(16) x 7 -> global_avgpool -> linear(10)
    }
}

fn main() {}
