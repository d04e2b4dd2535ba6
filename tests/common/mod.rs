//! What the checkpoint tests share: the tiny torchvision-layout ResNet the fixture was written
//! for, paths, and ways to look at a model and at a file without the code under test.
#![allow(dead_code)] // each test file uses a part

use std::path::{Path, PathBuf};

use residual::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorName, ViewTensorRef,
};
use residual::dfdx::prelude::*;
use residual::residual;

residual! {
    block BasicBlock(planes, stride = 1) {
        residual {
            conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
            -> conv2: conv(planes, 3, padding = 1) -> bn2: bn
        } shortcut auto
        -> relu
    }

    /// torchvision's ResNet-18 layout at widths 4/8/16/32, as the fixture script writes it.
    pub model TinyResNet[3, 32, 32] {
        conv1: conv(4, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: BasicBlock(4) x 2
        -> layer2: BasicBlock(8) x 2 (first: stride = 2)
        -> layer3: BasicBlock(16) x 2 (first: stride = 2)
        -> layer4: BasicBlock(32) x 2 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// The same backbone with three blocks a stage: its checkpoint is a superset of TinyResNet's,
    /// as a ResNet-152 checkpoint is of ResNet-50's.
    pub model TinyResNetDeep[3, 32, 32] {
        conv1: conv(4, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: BasicBlock(4) x 3
        -> layer2: BasicBlock(8) x 3 (first: stride = 2)
        -> layer3: BasicBlock(16) x 3 (first: stride = 2)
        -> layer4: BasicBlock(32) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(10)
    }

    /// The same backbone with a new 5-class head under a new name: fine-tuning.
    pub model TinyResNetNewHead[3, 32, 32] {
        conv1: conv(4, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: BasicBlock(4) x 2
        -> layer2: BasicBlock(8) x 2 (first: stride = 2)
        -> layer3: BasicBlock(16) x 2 (first: stride = 2)
        -> layer4: BasicBlock(32) x 2 (first: stride = 2)
        -> global_avgpool -> classifier: linear(5)
    }
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A fresh path in the temp dir, unique to this process and `name`.
pub fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("residual-test-{}-{name}.safetensors", std::process::id()))
}

/// Every tensor of a model, flattened, in walk order: to check a model is untouched.
struct Snapshot<E>(Vec<(String, Vec<E>)>);

impl<E: Dtype> TensorVisitor<E, Cpu> for Snapshot<E>
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = E;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, Cpu>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, Cpu>>,
    ) -> Result<Option<Tensor<S, E, Cpu>>, Self::Err> {
        self.0.push((key, t.as_vec()));
        Ok(None)
    }
}

pub fn snapshot<E: Dtype, M: TensorCollection<E, Cpu>>(m: &M) -> Vec<(String, Vec<E>)>
where
    Cpu: Device<E>,
{
    let mut s = Snapshot(Vec::new());
    let _ = M::iter_tensors(&mut RecursiveWalker { m: (m, String::new()), f: &mut s });
    s.0
}

/// A safetensors file taken apart by hand (8-byte little-endian header length, JSON header,
/// data), not by the code under test.
pub struct RawFile {
    pub header: serde_json::Value,
    pub data: Vec<u8>,
}

impl RawFile {
    pub fn read(path: &Path) -> RawFile {
        let bytes = std::fs::read(path).expect("read");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
        let header = serde_json::from_slice(&bytes[8..8 + n]).expect("json header");
        RawFile { header, data: bytes[8 + n..].to_vec() }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let header = serde_json::to_vec(&self.header).expect("json");
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(&self.data);
        out
    }

    /// `(dtype, shape)` of every tensor, by key.
    pub fn layout(&self) -> std::collections::BTreeMap<String, (String, Vec<usize>)> {
        let entries = self.header.as_object().expect("object");
        entries
            .iter()
            .filter(|(k, _)| *k != "__metadata__")
            .map(|(k, v)| {
                let dtype = v["dtype"].as_str().expect("dtype").to_string();
                let shape = v["shape"].as_array().expect("shape").iter().map(|d| d.as_u64().unwrap() as usize);
                (k.clone(), (dtype, shape.collect()))
            })
            .collect()
    }

    /// The raw bytes of one tensor.
    pub fn tensor_bytes(&self, key: &str) -> &[u8] {
        let o = &self.header[key]["data_offsets"];
        let (s, e) = (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize);
        &self.data[s..e]
    }

    /// One F32 tensor's values.
    pub fn f32s(&self, key: &str) -> Vec<f32> {
        assert_eq!(self.header[key]["dtype"], "F32", "{key}");
        self.tensor_bytes(key).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
}

/// Writes the fixture with its tensors edited, through the safetensors crate (a valid file).
pub fn modified_fixture(
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
    let out = temp(name);
    ::safetensors::tensor::serialize_to_file(views, &None, &out).expect("write");
    out
}
