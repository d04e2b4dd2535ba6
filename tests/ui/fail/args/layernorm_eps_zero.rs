use residual::residual;

// A layer norm eps that is no small positive number: one error at the argument.
residual! {
    model Net[3, 32, 32] {
        conv(16, 3) -> layernorm(eps = 0)
    }
}

fn main() {}
