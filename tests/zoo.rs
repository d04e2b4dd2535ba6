//! The zoo's parameter and MAC counts against the published figures (torchvision's model
//! docs; He et al. 2015 table 6 and 2016 for the CIFAR nets), and dfdx's own count of the built
//! models against the macro's compile-time constant.

use residual::dfdx::prelude::*;
use residual::zoo::*;
use residual::ModelInfo;

/// The macro's constant, and dfdx's count over the built model's tensors, both equal `expected`.
fn assert_params<M>(expected: usize)
where
    M: ModelInfo + BuildOnDevice<Cpu, f32>,
    M::Built: NumParams<f32, Cpu>,
{
    assert_eq!(M::NUM_PARAMS, expected, "{}: compile-time parameter count", M::NAME);
    let built = Cpu::default().build_module::<M, f32>();
    assert_eq!(built.num_trainable_params(), expected, "{}: dfdx's count of the built model", M::NAME);
}

fn assert_macs<M: ModelInfo>(published_gmacs: f64) {
    let ours = M::MACS as f64 / 1e9;
    let rel = (ours - published_gmacs).abs() / published_gmacs;
    assert!(rel < 0.01, "{}: {ours:.3} GMACs vs published {published_gmacs} ({:.2}% off)", M::NAME, rel * 100.0);
}

#[test]
fn imagenet_resnets_have_torchvisions_parameter_counts() {
    assert_params::<ResNet18<f32, Cpu>>(11_689_512);
    assert_params::<ResNet34<f32, Cpu>>(21_797_672);
    assert_params::<ResNet50<f32, Cpu>>(25_557_032);
    assert_params::<ResNet101<f32, Cpu>>(44_549_160);
    assert_params::<ResNet152<f32, Cpu>>(60_192_808);
}

/// torchvision 0.29's counts, also printed by scripts/reference/torchvision_models.py.
#[test]
fn mobile_dense_and_regnets_have_torchvisions_parameter_counts() {
    assert_params::<MobileNetV2<f32, Cpu>>(3_504_872);
    assert_params::<MobileNetV3Small<f32, Cpu>>(2_542_856);
    assert_params::<EfficientNetB0<f32, Cpu>>(5_288_548);
    assert_params::<DenseNet121<f32, Cpu>>(7_978_856);
    assert_params::<RegNetY400MF<f32, Cpu>>(4_344_144);
    assert_params::<ConvNeXtTiny<f32, Cpu>>(28_589_128);
}

/// The papers' multiply-adds: MobileNetV2 (Sandler et al. 2018, table 4) 300 M; MobileNetV3-Small
/// (Howard et al. 2019, table 3) 56 M; EfficientNet-B0 390 M.
#[test]
fn mobile_and_efficient_nets_macs_match_the_published_figures() {
    assert_macs::<MobileNetV2<f32, Cpu>>(0.300);
    assert_macs::<MobileNetV3Small<f32, Cpu>>(0.056);
    // Tan and Le 2019, table 2: 0.39 B FLOPs (multiply-adds), given to two digits: ours must round
    // to it.
    let gmacs = EfficientNetB0::<f32, Cpu>::MACS as f64 / 1e9;
    assert!((0.385..0.395).contains(&gmacs), "EfficientNet-B0: {gmacs:.4} GMACs does not round to 0.39");
    // torchvision's model table: DenseNet-121 2.83 GFLOPS (multiply-adds).
    let gmacs = DenseNet121::<f32, Cpu>::MACS as f64 / 1e9;
    assert!((2.825..2.835).contains(&gmacs), "DenseNet-121: {gmacs:.4} GMACs does not round to 2.83");
    // RegNetY-400MF: 0.40 GFLOPS (torchvision's table) and 400 M by its name.
    let gmacs = RegNetY400MF::<f32, Cpu>::MACS as f64 / 1e9;
    assert!((0.395..0.405).contains(&gmacs), "RegNetY-400MF: {gmacs:.4} GMACs does not round to 0.40");
    // ConvNeXt-Tiny: 4.46 GFLOPS (torchvision's table).
    let gmacs = ConvNeXtTiny::<f32, Cpu>::MACS as f64 / 1e9;
    assert!((4.455..4.465).contains(&gmacs), "ConvNeXt-Tiny: {gmacs:.4} GMACs does not round to 4.46");
}

#[test]
fn resnext_and_wide_resnet_have_torchvisions_parameter_counts() {
    assert_params::<ResNeXt50_32x4d<f32, Cpu>>(25_028_904);
    assert_params::<WideResNet50_2<f32, Cpu>>(68_883_240);
}

#[test]
fn imagenet_resnets_macs_within_one_percent_of_torchvision() {
    assert_macs::<ResNet18<f32, Cpu>>(1.814);
    assert_macs::<ResNet34<f32, Cpu>>(3.664);
    assert_macs::<ResNet50<f32, Cpu>>(4.089);
    assert_macs::<ResNet101<f32, Cpu>>(7.801);
    assert_macs::<ResNet152<f32, Cpu>>(11.514);
}

#[test]
fn imagenet_shapes_are_3x224x224_to_1000() {
    assert_eq!(ResNet50::<f32, Cpu>::INPUT_SHAPE, &[3, 224, 224]);
    assert_eq!(ResNet152::<f32, Cpu>::OUTPUT_SHAPE, &[1000]);
}

/// He et al. 2015, table 6: 0.27M / 0.46M / 0.66M / 0.85M / 1.7M. The paper rounds, so these
/// are checked to the paper's precision.
#[test]
fn cifar_resnets_match_the_papers_parameter_counts() {
    let m = |n: usize| n as f64 / 1e6;
    assert!((m(ResNet20::<f32, Cpu>::NUM_PARAMS) - 0.27).abs() < 0.005);
    assert!((m(ResNet32::<f32, Cpu>::NUM_PARAMS) - 0.46).abs() < 0.005);
    assert!((m(ResNet44::<f32, Cpu>::NUM_PARAMS) - 0.66).abs() < 0.005);
    assert!((m(ResNet56::<f32, Cpu>::NUM_PARAMS) - 0.85).abs() < 0.005);
    assert!((m(ResNet110::<f32, Cpu>::NUM_PARAMS) - 1.7).abs() < 0.05);
    // Pre-activation ResNet-164: 1.7M (He et al. 2016, table 2).
    assert!((m(PreActResNet164::<f32, Cpu>::NUM_PARAMS) - 1.7).abs() < 0.05);
    // Option A shortcuts are parameter-free: ResNet-20 = 269,722 exactly (hand count:
    // stem 432 + 32, stage 1 3x(2x2304 + 2x32), stage 2 4608+9216+128 + 2x(2x9216+2x64),
    // stage 3 18432+36864+256 + 2x(2x36864+2x128), fc 650).
    assert_params::<ResNet20<f32, Cpu>>(269_722);
}

#[test]
fn plain_twins_have_the_same_parameters_as_their_resnets() {
    // Option A adds no parameters, so removing the shortcuts changes nothing in the count.
    assert_eq!(PlainNet20::<f32, Cpu>::NUM_PARAMS, ResNet20::<f32, Cpu>::NUM_PARAMS);
    assert_eq!(PlainNet56::<f32, Cpu>::NUM_PARAMS, ResNet56::<f32, Cpu>::NUM_PARAMS);
    assert_eq!(PlainNet110::<f32, Cpu>::NUM_PARAMS, ResNet110::<f32, Cpu>::NUM_PARAMS);
}

#[test]
fn cifar_resnet_runs_forward_to_finite_logits() {
    let dev = Cpu::seed_from_u64(0);
    let model = dev.build_module::<ResNet20<f32, Cpu>, f32>();
    let x: Tensor<Rank4<2, 3, 32, 32>, f32, Cpu> = dev.sample_normal();
    let y = model.forward(x.clone());
    assert_eq!(y.shape().concrete(), [2, 10]);
    assert!(y.as_vec().iter().all(|v| v.is_finite()));
}

/// ViT-B/16: torchvision's 86,567,656 parameters and 17.56 GFLOPS (multiply-adds, its model
/// table); GPT-2 small with its head tied to the token embedding: 124,439,808 (the head adds none,
/// which dfdx's count of the built model confirms: `unembed` reuses `wte.weight`).
#[test]
fn transformers_have_the_published_counts() {
    assert_params::<ViT_B_16<f32, Cpu>>(86_567_656);
    let gmacs = ViT_B_16::<f32, Cpu>::MACS as f64 / 1e9;
    assert!((17.555..17.565).contains(&gmacs), "ViT-B/16: {gmacs:.4} GMACs does not round to 17.56");
    assert_params::<Gpt2Small<f32, Cpu>>(124_439_808);
    assert_eq!(Gpt2Small::<f32, Cpu>::INPUT_SHAPE, &[1024]);
    assert_eq!(Gpt2Small::<f32, Cpu>::OUTPUT_SHAPE, &[1024, 50257]);
}
