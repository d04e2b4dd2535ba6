//! Checkpoints as `.safetensors` files, in torchvision's layout both ways.
//!
//! **Loading** checks before it writes. dfdx's own `load_safetensors` copies tensor by tensor, so
//! a file that fails half way leaves a half-loaded model, and its errors do not say which key.
//! Here a load first checks the file's layout itself (header length, JSON header, every
//! tensor's byte range), so a damaged file is described in words; then it walks the model's
//! tensors and checks every key, shape, dtype and (by default) that every value is finite,
//! collecting every problem; only if there is none does a second walk copy the values. A failed
//! load therefore leaves the model exactly as it was.
//!
//! Loads are strict by default, as PyTorch's `load_state_dict(strict=True)`: a key the model has
//! and the file lacks, or a key the file has and the model lacks, is an error naming it. The one
//! exception is torchvision's `num_batches_tracked` beside each batch norm, which is accepted and
//! ignored (this crate's batch norm has a fixed momentum and never reads it). For fine-tuning (a
//! backbone into a model with a new head) [`load_safetensors_with`] with `strict: false` loads
//! the keys both sides have and returns a [`LoadReport`] of what it skipped and what it did not
//! find. As in PyTorch, a key both sides have with different shapes is an error in either mode:
//! give a new head a new name (`head: linear(10)`) so its keys differ from the checkpoint's.
//!
//! Files are memory-mapped, not read whole: a ResNet-152 checkpoint is 240 MB, and only the
//! header and, once everything is checked, each tensor's bytes are touched.
//!
//! **Saving** ([`save_safetensors`]) writes what `safetensors.torch.save_file(model.state_dict())`
//! would: the model's tensors under their parameter paths in the model's float type, and an I64
//! scalar `num_batches_tracked` beside every batch norm, so the file loads into the matching
//! torchvision model with `strict=True`.
//!
//! ```
//! use residual::dfdx::prelude::*;
//! use residual::io::{load_safetensors, load_safetensors_with, save_safetensors, LoadOptions};
//! use residual::residual;
//!
//! residual! {
//!     model Pretrained[3, 8, 8] {
//!         conv1: conv(4, 3, padding = 1) -> bn1: bn -> relu -> global_avgpool -> fc: linear(10)
//!     }
//!     model FineTuned[3, 8, 8] {
//!         conv1: conv(4, 3, padding = 1) -> bn1: bn -> relu -> global_avgpool -> head: linear(2)
//!     }
//! }
//!
//! let dev = Cpu::default();
//! let path = std::env::temp_dir().join(format!("residual-doc-{}.safetensors", std::process::id()));
//! save_safetensors(&dev.build_module::<Pretrained<f32, Cpu>, f32>(), &path)?;
//!
//! let mut model = dev.build_module::<FineTuned<f32, Cpu>, f32>();
//! // Strict: `fc.*` is in the file only, `head.*` in the model only.
//! let err = load_safetensors(&mut model, &path).unwrap_err();
//! assert!(err.to_string().contains("unexpected key `fc.weight`"));
//! // Non-strict: the backbone loads, the new head keeps its initial weights.
//! let report = load_safetensors_with(&mut model, &path, LoadOptions::non_strict())?;
//! assert_eq!(report.skipped_keys, ["fc.bias", "fc.weight"]);
//! assert_eq!(report.missing_keys, ["head.weight", "head.bias"]);
//! # std::fs::remove_file(&path)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorMut, ViewTensorName,
    ViewTensorRef,
};
use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::safetensors::SafeDtype;
use dfdx::tensor::Tensor;
use safetensors::tensor::{Dtype as FileDtype, SafeTensorError, SafeTensors, View};

use crate::{Backend, Element};

/// The suffix of torchvision's batch-norm step counter, written beside `running_mean`.
const BATCH_COUNTER: &str = "num_batches_tracked";
/// The key that marks a batch norm in a model: its running mean.
const RUNNING_MEAN: &str = "running_mean";
/// The largest header safetensors accepts (its `MAX_HEADER_SIZE`).
const MAX_HEADER_BYTES: u64 = 100_000_000;
/// How many problems a [`LoadError::Mismatch`] prints before it summarises the rest.
const SHOWN_PROBLEMS: usize = 30;

// ------------------------------------------------------------------ options, report, errors

/// How [`load_safetensors_with`] treats keys on one side only and non-finite values.
///
/// The default is what [`load_safetensors`] does: strict, and finite values only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// `true` (the default): every key of the model must be in the file and every key of the
    /// file in the model (torchvision's `num_batches_tracked` excepted), as PyTorch's
    /// `load_state_dict(strict=True)`. `false`: load the keys both have, report the others.
    pub strict: bool,
    /// `false` (the default): a tensor holding NaN or an infinity (after conversion to the
    /// model's float type) is an error naming it. `true`: load such values as they are.
    pub allow_non_finite: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { strict: true, allow_non_finite: false }
    }
}

impl LoadOptions {
    /// Loads the keys the model and the file share and reports the rest (fine-tuning).
    pub fn non_strict() -> Self {
        LoadOptions { strict: false, ..LoadOptions::default() }
    }
}

/// What a successful [`load_safetensors_with`] did. With `strict: true` both lists are empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// How many of the model's tensors were overwritten from the file.
    pub loaded: usize,
    /// Keys of the file the model has no tensor for, sorted; they were not read. Counters
    /// (`num_batches_tracked`) of the model's own batch norms are not listed.
    pub skipped_keys: Vec<String>,
    /// Keys of the model the file has no tensor for, in the model's order; those tensors were
    /// left as they were.
    pub missing_keys: Vec<String>,
}

/// One thing wrong with a checkpoint, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The model has a tensor at `key`; the file does not.
    MissingKey { key: String },
    /// The file has a tensor at `key`; the model does not (strict loads only).
    UnexpectedKey { key: String },
    /// The file's tensor at `key` has another shape than the model's.
    Shape { key: String, expected: Vec<usize>, found: Vec<usize> },
    /// The file's tensor at `key` is not a float type we can convert (we read F32 and F64).
    Dtype { key: String, found: String },
    /// `count` of the `len` values at `key` are NaN or infinite in the model's float type, the
    /// first at flat index `first`.
    NonFinite { key: String, count: usize, len: usize, first: usize },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::MissingKey { key } => write!(f, "missing key `{key}`: the model has it, the file does not"),
            Problem::UnexpectedKey { key } => {
                write!(f, "unexpected key `{key}`: the file has it, the model does not")
            }
            Problem::Shape { key, expected, found } => {
                write!(f, "`{key}`: the model's shape is {expected:?}, the file's is {found:?}")
            }
            Problem::Dtype { key, found } => {
                write!(f, "`{key}`: dtype {found} is not supported (expected F32 or F64)")
            }
            Problem::NonFinite { key, count, len, first } => {
                let values = if *len == 1 { "value" } else { "values" };
                let are = if *count == 1 { "is" } else { "are" };
                write!(f, "`{key}`: {count} of its {len} {values} {are} NaN or infinite (the first at index {first})")
            }
        }
    }
}

/// Why a checkpoint could not be loaded. The model was not modified.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be opened or mapped.
    Io { path: PathBuf, source: std::io::Error },
    /// The file is not a well-formed safetensors file; `message` says what is wrong, in words
    /// (truncated, a header that is not JSON, a tensor whose bytes lie outside the file, ...).
    Format { path: PathBuf, message: String },
    /// The file is well formed but does not fit the model; every problem found is listed.
    Mismatch { path: PathBuf, problems: Vec<Problem> },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            LoadError::Format { path, message } => write!(f, "cannot load {}: {message}", path.display()),
            LoadError::Mismatch { path, problems } => {
                let n = problems.len();
                let noun = if n == 1 { "problem" } else { "problems" };
                write!(f, "{} does not fit the model ({n} {noun}):", path.display())?;
                for p in problems.iter().take(SHOWN_PROBLEMS) {
                    write!(f, "\n  - {p}")?;
                }
                if n > SHOWN_PROBLEMS {
                    write!(f, "\n  ... and {} more (all in `LoadError::Mismatch::problems`)", n - SHOWN_PROBLEMS)?;
                }
                if problems.iter().any(|p| matches!(p, Problem::UnexpectedKey { .. } | Problem::MissingKey { .. })) {
                    write!(
                        f,
                        "\n  help: to load only the keys both have (a backbone into a model with a new head), use \
                         `load_safetensors_with(model, path, LoadOptions::non_strict())`: it returns the keys it \
                         skipped and the keys it did not find"
                    )?;
                }
                if problems.iter().any(|p| matches!(p, Problem::NonFinite { .. })) {
                    write!(
                        f,
                        "\n  help: NaN or infinite weights usually mean a diverged run or a damaged file; \
                         `LoadOptions {{ allow_non_finite: true, .. }}` loads them anyway"
                    )?;
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

/// Why a checkpoint could not be written. A file already at `path` is left as it was.
#[derive(Debug)]
pub struct SaveError {
    /// The file that was to be written.
    pub path: PathBuf,
    /// What the operating system (or the safetensors writer) reported.
    pub source: std::io::Error,
}

impl fmt::Display for SaveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot write {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for SaveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

// ------------------------------------------------------------------ loading

/// Loads `path` into `model` strictly (see [`LoadOptions::default`]), or returns every problem
/// found and leaves `model` untouched.
pub fn load_safetensors<M, E, D>(model: &mut M, path: impl AsRef<Path>) -> Result<(), LoadError>
where
    M: TensorCollection<E, D>,
    E: Element,
    D: Backend<E>,
{
    load_safetensors_with(model, path, LoadOptions::default()).map(|_| ())
}

/// Loads `path` into `model` as `options` say, and reports what it loaded, skipped and did not
/// find; on an error `model` is untouched.
pub fn load_safetensors_with<M, E, D>(
    model: &mut M,
    path: impl AsRef<Path>,
    options: LoadOptions,
) -> Result<LoadReport, LoadError>
where
    M: TensorCollection<E, D>,
    E: Element,
    D: Backend<E>,
{
    let path = path.as_ref();
    let bytes = map_file(path)?;
    let format = |message: String| LoadError::Format { path: path.into(), message };
    check_layout(&bytes).map_err(format)?;
    // `check_layout` checks what `deserialize` checks, in words; this is a last line of defence.
    let file = SafeTensors::deserialize(&bytes).map_err(|e| format(describe(e)))?;

    let mut checker =
        Checker { file: &file, options, model_keys: Vec::new(), problems: Vec::new(), missing: Vec::new() };
    M::iter_tensors(&mut RecursiveWalker { m: (&*model, String::new()), f: &mut checker })
        .map_err(|never| match never {})?;
    let Checker { model_keys, mut problems, missing, .. } = checker;

    let ours: BTreeSet<&str> = model_keys.iter().map(String::as_str).collect();
    let counters: BTreeSet<String> = batch_norm_counters(model_keys.iter().map(String::as_str)).into_iter().collect();
    let mut skipped: Vec<String> =
        file.names().into_iter().filter(|k| !ours.contains(k.as_str()) && !counters.contains(*k)).cloned().collect();
    skipped.sort();

    if options.strict {
        problems.extend(missing.iter().map(|key| Problem::MissingKey { key: key.clone() }));
        problems.extend(skipped.iter().map(|key| Problem::UnexpectedKey { key: key.clone() }));
    }
    if !problems.is_empty() {
        return Err(LoadError::Mismatch { path: path.into(), problems });
    }

    let mut writer = Writer { file: &file, loaded: 0 };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut writer })
        .map_err(|never| match never {})?;
    Ok(LoadReport { loaded: writer.loaded, skipped_keys: skipped, missing_keys: missing })
}

/// The file's bytes: memory-mapped (dfdx and safetensors do the same).
fn map_file(path: &Path) -> Result<memmap2::Mmap, LoadError> {
    let io = |source| LoadError::Io { path: path.into(), source };
    let file = File::open(path).map_err(io)?;
    // SAFETY: `Mmap::map` is unsafe because the mapping is undefined behaviour if the file is
    // changed while it is mapped. We map read-only, only for the duration of this load, and never
    // hand out the slice; what remains is another process writing or truncating a checkpoint
    // while it is being loaded, the same trade every mmap-based loader (dfdx's, safetensors')
    // makes. memmap2 maps an empty file as an empty slice.
    unsafe { memmap2::Mmap::map(&file) }.map_err(io)
}

/// Checks the file's layout the way `SafeTensors::deserialize` does, but says what is wrong in
/// words and names the tensor. `Ok` means `deserialize` will accept the bytes.
fn check_layout(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    if len == 0 {
        return Err("the file is empty".into());
    }
    let Some(head) = bytes.first_chunk::<8>() else {
        return Err(format!(
            "the file is truncated: it has {len} bytes, fewer than the 8-byte header length a safetensors file starts with"
        ));
    };
    let n = u64::from_le_bytes(*head);
    if n > MAX_HEADER_BYTES {
        return Err(format!(
            "this is not a safetensors file: its first 8 bytes give a header length of {n} bytes, more than the \
             100 MB a safetensors header may have"
        ));
    }
    if 8 + n > len {
        return Err(format!(
            "the file is truncated: its first 8 bytes say a {n}-byte header follows, the file has {} bytes after them",
            len - 8
        ));
    }
    let header = &bytes[8..8 + n as usize];
    let text = std::str::from_utf8(header).map_err(|e| {
        format!("the header is not JSON: it is not UTF-8 text (invalid byte at header offset {})", e.valid_up_to())
    })?;
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("the header is not JSON: {e}"))?;
    let serde_json::Value::Object(entries) = json else {
        return Err("the header is JSON but not a safetensors header: it is not an object of tensors".into());
    };
    if !text.starts_with('{') {
        return Err("the header has bytes before its opening `{`, which safetensors does not accept".into());
    }

    // (key, start, end) of every tensor, after checking each entry on its own.
    let mut ranges: Vec<(&str, u64, u64)> = Vec::with_capacity(entries.len());
    for (key, entry) in &entries {
        if key == "__metadata__" {
            let strings = entry.as_object().is_some_and(|m| m.values().all(serde_json::Value::is_string));
            if !strings {
                return Err("the header's `__metadata__` is not an object of strings".into());
            }
            continue;
        }
        let bad = |what: &str| format!("the header's entry for tensor `{key}` {what}");
        let dtype = entry.get("dtype").and_then(serde_json::Value::as_str).ok_or_else(|| bad("has no `dtype`"))?;
        let size = dtype_size(dtype).ok_or_else(|| bad(&format!("has an unknown dtype `{dtype}`")))?;
        let shape: Vec<u64> = entry
            .get("shape")
            .and_then(serde_json::Value::as_array)
            .and_then(|dims| dims.iter().map(serde_json::Value::as_u64).collect())
            .ok_or_else(|| bad("has no `shape` list of sizes"))?;
        let offsets: Vec<u64> = entry
            .get("data_offsets")
            .and_then(serde_json::Value::as_array)
            .and_then(|o| o.iter().map(serde_json::Value::as_u64).collect())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad("has no `data_offsets` pair"))?;
        let (start, end) = (offsets[0], offsets[1]);
        let needed = shape
            .iter()
            .try_fold(size, |acc, &d| acc.checked_mul(d))
            .filter(|&b| usize::try_from(b).is_ok())
            .ok_or_else(|| format!("tensor `{key}`: shape {shape:?} is too large to address"))?;
        if end < start {
            return Err(format!("tensor `{key}`: its data range {start}..{end} ends before it starts"));
        }
        if end - start != needed {
            return Err(format!(
                "tensor `{key}`: shape {shape:?} of {dtype} needs {needed} bytes, its data range {start}..{end} holds {}",
                end - start
            ));
        }
        ranges.push((key.as_str(), start, end));
    }

    // The ranges must tile the data section: sorted by start, each begins where the last ended.
    // A damaged offset shows as a range out of the file (that tensor is named), an overlap (both
    // tensors are named) or a hole (the tensors on either side are named), in that order.
    ranges.sort_by_key(|&(key, start, end)| (start, end, key));
    let data_len = len - 8 - n;
    let (mut cursor, mut last_key) = (0u64, "the start of the data section");
    let (mut overlap, mut hole) = (None, None);
    for &(key, start, end) in &ranges {
        if start < cursor && overlap.is_none() {
            overlap = Some(format!(
                "tensor `{key}`'s data range {start}..{end} overlaps tensor `{last_key}`'s, which ends at byte {cursor}"
            ));
        }
        if start > cursor && hole.is_none() {
            let before = if cursor == 0 { last_key.to_string() } else { format!("tensor `{last_key}`") };
            hole = Some(format!(
                "bytes {cursor}..{start} of the data section belong to no tensor (between {before} and tensor `{key}`)"
            ));
        }
        if end >= cursor {
            (cursor, last_key) = (end, key);
        }
    }
    let past_end = ranges.iter().find(|&&(_, _, end)| end > data_len);
    let damaged = overlap.or(hole);
    match (damaged, past_end) {
        // A consistent header and too few bytes: the file was cut short.
        (None, Some(&(key, ..))) => Err(format!(
            "the file is truncated: its header says the file is {} bytes long, the file has {len} (the data of \
             tensor `{key}` onwards is missing)",
            8 + n + cursor
        )),
        // An inconsistent header: name the tensor whose range leaves the file.
        (Some(_), Some(&(key, start, end))) => Err(format!(
            "tensor `{key}`'s data range {start}..{end} is out of the file (its data section has {data_len} bytes): \
             the header is damaged"
        )),
        (Some(damaged), None) => Err(format!("{damaged}: the header is damaged")),
        (None, None) if cursor < data_len => Err(format!(
            "the file has {} bytes after the last tensor's data that its header does not describe: it is damaged or \
             has data appended",
            data_len - cursor
        )),
        (None, None) => Ok(()),
    }
}

/// Bytes per element of a safetensors dtype name, `None` for a name safetensors 0.3 does not know.
fn dtype_size(name: &str) -> Option<u64> {
    Some(match name {
        "BOOL" | "U8" | "I8" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Words for the errors of `SafeTensors::deserialize` (reached only if `check_layout` missed one).
fn describe(e: SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderDeserialization => {
            "the header is not a valid safetensors header".into()
        }
        SafeTensorError::InvalidHeaderStart => "the header does not start with `{`".into(),
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooSmall => {
            "the header length in the first 8 bytes does not fit the file".into()
        }
        SafeTensorError::InvalidOffset(key) => format!("the data offsets near tensor `{key}` are inconsistent"),
        SafeTensorError::MetadataIncompleteBuffer => "the tensors' data does not cover the file exactly".into(),
        other => format!("the safetensors reader refused it ({other:?})"),
    }
}

/// `prefix.num_batches_tracked` for every batch norm among `keys` (a `prefix.running_mean` key).
fn batch_norm_counters<'a>(keys: impl Iterator<Item = &'a str>) -> Vec<String> {
    keys.filter_map(|k| k.strip_suffix(RUNNING_MEAN)).map(|prefix| format!("{prefix}{BATCH_COUNTER}")).collect()
}

/// The first walk: checks every model tensor against the file, writes nothing.
struct Checker<'a, 'data> {
    file: &'a SafeTensors<'data>,
    options: LoadOptions,
    model_keys: Vec<String>,
    problems: Vec<Problem>,
    missing: Vec<String>,
}

/// Never constructed: the walks cannot fail, they record problems instead.
enum Never {}

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
        self.model_keys.push(key.clone());
        let expected: Vec<usize> = t.shape().concrete().into_iter().collect();
        let Ok(view) = self.file.tensor(&key) else {
            self.missing.push(key);
            return Ok(None);
        };
        let float = matches!(view.dtype(), FileDtype::F32 | FileDtype::F64);
        if !float {
            self.problems.push(Problem::Dtype { key: key.clone(), found: format!("{:?}", view.dtype()) });
        }
        if view.shape() != expected.as_slice() {
            self.problems.push(Problem::Shape { key, expected, found: view.shape().to_vec() });
        } else if float && !self.options.allow_non_finite {
            let (mut count, mut first, mut len) = (0, 0, 0);
            for (i, v) in decode::<E>(view.dtype(), view.data()).enumerate() {
                if !v.is_finite() {
                    if count == 0 {
                        first = i;
                    }
                    count += 1;
                }
                len = i + 1;
            }
            if count > 0 {
                self.problems.push(Problem::NonFinite { key, count, len, first });
            }
        }
        Ok(None)
    }
}

/// The second walk, after a clean check: copies the file's values into the model.
struct Writer<'a, 'data> {
    file: &'a SafeTensors<'data>,
    loaded: usize,
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
        // The checker has seen this key with the right shape and a float dtype (or it is missing
        // in a non-strict load, and left as it is).
        if let Ok(view) = self.file.tensor(&key) {
            let values: Vec<E> = decode(view.dtype(), view.data()).collect();
            t.copy_from(&values);
            self.loaded += 1;
        }
        Ok(None)
    }
}

/// Little-endian F32/F64 bytes to `E` (safetensors data need not be aligned). A float-to-float
/// conversion never fails (an f64 beyond f32's range becomes an infinity, which the finiteness
/// check sees); the `nan()` fallback is never taken.
fn decode<E: Element>(dtype: FileDtype, bytes: &[u8]) -> impl Iterator<Item = E> + '_ {
    let wide = dtype == FileDtype::F64;
    let width = if wide { 8 } else { 4 };
    bytes.chunks_exact(width).map(move |c| {
        let v = match (wide, c.first_chunk::<8>(), c.first_chunk::<4>()) {
            (true, Some(b), _) => E::from(f64::from_le_bytes(*b)),
            (false, _, Some(b)) => E::from(f32::from_le_bytes(*b)),
            _ => None,
        };
        v.unwrap_or(E::nan())
    })
}

// ------------------------------------------------------------------ saving

/// One tensor of a checkpoint as [`save_safetensors`] writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedTensor {
    /// The key: the parameter path, as torchvision's `state_dict` key.
    pub key: String,
    /// The safetensors dtype name: the model's float type (`F32`, `F64`), `I64` for counters.
    pub dtype: &'static str,
    /// The shape (`[]` for a scalar).
    pub shape: Vec<usize>,
}

/// What [`save_safetensors`] writes for a model of type `M`, computed from its type alone (no
/// model is built): every tensor in the model's walk order, then one `num_batches_tracked`
/// (I64, shape `[]`) per batch norm.
pub fn checkpoint_layout<M, E, D>() -> Vec<SavedTensor>
where
    M: TensorCollection<E, D>,
    E: Element + SafeDtype,
    D: Backend<E>,
{
    let mut names = Names(Vec::new());
    M::iter_tensors(&mut RecursiveWalker { m: String::new(), f: &mut names }).unwrap_or_else(|never| match never {});
    let dtype = dtype_name(E::safe_dtype());
    let counters = batch_norm_counters(names.0.iter().map(|(k, _)| k.as_str()));
    names
        .0
        .into_iter()
        .map(|(key, shape)| SavedTensor { key, dtype, shape })
        .chain(counters.into_iter().map(|key| SavedTensor { key, dtype: "I64", shape: Vec::new() }))
        .collect()
}

/// Saves `model` to `path` in torchvision's layout (see [`checkpoint_layout`]).
///
/// The file is written beside `path` under a temporary name and renamed into place, so a failed
/// save leaves any file already at `path` as it was. `num_batches_tracked` is written as 0:
/// this crate's batch norm does not count its steps (PyTorch reads the counter only when a batch
/// norm's momentum is `None`, which torchvision's ResNets never use).
pub fn save_safetensors<M, E, D>(model: &M, path: impl AsRef<Path>) -> Result<(), SaveError>
where
    M: TensorCollection<E, D>,
    E: Element + SafeDtype,
    D: Backend<E>,
{
    let path = path.as_ref();
    let mut collect = Collect(Vec::new());
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut collect })
        .unwrap_or_else(|never| match never {});
    let counters = batch_norm_counters(collect.0.iter().map(|(k, _)| k.as_str()));
    let mut tensors = collect.0;
    tensors.extend(counters.into_iter().map(|k| (k, Bytes { dtype: FileDtype::I64, shape: vec![], data: vec![0; 8] })));

    let error = |source| SaveError { path: path.into(), source };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let written = safetensors::tensor::serialize_to_file(tensors, &None, &partial).map_err(|e| match e {
        SafeTensorError::IoError(source) => source,
        other => std::io::Error::other(format!("the safetensors writer refused the tensors: {other:?}")),
    });
    let renamed = written.and_then(|()| std::fs::rename(&partial, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed.map_err(error)
}

fn dtype_name(dtype: FileDtype) -> &'static str {
    match dtype {
        FileDtype::F64 => "F64",
        FileDtype::F32 => "F32",
        FileDtype::F16 => "F16",
        FileDtype::BF16 => "BF16",
        _ => "other",
    }
}

/// Keys and shapes, from the model's type alone.
struct Names(Vec<(String, Vec<usize>)>);

impl<E: Element, D: Backend<E>> TensorVisitor<E, D> for Names {
    type Viewer = ViewTensorName;
    type Err = Never;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, D>,
        key: <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Never> {
        self.0.push((key, opts.shape.concrete().into_iter().collect()));
        Ok(None)
    }
}

/// One tensor's bytes, owned, for the safetensors writer.
struct Bytes {
    dtype: FileDtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for Bytes {
    fn dtype(&self) -> FileDtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Every tensor of a model as little-endian bytes of its own dtype.
struct Collect(Vec<(String, Bytes)>);

impl<E: Element + SafeDtype, D: Backend<E>> TensorVisitor<E, D> for Collect {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = Never;
    type E2 = E;
    type D2 = D;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, E, D>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, D>>,
    ) -> Result<Option<Tensor<S, E, D>>, Never> {
        let shape: Vec<usize> = t.shape().concrete().into_iter().collect();
        let data: Vec<u8> = t.as_vec().into_iter().flat_map(SafeDtype::to_le_bytes).collect();
        self.0.push((key, Bytes { dtype: E::safe_dtype(), shape, data }));
        Ok(None)
    }
}
