//! Loading and saving checkpoints: strict and non-strict loads, the messages a damaged file
//! gets (each asserted word for word where a user reads it), non-finite values, save errors.
//! Every failed load must leave the model bit-identical. The damaged files are made here from
//! `tests/fixtures/tiny_resnet.safetensors` (see `scripts/reference/torchvision_checkpoint.py`)
//! by a hand-written reader and writer (`common::RawFile`), not by the code under test.

mod common;

use std::path::Path;

use common::{fixture, modified_fixture, snapshot, temp, RawFile, TinyResNet, TinyResNetDeep, TinyResNetNewHead};
use residual::dfdx::prelude::*;
use residual::io::{
    load_safetensors, load_safetensors_with, save_safetensors, LoadError, LoadOptions, LoadReport, Problem,
};

fn built_model() -> TinyResNet<f32, Cpu> {
    Cpu::seed_from_u64(7).build_module::<TinyResNet<f32, Cpu>, f32>()
}

/// Loads `path` strictly into a fresh model, asserts it fails and the model is untouched, and
/// returns the message.
fn failed_load_message(path: &Path) -> String {
    let mut model = built_model();
    let before = snapshot(&model);
    let err = load_safetensors(&mut model, path).expect_err("must fail");
    assert_eq!(before, snapshot(&model), "a failed load changed the model ({err})");
    err.to_string()
}

fn write(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = temp(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture("tiny_resnet.safetensors")).expect("fixture")
}

/// The keys of one BasicBlock, as torchvision names them, hand-written.
fn block_keys(prefix: &str) -> Vec<String> {
    let mut keys = vec![format!("{prefix}.conv1.weight"), format!("{prefix}.conv2.weight")];
    for bn in ["bn1", "bn2"] {
        for p in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"] {
            keys.push(format!("{prefix}.{bn}.{p}"));
        }
    }
    keys
}

// ------------------------------------------------------------------ strict and non-strict

#[test]
fn strict_load_lists_every_key_the_model_lacks_and_non_strict_skips_them() {
    // A deeper model's checkpoint (ours, saved with num_batches_tracked) is a superset of the
    // shallow model's keys: the third block of every stage.
    let deep = Cpu::seed_from_u64(3).build_module::<TinyResNetDeep<f32, Cpu>, f32>();
    let path = temp("deep");
    save_safetensors(&deep, &path).expect("save");
    let mut extra: Vec<String> = (1..=4).flat_map(|l| block_keys(&format!("layer{l}.2"))).collect();
    extra.sort();
    assert_eq!(extra.len(), 48);

    let mut model = built_model();
    let before = snapshot(&model);
    let err = load_safetensors(&mut model, &path).expect_err("a superset must not load strictly");
    assert_eq!(before, snapshot(&model), "a failed load changed the model");
    match &err {
        LoadError::Mismatch { problems, .. } => {
            let expected: Vec<Problem> = extra.iter().map(|k| Problem::UnexpectedKey { key: k.clone() }).collect();
            assert_eq!(problems, &expected);
        }
        other => panic!("wrong error: {other}"),
    }
    let text = err.to_string();
    assert!(text.contains("does not fit the model (48 problems):"), "{text}");
    assert!(text.contains("\n  - unexpected key `layer1.2.bn1.bias`: the file has it, the model does not"), "{text}");
    assert!(text.contains("... and 18 more"), "only 30 problems are printed: {text}");
    assert!(text.contains("LoadOptions::non_strict()"), "the help names the way out: {text}");

    // Non-strict: loads the shared keys, reports the rest, and the values are the deep model's.
    let report = load_safetensors_with(&mut model, &path, LoadOptions::non_strict()).expect("non-strict load");
    let shallow_tensors = before.len();
    assert_eq!(report, LoadReport { loaded: shallow_tensors, skipped_keys: extra, missing_keys: vec![] });
    let deep_values: std::collections::BTreeMap<_, _> = snapshot(&deep).into_iter().collect();
    for (key, values) in snapshot(&model) {
        assert_eq!(values, deep_values[&key], "{key} was not loaded from the file");
    }
}

#[test]
fn a_new_head_loads_non_strictly_and_reports_both_sides() {
    let path = fixture("tiny_resnet.safetensors");
    let file = RawFile::read(&path);
    let dev = Cpu::seed_from_u64(11);
    let mut model = dev.build_module::<TinyResNetNewHead<f32, Cpu>, f32>();
    let before = snapshot(&model);

    let err = load_safetensors(&mut model, &path).expect_err("strict: both sides differ");
    match &err {
        LoadError::Mismatch { problems, .. } => assert_eq!(
            problems,
            &vec![
                Problem::MissingKey { key: "classifier.weight".into() },
                Problem::MissingKey { key: "classifier.bias".into() },
                Problem::UnexpectedKey { key: "fc.bias".into() },
                Problem::UnexpectedKey { key: "fc.weight".into() },
            ]
        ),
        other => panic!("wrong error: {other}"),
    }
    assert!(err.to_string().contains("missing key `classifier.weight`: the model has it, the file does not"), "{err}");
    assert_eq!(before, snapshot(&model));

    let report = load_safetensors_with(&mut model, &path, LoadOptions::non_strict()).expect("load");
    assert_eq!(report.skipped_keys, vec!["fc.bias".to_string(), "fc.weight".to_string()]);
    assert_eq!(report.missing_keys, vec!["classifier.weight".to_string(), "classifier.bias".to_string()]);
    assert_eq!(report.loaded, before.len() - 2);
    let untouched: std::collections::BTreeMap<_, _> = before.into_iter().collect();
    for (key, values) in snapshot(&model) {
        if key.starts_with("classifier.") {
            assert_eq!(values, untouched[&key], "{key}: a missing key must be left as it was");
        } else {
            assert_eq!(values, file.f32s(&key), "{key}: not the file's values");
        }
    }
}

#[test]
fn counters_are_ignored_only_beside_the_models_batch_norms() {
    // The fixture holds torchvision's I64 num_batches_tracked (= 7) for every batch norm: a
    // strict load accepts them (torchvision_compat checks the loaded values).
    let mut model = built_model();
    let report = load_safetensors_with(&mut model, fixture("tiny_resnet.safetensors"), LoadOptions::default())
        .expect("strict load of a torchvision file");
    assert_eq!(report.skipped_keys, Vec::<String>::new());
    assert_eq!(report.loaded, snapshot(&model).len());
    // A counter for a batch norm the model does not have is an unexpected key like any other.
    let path = modified_fixture("stray-counter", |t| {
        t.push(("layer9.bn1.num_batches_tracked".into(), ::safetensors::tensor::Dtype::I64, vec![], vec![0; 8]))
    });
    let text = failed_load_message(&path);
    assert!(text.contains("(1 problem):\n  - unexpected key `layer9.bn1.num_batches_tracked`"), "{text}");
}

#[test]
fn one_missing_key_is_one_problem_named() {
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
    assert_eq!(
        err.to_string().lines().take(2).collect::<Vec<_>>(),
        vec![
            format!("{} does not fit the model (1 problem):", path.display()).as_str(),
            "  - missing key `layer2.0.downsample.1.running_var`: the model has it, the file does not",
        ]
    );
    assert_eq!(before, snapshot(&model), "a failed load changed the model");
    // Non-strict, the same file loads and says what it did not find.
    let report = load_safetensors_with(&mut model, &path, LoadOptions::non_strict()).expect("load");
    assert_eq!(report.missing_keys, vec!["layer2.0.downsample.1.running_var".to_string()]);
}

#[test]
fn wrong_shape_and_wrong_dtype_are_named_in_either_mode() {
    let path = modified_fixture("shape-dtype", |t| {
        for (k, dtype, shape, _) in t.iter_mut() {
            if k == "fc.weight" {
                // [10, 32] -> [32, 10]: same byte count, wrong shape.
                *shape = vec![32, 10];
            }
            if k == "bn1.bias" {
                *dtype = ::safetensors::tensor::Dtype::I32; // same width as F32
            }
        }
    });
    for options in [LoadOptions::default(), LoadOptions::non_strict()] {
        let mut model = built_model();
        let before = snapshot(&model);
        let err = load_safetensors_with(&mut model, &path, options).expect_err("must fail");
        let text = err.to_string();
        assert!(text.contains("(2 problems):"), "{text}");
        assert!(text.contains("`fc.weight`: the model's shape is [10, 32], the file's is [32, 10]"), "{text}");
        assert!(text.contains("`bn1.bias`: dtype I32 is not supported (expected F32 or F64)"), "{text}");
        assert_eq!(before, snapshot(&model), "a failed load changed the model");
    }
}

// ------------------------------------------------------------------ damaged files, in words

#[test]
fn a_damaged_file_is_described_in_words_and_the_model_is_untouched() {
    let good = fixture_bytes();
    let raw = RawFile::read(&fixture("tiny_resnet.safetensors"));
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let total = good.len();
    let data_len = raw.data.len();
    assert_eq!(8 + n + data_len, total);
    // The tensor whose data holds the file's last byte: a truncation cuts it first.
    let offsets = |key: &str| {
        let o = &raw.header[key]["data_offsets"];
        (o[0].as_u64().unwrap() as usize, o[1].as_u64().unwrap() as usize)
    };
    let last = raw.layout().keys().find(|k| offsets(k).1 == data_len).cloned().expect("a last tensor");

    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut r = RawFile::read(&fixture("tiny_resnet.safetensors"));
        edit(&mut r.header);
        r.bytes()
    };
    let (s, e) = offsets("layer3.0.conv1.weight");
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        ("empty", vec![], "the file is empty".into()),
        (
            "five-bytes",
            good[..5].to_vec(),
            "the file is truncated: it has 5 bytes, fewer than the 8-byte header length a safetensors file starts with"
                .into(),
        ),
        (
            "cut-in-header",
            good[..8 + 100].to_vec(),
            format!("the file is truncated: its first 8 bytes say a {n}-byte header follows, the file has 100 bytes after them"),
        ),
        (
            "cut-in-data",
            good[..total - 1000].to_vec(),
            format!(
                "the file is truncated: its header says the file is {total} bytes long, the file has {} (the data of \
                 tensor `{last}` onwards is missing)",
                total - 1000
            ),
        ),
        (
            "garbage",
            b"\xff\x00 this is not a safetensors file \x13\x37".to_vec(),
            "this is not a safetensors file: its first 8 bytes give a header length of".into(),
        ),
        (
            "header-not-json",
            [&good[..8], &vec![b'x'; n][..], &good[8 + n..]].concat(),
            "the header is not JSON: expected value at line 1 column 1".into(),
        ),
        (
            "header-not-utf8",
            [&good[..8], &vec![0xc3; n][..], &good[8 + n..]].concat(),
            "the header is not JSON: it is not UTF-8 text (invalid byte at header offset 0)".into(),
        ),
        (
            "header-a-list",
            {
                let mut r = RawFile::read(&fixture("tiny_resnet.safetensors"));
                r.header = serde_json::json!([1, 2]);
                r.bytes()
            },
            "the header is JSON but not a safetensors header: it is not an object of tensors".into(),
        ),
        (
            "offset-out-of-file",
            edited(&|h| h["layer3.0.conv1.weight"]["data_offsets"] = serde_json::json!([data_len + 64, data_len + 64 + (e - s)])),
            format!(
                "tensor `layer3.0.conv1.weight`'s data range {}..{} is out of the file (its data section has {data_len} \
                 bytes): the header is damaged",
                data_len + 64,
                data_len + 64 + (e - s)
            ),
        ),
        (
            // Moved onto its neighbour's bytes: the overlap names both, the hole it left is not
            // reported first.
            "offset-overlaps",
            edited(&|h| {
                let a = h["layer3.0.conv2.weight"]["data_offsets"][0].as_u64().unwrap();
                h["layer3.0.conv1.weight"]["data_offsets"] = serde_json::json!([a, a + (e - s) as u64]);
            }),
            format!(
                "tensor `layer3.0.conv2.weight`'s data range {}..{} overlaps tensor `layer3.0.conv1.weight`'s",
                offsets("layer3.0.conv2.weight").0,
                offsets("layer3.0.conv2.weight").1
            ),
        ),
        (
            "offset-hole",
            edited(&|h| {
                h["fc.bias"]["data_offsets"] = serde_json::json!([0, 0]);
                h["fc.bias"]["shape"] = serde_json::json!([0]);
            }),
            {
                let (s, e) = offsets("fc.bias");
                format!("bytes {s}..{e} of the data section belong to no tensor (between tensor `")
            },
        ),
        (
            "size-disagrees",
            edited(&|h| h["conv1.weight"]["shape"] = serde_json::json!([4, 3, 7, 6])),
            {
                let (s, e) = offsets("conv1.weight");
                format!("tensor `conv1.weight`: shape [4, 3, 7, 6] of F32 needs 2016 bytes, its data range {s}..{e} holds 2352")
            },
        ),
        (
            "unknown-dtype",
            edited(&|h| h["fc.bias"]["dtype"] = serde_json::json!("F8")),
            "the header's entry for tensor `fc.bias` has an unknown dtype `F8`".into(),
        ),
        (
            "no-offsets",
            edited(&|h| {
                h["fc.bias"].as_object_mut().unwrap().remove("data_offsets");
            }),
            "the header's entry for tensor `fc.bias` has no `data_offsets` pair".into(),
        ),
        (
            "trailing-bytes",
            [&good[..], &[0u8; 16][..]].concat(),
            "the file has 16 bytes after the last tensor's data that its header does not describe".into(),
        ),
    ];
    for (name, bytes, words) in &cases {
        let path = write(name, bytes);
        let text = failed_load_message(&path);
        let expected_prefix = format!("cannot load {}: ", path.display());
        assert!(text.starts_with(&expected_prefix), "{name}: the message names the file: {text}");
        assert!(text.contains(words.as_str()), "{name}:\n  got      {text}\n  expected {words}");
        std::fs::remove_file(&path).ok();
    }

    let missing = temp("no-such-file");
    let text = failed_load_message(&missing);
    assert!(
        text.starts_with(&format!("cannot read {}: ", missing.display())) && text.contains("No such file"),
        "{text}"
    );
}

#[test]
fn every_truncation_and_header_byte_flip_is_an_error_not_a_panic() {
    let good = fixture_bytes();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let mut model = built_model();
    let before = snapshot(&model);
    let path = temp("cuts");
    let mut cuts: Vec<usize> = (0..=64).collect();
    cuts.extend((1..48).map(|i| i * good.len() / 48));
    for cut in cuts {
        std::fs::write(&path, &good[..cut]).unwrap();
        let err = load_safetensors(&mut model, &path).expect_err("a truncated file must not load");
        assert!(matches!(err, LoadError::Format { .. }), "cut at {cut}: {err}");
        assert!(err.to_string().contains("truncated") || cut == 0, "cut at {cut}: {err}");
    }
    // Flip bits in the length and across the header: whatever the damage, an `Err` or (when the
    // flip leaves a valid file that fits) an `Ok`, never a panic, and an `Err` changes nothing.
    for at in (0..8).chain((8..8 + n).step_by(41)) {
        let mut bytes = good.clone();
        bytes[at] ^= 0x21;
        std::fs::write(&path, &bytes).unwrap();
        if load_safetensors(&mut model, &path).is_err() {
            assert_eq!(before, snapshot(&model), "flip at byte {at} changed the model");
        } else {
            model = built_model();
        }
    }
    std::fs::remove_file(&path).ok();
}

// ------------------------------------------------------------------ non-finite values

#[test]
fn non_finite_values_are_refused_by_name_unless_allowed() {
    let path = modified_fixture("nan", |t| {
        for (k, _, _, data) in t.iter_mut() {
            if k == "layer2.1.bn2.running_var" {
                data[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
                data[20..24].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
            }
        }
    });
    let text = failed_load_message(&path);
    assert!(
        text.contains(
            "(1 problem):\n  - `layer2.1.bn2.running_var`: 2 of its 8 values are NaN or infinite (the first at index 3)"
        ),
        "{text}"
    );
    assert!(text.contains("allow_non_finite: true"), "{text}");

    let mut model = built_model();
    let options = LoadOptions { allow_non_finite: true, ..LoadOptions::default() };
    load_safetensors_with(&mut model, &path, options).expect("allowed");
    let values = model.layer2_1_bn2.running_var.as_vec();
    assert!(values[3].is_nan() && values[5] == f32::NEG_INFINITY && values[0].is_finite(), "{values:?}");
}

#[test]
fn an_f64_value_beyond_f32_range_is_non_finite_in_an_f32_model_only() {
    let path = modified_fixture("huge", |t| {
        for (k, dtype, _, data) in t.iter_mut() {
            if k == "fc.bias" {
                *dtype = ::safetensors::tensor::Dtype::F64;
                let mut wide: Vec<f64> =
                    data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect();
                wide[9] = 1e300;
                *data = wide.iter().flat_map(|v| v.to_le_bytes()).collect();
            }
        }
    });
    let text = failed_load_message(&path);
    assert!(text.contains("`fc.bias`: 1 of its 10 values is NaN or infinite (the first at index 9)"), "{text}");
    let mut wide = Cpu::default().build_module::<TinyResNet<f64, Cpu>, f64>();
    load_safetensors(&mut wide, &path).expect("1e300 is finite in f64");
    assert_eq!(wide.fc.bias.as_vec()[9], 1e300);
}

// ------------------------------------------------------------------ saving

#[test]
fn save_then_load_round_trips_a_zoo_model_with_counters() {
    let a = Cpu::seed_from_u64(1).build_module::<residual::zoo::ResNet20<f32, Cpu>, f32>();
    let mut b = Cpu::seed_from_u64(2).build_module::<residual::zoo::ResNet20<f32, Cpu>, f32>();
    assert_ne!(snapshot(&a), snapshot(&b));
    let path = temp("roundtrip");
    save_safetensors(&a, &path).expect("save");
    load_safetensors(&mut b, &path).expect("strict load of our own file");
    assert_eq!(snapshot(&a), snapshot(&b));

    // What is in the file, read by hand: every tensor in F32 plus an I64 zero per batch norm.
    let raw = RawFile::read(&path);
    let layout = raw.layout();
    let counters: Vec<_> = layout.keys().filter(|k| k.ends_with(".num_batches_tracked")).collect();
    let batch_norms = layout.keys().filter(|k| k.ends_with(".running_mean")).count();
    assert_eq!(counters.len(), batch_norms);
    assert_eq!(batch_norms, 19); // the stem's and two per block, 9 blocks
    for k in counters {
        assert_eq!(layout[k], ("I64".to_string(), vec![]), "{k}");
        assert_eq!(raw.tensor_bytes(k), &[0u8; 8], "{k}");
    }
    assert_eq!(layout.len(), snapshot(&a).len() + batch_norms);
    assert_eq!(raw.f32s("conv1.weight"), a.conv1.weight.as_vec());
    std::fs::remove_file(&path).ok();
}

#[test]
fn an_f64_model_is_saved_as_f64_with_i64_counters() {
    let m = Cpu::seed_from_u64(5).build_module::<TinyResNet<f64, Cpu>, f64>();
    let path = temp("f64");
    save_safetensors(&m, &path).expect("save");
    let layout = RawFile::read(&path).layout();
    assert_eq!(layout.keys().filter(|k| k.ends_with(".num_batches_tracked")).count(), 20, "one per batch norm");
    for (k, (dtype, _)) in &layout {
        let expected = if k.ends_with("num_batches_tracked") { "I64" } else { "F64" };
        assert_eq!(dtype, expected, "{k}");
    }
    let mut back = Cpu::default().build_module::<TinyResNet<f64, Cpu>, f64>();
    load_safetensors(&mut back, &path).expect("load");
    assert_eq!(snapshot(&m), snapshot(&back));
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_write_failure_is_a_save_error_naming_the_path_and_keeps_the_old_file() {
    let model = built_model();
    let path = std::env::temp_dir().join(format!("residual-no-such-dir-{}", std::process::id())).join("m.safetensors");
    let err = save_safetensors(&model, &path).expect_err("no such directory");
    assert_eq!(err.path, path);
    let text = err.to_string();
    assert!(text.starts_with(&format!("cannot write {}: ", path.display())), "{text}");
    assert!(text.contains("No such file or directory"), "{text}");

    // Saving onto a directory: the rename fails; nothing is left behind and the directory stays.
    let dir = std::env::temp_dir().join(format!("residual-test-{}-a-dir", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = save_safetensors(&model, &dir).expect_err("a directory is not a file");
    assert!(err.to_string().starts_with(&format!("cannot write {}: ", dir.display())), "{err}");
    assert!(dir.is_dir());
    let partial = format!("{}.partial", dir.display());
    assert!(!Path::new(&partial).exists(), "the temporary file was left behind");
    std::fs::remove_dir(&dir).ok();

    // A successful save replaces an old file.
    let path = temp("replace");
    std::fs::write(&path, b"old").unwrap();
    save_safetensors(&model, &path).expect("save");
    let mut back = built_model();
    load_safetensors(&mut back, &path).expect("load");
    std::fs::remove_file(&path).ok();
}
