use residual::residual;

residual! {
    model Net[64, 56, 56] {
        residual {
            conv(128, 3, stride = 2, padding = 1) -> bn -> relu -> conv(256, 1) -> bn
        } shortcut { conv(128, 1, stride = 2) -> bn }
    }
}

fn main() {}
