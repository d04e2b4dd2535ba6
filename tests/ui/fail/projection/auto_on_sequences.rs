use residual::residual;

residual! {
    model Mlp[8, 32] {
        residual { linear(64) -> gelu } shortcut auto
    }
}

fn main() {}
