//! The GRAMMAR.md example, verbatim, and a forward pass type-checked at the output type.
use residual::dfdx::prelude::*;
use residual::{residual, ModelInfo};

residual! {
    /// torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3).
    block Bottleneck(width, stride = 1, expansion = 4) {
        residual {
            conv1: conv(width, 1) -> bn1: bn -> relu
            -> conv2: conv(width, 3, stride = stride, padding = 1) -> bn2: bn -> relu
            -> conv3: conv(expansion * width, 1) -> bn3: bn
        } shortcut auto
        -> relu
    }

    /// ResNet-152 for 224x224 ImageNet images.
    #[init(kaiming_normal)]
    pub model ResNet152[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: Bottleneck(64) x 3
        -> layer2: Bottleneck(128) x 8 (first: stride = 2)
        -> layer3: Bottleneck(256) x 36 (first: stride = 2)
        -> layer4: Bottleneck(512) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }
}

#[allow(dead_code)]
fn forward(m: &ResNet152, x: Tensor<Rank4<2, 3, 224, 224>, f32, Cpu>) -> Tensor<Rank2<2, 1000>, f32, Cpu> {
    m.forward(x)
}

fn main() {
    assert_eq!(<ResNet152 as ModelInfo>::NUM_PARAMS, 60_192_808);
}
