use residual::residual;

residual! {
    model UNet[3, 32, 32] {
        enc: conv(16, 3, padding = 1) -> tap(skip) -> down: conv(32, 3, stride = 2, padding = 1) -> cat(skip)
    }
}

fn main() {}
