//! The zoo's models beyond ResNet against torchvision itself: the `state_dict` keys and shapes of
//! what we save, the parameter count, and the eval-mode logits of one 224x224 image with every
//! weight, buffer and input value set by a hash of its key and index (`hashed`, written the same
//! way in `scripts/reference/torchvision_models.py`, which ran torchvision to make
//! `tests/fixtures/torchvision_models.json`). Full-size models, and no weights in the repository.

mod common;

use std::collections::BTreeMap;

use common::fixture;
use residual::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorMut, ViewTensorName,
};
use residual::dfdx::prelude::*;
use residual::io::checkpoint_layout;
use residual::zoo;
use residual::ModelInfo;

/// What torchvision said about `model`.
struct Reference {
    params: usize,
    state_dict: BTreeMap<String, Vec<usize>>,
    logits: Vec<f64>,
}

fn reference(model: &str) -> Reference {
    let text = std::fs::read_to_string(fixture("torchvision_models.json")).expect("fixture");
    let all: serde_json::Value = serde_json::from_str(&text).expect("json");
    let m = &all[model];
    let dims = |v: &serde_json::Value| {
        v.as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect()
    };
    Reference {
        params: m["params"].as_u64().expect("params") as usize,
        state_dict: m["state_dict"]
            .as_array()
            .expect("state_dict")
            .iter()
            .map(|pair| (pair[0].as_str().expect("key").to_string(), dims(&pair[1])))
            .collect(),
        logits: m["logits"].as_array().expect("logits").iter().map(|x| x.as_f64().expect("number")).collect(),
    }
}

/// `n` values in [-1, 1): splitmix64's finaliser of `fnv1a(key) + i * golden`, top 53 bits
/// (the script's `uniform`).
fn uniform(key: &str, n: usize) -> Vec<f64> {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01B3);
    }
    (0..n as u64)
        .map(|i| {
            let mut z = h.wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

/// Every element of tensor `key` of `shape` (the script's `hashed`), as f32.
fn hashed(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let u = uniform(key, n);
    let name = key.rsplit('.').next().unwrap_or(key);
    u.iter()
        .map(|&u| {
            let v = if key == "input" {
                u
            } else if name == "running_var" {
                1.0 + 0.5 * (u + 1.0)
            } else if name == "running_mean" {
                0.1 * u
            } else if name == "weight" && shape.len() == 1 {
                1.0 + 0.1 * u
            } else if name.ends_with("bias") {
                0.1 * u
            } else {
                let fan_in = n / shape[0];
                u * (3.0 / fan_in as f64).sqrt()
            };
            v as f32
        })
        .collect()
}

/// Sets every tensor of a model to `hashed(its key)`.
struct Fill;

impl TensorVisitor<f32, Cpu> for Fill {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, f32, Cpu>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, Cpu>>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, Self::Err> {
        let shape = t.shape().concrete();
        t.copy_from(&hashed(&key, shape.as_ref()));
        Ok(None)
    }
}

/// Keys, shapes, the parameter count, and the logits against torchvision's.
fn check<M>(name: &str, tolerance: f64)
where
    M: ModelInfo + BuildOnDevice<Cpu, f32> + TensorCollection<f32, Cpu>,
    M::Built: TensorCollection<f32, Cpu>
        + Module<Tensor<Rank4<1, 3, 224, 224>, f32, Cpu>, Output = Tensor<Rank2<1, 1000>, f32, Cpu>>,
{
    let r = reference(name);
    assert_eq!(M::NUM_PARAMS, r.params, "{name}: parameter count");

    // What `save_safetensors` writes is torchvision's `state_dict`, key for key and shape for shape.
    let ours: BTreeMap<String, Vec<usize>> =
        checkpoint_layout::<M, f32, Cpu>().into_iter().map(|t| (t.key, t.shape)).collect();
    let missing: Vec<&String> = r.state_dict.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<&String> = ours.keys().filter(|k| !r.state_dict.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{name}: missing {missing:?}, extra {extra:?}");
    assert_eq!(ours, r.state_dict, "{name}: shapes");

    let dev = Cpu::default();
    let mut model = dev.build_module::<M, f32>();
    let _ = M::Built::iter_tensors(&mut RecursiveWalker { m: (&mut model, String::new()), f: &mut Fill });
    let x =
        dev.tensor_from_vec(hashed("input", &[1, 3, 224, 224]), (Const::<1>, Const::<3>, Const::<224>, Const::<224>));
    let y: Vec<f64> = model.forward(x).as_vec().into_iter().map(f64::from).collect();
    let err = y.iter().zip(&r.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let scale = r.logits.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(err <= tolerance, "{name}: max |ours - torchvision| = {err:e} (max |logit| {scale})");
}

// Both are f32 through ~50 layers, summing in different orders: their logits (max |logit| about
// 0.3, of which the network's own contribution has a spread of about 0.05) agree to a few 1e-7.

#[test]
fn mobilenet_v2_is_torchvisions() {
    check::<zoo::MobileNetV2<f32, Cpu>>("MobileNetV2", 1e-5);
}

#[test]
fn mobilenet_v3_small_is_torchvisions() {
    check::<zoo::MobileNetV3Small<f32, Cpu>>("MobileNetV3Small", 1e-5);
}

#[test]
fn efficientnet_b0_is_torchvisions() {
    check::<zoo::EfficientNetB0<f32, Cpu>>("EfficientNetB0", 1e-5);
}

#[test]
fn densenet121_is_torchvisions() {
    check::<zoo::DenseNet121<f32, Cpu>>("DenseNet121", 1e-5);
}

#[test]
fn regnet_y_400mf_is_torchvisions() {
    check::<zoo::RegNetY400MF<f32, Cpu>>("RegNetY400MF", 1e-5);
}

#[test]
fn vit_b_16_is_torchvisions() {
    check::<zoo::ViT_B_16<f32, Cpu>>("ViT_B_16", 1e-5);
}

#[test]
fn convnext_tiny_is_torchvisions() {
    check::<zoo::ConvNeXtTiny<f32, Cpu>>("ConvNeXtTiny", 1e-5);
}
