//! The ResNet-152 and ViT-B/16 examples' shared body: print a zoo classifier's summary, build it,
//! load torchvision weights, classify an image (torchvision's eval transform) or seeded noise, and
//! time the forward pass.

use std::time::Instant;

use residual::dfdx::prelude::*;
use residual::ModelInfo;

const SIDE: usize = 224;
const CLASSES: usize = 1000;

/// A batch of images, and the classifier's logits for it.
pub type Images = Tensor<(usize, Const<3>, Const<SIDE>, Const<SIDE>), f32, Cpu>;
pub type Logits = Tensor<(usize, Const<CLASSES>), f32, Cpu>;

struct Args {
    batch: usize,
    runs: usize,
    image: Option<String>,
    weights: Option<String>,
    labels: Option<String>,
    brief: bool,
}

fn parse_args(batch: usize, runs: usize) -> Result<Args, pico_args::Error> {
    let mut a = pico_args::Arguments::from_env();
    let args = Args {
        batch: a.opt_value_from_str("--batch")?.unwrap_or(batch),
        runs: a.opt_value_from_str("--runs")?.unwrap_or(runs),
        image: a.opt_value_from_str("--image")?,
        weights: a.opt_value_from_str("--weights")?,
        labels: a.opt_value_from_str("--labels")?,
        brief: a.contains("--brief"),
    };
    let rest = a.finish();
    if !rest.is_empty() {
        eprintln!("unknown arguments: {rest:?}");
        std::process::exit(2);
    }
    Ok(args)
}

/// torchvision's eval transform: resize the short side to 256, center-crop 224, normalise.
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

/// The whole example for the ImageNet classifier `Model` (224x224 images, 1000 classes), with
/// `batch` images per pass and `runs` timed passes unless the command line says otherwise.
pub fn main<Model>(batch: usize, runs: usize)
where
    Model: ModelInfo + BuildOnDevice<Cpu, f32>,
    Model::Built: Module<Images, Output = Logits> + TensorCollection<f32, Cpu>,
{
    let args = match parse_args(batch, runs) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if args.batch == 0 || args.runs == 0 {
        eprintln!("--batch and --runs must be at least 1");
        std::process::exit(2);
    }

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
        match residual::io::load_safetensors(&mut model, path) {
            Ok(()) => println!("loaded weights from {path}"),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }

    let labels: Option<Vec<String>> = args.labels.as_ref().map(|p| match std::fs::read_to_string(p) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(e) => {
            eprintln!("error: cannot read labels {p}: {e}");
            std::process::exit(1);
        }
    });

    let per_image = 3 * SIDE * SIDE;
    let input: Vec<f32> = match &args.image {
        Some(path) => match load_image(path) {
            Ok(img) => img.repeat(args.batch),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        },
        None => {
            let noise: Tensor<(usize, Const<3>, Const<SIDE>, Const<SIDE>), f32, Cpu> =
                dev.sample_normal_like(&(args.batch, Const, Const, Const));
            noise.as_vec()
        }
    };
    assert_eq!(input.len(), args.batch * per_image);
    let x = dev.tensor_from_vec(input, (args.batch, Const::<3>, Const::<SIDE>, Const::<SIDE>));

    // The first pass warms the allocator and caches; then `runs` timed passes.
    let mut logits = model.forward(x.clone());
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        logits = model.forward(x.clone());
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median_ms(times);
    let gflop = 2.0 * Model::MACS as f64 * args.batch as f64 / 1e9;
    println!("\nforward: input [{}, 3, {SIDE}, {SIDE}] -> output {:?}", args.batch, logits.shape().concrete());
    println!(
        "latency: {ms:.1} ms per batch of {} (median of {}), {:.1} images/s, {:.1} GFLOP/s",
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
}
