//! Torchvision compatibility: parameter names and shapes, and loading a torchvision-named
//! checkpoint. References come from `scripts/reference/torchvision_checkpoint.py` (a mirror of
//! torchvision's module structure, checked there against its published parameter counts, and a
//! naive float64 numpy forward pass).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use residual::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorName, ViewTensorRef,
};
use residual::dfdx::prelude::*;
use residual::io::{load_safetensors, LoadError, Problem};
use residual::residual;
use residual::zoo;

// ------------------------------------------------------------------ names and shapes

/// Collects `key -> shape` of a model's tensors without building it (the name-only walk).
struct KeyShapes(BTreeMap<String, Vec<usize>>);

impl<E: Dtype, D: Device<E>> TensorVisitor<E, D> for KeyShapes {
    type Viewer = ViewTensorName;
    type Err = std::convert::Infallible;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        key: <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Self::Err> {
        self.0.insert(key, opts.shape.concrete().into_iter().collect());
        Ok(None)
    }
}

fn our_keys<M: TensorCollection<f32, Cpu>>() -> BTreeMap<String, Vec<usize>> {
    let mut v = KeyShapes(BTreeMap::new());
    let _ = M::iter_tensors(&mut RecursiveWalker { m: String::new(), f: &mut v });
    v.0
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn torchvision_keys(model: &str) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(fixture("torchvision_keys.json")).expect("fixture");
    let all: serde_json::Value = serde_json::from_str(&text).expect("json");
    all[model]
        .as_array()
        .expect("model in fixture")
        .iter()
        .map(|pair| {
            let key = pair[0].as_str().expect("key").to_string();
            let shape = pair[1].as_array().expect("shape").iter().map(|d| d.as_u64().expect("dim") as usize).collect();
            (key, shape)
        })
        // torchvision's batch-norm step counter is not a parameter; we do not keep it.
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect()
}

fn assert_same_keys(model: &str, ours: BTreeMap<String, Vec<usize>>) {
    let theirs = torchvision_keys(model);
    let missing: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{model}: missing {missing:?}, extra {extra:?}");
    for (k, shape) in &theirs {
        assert_eq!(&ours[k], shape, "{model}: shape of {k}");
    }
}

#[test]
fn imagenet_zoo_keys_and_shapes_equal_torchvision_state_dicts() {
    assert_same_keys("ResNet18", our_keys::<zoo::ResNet18<f32, Cpu>>());
    assert_same_keys("ResNet34", our_keys::<zoo::ResNet34<f32, Cpu>>());
    assert_same_keys("ResNet50", our_keys::<zoo::ResNet50<f32, Cpu>>());
    assert_same_keys("ResNet101", our_keys::<zoo::ResNet101<f32, Cpu>>());
    assert_same_keys("ResNet152", our_keys::<zoo::ResNet152<f32, Cpu>>());
    assert_same_keys("ResNeXt50_32x4d", our_keys::<zoo::ResNeXt50_32x4d<f32, Cpu>>());
    assert_same_keys("WideResNet50_2", our_keys::<zoo::WideResNet50_2<f32, Cpu>>());
}

// ------------------------------------------------------------------ loading a checkpoint

residual! {
    block BasicBlock(planes, stride = 1) {
        residual {
            conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, padding = 1) -> bn2: bn
        } shortcut auto
        -> relu
    }

    /// torchvision's ResNet-18 layout at widths 4/8/16/32, as the fixture script writes it.
    model TinyResNet[3, 32, 32] {
        conv1: conv(4, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: BasicBlock(4) x 2
        -> layer2: BasicBlock(8) x 2 (first: stride = 2)
        -> layer3: BasicBlock(16) x 2 (first: stride = 2)
        -> layer4: BasicBlock(32) x 2 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }
}

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

/// Every tensor of a model, flattened, in key order: to check a model is untouched.
struct Snapshot(Vec<(String, Vec<f32>)>);

impl TensorVisitor<f32, Cpu> for Snapshot {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, f32, Cpu>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, Cpu>>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, Self::Err> {
        self.0.push((key, t.as_vec()));
        Ok(None)
    }
}

fn snapshot<M: TensorCollection<f32, Cpu>>(m: &M) -> Vec<(String, Vec<f32>)> {
    let mut s = Snapshot(Vec::new());
    let _ = M::iter_tensors(&mut RecursiveWalker { m: (m, String::new()), f: &mut s });
    s.0
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

/// Writes the fixture with one change, to a temp file.
fn modified_fixture(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, ::safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)>),
) -> PathBuf {
    let bytes = std::fs::read(fixture("tiny_resnet.safetensors")).expect("fixture");
    let file = ::safetensors::tensor::SafeTensors::deserialize(&bytes).expect("valid fixture");
    let mut tensors: Vec<(String, ::safetensors::tensor::Dtype, Vec<usize>, Vec<u8>)> =
        file.tensors().into_iter().map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, ::safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), ::safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view")))
        .collect();
    let out = std::env::temp_dir().join(format!("residual-test-{}-{name}.safetensors", std::process::id()));
    ::safetensors::tensor::serialize_to_file(views, &None, &out).expect("write");
    out
}

fn built_model() -> TinyResNet<f32, Cpu> {
    Cpu::seed_from_u64(7).build_module::<TinyResNet<f32, Cpu>, f32>()
}

#[test]
fn missing_key_is_named_and_model_is_untouched() {
    let path = modified_fixture("missing", |t| t.retain(|(k, ..)| k != "layer2.0.downsample.1.running_var"));
    let mut model = built_model();
    let before = snapshot(&model);
    let err = load_safetensors(&mut model, &path).expect_err("must fail");
    match &err {
        LoadError::Mismatch { problems, .. } => {
            assert_eq!(problems, &vec![Problem::MissingKey { key: "layer2.0.downsample.1.running_var".into() }])
        }
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("layer2.0.downsample.1.running_var"));
    assert_eq!(before, snapshot(&model), "a failed load changed the model");
}

#[test]
fn wrong_shape_is_named_with_both_shapes_and_model_is_untouched() {
    let path = modified_fixture("shape", |t| {
        for (k, _, shape, data) in t.iter_mut() {
            if k == "fc.weight" {
                // [10, 32] -> [32, 10]: same byte count, wrong shape.
                *shape = vec![32, 10];
                let _ = data;
            }
        }
    });
    let mut model = built_model();
    let before = snapshot(&model);
    let err = load_safetensors(&mut model, &path).expect_err("must fail");
    let text = err.to_string();
    assert!(text.contains("fc.weight") && text.contains("[10, 32]") && text.contains("[32, 10]"), "{text}");
    assert_eq!(before, snapshot(&model), "a failed load changed the model");
}

#[test]
fn garbage_bytes_give_a_format_error_and_model_is_untouched() {
    let path = std::env::temp_dir().join(format!("residual-test-{}-garbage.safetensors", std::process::id()));
    std::fs::write(&path, b"\xff\x00 this is not a safetensors file \x13\x37").expect("write");
    let mut model = built_model();
    let before = snapshot(&model);
    let err = load_safetensors(&mut model, &path).expect_err("must fail");
    assert!(matches!(err, LoadError::Format { .. }), "{err}");
    assert!(err.to_string().contains("garbage.safetensors"));
    assert_eq!(before, snapshot(&model));

    let missing = std::env::temp_dir().join("residual-test-no-such-file.safetensors");
    let err = load_safetensors(&mut model, &missing).expect_err("must fail");
    assert!(matches!(err, LoadError::Io { .. }) && err.to_string().contains("no-such-file"), "{err}");
}

#[test]
fn save_then_load_round_trips_a_zoo_model() {
    let dev = Cpu::seed_from_u64(1);
    let a = dev.build_module::<zoo::ResNet20<f32, Cpu>, f32>();
    let mut b = Cpu::seed_from_u64(2).build_module::<zoo::ResNet20<f32, Cpu>, f32>();
    assert_ne!(snapshot(&a), snapshot(&b));
    let path = std::env::temp_dir().join(format!("residual-test-{}-roundtrip.safetensors", std::process::id()));
    residual::io::save_safetensors(&a, &path).expect("save");
    load_safetensors(&mut b, &path).expect("load");
    assert_eq!(snapshot(&a), snapshot(&b));
}
