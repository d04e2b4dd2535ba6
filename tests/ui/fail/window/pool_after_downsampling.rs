use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(8, 3, stride = 4) -> maxpool(3, stride = 2) -> maxpool(3, stride = 2) -> maxpool(3)
    }
}

fn main() {}
