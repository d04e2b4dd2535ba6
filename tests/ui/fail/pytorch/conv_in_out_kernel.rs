//! PyTorch's `Conv2d(3, 64, 3)` habit: our `conv` infers its input channels, so this would be
//! out = 3, kernel = 64, stride = 3. The error says so and shows the spelling.
use residual::residual;

residual! {
    model Net[3, 224, 224] {
        conv(3, 64, 3) -> bn -> relu -> global_avgpool -> linear(10)
    }
}

fn main() {}
