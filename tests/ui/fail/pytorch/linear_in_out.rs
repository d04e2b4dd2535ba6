//! PyTorch's `Linear(512, 10)` habit: the error names it (once a confusing "`bias` must be
//! `true` or `false`").
use residual::residual;

residual! {
    model Net[3, 32, 32] {
        conv(512, 3) -> global_avgpool -> linear(512, 10)
    }
}

fn main() {}
