use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(16, 3, strid = 2)
    }
}

fn main() {}
