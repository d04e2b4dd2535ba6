use residual::residual;

residual! {
    block B(w, w) { relu }
    block B { relu }
    model Net[3, 32, 32] {
        conv1: conv(16, 3) -> conv1: conv(16, 3)
    }
    model Net[3, 32, 32] { relu }
}

fn main() {}
