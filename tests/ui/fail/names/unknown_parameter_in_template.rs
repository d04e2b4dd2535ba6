use residual::residual;

residual! {
    block Bottleneck(width, stride = 1) {
        conv(widht, 1) -> bn
    }
    model Net[3, 32, 32] {
        layer1: Bottleneck(64)
    }
}

fn main() {}
