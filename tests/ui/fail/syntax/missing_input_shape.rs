use residual::residual;

residual! {
    model Net {
        conv(16, 3)
    }
}

fn main() {}
