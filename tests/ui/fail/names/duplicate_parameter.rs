use residual::residual;

// Two block parameters of one name: the second is the error.
residual! {
    block B(w, w) { conv(w, 3) }
    model Net[3, 32, 32] { B(16, 16) }
}

fn main() {}
