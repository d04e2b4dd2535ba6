//! Whole-model CPU timings of the zoo, the rows of BENCHMARKS.md's model table: inference
//! (`Module::forward` on a tape-free batch) and a training step (`forward_mut` on a traced batch,
//! then `cross_entropy_with_logits_loss`, `backward`, `Sgd::update` with momentum 0.9 and
//! `zero_grads`), fp32, random weights and inputs.
//!
//! `cargo run --release --example bench_models [-- --rows r50-b1,r50-b8 --reps 7 --layers --cache]`
//! (rows: r50-b1, r50-b8, r152-b8, r18-b8, r56-b128, vit-b1, vit-b8 for inference; r50-b8-train,
//! r56-b16-train, r56-b128-train for a training step)
//!
//! `--layers` also times each row on the layer-by-layer path (one dfdx op per layer, what every
//! model ran before compiled plans; `plan::with_plans_disabled`), in the same process.
//! `--crate-gemm-rows N`: f32 GEMMs of at least N rows run on the `gemm` crate instead of our own
//! kernel on AVX-512 CPUs (default 128; 0: every GEMM; a huge N: none), to measure one against the
//! other on the machine at hand.
//! `--row-split-depth K`: parallel crate GEMMs of depth at least K are split by rows between the
//! threads (default 1024; a huge K: never), to measure the split.
//! `--cnhw-train-max-batch B`: training steps of at most B images run in the CNHW layout, larger
//! ones in NCHW (1: always NCHW), to measure the layouts against each other.
//! `--winograd-min-tiles T`: 3x3 stride-1 convs with at least T output tiles of 2x2 (over the
//! batch) run as Winograd F(2x2, 3x3) (default 128; a huge T: never, the im2col GEMM instead).
//! `--direct-max-channels C`: f32 3x3 stride-1 padding-1 convs with at most C channels each side
//! run on the direct kernels (`conv/direct.rs`; default 64; 0: never), on AVX-512 CPUs.
//! `--pointwise-max-channels C`: f32 1x1 stride-1 convs with at most C channels each side run on the
//! pointwise kernel (`conv/pointwise.rs`, their epilogue in its store; default 256; 0: never), on
//! AVX-512 CPUs.
//! `--phases-max-channels C`: f32 stride-2 convs with at most C input channels (the stem) run on
//! the phase-plane kernel (`conv/phases.rs`; default 4; 0: never), on AVX-512 CPUs.
//! `--winograd-tile M`: in compiled plans' inference, Winograd convs whose maps F(4x4)'s tiles
//! cover to 3/4 run F(M x M, 3x3) (default 4; 2: F(2x2, 3x3) everywhere; training always
//! runs F(2x2, 3x3)).
//! `--winograd-cache-bytes N`: compiled plans' inference keeps Winograd's transformed weights
//! across calls up to N bytes (default 256 MiB; 0: transformed on every call).
//! `--no-header` leaves out the header (the script runs one process per row, so that each row's
//! peak RSS is its own: plans keep their buffers in a per-thread pool).
//!
//! Prints, per row: median / min / max ms, images/s, effective GFLOP/s (2 x MACs per image x
//! batch / time; a training step counts 3x the forward's MACs, as forward + input gradient +
//! weight gradient), % of the f32 GEMM peak measured in this process (4096^3), the peak RSS while
//! the row ran, and the heap allocations of one timed call after warm-up (count and bytes; a
//! counting global allocator, below).
//!
//! `scripts/bench_models.sh` runs this and `scripts/bench_models_reference.py` (PyTorch eager,
//! onnxruntime) in one command, one after the other on the same machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use residual::dfdx::optim::{Momentum, Sgd, SgdConfig};
use residual::dfdx::prelude::*;
use residual::zoo;
use residual::ModelInfo;

/// Counts every allocation (and its bytes) the process makes.
struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(l.size() as u64, Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(l.size() as u64, Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new as u64, Relaxed);
        System.realloc(p, l, new)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations and bytes `f` makes.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64, u64) {
    let (a, b) = (ALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let r = f();
    (r, ALLOCS.load(Relaxed) - a, BYTES.load(Relaxed) - b)
}

/// Resets the kernel's peak-RSS mark of this process (Linux: `5` in `clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak RSS since the last reset, in MB (`VmHWM`).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

/// Seconds of `reps` calls of `f`, after `warmup` untimed calls.
fn time(warmup: usize, reps: usize, mut f: impl FnMut()) -> Stats {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    Stats { median: t[t.len() / 2], min: t[0], max: t[t.len() - 1] }
}

/// `c = a b`, 4096^3, with the GEMM the conv kernels use: GFLOP/s, best of 3.
fn gemm_peak() -> f64 {
    let n = 4096;
    let a = vec![1.0f32; n * n];
    let b = vec![1.0f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let s = Instant::now();
        assert!(residual::runtime::conv::cpu_sgemm(n, n, n, &a, &b, &mut c));
        best = best.min(s.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

struct Row {
    name: &'static str,
    path: &'static str,
    mode: &'static str,
    batch: usize,
    stats: Stats,
    macs_per_image: u64,
    rss_mb: f64,
    allocs: (u64, u64),
}

fn report(r: &Row, peak: f64) {
    let flops = 2.0 * r.macs_per_image as f64 * r.batch as f64 * if r.mode == "train" { 3.0 } else { 1.0 };
    let gflops = flops / r.stats.median / 1e9;
    println!(
        "{:<10} {:<6} {:<6} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>8.1} {:>8.1} {:>6.1}% {:>9.0} {:>8} {:>10.1}",
        r.name,
        r.mode,
        r.path,
        r.batch,
        r.stats.median * 1e3,
        r.stats.min * 1e3,
        r.stats.max * 1e3,
        r.batch as f64 / r.stats.median,
        gflops,
        100.0 * gflops / peak,
        r.rss_mb,
        r.allocs.0,
        r.allocs.1 as f64 / 1e6,
    );
}

fn infer<M, const C: usize, const H: usize, const W: usize, const B: usize>(
    name: &'static str,
    dev: &Cpu,
    reps: usize,
) -> Row
where
    M: BuildOnDevice<Cpu, f32> + ModelInfo,
    M::Built: Module<Tensor<(Const<B>, Const<C>, Const<H>, Const<W>), f32, Cpu>>,
{
    reset_peak_rss();
    let model = dev.build_module::<M, f32>();
    let x: Tensor<(Const<B>, Const<C>, Const<H>, Const<W>), f32, Cpu> = dev.sample_normal();
    let stats = time(2, reps, || {
        let _ = model.forward(x.clone());
    });
    let (_, n, bytes) = allocations(|| model.forward(x.clone()));
    Row {
        name,
        path: "",
        mode: "infer",
        batch: B,
        stats,
        macs_per_image: M::MACS,
        rss_mb: peak_rss_mb(),
        allocs: (n, bytes),
    }
}

fn train<M, const C: usize, const H: usize, const W: usize, const B: usize, const K: usize>(
    name: &'static str,
    dev: &Cpu,
    reps: usize,
) -> Row
where
    M: BuildOnDevice<Cpu, f32> + ModelInfo,
    M::Built: ModuleMut<
            Tensor<(Const<B>, Const<C>, Const<H>, Const<W>), f32, Cpu, OwnedTape<f32, Cpu>>,
            Output = Tensor<Rank2<B, K>, f32, Cpu, OwnedTape<f32, Cpu>>,
        > + TensorCollection<f32, Cpu>,
{
    reset_peak_rss();
    let mut model = dev.build_module::<M, f32>();
    let mut opt = Sgd::new(&model, SgdConfig { lr: 1e-3, momentum: Some(Momentum::Classic(0.9)), weight_decay: None });
    let x: Tensor<(Const<B>, Const<C>, Const<H>, Const<W>), f32, Cpu> = dev.sample_normal();
    let mut labels = vec![0.0f32; B * K];
    for b in 0..B {
        labels[b * K + b % K] = 1.0;
    }
    let y: Tensor<Rank2<B, K>, f32, Cpu> = dev.tensor(labels);
    let mut grads = model.alloc_grads();
    let mut step = || {
        // The gradient buffers go round: traced in, returned by backward, zeroed in place.
        let g = std::mem::replace(&mut grads, Gradients::leaky());
        let logits = model.forward_mut(x.clone().traced(g));
        let loss = cross_entropy_with_logits_loss(logits, y.clone());
        grads = loss.backward();
        opt.update(&mut model, &grads).expect("every parameter has a gradient");
        model.zero_grads(&mut grads);
    };
    let stats = time(1, reps, &mut step);
    let (_, n, bytes) = allocations(&mut step);
    Row {
        name,
        path: "",
        mode: "train",
        batch: B,
        stats,
        macs_per_image: M::MACS,
        rss_mb: peak_rss_mb(),
        allocs: (n, bytes),
    }
}

fn main() {
    let mut args = pico_args::Arguments::from_env();
    let reps: usize = args.opt_value_from_str("--reps").unwrap_or(None).unwrap_or(7);
    let rows: String = args
        .opt_value_from_str("--rows")
        .unwrap_or(None)
        .unwrap_or_else(|| "r50-b1,r50-b8,r152-b8,r50-b8-train,r56-b16-train,r56-b128-train".into());
    let cache = args.contains("--cache");
    let layers = args.contains("--layers");
    let header = !args.contains("--no-header");
    if let Some(rows) = args.opt_value_from_str("--crate-gemm-rows").unwrap_or(None) {
        residual::runtime::conv::CRATE_GEMM_MIN_ROWS.set(rows);
    }
    if let Some(k) = args.opt_value_from_str("--row-split-depth").unwrap_or(None) {
        residual::runtime::conv::ROW_SPLIT_MIN_DEPTH.set(k);
    }
    if let Some(t) = args.opt_value_from_str("--winograd-min-tiles").unwrap_or(None) {
        residual::runtime::conv::WINOGRAD_MIN_TILES.set(t);
    }
    if let Some(b) = args.opt_value_from_str("--winograd-cache-bytes").unwrap_or(None) {
        residual::runtime::conv::WINOGRAD_CACHE_BYTES.set(b);
    }
    if let Some(m) = args.opt_value_from_str("--winograd-tile").unwrap_or(None) {
        residual::runtime::conv::WINOGRAD_TILE.set(m);
    }
    if let Some(c) = args.opt_value_from_str("--direct-max-channels").unwrap_or(None) {
        residual::runtime::conv::DIRECT_MAX_CHANNELS.set(c);
    }
    if let Some(c) = args.opt_value_from_str("--pointwise-max-channels").unwrap_or(None) {
        residual::runtime::conv::POINTWISE_MAX_CHANNELS.set(c);
    }
    if let Some(c) = args.opt_value_from_str("--phases-max-channels").unwrap_or(None) {
        residual::runtime::conv::PHASES_MAX_CHANNELS.set(c);
    }
    if let Some(b) = args.opt_value_from_str("--cnhw-train-max-batch").unwrap_or(None) {
        residual::runtime::plan::CNHW_TRAIN_MAX_BATCH.set(b);
    }

    let dev = Cpu::default();
    if cache {
        dev.enable_cache();
    }
    let peak = gemm_peak();
    println!(
        "# residual, fp32, {} rayon threads, dfdx cache {}, crate GEMM from {} rows, row split from depth {}, direct 3x3 up to {} channels, pointwise 1x1 up to {} channels, stride-2 phases up to {} channels in, Winograd from {} tiles, F({}x{}) where tiles cover 3/4, transformed weights cached up to {} MiB; GEMM peak (4096^3, this process): {peak:.0} GFLOP/s",
        rayon::current_num_threads(),
        if cache { "on" } else { "off" },
        residual::runtime::conv::CRATE_GEMM_MIN_ROWS.get(),
        residual::runtime::conv::ROW_SPLIT_MIN_DEPTH.get(),
        residual::runtime::conv::DIRECT_MAX_CHANNELS.get(),
        residual::runtime::conv::POINTWISE_MAX_CHANNELS.get(),
        residual::runtime::conv::PHASES_MAX_CHANNELS.get(),
        residual::runtime::conv::WINOGRAD_MIN_TILES.get(),
        residual::runtime::conv::WINOGRAD_TILE.get(),
        residual::runtime::conv::WINOGRAD_TILE.get(),
        residual::runtime::conv::WINOGRAD_CACHE_BYTES.get() >> 20,
    );
    if header {
        println!(
            "{:<10} {:<6} {:<6} {:>4} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7} {:>9} {:>8} {:>10}",
            "model",
            "mode",
            "path",
            "b",
            "median",
            "min",
            "max",
            "img/s",
            "GFLOP/s",
            "%peak",
            "RSS MB",
            "allocs",
            "alloc MB"
        );
    }
    for row in rows.split(',') {
        let mut r = run_row(row, &dev, reps);
        // A model with a layer plans have no kernel for (attention) runs layer by layer anyway.
        r.path = if row.trim().starts_with("vit") { "layers" } else { "plan" };
        report(&r, peak);
        if layers {
            let mut r = residual::runtime::plan::with_plans_disabled(|| run_row(row, &dev, reps));
            r.path = "layers";
            report(&r, peak);
        }
    }
}

fn run_row(row: &str, dev: &Cpu, reps: usize) -> Row {
    {
        match row.trim() {
            "r50-b1" => infer::<zoo::ResNet50, 3, 224, 224, 1>("resnet50", dev, reps),
            "r50-b8" => infer::<zoo::ResNet50, 3, 224, 224, 8>("resnet50", dev, reps),
            "r152-b8" => infer::<zoo::ResNet152, 3, 224, 224, 8>("resnet152", dev, reps),
            "r18-b8" => infer::<zoo::ResNet18, 3, 224, 224, 8>("resnet18", dev, reps),
            "r56-b128" => infer::<zoo::ResNet56, 3, 32, 32, 128>("resnet56", dev, reps),
            // Transformers run layer by layer (no plan kernels for attention yet).
            "vit-b1" => infer::<zoo::ViT_B_16, 3, 224, 224, 1>("vit_b_16", dev, reps),
            "vit-b8" => infer::<zoo::ViT_B_16, 3, 224, 224, 8>("vit_b_16", dev, reps),
            "r50-b8-train" => train::<zoo::ResNet50, 3, 224, 224, 8, 1000>("resnet50", dev, reps),
            "r56-b16-train" => train::<zoo::ResNet56, 3, 32, 32, 16, 10>("resnet56", dev, reps),
            "r56-b32-train" => train::<zoo::ResNet56, 3, 32, 32, 32, 10>("resnet56", dev, reps),
            "r56-b64-train" => train::<zoo::ResNet56, 3, 32, 32, 64, 10>("resnet56", dev, reps),
            "r56-b128-train" => train::<zoo::ResNet56, 3, 32, 32, 128, 10>("resnet56", dev, reps),
            other => {
                eprintln!("unknown row `{other}`");
                std::process::exit(2);
            }
        }
    }
}
