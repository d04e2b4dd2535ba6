//! The classic residual networks, each a short `residual!` declaration.
//!
//! - ImageNet (torchvision v1.5 layout: the stride sits on the bottleneck's 3x3, projection
//!   shortcuts are 1x1 conv + batch norm, option B): [`ResNet18`], [`ResNet34`], [`ResNet50`],
//!   [`ResNet101`], [`ResNet152`], [`ResNeXt50_32x4d`], [`WideResNet50_2`]. Parameter paths
//!   equal torchvision's `state_dict` keys, so a torchvision checkpoint exported to safetensors
//!   loads with [`crate::io::load_safetensors`].
//! - CIFAR, from the ResNet paper (He et al. 2015, section 4.2): 6n+2 layers with option-A
//!   shortcuts (strided subsampling + zero-padded channels): [`ResNet20`], [`ResNet32`],
//!   [`ResNet44`], [`ResNet56`], [`ResNet110`]; their plain twins without shortcuts
//!   [`PlainNet20`], [`PlainNet56`], [`PlainNet110`] for the degradation experiment; and the
//!   pre-activation [`PreActResNet164`] (He et al. 2016).
//! - Mobile (torchvision's layouts and keys): [`MobileNetV2`] (inverted residuals with relu6) and
//!   [`MobileNetV3Small`] (hardswish, squeeze-and-excitation gates, batch norm eps 0.001).
//! - [`EfficientNetB0`] (MBConv blocks with SiLU, SE gates and stochastic depth), torchvision's
//!   layout and keys.
//! - [`ConvNeXtTiny`] (depthwise 7x7, layer norm over channels, MLP over channels, layer scale,
//!   stochastic depth), torchvision's layout and keys.
//! - [`RegNetY400MF`] (grouped bottlenecks with SE gates), torchvision's layout and keys.
//! - [`DenseNet121`] (dense blocks of `tap` and `cat`), torchvision's layout and keys.
//! - Transformers: [`ViT_B_16`] (torchvision's Vision Transformer: patch embedding, class token,
//!   position embedding, 12 pre-norm encoder blocks of attention and MLP), torchvision's layout
//!   and keys; [`Gpt2Small`] (GPT-2 small: token and position embeddings, 12 pre-norm causal
//!   blocks, the head tied to the token embedding).
//! - Segmentation: a small [`UNet`] (long skips by `tap` and `cat`, bilinear upsampling), trained
//!   by `examples/unet.rs`.
#![allow(non_camel_case_types)]

use crate::residual;

residual! {
    /// torchvision's BasicBlock (ResNet-18/34).
    block BasicBlock(planes, stride = 1) {
        residual {
            conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, padding = 1) -> bn2: bn
        } shortcut auto
        -> relu
    }

    /// torchvision's Bottleneck, v1.5: 1x1 reduce, 3x3 (strided, grouped), 1x1 expand by 4.
    /// `width` is `planes` for ResNet, `2 * planes` for ResNeXt-50 32x4d and Wide ResNet-50-2.
    block Bottleneck(planes, stride = 1, width = planes, groups = 1) {
        residual {
            conv1: conv(width, 1) -> bn1: bn -> relu
            -> conv2: conv(width, 3, stride = stride, padding = 1, groups = groups) -> bn2: bn -> relu
            -> conv3: conv(4 * planes, 1) -> bn3: bn
        } shortcut auto
        -> relu
    }

    /// ResNet-18 (11,689,512 parameters, 1.814 GMACs at 224x224).
    #[init(kaiming_normal)]
    pub model ResNet18[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: BasicBlock(64) x 2
        -> layer2: BasicBlock(128) x 2 (first: stride = 2)
        -> layer3: BasicBlock(256) x 2 (first: stride = 2)
        -> layer4: BasicBlock(512) x 2 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }

    /// ResNet-34 (21,797,672 parameters, 3.664 GMACs).
    #[init(kaiming_normal)]
    pub model ResNet34[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: BasicBlock(64) x 3
        -> layer2: BasicBlock(128) x 4 (first: stride = 2)
        -> layer3: BasicBlock(256) x 6 (first: stride = 2)
        -> layer4: BasicBlock(512) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }

    /// ResNet-50 (25,557,032 parameters, 4.089 GMACs).
    #[init(kaiming_normal)]
    pub model ResNet50[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: Bottleneck(64) x 3
        -> layer2: Bottleneck(128) x 4 (first: stride = 2)
        -> layer3: Bottleneck(256) x 6 (first: stride = 2)
        -> layer4: Bottleneck(512) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }

    /// ResNet-101 (44,549,160 parameters, 7.801 GMACs).
    #[init(kaiming_normal)]
    pub model ResNet101[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: Bottleneck(64) x 3
        -> layer2: Bottleneck(128) x 4 (first: stride = 2)
        -> layer3: Bottleneck(256) x 23 (first: stride = 2)
        -> layer4: Bottleneck(512) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }

    /// ResNet-152 (60,192,808 parameters, 11.514 GMACs).
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

    /// ResNeXt-50 32x4d (25,028,904 parameters): 32 groups of width 4 in the first stage.
    #[init(kaiming_normal)]
    pub model ResNeXt50_32x4d[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: Bottleneck(64, width = 128, groups = 32) x 3
        -> layer2: Bottleneck(128, width = 256, groups = 32) x 4 (first: stride = 2)
        -> layer3: Bottleneck(256, width = 512, groups = 32) x 6 (first: stride = 2)
        -> layer4: Bottleneck(512, width = 1024, groups = 32) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }

    /// Wide ResNet-50-2 (68,883,240 parameters): bottlenecks twice as wide.
    #[init(kaiming_normal)]
    pub model WideResNet50_2[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: Bottleneck(64, width = 128) x 3
        -> layer2: Bottleneck(128, width = 256) x 4 (first: stride = 2)
        -> layer3: Bottleneck(256, width = 512) x 6 (first: stride = 2)
        -> layer4: Bottleneck(512, width = 1024) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }

    /// The ResNet paper's CIFAR block with the parameter-free option-A shortcut.
    block CifarBlock(planes, stride = 1) {
        residual {
            conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, padding = 1) -> bn2: bn
        } shortcut pad
        -> relu
    }

    /// The same block without its shortcut: the "plain" network of the degradation experiment.
    block PlainBlock(planes, stride = 1) {
        conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
        -> conv2: conv(planes, 3, padding = 1) -> bn2: bn -> relu
    }

    /// ResNet-20 for CIFAR-10 (n = 3; 0.27M parameters).
    #[init(kaiming_normal)]
    pub model ResNet20[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: CifarBlock(16) x 3
        -> layer2: CifarBlock(32) x 3 (first: stride = 2)
        -> layer3: CifarBlock(64) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// ResNet-32 for CIFAR-10 (n = 5; 0.46M parameters).
    #[init(kaiming_normal)]
    pub model ResNet32[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: CifarBlock(16) x 5
        -> layer2: CifarBlock(32) x 5 (first: stride = 2)
        -> layer3: CifarBlock(64) x 5 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// ResNet-44 for CIFAR-10 (n = 7; 0.66M parameters).
    #[init(kaiming_normal)]
    pub model ResNet44[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: CifarBlock(16) x 7
        -> layer2: CifarBlock(32) x 7 (first: stride = 2)
        -> layer3: CifarBlock(64) x 7 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// ResNet-56 for CIFAR-10 (n = 9; 0.85M parameters).
    #[init(kaiming_normal)]
    pub model ResNet56[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: CifarBlock(16) x 9
        -> layer2: CifarBlock(32) x 9 (first: stride = 2)
        -> layer3: CifarBlock(64) x 9 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// ResNet-110 for CIFAR-10 (n = 18; 1.7M parameters).
    #[init(kaiming_normal)]
    pub model ResNet110[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: CifarBlock(16) x 18
        -> layer2: CifarBlock(32) x 18 (first: stride = 2)
        -> layer3: CifarBlock(64) x 18 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// Plain-20: ResNet-20 without shortcuts.
    #[init(kaiming_normal)]
    pub model PlainNet20[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: PlainBlock(16) x 3
        -> layer2: PlainBlock(32) x 3 (first: stride = 2)
        -> layer3: PlainBlock(64) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// Plain-56: ResNet-56 without shortcuts.
    #[init(kaiming_normal)]
    pub model PlainNet56[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: PlainBlock(16) x 9
        -> layer2: PlainBlock(32) x 9 (first: stride = 2)
        -> layer3: PlainBlock(64) x 9 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// Plain-110: ResNet-110 without shortcuts.
    #[init(kaiming_normal)]
    pub model PlainNet110[3, 32, 32] {
        conv1: conv(16, 3, padding = 1) -> bn1: bn -> relu
        -> layer1: PlainBlock(16) x 18
        -> layer2: PlainBlock(32) x 18 (first: stride = 2)
        -> layer3: PlainBlock(64) x 18 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// Pre-activation bottleneck (He et al. 2016, "Identity Mappings in Deep Residual
    /// Networks"): BN and ReLU come before each conv, and nothing follows the addition.
    block PreActBottleneck(planes, stride = 1) {
        residual {
            bn1: bn -> relu -> conv1: conv(planes, 1)
            -> bn2: bn -> relu -> conv2: conv(planes, 3, stride = stride, padding = 1)
            -> bn3: bn -> relu -> conv3: conv(4 * planes, 1)
        } shortcut downsample: { conv(4 * planes, 1, stride = stride) }
    }

    /// The same block where the shapes already match: identity shortcut.
    block PreActBottleneckId(planes) {
        residual {
            bn1: bn -> relu -> conv1: conv(planes, 1)
            -> bn2: bn -> relu -> conv2: conv(planes, 3, padding = 1)
            -> bn3: bn -> relu -> conv3: conv(4 * planes, 1)
        }
    }

    /// Pre-activation ResNet-164 for CIFAR-10 (9n+2 layers, n = 18; 1.7M parameters).
    #[init(kaiming_normal)]
    pub model PreActResNet164[3, 32, 32] {
        conv1: conv(16, 3, padding = 1)
        -> layer1: (PreActBottleneck(16) -> PreActBottleneckId(16) x 17)
        -> layer2: (PreActBottleneck(32, stride = 2) -> PreActBottleneckId(32) x 17)
        -> layer3: (PreActBottleneck(64, stride = 2) -> PreActBottleneckId(64) x 17)
        -> bn: bn -> relu -> global_avgpool -> fc: linear(10)
    }

    // ------------------------------------------------------------------ MobileNets

    /// torchvision's `Conv2dNormActivation` with ReLU6 (MobileNetV2): `k x k` conv (same padding),
    /// batch norm, relu6, at `.0` and `.1`.
    block ConvBnRelu6(out, k = 1, stride = 1, groups = 1) {
        conv(out, k, stride = stride, padding = k / 2, groups = groups) -> bn -> relu6
    }

    /// MobileNetV2's first inverted residual (expansion 1): depthwise 3x3 on the input's channels,
    /// linear 1x1 projection.
    block InvertedResidual1(oup) {
        conv: (ConvBnRelu6(in_channels, 3, 1, in_channels) -> conv(oup, 1) -> bn)
    }

    /// MobileNetV2's inverted residual: 1x1 expansion by `t`, depthwise 3x3 (strided), linear 1x1
    /// projection; the input is added when the shape is kept (torchvision's `use_res_connect`).
    block InvertedResidual(oup, stride = 1, t = 6, hidden = in_channels * t) {
        residual {
            conv: (ConvBnRelu6(hidden) -> ConvBnRelu6(hidden, 3, stride, hidden) -> conv(oup, 1) -> bn)
        } shortcut optional
    }

    /// MobileNetV2 (Sandler et al. 2018), torchvision's layout and keys: 3,504,872 parameters,
    /// 300.8 M MACs. Each inverted residual is written out: torchvision numbers them
    /// `features.1` .. `features.17`, where `x N` would nest them (`features.4.0`).
    #[init(kaiming_normal)]
    pub model MobileNetV2[3, 224, 224] {
        features: (
            ConvBnRelu6(32, 3, 2)
            -> InvertedResidual1(16)
            -> InvertedResidual(24, 2) -> InvertedResidual(24)
            -> InvertedResidual(32, 2) -> InvertedResidual(32) -> InvertedResidual(32)
            -> InvertedResidual(64, 2) -> InvertedResidual(64) -> InvertedResidual(64) -> InvertedResidual(64)
            -> InvertedResidual(96) -> InvertedResidual(96) -> InvertedResidual(96)
            -> InvertedResidual(160, 2) -> InvertedResidual(160) -> InvertedResidual(160)
            -> InvertedResidual(320)
            -> ConvBnRelu6(1280)
        )
        -> global_avgpool
        -> classifier: (dropout(0.2) -> linear(1000))
    }

    /// `Conv2dNormActivation` as MobileNetV3 has it: batch norm with eps 0.001 and momentum 0.01,
    /// then hardswish.
    block ConvBnHs(out, k = 1, stride = 1, groups = 1) {
        conv(out, k, stride = stride, padding = k / 2, groups = groups) -> bn(eps = 0.001, momentum = 0.01) -> hardswish
    }

    /// The same with relu.
    block ConvBnRelu(out, k = 1, stride = 1, groups = 1) {
        conv(out, k, stride = stride, padding = k / 2, groups = groups) -> bn(eps = 0.001, momentum = 0.01) -> relu
    }

    /// The linear projection of an inverted residual.
    block ConvBn(out) {
        conv(out, 1) -> bn(eps = 0.001, momentum = 0.01)
    }

    /// MobileNetV3's inverted residual with hardswish and squeeze-and-excitation (torchvision's
    /// `InvertedResidual.block`): expand, depthwise `k x k`, SE (squeeze to
    /// `_make_divisible(exp / 4, 8)`, hardsigmoid gate), project.
    block SeBody(exp, oup, k, stride = 1) {
        ConvBnHs(exp) -> ConvBnHs(exp, k, stride, exp)
        -> gate {
            adaptive_avgpool(1) -> fc1: conv((exp / 4 + 4) / 8 * 8, 1, bias = true) -> relu
            -> fc2: conv(exp, 1, bias = true) -> hardsigmoid
        }
        -> ConvBn(oup)
    }

    /// MobileNetV3's inverted residual: the input is added when the shape is kept.
    block MobileV3(exp, oup, k, stride = 1) {
        residual { block: SeBody(exp, oup, k, stride) } shortcut optional
    }

    /// MobileNetV3-Small (Howard et al. 2019), torchvision's layout and keys: 2,542,856
    /// parameters. The first three blocks (relu, the first without expansion) are written inline.
    #[init(kaiming_normal)]
    pub model MobileNetV3Small[3, 224, 224] {
        features: (
            ConvBnHs(16, 3, 2)
            -> (block: (
                ConvBnRelu(16, 3, 2, 16)
                -> gate { adaptive_avgpool(1) -> fc1: conv(8, 1, bias = true) -> relu -> fc2: conv(16, 1, bias = true) -> hardsigmoid }
                -> ConvBn(16)
            ))
            -> (block: (ConvBnRelu(72) -> ConvBnRelu(72, 3, 2, 72) -> ConvBn(24)))
            -> (residual { block: (ConvBnRelu(88) -> ConvBnRelu(88, 3, 1, 88) -> ConvBn(24)) } shortcut optional)
            -> MobileV3(96, 40, 5, 2) -> MobileV3(240, 40, 5) -> MobileV3(240, 40, 5)
            -> MobileV3(120, 48, 5) -> MobileV3(144, 48, 5)
            -> MobileV3(288, 96, 5, 2) -> MobileV3(576, 96, 5) -> MobileV3(576, 96, 5)
            -> ConvBnHs(576)
        )
        -> global_avgpool
        -> classifier: (linear(1024) -> hardswish -> dropout(0.2) -> linear(1000))
    }

    /// torchvision's `Conv2dNormActivation` with SiLU (EfficientNet).
    block ConvBnSilu(out, k = 1, stride = 1, groups = 1) {
        conv(out, k, stride = stride, padding = k / 2, groups = groups) -> bn -> silu
    }

    /// EfficientNet's MBConv with expansion 1 (`features.1`): depthwise `k x k`,
    /// squeeze-and-excitation to a quarter of the input's channels, linear projection.
    block MBConv1(oup, k) {
        block: (
            ConvBnSilu(in_channels, k, 1, in_channels)
            -> gate {
                adaptive_avgpool(1) -> fc1: conv(in_channels / 4, 1, bias = true) -> silu
                -> fc2: conv(in_channels, 1, bias = true) -> sigmoid
            }
            -> (conv(oup, 1) -> bn)
        )
    }

    /// EfficientNet's MBConv body with expansion 6: expand, depthwise `k x k` (strided), SE
    /// squeezing to a quarter of the input's channels, linear projection to `oup`.
    block MBConvBody(oup, k, stride = 1, hidden = 6 * in_channels) {
        ConvBnSilu(hidden) -> ConvBnSilu(hidden, k, stride, hidden)
        -> gate {
            adaptive_avgpool(1) -> fc1: conv(in_channels / 4, 1, bias = true) -> silu
            -> fc2: conv(hidden, 1, bias = true) -> sigmoid
        }
        -> (conv(oup, 1) -> bn)
    }

    /// MBConv where the shape changes (the first block of a stage): no shortcut, so no
    /// stochastic depth.
    block MBConv(oup, k, stride = 1) {
        block: MBConvBody(oup, k, stride)
    }

    /// MBConv where the shape is kept: the body, stochastic depth `p`, and the input added.
    block MBConvRes(k, p) {
        residual { block: MBConvBody(in_channels, k) -> drop_path(p) }
    }

    /// EfficientNet-B0 (Tan and Le 2019), torchvision's layout and keys: 5,288,548 parameters.
    /// Stages are `features.1` .. `features.7`; stochastic depth rises linearly over the 16
    /// blocks to 0.2 (torchvision's `0.2 * block / 16`, applied where the input is added).
    #[init(kaiming_normal)]
    pub model EfficientNetB0[3, 224, 224] {
        features: (
            ConvBnSilu(32, 3, 2)
            -> (MBConv1(16, 3))
            -> (MBConv(24, 3, 2) -> MBConvRes(3, 0.025))
            -> (MBConv(40, 5, 2) -> MBConvRes(5, 0.05))
            -> (MBConv(80, 3, 2) -> MBConvRes(3, 0.075) -> MBConvRes(3, 0.0875))
            -> (MBConv(112, 5) -> MBConvRes(5, 0.1125) -> MBConvRes(5, 0.125))
            -> (MBConv(192, 5, 2) -> MBConvRes(5, 0.15) -> MBConvRes(5, 0.1625) -> MBConvRes(5, 0.175))
            -> (MBConv(320, 3))
            -> ConvBnSilu(1280)
        )
        -> global_avgpool
        -> classifier: (dropout(0.2) -> linear(1000))
    }

    // ------------------------------------------------------------------ RegNet

    /// RegNet-Y's block (torchvision's `ResBottleneckBlock`, bottleneck ratio 1): 1x1, grouped 3x3
    /// (group width 8, strided), squeeze-and-excitation to a quarter of the block's input
    /// channels, 1x1; a projection `proj` where the shape changes; relu after the addition.
    block RegNetYBlock(w, stride = 1) {
        residual {
            f: (
                a: (conv(w, 1) -> bn -> relu)
                -> b: (conv(w, 3, stride = stride, padding = 1, groups = w / 8) -> bn -> relu)
                -> se: gate {
                    adaptive_avgpool(1) -> fc1: conv(in_channels / 4, 1, bias = true) -> relu
                    -> fc2: conv(w, 1, bias = true) -> sigmoid
                }
                -> c: (conv(w, 1) -> bn)
            )
        } shortcut proj: auto
        -> relu
    }

    /// RegNetY-400MF (Radosavovic et al. 2020), torchvision's layout and keys: 4,344,144
    /// parameters. torchvision names the blocks `block1-0` ..: quoted, numbered names.
    #[init(kaiming_normal)]
    pub model RegNetY400MF[3, 224, 224] {
        stem: (conv(32, 3, stride = 2, padding = 1) -> bn -> relu)
        -> trunk_output: (
            block1: ("block1-"{0}: RegNetYBlock(48) x 1 (first: stride = 2))
            -> block2: ("block2-"{0}: RegNetYBlock(104) x 3 (first: stride = 2))
            -> block3: ("block3-"{0}: RegNetYBlock(208) x 6 (first: stride = 2))
            -> block4: ("block4-"{0}: RegNetYBlock(440) x 6 (first: stride = 2))
        )
        -> global_avgpool -> fc: linear(1000)
    }

    // ------------------------------------------------------------------ DenseNet

    /// torchvision's `_DenseLayer`: batch norm, relu, 1x1 conv to `4 * growth`, batch norm,
    /// relu, 3x3 conv to `growth`, concatenated after its input (`torch.cat([input, new], 1)`).
    block DenseLayer(growth = 32) {
        tap(input)
        -> norm1: bn -> relu -> conv1: conv(4 * growth, 1)
        -> norm2: bn -> relu -> conv2: conv(growth, 3, padding = 1)
        -> cat(input)
    }

    /// torchvision's `_Transition`: batch norm, relu, a 1x1 conv halving the channels, a 2x2
    /// average pool.
    block Transition() {
        norm: bn -> relu -> conv: conv(in_channels / 2, 1) -> avgpool(2)
    }

    /// DenseNet-121 (Huang et al. 2017), torchvision's layout and keys: 7,978,856 parameters.
    /// `denselayer{1}: DenseLayer x 6` names the copies `denselayer1` .. `denselayer6`, as
    /// torchvision does.
    #[init(kaiming_normal)]
    pub model DenseNet121[3, 224, 224] {
        features: (
            conv0: conv(64, 7, stride = 2, padding = 3) -> norm0: bn -> relu -> maxpool(3, stride = 2, padding = 1)
            -> denseblock1: (denselayer{1}: DenseLayer x 6) -> transition1: Transition
            -> denseblock2: (denselayer{1}: DenseLayer x 12) -> transition2: Transition
            -> denseblock3: (denselayer{1}: DenseLayer x 24) -> transition3: Transition
            -> denseblock4: (denselayer{1}: DenseLayer x 16)
            -> norm5: bn
        )
        -> relu -> global_avgpool -> classifier: linear(1000)
    }

    // ------------------------------------------------------------------ ConvNeXt

    /// torchvision's `CNBlock`: depthwise 7x7 conv, layer norm over channels, a 4x MLP over
    /// channels with GELU (the `identity` steps stand for torchvision's two `Permute`s, which
    /// take indices 1 and 6 of `block`), the block's `layer_scale`, stochastic depth `p`, and the
    /// input added.
    block CNBlock(p) {
        residual {
            block: (
                conv(in_channels, 7, padding = 3, groups = in_channels, bias = true) -> identity
                -> layernorm(eps = 1e-6) -> linear_channels(4 * in_channels) -> gelu
                -> linear_channels(in_channels) -> identity
            )
            -> scale: layer_scale(1e-6)
            -> drop_path(p)
        }
    }

    /// A stage's downsampling: layer norm over channels, a 2x2 conv with stride 2.
    block Downsample(out) {
        layernorm(eps = 1e-6) -> conv(out, 2, stride = 2, bias = true)
    }

    /// ConvNeXt-Tiny (Liu et al. 2022), torchvision's layout and keys: 28,589,128 parameters.
    /// The drop rates rise linearly over the 18 blocks to 0.1, as torchvision's.
    #[init(kaiming_normal)]
    pub model ConvNeXtTiny[3, 224, 224] {
        features: (
            (conv(96, 4, stride = 4, bias = true) -> layernorm(eps = 1e-6))
            -> (CNBlock(0.0) -> CNBlock(0.0058823529411764705) -> CNBlock(0.011764705882352941))
            -> Downsample(192)
            -> (CNBlock(0.017647058823529415) -> CNBlock(0.023529411764705882) -> CNBlock(0.029411764705882353))
            -> Downsample(384)
            -> (CNBlock(0.03529411764705883) -> CNBlock(0.0411764705882353) -> CNBlock(0.047058823529411764) -> CNBlock(0.052941176470588235) -> CNBlock(0.058823529411764705)
                -> CNBlock(0.06470588235294118) -> CNBlock(0.07058823529411766) -> CNBlock(0.07647058823529412) -> CNBlock(0.0823529411764706))
            -> Downsample(768)
            -> (CNBlock(0.08823529411764706) -> CNBlock(0.09411764705882353) -> CNBlock(0.1))
        )
        -> adaptive_avgpool(1)
        -> classifier: (layernorm(eps = 1e-6) -> flatten -> linear(1000))
    }

    // ------------------------------------------------------------------ U-Net

    /// U-Net's two 3x3 convs, each with batch norm and relu (`DoubleConv`).
    block DoubleConv(out) {
        conv(out, 3, padding = 1) -> bn -> relu -> conv(out, 3, padding = 1) -> bn -> relu
    }

    /// A U-Net (Ronneberger et al. 2015) for 3x32x32 images and three classes per pixel, at a
    /// quarter of the paper's widths, in the common "bilinear" variant: the encoder's maps are
    /// tapped before each max pool, and each decoder stage upsamples by 2 (bilinear, aligned
    /// corners), concatenates the tapped map first (`torch.cat([skip, up], 1)`) and runs two
    /// convs. Output: a score per class and pixel, `[3, 32, 32]`.
    pub model UNet[3, 32, 32] {
        inc: DoubleConv(16) -> tap(skip1)
        -> down1: (maxpool(2) -> DoubleConv(32)) -> tap(skip2)
        -> down2: (maxpool(2) -> DoubleConv(64)) -> tap(skip3)
        -> down3: (maxpool(2) -> DoubleConv(128))
        -> up1: (upsample_bilinear(2) -> cat(skip3) -> DoubleConv(64))
        -> up2: (upsample_bilinear(2) -> cat(skip2) -> DoubleConv(32))
        -> up3: (upsample_bilinear(2) -> cat(skip1) -> DoubleConv(16))
        -> outc: conv(3, 1, bias = true)
    }

    // ------------------------------------------------------------------ Transformers

    /// torchvision's ViT `EncoderBlock`: `x + attention(ln_1(x))`, then `x + mlp(ln_2(x))`. The
    /// dropouts stand where torchvision's `Dropout`s stand, so that the MLP's linear layers take
    /// indices 0 and 3 of `mlp` (torchvision's `MLPBlock` keys).
    block EncoderBlock(heads, mlp_dim, eps = 1e-6) {
        residual { ln_1: layernorm(eps) -> self_attention: attention(heads) -> dropout(0.0) }
        -> residual {
            ln_2: layernorm(eps)
            -> mlp: (linear(mlp_dim) -> gelu -> dropout(0.0) -> linear(in_features) -> dropout(0.0))
        }
    }

    /// ViT-B/16 (Dosovitskiy et al. 2021), torchvision's layout and keys: 86,567,656
    /// parameters. A 16x16 conv with stride 16 cuts the image into 196 patches, `to_tokens` makes
    /// them a sequence, the class token goes first, then the encoder (position embedding, 12
    /// blocks, layer norm), and the head reads the class token. Initialisation is each layer's
    /// own (PyTorch's defaults for `Linear` and `MultiheadAttention`, torchvision's for the class
    /// token and position embedding), not torchvision's ViT-specific one (a zero head, a
    /// truncated-normal patch conv): the same model, a different starting point when training
    /// from scratch; loaded weights are unaffected.
    pub model ViT_B_16[3, 224, 224] {
        conv_proj: conv(768, 16, stride = 16, bias = true) -> to_tokens -> class_token
        -> encoder: (
            pos_embedding -> dropout(0.0)
            -> layers: (encoder_layer_{0}: EncoderBlock(12, 3072) x 12)
            -> ln: layernorm(eps = 1e-6)
        )
        -> token(0)
        -> heads: (head: linear(1000))
    }

    /// GPT-2's block (Radford et al. 2019): pre-norm, causal self-attention, a 4x MLP with
    /// tanh-approximated GELU.
    block GptBlock(heads) {
        residual { ln_1: layernorm -> attn: attention(heads, causal = true) }
        -> residual { ln_2: layernorm -> mlp: (c_fc: linear(4 * in_features) -> gelu(approximate = true) -> c_proj: linear(in_features)) }
    }

    /// GPT-2 small on its full context of 1024 token ids: 124,439,808 parameters, the head tied
    /// to the token embedding (`unembed`: logits are `h @ wte.weight^T`, as GPT-2's `lm_head`).
    /// Output: the next-token logits at each position, `[1024, 50257]`.
    pub model Gpt2Small[1024] {
        wte: embedding(50257, 768) -> pos_embedding -> dropout(0.1)
        -> h: GptBlock(12) x 12
        -> ln_f: layernorm
        -> unembed
    }
}
