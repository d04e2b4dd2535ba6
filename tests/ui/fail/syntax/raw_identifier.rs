//! A raw identifier as a layer name: names become struct fields and safetensors keys.
use residual::residual;

residual! {
    model Net[3, 8, 8] {
        r#type: conv(8, 3) -> relu
    }
}

fn main() {}
