//! Trains a small GPT, declared below with `residual!`, as a character-level language model on
//! texts shipped with the repository, then writes with it.
//!
//! ```text
//! cargo run --release --example gpt -- [--steps N] [--batch B] [--lr LR] [--seed S] [--out DIR]
//!                                      [--text FILE] [--prompt TEXT] [--chars N] [--temperature T]
//! ```
//!
//! The text: four GNU licenses, verbatim, one after the other, in `examples/data/`: the GPL
//! version 2 (`gpl-2.0.txt`), the LGPL version 2.1 (`lgpl-2.1.txt`), the GNU Free Documentation
//! License version 1.3 (`fdl-1.3.txt`) and the GPL version 3 (`gpl-3.0.txt`). They are Debian's
//! copies (`/usr/share/common-licenses/{GPL-2,LGPL-2.1,GFDL-1.3,GPL-3}`, package `base-files`) of
//! the texts the Free Software Foundation publishes at <https://www.gnu.org/licenses/>, each of
//! which says "Everyone is permitted to copy and distribute verbatim copies of this license
//! document, but changing it is not allowed." Together 102,726 characters of ASCII; the first
//! 90% trains the model and the last 10% (the end of the GPL-3, from within section 11 to "How to
//! Apply These Terms") is held out. On the GPL-3 alone (35 kB, its last 10% held out) this
//! model's held-out loss stopped at 2.03 to 2.08 nats per character in our runs, with or without
//! dropout, while its training loss kept falling: too little text to generalise from.
//!
//! Each character is a token (printable ASCII and the newline: 96 of them), and the model learns
//! to predict each character of a 64-character window from the ones before it. Prints the
//! training loss (the mean over the steps since the last line) and the held-out loss, both in
//! nats per character, every `--eval-every` steps, writes both curves to `DIR/gpt_training.svg`,
//! and at the end continues `--prompt` for `--chars` characters.

mod common;

use std::error::Error;
use std::path::PathBuf;
use std::time::Instant;

use dfdx::optim::{Adam, AdamConfig, WeightDecay};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use residual::{residual, ModelInfo};

use common::plot::{Chart, Series, PALETTE};
use common::progress::steps_bar;

residual! {
    /// GPT-2's block (pre-norm): `x + attention(ln_1(x))`, then `x + mlp(ln_2(x))`, the attention
    /// causal (token i sees tokens 0..=i) and the MLP 4x wide. No dropout: in the default run
    /// (about 11 passes over the training text) the held-out loss is still falling at the end, and
    /// `dropout(0.1)` after each branch only slowed it down; much longer runs may want it.
    block Block(heads) {
        residual { ln_1: layernorm -> attn: attention(heads, causal = true) }
        -> residual {
            ln_2: layernorm -> mlp: (c_fc: linear(4 * in_features) -> gelu(approximate = true) -> c_proj: linear(in_features))
        }
    }

    /// A character-level GPT: 64 token ids in, the next-character logits at each position out
    /// (`[64, 96]`); width 64, 2 blocks of 4 heads, the head tied to the token embedding: 110,336
    /// parameters.
    model CharGpt[64] {
        wte: embedding(96, 64) -> pos_embedding
        -> h: Block(4) x 2
        -> ln_f: layernorm
        -> unembed
    }
}

type Model = CharGpt<f32, Cpu>;
/// Characters per window: the model's input length.
const CONTEXT: usize = 64;
/// The vocabulary: `'\n'` is token 0, `' '..='~'` are tokens 1..=95.
const VOCAB: usize = 96;

/// Token ids of a window batch, and what the model makes of them.
type Ids<T = NoneTape> = Tensor<(usize, Const<CONTEXT>), usize, Cpu, T>;
type Logits<T = NoneTape> = Tensor<(usize, Const<CONTEXT>, Const<VOCAB>), f32, Cpu, T>;

/// The default texts, in order, compiled in so that the example runs from any directory.
const TEXTS: [&str; 4] = [
    include_str!("data/gpl-2.0.txt"),
    include_str!("data/lgpl-2.1.txt"),
    include_str!("data/fdl-1.3.txt"),
    include_str!("data/gpl-3.0.txt"),
];
const TEXTS_NAME: &str = "examples/data/{gpl-2.0,lgpl-2.1,fdl-1.3,gpl-3.0}.txt";

const USAGE: &str = "\
Trains a small GPT (declared with residual!) as a character-level language model on four GNU
license texts (GPL-2.0, LGPL-2.1, FDL-1.3, GPL-3.0; the last 10% held out), and samples from it.

Usage: cargo run --release --example gpt -- [OPTIONS]

Options:
  --steps N          training steps                                 [default: 2000]
  --batch B          windows of 64 characters per step              [default: 8]
  --lr LR            AdamW's peak learning rate (warm-up, cosine)   [default: 0.005]
  --eval-every N     steps between held-out evaluations             [default: 200]
  --seed S           initialisation, batch and sampling seed        [default: 0]
  --out DIR          where the plot goes                            [default: out/gpt]
  --text FILE        train on this ASCII text instead (last 10% held out)
  --prompt TEXT      the start of the generated text                [default: \"This License \"]
  --chars N          characters to generate                         [default: 300]
  --temperature T    sampling temperature; 0 is greedy              [default: 0.7]";

struct Args {
    steps: usize,
    batch: usize,
    lr: f64,
    eval_every: usize,
    seed: u64,
    out: PathBuf,
    text: Option<PathBuf>,
    prompt: String,
    chars: usize,
    temperature: f32,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut p = pico_args::Arguments::from_env();
    if p.contains(["-h", "--help"]) {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let args = Args {
        steps: p.opt_value_from_str("--steps")?.unwrap_or(2000),
        batch: p.opt_value_from_str("--batch")?.unwrap_or(8),
        lr: p.opt_value_from_str("--lr")?.unwrap_or(0.005),
        eval_every: p.opt_value_from_str("--eval-every")?.unwrap_or(200),
        seed: p.opt_value_from_str("--seed")?.unwrap_or(0),
        out: p.opt_value_from_str("--out")?.unwrap_or_else(|| PathBuf::from("out/gpt")),
        text: p.opt_value_from_str("--text")?,
        prompt: p.opt_value_from_str("--prompt")?.unwrap_or_else(|| "This License ".to_string()),
        chars: p.opt_value_from_str("--chars")?.unwrap_or(300),
        temperature: p.opt_value_from_str("--temperature")?.unwrap_or(0.7),
    };
    let rest = p.finish();
    if !rest.is_empty() {
        return Err(format!("unexpected arguments {rest:?}\n\n{USAGE}").into());
    }
    if args.steps == 0 || args.batch == 0 || args.eval_every == 0 {
        return Err("--steps, --batch and --eval-every must be at least 1".into());
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        return Err(format!("--lr must be a positive number, found {}", args.lr).into());
    }
    if !(args.temperature.is_finite() && args.temperature >= 0.0) {
        return Err(format!("--temperature must be 0 (greedy) or more, found {}", args.temperature).into());
    }
    if args.prompt.is_empty() {
        return Err("--prompt must hold at least one character".into());
    }
    Ok(args)
}

/// The token of a character, if it has one.
fn token(c: char) -> Option<usize> {
    match c {
        '\n' => Some(0),
        ' '..='~' => Some(c as usize - ' ' as usize + 1),
        _ => None,
    }
}

/// The character of a token.
fn character(t: usize) -> char {
    if t == 0 {
        '\n'
    } else {
        char::from(b' ' + (t - 1) as u8)
    }
}

/// The tokens of `text`: tabs become spaces, carriage returns and form feeds (the LGPL's page
/// breaks) are dropped; anything else outside the vocabulary is an error naming the first such
/// character and where it is.
fn tokenize(text: &str, what: &str) -> Result<Vec<usize>, String> {
    let mut ids = Vec::with_capacity(text.len());
    for (line, content) in text.split('\n').enumerate() {
        if line > 0 {
            ids.push(0);
        }
        for (column, c) in content.chars().enumerate() {
            match (c, token(c)) {
                (_, Some(t)) => ids.push(t),
                ('\t', None) => ids.push(1),
                ('\r' | '\x0c', None) => {}
                (_, None) => {
                    return Err(format!(
                        "{what} holds {c:?} at line {}, column {}: the model reads printable ASCII and newlines only",
                        line + 1,
                        column + 1
                    ))
                }
            }
        }
    }
    Ok(ids)
}

/// Windows of `CONTEXT + 1` tokens starting at `starts`, as model input (the first `CONTEXT`) and
/// one-hot targets (the last `CONTEXT`, each the token after its input), rows `[N * CONTEXT, VOCAB]`.
fn windows(dev: &Cpu, text: &[usize], starts: &[usize]) -> (Ids, Tensor<(usize, Const<VOCAB>), f32, Cpu>) {
    let mut ids = Vec::with_capacity(starts.len() * CONTEXT);
    let mut targets = vec![0.0f32; starts.len() * CONTEXT * VOCAB];
    for (w, &s) in starts.iter().enumerate() {
        ids.extend_from_slice(&text[s..s + CONTEXT]);
        for (i, &next) in text[s + 1..s + CONTEXT + 1].iter().enumerate() {
            targets[(w * CONTEXT + i) * VOCAB + next] = 1.0;
        }
    }
    let n = starts.len();
    (dev.tensor_from_vec(ids, (n, Const)), dev.tensor_from_vec(targets, (n * CONTEXT, Const)))
}

/// Logits `[B, S, V]` as rows `[B * S, V]`, one per predicted character.
fn rows<T: Tape<f32, Cpu>>(logits: Logits<T>) -> Tensor<(usize, Const<VOCAB>), f32, Cpu, T> {
    let b = logits.shape().0;
    logits.reshape_like(&(b * CONTEXT, Const::<VOCAB>))
}

/// Mean cross-entropy (nats per character) over the held-out text, cut into consecutive windows,
/// in evaluation mode (no dropout).
fn held_out_loss(model: &Model, dev: &Cpu, text: &[usize]) -> f64 {
    let starts: Vec<usize> = (0..=text.len() - (CONTEXT + 1)).step_by(CONTEXT).collect();
    let mut sum = 0.0;
    for chunk in starts.chunks(32) {
        let (x, targets) = windows(dev, text, chunk);
        let loss = cross_entropy_with_logits_loss(rows(model.forward(x)), targets);
        sum += f64::from(loss.array()) * chunk.len() as f64;
    }
    sum / starts.len() as f64
}

/// Continues `prompt` by `count` characters: the model reads the last `CONTEXT` tokens (a shorter
/// text is padded on the right, which the causal attention keeps the last real token from
/// seeing) and the next character is drawn from its last real position's logits at
/// `temperature` (0: the most likely one).
fn generate(
    model: &Model,
    dev: &Cpu,
    prompt: &[usize],
    count: usize,
    temperature: f32,
    rng: &mut ChaCha8Rng,
) -> String {
    let mut ids = prompt.to_vec();
    for _ in 0..count {
        let start = ids.len().saturating_sub(CONTEXT);
        let mut window = ids[start..].to_vec();
        let last = window.len() - 1;
        window.resize(CONTEXT, 1);
        let logits = model.forward(dev.tensor_from_vec(window, (1usize, Const::<CONTEXT>)));
        let all = logits.as_vec();
        let row = &all[last * VOCAB..(last + 1) * VOCAB];
        let next = if temperature == 0.0 {
            (0..VOCAB).fold(0, |best, t| if row[t] > row[best] { t } else { best })
        } else {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let weights: Vec<f32> = row.iter().map(|l| ((l - max) / temperature).exp()).collect();
            let mut u = rng.gen::<f32>() * weights.iter().sum::<f32>();
            weights
                .iter()
                .position(|w| {
                    u -= w;
                    u <= 0.0
                })
                .unwrap_or(VOCAB - 1)
        };
        ids.push(next);
    }
    ids.iter().map(|&t| character(t)).collect()
}

/// The learning rate at `step` (1-based): a linear warm-up over the first 5% of the steps, then a
/// cosine decay to a tenth of the peak.
fn learning_rate(peak: f64, step: usize, steps: usize) -> f64 {
    let warmup = (steps / 20).max(1);
    if step <= warmup {
        return peak * step as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (steps - warmup).max(1) as f64;
    peak * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()))
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let (name, text) = match &args.text {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the text {}: {e}", path.display()))?,
        ),
        None => (TEXTS_NAME.to_string(), TEXTS.concat()),
    };
    let tokens = tokenize(&text, &name)?;
    let split = tokens.len() * 9 / 10;
    let (train, held_out) = tokens.split_at(split);
    if train.len() <= CONTEXT || held_out.len() <= CONTEXT {
        return Err(
            format!("{name} is too short: {} characters; each split needs more than {CONTEXT}", tokens.len()).into()
        );
    }
    let prompt = tokenize(&args.prompt, "--prompt")?;
    let mut seen = [false; VOCAB];
    tokens.iter().for_each(|&t| seen[t] = true);
    let distinct = seen.iter().filter(|s| **s).count();

    println!("{}", Model::SUMMARY);
    println!(
        "text: {name}, {} characters ({distinct} distinct): {} to train on, the last {} held out",
        tokens.len(),
        train.len(),
        held_out.len()
    );
    println!(
        "training: {} steps of {} windows of {CONTEXT} characters, AdamW lr {} (warm-up, cosine), weight decay 0.01",
        args.steps, args.batch, args.lr
    );

    let dev = Cpu::seed_from_u64(args.seed);
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut model = dev.build_module::<Model, f32>();
    let mut opt = Adam::new(
        &model,
        AdamConfig { lr: args.lr, weight_decay: Some(WeightDecay::Decoupled(0.01)), ..Default::default() },
    );
    let mut grads = model.alloc_grads();

    let started = Instant::now();
    let held0 = held_out_loss(&model, &dev, held_out);
    println!(
        "\n{:>6} {:>11} {:>13}   (nats per character; uniform guess ln {VOCAB} = {:.3})",
        "step",
        "train loss",
        "held-out loss",
        (VOCAB as f64).ln()
    );
    println!("{:>6} {:>11} {held0:>13.4}", 0, "-");
    let (mut losses, mut evals) = (Vec::new(), vec![(0.0, held0)]);
    let (mut interval_sum, mut interval_steps) = (0.0, 0);
    let bar = steps_bar(args.steps, "gpt".into());
    for step in 1..=args.steps {
        let starts: Vec<usize> = (0..args.batch).map(|_| rng.gen_range(0..train.len() - CONTEXT)).collect();
        let (x, targets) = windows(&dev, train, &starts);
        opt.cfg.lr = learning_rate(args.lr, step, args.steps);
        let logits: Logits<OwnedTape<f32, Cpu>> = model.forward_mut(x.traced(grads));
        let loss = cross_entropy_with_logits_loss(rows(logits), targets);
        let loss_value = loss.array();
        if !loss_value.is_finite() {
            return Err(format!("the loss is {loss_value} at step {step}: training diverged; try a lower --lr").into());
        }
        grads = loss.backward();
        opt.update(&mut model, &grads).map_err(|e| format!("optimiser update failed: {e:?}"))?;
        model.zero_grads(&mut grads);
        losses.push((step as f64, f64::from(loss_value)));
        (interval_sum, interval_steps) = (interval_sum + f64::from(loss_value), interval_steps + 1);
        bar.set_message(format!("loss {loss_value:.3}"));
        bar.inc(1);
        if step % args.eval_every == 0 || step == args.steps {
            let held = held_out_loss(&model, &dev, held_out);
            evals.push((step as f64, held));
            let train_loss = interval_sum / interval_steps as f64;
            (interval_sum, interval_steps) = (0.0, 0);
            bar.suspend(|| println!("{step:>6} {train_loss:>11.4} {held:>13.4}"));
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!("{} steps in {seconds:.1} s ({:.0} ms a step)", args.steps, 1000.0 * seconds / args.steps as f64);

    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create the output folder {}: {e}", args.out.display()))?;
    let path = args.out.join("gpt_training.svg");
    let series = vec![
        Series { label: "training loss (batch)".into(), points: losses, colour: PALETTE[0], dashed: false },
        Series { label: "held-out loss".into(), points: evals, colour: PALETTE[1], dashed: false },
    ];
    let chart = Chart {
        title: "Character-level GPT on four GNU licenses",
        x_label: "step",
        y_label: "nats per character",
        log_y: false,
    };
    chart.draw(&path, &series)?;
    println!("wrote {}", path.display());

    let how = if args.temperature == 0.0 { "greedy".to_string() } else { format!("temperature {}", args.temperature) };
    println!("\nsample ({} characters, {how}):\n", args.chars);
    println!("{}", generate(&model, &dev, &prompt, args.chars, args.temperature, &mut rng));
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
