use residual::residual;

residual! {
    model Mlp[8, 32] {
        residual { layernorm -> linear(64) } shortcut identity
    }
}

fn main() {}
