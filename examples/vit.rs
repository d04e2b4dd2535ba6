//! A Vision Transformer on the CPU: the zoo's ViT-B/16.
//!
//! Builds `residual::zoo::ViT_B_16` (torchvision's `vit_b_16`: a 16x16 patch embedding, the class
//! token, 12 encoder blocks of multi-head self-attention and an MLP, the head on the class token;
//! a ~25-line `residual!` declaration), prints its compile-time summary, runs a forward pass on a
//! batch of images and prints the input and output shapes, the latency and the top-5 classes of
//! each image.
//!
//! ```text
//! cargo run --release --example vit -- [--batch N] [--runs N] [--image FILE.png|jpg]
//!                                      [--weights FILE.safetensors] [--labels FILE.txt] [--brief]
//! ```
//! Without `--image` the batch is synthetic (seeded noise); with it, the image is resized and
//! center-cropped to 224x224 and normalised as torchvision does (`ViT_B_16_Weights.IMAGENET1K_V1`'s
//! transform), and fills the batch. `--weights` loads a torchvision checkpoint exported to
//! safetensors (`safetensors.torch.save_file(torchvision.models.vit_b_16(weights=...).state_dict(), F)`);
//! without it the weights are random, so the classes mean nothing. `--labels` names the classes
//! (one per line, 1000 lines).

use std::error::Error;
use std::time::Instant;

use residual::dfdx::prelude::*;
use residual::zoo::ViT_B_16;
use residual::ModelInfo;

type Model = ViT_B_16<f32, Cpu>;
const SIDE: usize = 224;
const CLASSES: usize = 1000;

const USAGE: &str = "\
Runs torchvision's ViT-B/16, declared with residual!, on the CPU.

Usage: cargo run --release --example vit -- [OPTIONS]

Options:
  --batch N           images per forward pass               [default: 2]
  --runs N            timed passes after one warm-up pass   [default: 1]
  --image FILE        a PNG or JPEG to classify (fills the batch; default: seeded noise)
  --weights FILE      a torchvision vit_b_16 state_dict saved as safetensors
  --labels FILE       class names, one per line
  --brief             print the totals instead of the layer table";

struct Args {
    batch: usize,
    runs: usize,
    image: Option<String>,
    weights: Option<String>,
    labels: Option<String>,
    brief: bool,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = pico_args::Arguments::from_env();
    if a.contains(["-h", "--help"]) {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let args = Args {
        batch: a.opt_value_from_str("--batch")?.unwrap_or(2),
        runs: a.opt_value_from_str("--runs")?.unwrap_or(1),
        image: a.opt_value_from_str("--image")?,
        weights: a.opt_value_from_str("--weights")?,
        labels: a.opt_value_from_str("--labels")?,
        brief: a.contains("--brief"),
    };
    let rest = a.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected arguments {rest:?}\n\n{USAGE}").into());
    }
    if args.batch == 0 || args.runs == 0 {
        return Err("--batch and --runs must be at least 1".into());
    }
    Ok(args)
}

/// torchvision's eval transform for ViT-B/16: resize the short side to 256 (bilinear),
/// center-crop 224, normalise with ImageNet's mean and std.
fn load_image(path: &str) -> Result<Vec<f32>, String> {
    let img = image::open(path).map_err(|e| format!("cannot read image {path}: {e}"))?.to_rgb8();
    let (w, h) = img.dimensions();
    let scale = 256.0 / w.min(h) as f32;
    let (rw, rh) =
        (((w as f32 * scale).round() as u32).max(SIDE as u32), ((h as f32 * scale).round() as u32).max(SIDE as u32));
    let resized = image::imageops::resize(&img, rw, rh, image::imageops::FilterType::Triangle);
    let (x0, y0) = ((rw - SIDE as u32) / 2, (rh - SIDE as u32) / 2);
    const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
    const STD: [f32; 3] = [0.229, 0.224, 0.225];
    let mut chw = vec![0.0f32; 3 * SIDE * SIDE];
    for y in 0..SIDE {
        for x in 0..SIDE {
            let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                chw[c * SIDE * SIDE + y * SIDE + x] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
            }
        }
    }
    Ok(chw)
}

fn top5(logits: &[f32]) -> Vec<(usize, f32)> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exp.iter().map(|e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked.truncate(5);
    ranked
}

fn median_ms(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    if args.brief {
        let s = Model::SUMMARY;
        println!("{} (input {:?}): {} layers in the table", s.name, s.input_shape, s.layers.len());
        println!("Trainable params: {}", residual::runtime::summary::thousands(s.params as u64));
        println!("MACs (batch 1):   {:.3} G", s.macs as f64 / 1e9);
    } else {
        println!("{}", Model::SUMMARY);
    }

    let dev = Cpu::seed_from_u64(0);
    let t = Instant::now();
    let mut model = dev.build_module::<Model, f32>();
    println!("\nbuilt {} in {:.2} s", Model::NAME, t.elapsed().as_secs_f64());

    if let Some(path) = &args.weights {
        residual::io::load_safetensors(&mut model, path)?;
        println!("loaded weights from {path}");
    }

    let labels: Option<Vec<String>> = match &args.labels {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read labels {p}: {e}"))?
                .lines()
                .map(str::to_string)
                .collect(),
        ),
        None => None,
    };

    let input: Vec<f32> = match &args.image {
        Some(path) => load_image(path)?.repeat(args.batch),
        None => {
            let noise: Tensor<(usize, Const<3>, Const<SIDE>, Const<SIDE>), f32, Cpu> =
                dev.sample_normal_like(&(args.batch, Const, Const, Const));
            noise.as_vec()
        }
    };
    let x = dev.tensor_from_vec(input, (args.batch, Const::<3>, Const::<SIDE>, Const::<SIDE>));

    // The first pass warms the allocator and caches; then `runs` timed passes.
    let t = Instant::now();
    let mut logits = model.forward(x.clone());
    let first_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        logits = model.forward(x.clone());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median_ms(times);
    let gflop = 2.0 * Model::MACS as f64 * args.batch as f64 / 1e9;
    println!("\nforward: input {:?} -> output {:?}", x.shape().concrete(), logits.shape().concrete());
    println!(
        "latency: {ms:.1} ms per batch of {} (median of {}; first pass {first_ms:.1} ms), {:.2} images/s, {:.1} GFLOP/s",
        args.batch,
        args.runs,
        args.batch as f64 / (ms / 1e3),
        gflop / (ms / 1e3)
    );

    let values = logits.as_vec();
    let images_shown = if args.image.is_some() { 1 } else { args.batch };
    for (i, row) in values.chunks(CLASSES).take(images_shown).enumerate() {
        let ranked: Vec<String> = top5(row)
            .into_iter()
            .map(|(c, p)| match &labels {
                Some(l) if c < l.len() => format!("{} ({c}) {:.1}%", l[c], p * 100.0),
                _ => format!("class {c} {:.1}%", p * 100.0),
            })
            .collect();
        println!("image {i}: top-5 {}", ranked.join(", "));
    }
    if args.weights.is_none() {
        println!("(random weights: pass --weights FILE.safetensors for meaningful classes)");
    }
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
