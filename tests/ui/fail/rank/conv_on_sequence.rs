use residual::residual;

residual! {
    model Net[16, 64] {
        conv(32, 3)
    }
}

fn main() {}
