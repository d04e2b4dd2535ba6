use residual::residual;

// A block parameter without a default must be given.
residual! {
    block Basic(planes, stride = 1) { conv(planes, 3, stride = stride, padding = 1) }
    model Net[3, 32, 32] {
        conv(16, 3) -> Basic(stride = 2)
    }
}

fn main() {}
