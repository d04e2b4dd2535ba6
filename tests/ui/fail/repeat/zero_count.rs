use residual::residual;

residual! {
    block Basic(planes) { conv(planes, 3, padding = 1) }
    model Net[3, 32, 32] {
        layer1: Basic(16) x 0
    }
}

fn main() {}
