use residual::residual;

residual! {
    model Net[6, 8, 8] {
        conv(16, 3, padding = 1, groups = 4)
    }
}

fn main() {}
