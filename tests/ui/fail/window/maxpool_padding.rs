use residual::residual;

residual! {
    model Net[3, 32, 32] {
        maxpool(3, stride = 2, padding = 2)
    }
}

fn main() {}
