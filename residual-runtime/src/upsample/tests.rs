//! Upsampling against PyTorch's formulas written out as naive f64 loops, and its gradients
//! against central finite differences.

use dfdx::prelude::*;

use super::Upsample2d;

const B: usize = 2;
const C: usize = 3;
const H: usize = 3;
const W: usize = 4;

fn input() -> Vec<f64> {
    (0..B * C * H * W).map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0).collect()
}

/// PyTorch's `F.interpolate(x, size, mode="nearest")`.
fn nearest(x: &[f64], oh: usize, ow: usize) -> Vec<f64> {
    let mut y = Vec::new();
    for bc in 0..B * C {
        for i in 0..oh {
            for j in 0..ow {
                let (si, sj) = ((i * H) / oh, (j * W) / ow);
                y.push(x[bc * H * W + si * W + sj]);
            }
        }
    }
    y
}

/// PyTorch's `F.interpolate(x, size, mode="bilinear", align_corners=True)`.
fn bilinear(x: &[f64], oh: usize, ow: usize) -> Vec<f64> {
    let src = |o: usize, n_out: usize, n_in: usize| {
        if n_out == 1 {
            0.0
        } else {
            o as f64 * (n_in - 1) as f64 / (n_out - 1) as f64
        }
    };
    let mut y = Vec::new();
    for bc in 0..B * C {
        for i in 0..oh {
            for j in 0..ow {
                let (fy, fx) = (src(i, oh, H), src(j, ow, W));
                let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
                let (y1, x1) = ((y0 + 1).min(H - 1), (x0 + 1).min(W - 1));
                let (dy, dx) = (fy - y0 as f64, fx - x0 as f64);
                let at = |r: usize, c: usize| x[bc * H * W + r * W + c];
                y.push(
                    (1.0 - dy) * ((1.0 - dx) * at(y0, x0) + dx * at(y0, x1))
                        + dy * ((1.0 - dx) * at(y1, x0) + dx * at(y1, x1)),
                );
            }
        }
    }
    y
}

type X = Tensor<Rank4<B, C, H, W>, f64, Cpu>;

fn run(x: X, bilinear: bool) -> Tensor<Rank4<B, C, 6, 8>, f64, Cpu, OwnedTape<f64, Cpu>> {
    let x = x.leaky_traced();
    if bilinear {
        Cpu::try_upsample_bilinear(x, Const::<6>, Const::<8>).unwrap()
    } else {
        Cpu::try_upsample_nearest(x, Const::<6>, Const::<8>).unwrap()
    }
}

#[test]
fn forward_matches_pytorchs_formulas() {
    let dev: Cpu = Default::default();
    let xs = input();
    let x: X = dev.tensor_from_vec(xs.clone(), (Const, Const, Const, Const));
    assert_eq!(run(x.clone(), false).as_vec(), nearest(&xs, 6, 8));
    // dfdx computes the source coordinates in f32 even for f64 tensors: weights agree to ~1e-7.
    let got = run(x, true).as_vec();
    for (i, (g, w)) in got.iter().zip(bilinear(&xs, 6, 8)).enumerate() {
        assert!((g - w).abs() < 1e-6, "bilinear [{i}]: {g} vs {w}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let dev: Cpu = Default::default();
    let xs = input();
    let r: Vec<f64> = (0..B * C * 6 * 8).map(|i| ((i * 13 % 17) as f64 - 8.0) / 5.0).collect();
    for bilinear_mode in [false, true] {
        let loss = |v: &[f64]| -> f64 {
            let y = run(dev.tensor_from_vec(v.to_vec(), (Const, Const, Const, Const)), bilinear_mode).as_vec();
            y.iter().zip(&r).map(|(a, b)| a * b).sum()
        };
        let x: X = dev.tensor_from_vec(xs.clone(), (Const, Const, Const, Const));
        let y = run(x.clone(), bilinear_mode);
        let rt: Tensor<Rank4<B, C, 6, 8>, f64, Cpu> = dev.tensor_from_vec(r.clone(), (Const, Const, Const, Const));
        let g = (y * rt).sum::<Rank0, _>().backward();
        let gx = g.get(&x).as_vec();
        for i in 0..xs.len() {
            let (mut p, mut m) = (xs.clone(), xs.clone());
            p[i] += 1e-6;
            m[i] -= 1e-6;
            let numeric = (loss(&p) - loss(&m)) / 2e-6;
            assert!((gx[i] - numeric).abs() < 1e-6, "bilinear {bilinear_mode} [{i}]: {} vs {numeric}", gx[i]);
        }
    }
}

/// `try_resample` against PyTorch's definitions written out (bilinear with half-pixel centres;
/// adaptive average bins), and its gradient against finite differences.
#[test]
fn separable_resampling_matches_pytorch_and_its_gradient() {
    use super::{try_resample, Resample};
    let dev: Cpu = Default::default();
    let xs = input();
    let naive = |kind: Resample, oh: usize, ow: usize, xs: &[f64]| -> Vec<f64> {
        // One axis at a time, from PyTorch's formulas.
        let weights = |n_in: usize, n_out: usize, o: usize| -> Vec<(usize, f64)> {
            match kind {
                Resample::BilinearHalfPixel => {
                    let src = ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
                    let i0 = (src.floor() as usize).min(n_in - 1);
                    let l = src - i0 as f64;
                    vec![(i0, 1.0 - l), ((i0 + 1).min(n_in - 1), l)]
                }
                Resample::AdaptiveAverage => {
                    let (s, e) = ((o * n_in) / n_out, ((o + 1) * n_in).div_ceil(n_out));
                    (s..e).map(|i| (i, 1.0 / (e - s) as f64)).collect()
                }
            }
        };
        let mut y = Vec::new();
        for bc in 0..B * C {
            for i in 0..oh {
                for j in 0..ow {
                    let mut v = 0.0;
                    for (r, wr) in weights(H, oh, i) {
                        for (c, wc) in weights(W, ow, j) {
                            v += wr * wc * xs[bc * H * W + r * W + c];
                        }
                    }
                    y.push(v);
                }
            }
        }
        y
    };
    let x: X = dev.tensor_from_vec(xs.clone(), (Const, Const, Const, Const));
    let up: Tensor<Rank4<B, C, 6, 8>, f64, Cpu> = try_resample(x.clone(), Resample::BilinearHalfPixel).unwrap();
    for (a, b) in up.as_vec().iter().zip(naive(Resample::BilinearHalfPixel, 6, 8, &xs)) {
        assert!((a - b).abs() < 1e-12, "bilinear: {a} vs {b}");
    }
    // 3 -> 2 and 4 -> 3: uneven, overlapping bins.
    let pooled: Tensor<Rank4<B, C, 2, 3>, f64, Cpu> = try_resample(x.clone(), Resample::AdaptiveAverage).unwrap();
    for (a, b) in pooled.as_vec().iter().zip(naive(Resample::AdaptiveAverage, 2, 3, &xs)) {
        assert!((a - b).abs() < 1e-12, "adaptive: {a} vs {b}");
    }
    // Gradient of sum(y * r) against central differences of the naive forward.
    let r: Vec<f64> = (0..B * C * 6 * 8).map(|i| ((i * 13 % 17) as f64 - 8.0) / 5.0).collect();
    let y: Tensor<Rank4<B, C, 6, 8>, f64, Cpu, _> = try_resample(x.leaky_trace(), Resample::BilinearHalfPixel).unwrap();
    let rt: Tensor<Rank4<B, C, 6, 8>, f64, Cpu> = dev.tensor_from_vec(r.clone(), (Const, Const, Const, Const));
    let g = (y * rt).sum::<Rank0, _>().backward();
    let gx = g.get(&x).as_vec();
    for i in 0..xs.len() {
        let (mut p, mut m) = (xs.clone(), xs.clone());
        p[i] += 1e-6;
        m[i] -= 1e-6;
        let f = |v: &[f64]| naive(Resample::BilinearHalfPixel, 6, 8, v).iter().zip(&r).map(|(a, b)| a * b).sum::<f64>();
        let numeric = (f(&p) - f(&m)) / 2e-6;
        assert!((gx[i] - numeric).abs() < 1e-6, "[{i}]: {} vs {numeric}", gx[i]);
    }
}
