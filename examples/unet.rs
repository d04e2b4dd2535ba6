//! Trains the zoo's U-Net on a synthetic segmentation task made on the fly: each 32x32 image holds
//! one to three discs and squares at random places and sizes, in random colours (the same colour
//! range for both classes and the background), with pixel noise; every pixel is labelled
//! background, disc or square, so the network has to tell shapes apart by their outline, which
//! needs context from the coarse levels and detail from the long skips.
//!
//! ```text
//! cargo run --release --example unet -- [--steps N] [--batch B] [--lr LR] [--seed S] [--out DIR]
//! ```
//!
//! Prints the training loss and the held-out pixel accuracy and mean IoU (discs and squares)
//! every `--eval-every` steps, and writes the curves to `DIR/unet_training.svg`.

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use dfdx::optim::{Adam, AdamConfig};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use residual::zoo::UNet;
use residual::ModelInfo;

use common::plot::{Chart, Series, PALETTE};
use common::progress::steps_bar;

const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const CLASSES: usize = 3;
const CLASS_NAMES: [&str; CLASSES] = ["background", "disc", "square"];

const USAGE: &str = "\
Trains a U-Net on synthetic segmentation (discs and squares, per-pixel labels).

Usage: cargo run --release --example unet -- [OPTIONS]

Options:
  --steps N        training steps                         [default: 600]
  --batch B        images per step                        [default: 16]
  --lr LR          Adam's learning rate                   [default: 0.001]
  --eval-every N   steps between held-out evaluations     [default: 100]
  --test-size N    held-out images                        [default: 128]
  --seed S         data and initialisation seed           [default: 0]
  --out DIR        where the plot goes                    [default: out/unet]";

struct Args {
    steps: usize,
    batch: usize,
    lr: f64,
    eval_every: usize,
    test_size: usize,
    seed: u64,
    out: PathBuf,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let args = Args {
        steps: p.opt_value_from_str("--steps")?.unwrap_or(600),
        batch: p.opt_value_from_str("--batch")?.unwrap_or(16),
        lr: p.opt_value_from_str("--lr")?.unwrap_or(0.001),
        eval_every: p.opt_value_from_str("--eval-every")?.unwrap_or(100),
        test_size: p.opt_value_from_str("--test-size")?.unwrap_or(128),
        seed: p.opt_value_from_str("--seed")?.unwrap_or(0),
        out: p.opt_value_from_str("--out")?.unwrap_or_else(|| PathBuf::from("out/unet")),
    };
    let rest = p.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected arguments {rest:?}\n\n{USAGE}").into());
    }
    if args.steps == 0 || args.batch == 0 || args.eval_every == 0 || args.test_size == 0 {
        return Err("--steps, --batch, --eval-every and --test-size must be at least 1".into());
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(format!("--lr must be a positive number, found {}", args.lr).into());
    }
    Ok(args)
}

/// Image `index` of the split: its pixels (`[3, 32, 32]`, in [0, 1]) and its labels (one per
/// pixel). It depends only on `(seed, index)`.
fn sample(seed: u64, index: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index);
    let colour = |rng: &mut ChaCha8Rng| [rng.gen::<f32>(), rng.gen::<f32>(), rng.gen::<f32>()];
    let background = colour(&mut rng);
    let mut pixels: Vec<f32> = (0..3 * PLANE).map(|i| background[i / PLANE]).collect();
    let mut labels = vec![0usize; PLANE];
    for _ in 0..rng.gen_range(1..=3) {
        let class = rng.gen_range(1..CLASSES);
        let radius = rng.gen_range(3.5f32..9.0);
        let (cx, cy) = (rng.gen_range(0.0..SIDE as f32), rng.gen_range(0.0..SIDE as f32));
        // A colour far enough from the background to be seen.
        let mut fg = colour(&mut rng);
        while fg.iter().zip(&background).map(|(a, b)| (a - b).abs()).sum::<f32>() < 0.6 {
            fg = colour(&mut rng);
        }
        for y in 0..SIDE {
            for x in 0..SIDE {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let inside = if class == 1 {
                    dx * dx + dy * dy <= radius * radius
                } else {
                    dx.abs().max(dy.abs()) <= radius * 0.85
                };
                if inside {
                    labels[y * SIDE + x] = class;
                    for (c, v) in fg.iter().enumerate() {
                        pixels[c * PLANE + y * SIDE + x] = *v;
                    }
                }
            }
        }
    }
    let noise = Normal::new(0.0f32, 0.08).expect("a positive, finite std");
    for p in &mut pixels {
        *p = (*p + noise.sample(&mut rng)).clamp(0.0, 1.0);
    }
    (pixels, labels)
}

type Images<T = NoneTape> = Tensor<(usize, Const<3>, Const<SIDE>, Const<SIDE>), f32, Cpu, T>;

/// A batch of images with their labels, from indices of a split.
fn batch(dev: &Cpu, seed: u64, indices: impl Iterator<Item = u64>) -> (Images, Vec<usize>) {
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    let mut n = 0;
    for i in indices {
        let (p, l) = sample(seed, i);
        pixels.extend(p);
        labels.extend(l);
        n += 1;
    }
    (dev.tensor_from_vec(pixels, (n, Const, Const, Const)), labels)
}

/// Per-pixel scores `[B, 3, H, W]` as rows `[B * H * W, 3]`.
fn rows<T: Tape<f32, Cpu>>(
    scores: Tensor<(usize, Const<CLASSES>, Const<SIDE>, Const<SIDE>), f32, Cpu, T>,
) -> Tensor<(usize, Const<CLASSES>), f32, Cpu, T> {
    let b = scores.shape().0;
    let per_pixel = scores.permute::<_, Axes4<0, 2, 3, 1>>();
    per_pixel.reshape_like(&(b * PLANE, Const::<CLASSES>))
}

/// The arg-max class of each row of `[N, 3]` scores.
fn predictions(scores: &[f32]) -> Vec<usize> {
    scores
        .chunks_exact(CLASSES)
        .map(|s| (0..CLASSES).fold(0, |best, c| if s[c] > s[best] { c } else { best }))
        .collect()
}

/// Held-out pixel accuracy and the mean intersection-over-union of the two shape classes.
fn evaluate(model: &UNet<f32, Cpu>, dev: &Cpu, seed: u64, size: usize) -> (f64, f64) {
    let (mut correct, mut total) = (0usize, 0usize);
    let (mut inter, mut union) = ([0usize; CLASSES], [0usize; CLASSES]);
    for start in (0..size).step_by(32) {
        let (x, labels) = batch(dev, seed, (start as u64..(start + 32).min(size) as u64).map(|i| i + 1_000_000));
        let pred = predictions(&rows(model.forward(x)).as_vec());
        for (p, l) in pred.iter().zip(&labels) {
            correct += usize::from(p == l);
            total += 1;
            for c in 1..CLASSES {
                inter[c] += usize::from(*p == c && *l == c);
                union[c] += usize::from(*p == c || *l == c);
            }
        }
    }
    let iou = (1..CLASSES).map(|c| inter[c] as f64 / union[c].max(1) as f64).sum::<f64>() / (CLASSES - 1) as f64;
    (correct as f64 / total as f64, iou)
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    println!("{}", <UNet<f32, Cpu> as ModelInfo>::SUMMARY);
    println!(
        "task: {} classes per pixel ({}), {}x{} images made on the fly; {} steps of batch {}, Adam lr {}",
        CLASSES,
        CLASS_NAMES.join(", "),
        SIDE,
        SIDE,
        args.steps,
        args.batch,
        args.lr
    );
    let dev = Cpu::seed_from_u64(args.seed);
    let mut model = dev.build_module::<UNet<f32, Cpu>, f32>();
    let mut opt = Adam::new(&model, AdamConfig { lr: args.lr, ..Default::default() });
    let mut grads = model.alloc_grads();
    let (acc0, iou0) = evaluate(&model, &dev, args.seed, args.test_size);
    println!("{:>6} {:>10} {:>14} {:>10}", "step", "train loss", "pixel accuracy", "mean IoU");
    println!("{:>6} {:>10} {:>13.1}% {:>10.3}", 0, "-", 100.0 * acc0, iou0);
    let (mut losses, mut evals) = (Vec::new(), vec![(0.0, acc0, iou0)]);
    let bar = steps_bar(args.steps, "unet".into());
    let started = Instant::now();
    for step in 1..=args.steps {
        let first = ((step - 1) * args.batch) as u64;
        let (x, labels) = batch(&dev, args.seed, first..first + args.batch as u64);
        let mut targets = vec![0.0f32; labels.len() * CLASSES];
        for (i, l) in labels.iter().enumerate() {
            targets[i * CLASSES + l] = 1.0;
        }
        let targets = dev.tensor_from_vec(targets, (labels.len(), Const::<CLASSES>));
        let scores = model.forward_mut(x.traced(grads));
        let loss = cross_entropy_with_logits_loss(rows(scores), targets);
        let loss_value = loss.array();
        if !loss_value.is_finite() {
            return Err(format!("the loss is {loss_value} at step {step}: training diverged; try a lower --lr").into());
        }
        grads = loss.backward();
        opt.update(&mut model, &grads).map_err(|e| format!("optimiser update failed: {e:?}"))?;
        model.zero_grads(&mut grads);
        losses.push((step as f64, f64::from(loss_value)));
        bar.set_message(format!("loss {loss_value:.4}"));
        bar.inc(1);
        if step % args.eval_every == 0 || step == args.steps {
            let (acc, iou) = evaluate(&model, &dev, args.seed, args.test_size);
            evals.push((step as f64, acc, iou));
            bar.suspend(|| println!("{step:>6} {loss_value:>10.4} {:>13.1}% {iou:>10.3}", 100.0 * acc));
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!("{} steps in {seconds:.1} s ({:.0} ms a step)", args.steps, 1000.0 * seconds / args.steps as f64);

    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join("unet_training.svg");
    let series = vec![
        Series { label: "training loss".into(), points: losses, colour: PALETTE[0], dashed: false },
        Series {
            label: "held-out mean IoU".into(),
            points: evals.iter().map(|(s, _, iou)| (*s, *iou)).collect(),
            colour: PALETTE[1],
            dashed: false,
        },
        Series {
            label: "held-out pixel accuracy".into(),
            points: evals.iter().map(|(s, acc, _)| (*s, *acc)).collect(),
            colour: PALETTE[2],
            dashed: true,
        },
    ];
    let chart = Chart { title: "U-Net on synthetic discs and squares", x_label: "step", y_label: "", log_y: false };
    chart.draw(&path, &series)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> std::process::ExitCode {
    match parse_args().and_then(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
