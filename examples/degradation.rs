//! The degradation experiment of the ResNet paper (He et al. 2015, figure 1 and section 4.2),
//! small enough for a laptop: plain networks versus residual networks of the same depth.
//!
//! ```text
//! cargo run --release --example degradation -- [--steps N] [--batch B] [--depths 20,56,110]
//!     [--grad-depths 20,56,110] [--lr LR] [--warmup N] [--seed S] [--out DIR] [--export-data DIR]
//! ```
//!
//! For each depth the zoo has `PlainNet{N}` and `ResNet{N}`: the same convolutions, batch norms
//! and classifier, with and without the parameter-free option-A shortcuts, so both have the
//! same parameters and, built from one seed, the same initial weights. Both see the same
//! batches of the synthetic shapes task in the same order with the same optimiser. It prints
//!
//! 1. for every depth in `--grad-depths`: the gradient norm of every conv weight on the first
//!    batch, at initialisation: does the training signal reach the first layers?
//! 2. for every depth in `--depths`: the training loss over the first `--steps` steps, and
//!    held-out accuracy at the end (training is what costs time: about 0.35 s per step of 16
//!    images for a 20-layer network on 2 cores, 0.8 s for 56 layers, 1.5 s for 110, so the
//!    defaults take about 28 minutes; `--depths 20,56` takes about 8),
//!
//! and draws both to SVG files in `--out`. `--export-data DIR` also writes the exact normalised
//! images and every network's initial weights, so `scripts/reference/degradation_torch.py` can train the same architectures in
//! PyTorch on the same batches: an independent check that the curves are the task's and the
//! hyperparameters', not an artefact of our kernels.

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorName, ViewTensorRef,
};
use dfdx::optim::{Momentum, Sgd, SgdConfig, WeightDecay};
use dfdx::prelude::*;
use residual::zoo::{PlainNet110, PlainNet20, PlainNet56, ResNet110, ResNet20, ResNet56};
use residual::ModelInfo;

use common::data::{Batch, ChannelNorm, ImageSet, Split, SyntheticShapes};
use common::plot::{Chart, Series, PALETTE};
use common::progress::steps_bar;
use common::train::{evaluate, forward_backward, Classifier};

const USAGE: &str = "\
Plain versus residual networks of equal depth: gradient norms at initialisation and the
training loss of the first steps, on a synthetic ten-class image task.

Usage: cargo run --release --example degradation -- [OPTIONS]

Options:
  --steps N          SGD steps per network                      [default: 300]
  --batch B          images per step                            [default: 16]
  --depths LIST      depths to train, from 20, 56, 110          [default: 20,56,110]
  --grad-depths LIST depths whose gradients at initialisation
                     are measured (one batch, no training)      [default: 20,56,110]
  --lr LR            learning rate after the warm-up            [default: 0.005]
  --warmup N         linear warm-up: lr*(k+1)/N at step k < N   [default: 30]
  --test-size N      held-out images evaluated after training   [default: 500]
  --seed S           seed for initialisation and data           [default: 0]
  --out DIR          where the SVG plots go                     [default: out]
  --export-data DIR  also write the normalised train and held-out images and labels
                     (raw little-endian f32 / u8) and each network's initial weights
                     (safetensors) for scripts/reference/degradation_torch.py
  -h, --help         print this help
";

/// The depths for which the zoo has both a plain and a residual network.
const ZOO_DEPTHS: [usize; 3] = [20, 56, 110];

struct Options {
    steps: usize,
    batch: usize,
    depths: Vec<usize>,
    grad_depths: Vec<usize>,
    lr: f64,
    warmup: usize,
    test_size: usize,
    seed: u64,
    out: PathBuf,
    export_data: Option<PathBuf>,
}

impl Options {
    fn parse() -> Result<Self, Box<dyn Error>> {
        let mut args = pico_args::Arguments::from_env();
        if args.contains(["-h", "--help"]) {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let depths: String = args.opt_value_from_str("--depths")?.unwrap_or_else(|| "20,56,110".into());
        let grad_depths: String = args.opt_value_from_str("--grad-depths")?.unwrap_or_else(|| "20,56,110".into());
        let options = Self {
            steps: args.opt_value_from_str("--steps")?.unwrap_or(300),
            batch: args.opt_value_from_str("--batch")?.unwrap_or(16),
            depths: parse_depths("--depths", &depths)?,
            grad_depths: parse_depths("--grad-depths", &grad_depths)?,
            lr: args.opt_value_from_str("--lr")?.unwrap_or(0.005),
            warmup: args.opt_value_from_str("--warmup")?.unwrap_or(30),
            test_size: args.opt_value_from_str("--test-size")?.unwrap_or(500),
            seed: args.opt_value_from_str("--seed")?.unwrap_or(0),
            out: args.opt_value_from_str("--out")?.unwrap_or_else(|| "out".into()),
            export_data: args.opt_value_from_str("--export-data")?,
        };
        let unknown = args.finish();
        if !unknown.is_empty() {
            return Err(format!("unexpected arguments {unknown:?}\n\n{USAGE}").into());
        }
        if options.batch < 2 || options.steps == 0 || options.test_size == 0 {
            return Err("need --batch >= 2 (batch norm), --steps >= 1 and --test-size >= 1".into());
        }
        Ok(options)
    }
}

fn parse_depths(flag: &str, list: &str) -> Result<Vec<usize>, Box<dyn Error>> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| match item.trim().parse::<usize>() {
            Ok(depth) if ZOO_DEPTHS.contains(&depth) => Ok(depth),
            _ => Err(format!("{flag}: `{item}` is not one of {ZOO_DEPTHS:?} (the zoo's plain/residual pairs)").into()),
        })
        .collect()
}

/// How far one network is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// `--steps` SGD steps, then a held-out evaluation.
    Train,
    /// One forward and backward pass on the first batch, for its gradients; no update.
    GradientsOnly,
}

/// Everything measured on one network.
struct Run {
    label: String,
    depth: usize,
    residual: bool,
    /// `(parameter path, L2 norm of its gradient)` for every conv weight, input to output.
    conv_grad_norms: Vec<(String, f64)>,
    /// Training loss of every step (only the first batch's when gradients only).
    losses: Vec<f32>,
    /// `None` when the network was not trained.
    held_out_accuracy: Option<f32>,
    seconds: f64,
}

fn main() -> std::process::ExitCode {
    // Errors print with their messages (`Display`), not as `Debug` structures.
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let options = Options::parse()?;
    let started = Instant::now();

    // One fresh batch per step (no image is seen twice), identical for every network.
    let train_set = SyntheticShapes::new(options.seed, Split::Train, options.steps * options.batch);
    let test_set = SyntheticShapes::new(options.seed, Split::Test, options.test_size);
    let norm = ChannelNorm::measure(&train_set, 2000);
    println!("data: {}", train_set.describe());
    println!(
        "each network: {} SGD steps of {} images, lr {} after a linear warm-up of {} steps, momentum 0.9, \
         L2 weight decay 1e-4, seed {}",
        options.steps, options.batch, options.lr, options.warmup, options.seed
    );
    println!();
    if let Some(dir) = &options.export_data {
        export_split(dir, "train", &train_set, &norm)?;
        export_split(dir, "test", &test_set, &norm)?;
        println!("data written to {} (train/test _images.f32 and _labels.u8)", dir.display());
    }

    // Deeper last, so the tables and plots read from shallow to deep.
    let mut all_depths: Vec<usize> = options.depths.iter().chain(&options.grad_depths).copied().collect();
    all_depths.sort_unstable();
    all_depths.dedup();
    let mut runs = Vec::new();
    for depth in all_depths {
        let extent = if options.depths.contains(&depth) { Extent::Train } else { Extent::GradientsOnly };
        let data = (&options, extent, &train_set, &test_set, &norm);
        let (plain, residual) = match depth {
            20 => (run_network::<PlainNet20<f32, Cpu>>(data), run_network::<ResNet20<f32, Cpu>>(data)),
            56 => (run_network::<PlainNet56<f32, Cpu>>(data), run_network::<ResNet56<f32, Cpu>>(data)),
            _ => (run_network::<PlainNet110<f32, Cpu>>(data), run_network::<ResNet110<f32, Cpu>>(data)),
        };
        runs.push(plain);
        runs.push(residual);
    }
    let (trained, probed): (Vec<Run>, Vec<Run>) = runs.into_iter().partition(|run| run.held_out_accuracy.is_some());
    let measured: Vec<&Run> =
        trained.iter().chain(&probed).filter(|run| options.grad_depths.contains(&run.depth)).collect();

    println!();
    print_gradient_table(&measured);
    println!();
    if !trained.is_empty() {
        print_loss_table(&trained, options.steps);
        println!();
    }

    std::fs::create_dir_all(&options.out)?;
    let loss_plot = options.out.join("degradation_loss.svg");
    let grad_plot = options.out.join("degradation_grad_norms.svg");
    plot_losses(&trained, options.steps, &loss_plot)?;
    plot_gradient_norms(&measured, &grad_plot)?;
    println!("plots: {} and {}", loss_plot.display(), grad_plot.display());
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Writes every image of `set`, normalised exactly as training sees it (through the same
/// `Batch::gather`), to `{dir}/{name}_images.f32` (`[N, 3, 32, 32]`, little-endian f32) and the
/// labels to `{dir}/{name}_labels.u8`, so that an independent implementation can train on the
/// same batches.
fn export_split(
    dir: &std::path::Path,
    name: &str,
    set: &SyntheticShapes,
    norm: &ChannelNorm,
) -> Result<(), Box<dyn Error>> {
    std::fs::create_dir_all(dir)?;
    let all: Vec<usize> = (0..set.len()).collect();
    let batch = Batch::gather(set, &all, norm, &Cpu::default());
    let image_bytes: Vec<u8> = batch.images.as_vec().iter().flat_map(|v| v.to_le_bytes()).collect();
    let labels: Vec<u8> = batch.labels.iter().map(|&label| label as u8).collect();
    let write = |file: String, bytes: &[u8]| {
        let path = dir.join(file);
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write(format!("{name}_images.f32"), &image_bytes)?;
    write(format!("{name}_labels.u8"), &labels)?;
    Ok(())
}

/// Builds `M` from the seed and records conv gradient norms on the first batch; to train, goes
/// on for `--steps` steps and evaluates on the held-out set.
fn run_network<M>(
    (options, extent, train_set, test_set, norm): (&Options, Extent, &SyntheticShapes, &SyntheticShapes, &ChannelNorm),
) -> Run
where
    M: Classifier + BuildOnDevice<Cpu, f32, Built = M> + ModelInfo,
{
    let started = Instant::now();
    // The same seed for every network: a plain net and its residual twin start from the same
    // weights, since option-A shortcuts add no parameters.
    let dev = Cpu::seed_from_u64(options.seed);
    let mut model = dev.build_module::<M, f32>();
    if let Some(dir) = &options.export_data {
        let path = dir.join(format!("{}_init.safetensors", M::NAME));
        if let Err(error) = residual::io::save_safetensors(&model, &path) {
            eprintln!("warning: initial weights not exported: {error}");
        }
    }
    let mut opt = Sgd::new(
        &model,
        SgdConfig { lr: options.lr, momentum: Some(Momentum::Classic(0.9)), weight_decay: Some(WeightDecay::L2(1e-4)) },
    );
    let mut grads = model.alloc_grads();
    let label = M::NAME.to_string();
    let steps = if extent == Extent::Train { options.steps } else { 1 };
    let bar = steps_bar(steps, label.clone());

    let mut conv_grad_norms = Vec::new();
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let indices: Vec<usize> = (step * options.batch..(step + 1) * options.batch).collect();
        let batch = Batch::gather(train_set, &indices, norm, &dev);
        let (new_grads, stats) = forward_backward(&mut model, grads, &batch, &dev);
        grads = new_grads;
        if step == 0 {
            // Before the first update: the gradients of the network at initialisation.
            conv_grad_norms = conv_weight_grad_norms(&model, &grads);
        }
        losses.push(stats.loss);
        if extent == Extent::GradientsOnly {
            break;
        }
        opt.cfg.lr = warmup_lr(options.lr, options.warmup, step);
        opt.update(&mut model, &grads).expect("every parameter has a gradient");
        model.zero_grads(&mut grads);
        bar.set_message(format!("loss {:.3}", stats.loss));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let held_out_accuracy = (extent == Extent::Train).then(|| evaluate(&model, test_set, norm, 100, &dev).accuracy);

    let run = Run {
        label,
        depth: M::NAME.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0),
        residual: M::NAME.starts_with("ResNet"),
        conv_grad_norms,
        losses,
        held_out_accuracy,
        seconds: started.elapsed().as_secs_f64(),
    };
    match run.held_out_accuracy {
        Some(accuracy) => println!(
            "{:<11} {:>9} params  {steps} steps in {:>6.1} s ({:>5.0} ms/step, held-out evaluation included)  \
             loss of the last {} steps {:.3}  held-out acc {:>5.1}%",
            run.label,
            M::NUM_PARAMS,
            run.seconds,
            1000.0 * run.seconds / steps as f64,
            window(steps),
            window_mean(&run.losses, steps, window(steps)),
            100.0 * accuracy
        ),
        None => println!(
            "{:<11} {:>9} params  gradients of the first batch in {:.1} s (loss {:.3}; not trained)",
            run.label,
            M::NUM_PARAMS,
            run.seconds,
            run.losses[0]
        ),
    }
    run
}

/// Learning rate of step `step` (0-based): rising linearly over the first `warmup` steps, then
/// constant. Deep networks at initialisation give large losses and gradients (the residual
/// branches' variances add up); the ResNet paper warms its 110-layer net up at a tenth of the
/// rate for the same reason (section 4.2).
fn warmup_lr(lr: f64, warmup: usize, step: usize) -> f64 {
    if step < warmup {
        lr * (step + 1) as f64 / warmup as f64
    } else {
        lr
    }
}

/// The L2 norm of the gradient of every conv weight (the rank-4 trainable tensors), in the
/// model's field order, which is the order of the layers from input to output.
fn conv_weight_grad_norms<M: TensorCollection<f32, Cpu>>(model: &M, grads: &Gradients<f32, Cpu>) -> Vec<(String, f64)> {
    let mut visitor = ConvGradNorms { grads, norms: Vec::new() };
    let walked = M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut visitor });
    walked.unwrap_or_else(|never| match never {});
    visitor.norms
}

struct ConvGradNorms<'a> {
    grads: &'a Gradients<f32, Cpu>,
    norms: Vec<(String, f64)>,
}

impl TensorVisitor<f32, Cpu> for ConvGradNorms<'_> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        options: TensorOptions<S, f32, Cpu>,
        (tensor, name): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, Cpu>>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, Self::Err> {
        if S::NUM_DIMS == 4 && options.do_gradient_update {
            let sum_of_squares: f64 = self.grads.get(tensor).as_vec().iter().map(|&g| (g as f64) * (g as f64)).sum();
            self.norms.push((name, sum_of_squares.sqrt()));
        }
        Ok(None)
    }
}

/// Width of the windows the loss table averages over: single steps are noisy.
fn window(steps: usize) -> usize {
    (steps / 10).max(1)
}

/// Mean loss of the `width` steps ending at step `end` (1-based, inclusive).
fn window_mean(losses: &[f32], end: usize, width: usize) -> f32 {
    let end = end.min(losses.len());
    let start = end.saturating_sub(width);
    losses[start..end].iter().sum::<f32>() / (end - start).max(1) as f32
}

fn print_gradient_table(runs: &[&Run]) {
    println!("(a) conv weight gradient L2 norms at initialisation (first batch, before any update);");
    println!("    first = conv1 (input side), middle = conv number convs/2 + 1, last = the last conv");
    println!("{:<11} {:>6} {:>12} {:>12} {:>12} {:>11}", "network", "convs", "first", "middle", "last", "first/last");
    for run in runs {
        let norms: Vec<f64> = run.conv_grad_norms.iter().map(|(_, n)| *n).collect();
        let (first, middle, last) = (norms[0], norms[norms.len() / 2], norms[norms.len() - 1]);
        println!(
            "{:<11} {:>6} {:>12.3e} {:>12.3e} {:>12.3e} {:>11.3}",
            run.label,
            norms.len(),
            first,
            middle,
            last,
            first / last
        );
    }
}

/// Checkpoints at a fifth, two fifths, ... of the run; each shows the mean of the
/// `window(steps)` steps that end there.
fn loss_checkpoints(steps: usize) -> Vec<usize> {
    let mut ends: Vec<usize> = (1..=5).map(|k| (steps * k / 5).max(window(steps))).collect();
    ends.insert(0, window(steps));
    ends.dedup();
    ends
}

fn print_loss_table(runs: &[Run], steps: usize) {
    let width = window(steps);
    let ends = loss_checkpoints(steps);
    println!("(b) training loss, mean of the {width} steps ending at step ... (chance level ln 10 = 2.303)");
    print!("{:<11}", "network");
    for end in &ends {
        print!(" {:>8}", format!("@{end}"));
    }
    println!(" {:>13}", "held-out acc");
    for run in runs {
        print!("{:<11}", run.label);
        for &end in &ends {
            print!(" {:>8.3}", window_mean(&run.losses, end, width));
        }
        println!(" {:>12.1}%", 100.0 * run.held_out_accuracy.unwrap_or(f32::NAN));
    }
}

/// One colour per depth; plain networks dashed, residual ones solid.
fn series_style(run: &Run, depths: &[usize]) -> (plotters::style::RGBColor, bool) {
    let index = depths.iter().position(|&d| d == run.depth).unwrap_or(0);
    (PALETTE[index % PALETTE.len()], !run.residual)
}

fn depths_of<'a>(runs: impl IntoIterator<Item = &'a Run>) -> Vec<usize> {
    let mut depths: Vec<usize> = runs.into_iter().map(|r| r.depth).collect();
    depths.dedup();
    depths
}

fn plot_losses(runs: &[Run], steps: usize, path: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let depths = depths_of(runs);
    let width = window(steps);
    let series: Vec<Series> = runs
        .iter()
        .map(|run| {
            let (colour, dashed) = series_style(run, &depths);
            // A moving average over `width` steps, the same smoothing as the table.
            let points = (width..=run.losses.len())
                .map(|end| (end as f64, window_mean(&run.losses, end, width) as f64))
                .collect();
            Series { label: run.label.clone(), points, colour, dashed }
        })
        .collect();
    let title = format!("Training loss, moving average of {width} steps (dashed: plain)");
    Chart { title: &title, x_label: "step", y_label: "cross-entropy", log_y: false }.draw(path, &series)
}

fn plot_gradient_norms(runs: &[&Run], path: &std::path::Path) -> Result<(), Box<dyn Error>> {
    let depths = depths_of(runs.iter().copied());
    let series: Vec<Series> = runs
        .iter()
        .map(|run| {
            let (colour, dashed) = series_style(run, &depths);
            let points = run.conv_grad_norms.iter().enumerate().map(|(i, (_, norm))| ((i + 1) as f64, *norm)).collect();
            Series { label: run.label.clone(), points, colour, dashed }
        })
        .collect();
    let chart = Chart {
        title: "Conv weight gradient norm at initialisation (dashed: plain)",
        x_label: "conv layer (1 = input side)",
        y_label: "gradient L2 norm",
        log_y: true,
    };
    chart.draw(path, &series)
}
