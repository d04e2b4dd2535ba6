//! The CUDA kernels against the CPU ones: every op (forward, input and weight gradients) and
//! whole models (forward, input gradient, one SGD step), f32 and f64.
//!
//! Run on a GPU machine: `cargo test --release --features cuda --test cuda` (or the prebuilt
//! bundle, `scripts/cuda/build.sh`). Without a GPU each test prints why and passes.
//!
//! Tolerances: f64 `1e-10` relative (both sides sum in a different order, nothing else differs);
//! f32 `2e-4` relative to the reference's largest magnitude for single ops; whole networks and
//! an SGD step in f64 to `1e-9`, in f32 to `2e-3` or twice the spread between the CPU's own two
//! paths (plan and layers), whichever is larger (see `check_model`). Pooling and the shortcut are
//! exact on both devices (same arithmetic, same order), so they are compared with tolerance 0.
#![cfg(feature = "cuda")]

use residual::dfdx::optim::{Momentum, Sgd, SgdConfig};
use residual::dfdx::prelude::*;
use residual::runtime::conv::{try_conv2d_nchw, Conv2dConfig};
use residual::runtime::pool::{try_avg_pool2d, try_max_pool2d, Pool2dConfig};
use residual::runtime::shortcut::try_subsample_pad;
use residual::{Backend, Element};

type Dims = (usize, usize, usize, usize);

/// The GPU, or `None` (with the reason printed) on a machine without one. cudarc 0.9 panics
/// inside `CudaDevice::new` when the driver has no device, so the panic is caught too.
fn gpu() -> Option<Cuda> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let built = std::panic::catch_unwind(|| Cuda::try_build(0, 0));
    std::panic::set_hook(prev);
    match built {
        Ok(Ok(dev)) => Some(dev),
        Ok(Err(e)) => {
            eprintln!("skipped: no CUDA device ({e:?})");
            None
        }
        Err(_) => {
            eprintln!("skipped: no CUDA device (the driver failed to initialise)");
            None
        }
    }
}

/// Deterministic values in [-1, 1) (a small LCG), the same on every run and device.
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

fn cast<E: Element>(v: &[f64]) -> Vec<E> {
    v.iter().map(|&x| E::from(x).unwrap()).collect()
}

/// `max |a - b| <= rtol * max(1, max |b|)`, with a message naming the first offending index.
fn assert_close<E: Element>(what: &str, got: &[E], want: &[E], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let scale = scale_of(want);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.to_f64().unwrap(), w.to_f64().unwrap());
        let ok = (g - w).abs() <= rtol * scale || (g.is_nan() && w.is_nan());
        assert!(ok, "{what}: element {i}: cuda {g} vs cpu {w} (tolerance {rtol} x {scale})");
    }
}

/// `max(1, max |want|)`: what both comparisons divide by.
fn scale_of<E: Element>(want: &[E]) -> f64 {
    want.iter().fold(1.0f64, |m, v| m.max(v.to_f64().unwrap().abs()))
}

/// One op under test.
#[derive(Clone, Copy)]
enum Op {
    Conv(Conv2dConfig),
    MaxPool(Pool2dConfig),
    AvgPool(Pool2dConfig),
    /// `(out_channels, stride)`
    SubsamplePad(usize, usize),
}

/// Runs `op` on `x` (with `weight` for a conv), backpropagates `sum(op(x) * r)` for a fixed `r`,
/// and returns `(output, grad of x, grad of weight)` on the host.
fn run_op<E: Element, D: Backend<E>>(
    dev: &D,
    op: Op,
    x: &[f64],
    dims: Dims,
    weight: Option<(&[f64], Dims)>,
) -> [Vec<E>; 3] {
    let xt = dev.tensor_from_vec(cast::<E>(x), dims);
    let wt = weight.map(|(w, wd)| dev.tensor_from_vec(cast::<E>(w), wd));
    let xs = xt.leaky_trace();
    let y: Tensor<Dims, E, D, OwnedTape<E, D>> = match op {
        Op::Conv(cfg) => try_conv2d_nchw(xs, wt.clone().expect("a conv needs a weight"), cfg).unwrap(),
        Op::MaxPool(cfg) => try_max_pool2d(xs, cfg).unwrap(),
        Op::AvgPool(cfg) => try_avg_pool2d(xs, cfg).unwrap(),
        Op::SubsamplePad(out, stride) => try_subsample_pad(xs, out, stride).unwrap(),
    };
    let n = y.shape().num_elements();
    let r = dev.tensor_from_vec(cast::<E>(&values(n, 99)), *y.shape());
    let out = y.retaped::<NoneTape>().as_vec();
    let grads = (y * r).sum().backward();
    let gx = grads.get(&xt).as_vec();
    let gw = wt.map(|w| grads.get(&w).as_vec()).unwrap_or_default();
    [out, gx, gw]
}

/// Runs `op` on both devices and compares every result.
fn compare<E: Element>(gpu: &Cuda, what: &str, op: Op, x: &[f64], dims: Dims, weight: Option<(&[f64], Dims)>, rtol: f64)
where
    Cpu: Backend<E>,
    Cuda: Backend<E>,
{
    let want = run_op::<E, Cpu>(&Cpu::default(), op, x, dims, weight);
    let got = run_op::<E, Cuda>(gpu, op, x, dims, weight);
    let ty = std::any::type_name::<E>();
    for (k, part) in ["output", "grad input", "grad weight"].iter().enumerate() {
        assert_close(&format!("{what} ({ty}): {part}"), &got[k], &want[k], rtol);
    }
}

struct ConvCase {
    name: &'static str,
    x: Dims,
    out: usize,
    cfg: Conv2dConfig,
}

fn conv_cases() -> Vec<ConvCase> {
    let c = Conv2dConfig::new;
    vec![
        ConvCase { name: "3x3 s1 p1", x: (2, 4, 9, 7), out: 6, cfg: c(3).padding(1) },
        ConvCase { name: "1x1", x: (3, 8, 5, 5), out: 4, cfg: c(1) },
        ConvCase { name: "1x1 stride 2", x: (2, 8, 7, 6), out: 5, cfg: c(1).stride(2) },
        ConvCase { name: "7x7 s2 p3 (stem)", x: (2, 3, 20, 18), out: 8, cfg: c(7).stride(2).padding(3) },
        ConvCase { name: "3x3 dilation 2", x: (2, 3, 11, 10), out: 4, cfg: c(3).dilation(2).padding(2) },
        ConvCase { name: "3x3 groups 2 stride 2", x: (2, 6, 9, 9), out: 4, cfg: c(3).groups(2).stride(2).padding(1) },
        ConvCase { name: "depthwise 3x3", x: (2, 5, 6, 8), out: 5, cfg: c(3).groups(5).padding(1) },
        ConvCase { name: "4x4 s3 p2 uneven", x: (1, 2, 10, 13), out: 3, cfg: c(4).stride(3).padding(2) },
    ]
}

fn check_convs<E: Element>(gpu: &Cuda, rtol: f64)
where
    Cpu: Backend<E>,
    Cuda: Backend<E>,
{
    for (i, case) in conv_cases().iter().enumerate() {
        let (b, c, h, w) = case.x;
        let wd = (case.out, c / case.cfg.groups, case.cfg.kernel, case.cfg.kernel);
        let x = values(b * c * h * w, 2 * i as u64);
        let wv = values(wd.0 * wd.1 * wd.2 * wd.3, 2 * i as u64 + 1);
        compare::<E>(gpu, &format!("conv {}", case.name), Op::Conv(case.cfg), &x, case.x, Some((&wv, wd)), rtol);
    }
}

#[test]
fn conv2d_matches_cpu_f32() {
    let Some(gpu) = gpu() else { return };
    check_convs::<f32>(&gpu, 2e-4);
}

#[test]
fn conv2d_matches_cpu_f64() {
    let Some(gpu) = gpu() else { return };
    check_convs::<f64>(&gpu, 1e-10);
}

/// A conv large enough to be split into several chunks of images (the scratch-size limit).
#[test]
fn conv2d_large_batch_is_chunked_correctly() {
    let Some(gpu) = gpu() else { return };
    let dims = (40, 64, 56, 56);
    let wd = (64, 64, 3, 3);
    let x = values(dims.0 * dims.1 * dims.2 * dims.3, 7);
    let w = values(64 * 64 * 9, 8);
    let op = Op::Conv(Conv2dConfig::new(3).padding(1));
    compare::<f32>(&gpu, "chunked conv", op, &x, dims, Some((&w, wd)), 2e-4);
}

fn check_pools<E: Element>(gpu: &Cuda)
where
    Cpu: Backend<E>,
    Cuda: Backend<E>,
{
    let cases = [
        ((2, 3, 9, 9), Pool2dConfig { kernel: 3, stride: 2, padding: 1 }),
        ((1, 2, 8, 6), Pool2dConfig::new(2)),
        ((2, 2, 7, 10), Pool2dConfig { kernel: 3, stride: 1, padding: 1 }),
        ((1, 4, 11, 5), Pool2dConfig { kernel: 5, stride: 3, padding: 2 }),
    ];
    for (i, (dims, cfg)) in cases.into_iter().enumerate() {
        let (b, c, h, w) = dims;
        let mut x = values(b * c * h * w, 40 + i as u64);
        // Ties: the gradient must go to the same (first) maximum on both devices.
        for v in x.iter_mut().step_by(3) {
            *v = 0.5;
        }
        compare::<E>(gpu, &format!("max pool {i}"), Op::MaxPool(cfg), &x, dims, None, 0.0);
        compare::<E>(gpu, &format!("avg pool {i}"), Op::AvgPool(cfg), &x, dims, None, 0.0);
    }
}

#[test]
fn pools_match_cpu() {
    let Some(gpu) = gpu() else { return };
    check_pools::<f32>(&gpu);
    check_pools::<f64>(&gpu);
}

#[test]
fn subsample_pad_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    let cases = [((2, 4, 8, 8), 8, 2), ((1, 3, 7, 5), 7, 2), ((2, 5, 6, 6), 5, 1)];
    for (i, (dims, out, stride)) in cases.into_iter().enumerate() {
        let (b, c, h, w) = dims;
        let x = values(b * c * h * w, 60 + i as u64);
        compare::<f32>(&gpu, &format!("subsample pad {i}"), Op::SubsamplePad(out, stride), &x, dims, None, 0.0);
        compare::<f64>(&gpu, &format!("subsample pad {i}"), Op::SubsamplePad(out, stride), &x, dims, None, 0.0);
    }
}

/// Builds `M` on the CPU, copies its parameters and buffers to the GPU (safetensors round trip),
/// and compares: the training-mode forward, the input gradient, and the forward after one SGD
/// step with momentum (which every parameter's gradient feeds).
///
/// The tolerance is `rtol` or, where the CPU's own two paths differ by more, twice that spread:
/// the CPU runs each model as a compiled plan (batch norm fused, its own GEMM blocking) and, as
/// the reference path, layer by layer; in f32 the two drift apart through deep batch-normalised
/// networks (tests/plan_vs_layers.rs), so the GPU may be as far from the plan as the layer path
/// is, and no further. Every quantity is printed before any assertion fails.
fn check_model<E, MC, MG, const C: usize, const H: usize, const W: usize, const OUT: usize>(
    gpu: &Cuda,
    batch: usize,
    rtol: f64,
) where
    E: Element + residual::dfdx::tensor::safetensors::SafeDtype,
    Cpu: Backend<E>,
    Cuda: Backend<E>,
    MC: BuildOnDevice<Cpu, E>,
    MG: BuildOnDevice<Cuda, E>,
    MC::Built: ModuleMut<
            Tensor<(usize, Const<C>, Const<H>, Const<W>), E, Cpu, OwnedTape<E, Cpu>>,
            Output = Tensor<(usize, Const<OUT>), E, Cpu, OwnedTape<E, Cpu>>,
        > + TensorCollection<E, Cpu>
        + SaveToSafetensors<E, Cpu>
        + LoadFromSafetensors<E, Cpu>,
    MG::Built: ModuleMut<
            Tensor<(usize, Const<C>, Const<H>, Const<W>), E, Cuda, OwnedTape<E, Cuda>>,
            Output = Tensor<(usize, Const<OUT>), E, Cuda, OwnedTape<E, Cuda>>,
        > + TensorCollection<E, Cuda>
        + LoadFromSafetensors<E, Cuda>,
{
    let cpu = Cpu::seed_from_u64(0);
    let mut cpu_model = cpu.build_module::<MC, E>();
    let mut layered_model = cpu.build_module::<MC, E>();
    let mut gpu_model = gpu.build_module::<MG, E>();
    let path = std::env::temp_dir().join(format!("residual-cuda-test-{}-{OUT}.safetensors", std::process::id()));
    cpu_model.save_safetensors(&path).expect("save");
    layered_model.load_safetensors(&path).expect("load");
    gpu_model.load_safetensors(&path).expect("load");
    let _ = std::fs::remove_file(&path);

    let shape = (batch, Const::<C>, Const::<H>, Const::<W>);
    let x = values(batch * C * H * W, 5);
    let labels = values(batch * OUT, 6).iter().map(|v| if *v > 0.9 { 1.0 } else { 0.0 }).collect::<Vec<f64>>();
    let sgd = SgdConfig {
        lr: 0.01,
        momentum: Some(Momentum::Classic(0.9)),
        weight_decay: Some(residual::dfdx::optim::WeightDecay::L2(1e-4)),
    };

    // CPU, plan and layers. Leaky gradients: `alloc_grads` would keep only the parameters'
    // gradients after `backward`, and the input's is compared too.
    let xc = cpu.tensor_from_vec(cast::<E>(&x), shape);
    let yc = cpu.tensor_from_vec(cast::<E>(&labels), (batch, Const::<OUT>));
    let cpu_step = |model: &mut MC::Built| {
        let logits = model.forward_mut(xc.clone().trace(Gradients::leaky()));
        let out = logits.retaped::<NoneTape>().as_vec();
        let grads = cross_entropy_with_logits_loss(logits, yc.clone()).backward();
        let gx = grads.get(&xc).as_vec();
        Sgd::new(model, sgd).update(model, &grads).expect("sgd");
        let after = model.forward_mut(xc.leaky_trace()).retaped::<NoneTape>().as_vec();
        [out, gx, after]
    };
    let plan = cpu_step(&mut cpu_model);
    let layers = residual::runtime::plan::with_plans_disabled(|| cpu_step(&mut layered_model));

    // GPU.
    let xg = gpu.tensor_from_vec(cast::<E>(&x), shape);
    let yg = gpu.tensor_from_vec(cast::<E>(&labels), (batch, Const::<OUT>));
    let logits = gpu_model.forward_mut(xg.trace(Gradients::leaky()));
    let gpu_logits = logits.retaped::<NoneTape>().as_vec();
    let grads = cross_entropy_with_logits_loss(logits, yg).backward();
    let gpu_gx = grads.get(&xg).as_vec();
    Sgd::new(&gpu_model, sgd).update(&mut gpu_model, &grads).expect("sgd");
    let gpu_after = gpu_model.forward_mut(xg.leaky_trace()).retaped::<NoneTape>().as_vec();
    let cuda = [gpu_logits, gpu_gx, gpu_after];

    let mut failed = Vec::new();
    for (i, what) in ["logits", "input gradient", "logits after one SGD step"].into_iter().enumerate() {
        let err = max_rel_err(&cuda[i], &plan[i]);
        let spread = max_rel_err(&layers[i], &plan[i]);
        let tol = rtol.max(2.0 * spread);
        eprintln!(
            "model {}: {what}: |cuda - cpu plan| {err:.2e}, |cpu layers - cpu plan| {spread:.2e} (relative to max(1, max |cpu plan|)); tolerance {tol:.1e}",
            std::any::type_name::<E>()
        );
        if err > tol || err.is_nan() {
            failed.push(what);
        }
    }
    assert!(failed.is_empty(), "model: {failed:?} out of tolerance (figures above)");
}

/// `max |got - want| / max(1, max |want|)`.
fn max_rel_err<E: Element>(got: &[E], want: &[E]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths differ");
    let scale = scale_of(want);
    got.iter().zip(want).fold(0.0f64, |m, (g, w)| m.max((g.to_f64().unwrap() - w.to_f64().unwrap()).abs() / scale))
}

/// ResNet-20 (CIFAR, option-A shortcuts): conv, batch norm, the shortcut, global pooling. f64
/// first: both devices do the same arithmetic in different summation orders, so they agree to
/// rounding.
#[test]
fn resnet20_step_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    check_model::<f64, residual::zoo::ResNet20<f64, Cpu>, residual::zoo::ResNet20<f64, Cuda>, 3, 32, 32, 10>(
        &gpu, 4, 1e-9,
    );
    check_model::<f32, residual::zoo::ResNet20<f32, Cpu>, residual::zoo::ResNet20<f32, Cuda>, 3, 32, 32, 10>(
        &gpu, 4, 2e-3,
    );
}

/// ResNet-50 at 224x224 (7x7 stem, max pool, bottlenecks with 1x1 convs and projections), at
/// batch 2: the last stage's batch norms see 98 values a channel, which amplifies f32 rounding
/// (on an H200 the input gradient differed from the CPU plan's by 4e-2 of its largest magnitude).
#[test]
fn resnet50_step_matches_cpu() {
    let Some(gpu) = gpu() else { return };
    check_model::<f64, residual::zoo::ResNet50<f64, Cpu>, residual::zoo::ResNet50<f64, Cuda>, 3, 224, 224, 1000>(
        &gpu, 2, 1e-9,
    );
    check_model::<f32, residual::zoo::ResNet50<f32, Cpu>, residual::zoo::ResNet50<f32, Cuda>, 3, 224, 224, 1000>(
        &gpu, 2, 2e-3,
    );
}
