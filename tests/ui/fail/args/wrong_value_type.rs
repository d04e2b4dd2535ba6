use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(16, 3, bias = 1) -> conv(16, true) -> dropout(2)
    }
}

fn main() {}
