//! Trains the zoo's ResNet-20 (He et al. 2015, CIFAR variant, option-A shortcuts) with SGD.
//!
//! ```text
//! cargo run --release --example train_cifar -- [--epochs N] [--batch B] [--train-size N]
//!     [--test-size N] [--lr LR] [--seed S] [--cifar-dir DIR] [--checkpoint PATH] [--resume]
//! ```
//!
//! Without `--cifar-dir` it trains on a synthetic ten-class task made on the fly (no download):
//! oriented gratings and shapes at random positions in random colours with pixel noise. With
//! `--cifar-dir DIR` it reads CIFAR-10's binary files (`data_batch_{1..5}.bin`,
//! `test_batch.bin`). After every epoch it prints training loss and accuracy and held-out
//! accuracy, and saves a checkpoint (weights as safetensors plus a small progress file), from
//! which `--resume` continues.

mod common;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dfdx::optim::{Momentum, Sgd, SgdConfig, WeightDecay};
use dfdx::prelude::*;
use residual::zoo::ResNet20;
use residual::ModelInfo;

use common::data::{batches, epoch_order, Batch, ChannelNorm, Cifar10, ImageSet, Split, SyntheticShapes};
use common::progress::steps_bar;
use common::train::{evaluate, forward_backward, steps_per_epoch};

type Model = ResNet20<f32, Cpu>;

const USAGE: &str = "\
Trains ResNet-20 on a synthetic ten-class image task (or CIFAR-10 with --cifar-dir).

Usage: cargo run --release --example train_cifar -- [OPTIONS]

Options:
  --epochs N         epochs to train in total, counting resumed ones  [default: 3]
  --batch B          images per SGD step                              [default: 32]
  --train-size N     training images (CIFAR: the first N of 50000)    [default: 4096]
  --test-size N      held-out images (CIFAR: the first N of 10000)    [default: 1000]
  --lr LR            initial learning rate (cosine decay per epoch)   [default: 0.05]
  --seed S           seed for initialisation, data and shuffling      [default: 0]
  --cifar-dir DIR    read CIFAR-10 binary files from DIR instead of synthetic data
  --checkpoint PATH  weights written after every epoch                [default: out/resnet20.safetensors]
  --resume           continue from --checkpoint and its .progress file
  -h, --help         print this help
";

struct Options {
    epochs: usize,
    batch: usize,
    train_size: usize,
    test_size: usize,
    lr: f64,
    seed: u64,
    cifar_dir: Option<PathBuf>,
    checkpoint: PathBuf,
    resume: bool,
}

impl Options {
    fn parse() -> Result<Self, Box<dyn Error>> {
        let mut args = pico_args::Arguments::from_env();
        if args.contains(["-h", "--help"]) {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let options = Self {
            epochs: args.opt_value_from_str("--epochs")?.unwrap_or(3),
            batch: args.opt_value_from_str("--batch")?.unwrap_or(32),
            train_size: args.opt_value_from_str("--train-size")?.unwrap_or(4096),
            test_size: args.opt_value_from_str("--test-size")?.unwrap_or(1000),
            lr: args.opt_value_from_str("--lr")?.unwrap_or(0.05),
            seed: args.opt_value_from_str("--seed")?.unwrap_or(0),
            cifar_dir: args.opt_value_from_str("--cifar-dir")?,
            checkpoint: args.opt_value_from_str("--checkpoint")?.unwrap_or_else(|| "out/resnet20.safetensors".into()),
            resume: args.contains("--resume"),
        };
        let unknown = args.finish();
        if !unknown.is_empty() {
            return Err(format!("unexpected arguments {unknown:?}\n\n{USAGE}").into());
        }
        if options.batch < 2 || options.train_size < options.batch || options.test_size == 0 {
            return Err("need --batch >= 2 (batch norm), --train-size >= --batch and --test-size >= 1".into());
        }
        Ok(options)
    }
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
    let dev = Cpu::seed_from_u64(options.seed);

    let (train_set, test_set) = load_data(&options)?;
    // Statistics from training images only, applied to both sets.
    let norm = ChannelNorm::measure(train_set.as_ref(), 2000);
    println!("train: {}", train_set.describe());
    println!("held out: {}", test_set.describe());
    println!("per-channel normalisation: {norm}");

    let mut model = dev.build_module::<Model, f32>();
    println!(
        "model: {} ({} parameters, {:.1} MMACs per image)",
        Model::NAME,
        Model::NUM_PARAMS,
        Model::MACS as f64 / 1e6
    );

    let progress_path = progress_path(&options.checkpoint);
    let first_epoch = if options.resume {
        let done = read_progress(&progress_path)?;
        residual::io::load_safetensors(&mut model, &options.checkpoint)?;
        println!("resumed from {} after epoch {done}", options.checkpoint.display());
        done
    } else {
        0
    };
    if first_epoch >= options.epochs {
        println!("nothing to do: {first_epoch} of --epochs {} already done", options.epochs);
        return Ok(());
    }

    let mut opt = Sgd::new(
        &model,
        SgdConfig { lr: options.lr, momentum: Some(Momentum::Classic(0.9)), weight_decay: Some(WeightDecay::L2(1e-4)) },
    );
    let mut grads = model.alloc_grads();
    let steps = steps_per_epoch(train_set.len(), options.batch);
    println!(
        "SGD: momentum 0.9, L2 weight decay 1e-4, lr {} with cosine decay over {} epochs; {steps} steps of {} images per epoch; chance is 10%",
        options.lr, options.epochs, options.batch
    );
    println!();
    println!("epoch      lr  train loss  train acc  held-out loss  held-out acc    time");

    let run_start = Instant::now();
    for epoch in first_epoch..options.epochs {
        let epoch_start = Instant::now();
        opt.cfg.lr = cosine_lr(options.lr, epoch, options.epochs);

        let bar = steps_bar(steps, format!("epoch {}/{}", epoch + 1, options.epochs));
        let order = epoch_order(train_set.len(), options.seed, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for indices in batches(&order, options.batch) {
            let batch = Batch::gather(train_set.as_ref(), indices, &norm, &dev);
            let (new_grads, stats) = forward_backward(&mut model, grads, &batch, &dev);
            grads = new_grads;
            opt.update(&mut model, &grads).map_err(|e| format!("optimiser update failed: {e}"))?;
            model.zero_grads(&mut grads);

            loss_sum += stats.loss as f64 * indices.len() as f64;
            correct += stats.correct;
            seen += indices.len();
            bar.set_message(format!("loss {:.3}", loss_sum / seen as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();

        let held_out = evaluate(&model, test_set.as_ref(), &norm, options.batch.max(100), &dev);
        println!(
            "{:>5}  {:>6.4}  {:>10.4}  {:>8.1}%  {:>13.4}  {:>11.1}%  {:>5.1} s",
            epoch + 1,
            opt.cfg.lr,
            loss_sum / seen as f64,
            100.0 * correct as f64 / seen as f64,
            held_out.loss,
            100.0 * held_out.accuracy,
            epoch_start.elapsed().as_secs_f64()
        );

        save_checkpoint(&model, &options.checkpoint, &progress_path, epoch + 1)?;
    }
    println!();
    println!(
        "trained epochs {}..={} in {:.1} s; checkpoint: {}",
        first_epoch + 1,
        options.epochs,
        run_start.elapsed().as_secs_f64(),
        options.checkpoint.display()
    );
    Ok(())
}

/// A training set and a held-out set.
type TrainTest = (Box<dyn ImageSet>, Box<dyn ImageSet>);

/// The synthetic task, or CIFAR-10 when `--cifar-dir` is given.
fn load_data(options: &Options) -> Result<TrainTest, Box<dyn Error>> {
    Ok(match &options.cifar_dir {
        Some(dir) => (
            Box::new(Cifar10::train(dir, Some(options.train_size))?),
            Box::new(Cifar10::test(dir, Some(options.test_size))?),
        ),
        None => (
            Box::new(SyntheticShapes::new(options.seed, Split::Train, options.train_size)),
            Box::new(SyntheticShapes::new(options.seed, Split::Test, options.test_size)),
        ),
    })
}

/// Cosine decay from `initial` by epoch: the full rate in the first epoch, close to zero in the
/// last. A function of the epoch alone, so a resumed run uses the rates an uninterrupted one would.
fn cosine_lr(initial: f64, epoch: usize, epochs: usize) -> f64 {
    initial * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / epochs as f64).cos())
}

/// `out/resnet20.safetensors` -> `out/resnet20.safetensors.progress`.
fn progress_path(checkpoint: &Path) -> PathBuf {
    let mut name = checkpoint.as_os_str().to_owned();
    name.push(".progress");
    name.into()
}

/// Writes the weights (batch-norm running statistics included), then the number of finished
/// epochs. The optimiser's momentum is not saved (dfdx keeps it private), so a resumed run
/// starts with zero momentum.
fn save_checkpoint(
    model: &Model,
    checkpoint: &Path,
    progress: &Path,
    epochs_done: usize,
) -> Result<(), Box<dyn Error>> {
    if let Some(dir) = checkpoint.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    residual::io::save_safetensors(model, checkpoint)?;
    std::fs::write(progress, format!("epochs_done = {epochs_done}\n"))?;
    Ok(())
}

fn read_progress(progress: &Path) -> Result<usize, Box<dyn Error>> {
    let text = std::fs::read_to_string(progress).map_err(|e| {
        format!("--resume: cannot read {} ({e}); train once without --resume first", progress.display())
    })?;
    text.lines()
        .find_map(|line| line.strip_prefix("epochs_done = "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("{}: no `epochs_done = N` line", progress.display()).into())
}
