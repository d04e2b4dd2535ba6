use residual::residual;

residual! {
    #[init(xavier)]
    model Net[3, 32, 32] { relu }
}

fn main() {}
