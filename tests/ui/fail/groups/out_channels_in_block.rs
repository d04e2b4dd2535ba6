use residual::residual;

residual! {
    block Grouped(width, groups = 32) {
        conv(width, 3, padding = 1, groups = groups) -> bn -> relu
    }
    model Net[64, 8, 8] {
        a: Grouped(64) -> b: Grouped(48)
    }
}

fn main() {}
