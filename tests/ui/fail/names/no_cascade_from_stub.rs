use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(16, 3) -> linear(10)
    }
}

// The model type still exists (as the fallback), so this does not add a second error.
fn takes(_: Net) {}

fn main() {}
