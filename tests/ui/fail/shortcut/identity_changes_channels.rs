use residual::residual;

residual! {
    model Net[16, 32, 32] {
        conv(16, 3, padding = 1) -> residual { conv(64, 1) -> bn }
    }
}

fn main() {}
