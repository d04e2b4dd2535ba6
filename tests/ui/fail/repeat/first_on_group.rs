use residual::residual;

residual! {
    model Net[3, 32, 32] {
        (conv(16, 3, padding = 1) -> relu) x 2 (first: stride = 2)
    }
}

fn main() {}
