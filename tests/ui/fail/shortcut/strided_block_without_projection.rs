use residual::residual;

residual! {
    block Basic(planes, stride = 1) {
        residual {
            conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, padding = 1) -> bn2: bn
        }
        -> relu
    }
    model Net[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> layer1: Basic(16) x 2 -> layer2: Basic(32) x 2 (first: stride = 2)
    }
}

fn main() {}
