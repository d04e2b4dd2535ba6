use residual::residual;

// A numbered name (`layer{1}:`) numbers the copies of `x N`; without one it is an error at the braces.
residual! {
    model Net[3, 32, 32] {
        layer{1}: conv(16, 3, padding = 1) -> relu
    }
}

fn main() {}
