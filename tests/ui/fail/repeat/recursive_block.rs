use residual::residual;

residual! {
    block A { B }
    block B { relu -> A }
    model Net[3, 32, 32] { A }
}

fn main() {}
