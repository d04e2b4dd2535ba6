//! Loading weights from `.safetensors` files, checked before anything is written.
//!
//! dfdx's own `load_safetensors` copies tensor by tensor, so a file that fails half way leaves a
//! half-loaded model, and its shape error does not say which key. Here a load is two walks over
//! the model's tensors: the first reads the file and checks every key, shape and dtype,
//! collecting every problem; only if there is none does the second walk copy the values.
//! A failed load therefore leaves the model exactly as it was.
//!
//! Keys are the model's parameter paths (`layer1.0.conv1.weight`), so a torchvision checkpoint
//! exported with `safetensors.torch.save_file(model.state_dict(), ...)` loads into the zoo's
//! ImageNet models; keys the model does not have (e.g. `num_batches_tracked`) are ignored.

use std::fmt;
use std::path::{Path, PathBuf};

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorMut, ViewTensorName,
    ViewTensorRef,
};
use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::Tensor;
use safetensors::tensor::{Dtype as FileDtype, SafeTensors};

use crate::{Backend, Element};

/// One thing wrong with a checkpoint, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The model has a tensor at `key`; the file does not.
    MissingKey { key: String },
    /// The file's tensor at `key` has another shape than the model's.
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    /// The file's tensor at `key` is not a float type we can convert (we read F32 and F64).
    Dtype { key: String, found: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingKey { key } => write!(f, "missing key `{key}`"),
            Problem::Shape { key, expected, found } => {
                write!(f, "`{key}`: expected shape {expected:?}, found {found:?}")
            }
            Problem::Dtype { key, found } => {
                write!(f, "`{key}`: dtype {found} is not supported (expected F32 or F64)")
            }
        }
    }
}

/// Why a checkpoint could not be loaded. The model was not modified.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not a valid safetensors file (truncated, garbage bytes, bad header).
    Format { path: PathBuf, message: String },
    /// The file is valid but does not fit the model; every problem found is listed.
    Mismatch { path: PathBuf, problems: Vec<Problem> },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            LoadError::Format { path, message } => {
                write!(f, "{} is not a valid safetensors file: {message}", path.display())
            }
            LoadError::Mismatch { path, problems } => {
                write!(f, "{} does not fit the model ({} problems):", path.display(), problems.len())?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Loads `path` into `model`, or returns every problem found and leaves `model` untouched.
pub fn load_safetensors<M, E, D>(model: &mut M, path: impl AsRef<Path>) -> Result<(), LoadError>
where
    M: TensorCollection<E, D>,
    E: Element,
    D: Backend<E>,
{
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| LoadError::Io { path: path.into(), source })?;
    let file = SafeTensors::deserialize(&bytes)
        .map_err(|e| LoadError::Format { path: path.into(), message: format!("{e:?}") })?;

    let mut checker = Checker { file: &file, problems: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (&*model, String::new()), f: &mut checker })
        .map_err(|never| match never {})?;
    if !checker.problems.is_empty() {
        return Err(LoadError::Mismatch { path: path.into(), problems: checker.problems });
    }

    let mut writer = Writer { file: &file };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut writer })
        .map_err(|never| match never {})?;
    Ok(())
}

/// Saves `model`'s tensors to `path` under their parameter paths (dfdx's writer).
pub fn save_safetensors<M, E, D>(model: &M, path: impl AsRef<Path>) -> Result<(), LoadError>
where
    M: TensorCollection<E, D>,
    E: Element + dfdx::tensor::safetensors::SafeDtype,
    D: Backend<E>,
{
    use dfdx::nn::SaveToSafetensors;
    let path = path.as_ref();
    model
        .save_safetensors(path)
        .map_err(|e| LoadError::Format { path: path.into(), message: format!("could not write: {e:?}") })
}

/// Never constructed: the walks below cannot fail, they record problems instead.
enum Never {}

struct Checker<'a, 'data> {
    file: &'a SafeTensors<'data>,
    problems: Vec<Problem>,
}

impl<'a, 'data, E: Element, D: Backend<E>> TensorVisitor<E, D> for Checker<'a, 'data> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = Never;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, D>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Never> {
        let expected: Vec<usize> = t.shape().concrete().into_iter().collect();
        match self.file.tensor(&key) {
            Err(_) => self.problems.push(Problem::MissingKey { key }),
            Ok(view) => {
                if !matches!(view.dtype(), FileDtype::F32 | FileDtype::F64) {
                    self.problems.push(Problem::Dtype { key: key.clone(), found: format!("{:?}", view.dtype()) });
                }
                if view.shape() != expected.as_slice() {
                    self.problems.push(Problem::Shape { key, expected, found: view.shape().to_vec() });
                }
            }
        }
        Ok(None)
    }
}

struct Writer<'a, 'data> {
    file: &'a SafeTensors<'data>,
}

impl<'a, 'data, E: Element, D: Backend<E>> TensorVisitor<E, D> for Writer<'a, 'data> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = Never;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, D>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Never> {
        // The checker has seen this key with the right shape and a float dtype.
        if let Ok(view) = self.file.tensor(&key) {
            let values: Vec<E> = decode(view.dtype(), view.data());
            t.copy_from(&values);
        }
        Ok(None)
    }
}

/// Little-endian F32/F64 bytes to `E` (safetensors data need not be aligned).
fn decode<E: Element>(dtype: FileDtype, bytes: &[u8]) -> Vec<E> {
    match dtype {
        FileDtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| E::from(f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).unwrap_or(E::nan()))
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| E::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(E::nan()))
            .collect(),
    }
}
