//! GPU benchmark: the zoo's ResNet-50 and ResNet-152 on dfdx's `Cuda` with residual's kernels,
//! fp32, 224x224, batch 32 and 128: inference (`Module::forward`, running batch-norm stats) and
//! one training step (`forward_mut` + cross-entropy + backward + SGD with momentum).
//! `scripts/bench_gpu_reference.py` measures the same with PyTorch on the same GPU; the CUDA
//! bundle's `run.sh` runs both and prints the ratio.
//!
//! ```text
//! cargo run --release --features cuda --example bench_gpu -- [--runs N] [--warmup N]
//!     [--models resnet50,resnet152] [--batches 32,128] [--modes infer,train] [--csv FILE]
//! ```
//! Each figure is the median of `--runs` timed iterations after `--warmup` untimed ones, with the
//! device synchronised around every iteration.

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("bench_gpu needs the `cuda` feature: cargo run --release --features cuda --example bench_gpu");
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() {
    bench::main()
}

#[cfg(feature = "cuda")]
mod bench {
    use std::io::Write;
    use std::time::Instant;

    use residual::dfdx::optim::{Momentum, Sgd, SgdConfig};
    use residual::dfdx::prelude::*;
    use residual::zoo::{ResNet152, ResNet50};

    struct Args {
        runs: usize,
        warmup: usize,
        models: Vec<String>,
        batches: Vec<usize>,
        modes: Vec<String>,
        csv: Option<String>,
    }

    fn list(s: &str) -> Result<Vec<String>, String> {
        Ok(s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect())
    }

    fn parse_args() -> Result<Args, pico_args::Error> {
        let mut a = pico_args::Arguments::from_env();
        let strings =
            |v: Option<Vec<String>>, d: &[&str]| v.unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect());
        let args = Args {
            runs: a.opt_value_from_str("--runs")?.unwrap_or(10),
            warmup: a.opt_value_from_str("--warmup")?.unwrap_or(3),
            models: strings(a.opt_value_from_fn("--models", list)?, &["resnet50", "resnet152"]),
            batches: a
                .opt_value_from_fn("--batches", |s: &str| {
                    s.split(',').map(|p| p.trim().parse::<usize>().map_err(|e| e.to_string())).collect()
                })?
                .unwrap_or_else(|| vec![32, 128]),
            modes: strings(a.opt_value_from_fn("--modes", list)?, &["infer", "train"]),
            csv: a.opt_value_from_str("--csv")?,
        };
        let rest = a.finish();
        if !rest.is_empty() {
            eprintln!("unknown arguments: {rest:?}");
            std::process::exit(2);
        }
        Ok(args)
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    type Input = Tensor<(usize, Const<3>, Const<224>, Const<224>), f32, Cuda>;
    type Labels = Tensor<(usize, Const<1000>), f32, Cuda>;

    /// Times `iter` (which must leave the GPU busy, not idle): warmup, then `runs` timed calls.
    fn time(dev: &Cuda, args: &Args, mut iter: impl FnMut()) -> f64 {
        for _ in 0..args.warmup {
            iter();
        }
        dev.synchronize();
        let mut ms = Vec::with_capacity(args.runs);
        for _ in 0..args.runs {
            let t = Instant::now();
            iter();
            dev.synchronize();
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        median(ms)
    }

    macro_rules! bench_model {
        ($Model:ident, $dev:expr, $args:expr, $batch:expr, $mode:expr) => {{
            let dev: &Cuda = $dev;
            let args: &Args = $args;
            let batch: usize = $batch;
            let mut model = dev.build_module::<$Model<f32, Cuda>, f32>();
            let x: Input = dev.sample_normal_like(&(batch, Const, Const, Const));
            match $mode {
                "infer" => time(dev, args, || {
                    let y = model.forward(x.clone());
                    drop(y);
                }),
                _ => {
                    let mut labels = vec![0.0f32; batch * 1000];
                    for (i, row) in labels.chunks_mut(1000).enumerate() {
                        row[(i * 7919) % 1000] = 1.0;
                    }
                    let y: Labels = dev.tensor_from_vec(labels, (batch, Const));
                    let mut opt = Sgd::new(
                        &model,
                        SgdConfig { lr: 0.01, momentum: Some(Momentum::Classic(0.9)), weight_decay: None },
                    );
                    let mut grads = Some(model.alloc_grads());
                    time(dev, args, || {
                        let g = grads.take().expect("gradients");
                        let logits = model.forward_mut(x.clone().traced(g));
                        let mut g = cross_entropy_with_logits_loss(logits, y.clone()).backward();
                        opt.update(&mut model, &g).expect("sgd update");
                        model.zero_grads(&mut g);
                        grads = Some(g);
                    })
                }
            }
        }};
    }

    pub fn main() {
        let args = match parse_args() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        };
        let dev = match std::panic::catch_unwind(|| Cuda::try_build(0, 0)) {
            Ok(Ok(dev)) => dev,
            Ok(Err(e)) => {
                eprintln!("no CUDA device: {e:?}");
                std::process::exit(1);
            }
            Err(_) => {
                eprintln!("no CUDA device (the driver failed to initialise)");
                std::process::exit(1);
            }
        };
        let mut csv = args.csv.as_ref().map(|p| {
            let mut f = std::fs::File::create(p).unwrap_or_else(|e| panic!("cannot write {p}: {e}"));
            writeln!(f, "model,batch,mode,ms,images_per_s").expect("write csv");
            f
        });
        println!("{:<10} {:>5} {:<6} {:>10} {:>10}", "model", "batch", "mode", "ms", "images/s");
        for model in &args.models {
            for &batch in &args.batches {
                for mode in &args.modes {
                    let run = std::panic::AssertUnwindSafe(|| match model.as_str() {
                        "resnet50" => bench_model!(ResNet50, &dev, &args, batch, mode.as_str()),
                        "resnet152" => bench_model!(ResNet152, &dev, &args, batch, mode.as_str()),
                        other => {
                            eprintln!("unknown model {other} (resnet50, resnet152)");
                            std::process::exit(2);
                        }
                    });
                    // dfdx panics on device errors (out of memory at large batches): report the
                    // configuration as failed and go on with the next.
                    match std::panic::catch_unwind(run) {
                        Ok(ms) => {
                            let ips = batch as f64 / (ms / 1e3);
                            println!("{model:<10} {batch:>5} {mode:<6} {ms:>10.1} {ips:>10.1}");
                            if let Some(f) = csv.as_mut() {
                                writeln!(f, "{model},{batch},{mode},{ms:.3},{ips:.1}").expect("write csv");
                            }
                        }
                        Err(_) => println!("{model:<10} {batch:>5} {mode:<6} {:>10}", "failed"),
                    }
                    let _ = dev.try_empty_cache();
                }
            }
        }
    }
}
