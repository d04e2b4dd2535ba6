//! 33 nested blocks, none recursive: the error names the nesting limit (once: "instantiates
//! itself", which was false).
use residual::residual;

residual! {
    block B0 { relu }
    block B1 { B0 }
    block B2 { B1 }
    block B3 { B2 }
    block B4 { B3 }
    block B5 { B4 }
    block B6 { B5 }
    block B7 { B6 }
    block B8 { B7 }
    block B9 { B8 }
    block B10 { B9 }
    block B11 { B10 }
    block B12 { B11 }
    block B13 { B12 }
    block B14 { B13 }
    block B15 { B14 }
    block B16 { B15 }
    block B17 { B16 }
    block B18 { B17 }
    block B19 { B18 }
    block B20 { B19 }
    block B21 { B20 }
    block B22 { B21 }
    block B23 { B22 }
    block B24 { B23 }
    block B25 { B24 }
    block B26 { B25 }
    block B27 { B26 }
    block B28 { B27 }
    block B29 { B28 }
    block B30 { B29 }
    block B31 { B30 }
    block B32 { B31 }
    block B33 { B32 }
    model Net[3, 8, 8] { B33 }
}

fn main() {}
