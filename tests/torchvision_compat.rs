//! Torchvision compatibility: the keys, shapes and dtypes of the checkpoints we write, and loading
//! a torchvision-named checkpoint. References come from `scripts/reference/torchvision_checkpoint.py`
//! (a mirror of torchvision's module structure, checked there against its published parameter
//! counts, and a naive float64 numpy forward pass). That files we write load into torchvision
//! itself with `strict=True` is checked by `scripts/reference/roundtrip_torchvision.py`.

mod common;

use std::collections::BTreeMap;

use common::{fixture, snapshot, temp, RawFile, TinyResNet};
use residual::dfdx::nn::tensor_collection::TensorCollection;
use residual::dfdx::prelude::*;
use residual::io::{checkpoint_layout, load_safetensors, save_safetensors};
use residual::zoo;

// ------------------------------------------------------------------ names, shapes and dtypes

/// torchvision's `state_dict` of `model`: `key -> (dtype, shape)`. The fixture lists keys and
/// shapes; the dtypes are torchvision's: I64 for the batch-norm counters, F32 for the rest.
fn torchvision_state_dict(model: &str) -> BTreeMap<String, (String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture("torchvision_keys.json")).expect("fixture");
    let all: serde_json::Value = serde_json::from_str(&text).expect("json");
    all[model]
        .as_array()
        .expect("model in fixture")
        .iter()
        .map(|pair| {
            let key = pair[0].as_str().expect("key").to_string();
            let shape = pair[1].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
            let dtype = if key.ends_with(".num_batches_tracked") { "I64" } else { "F32" };
            (key, (dtype.to_string(), shape))
        })
        .collect()
}

fn assert_same_state_dict(model: &str, ours: BTreeMap<String, (String, Vec<usize>)>) {
    let theirs = torchvision_state_dict(model);
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{model}: missing {missing:?}, extra {extra:?}");
    for (k, dtype_shape) in &theirs {
        assert_eq!(&ours[k], dtype_shape, "{model}: dtype and shape of {k}");
    }
}

/// What `save_safetensors` writes for `M`, from its type alone (no ResNet-152 is built).
fn layout<M: TensorCollection<f32, Cpu>>() -> BTreeMap<String, (String, Vec<usize>)> {
    let entries = checkpoint_layout::<M, f32, Cpu>();
    let n = entries.len();
    let map: BTreeMap<_, _> = entries.into_iter().map(|t| (t.key, (t.dtype.to_string(), t.shape))).collect();
    assert_eq!(map.len(), n, "a key is written twice");
    map
}

#[test]
fn imagenet_zoo_checkpoints_have_torchvisions_keys_shapes_and_dtypes() {
    assert_same_state_dict("ResNet18", layout::<zoo::ResNet18<f32, Cpu>>());
    assert_same_state_dict("ResNet34", layout::<zoo::ResNet34<f32, Cpu>>());
    assert_same_state_dict("ResNet50", layout::<zoo::ResNet50<f32, Cpu>>());
    assert_same_state_dict("ResNet101", layout::<zoo::ResNet101<f32, Cpu>>());
    assert_same_state_dict("ResNet152", layout::<zoo::ResNet152<f32, Cpu>>());
    assert_same_state_dict("ResNeXt50_32x4d", layout::<zoo::ResNeXt50_32x4d<f32, Cpu>>());
    assert_same_state_dict("WideResNet50_2", layout::<zoo::WideResNet50_2<f32, Cpu>>());
}

#[test]
fn a_saved_resnet18_file_is_torchvisions_state_dict() {
    // The file itself, read by hand: the layout above is what the writer really writes.
    let model = Cpu::seed_from_u64(18).build_module::<zoo::ResNet18<f32, Cpu>, f32>();
    let path = temp("resnet18");
    save_safetensors(&model, &path).expect("save");
    let raw = RawFile::read(&path);
    assert_same_state_dict("ResNet18", raw.layout());
    assert_eq!(raw.f32s("layer4.1.conv2.weight"), model.layer4_1_conv2.weight.as_vec());
    assert_eq!(raw.f32s("fc.bias"), model.fc.bias.as_vec());
    assert_eq!(raw.tensor_bytes("layer2.0.downsample.1.num_batches_tracked"), &[0u8; 8]);
    std::fs::remove_file(&path).ok();
}

// ------------------------------------------------------------------ loading a checkpoint

struct Reference {
    input: Vec<f64>,
    logits: Vec<f64>,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixture("tiny_resnet_io.json")).expect("fixture");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let floats = |k: &str| v[k].as_array().expect(k).iter().map(|x| x.as_f64().expect("number")).collect();
    Reference { input: floats("input"), logits: floats("logits") }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn torchvision_named_checkpoint_loads_and_matches_numpy_reference_f32() {
    let dev = Cpu::default();
    let mut model = dev.build_module::<TinyResNet<f32, Cpu>, f32>();
    load_safetensors(&mut model, fixture("tiny_resnet.safetensors")).expect("load");
    let r = reference();
    let x: Vec<f32> = r.input.iter().map(|&v| v as f32).collect();
    let x = dev.tensor_from_vec(x, (Const::<2>, Const::<3>, Const::<32>, Const::<32>));
    let y = model.forward(x);
    let y: Vec<f64> = y.as_vec().into_iter().map(f64::from).collect();
    assert_eq!(y.len(), r.logits.len());
    let err = max_abs_diff(&y, &r.logits);
    assert!(err < 1e-3, "max |ours - numpy| = {err}");
}

#[test]
fn f32_checkpoint_loads_into_f64_model_and_matches_reference_tightly() {
    let dev = Cpu::default();
    let mut model = dev.build_module::<TinyResNet<f64, Cpu>, f64>();
    load_safetensors(&mut model, fixture("tiny_resnet.safetensors")).expect("load");
    let r = reference();
    let x = dev.tensor_from_vec(r.input.clone(), (Const::<2>, Const::<3>, Const::<32>, Const::<32>));
    let y = model.forward(x).as_vec();
    // Same f32-rounded weights and inputs, both computed in f64: only summation order differs.
    let err = max_abs_diff(&y, &r.logits);
    assert!(err < 1e-9, "max |ours - numpy| = {err}");
}

#[test]
fn a_torchvision_file_loaded_and_saved_again_keeps_every_key_and_value() {
    let mut model = Cpu::default().build_module::<TinyResNet<f32, Cpu>, f32>();
    load_safetensors(&mut model, fixture("tiny_resnet.safetensors")).expect("load");
    let path = temp("resaved");
    save_safetensors(&model, &path).expect("save");
    let (theirs, ours) = (RawFile::read(&fixture("tiny_resnet.safetensors")), RawFile::read(&path));
    assert_eq!(theirs.layout(), ours.layout(), "same keys, dtypes and shapes");
    for key in theirs.layout().keys() {
        if key.ends_with("num_batches_tracked") {
            // torchvision's count (the fixture says 7) is not kept: we write 0 (see io.rs).
            assert_eq!(ours.tensor_bytes(key), &[0u8; 8], "{key}");
        } else {
            assert_eq!(ours.tensor_bytes(key), theirs.tensor_bytes(key), "{key}: bytes differ");
        }
    }
    assert_eq!(snapshot(&model).len() + 20, theirs.layout().len(), "20 batch norms");
    std::fs::remove_file(&path).ok();
}
