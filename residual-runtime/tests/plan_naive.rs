//! A hand-built plan against naive f64 loops written here: conv (3x3, padding 1) -> batch norm ->
//! add a 1x1-conv projection -> relu -> global average pool -> linear, in inference (running
//! statistics, folded by the plan into the conv) and in training (batch statistics, and the
//! running-statistics update with the unbiased variance). Independent of the macro and of the
//! layer-by-layer path.

use dfdx::prelude::*;
use residual_runtime::plan::{self, ConvGeom, ParamSpec, Plan, Step};

const B: usize = 2;
const C: usize = 2;
const O: usize = 4;
const H: usize = 5;
const K: usize = 3;
const CLASSES: usize = 3;

/// 0 input, 1 conv, 2 + bias, 3 batch norm, 4 projection, 5 add, 6 relu, 7 pooled, 8 logits.
const VALUES: [[usize; 3]; 9] =
    [[C, H, H], [O, H, H], [O, H, H], [O, H, H], [O, H, H], [O, H, H], [O, H, H], [O, 1, 1], [CLASSES, 1, 1]];
const PARAMS: [ParamSpec; 9] = [
    ParamSpec { len: O * C * K * K, trainable: true }, // 0 conv weight
    ParamSpec { len: O, trainable: true },             // 1 bn weight
    ParamSpec { len: O, trainable: true },             // 2 bn bias
    ParamSpec { len: O, trainable: false },            // 3 running mean
    ParamSpec { len: O, trainable: false },            // 4 running var
    ParamSpec { len: O * C, trainable: true },         // 5 projection weight (1x1)
    ParamSpec { len: CLASSES * O, trainable: true },   // 6 linear weight
    ParamSpec { len: CLASSES, trainable: true },       // 7 linear bias
    ParamSpec { len: O, trainable: true },             // 8 conv bias
];
const STEPS: [Step; 8] = [
    Step::Conv {
        input: 0,
        output: 1,
        weight: 0,
        geom: ConvGeom { out_channels: O, kernel: K, stride: 1, padding: 1, dilation: 1, groups: 1 },
    },
    Step::Bias { input: 1, output: 2, bias: 8 },
    Step::BatchNorm { input: 2, output: 3, weight: 1, bias: 2, running_mean: 3, running_var: 4 },
    Step::Conv {
        input: 0,
        output: 4,
        weight: 5,
        geom: ConvGeom { out_channels: O, kernel: 1, stride: 1, padding: 0, dilation: 1, groups: 1 },
    },
    Step::Add { a: 3, b: 4, output: 5 },
    Step::Relu { input: 5, output: 6 },
    Step::GlobalAvgPool { input: 6, output: 7 },
    Step::Linear { input: 7, output: 8, weight: 6, bias: Some(7) },
];

fn values(seed: u64, n: usize) -> Vec<f64> {
    // A fixed, simple stream: no generator shared with the code under test.
    (0..n).map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f64 / 500.0) - 1.0).collect()
}

/// The naive reference; `train` uses batch statistics and returns the updated running ones.
fn naive(x: &[f64], p: &[Vec<f64>], train: bool) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let conv = |w: &[f64], k: usize, pad: usize| {
        let mut y = vec![0.0; B * O * H * H];
        for b in 0..B {
            for o in 0..O {
                for yy in 0..H {
                    for xx in 0..H {
                        let mut s = 0.0;
                        for c in 0..C {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let (iy, ix) = (yy + ky, xx + kx);
                                    if iy < pad || ix < pad || iy - pad >= H || ix - pad >= H {
                                        continue;
                                    }
                                    s += w[((o * C + c) * k + ky) * k + kx]
                                        * x[((b * C + c) * H + iy - pad) * H + ix - pad];
                                }
                            }
                        }
                        y[((b * O + o) * H + yy) * H + xx] = s;
                    }
                }
            }
        }
        y
    };
    let mut a = conv(&p[0], K, 1);
    for (i, v) in a.iter_mut().enumerate() {
        *v += p[8][(i / (H * H)) % O];
    }
    let proj = conv(&p[5], 1, 0);
    let (mut rm, mut rv) = (p[3].clone(), p[4].clone());
    let n = (B * H * H) as f64;
    let mut pooled = [0.0; B * O];
    for o in 0..O {
        let vals: Vec<f64> = (0..B).flat_map(|b| a[(b * O + o) * H * H..][..H * H].to_vec()).collect();
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let (m, v) = if train { (mean, var) } else { (p[3][o], p[4][o]) };
        if train {
            rm[o] = 0.9 * rm[o] + 0.1 * mean;
            rv[o] = 0.9 * rv[o] + 0.1 * var * n / (n - 1.0);
        }
        for b in 0..B {
            for i in 0..H * H {
                let at = (b * O + o) * H * H + i;
                let t = (a[at] - m) / (v + 1e-5).sqrt() * p[1][o] + p[2][o] + proj[at];
                pooled[b * O + o] += t.max(0.0) / (H * H) as f64;
            }
        }
    }
    let mut out = vec![0.0; B * CLASSES];
    for b in 0..B {
        for k in 0..CLASSES {
            out[b * CLASSES + k] = p[7][k] + (0..O).map(|o| p[6][k * O + o] * pooled[b * O + o]).sum::<f64>();
        }
    }
    (out, rm, rv)
}

#[test]
fn fused_plan_matches_naive_loops_in_inference_and_training() {
    let plan = Plan { values: &VALUES, params: &PARAMS, steps: &STEPS, output: 8 };
    let f = plan::fusion(&plan).expect("a valid plan");
    // conv + bias + bn + add + relu is one node; the projection, pool and linear are three more.
    assert_eq!((f.nodes, f.conv_bn, f.conv_add, f.relu), (4, 1, 1, 1), "{f:?}");

    let dev = Cpu::default();
    let mut p: Vec<Vec<f64>> = PARAMS.iter().enumerate().map(|(i, s)| values(i as u64 + 1, s.len)).collect();
    p[4] = p[4].iter().map(|v| v.abs() + 0.5).collect(); // a variance
    let xv = values(99, B * C * H * H);
    let x: Tensor<Rank4<B, C, H, H>, f64, Cpu> = dev.tensor_from_vec(xv.clone(), (Const, Const, Const, Const));
    let tensors: Vec<Tensor<(usize,), f64, Cpu>> =
        p.iter().map(|v| dev.tensor_from_vec(v.clone(), (v.len(),))).collect();
    let out_shape = (Const::<B>, Const::<CLASSES>, Const::<1>, Const::<1>);

    let mut params = plan::Params::<f64, Cpu>::with_capacity(PARAMS.len());
    for (t, s) in tensors.iter().zip(&PARAMS) {
        params.push(t, s.trainable).expect("a contiguous tensor");
    }
    let y = plan::infer(&plan, &params, x.clone(), out_shape).expect("runs").as_vec();
    let (want, _, _) = naive(&xv, &p, false);
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "inference: plan {a} vs naive {b}");
    }

    let mut params = plan::Params::<f64, Cpu>::with_capacity(PARAMS.len());
    for (t, s) in tensors.iter().zip(&PARAMS) {
        params.push(t, s.trainable).expect("a contiguous tensor");
    }
    let y = plan::train(&plan, &mut params, x, out_shape).expect("runs").as_vec();
    let (want, rm, rv) = naive(&xv, &p, true);
    for (a, b) in y.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "training: plan {a} vs naive {b}");
    }
    let mut mean: Tensor<(usize,), f64, Cpu> = dev.zeros_like(&(O,));
    let mut var: Tensor<(usize,), f64, Cpu> = dev.zeros_like(&(O,));
    params.store(3, &mut mean);
    params.store(4, &mut var);
    for (got, want) in [(mean.as_vec(), rm), (var.as_vec(), rv)] {
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "running statistics: plan {a} vs naive {b}");
        }
    }
}
