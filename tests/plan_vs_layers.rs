//! Compiled plans (one fused op per model, `residual_runtime::plan`) against the layer-by-layer
//! path (one dfdx op per layer, `with_plans_disabled`): outputs in eval and training mode, every
//! parameter's gradient and the input's, the batch-norm running statistics, and the losses of
//! five SGD steps, on ResNet-18 and ResNet-56 (zoo) and a small net with every plan op, in f32
//! and f64.
//!
//! Tolerances (of each tensor's largest magnitude): f64 agrees to 1e-9 (both paths compute the
//! same sums in other orders; batch statistics run in f64 on the plan's side). In f32 the two
//! paths round differently (GEMM blockings, batch-norm folding, f32 vs f64 statistics), and deep
//! nets amplify that in the first layers' gradients: outputs, losses and parameters agree to 2e-3,
//! gradients to 5e-2. `f32_plan_gradients_are_closer_to_f64_than_the_layers` shows the plan's
//! share of that is the smaller one.

use residual::dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorName, ViewTensorRef,
};
use residual::dfdx::optim::{Momentum, Sgd, SgdConfig};
use residual::dfdx::prelude::*;
use residual::residual;
use residual::runtime::plan::{fusion, with_plans_disabled};
use residual::zoo;

residual! {
    model Small[3, 12, 12] {
        stem: conv(8, 3, padding = 1, bias = true) -> bn0: bn -> relu -> maxpool(3, stride = 2, padding = 1)
        -> tap(s)
        -> residual { c1: conv(8, 3, padding = 1) -> b1: bn -> relu -> c2: conv(8, 3, padding = 1) -> b2: bn } -> relu
        -> add(s)
        -> residual { c3: conv(16, 3, stride = 2, padding = 1) -> b3: bn } shortcut auto -> relu
        -> residual { b4: bn -> relu -> c4: conv(24, 1) } shortcut pad
        -> avgpool(2, stride = 1) -> global_avgpool -> fc: linear(5)
    }
}

/// Every tensor's values (or gradient), by key.
struct Read<'g, E: Dtype> {
    grads: Option<&'g Gradients<E, Cpu>>,
    trainable_only: bool,
    out: Vec<(String, Vec<E>)>,
}

impl<E: Dtype> TensorVisitor<E, Cpu> for Read<'_, E>
where
    Cpu: Device<E>,
{
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = E;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        opts: TensorOptions<S, E, Cpu>,
        (t, key): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, E, Cpu>>,
    ) -> Result<Option<Tensor<S, E, Cpu>>, Self::Err> {
        if !self.trainable_only || opts.do_gradient_update {
            let v = match self.grads {
                Some(g) => g.get(t).as_vec(),
                None => t.as_vec(),
            };
            self.out.push((key, v));
        }
        Ok(None)
    }
}

fn read<E: Dtype, M: TensorCollection<E, Cpu>>(
    m: &M,
    grads: Option<&Gradients<E, Cpu>>,
    trainable_only: bool,
) -> Vec<(String, Vec<E>)>
where
    Cpu: Device<E>,
{
    let mut r = Read { grads, trainable_only, out: Vec::new() };
    let _ = M::iter_tensors(&mut RecursiveWalker { m: (m, String::new()), f: &mut r });
    r.out
}

/// `|a - b| <= tol * max(1, max |b|)` element-wise.
fn assert_close<E: Dtype + Into<f64>>(what: &str, a: &[E], b: &[E], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().map(|v| (*v).into().abs()).fold(1.0f64, f64::max);
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y): (f64, f64) = ((*x).into(), (*y).into());
        assert!((x - y).abs() <= tol * scale, "{what}[{i}]: plan {x} vs layers {y} (scale {scale}, tol {tol})");
    }
}

fn assert_all_close<E: Dtype + Into<f64>>(what: &str, a: &[(String, Vec<E>)], b: &[(String, Vec<E>)], tol: f64) {
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        assert_close(&format!("{what} {ka}"), va, vb, tol);
    }
}

/// Runs both paths on copies of one model: eval output, then five SGD steps (training-mode
/// forward, cross-entropy, backward) comparing outputs, losses, every gradient (parameters and
/// input) and, after each step, every tensor (parameters and running statistics).
macro_rules! compare {
    ($name:ident, $model:ty, $e:ty, $b:expr, [$($dim:expr),*], $classes:expr, $tol:expr, $gtol:expr, $exact_steps:expr, $ltol:expr) => {
        #[test]
        fn $name() {
            type E = $e;
            let dev = Cpu::seed_from_u64(7);
            let mut planned = dev.build_module::<$model, E>();
            let mut layered = planned.clone();
            let x: Tensor<Rank4<$b, $($dim),*>, E, Cpu> = dev.sample_normal();
            let labels: Tensor<Rank2<$b, $classes>, E, Cpu> = {
                let mut v = vec![0.0 as E; $b * $classes];
                for i in 0..$b {
                    v[i * $classes + (i * 7) % $classes] = 1.0;
                }
                dev.tensor(v)
            };

            // Eval before training (identity running stats) and after (below).
            let a = planned.forward(x.clone()).as_vec();
            let b = with_plans_disabled(|| layered.forward(x.clone())).as_vec();
            assert_close("eval output (fresh)", &a, &b, $tol);

            let cfg = SgdConfig { lr: 0.01, momentum: Some(Momentum::Classic(0.9)), weight_decay: None };
            let mut opt_p = Sgd::new(&planned, cfg);
            let mut opt_l = Sgd::new(&layered, cfg);
            let mut losses = (Vec::new(), Vec::new());
            for step in 0..5 {
                let gp = Gradients::leaky();
                let yp = planned.forward_mut(x.clone().trace(gp));
                let yl_all = with_plans_disabled(|| {
                    let gl = Gradients::leaky();
                    layered.forward_mut(x.clone().trace(gl))
                });
                let exact = step < $exact_steps;
                if exact {
                    assert_close(&format!("step {step} train output"), &yp.as_vec(), &yl_all.as_vec(), $tol);
                }
                let lp = cross_entropy_with_logits_loss(yp, labels.clone());
                let ll = cross_entropy_with_logits_loss(yl_all, labels.clone());
                losses.0.push(lp.array());
                losses.1.push(ll.array());
                let gp = lp.backward();
                let gl = with_plans_disabled(|| ll.backward());
                if exact {
                    assert_close(&format!("step {step} input gradient"), &gp.get(&x).as_vec(), &gl.get(&x).as_vec(), $gtol);
                    assert_all_close(
                        &format!("step {step} gradient"),
                        &read(&planned, Some(&gp), true),
                        &read(&layered, Some(&gl), true),
                        $gtol,
                    );
                }
                opt_p.update(&mut planned, &gp).expect("all parameters have gradients");
                opt_l.update(&mut layered, &gl).expect("all parameters have gradients");
                if exact {
                    assert_all_close(
                        &format!("after step {step}"),
                        &read(&planned, None, false),
                        &read(&layered, None, false),
                        $tol,
                    );
                    let a = planned.forward(x.clone()).as_vec();
                    let b = with_plans_disabled(|| layered.forward(x.clone())).as_vec();
                    assert_close(&format!("eval output after step {step}"), &a, &b, $tol);
                }
            }
            assert_close("losses", &losses.0, &losses.1, $ltol);
        }
    };
}

// f64: every check at every one of the five steps. f32: outputs, gradients, running statistics
// and parameters at the first step; afterwards the two f32 trajectories drift apart as any two
// f32 implementations do (f32_plan_gradients_are_closer_to_f64_than_the_layers measures whose
// rounding is the larger), so the five losses are compared at 2e-2.
compare!(small_f64, Small<f64, Cpu>, f64, 3, [3, 12, 12], 5, 1e-9, 1e-9, 5, 1e-9);
compare!(small_f32, Small<f32, Cpu>, f32, 3, [3, 12, 12], 5, 2e-3, 5e-2, 1, 2e-2);
compare!(resnet56_f64, zoo::ResNet56<f64, Cpu>, f64, 2, [3, 32, 32], 10, 1e-9, 1e-9, 5, 1e-9);
compare!(resnet56_f32, zoo::ResNet56<f32, Cpu>, f32, 4, [3, 32, 32], 10, 2e-3, 5e-2, 1, 2e-2);
compare!(resnet18_f32, zoo::ResNet18<f32, Cpu>, f32, 2, [3, 224, 224], 1000, 2e-3, 5e-2, 1, 2e-2);
compare!(resnet18_f64, zoo::ResNet18<f64, Cpu>, f64, 1, [3, 224, 224], 1000, 1e-9, 1e-9, 5, 1e-9);

/// Max over tensors of (max abs error / max abs reference).
fn rel_error(a: &[(String, Vec<f32>)], reference: &[(String, Vec<f64>)]) -> f64 {
    a.iter()
        .zip(reference)
        .map(|((_, va), (_, vr))| {
            let scale = vr.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
            va.iter().zip(vr).fold(0.0f64, |m, (x, y)| m.max((*x as f64 - y).abs())) / scale
        })
        .fold(0.0, f64::max)
}

#[test]
fn f32_plan_gradients_are_closer_to_f64_than_the_layers() {
    let dev = Cpu::seed_from_u64(3);
    let model = dev.build_module::<zoo::ResNet56<f32, Cpu>, f32>();
    let x: Tensor<Rank4<4, 3, 32, 32>, f32, Cpu> = dev.sample_normal();
    let labels: Tensor<Rank2<4, 10>, f32, Cpu> = dev.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]; 4]);
    let grads32 = |disabled: bool| {
        let mut m = model.clone();
        let mut run = || {
            let y = m.forward_mut(x.clone().traced(Gradients::leaky()));
            cross_entropy_with_logits_loss(y, labels.clone()).backward()
        };
        let g = if disabled { with_plans_disabled(run) } else { run() };
        read(&m, Some(&g), true)
    };
    let (g_plan, g_layers) = (grads32(false), grads32(true));
    let mut m64 = model.to_dtype::<f64>();
    let g64 = with_plans_disabled(|| {
        let y = m64.forward_mut(x.clone().to_dtype::<f64>().traced(Gradients::leaky()));
        cross_entropy_with_logits_loss(y, labels.clone().to_dtype::<f64>()).backward()
    });
    let reference = read(&m64, Some(&g64), true);
    let (plan, layers) = (rel_error(&g_plan, &reference), rel_error(&g_layers, &reference));
    eprintln!("f32 gradient error against f64: plan {plan:e}, layer by layer {layers:e}");
    assert!(plan < 2e-2, "plan f32 gradients are {plan:e} off f64");
    assert!(plan <= 1.5 * layers, "plan f32 error {plan:e} vs layer-by-layer f32 error {layers:e}");
}

#[test]
fn zoo_models_compile_to_fused_plans() {
    let r50 = fusion(&zoo::ResNet50::<f32, Cpu>::__RESIDUAL_PLAN).expect("valid plan");
    // 53 convs, each with its batch norm; 16 blocks whose last conv takes the add and relu.
    assert_eq!((r50.conv_bn, r50.conv_add), (53, 16), "{r50:?}");
    let r56 = fusion(&zoo::ResNet56::<f32, Cpu>::__RESIDUAL_PLAN).expect("valid plan");
    assert_eq!((r56.conv_bn, r56.conv_add), (55, 27), "{r56:?}");
    let s = fusion(&Small::<f32, Cpu>::__RESIDUAL_PLAN).expect("valid plan");
    assert!(s.nodes < s.steps, "{s:?}");
}

#[test]
fn an_empty_batch_gives_an_empty_output() {
    let dev = Cpu::default();
    let mut m = dev.build_module::<Small<f32, Cpu>, f32>();
    let x: Tensor<(usize, Const<3>, Const<12>, Const<12>), f32, Cpu> =
        dev.zeros_like(&(0usize, Const::<3>, Const::<12>, Const::<12>));
    assert_eq!(m.forward(x.clone()).shape().0, 0);
    assert_eq!(m.forward_mut(x).shape().0, 0);
    // A usize batch runs the plan like a Const one.
    let x: Tensor<(usize, Const<3>, Const<12>, Const<12>), f32, Cpu> =
        dev.sample_normal_like(&(2usize, Const::<3>, Const::<12>, Const::<12>));
    let a = m.forward(x.clone()).as_vec();
    let b = with_plans_disabled(|| m.forward(x)).as_vec();
    assert_close("usize batch", &a, &b, 2e-3);
}

#[test]
fn hand_built_plans_are_checked_not_trusted() {
    use residual::runtime::plan::{ConvGeom, ParamSpec, Plan, Step};
    let geom = ConvGeom { out_channels: 4, kernel: 3, stride: 1, padding: 1, dilation: 1, groups: 1 };
    let conv = Step::Conv { input: 0, output: 1, weight: 0, geom };
    let ok = Plan {
        values: &[[2, 5, 5], [4, 5, 5]],
        params: &[ParamSpec { len: 4 * 2 * 9, trainable: true }],
        steps: &[conv],
        output: 1,
    };
    assert!(fusion(&ok).is_ok());
    let cases: [(Plan, &str); 5] = [
        (Plan { values: &[[2, 5, 5], [4, 4, 4]], ..ok }, "conv output should be [4, 5, 5]"),
        (Plan { params: &[ParamSpec { len: 7, trainable: true }], ..ok }, "parameter 0 has 7 elements"),
        (Plan { output: 2, ..ok }, "output index is out of range"),
        (Plan { steps: &[conv, conv], ..ok }, "already written"),
        (
            Plan { values: &[[2, 5, 5], [4, 5, 5], [4, 5, 5]], steps: &[Step::Relu { input: 2, output: 1 }], ..ok },
            "before any step writes it",
        ),
    ];
    let bn = Step::BatchNorm { input: 1, output: 2, weight: 1, bias: 2, running_mean: 3, running_var: 4 };
    let (w, c) = (ParamSpec { len: 4 * 2 * 9, trainable: true }, ParamSpec { len: 4, trainable: true });
    let trainable_stats = Plan {
        values: &[[2, 5, 5], [4, 5, 5], [4, 5, 5]],
        params: &[w, c, c, c, ParamSpec { len: 4, trainable: false }],
        steps: &[conv, bn],
        output: 2,
    };
    let cases = cases.into_iter().chain([(trainable_stats, "must not be trainable")]);
    for (plan, words) in cases {
        let e = fusion(&plan).expect_err(words).to_string();
        assert!(e.contains(words), "`{e}` should say `{words}`");
    }
    // Running one with parameters that do not fit is an error, not a read out of bounds.
    let dev = Cpu::default();
    let wrong: Tensor<Rank1<7>, f32, Cpu> = dev.zeros();
    let mut params = residual::runtime::plan::Params::<f32, Cpu>::with_capacity(1);
    params.push(&wrong, true).unwrap();
    let x: Tensor<Rank4<1, 2, 5, 5>, f32, Cpu> = dev.zeros();
    let r = residual::runtime::plan::infer(&ok, &params, x, (Const::<1>, Const::<4>, Const::<5>, Const::<5>));
    assert!(r.is_err());
}

#[test]
fn plans_read_parameters_in_place() {
    use residual::runtime::plan::{Flat, PlanDevice};
    let dev = Cpu::default();
    let mut t: Tensor<Rank2<2, 3>, f32, Cpu> = dev.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]);
    let flat: Flat<f32, Cpu> = t.clone().reshape_like(&(6usize,));
    let view = <Cpu as PlanDevice<f32>>::host_view(&flat);
    assert_eq!(view, Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
    // Writing the model's tensor while a plan holds a handle copies the buffer first (dfdx's
    // copy-on-write): the handle keeps what it had.
    t.copy_from(&[0.0; 6]);
    assert_eq!(<Cpu as PlanDevice<f32>>::host_view(&flat), Some(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0][..]));
    assert_eq!(t.as_vec(), vec![0.0; 6]);
    // A tensor whose elements are not laid out one after another is not viewed.
    let broadcast: Flat<f32, Cpu> = dev.tensor(1.0f32).broadcast_like(&(4usize,));
    assert_eq!(<Cpu as PlanDevice<f32>>::host_view(&broadcast), None);
    let empty: Flat<f32, Cpu> = dev.zeros_like(&(0usize,));
    assert_eq!(<Cpu as PlanDevice<f32>>::host_view(&empty), Some(&[][..]));
}

/// Training steps run in CNHW up to `CNHW_TRAIN_MAX_BATCH` images and in NCHW above it (inference
/// always in CNHW): both layouts give the same step, in f64 to 1e-9 (the compare tests above
/// run the default, CNHW at their batch sizes).
#[test]
fn training_layouts_agree() {
    use residual::runtime::plan::CNHW_TRAIN_MAX_BATCH;
    let dev = Cpu::seed_from_u64(3);
    let model = dev.build_module::<Small<f64, Cpu>, f64>();
    let x: Tensor<Rank4<3, 3, 12, 12>, f64, Cpu> = dev.sample_normal();
    let step = |max_batch: usize| {
        let before = CNHW_TRAIN_MAX_BATCH.set(max_batch);
        let mut m = model.clone();
        let y = m.forward_mut(x.clone().trace(Gradients::leaky()));
        let out = y.as_vec();
        let g = (y.square()).sum().backward();
        CNHW_TRAIN_MAX_BATCH.set(before);
        (out, g.get(&x).as_vec(), read(&m, Some(&g), true), read(&m, None, false))
    };
    let (nchw, cnhw) = (step(1), step(usize::MAX));
    assert_close("output", &nchw.0, &cnhw.0, 1e-9);
    assert_close("input gradient", &nchw.1, &cnhw.1, 1e-9);
    assert_all_close("gradient", &nchw.2, &cnhw.2, 1e-9);
    assert_all_close("running statistics", &nchw.3, &cnhw.3, 1e-9);
}
