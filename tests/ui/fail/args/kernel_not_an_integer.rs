use residual::residual;

// A size given a boolean (`conv(out, kernel, ..)`).
residual! {
    model Net[3, 32, 32] {
        conv(16, true) -> relu
    }
}

fn main() {}
