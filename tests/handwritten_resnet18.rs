//! ResNet-18 written by hand from the runtime's layers and dfdx's own `Residual` /
//! `GeneralizedResidual` / `AvgPoolGlobal` / `Linear`, with no macro: the runtime layers compose
//! with dfdx's combinators, count torchvision's parameters, and train.

use residual::dfdx::nn::builders::Linear;
use residual::dfdx::nn::modules::{AvgPoolGlobal, GeneralizedResidual, ReLU, Residual};
use residual::dfdx::optim::{Momentum, Sgd, SgdConfig};
use residual::dfdx::prelude::*;
use residual::runtime::layers::{BatchNorm2d, Conv2d, MaxPool2d};

type E = f32;
type Dev = Cpu;

/// A square conv without dilation or groups, producing `OUT x HO x HO`.
type Conv<const IN: usize, const OUT: usize, const K: usize, const S: usize, const P: usize, const HO: usize> =
    Conv2d<IN, OUT, K, S, P, 1, 1, IN, HO, HO, E, Dev>;
type Bn<const C: usize> = BatchNorm2d<C, E, Dev>;

/// conv3x3 -> bn -> relu -> conv3x3 -> bn, plus identity, then relu.
type BasicBlock<const C: usize, const H: usize> =
    (Residual<(Conv<C, C, 3, 1, 1, H>, Bn<C>, ReLU, Conv<C, C, 3, 1, 1, H>, Bn<C>)>, ReLU);

/// The first block of a stage: stride 2 and a 1x1 conv + bn projection (torchvision's downsample).
type DownBlock<const I: usize, const O: usize, const H: usize> = (
    GeneralizedResidual<
        (Conv<I, O, 3, 2, 1, H>, Bn<O>, ReLU, Conv<O, O, 3, 1, 1, H>, Bn<O>),
        (Conv<I, O, 1, 2, 0, H>, Bn<O>),
    >,
    ReLU,
);

type ResNet18 = (
    (Conv<3, 64, 7, 2, 3, 112>, Bn<64>, ReLU, MaxPool2d<3, 2, 1, 56, 56>),
    (BasicBlock<64, 56>, BasicBlock<64, 56>),
    (DownBlock<64, 128, 28>, BasicBlock<128, 28>),
    (DownBlock<128, 256, 14>, BasicBlock<256, 14>),
    (DownBlock<256, 512, 7>, BasicBlock<512, 7>),
    (AvgPoolGlobal, Linear<512, 1000>),
);

#[test]
fn handwritten_resnet18_counts_runs_and_trains() {
    let dev = Dev::seed_from_u64(0);
    let mut model = dev.build_module::<ResNet18, E>();
    assert_eq!(model.num_trainable_params(), 11_689_512, "torchvision's resnet18 count");

    // A fixed batch of two 224x224 images and their labels.
    let x: Tensor<Rank4<2, 3, 224, 224>, E, Dev> = dev.sample_normal();
    let labels = dev.tensor([[0.0; 1000], [0.0; 1000]].map(|mut row| {
        row[3] = 1.0;
        row
    }));

    // Inference: the 224x224 forward pass gives finite logits of the right type.
    let logits: Tensor<Rank2<2, 1000>, E, Dev> = model.forward(x.clone());
    assert!(logits.as_vec().iter().all(|v| v.is_finite()));

    // One SGD step lowers the training loss on this batch.
    let mut opt = Sgd::new(&model, SgdConfig { lr: 0.05, momentum: Some(Momentum::Classic(0.9)), weight_decay: None });
    let mut grads = model.alloc_grads();
    let loss_before = cross_entropy_with_logits_loss(model.forward_mut(x.clone().traced(grads)), labels.clone());
    let before = loss_before.array();
    grads = loss_before.backward();
    opt.update(&mut model, &grads).expect("sgd update");
    model.zero_grads(&mut grads);

    let loss_after = cross_entropy_with_logits_loss(model.forward_mut(x.traced(grads)), labels).array();
    assert!(before.is_finite() && loss_after.is_finite());
    assert!(loss_after < before, "loss did not decrease: {before} -> {loss_after}");
}
