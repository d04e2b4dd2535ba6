use residual::residual;

residual! {
    model Net[3, 5, 5] {
        conv(8, 7)
    }
}

fn main() {}
