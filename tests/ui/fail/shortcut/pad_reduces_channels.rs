use residual::residual;

residual! {
    model Net[32, 16, 16] {
        residual { conv(16, 3, padding = 1) } shortcut pad
    }
}

fn main() {}
