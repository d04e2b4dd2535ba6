//! conv2d against two independent references: a naive f64 loop written here, and numpy values
//! from `scripts/reference/conv_fixtures.py` (fixtures/conv2d.txt). Gradients are taken through
//! dfdx's tape (`loss.backward()`), for the loss `L = sum(conv(x, w)^2)`.

use dfdx::optim::{Optimizer, Sgd, SgdConfig};
use dfdx::prelude::*;

use super::*;
use crate::init::{ConvInit, KaimingNormalFanOut, TorchDefaultInit};
use crate::layers::{Bias2d, Conv2d};
use crate::real::Real;
use crate::Element;

/// One conv configuration and its dims.
#[derive(Clone, Copy, Debug)]
struct Case {
    batched: bool,
    b: usize,
    c: usize,
    o: usize,
    h: usize,
    w: usize,
    cfg: Conv2dConfig,
}

impl Case {
    fn op(&self) -> Conv2dOp {
        Conv2dOp::new(self.cfg, self.b, self.c, self.o, self.h, self.w).expect("valid test case")
    }
    fn x_len(&self) -> usize {
        self.b * self.c * self.h * self.w
    }
    fn w_len(&self) -> usize {
        self.o * (self.c / self.cfg.groups) * self.cfg.kernel * self.cfg.kernel
    }
    /// The fixture script's input formulas.
    fn x(&self) -> Vec<f64> {
        (0..self.x_len()).map(|i| (0.37 * i as f64 + 0.1).sin()).collect()
    }
    fn weight(&self) -> Vec<f64> {
        (0..self.w_len()).map(|i| 0.5 * (0.23 * i as f64 + 0.2).cos()).collect()
    }
}

/// Reference values for one case: `y`, `dL/dx`, `dL/dw` with `L = sum(y^2)`.
struct Expected {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

/// Direct definition of the conv: every output element summed tap by tap, in f64.
fn naive_forward(case: &Case, x: &[f64], w: &[f64]) -> Vec<f64> {
    let op = case.op();
    let (cg, og, k) = (case.c / op.groups, case.o / op.groups, op.kernel);
    let mut y = vec![0.0; op.batch * op.out_channels * op.out_h * op.out_w];
    for b in 0..op.batch {
        for o in 0..case.o {
            let g = o / og;
            for oy in 0..op.out_h {
                for ox in 0..op.out_w {
                    let mut acc = 0.0;
                    for ci in 0..cg {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * op.stride + ky * op.dilation) as isize - op.padding as isize;
                                let ix = (ox * op.stride + kx * op.dilation) as isize - op.padding as isize;
                                if iy < 0 || ix < 0 || iy >= case.h as isize || ix >= case.w as isize {
                                    continue;
                                }
                                let c = g * cg + ci;
                                let xv = x[((b * case.c + c) * case.h + iy as usize) * case.w + ix as usize];
                                acc += xv * w[((o * cg + ci) * k + ky) * k + kx];
                            }
                        }
                    }
                    y[((b * case.o + o) * op.out_h + oy) * op.out_w + ox] = acc;
                }
            }
        }
    }
    y
}

/// Gradients of `sum(y^2)` by the chain rule over the same loop: each tap's contribution
/// `x * w` to `y` sends `dy * w` to `x` and `dy * x` to `w`.
fn naive_grads(case: &Case, x: &[f64], w: &[f64]) -> Expected {
    let op = case.op();
    let y = naive_forward(case, x, w);
    let (cg, og, k) = (case.c / op.groups, case.o / op.groups, op.kernel);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for b in 0..op.batch {
        for o in 0..case.o {
            let g = o / og;
            for oy in 0..op.out_h {
                for ox in 0..op.out_w {
                    let dy = 2.0 * y[((b * case.o + o) * op.out_h + oy) * op.out_w + ox];
                    for ci in 0..cg {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * op.stride + ky * op.dilation) as isize - op.padding as isize;
                                let ix = (ox * op.stride + kx * op.dilation) as isize - op.padding as isize;
                                if iy < 0 || ix < 0 || iy >= case.h as isize || ix >= case.w as isize {
                                    continue;
                                }
                                let xi = ((b * case.c + g * cg + ci) * case.h + iy as usize) * case.w + ix as usize;
                                let wi = ((o * cg + ci) * k + ky) * k + kx;
                                dx[xi] += dy * w[wi];
                                dw[wi] += dy * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    Expected { y, dx, dw }
}

/// Parses fixtures/conv2d.txt (format documented in the script that writes it).
fn fixtures() -> Vec<(String, Case, Expected)> {
    let text = include_str!("fixtures/conv2d.txt");
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(head) = lines.next() {
        let f: Vec<&str> = head.split_whitespace().collect();
        assert_eq!(f[0], "case", "fixture header: {head}");
        let n: Vec<usize> = f[2..].iter().map(|s| s.parse().expect("fixture int")).collect();
        let case = Case {
            batched: n[0] == 1,
            b: n[1],
            c: n[2],
            o: n[3],
            h: n[4],
            w: n[5],
            cfg: Conv2dConfig { kernel: n[6], stride: n[7], padding: n[8], dilation: n[9], groups: n[10] },
        };
        let mut arr = |tag: &str| -> Vec<f64> {
            let line = lines.next().expect("fixture record");
            let mut it = line.split_whitespace();
            assert_eq!(it.next(), Some(tag));
            let len: usize = it.next().expect("len").parse().expect("len");
            let v: Vec<f64> = it.map(|s| s.parse().expect("fixture float")).collect();
            assert_eq!(v.len(), len);
            v
        };
        let (y, dx, dw) = (arr("y"), arr("dx"), arr("dw"));
        out.push((f[1].to_string(), case, Expected { y, dx, dw }));
    }
    assert!(out.len() >= 10, "fixture file lost cases");
    out
}

/// `|a - b| <= tol * max(1, max|b|)` elementwise.
fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}[{i}]: got {g}, want {w} (tol {tol} x {scale})");
    }
}

fn back<S: Shape, E: Element + Into<f64>>(t: Tensor<S, E, Cpu>) -> Vec<f64>
where
    Cpu: Device<E>,
{
    t.as_vec().into_iter().map(Into::into).collect()
}

/// Runs the conv through dfdx's tape in element type `E` and returns `(y, dx, dw)` in f64.
fn run_taped<E: Element + Into<f64>>(case: &Case) -> (Vec<f64>, Vec<f64>, Vec<f64>)
where
    Cpu: Device<E> + Conv2dKernel<E>,
{
    let dev: Cpu = Default::default();
    let cast =
        |v: Vec<f64>| -> Vec<E> { v.into_iter().map(|a| <E as num_traits::NumCast>::from(a).expect("cast")).collect() };
    let k = case.cfg.kernel;
    let w = dev.tensor_from_vec(cast(case.weight()), (case.o, case.c / case.cfg.groups, k, k));
    if case.batched {
        let x = dev.tensor_from_vec(cast(case.x()), (case.b, case.c, case.h, case.w));
        let y = try_conv2d_nchw(x.leaky_trace(), w.clone(), case.cfg).expect("conv2d");
        let y_vals = back(y.retaped::<NoneTape>());
        let grads = y.square().sum().backward();
        (y_vals, back(grads.get(&x)), back(grads.get(&w)))
    } else {
        let op = case.op();
        let x = dev.tensor_from_vec(cast(case.x()), (case.c, case.h, case.w));
        let y = try_conv2d(x.leaky_trace(), w.clone(), case.cfg, (case.o, op.out_h, op.out_w)).expect("conv2d");
        let y_vals = back(y.retaped::<NoneTape>());
        let grads = y.square().sum().backward();
        (y_vals, back(grads.get(&x)), back(grads.get(&w)))
    }
}

#[test]
fn naive_loop_agrees_with_numpy_fixtures() {
    // The two references are independent; checking them against each other first means a
    // failure below points at the kernels, not at a reference.
    for (name, case, want) in fixtures() {
        let got = naive_grads(&case, &case.x(), &case.weight());
        assert_close(&format!("{name} naive y"), &got.y, &want.y, 1e-12);
        assert_close(&format!("{name} naive dx"), &got.dx, &want.dx, 1e-12);
        assert_close(&format!("{name} naive dw"), &got.dw, &want.dw, 1e-12);
    }
}

#[test]
fn f64_forward_and_grads_through_tape_match_numpy() {
    for (name, case, want) in fixtures() {
        let (y, dx, dw) = run_taped::<f64>(&case);
        assert_close(&format!("{name} y"), &y, &want.y, 1e-12);
        assert_close(&format!("{name} dx"), &dx, &want.dx, 1e-12);
        assert_close(&format!("{name} dw"), &dw, &want.dw, 1e-12);
    }
}

#[test]
fn f32_forward_and_grads_through_tape_match_numpy() {
    for (name, case, want) in fixtures() {
        let (y, dx, dw) = run_taped::<f32>(&case);
        assert_close(&format!("{name} y"), &y, &want.y, 1e-5);
        assert_close(&format!("{name} dx"), &dx, &want.dx, 1e-5);
        assert_close(&format!("{name} dw"), &dw, &want.dw, 1e-5);
    }
}

/// Configurations the fixtures do not reach: planes large enough that each image gets its own
/// GEMM (no column batching), more groups, batch edge cases; in f64 (the gemm crate) and f32
/// (our own GEMM, where the CPU has AVX2 or AVX-512).
#[test]
fn matches_naive_loop_on_more_shapes() {
    let cases = [
        // P = 40 * 40 = 1600 columns: one image per GEMM; 1x1 also takes the no-im2col path.
        (2, 2, 3, 40, 40, Conv2dConfig::new(3).padding(1)),
        (2, 3, 4, 40, 41, Conv2dConfig::new(1)),
        (2, 3, 4, 80, 80, Conv2dConfig::new(1).stride(2)),
        // many small images: several images per GEMM, with a short last chunk
        (7, 6, 4, 5, 3, Conv2dConfig::new(3).padding(1).groups(2)),
        (5, 4, 6, 9, 9, Conv2dConfig::new(5).stride(3).padding(2).dilation(2)),
        (3, 6, 6, 5, 5, Conv2dConfig::new(1).groups(3)),
        // depthwise, multiplier 1, with a 7x7 kernel
        (2, 5, 5, 11, 8, Conv2dConfig::new(7).padding(3).groups(5)),
        // kernel covering the whole (padded) input: 1x1 output
        (3, 2, 3, 4, 4, Conv2dConfig::new(5).padding(1)),
        // stride 1, one group: the input gradient runs as the transposed conv's forward pass,
        // with padding K-1-p = 0 (output larger than the input), 3, and over many small images
        (2, 3, 5, 6, 7, Conv2dConfig::new(3).padding(2)),
        (2, 4, 3, 9, 8, Conv2dConfig::new(5)),
        (9, 4, 3, 5, 6, Conv2dConfig::new(3).padding(1)),
        // at least two chunks of images per thread (one image per chunk here): the threads take
        // whole chunks, each adding its weight gradients into a part of its own; the stride-1
        // transposed input gradient, col2im (stride 2), groups, and the 1x1 direct path
        (5, 3, 4, 40, 40, Conv2dConfig::new(3).padding(1)),
        (6, 3, 4, 80, 80, Conv2dConfig::new(3).stride(2).padding(1)),
        (4, 4, 6, 40, 40, Conv2dConfig::new(3).padding(1).groups(2)),
        (5, 3, 4, 40, 41, Conv2dConfig::new(1)),
    ];
    for (b, c, o, h, w, cfg) in cases {
        let case = Case { batched: true, b, c, o, h, w, cfg };
        let want = naive_grads(&case, &case.x(), &case.weight());
        let name = format!("{case:?}");
        for (dtype, (y, dx, dw), tol) in
            [("f64", run_taped::<f64>(&case), 1e-11), ("f32", run_taped::<f32>(&case), 2e-5)]
        {
            assert_close(&format!("{dtype} {name} y"), &y, &want.y, tol);
            assert_close(&format!("{dtype} {name} dx"), &dx, &want.dx, tol);
            assert_close(&format!("{dtype} {name} dw"), &dw, &want.dw, tol);
        }
    }
}

#[test]
fn backward_accumulates_into_existing_gradients() {
    // dfdx adds every use of a tensor into one gradient: y = conv(x) used twice in the loss
    // (sum(y^2) + sum(y^2)) must give twice the single-use gradient.
    let case = Case { batched: true, b: 2, c: 3, o: 4, h: 6, w: 5, cfg: Conv2dConfig::new(3).padding(1) };
    let want = naive_grads(&case, &case.x(), &case.weight());
    let dev: Cpu = Default::default();
    let x = dev.tensor_from_vec(case.x(), (2, 3, 6, 5));
    let w = dev.tensor_from_vec(case.weight(), (4, 3, 3, 3));
    let mut grads = Gradients::leaky();
    for _ in 0..2 {
        let y = try_conv2d_nchw(x.trace(grads), w.clone(), case.cfg).expect("conv2d");
        grads = y.square().sum().backward();
    }
    let double = |v: &[f64]| v.iter().map(|a| 2.0 * a).collect::<Vec<_>>();
    assert_close("dx", &grads.get(&x).as_vec(), &double(&want.dx), 1e-12);
    assert_close("dw", &grads.get(&w).as_vec(), &double(&want.dw), 1e-12);
}

#[test]
fn non_contiguous_input_is_read_in_logical_order() {
    // x stored as [B, H, W, C] and permuted to [B, C, H, W]: the conv must see the logical
    // layout, and the gradient must come back through the permute.
    let case = Case { batched: true, b: 2, c: 3, o: 2, h: 4, w: 5, cfg: Conv2dConfig::new(3).padding(1) };
    let xs = case.x();
    let mut nhwc = vec![0.0; xs.len()];
    for b in 0..2 {
        for c in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    nhwc[((b * 4 + y) * 5 + x) * 3 + c] = xs[((b * 3 + c) * 4 + y) * 5 + x];
                }
            }
        }
    }
    let dev: Cpu = Default::default();
    let x_nhwc: Tensor<Rank4<2, 4, 5, 3>, f64, _> = dev.tensor_from_vec(nhwc, Default::default());
    let w = dev.tensor_from_vec(case.weight(), (2, 3, 3, 3));
    let x = x_nhwc.leaky_trace().permute::<Rank4<2, 3, 4, 5>, _>();
    let y = try_conv2d(x, w.clone(), case.cfg, (Const::<2>, Const::<2>, Const::<4>, Const::<5>)).expect("conv2d");
    let want = naive_grads(&case, &xs, &case.weight());
    assert_close("y", &y.retaped::<NoneTape>().as_vec(), &want.y, 1e-12);
    let grads = y.square().sum().backward();
    assert_close("dw", &grads.get(&w).as_vec(), &want.dw, 1e-12);
    let gx = grads.get(&x_nhwc).as_vec();
    let mut gx_nchw = vec![0.0; gx.len()];
    for b in 0..2 {
        for c in 0..3 {
            for y in 0..4 {
                for x in 0..5 {
                    gx_nchw[((b * 3 + c) * 4 + y) * 5 + x] = gx[((b * 4 + y) * 5 + x) * 3 + c];
                }
            }
        }
    }
    assert_close("dx", &gx_nchw, &want.dx, 1e-12);
}

#[test]
fn bad_shapes_return_errors_naming_the_shapes() {
    let dev: Cpu = Default::default();
    let w = dev.tensor_from_vec(vec![0.0f32; 8 * 4 * 9], (8usize, 4usize, 3usize, 3usize));
    let cfg = Conv2dConfig::new(3).padding(1);

    // wrong channel count
    let x = dev.tensor_from_vec(vec![0.0f32; 2 * 5 * 6 * 6], (2usize, 5usize, 6usize, 6usize));
    let msg = try_conv2d_nchw(x, w.clone(), cfg).expect_err("5 channels into a 4-channel conv").to_string();
    assert!(msg.contains("conv2d") && msg.contains("[2, 4, H, W]") && msg.contains("[2, 5, 6, 6]"), "{msg}");

    // wrong rank
    let x = dev.tensor_from_vec(vec![0.0f32; 4 * 6], (4usize, 6usize));
    let msg = try_conv2d_nchw(x, w.clone(), cfg).expect_err("rank 2").to_string();
    assert!(msg.contains("[B, C, H, W] or [C, H, W]") && msg.contains("[4, 6]"), "{msg}");

    // input smaller than the dilated kernel
    let x = dev.tensor_from_vec(vec![0.0f32; 4 * 2 * 9], (4usize, 2usize, 9usize));
    let msg = try_conv2d_nchw(x, w.clone(), cfg.dilation(3).padding(0)).expect_err("too small").to_string();
    assert!(msg.contains("H >= 7") && msg.contains("[4, 2, 9]"), "{msg}");

    // weight groups do not fit
    let x = dev.tensor_from_vec(vec![0.0f32; 8 * 36], (1usize, 8usize, 6usize, 6usize));
    let msg = try_conv2d_nchw(x, w.clone(), cfg.groups(3)).expect_err("8 out channels, 3 groups").to_string();
    assert!(msg.contains("weight") && msg.contains("[8, 4, 3, 3]"), "{msg}");

    // output shape the caller asked for does not match
    let x = dev.tensor_from_vec(vec![0.0f32; 4 * 36], (1usize, 4usize, 6usize, 6usize));
    let msg = try_conv2d(x, w, cfg, (1usize, 8usize, 5usize, 6usize)).expect_err("wrong out").to_string();
    assert!(msg.contains("[1, 8, 6, 6]") && msg.contains("[1, 8, 5, 6]"), "{msg}");
}

// ---- layers ----

type TestConv = Conv2d<4, 6, 3, 2, 1, 1, 2, 2, 5, 4, f64, Cpu>;

#[test]
fn conv2d_layer_forward_batched_unbatched_and_grads() {
    let case =
        Case { batched: true, b: 3, c: 4, o: 6, h: 9, w: 8, cfg: Conv2dConfig::new(3).stride(2).padding(1).groups(2) };
    let want = naive_grads(&case, &case.x(), &case.weight());
    let dev: Cpu = Default::default();
    let mut m = dev.build_module::<TestConv, f64>();
    m.weight = dev.tensor_from_vec(case.weight(), Default::default());

    let x: Tensor<Rank4<3, 4, 9, 8>, f64, _> = dev.tensor_from_vec(case.x(), Default::default());
    let y: Tensor<Rank4<3, 6, 5, 4>, f64, _, _> = m.forward(x.leaky_trace());
    assert_close("layer y", &y.retaped::<NoneTape>().as_vec(), &want.y, 1e-12);
    let grads = y.square().sum().backward();
    assert_close("layer dx", &grads.get(&x).as_vec(), &want.dx, 1e-12);
    assert_close("layer dw", &grads.get(&m.weight).as_vec(), &want.dw, 1e-12);

    // unbatched: the first image on its own
    let x0: Tensor<Rank3<4, 9, 8>, f64, _> = dev.tensor_from_vec(case.x()[..4 * 72].to_vec(), Default::default());
    let y0: Tensor<Rank3<6, 5, 4>, f64, _> = m.forward(x0);
    assert_close("layer y unbatched", &y0.as_vec(), &want.y[..6 * 20], 1e-12);

    // dynamic batch dim
    let xd = dev.tensor_from_vec(case.x(), (3usize, Const::<4>, Const::<9>, Const::<8>));
    let yd = m.forward(xd);
    assert_eq!(yd.shape().0, 3);
    assert_close("layer y dyn batch", &yd.as_vec(), &want.y, 1e-12);
}

#[test]
fn conv2d_layer_checked_forward_rejects_bad_shapes() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<TestConv, f64>();
    let bad = dev.tensor_from_vec(vec![0.0; 3 * 5 * 9 * 8], (3usize, 5usize, 9usize, 8usize));
    let msg = m.try_forward_checked(bad).expect_err("5 channels").to_string();
    assert!(msg.contains("Conv2d<4, 6, k=3, s=2, p=1, d=1, g=2>"), "{msg}");
    assert!(msg.contains("[B, 4, 9..=10, 7..=8]") && msg.contains("[3, 5, 9, 8]"), "{msg}");
    // right channels, spatial size that gives a different output
    let bad = dev.tensor_from_vec(vec![0.0; 4 * 12 * 8], (4usize, 12usize, 8usize));
    let msg = m.try_forward_checked(bad).expect_err("12 rows").to_string();
    assert!(msg.contains("[4, 9..=10, 7..=8]") && msg.contains("[4, 12, 8]"), "{msg}");
    // a fitting usize-shaped input runs and gets the static output dims
    let ok = dev.tensor_from_vec(vec![1.0; 2 * 4 * 10 * 7], (2usize, 4usize, 10usize, 7usize));
    let y = m.try_forward_checked(ok).expect("fits");
    assert_eq!(y.shape().0, 2);
}

#[test]
fn conv2d_layer_params_init_and_sgd_step() {
    let dev: Cpu = Default::default();
    let mut m = dev.build_module::<TestConv, f64>();
    assert_eq!(m.num_trainable_params(), 6 * 2 * 3 * 3);
    // PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = 2 * 3 * 3.
    let bound = 1.0 / 18f64.sqrt();
    let w0 = m.weight.as_vec();
    assert!(w0.iter().all(|v| v.abs() <= bound), "{w0:?}");
    assert!(w0.iter().any(|v| v.abs() > bound / 4.0), "init should spread over the range");

    // One SGD step moves the weight by -lr * dL/dw, with dL/dw from the numpy fixture.
    let (_, case, want) = fixtures().into_iter().find(|(n, ..)| n == "k3_s2_p1_g2_b3").expect("fixture");
    m.weight = dev.tensor_from_vec(case.weight(), Default::default());
    let x: Tensor<Rank4<3, 4, 9, 8>, f64, _> = dev.tensor_from_vec(case.x(), Default::default());
    let grads = m.forward(x.leaky_trace()).square().sum().backward();
    let mut opt = Sgd::new(&m, SgdConfig { lr: 0.01, momentum: None, weight_decay: None });
    opt.update(&mut m, &grads).expect("sgd");
    let stepped: Vec<f64> = case.weight().iter().zip(&want.dw).map(|(w, g)| w - 0.01 * g).collect();
    assert_close("sgd", &m.weight.as_vec(), &stepped, 1e-12);
}

#[test]
fn kaiming_normal_fan_out_has_the_torchvision_std() {
    let dev: Cpu = Default::default();
    let m = dev.build_module::<Conv2d<64, 128, 3, 1, 1, 1, 1, 64, 8, 8, f64, Cpu, KaimingNormalFanOut>, f64>();
    let w = m.weight.as_vec();
    let n = w.len() as f64;
    let mean = w.iter().sum::<f64>() / n;
    let std = (w.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let want = (2.0f64 / (128.0 * 9.0)).sqrt();
    // 73,728 samples: the sample std is within 1% of the true one with overwhelming probability.
    assert!((std / want - 1.0).abs() < 0.01, "std {std}, want {want}");
    assert!(mean.abs() < 0.01 * want * 10.0, "mean {mean}");
    // and the default init is bounded by 1/sqrt(fan_in) on the same shape
    let mut t: Tensor<Rank4<128, 64, 3, 3>, f64, Cpu> = dev.zeros();
    TorchDefaultInit::init(&mut t, 64 * 9, 128 * 9).expect("init");
    let bound = 1.0 / (64.0f64 * 9.0).sqrt();
    let v = t.as_vec();
    assert!(v.iter().all(|x| x.abs() <= bound) && v.iter().any(|x| x.abs() > 0.9 * bound));
}

#[test]
fn bias2d_adds_per_channel_and_inits_like_torch() {
    let dev: Cpu = Default::default();
    let mut m = dev.build_module::<Bias2d<3, 27, f32, Cpu>, f32>();
    assert_eq!(m.num_trainable_params(), 3);
    let bound = 1.0 / 27f32.sqrt();
    assert!(m.bias.as_vec().iter().all(|b| b.abs() <= bound));
    m.bias = dev.tensor([1.0, -2.0, 0.5]);
    let x: Tensor<Rank4<2, 3, 2, 2>, f32, _> =
        dev.tensor_from_vec((0..24).map(|i| i as f32).collect(), Default::default());
    let y = m.forward(x.leaky_trace()).as_vec();
    for (i, v) in y.iter().enumerate() {
        let c = (i / 4) % 3;
        assert_eq!(*v, i as f32 + [1.0, -2.0, 0.5][c]);
    }
    let x3: Tensor<Rank3<3, 1, 2>, f32, _> = dev.tensor_from_vec(vec![0.0; 6], Default::default());
    assert_eq!(m.forward(x3).as_vec(), vec![1.0, 1.0, -2.0, -2.0, 0.5, 0.5]);
    // the bias gradient of sum(y) is the number of elements per channel
    let g = m.forward(x.leaky_trace()).sum().backward();
    assert_eq!(g.get(&m.bias).as_vec(), vec![8.0, 8.0, 8.0]);
}

#[test]
fn sgemm_matches_naive_products_on_every_isa_here() {
    // Each instruction set this CPU runs (AVX-512, AVX2 + FMA), not only the one `sgemm` picks;
    // none: the gemm crate serves f32 on this CPU, and the tests above cover it.
    // (m, n, k, a transposed, b transposed, accumulate): edge tiles, several K blocks, the
    // multi-threaded column split (m * n * k >= 2^21), strided operands.
    let cases = [
        (1, 1, 1, false, false, false),
        (13, 33, 7, false, false, true),
        (70, 1000, 300, false, false, false),
        (70, 1000, 300, true, true, true),
        (150, 77, 600, true, false, true),
        (24, 4100, 64, false, true, false),
        // few columns: the threads split rows (a 7x7 map at batch 1), plain and transposed A
        (517, 49, 300, false, false, true),
        (37, 20, 5000, true, false, false),
        // the 8 x 48 tile (at most 256 rows; columns a multiple of 48, or many): edge rows and
        // columns, several K blocks, transposed operands, threads on rows and on columns
        (16, 144, 2048, false, true, true),
        (150, 96, 500, true, false, false),
        (37, 2000, 70, false, false, true),
        (256, 1537, 200, true, true, false),
        // rows a multiple of 4 and not of 6 (edge row tiles of the AVX2 6 x 16), edge columns,
        // several K blocks, threads on columns
        (52, 100, 300, true, false, true),
        (32, 3000, 70, false, true, false),
    ];
    let isas = super::sgemm::supported_isas();
    let runs = isas.iter().flat_map(|&isa| [true, false].map(|parallel| (isa, parallel)));
    for ((isa, parallel), case) in runs.flat_map(|run| cases.map(|c| (run, c))) {
        check_gemm(&format!("{isa:?} parallel {parallel}"), case, |(m, n, k), c, acc, a, b| {
            // SAFETY: `check_gemm` sizes the buffers for these strides; c is separate.
            unsafe { super::sgemm::sgemm_on(isa, m, n, k, c.as_mut_ptr(), n, acc, a, b, parallel) }
        });
    }
}

/// The f32 GEMM the conv kernels call, whichever of our kernels or the `gemm` crate it picks for
/// the shape (the crate from 128 rows on AVX-512 CPUs, deep ones split by rows between threads):
/// every stride combination the convs use.
#[test]
fn conv_matmul_matches_naive_products_on_both_sides_of_the_crate_threshold_and_the_row_split() {
    let cases = [
        (127, 300, 200, false, false, false),
        (128, 300, 200, true, false, true),
        (256, 49, 2304, false, false, true),
        (576, 1568, 64, true, false, false),
        (1024, 196, 256, false, true, true),
        (2048, 49, 512, false, false, false),
        (16, 2048, 144, false, true, true),
        // Deep enough for the row split (`cpu::row_parts`) when parallel: parts of 112 + 88 rows,
        // 80 + 50, an A stored transposed, and exactly two AVX-512 tiles.
        (200, 7, 1100, false, true, true),
        (130, 49, 1024, true, false, false),
        (128, 33, 2048, false, false, true),
    ];
    for (parallel, case) in [true, false].into_iter().flat_map(|p| cases.map(|c| (p, c))) {
        check_gemm(&format!("matmul parallel {parallel}"), case, |(m, n, k), c, acc, a, b| {
            // SAFETY: as above.
            unsafe {
                super::cpu::matmul::<f32>(
                    (m, n, k),
                    c.as_mut_ptr(),
                    n,
                    acc,
                    a.ptr,
                    (a.rs, a.cs),
                    b.ptr,
                    (b.rs, b.cs),
                    parallel,
                )
            }
        });
    }
}

/// Runs `gemm` on `case` = `(m, n, k, a transposed, b transposed, accumulate)` with patterned
/// operands and checks every element of `C` against an f64 loop.
fn check_gemm(
    label: &str,
    (m, n, k, at, bt, acc): (usize, usize, usize, bool, bool, bool),
    gemm: impl Fn((usize, usize, usize), &mut [f32], bool, super::sgemm::Mat, super::sgemm::Mat),
) {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0).collect();
    let c0: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
    // a stored [m, k] or, transposed, [k, m]; b stored [k, n] or [n, k]
    let (a_rs, a_cs) = if at { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if bt { (1, k) } else { (n, 1) };
    let mut c = c0.clone();
    gemm(
        (m, n, k),
        &mut c,
        acc,
        super::sgemm::Mat { ptr: a.as_ptr(), rs: a_rs, cs: a_cs },
        super::sgemm::Mat { ptr: b.as_ptr(), rs: b_rs, cs: b_cs },
    );
    for i in 0..m {
        for j in 0..n {
            let mut want: f64 = if acc { c0[i * n + j] as f64 } else { 0.0 };
            for p in 0..k {
                want += a[i * a_rs + p * a_cs] as f64 * b[p * b_rs + j * b_cs] as f64;
            }
            let got = c[i * n + j] as f64;
            assert!(
                (got - want).abs() <= 1e-4 * (1.0 + want.abs()) + 1e-5 * k as f64,
                "{label} ({m},{n},{k}) [{i},{j}]: {got} vs {want}"
            );
        }
    }
}

#[test]
fn cpu_sgemm_refuses_sizes_whose_products_wrap() {
    // 2^32 * 2^32 wraps to 0 in usize: unchecked, empty buffers would pass the length check.
    let big = 1usize << 32;
    assert!(!super::cpu_sgemm(big, 1, big, &[], &[], &mut []));
    assert!(!super::cpu_sgemm(1, big, big, &[], &[], &mut []));
    assert!(!super::cpu_sgemm(2, 2, 2, &[0.0; 4], &[0.0; 4], &mut [0.0; 3]));
    let mut c = [0.0f32; 4];
    assert!(super::cpu_sgemm(2, 2, 1, &[1.0, 2.0], &[3.0, 4.0], &mut c));
    assert_eq!(c, [3.0, 4.0, 6.0, 8.0]);
}

#[test]
fn f32_matches_naive_loop_on_large_planes() {
    // Large enough for the multi-threaded GEMM path and whole-image GEMMs, in f32.
    let cases = [
        (2, 16, 24, 48, 48, Conv2dConfig::new(3).padding(1)),
        (3, 64, 32, 14, 14, Conv2dConfig::new(1)),
        (2, 8, 16, 64, 64, Conv2dConfig::new(1).stride(2)),
    ];
    for (b, c, o, h, w, cfg) in cases {
        let case = Case { batched: true, b, c, o, h, w, cfg };
        let want = naive_grads(&case, &case.x(), &case.weight());
        let (y, dx, dw) = run_taped::<f32>(&case);
        let name = format!("{case:?}");
        assert_close(&format!("{name} y"), &y, &want.y, 2e-5);
        assert_close(&format!("{name} dx"), &dx, &want.dx, 2e-5);
        assert_close(&format!("{name} dw"), &dw, &want.dw, 2e-5);
    }
}

#[test]
fn kernel_entries_refuse_ops_that_do_not_fit_their_buffers() {
    let dev = Cpu::default();
    let buf = |n: usize| -> <Cpu as Storage<f32>>::Vec { dev.try_alloc_len(n).unwrap() };
    let good = Conv2dOp::new(Conv2dConfig::new(3).padding(1), 2, 4, 6, 5, 5).unwrap();
    assert_eq!(good.buffer_lens(), Some([2 * 4 * 25, 6 * 4 * 9, 2 * 6 * 25]));
    let (mut y, mut gx, mut gw) = (buf(300), buf(200), buf(216));
    assert!(dev.conv2d_forward(&good, &buf(200), &buf(216), &mut y).is_ok());
    assert!(dev.conv2d_backward(&good, &buf(200), &buf(216), &mut gx, &mut gw, &buf(300)).is_ok());
    // A short output buffer, a short gradient.
    assert!(dev.conv2d_forward(&good, &buf(200), &buf(216), &mut buf(299)).is_err());
    assert!(dev.conv2d_backward(&good, &buf(200), &buf(216), &mut buf(199), &mut gw, &buf(300)).is_err());
    // Ops no constructor builds, with buffers their own (unchecked) arithmetic would accept: an
    // output larger than the input allows, zero planes, zero output channels, and sizes whose
    // products wrap around usize to small numbers.
    let taller = Conv2dOp { out_h: 6, ..good };
    assert!(dev.conv2d_forward(&taller, &buf(200), &buf(216), &mut buf(2 * 6 * 30)).is_err());
    let empty_plane = Conv2dOp { in_h: 0, in_w: 0, out_h: 0, out_w: 0, padding: 0, kernel: 1, ..good };
    assert!(dev.conv2d_forward(&empty_plane, &buf(0), &buf(24), &mut buf(0)).is_err());
    let no_outputs = Conv2dOp { out_channels: 0, ..good };
    assert!(dev.conv2d_forward(&no_outputs, &buf(200), &buf(0), &mut buf(0)).is_err());
    let big = 1usize << 32;
    let wrapping = Conv2dOp {
        batch: big,
        in_channels: big,
        out_channels: 1,
        groups: 1,
        kernel: 1,
        padding: 0,
        in_h: 1,
        in_w: 1,
        out_h: 1,
        out_w: 1,
        ..good
    };
    assert_eq!(wrapping.buffer_lens(), None);
    assert!(dev.conv2d_forward(&wrapping, &buf(0), &buf(0), &mut buf(0)).is_err());
    // The shape arithmetic itself saturates to None rather than wrapping.
    assert_eq!(conv_out_size(usize::MAX, 3, 1, usize::MAX / 2 + 1, 1), None);
    assert_eq!(conv_out_size(5, usize::MAX, 1, 0, 2), None);
    assert_eq!(wrapping.macs(), usize::MAX);
}

/// `[a, b, plane]` -> `[b, a, plane]`.
fn swap_outer(v: &[f64], a: usize, b: usize, plane: usize) -> Vec<f64> {
    let mut out = vec![0.0; v.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * plane..][..plane].copy_from_slice(&v[(i * b + j) * plane..][..plane]);
        }
    }
    out
}

/// The CNHW backward (compiled plans' batched training) against the naive loop, adding into
/// gradients that already hold values, and overwriting input gradients that hold NaNs (CNHW and
/// NCHW, f64 and f32): the 1x1 direct path, the transposed-conv input gradient
/// (stride 1) over one chunk and over many taken whole by the threads, col2im (stride 2,
/// dilation, groups).
#[test]
fn cnhw_backward_matches_naive_loop() {
    let cases = [
        (3, 4, 8, 6, 6, Conv2dConfig::new(1)),
        (3, 6, 6, 5, 5, Conv2dConfig::new(1).groups(3)),
        (2, 3, 5, 40, 40, Conv2dConfig::new(3).padding(1)),
        (9, 4, 3, 5, 6, Conv2dConfig::new(3).padding(1)),
        (6, 3, 4, 40, 40, Conv2dConfig::new(3).padding(1)),
        (3, 3, 4, 80, 80, Conv2dConfig::new(3).stride(2).padding(1)),
        (5, 4, 6, 9, 9, Conv2dConfig::new(5).stride(3).padding(2).dilation(2)),
        (7, 6, 4, 5, 3, Conv2dConfig::new(3).padding(1).groups(2)),
        (4, 8, 16, 14, 14, Conv2dConfig::new(1).stride(2)),
    ];
    for (b, c, o, h, w, cfg) in cases {
        let case = Case { batched: true, b, c, o, h, w, cfg };
        let op = case.op();
        let (x, wt) = (case.x(), case.weight());
        let want = naive_grads(&case, &x, &wt);
        let p = op.out_h * op.out_w;
        let gout: Vec<f64> = swap_outer(&want.y, b, o, p).iter().map(|v| 2.0 * v).collect();
        let x_cnhw = swap_outer(&x, b, c, h * w);
        // Start from ones: the gradients are added.
        let mut gx = vec![1.0; x.len()];
        let mut gw = vec![1.0; wt.len()];
        cpu::backward_cnhw(&op, &x_cnhw, &wt, &mut gx, false, &mut gw, &gout);
        let dx: Vec<f64> = want.dx.iter().map(|v| v + 1.0).collect();
        let dw: Vec<f64> = want.dw.iter().map(|v| v + 1.0).collect();
        assert_close(&format!("f64 {case:?} dx"), &swap_outer(&gx, c, b, h * w), &dx, 1e-11);
        assert_close(&format!("f64 {case:?} dw"), &gw, &dw, 1e-11);
        // Overwriting a gradient buffer that holds garbage (the plans' first gradient of a
        // value), in both layouts and in f32 (the direct kernels where they apply).
        let nan_gx = || vec![f64::NAN; x.len()];
        let mut gx = nan_gx();
        cpu::backward_cnhw(&op, &x_cnhw, &wt, &mut gx, true, &mut vec![0.0; wt.len()], &gout);
        assert_close(&format!("f64 overwrite {case:?} dx"), &swap_outer(&gx, c, b, h * w), &want.dx, 1e-11);
        let mut gx = nan_gx();
        let gout_nchw: Vec<f64> = want.y.iter().map(|v| 2.0 * v).collect();
        cpu::backward(&op, &x, &wt, &mut gx, true, &mut vec![0.0; wt.len()], &gout_nchw);
        assert_close(&format!("f64 overwrite nchw {case:?} dx"), &gx, &want.dx, 1e-11);
        let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|&v| v as f32).collect() };
        let mut gx32 = vec![f32::NAN; x.len()];
        cpu::backward(&op, &f32s(&x), &f32s(&wt), &mut gx32, true, &mut vec![0.0; wt.len()], &f32s(&gout_nchw));
        let gx32: Vec<f64> = gx32.iter().map(|&v| v as f64).collect();
        assert_close(&format!("f32 overwrite nchw {case:?} dx"), &gx32, &want.dx, 2e-5);
    }
}

/// The CNHW forward (compiled plans' batched inference) against the naive loop, its input and
/// output transposed from and to NCHW here: im2col chunks of several images and of one, the 1x1
/// direct path, strides, padding, dilation and groups.
#[test]
fn cnhw_forward_matches_naive_loop() {
    let cases = [
        (7, 6, 4, 5, 3, Conv2dConfig::new(3).padding(1).groups(2)),
        (5, 4, 6, 9, 9, Conv2dConfig::new(5).stride(3).padding(2).dilation(2)),
        (3, 6, 6, 5, 5, Conv2dConfig::new(1).groups(3)),
        (3, 4, 8, 6, 6, Conv2dConfig::new(1)),
        (2, 3, 5, 40, 40, Conv2dConfig::new(3).padding(1)),
        (3, 3, 4, 80, 80, Conv2dConfig::new(3).stride(2).padding(1)),
        (4, 8, 16, 14, 14, Conv2dConfig::new(1).stride(2)),
    ];
    for (b, c, o, h, w, cfg) in cases {
        let case = Case { batched: true, b, c, o, h, w, cfg };
        let op = case.op();
        let (x, wt) = (case.x(), case.weight());
        let want = naive_forward(&case, &x, &wt);
        let x_cnhw = swap_outer(&x, b, c, h * w);
        let p = op.out_h * op.out_w;
        let mut y = vec![f64::NAN; want.len()];
        cpu::forward_cnhw(&op, &x_cnhw, &wt, &mut y);
        assert_close(&format!("f64 {case:?}"), &swap_outer(&y, o, b, p), &want, 1e-12);
        let (x32, w32): (Vec<f32>, Vec<f32>) =
            (x_cnhw.iter().map(|&v| v as f32).collect(), wt.iter().map(|&v| v as f32).collect());
        let mut y32 = vec![f32::NAN; want.len()];
        cpu::forward_cnhw(&op, &x32, &w32, &mut y32);
        let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
        assert_close(&format!("f32 {case:?}"), &swap_outer(&y32, o, b, p), &want, 2e-5);
    }
}

/// Winograd F(2x2, 3x3) and F(4x4, 3x3) (`winograd.rs`) against the naive loop, in both layouts, writing and
/// adding and with a fused epilogue: odd and even sizes (partial last tiles), padding 0, 1 and 2, channel counts off the
/// SIMD width, one chunk with the phases split between threads and many chunks taken whole. Run
/// on a two-thread pool so both threading modes run whatever the machine.
#[test]
fn winograd_matches_naive_loop() {
    let cases = [
        (1, 16, 16, 7, 7, 1),
        (3, 16, 20, 9, 5, 1),
        (2, 17, 16, 6, 8, 0),
        (2, 16, 18, 5, 7, 2),
        (1, 16, 16, 1, 1, 1),
        (4, 24, 16, 30, 34, 1),
        (1, 16, 17, 131, 140, 1),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for (b, c, o, h, w, pad) in cases {
            let case = Case { batched: true, b, c, o, h, w, cfg: Conv2dConfig::new(3).padding(pad) };
            let op = case.op();
            let (x, wt) = (case.x(), case.weight());
            let want = naive_forward(&case, &x, &wt);
            let p = op.out_h * op.out_w;
            for (cnhw, tile) in [(false, 2), (true, 2), (false, 4), (true, 4)] {
                let (xl, to_nchw) = if cnhw {
                    (
                        swap_outer(&x, b, c, h * w),
                        Box::new(|y: &[f64]| swap_outer(y, o, b, p)) as Box<dyn Fn(&[f64]) -> Vec<f64>>,
                    )
                } else {
                    (x.clone(), Box::new(|y: &[f64]| y.to_vec()) as Box<dyn Fn(&[f64]) -> Vec<f64>>)
                };
                let mut y = vec![f64::NAN; want.len()];
                winograd::forward_tiles(tile, &op, cnhw, &xl, &wt, &mut y, winograd::Store::Write);
                assert_close(&format!("f64 F({tile}) cnhw {cnhw} {case:?}"), &to_nchw(&y), &want, 1e-12);
                let mut y = vec![1.0; want.len()];
                winograd::forward_tiles(tile, &op, cnhw, &xl, &wt, &mut y, winograd::Store::Add);
                let plus_one: Vec<f64> = want.iter().map(|v| v + 1.0).collect();
                assert_close(&format!("f64 F({tile}) accumulate cnhw {cnhw} {case:?}"), &to_nchw(&y), &plus_one, 1e-12);
                // The fused epilogue: y * scale[o] + shift[o] + res, then relu (res in the
                // output's layout; its NCHW twin for the reference).
                let scale: Vec<f64> = (0..o).map(|i| 0.5 + 0.1 * i as f64).collect();
                let shift: Vec<f64> = (0..o).map(|i| 0.3 - 0.05 * i as f64).collect();
                let res_nchw: Vec<f64> = (0..want.len()).map(|i| (0.11 * i as f64).cos()).collect();
                let res = if cnhw { swap_outer(&res_nchw, b, o, p) } else { res_nchw.clone() };
                let fused: Vec<f64> = want
                    .iter()
                    .zip(&res_nchw)
                    .enumerate()
                    .map(|(i, (&v, &r))| (v * scale[(i / p) % o] + shift[(i / p) % o] + r).max(0.0))
                    .collect();
                let mut y = vec![f64::NAN; want.len()];
                let store =
                    winograd::Store::Epilogue { scale: Some(&scale), shift: Some(&shift), res: Some(&res), relu: true };
                winograd::forward_tiles(tile, &op, cnhw, &xl, &wt, &mut y, store);
                assert_close(&format!("f64 F({tile}) epilogue cnhw {cnhw} {case:?}"), &to_nchw(&y), &fused, 1e-12);
                let (x32, w32): (Vec<f32>, Vec<f32>) =
                    (xl.iter().map(|&v| v as f32).collect(), wt.iter().map(|&v| v as f32).collect());
                let mut y32 = vec![f32::NAN; want.len()];
                winograd::forward_tiles(tile, &op, cnhw, &x32, &w32, &mut y32, winograd::Store::Write);
                let y32: Vec<f64> = y32.iter().map(|&v| v as f64).collect();
                assert_close(&format!("f32 F({tile}) cnhw {cnhw} {case:?}"), &to_nchw(&y32), &want, 2e-5);
            }
        }
    });
}

/// The inference Winograd conv keeps its transformed weights across calls (`DerivedCache`):
/// calls with the same weights give the same bits as with nothing kept, and weights changed in
/// place (the same buffer, as an optimizer step leaves them) give the new weights' conv, not
/// the kept one's, in f64 and f32, for F(4x4) (a 12x12 map) and F(2x2) (a 10x10 one).
#[test]
fn winograd_kept_weights_follow_changes_in_place() {
    for (h, tile) in [(12, 4), (10, 2)] {
        let case = Case { batched: true, b: 2, c: 16, o: 16, h, w: h, cfg: Conv2dConfig::new(3).padding(1) };
        let op = case.op();
        let x = case.x();
        let mut wt = case.weight();
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut w32: Vec<f32> = wt.iter().map(|&v| v as f32).collect();
        for step in 0..3 {
            let want = naive_forward(&case, &x, &wt);
            let mut fresh = vec![f64::NAN; want.len()];
            winograd::forward_tiles(tile, &op, false, &x, &wt, &mut fresh, winograd::Store::Write);
            let mut fresh32 = vec![f32::NAN; want.len()];
            winograd::forward_tiles(tile, &op, false, &x32, &w32, &mut fresh32, winograd::Store::Write);
            for call in 0..2 {
                let what = format!("{h}x{h} step {step} call {call}");
                let mut y = vec![f64::NAN; want.len()];
                winograd::forward_fused(&op, false, &x, &wt, &mut y, winograd::Store::Write);
                assert!(f64::with_derived(|cache| cache.holds(&wt, [tile, 16])), "{what}: nothing kept");
                assert_close(&format!("f64 {what}"), &y, &want, 1e-12);
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    fresh.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "f64 {what}: kept != fresh"
                );
                let mut y32 = vec![f32::NAN; want.len()];
                winograd::forward_fused(&op, false, &x32, &w32, &mut y32, winograd::Store::Write);
                assert_eq!(
                    y32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    fresh32.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "f32 {what}: kept != fresh"
                );
            }
            // An optimizer-like step, in place: one weight, then all.
            if step == 0 {
                wt[5] += 0.25;
                w32[5] += 0.25;
            } else {
                wt.iter_mut().for_each(|v| *v *= -0.5);
                w32.iter_mut().for_each(|v| *v *= -0.5);
            }
        }
    }
}

/// The same weight buffer, with the same bits, read as 32 x 16 and then as 16 x 32 channels (a
/// buffer reused by a model of another shape): each conv gets its own transformed weights.
#[test]
fn winograd_kept_weights_follow_the_channel_split() {
    let split =
        |c: usize, o: usize| Case { batched: true, b: 1, c, o, h: 12, w: 12, cfg: Conv2dConfig::new(3).padding(1) };
    let (wide, deep) = (split(16, 32), split(32, 16));
    let wt = wide.weight();
    assert_eq!(wt.len(), deep.o * deep.c * 9);
    for _ in 0..2 {
        for case in [&wide, &deep] {
            let x = case.x();
            let want = naive_forward(case, &x, &wt);
            let mut y = vec![f64::NAN; want.len()];
            winograd::forward_fused(&case.op(), false, &x, &wt, &mut y, winograd::Store::Write);
            assert_close(&format!("{case:?}"), &y, &want, 1e-12);
        }
    }
}

/// Puts a CNHW buffer back in NCHW order (or an NCHW one as it is).
type ToNchw = Box<dyn Fn(&[f64]) -> Vec<f64>>;

/// The direct 3x3 kernels (`direct.rs`, f32 on AVX-512) against the naive f64 loop, in both
/// layouts: forward writing and adding, the input and weight gradients added into gradients that
/// hold values; channel counts off the blocks (`OB` 8, `GB` 6), planes off the 16 lanes (1x1,
/// 3x5, 7x7) and over several vectors, batch 1 (position runs split between tasks) and batches
/// split into image runs and chunks; every buffer also starting 1 and 7 elements into its
/// allocation, so that planes of 256 positions and more run with their vectors shifted onto the
/// buffer's cache lines (`Geom::lead`). Run on a two-thread pool so both threading modes run.
#[test]
fn direct_matches_naive_loop() {
    if !crate::wide::wide_vectors() {
        eprintln!("no AVX-512 here: the direct kernels do not run");
        return;
    }
    let cases = [
        (1, 1, 1, 1, 1),
        (2, 3, 5, 3, 5),
        (1, 16, 16, 32, 32),
        (3, 9, 17, 7, 7),
        (5, 16, 32, 16, 16),
        (4, 64, 64, 8, 8),
        (2, 24, 8, 4, 4),
        (9, 4, 3, 5, 6),
        (2, 7, 13, 20, 24),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    // `v` copied `skip` elements into a buffer of its own, so its slice starts there.
    let placed = |v: &[f64], skip: usize| -> Vec<f32> {
        std::iter::repeat_n(f32::NAN, skip).chain(v.iter().map(|&v| v as f32)).collect()
    };
    let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&v| v as f64).collect() };
    pool.install(|| {
        for (b, c, o, h, w) in cases {
            let case = Case { batched: true, b, c, o, h, w, cfg: Conv2dConfig::new(3).padding(1) };
            let op = case.op();
            assert!(direct::applies::<f32>(&op));
            let (x, wt) = (case.x(), case.weight());
            let want = naive_grads(&case, &x, &wt);
            let p = h * w;
            for (cnhw, skip) in [(false, 0), (true, 0), (false, 1), (true, 7)] {
                let (x_l, y_to_nchw, x_to_nchw): (Vec<f64>, ToNchw, ToNchw) = if cnhw {
                    (
                        swap_outer(&x, b, c, p),
                        Box::new(move |y: &[f64]| swap_outer(y, o, b, p)),
                        Box::new(move |v: &[f64]| swap_outer(v, c, b, p)),
                    )
                } else {
                    (x.clone(), Box::new(|y: &[f64]| y.to_vec()), Box::new(|v: &[f64]| v.to_vec()))
                };
                let name = format!("{case:?} cnhw {cnhw} skip {skip}");
                let (x32, w32) = (placed(&x_l, skip), placed(&wt, 0));
                let x32 = &x32[skip..];
                let mut y = placed(&vec![f64::NAN; want.y.len()], skip);
                direct::forward(&op, cnhw, x32, &w32, &mut y[skip..], winograd::Store::Write);
                assert_close(&format!("{name} y"), &y_to_nchw(&f64s(&y[skip..])), &want.y, 2e-5);
                let mut y = placed(&vec![1.0; want.y.len()], skip);
                direct::forward(&op, cnhw, x32, &w32, &mut y[skip..], winograd::Store::Add);
                let plus_one: Vec<f64> = want.y.iter().map(|v| v + 1.0).collect();
                assert_close(&format!("{name} y added"), &y_to_nchw(&f64s(&y[skip..])), &plus_one, 2e-5);
                let gout: Vec<f64> = want.y.iter().map(|v| 2.0 * v).collect();
                let gout = placed(&if cnhw { swap_outer(&gout, b, o, p) } else { gout }, skip);
                let mut gx = placed(&vec![1.0; x.len()], skip);
                let mut gw = vec![1.0f32; wt.len()];
                direct::backward(&op, cnhw, x32, &w32, &mut gx[skip..], true, &mut gw, &gout[skip..]);
                let dx: Vec<f64> = want.dx.iter().map(|v| v + 1.0).collect();
                let dw: Vec<f64> = want.dw.iter().map(|v| v + 1.0).collect();
                assert_close(&format!("{name} dx"), &x_to_nchw(&f64s(&gx[skip..])), &dx, 2e-5);
                assert_close(&format!("{name} dw"), &f64s(&gw), &dw, 2e-5);
            }
        }
    });
}

/// A conv kernel that stores as a `Store` says, on NCHW or CNHW (`cnhw`) activations.
type StoreKernel = fn(&Conv2dOp, bool, &[f32], &[f32], &mut [f32], winograd::Store<f32>);

/// `kernel` against the naive loop on `case`, both layouts, with each store: write, add into
/// values, and the epilogue (per-channel scale and shift, the residual, relu) computed here in
/// f64 from the naive conv.
fn check_store_kernel(case: &Case, kernel: StoreKernel) {
    let f32s = |v: &[f64]| -> Vec<f32> { v.iter().map(|&v| v as f32).collect() };
    let f64s = |v: &[f32]| -> Vec<f64> { v.iter().map(|&v| v as f64).collect() };
    let op = case.op();
    let (b, c, o, p) = (case.b, case.c, case.o, op.out_h * op.out_w);
    let (x, wt) = (case.x(), case.weight());
    let want = naive_forward(case, &x, &wt);
    let scale: Vec<f64> = (0..o).map(|i| 0.5 + 0.1 * i as f64).collect();
    let shift: Vec<f64> = (0..o).map(|i| 0.3 - 0.07 * i as f64).collect();
    let res: Vec<f64> = (0..want.len()).map(|i| (0.11 * i as f64).cos()).collect();
    for cnhw in [false, true] {
        let to_l = |v: &[f64], ch: usize, plane: usize| if cnhw { swap_outer(v, b, ch, plane) } else { v.to_vec() };
        let to_nchw = |v: &[f64]| if cnhw { swap_outer(v, o, b, p) } else { v.to_vec() };
        let name = format!("{case:?} cnhw {cnhw}");
        let (x32, w32) = (f32s(&to_l(&x, c, op.in_h * op.in_w)), f32s(&wt));
        let mut y = vec![f32::NAN; want.len()];
        kernel(&op, cnhw, &x32, &w32, &mut y, winograd::Store::Write);
        assert_close(&format!("{name} y"), &to_nchw(&f64s(&y)), &want, 2e-5);
        let mut y = vec![1.0f32; want.len()];
        kernel(&op, cnhw, &x32, &w32, &mut y, winograd::Store::Add);
        let plus_one: Vec<f64> = want.iter().map(|v| v + 1.0).collect();
        assert_close(&format!("{name} y added"), &to_nchw(&f64s(&y)), &plus_one, 2e-5);
        let (k32, s32, r32) = (f32s(&scale), f32s(&shift), f32s(&to_l(&res, o, p)));
        for (with_res, relu) in [(false, false), (true, true), (false, true)] {
            let store = winograd::Store::Epilogue {
                scale: Some(&k32[..]),
                shift: Some(&s32[..]),
                res: with_res.then_some(&r32[..]),
                relu,
            };
            let mut y = vec![f32::NAN; want.len()];
            kernel(&op, cnhw, &x32, &w32, &mut y, store);
            let expect: Vec<f64> = (0..want.len())
                .map(|i| {
                    let ch = i / p % o;
                    let t = want[i] * scale[ch] + shift[ch] + if with_res { res[i] } else { 0.0 };
                    if relu {
                        t.max(0.0)
                    } else {
                        t
                    }
                })
                .collect();
            let what = format!("{name} epilogue res {with_res} relu {relu}");
            assert_close(&what, &to_nchw(&f64s(&y)), &expect, 2e-5);
        }
    }
}

/// The 1x1 kernel (`pointwise.rs`) against the naive loop (`check_store_kernel`): output
/// channels off the 8-channel blocks, pixel counts off the 16 lanes, the 48-column blocks and the
/// 384-column chunks (batch 1's 7x7: output channels split between tasks), 64 input channels and
/// 256 outputs. Two threads.
#[test]
fn pointwise_matches_naive_loop() {
    if !crate::wide::wide_vectors() {
        eprintln!("no AVX-512 here: the pointwise kernel does not run");
        return;
    }
    let cases =
        [(1, 1, 1, 1, 1), (2, 3, 5, 3, 5), (1, 16, 20, 7, 7), (3, 64, 24, 20, 21), (8, 40, 9, 4, 4), (1, 5, 256, 2, 3)];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for (b, c, o, h, w) in cases {
            let case = Case { batched: true, b, c, o, h, w, cfg: Conv2dConfig::new(1) };
            assert!(pointwise::applies::<f32>(&case.op()));
            check_store_kernel(&case, pointwise::forward);
        }
    });
}

/// The stride-2 phase-plane kernel (`phases.rs`) against the naive loop (`check_store_kernel`):
/// the 7x7 stem's geometry (padding 3, smaller), 3x3 and 2x2 kernels, paddings 0-2, odd input
/// sides (the last phase row and column partly padding), output rows of 1, 2, 4, 5 and 7 vectors
/// and off the 16 lanes, output channels off the 8-channel blocks. Two threads.
#[test]
fn phases_match_naive_loop() {
    if !crate::wide::wide_vectors() {
        eprintln!("no AVX-512 here: the phase-plane kernel does not run");
        return;
    }
    let cases = [
        (2, 3, 64, 40, 38, 7, 3),
        (1, 1, 5, 9, 9, 3, 1),
        (3, 4, 9, 17, 120, 3, 1),
        (1, 2, 16, 130, 160, 2, 0),
        (1, 3, 8, 9, 224, 7, 3),
        (2, 3, 8, 11, 13, 5, 2),
    ];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for (b, c, o, h, w, k, pad) in cases {
            let case = Case { batched: true, b, c, o, h, w, cfg: Conv2dConfig::new(k).stride(2).padding(pad) };
            assert!(phases::applies::<f32>(&case.op()));
            check_store_kernel(&case, phases::forward);
        }
    });
}

/// The direct 3x3 kernel's stores (`direct::forward`: write, add, the plans' epilogue)
/// against the naive loop (`check_store_kernel`), on planes of one vector, several, and 256
/// positions and more (vectors moved onto the input's cache lines). Two threads.
#[test]
fn direct_stores_match_naive_loop() {
    if !crate::wide::wide_vectors() {
        eprintln!("no AVX-512 here: the direct kernels do not run");
        return;
    }
    let cases = [(2, 3, 5, 3, 5), (3, 16, 20, 16, 16), (2, 9, 17, 7, 7), (1, 8, 64, 20, 24)];
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
    pool.install(|| {
        for (b, c, o, h, w) in cases {
            let case = Case { batched: true, b, c, o, h, w, cfg: Conv2dConfig::new(3).padding(1) };
            assert!(direct::applies::<f32>(&case.op()));
            check_store_kernel(&case, direct::forward);
        }
    });
}
