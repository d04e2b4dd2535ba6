use residual::residual;

// A probability of 2.
residual! {
    model Net[3, 32, 32] {
        conv(16, 3) -> dropout(2)
    }
}

fn main() {}
