use residual::residual;

residual! {
    block Basic(planes, stride = 1) { conv(planes, 3, stride = stride, padding = 1) }
    model Net[3, 32, 32] {
        Basic(16, 1, 3)
    }
}

fn main() {}
