use residual::residual;

residual! {
    model UNet[3, 32, 32] {
        enc: conv(16, 3, padding = 1) -> tap(skip1) -> dec: conv(16, 3, padding = 1) -> cat(skp1)
    }
}

fn main() {}
