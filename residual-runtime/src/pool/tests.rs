//! Pooling vs. two independent references: a naive f64 loop written here, and numpy fixtures
//! (`scripts/reference/pool_fixtures.py`). Gradients go through dfdx's tape.

use dfdx::prelude::*;

use super::*;
use crate::layers::{AvgPool2d, MaxPool2d};

/// PyTorch's pooling written out plainly, in f64, independent of `cpu.rs`: returns the output
/// and the gradient of `sum(out * w)` with respect to the input. Padding is handled by testing
/// each window position against the borders, not by clipping ranges.
fn naive(kind: PoolKind, cfg: Pool2dConfig, nchw: [usize; 4], x: &[f64], w: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let [b, c, h, wd] = nchw;
    let (k, s, p) = (cfg.kernel as isize, cfg.stride as isize, cfg.padding as isize);
    let oh = (h as isize + 2 * p - k) / s + 1;
    let ow = (wd as isize + 2 * p - k) / s + 1;
    let mut out = Vec::new();
    let mut grad = vec![0.0; x.len()];
    let mut oi = 0;
    for plane in 0..b * c {
        let at = |y: isize, xx: isize| plane * h * wd + y as usize * wd + xx as usize;
        for oy in 0..oh {
            for ox in 0..ow {
                let inside = |y: isize, xx: isize| y >= 0 && xx >= 0 && y < h as isize && xx < wd as isize;
                let mut best: Option<(f64, usize)> = None;
                let mut sum = 0.0;
                for dy in 0..k {
                    for dx in 0..k {
                        let (y, xx) = (oy * s - p + dy, ox * s - p + dx);
                        if !inside(y, xx) {
                            continue;
                        }
                        let v = x[at(y, xx)];
                        sum += v;
                        if best.is_none_or(|(m, _)| v > m) {
                            best = Some((v, at(y, xx)));
                        }
                    }
                }
                match kind {
                    PoolKind::Max => {
                        let (m, i) = best.expect("every window holds a real pixel");
                        out.push(m);
                        grad[i] += w[oi];
                    }
                    PoolKind::Avg => {
                        out.push(sum / (k * k) as f64);
                        for dy in 0..k {
                            for dx in 0..k {
                                let (y, xx) = (oy * s - p + dy, ox * s - p + dx);
                                if inside(y, xx) {
                                    grad[at(y, xx)] += w[oi] / (k * k) as f64;
                                }
                            }
                        }
                    }
                }
                oi += 1;
            }
        }
    }
    (out, grad)
}

/// Values with many ties (multiples of 0.25), so the first-maximum rule matters.
fn values(n: usize, seed: usize) -> Vec<f64> {
    (0..n).map(|i| (((i + seed) * 7919 + seed * 31) % 17) as f64 * 0.25 - 2.0).collect()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// Runs the checked tensor-level op with a tape and returns (output, d sum(out*w) / dx).
fn run_op(kind: PoolKind, cfg: Pool2dConfig, nchw: [usize; 4], x: &[f64], w: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let dev: Cpu = Default::default();
    let shape = (nchw[0], nchw[1], nchw[2], nchw[3]);
    let xt: Tensor<(usize, usize, usize, usize), f64, _> = dev.tensor_from_vec(x.to_vec(), shape);
    let y = match kind {
        PoolKind::Max => try_max_pool2d(xt.leaky_trace(), cfg),
        PoolKind::Avg => try_avg_pool2d(xt.leaky_trace(), cfg),
    }
    .expect("valid config");
    let out = y.as_vec();
    let wt = dev.tensor_from_vec(w.to_vec(), *y.shape());
    let g = (y * wt).sum().backward();
    (out, g.get(&xt).as_vec())
}

#[test]
fn matches_naive_loop_over_configs() {
    // kernel 2/3, stride 1/2, padding 0/1, square and not, batch 1 and 3; rows long enough for
    // the max pool's inner columns (kernel 3 stride 2 has its own loop there), odd and even.
    // Kernel 5 padding 2 on rows of 1 and 2: no window lies inside the row.
    let configs = [(2, 2, 0), (2, 1, 0), (3, 2, 1), (3, 1, 1), (2, 2, 1), (3, 1, 0), (3, 2, 0), (5, 1, 2)];
    let shapes = [[1, 2, 5, 5], [3, 2, 6, 4], [1, 1, 4, 7], [1, 1, 3, 20], [2, 1, 4, 21], [1, 1, 2, 1], [1, 2, 3, 2]];
    for (ci, &(k, s, p)) in configs.iter().enumerate() {
        let cfg = Pool2dConfig::new(k).with_stride(s).with_padding(p);
        for (si, &nchw) in shapes.iter().enumerate() {
            let x = values(nchw.iter().product(), ci * 10 + si);
            // (The small shapes have no output under the larger unpadded kernels.)
            let (Some(oh), Some(ow)) = (cfg.output_size(nchw[2]), cfg.output_size(nchw[3])) else {
                continue;
            };
            let w = values(nchw[0] * nchw[1] * oh * ow, 3 + si);
            for kind in [PoolKind::Max, PoolKind::Avg] {
                let (want_y, want_g) = naive(kind, cfg, nchw, &x, &w);
                let (y, g) = run_op(kind, cfg, nchw, &x, &w);
                let what = format!("{kind:?} {cfg:?} {nchw:?}");
                assert_close(&y, &want_y, 1e-12, &format!("{what} output"));
                assert_close(&g, &want_g, 1e-12, &format!("{what} grad"));
            }
        }
    }
}

struct Case {
    cfg: Pool2dConfig,
    nchw: [usize; 4],
    out_hw: [usize; 2],
    input: Vec<f64>,
    w: Vec<f64>,
    max: Vec<f64>,
    max_grad: Vec<f64>,
    avg: Vec<f64>,
    avg_grad: Vec<f64>,
}

fn fixtures() -> Vec<Case> {
    let text = include_str!("fixtures/pool_cases.txt");
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let tag = parts.next().expect("a tag per line");
        let nums: Vec<f64> = parts.map(|v| v.parse().expect("a number")).collect();
        if tag == "case" {
            let u: Vec<usize> = nums.iter().map(|&v| v as usize).collect();
            cases.push(Case {
                cfg: Pool2dConfig::new(u[0]).with_stride(u[1]).with_padding(u[2]),
                nchw: [u[3], u[4], u[5], u[6]],
                out_hw: [u[7], u[8]],
                input: vec![],
                w: vec![],
                max: vec![],
                max_grad: vec![],
                avg: vec![],
                avg_grad: vec![],
            });
            continue;
        }
        let case = cases.last_mut().expect("a case line first");
        match tag {
            "input" => case.input = nums,
            "w" => case.w = nums,
            "max" => case.max = nums,
            "max_grad" => case.max_grad = nums,
            "avg" => case.avg = nums,
            "avg_grad" => case.avg_grad = nums,
            other => panic!("unknown fixture tag {other}"),
        }
    }
    cases
}

#[test]
fn matches_numpy_fixtures_in_f64_and_f32() {
    let cases = fixtures();
    assert_eq!(cases.len(), 6);
    for case in &cases {
        assert_eq!(case.cfg.output_size(case.nchw[2]), Some(case.out_hw[0]));
        assert_eq!(case.cfg.output_size(case.nchw[3]), Some(case.out_hw[1]));
        for (kind, want_y, want_g) in
            [(PoolKind::Max, &case.max, &case.max_grad), (PoolKind::Avg, &case.avg, &case.avg_grad)]
        {
            let what = format!("{kind:?} {:?} {:?}", case.cfg, case.nchw);
            let (y, g) = run_op(kind, case.cfg, case.nchw, &case.input, &case.w);
            assert_close(&y, want_y, 1e-12, &what);
            assert_close(&g, want_g, 1e-12, &what);

            // The f32 kernel, on the same values (exact in f32: multiples of 0.25 and 0.5).
            let dev: Cpu = Default::default();
            let [b, c, h, w] = case.nchw;
            let x32: Vec<f32> = case.input.iter().map(|&v| v as f32).collect();
            let xt = dev.tensor_from_vec(x32, (b, c, h, w));
            let y = match kind {
                PoolKind::Max => try_max_pool2d(xt.leaky_trace(), case.cfg),
                PoolKind::Avg => try_avg_pool2d(xt.leaky_trace(), case.cfg),
            }
            .unwrap();
            let w32: Vec<f32> = case.w.iter().map(|&v| v as f32).collect();
            let y32: Vec<f64> = y.as_vec().iter().map(|&v| v as f64).collect();
            let wt = dev.tensor_from_vec(w32, *y.shape());
            let g = (y * wt).sum().backward();
            let g32: Vec<f64> = g.get(&xt).as_vec().iter().map(|&v| v as f64).collect();
            assert_close(&y32, want_y, 1e-5, &format!("f32 {what}"));
            assert_close(&g32, want_g, 1e-5, &format!("f32 {what} grad"));
        }
    }
}

#[test]
fn layers_match_the_op_batched_and_unbatched() {
    let dev: Cpu = Default::default();
    let cfg = Pool2dConfig::new(3).with_stride(2).with_padding(1);
    let x = values(2 * 3 * 7 * 6, 4);
    let (want, _) = naive(PoolKind::Max, cfg, [2, 3, 7, 6], &x, &vec![0.0; 2 * 3 * 4 * 3]);
    let xt: Tensor<Rank4<2, 3, 7, 6>, f64, _> = dev.tensor(x.clone());
    let y: Tensor<Rank4<2, 3, 4, 3>, f64, _> = MaxPool2d::<3, 2, 1, 4, 3>.forward(xt.clone());
    assert_close(&y.as_vec(), &want, 0.0, "MaxPool2d batched");

    // Unbatched: the first image alone.
    let x0: Tensor<Rank3<3, 7, 6>, f64, _> = dev.tensor(x[..3 * 7 * 6].to_vec());
    let y0: Tensor<Rank3<3, 4, 3>, f64, _> = MaxPool2d::<3, 2, 1, 4, 3>.forward(x0);
    assert_close(&y0.as_vec(), &want[..3 * 4 * 3], 0.0, "MaxPool2d unbatched");

    // A usize batch dim, avg pool, with the tape.
    let (want, want_g) = naive(PoolKind::Avg, Pool2dConfig::new(2), [2, 3, 7, 6], &x, &vec![1.0; 2 * 3 * 3 * 3]);
    let xb: Tensor<(usize, Const<3>, Const<7>, Const<6>), f64, _> =
        dev.tensor_from_vec(x.clone(), (2, Const, Const, Const));
    let y = AvgPool2d::<2, 2, 0, 3, 3>.forward(xb.leaky_trace());
    assert_close(&y.as_vec(), &want, 1e-12, "AvgPool2d");
    let g = y.sum().backward();
    assert_close(&g.get(&xb).as_vec(), &want_g, 1e-12, "AvgPool2d grad");

    // `try_forward_checked` takes any shape.
    let y = MaxPool2d::<3, 2, 1, 4, 3>.try_forward_checked(xt).unwrap();
    assert_eq!(y.shape().concrete(), [2, 3, 4, 3]);
}

#[test]
fn non_contiguous_input_is_pooled_by_value() {
    // A broadcast view has stride-0 dims; the op must read values, not the physical buffer.
    let dev: Cpu = Default::default();
    let row: Tensor<Rank1<4>, f64, _> = dev.tensor([1.0, 5.0, 2.0, 3.0]);
    let img: Tensor<Rank4<1, 2, 4, 4>, f64, _> = row.broadcast::<_, Axes3<0, 1, 2>>();
    let y = try_max_pool2d(img, Pool2dConfig::new(2)).unwrap();
    assert_eq!(y.as_vec(), vec![5.0, 3.0, 5.0, 3.0, 5.0, 3.0, 5.0, 3.0]);
}

#[test]
fn gradient_accumulates_when_the_input_is_used_twice() {
    // Backward adds into the input's gradient: two pools of one input sum their gradients.
    let dev: Cpu = Default::default();
    let x: Tensor<Rank3<1, 2, 2>, f64, _> = dev.tensor([[[1.0, 4.0], [3.0, 2.0]]]);
    let a = try_max_pool2d(x.leaky_trace(), Pool2dConfig::new(2)).unwrap();
    let b = try_avg_pool2d(x.leaky_trace(), Pool2dConfig::new(2)).unwrap();
    let g = (a.sum() + b.sum()).backward();
    assert_eq!(g.get(&x).as_vec(), vec![0.25, 1.25, 0.25, 0.25]);
}

#[test]
fn bad_inputs_are_errors_that_name_the_shapes() {
    let dev: Cpu = Default::default();
    let x: Tensor<(usize, usize, usize, usize), f32, _> = dev.zeros_like(&(2, 3, 1, 5));
    let err = try_max_pool2d(x.clone(), Pool2dConfig::new(3)).unwrap_err().to_string();
    assert!(err.contains("max_pool2d(kernel=3, stride=3, padding=0)"), "{err}");
    assert!(err.contains("[2, 3, 1, 5]"), "{err}");
    assert!(err.contains("[B, C, H, W]"), "{err}");

    let err = try_avg_pool2d(x.clone(), Pool2dConfig::new(2).with_padding(2)).unwrap_err().to_string();
    assert!(err.contains("padding <= kernel / 2 = 1") && err.contains("padding = 2"), "{err}");

    let err = try_avg_pool2d(x, Pool2dConfig::new(2).with_stride(0)).unwrap_err().to_string();
    assert!(err.contains("stride >= 1"), "{err}");

    let unbatched: Tensor<(usize, usize, usize), f32, _> = dev.zeros_like(&(3, 0, 4));
    let err = try_max_pool2d(unbatched, Pool2dConfig::new(1)).unwrap_err().to_string();
    assert!(err.contains("[C, H, W]") && err.contains("[3, 0, 4]"), "{err}");
}

#[test]
fn kernel_entries_refuse_ops_that_do_not_fit_their_buffers() {
    let dev = Cpu::default();
    let buf = |n: usize| -> <Cpu as Storage<f32>>::Vec { dev.try_alloc_len(n).unwrap() };
    let good = pool2d_op(&(2usize, 3usize, 6usize, 6usize), Pool2dConfig::new(2)).unwrap();
    assert_eq!(good.buffer_lens(), Some([216, 54]));
    assert!(dev.pool2d_forward(PoolKind::Max, &good, &buf(216), &mut buf(54)).is_ok());
    assert!(dev.pool2d_backward(PoolKind::Avg, &good, &buf(216), &buf(54), &mut buf(216), &buf(54)).is_ok());
    // Short buffers are an error, not a panic or a partial result.
    assert!(dev.pool2d_forward(PoolKind::Max, &good, &buf(215), &mut buf(54)).is_err());
    assert!(dev.pool2d_backward(PoolKind::Max, &good, &buf(216), &buf(54), &mut buf(216), &buf(53)).is_err());
    // Windows made only of padding (max pooling would index outside the plane), an output size
    // that does not follow from the input, a zero plane, a product that overflows.
    let all_padding = Pool2dOp { padding: 2, out_h: 5, out_w: 5, ..good };
    assert!(dev.pool2d_forward(PoolKind::Max, &all_padding, &buf(216), &mut buf(150)).is_err());
    let wider = Pool2dOp { out_w: 4, ..good };
    assert!(dev.pool2d_forward(PoolKind::Avg, &wider, &buf(216), &mut buf(72)).is_err());
    let empty = Pool2dOp { in_h: 0, out_h: 0, ..good };
    assert!(dev.pool2d_forward(PoolKind::Avg, &empty, &buf(0), &mut buf(0)).is_err());
    let huge = Pool2dOp { batch: 1 << 40, channels: 1 << 40, ..good };
    assert_eq!(huge.buffer_lens(), None);
    assert_eq!(Pool2dConfig::new(3).with_padding(usize::MAX / 2 + 1).output_size(4), None);
}

/// Max pooling's forward value with NaNs in some windows, on both of its paths (the separable one
/// for rows up to `SEPARABLE_MAX_W`, the argmax loop beyond): a window holding a NaN gives NaN
/// (as PyTorch's CPU kernel), every other window its maximum, as the naive loop computes it.
#[test]
fn max_forward_propagates_nan_on_both_paths() {
    for (h, w) in [(9, 11), (5, 300)] {
        let op = Pool2dOp {
            batch: 1,
            channels: 2,
            kernel: 3,
            stride: 2,
            padding: 1,
            in_h: h,
            in_w: w,
            out_h: (h - 1) / 2 + 1,
            out_w: (w - 1) / 2 + 1,
        };
        let mut x: Vec<f64> = (0..2 * h * w).map(|i| ((i * 37 % 101) as f64 - 50.0) / 7.0).collect();
        let nans = [3 * w + 4, h * w + w - 1, 2 * h * w - 1];
        for &i in &nans {
            x[i] = f64::NAN;
        }
        let clean: Vec<f64> = x.iter().map(|v| if v.is_nan() { 0.0 } else { *v }).collect();
        let cfg = Pool2dConfig::new(3).with_stride(2).with_padding(1);
        let (want, _) = naive(PoolKind::Max, cfg, [1, 2, h, w], &clean, &vec![0.0; op.channels * op.out_h * op.out_w]);
        let mut out = vec![0.0; want.len()];
        super::cpu::forward(PoolKind::Max, &op, &x, &mut out);
        for plane in 0..2 {
            for oy in 0..op.out_h {
                for ox in 0..op.out_w {
                    let i = (plane * op.out_h + oy) * op.out_w + ox;
                    let window_has_nan = nans.iter().any(|&n| {
                        let (p, y, xx) = (n / (h * w), n % (h * w) / w, n % w);
                        p == plane && y + 1 >= 2 * oy && y <= 2 * oy + 1 && xx + 1 >= 2 * ox && xx <= 2 * ox + 1
                    });
                    if window_has_nan {
                        assert!(out[i].is_nan(), "({h}, {w}) plane {plane} [{oy}, {ox}]: {} should be NaN", out[i]);
                    } else {
                        assert_eq!(out[i], want[i], "({h}, {w}) plane {plane} [{oy}, {ox}]");
                    }
                }
            }
        }
    }
}
