//! Gradient check of a small residual block built by hand from the runtime's layers, in f64:
//! conv -> batch norm (training) -> relu -> max pool -> residual (identity + conv). Every
//! gradient the tape computes (input and each parameter) is compared with central differences
//! of the forward pass.
//!
//! Run: `cargo test --release -p residual-runtime --test finite_differences`

use dfdx::prelude::*;
use residual_runtime::layers::{BatchNorm2d, Conv2d, MaxPool2d};

const B: usize = 2;
const C: usize = 3;
const S: usize = 6;

type Conv1 = Conv2d<C, C, 3, 1, 1, 1, 1, C, S, S, f64, Cpu>;
type Bn = BatchNorm2d<C, f64, Cpu>;
type Pool = MaxPool2d<2, 2, 0, 3, 3>;
type Conv2 = Conv2d<C, C, 3, 1, 1, 1, 1, C, 3, 3, f64, Cpu>;

/// The block's inputs and parameters as flat vectors, so each element can be perturbed.
#[derive(Clone)]
struct Point {
    x: Vec<f64>,
    w1: Vec<f64>,
    gamma: Vec<f64>,
    beta: Vec<f64>,
    w2: Vec<f64>,
}

struct Net {
    conv1: Conv1,
    bn: Bn,
    conv2: Conv2,
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

fn point() -> Point {
    let mut seed = 7;
    let mut v = |n: usize, scale: f64| (0..n).map(|_| lcg(&mut seed) * scale).collect::<Vec<_>>();
    Point {
        x: v(B * C * S * S, 1.0),
        w1: v(C * C * 9, 0.4),
        gamma: v(C, 0.5).iter().map(|g| g + 1.0).collect(),
        beta: v(C, 0.3),
        w2: v(C * C * 9, 0.4),
    }
}

fn net(dev: &Cpu, p: &Point) -> Net {
    let mut conv1 = Conv1::build_on_device(dev);
    conv1.weight = dev.tensor_from_vec(p.w1.clone(), *conv1.weight.shape());
    let mut bn = Bn::build_on_device(dev);
    bn.weight = dev.tensor_from_vec(p.gamma.clone(), (Const,));
    bn.bias = dev.tensor_from_vec(p.beta.clone(), (Const,));
    let mut conv2 = Conv2::build_on_device(dev);
    conv2.weight = dev.tensor_from_vec(p.w2.clone(), *conv2.weight.shape());
    Net { conv1, bn, conv2 }
}

/// Fixed uneven weights for the scalar loss `sum(out * k)`.
fn loss_weights() -> Vec<f64> {
    (0..B * C * 3 * 3).map(|i| ((i * 29) % 13) as f64 / 6.0 - 1.0).collect()
}

fn forward<T: Tape<f64, Cpu>>(n: &mut Net, x: Tensor<Rank4<B, C, S, S>, f64, Cpu, T>) -> Tensor<Rank0, f64, Cpu, T> {
    let h = n.conv1.forward(x);
    let h = n.bn.forward_mut(h).relu();
    let t: Tensor<Rank4<B, C, 3, 3>, f64, Cpu, T> = Pool::default().forward(h);
    let out = t.retaped::<T>() + n.conv2.forward(t);
    let k: Tensor<Rank4<B, C, 3, 3>, f64, Cpu> =
        n.conv2.weight.device().tensor_from_vec(loss_weights(), Default::default());
    (out * k).sum()
}

/// The perturbable vector number `which`, in the order of the tape's gradients below.
fn field(p: &mut Point, which: usize) -> &mut Vec<f64> {
    match which {
        0 => &mut p.x,
        1 => &mut p.w1,
        2 => &mut p.gamma,
        3 => &mut p.beta,
        _ => &mut p.w2,
    }
}

fn loss(dev: &Cpu, p: &Point) -> f64 {
    let mut n = net(dev, p);
    let x: Tensor<Rank4<B, C, S, S>, f64, Cpu> = dev.tensor_from_vec(p.x.clone(), Default::default());
    forward(&mut n, x).array()
}

#[test]
fn tape_gradients_match_central_differences() {
    let dev: Cpu = Default::default();
    let p = point();

    let mut n = net(&dev, &p);
    let x: Tensor<Rank4<B, C, S, S>, f64, Cpu> = dev.tensor_from_vec(p.x.clone(), Default::default());
    let grads = forward(&mut n, x.leaky_trace()).backward();
    let tape = [
        ("x", grads.get(&x).as_vec()),
        ("conv1.weight", grads.get(&n.conv1.weight).as_vec()),
        ("bn.weight", grads.get(&n.bn.weight).as_vec()),
        ("bn.bias", grads.get(&n.bn.bias).as_vec()),
        ("conv2.weight", grads.get(&n.conv2.weight).as_vec()),
    ];

    let h = 1e-6;
    let mut checked = 0;
    for (which, (name, got)) in tape.iter().enumerate() {
        for (i, &g) in got.iter().enumerate() {
            let at = |d: f64| {
                let mut q = p.clone();
                field(&mut q, which)[i] += d;
                loss(&dev, &q)
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let tol = 1e-6 * (1.0 + fd.abs());
            assert!((g - fd).abs() <= tol, "d loss / d {name}[{i}]: tape {g} vs central difference {fd}");
            checked += 1;
        }
    }
    assert_eq!(checked, B * C * S * S + 2 * C * C * 9 + 2 * C);
    // The check means something only if gradients are not all zero.
    assert!(tape.iter().all(|(_, g)| g.iter().any(|v| v.abs() > 1e-3)));
}
