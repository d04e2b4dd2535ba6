use residual::residual;

// The generated impls are generic over `E`, `D`, `B`, `T` and `V`; a model of one of those names
// would be shadowed inside them (rustc's E0109 from inside the expansion). The macro says so.
residual! {
    model B[3, 8, 8] { conv(4, 3, padding = 1) -> relu }
    model Fine[16] { linear(4) }
}

fn main() {}
