use residual::residual;

// `in_channels` is the input of a block; a model body knows its input and writes the number.
residual! {
    model Net[3, 32, 32] {
        conv(16, 3, padding = 1) -> conv(2 * in_channels, 1)
    }
}

fn main() {}
