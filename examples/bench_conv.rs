//! Times every conv layer of ResNet-50 (torchvision v1.5: stride on the 3x3 conv, 224x224 input)
//! on the CPU, forward and backward, and compares with this machine's SGEMM peak.
//!
//! `cargo run --release --example bench_conv [-- --reps N --batches 1,8]`
//!
//! - forward: `conv::try_conv2d_nchw` on a tape-free tensor, i.e. what a layer pays (the copy of
//!   the input and weight out of dfdx, the kernel, the output tensor);
//! - backward: the `Conv2dKernel::conv2d_backward` kernel (input and weight gradients), which is
//!   what the tape runs;
//! - GFLOP/s = 2 * MACs / time (backward does twice the forward's MACs);
//! - peaks, in the same process, 4096^3 f32, all rayon threads: our own GEMM kernel (AVX-512,
//!   else AVX2 + FMA) and the `gemm` crate's (0.19 with `x86-v4`: AVX-512 on stable); the conv
//!   kernels run the crate for GEMMs of 128 rows or more on AVX-512 CPUs, ours below
//!   (`conv::cpu::crate_runs`), and the percentages are of the higher of the two peaks.
//!
//! Compare with `scripts/bench_reference.py` (PyTorch, same layers); results in BENCHMARKS.md.

use std::time::Instant;

use residual::dfdx::prelude::*;
use residual::runtime::conv::{cpu_sgemm, try_conv2d_nchw, Conv2dConfig, Conv2dKernel, Conv2dOp};

/// One distinct conv of ResNet-50 and how many times the network uses it.
struct Layer {
    name: &'static str,
    inp: usize,
    out: usize,
    k: usize,
    stride: usize,
    h: usize,
    count: usize,
}

const fn l(name: &'static str, inp: usize, out: usize, k: usize, stride: usize, h: usize, count: usize) -> Layer {
    Layer { name, inp, out, k, stride, h, count }
}

/// torchvision `resnet50` (v1.5), 224x224: 53 convs in 23 distinct shapes. `h` is the input size.
const RESNET50: [Layer; 23] = [
    l("conv1", 3, 64, 7, 2, 224, 1),
    l("layer1 1x1 reduce (first)", 64, 64, 1, 1, 56, 1),
    l("layer1 3x3", 64, 64, 3, 1, 56, 3),
    l("layer1 1x1 expand + downsample", 64, 256, 1, 1, 56, 4),
    l("layer1 1x1 reduce", 256, 64, 1, 1, 56, 2),
    l("layer2 1x1 reduce (first)", 256, 128, 1, 1, 56, 1),
    l("layer2 3x3 stride 2", 128, 128, 3, 2, 56, 1),
    l("layer2 1x1 expand", 128, 512, 1, 1, 28, 4),
    l("layer2 downsample", 256, 512, 1, 2, 56, 1),
    l("layer2 1x1 reduce", 512, 128, 1, 1, 28, 3),
    l("layer2 3x3", 128, 128, 3, 1, 28, 3),
    l("layer3 1x1 reduce (first)", 512, 256, 1, 1, 28, 1),
    l("layer3 3x3 stride 2", 256, 256, 3, 2, 28, 1),
    l("layer3 1x1 expand", 256, 1024, 1, 1, 14, 6),
    l("layer3 downsample", 512, 1024, 1, 2, 28, 1),
    l("layer3 1x1 reduce", 1024, 256, 1, 1, 14, 5),
    l("layer3 3x3", 256, 256, 3, 1, 14, 5),
    l("layer4 1x1 reduce (first)", 1024, 512, 1, 1, 14, 1),
    l("layer4 3x3 stride 2", 512, 512, 3, 2, 14, 1),
    l("layer4 1x1 expand", 512, 2048, 1, 1, 7, 3),
    l("layer4 downsample", 1024, 2048, 1, 2, 14, 1),
    l("layer4 1x1 reduce", 2048, 512, 1, 1, 7, 2),
    l("layer4 3x3", 512, 512, 3, 1, 7, 2),
];

impl Layer {
    fn cfg(&self) -> Conv2dConfig {
        Conv2dConfig::new(self.k).stride(self.stride).padding(self.k / 2)
    }
    fn op(&self, batch: usize) -> Conv2dOp {
        Conv2dOp::new(self.cfg(), batch, self.inp, self.out, self.h, self.h).expect("ResNet-50 shapes are valid")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Median seconds of `reps` runs of `f`, after one warm-up run.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

/// Deterministic, non-trivial values (timing does not depend on them, but denormals would).
fn fill(v: &mut [f32], seed: usize) {
    for (i, x) in v.iter_mut().enumerate() {
        *x = (((i * 7919 + seed * 104729) % 2003) as f32 / 2003.0 - 0.5) * 0.1;
    }
}

fn own_sgemm_peak(n: usize, reps: usize) -> f64 {
    let mut a = vec![0.0f32; n * n];
    let mut b = vec![0.0f32; n * n];
    let mut c = vec![0.0f32; n * n];
    fill(&mut a, 1);
    fill(&mut b, 2);
    // Our kernel at every size, then back to the default split.
    let default = residual::runtime::conv::CRATE_GEMM_MIN_ROWS.set(usize::MAX);
    let secs = time(reps, || assert!(cpu_sgemm(n, n, n, &a, &b, &mut c)));
    residual::runtime::conv::CRATE_GEMM_MIN_ROWS.set(default);
    2.0 * (n * n * n) as f64 / secs / 1e9
}

fn gemm_crate_peak(n: usize, reps: usize) -> f64 {
    let mut a = vec![0.0f32; n * n];
    let mut b = vec![0.0f32; n * n];
    let mut c = vec![0.0f32; n * n];
    fill(&mut a, 1);
    fill(&mut b, 2);
    let secs = time(reps, || unsafe {
        // SAFETY: three distinct n x n row-major buffers.
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        )
    });
    2.0 * (n * n * n) as f64 / secs / 1e9
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut reps = 5;
    let mut batches = vec![1usize, 8];
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).unwrap_or(reps),
            "--batches" => {
                batches = args.next().map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect()).unwrap_or(batches)
            }
            other => {
                eprintln!("unknown argument {other}; usage: bench_conv [--reps N] [--batches 1,8]");
                std::process::exit(2);
            }
        }
    }

    let convs: usize = RESNET50.iter().map(|l| l.count).sum();
    let macs: usize = RESNET50.iter().map(|l| l.count * l.op(1).macs()).sum();
    println!(
        "ResNet-50 conv layers: {convs} convs, {} distinct, {:.3} GMACs per image",
        RESNET50.len(),
        macs as f64 / 1e9
    );
    println!("rayon threads: {}", rayon::current_num_threads());

    let own_peak = own_sgemm_peak(4096, 3);
    let crate_peak = gemm_crate_peak(4096, 3);
    let peak = own_peak.max(crate_peak);
    println!("SGEMM peak, 4096^3 f32: {own_peak:.1} GFLOP/s (our kernel), {crate_peak:.1} GFLOP/s (gemm crate)");
    println!("percentages below are of the higher of the two\n");

    let dev: Cpu = Default::default();
    for &batch in &batches {
        println!("batch {batch}  (times are medians of {reps} runs, per conv; total = sum x count)");
        println!(
            "{:<32} {:>5} {:>5} {:>3} {:>2} {:>4} {:>3} | {:>9} {:>7} | {:>9} {:>7}",
            "layer", "in", "out", "k", "s", "H", "x", "fwd ms", "GFLOP/s", "bwd ms", "GFLOP/s"
        );
        let (mut fwd_total, mut bwd_total, mut flops_total) = (0.0, 0.0, 0.0);
        for layer in &RESNET50 {
            let op = layer.op(batch);
            let x_len = batch * layer.inp * layer.h * layer.h;
            let w_len = layer.out * layer.inp * layer.k * layer.k;
            let y_len = batch * layer.out * op.out_h * op.out_w;
            let mut xs = vec![0.0f32; x_len];
            let mut ws = vec![0.0f32; w_len];
            fill(&mut xs, 3);
            fill(&mut ws, 4);
            let x = dev.tensor_from_vec(xs.clone(), (batch, layer.inp, layer.h, layer.h));
            let w = dev.tensor_from_vec(ws.clone(), (layer.out, layer.inp, layer.k, layer.k));
            let fwd = time(reps, || {
                let y = try_conv2d_nchw(x.clone(), w.clone(), layer.cfg()).expect("conv");
                std::hint::black_box(&y);
            });

            let mut xb = dev.try_alloc_len(x_len).expect("alloc");
            let mut wb = dev.try_alloc_len(w_len).expect("alloc");
            let mut gy = dev.try_alloc_len(y_len).expect("alloc");
            xb.copy_from_slice(&xs);
            wb.copy_from_slice(&ws);
            fill(&mut gy, 5);
            let mut gx = dev.try_alloc_len(x_len).expect("alloc");
            let mut gw = dev.try_alloc_len(w_len).expect("alloc");
            let bwd = time(reps, || {
                dev.conv2d_backward(&op, &xb, &wb, &mut gx, &mut gw, &gy).expect("backward");
            });

            let flops = 2.0 * op.macs() as f64;
            println!(
                "{:<32} {:>5} {:>5} {:>3} {:>2} {:>4} {:>3} | {:>9.3} {:>7.1} | {:>9.3} {:>7.1}",
                layer.name,
                layer.inp,
                layer.out,
                layer.k,
                layer.stride,
                layer.h,
                layer.count,
                fwd * 1e3,
                flops / fwd / 1e9,
                bwd * 1e3,
                2.0 * flops / bwd / 1e9
            );
            fwd_total += fwd * layer.count as f64;
            bwd_total += bwd * layer.count as f64;
            flops_total += flops * layer.count as f64;
        }
        let fwd_rate = flops_total / fwd_total / 1e9;
        let bwd_rate = 2.0 * flops_total / bwd_total / 1e9;
        println!(
            "TOTAL batch {batch}: forward {:.1} ms = {fwd_rate:.1} GFLOP/s ({:.0}% of SGEMM peak); backward {:.1} ms = {bwd_rate:.1} GFLOP/s ({:.0}% of peak)\n",
            fwd_total * 1e3,
            100.0 * fwd_rate / peak,
            bwd_total * 1e3,
            100.0 * bwd_rate / peak,
        );
    }
}
