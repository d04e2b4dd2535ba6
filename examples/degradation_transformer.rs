//! The degradation experiment for transformers: a deep pre-norm transformer against its twin
//! with the residual connections taken out, on a small language both have to model token by
//! token. The transformer counterpart of `examples/degradation.rs`.
//!
//! ```text
//! cargo run --release --example degradation_transformer -- [--steps N] [--batch B]
//!     [--lr LR] [--warmup N] [--eval-every N] [--seed S] [--out DIR]
//! ```
//!
//! Both networks are declared below with `residual!`: token and position embeddings, 12
//! blocks of width 64 with 4 causal attention heads and an MLP of 128, a final layer norm and a
//! linear head over the 16 tokens. The residual block is GPT-2's, `x + attn(ln_1(x))` then
//! `x + mlp(ln_2(x))`; the plain block is the same layers in a plain sequence,
//! `ln_1 -> attn -> ln_2 -> mlp`. Their parameters have the same paths, so both nets have the
//! same parameter count and, built from one seed, the same initial weights (checked). Both see
//! the same batches in the same order with the same optimiser.
//!
//! The language: each sentence is 16 tokens of a Fibonacci sequence modulo 16: two random start
//! tokens, then every token is the sum of the two before it, mod 16. From the third token on,
//! the next token is determined, but only by the current token *and the one before*: a model has
//! to move information between positions (attention) and combine it (the MLP). A quarter of the
//! 256 start pairs is held out: the held-out sentences are the 64 sequences whose start pair the
//! nets never see as a start. Their pairs of tokens do occur inside training sentences, but
//! never at the same position (the rule runs backwards too, `x[t-2] = x[t] - x[t-1]`, so a pair
//! at a position fixes the whole sentence): a net that memorised what follows which pair *where*
//! fails on them; only the rule, applied at any position, carries over.
//!
//! It prints
//!
//! 1. at initialisation, on the first batch: for every block (input side first) the gradient
//!    norm of its attention's packed `in_proj_weight` and of its MLP's first weight, and the
//!    *token spread* after the block, `||X - mean over positions of X|| / ||X||` (0 when every
//!    position holds the same vector). The spread is measured by running the net one block at a
//!    time (the blocks declared as models of their own, loaded with the net's weights; their
//!    composition is checked against the whole net's logits);
//! 2. the training loss and the held-out loss and next-token accuracy over the run,
//!
//! and draws them to SVG files in `--out`.
//!
//! What the defaults show (12 blocks, seed 0, about two minutes on 2 busy cores): the plain
//! stack's gradients do not vanish (the layer norms keep every block's gradient within a factor
//! of 4 of the others; seed 1 too), but its positions collapse onto one vector, the spread
//! halving block after block to about 1e-3 after 12 blocks (attention averages positions, and
//! nothing carries a position's own value past it). Its output hardly depends on which token
//! sits where, so it learns little more than the tokens' frequencies: held-out accuracy stays
//! near chance. The residual stack keeps a spread of about 0.3, fits the training sentences
//! (99.8%) and gets 83% of the held-out tokens right after 300 steps.

mod common;

use std::collections::BTreeMap;
use std::error::Error;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dfdx::nn::tensor_collection::{
    RecursiveWalker, TensorCollection, TensorOptions, TensorViewer, TensorVisitor, ViewTensorMut, ViewTensorName,
    ViewTensorRef,
};
use dfdx::optim::{Adam, AdamConfig};
use dfdx::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use residual::residual;
use residual::ModelInfo;

use common::plot::{Chart, Series, PALETTE};
use common::progress::steps_bar;

/// Tokens of the language (the vocabulary).
const VOCAB: usize = 16;
/// Tokens per sentence (the context of the nets).
const SEQ: usize = 16;
/// The nets' width.
const WIDTH: usize = 64;
/// Start pairs held out, of `VOCAB * VOCAB`.
const HELD_OUT_STARTS: usize = 64;
/// Blocks per net, as declared below (`x 12`). One depth only: every declared pair of nets adds
/// about half a minute to the example's release build, which CI pays on every run. The 6- and
/// 24-block figures in docs/EXAMPLES.md were measured with `x 6` / `x 24` written instead.
const DEPTH: usize = 12;

// `residual!` takes integer literals and block parameters, not Rust constants: 16 is `VOCAB`
// and `SEQ`, 64 is `WIDTH`.
residual! {
    /// A pre-norm transformer block (GPT-2's layout): `x + attn(ln_1(x))`, then `x + mlp(ln_2(x))`.
    block ResidualBlock(heads, hidden) {
        residual { ln_1: layernorm -> attn: attention(heads, causal = true) }
        -> residual { ln_2: layernorm -> mlp: (fc1: linear(hidden) -> gelu -> fc2: linear(in_features)) }
    }

    /// The same layers with the two residual connections taken out.
    block PlainBlock(heads, hidden) {
        ln_1: layernorm -> attn: attention(heads, causal = true)
        -> ln_2: layernorm -> mlp: (fc1: linear(hidden) -> gelu -> fc2: linear(in_features))
    }

    /// 12 residual blocks; next-token logits at each position.
    model Residual12[16] {
        wte: embedding(16, 64) -> pos_embedding -> h: ResidualBlock(4, 128) x 12 -> ln_f: layernorm -> head: linear(16)
    }
    /// `Residual12` without residual connections.
    model Plain12[16] {
        wte: embedding(16, 64) -> pos_embedding -> h: PlainBlock(4, 128) x 12 -> ln_f: layernorm -> head: linear(16)
    }

    // The nets' pieces, to run them one block at a time. Their parameter paths are the nets'
    // (a block's under `stage` instead of `h.{i}`), so the nets' weights load into them by name.

    /// The embeddings: token ids to the first hidden state.
    model Embed[16] { wte: embedding(16, 64) -> pos_embedding }
    /// One residual block on a hidden state.
    model ResidualStage[16, 64] { stage: ResidualBlock(4, 128) }
    /// One plain block on a hidden state.
    model PlainStage[16, 64] { stage: PlainBlock(4, 128) }
    /// The final layer norm and the head.
    model Readout[16, 64] { ln_f: layernorm -> head: linear(16) }
}

const USAGE: &str = "\
A deep pre-norm transformer versus the same layers without residual connections: gradient norms
and token spread at initialisation, and training on a small language (Fibonacci sequences mod 16).

Usage: cargo run --release --example degradation_transformer -- [OPTIONS]

Options:
  --steps N        Adam steps per network                      [default: 300]
  --batch B        sentences per step                          [default: 32]
  --lr LR          Adam's learning rate after the warm-up      [default: 0.001]
  --warmup N       linear warm-up: lr*(k+1)/N at step k < N    [default: 20]
  --eval-every N   steps between held-out evaluations          [default: 25]
  --seed S         seed for initialisation and data            [default: 0]
  --out DIR        where the SVG plots go                      [default: out/degradation_transformer]
  -h, --help       print this help
";

struct Options {
    steps: usize,
    batch: usize,
    depth: usize,
    lr: f64,
    warmup: usize,
    eval_every: usize,
    seed: u64,
    out: PathBuf,
}

impl Options {
    fn parse() -> Result<Self, Box<dyn Error>> {
        let mut args = pico_args::Arguments::from_env();
        if args.contains(["-h", "--help"]) {
            print!("{USAGE}");
            std::process::exit(0);
        }
        let options = Self {
            steps: args.opt_value_from_str("--steps")?.unwrap_or(300),
            batch: args.opt_value_from_str("--batch")?.unwrap_or(32),
            depth: DEPTH,
            lr: args.opt_value_from_str("--lr")?.unwrap_or(1e-3),
            warmup: args.opt_value_from_str("--warmup")?.unwrap_or(20),
            eval_every: args.opt_value_from_str("--eval-every")?.unwrap_or(25),
            seed: args.opt_value_from_str("--seed")?.unwrap_or(0),
            out: args.opt_value_from_str("--out")?.unwrap_or_else(|| "out/degradation_transformer".into()),
        };
        let unknown = args.finish();
        if !unknown.is_empty() {
            return Err(format!("unexpected arguments {unknown:?}\n\n{USAGE}").into());
        }
        if options.steps == 0 || options.batch == 0 || options.eval_every == 0 {
            return Err("--steps, --batch and --eval-every must be at least 1".into());
        }
        if !(options.lr.is_finite() && options.lr > 0.0) {
            return Err(format!("--lr must be a positive number, found {}", options.lr).into());
        }
        Ok(options)
    }
}

// ---------------------------------------------------------------------------------------------
// The language
// ---------------------------------------------------------------------------------------------

/// Fibonacci sequences mod `VOCAB`, split by their start pair.
struct Language {
    train_starts: Vec<(usize, usize)>,
    held_out_starts: Vec<(usize, usize)>,
}

impl Language {
    fn new(seed: u64) -> Self {
        let mut starts: Vec<(usize, usize)> = (0..VOCAB * VOCAB).map(|i| (i / VOCAB, i % VOCAB)).collect();
        // A stream of its own, apart from the batches' (seeded with `seed` itself).
        starts.shuffle(&mut ChaCha8Rng::seed_from_u64(seed ^ 0xF1B0_F1B0));
        let train_starts = starts.split_off(HELD_OUT_STARTS);
        Self { train_starts, held_out_starts: starts }
    }

    fn sentence((a, b): (usize, usize)) -> [usize; SEQ] {
        let mut s = [0; SEQ];
        (s[0], s[1]) = (a, b);
        for t in 2..SEQ {
            s[t] = (s[t - 1] + s[t - 2]) % VOCAB;
        }
        s
    }

    /// `n` training sentences with start pairs drawn from `rng`, concatenated.
    fn train_batch(&self, rng: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
        (0..n).flat_map(|_| Self::sentence(self.train_starts[rng.gen_range(0..self.train_starts.len())])).collect()
    }

    /// Every held-out sentence, concatenated.
    fn held_out(&self) -> Vec<usize> {
        self.held_out_starts.iter().flat_map(|&start| Self::sentence(start)).collect()
    }

    /// The lowest mean loss over the `SEQ - 1` predictions of a training sentence: only the
    /// second token is uncertain (given the first, uniform over the training start pairs that
    /// begin with it); the rest are determined.
    fn loss_floor(&self) -> f64 {
        let mut per_first = [0usize; VOCAB];
        for &(a, _) in &self.train_starts {
            per_first[a] += 1;
        }
        let n = self.train_starts.len() as f64;
        let entropy: f64 = per_first.iter().filter(|&&c| c > 0).map(|&c| c as f64 / n * (c as f64).ln()).sum();
        entropy / (SEQ - 1) as f64
    }
}

// ---------------------------------------------------------------------------------------------
// Models, loss
// ---------------------------------------------------------------------------------------------

type Tape = OwnedTape<f32, Cpu>;
type Ids<T = NoneTape> = Tensor<(usize, Const<SEQ>), usize, Cpu, T>;
type Hidden = Tensor<(usize, Const<SEQ>, Const<WIDTH>), f32, Cpu>;
type Logits<T = NoneTape> = Tensor<(usize, Const<SEQ>, Const<VOCAB>), f32, Cpu, T>;

/// What the experiment needs of a net: token ids to next-token logits, with and without a tape.
trait LanguageModel:
    Module<Ids, Output = Logits>
    + Module<Ids<Tape>, Output = Logits<Tape>>
    + TensorCollection<f32, Cpu>
    + BuildOnDevice<Cpu, f32, Built = Self>
    + ModelInfo
{
}

impl<M> LanguageModel for M where
    M: Module<Ids, Output = Logits>
        + Module<Ids<Tape>, Output = Logits<Tape>>
        + TensorCollection<f32, Cpu>
        + BuildOnDevice<Cpu, f32, Built = Self>
        + ModelInfo
{
}

/// One block of a net as a model of its own (`ResidualStage`, `PlainStage`).
trait Stage: Module<Hidden, Output = Hidden> + TensorCollection<f32, Cpu> + BuildOnDevice<Cpu, f32, Built = Self> {}

impl<M> Stage for M where
    M: Module<Hidden, Output = Hidden> + TensorCollection<f32, Cpu> + BuildOnDevice<Cpu, f32, Built = Self>
{
}

/// Mean cross-entropy of the `SEQ - 1` next-token predictions of every sentence of `ids` (the
/// logits of the last position predict nothing), and how many of the determined ones (the
/// third token on) the arg-max gets right, out of how many.
fn next_token_loss<T: dfdx::tensor::Tape<f32, Cpu>>(
    logits: Logits<T>,
    ids: &[usize],
    dev: &Cpu,
) -> (Tensor<Rank0, f32, Cpu, T>, usize, usize) {
    let n = ids.len() / SEQ;
    let scores = logits.as_vec();
    let mut weights = vec![0f32; n * SEQ * VOCAB];
    let (mut correct, mut determined) = (0, 0);
    for row in 0..n * SEQ {
        if row % SEQ == SEQ - 1 {
            continue;
        }
        let target = ids[row + 1];
        weights[row * VOCAB + target] = 1.0 / (n * (SEQ - 1)) as f32;
        if row % SEQ >= 1 {
            let s = &scores[row * VOCAB..(row + 1) * VOCAB];
            let best = (0..VOCAB).fold(0, |best, c| if s[c] > s[best] { c } else { best });
            correct += usize::from(best == target);
            determined += 1;
        }
    }
    let weights = dev.tensor_from_vec(weights, (n, Const::<SEQ>, Const::<VOCAB>));
    let loss = (logits.log_softmax::<Axis<2>>() * weights).sum::<Rank0, _>().negate();
    (loss, correct, determined)
}

fn ids_tensor(ids: &[usize], dev: &Cpu) -> Ids {
    dev.tensor_from_vec(ids.to_vec(), (ids.len() / SEQ, Const))
}

/// Held-out loss and next-token accuracy (determined positions).
#[derive(Clone, Copy)]
struct Eval {
    loss: f32,
    accuracy: f32,
}

fn evaluate<M: LanguageModel>(model: &M, held_out: &[usize], dev: &Cpu) -> Eval {
    let (loss, correct, determined) = next_token_loss(model.forward(ids_tensor(held_out, dev)), held_out, dev);
    Eval { loss: loss.array(), accuracy: correct as f32 / determined as f32 }
}

// ---------------------------------------------------------------------------------------------
// Reading and copying tensors by parameter path
// ---------------------------------------------------------------------------------------------

/// Every trainable tensor of `model` by path: its values, or with `grads` its gradient's.
fn read_tensors<M: TensorCollection<f32, Cpu>>(
    model: &M,
    grads: Option<&Gradients<f32, Cpu>>,
) -> BTreeMap<String, Vec<f32>> {
    let mut reader = Reader { grads, out: BTreeMap::new() };
    let walked = M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut reader });
    walked.unwrap_or_else(|never| match never {});
    reader.out
}

struct Reader<'a> {
    grads: Option<&'a Gradients<f32, Cpu>>,
    out: BTreeMap<String, Vec<f32>>,
}

impl TensorVisitor<f32, Cpu> for Reader<'_> {
    type Viewer = (ViewTensorRef, ViewTensorName);
    type Err = std::convert::Infallible;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        options: TensorOptions<S, f32, Cpu>,
        (tensor, name): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, Cpu>>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, Self::Err> {
        if options.do_gradient_update {
            let values = match self.grads {
                Some(grads) => grads.get(tensor).as_vec(),
                None => tensor.as_vec(),
            };
            self.out.insert(name, values);
        }
        Ok(None)
    }
}

/// Sets every tensor of `model` to `source[rename(its path)]`.
fn load_tensors<M: TensorCollection<f32, Cpu>>(
    model: &mut M,
    source: &BTreeMap<String, Vec<f32>>,
    rename: &dyn Fn(&str) -> String,
) -> Result<(), String> {
    let mut writer = Writer { source, rename };
    M::iter_tensors(&mut RecursiveWalker { m: (model, String::new()), f: &mut writer }).map(|_| ())
}

struct Writer<'a> {
    source: &'a BTreeMap<String, Vec<f32>>,
    rename: &'a dyn Fn(&str) -> String,
}

impl TensorVisitor<f32, Cpu> for Writer<'_> {
    type Viewer = (ViewTensorMut, ViewTensorName);
    type Err = String;
    type E2 = f32;
    type D2 = Cpu;

    fn visit<S: Shape>(
        &mut self,
        _: TensorOptions<S, f32, Cpu>,
        (tensor, name): <Self::Viewer as TensorViewer>::View<'_, Tensor<S, f32, Cpu>>,
    ) -> Result<Option<Tensor<S, f32, Cpu>>, Self::Err> {
        let key = (self.rename)(&name);
        match self.source.get(&key) {
            Some(values) if values.len() == tensor.shape().num_elements() => tensor.copy_from(values),
            Some(values) => {
                return Err(format!(
                    "`{key}` has {} values, `{name}` needs {}",
                    values.len(),
                    tensor.shape().num_elements()
                ))
            }
            None => return Err(format!("no `{key}` for `{name}`")),
        }
        Ok(None)
    }
}

fn l2(values: &[f32]) -> f64 {
    values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt()
}

/// `||X - mean over positions of X|| / ||X||` of each sentence's `[SEQ, WIDTH]` hidden state,
/// averaged over the batch: 0 when every position holds the same vector (rank collapse).
fn token_spread(hidden: &Hidden) -> f64 {
    let values = hidden.as_vec();
    let sentences = values.chunks_exact(SEQ * WIDTH);
    let n = sentences.len().max(1);
    let total: f64 = sentences
        .map(|x| {
            let mean: Vec<f64> =
                (0..WIDTH).map(|d| (0..SEQ).map(|t| f64::from(x[t * WIDTH + d])).sum::<f64>() / SEQ as f64).collect();
            let spread: f64 =
                x.iter().enumerate().map(|(i, &v)| (f64::from(v) - mean[i % WIDTH]).powi(2)).sum::<f64>().sqrt();
            spread / l2(x).max(f64::MIN_POSITIVE)
        })
        .sum();
    total / n as f64
}

/// Runs `model` one block at a time on `ids`: the token spread after the embeddings and after
/// each block, and the largest difference between the composed logits and `model`'s own.
fn spread_by_block<M: LanguageModel, B: Stage>(
    model: &M,
    depth: usize,
    ids: &Ids,
    dev: &Cpu,
) -> Result<(Vec<f64>, f32), String> {
    let weights = read_tensors(model, None);
    let mut embed = dev.build_module::<Embed<f32, Cpu>, f32>();
    load_tensors(&mut embed, &weights, &|name| name.to_string())?;
    let mut readout = dev.build_module::<Readout<f32, Cpu>, f32>();
    load_tensors(&mut readout, &weights, &|name| name.to_string())?;
    let mut stage = dev.build_module::<B, f32>();

    let mut hidden = embed.forward(ids.clone());
    let mut spread = vec![token_spread(&hidden)];
    for block in 0..depth {
        let prefix = format!("h.{block}.");
        load_tensors(&mut stage, &weights, &|name| name.replacen("stage.", &prefix, 1))?;
        hidden = stage.forward(hidden);
        spread.push(token_spread(&hidden));
    }
    let composed = readout.forward(hidden).as_vec();
    let whole = model.forward(ids.clone()).as_vec();
    let error = composed.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    Ok((spread, error))
}

// ---------------------------------------------------------------------------------------------
// The experiment
// ---------------------------------------------------------------------------------------------

/// Everything measured on one net.
struct Run {
    label: String,
    residual: bool,
    params: usize,
    /// Per block, input side first: gradient L2 norms at initialisation.
    attn_grad: Vec<f64>,
    fc1_grad: Vec<f64>,
    /// Gradient L2 norms of the token and position embeddings at initialisation.
    wte_grad: f64,
    pos_grad: f64,
    /// Token spread after the embeddings (index 0) and after each block.
    spread: Vec<f64>,
    probe_error: f32,
    /// Training loss of every step.
    losses: Vec<f32>,
    /// Next-token accuracy on the determined tokens of every step's batch (before its update).
    train_accuracy: Vec<f32>,
    /// `(step, held-out evaluation after that many steps)`.
    evals: Vec<(usize, Eval)>,
    seconds: f64,
}

fn run_network<M: LanguageModel, B: Stage>(
    options: &Options,
    language: &Language,
    residual: bool,
) -> Result<Run, Box<dyn Error>> {
    let started = Instant::now();
    let dev = Cpu::seed_from_u64(options.seed);
    let mut model = dev.build_module::<M, f32>();
    let mut opt = Adam::new(&model, AdamConfig { lr: options.lr, ..Default::default() });
    let mut grads = model.alloc_grads();
    // The same batches, in the same order, for both nets.
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let held_out = language.held_out();
    let label = M::NAME.to_string();

    let mut run = Run {
        label: label.clone(),
        residual,
        params: M::NUM_PARAMS,
        attn_grad: Vec::new(),
        fc1_grad: Vec::new(),
        wte_grad: 0.0,
        pos_grad: 0.0,
        spread: Vec::new(),
        probe_error: 0.0,
        losses: Vec::with_capacity(options.steps),
        train_accuracy: Vec::with_capacity(options.steps),
        evals: vec![(0, evaluate(&model, &held_out, &dev))],
        seconds: 0.0,
    };
    let bar = steps_bar(options.steps, label);
    for step in 0..options.steps {
        let ids = language.train_batch(&mut rng, options.batch);
        let x = ids_tensor(&ids, &dev);
        let (loss, correct, determined) = next_token_loss(model.forward(x.clone().traced(grads)), &ids, &dev);
        let loss_value = loss.array();
        if !loss_value.is_finite() {
            return Err(format!("{}: the loss is {loss_value} at step {step}; try a lower --lr", run.label).into());
        }
        grads = loss.backward();
        if step == 0 {
            // Before the first update: the net at initialisation, on the first batch.
            let norms: BTreeMap<String, f64> =
                read_tensors(&model, Some(&grads)).into_iter().map(|(name, g)| (name, l2(&g))).collect();
            let norm = |name: String| norms.get(&name).copied().ok_or(format!("no tensor `{name}`"));
            for block in 0..options.depth {
                run.attn_grad.push(norm(format!("h.{block}.attn.in_proj_weight"))?);
                run.fc1_grad.push(norm(format!("h.{block}.mlp.fc1.weight"))?);
            }
            run.wte_grad = norm("wte.weight".into())?;
            run.pos_grad = norm("pos_embedding".into())?;
            (run.spread, run.probe_error) = spread_by_block::<M, B>(&model, options.depth, &x, &dev)?;
        }
        run.losses.push(loss_value);
        run.train_accuracy.push(correct as f32 / determined as f32);
        opt.cfg.lr = options.lr * ((step + 1) as f64 / options.warmup.max(1) as f64).min(1.0);
        opt.update(&mut model, &grads).map_err(|e| format!("optimiser update failed: {e:?}"))?;
        model.zero_grads(&mut grads);
        if (step + 1) % options.eval_every == 0 || step + 1 == options.steps {
            run.evals.push((step + 1, evaluate(&model, &held_out, &dev)));
        }
        bar.set_message(format!("loss {loss_value:.3}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    run.seconds = started.elapsed().as_secs_f64();
    let last = run.evals.last().map(|(_, e)| *e).expect("evaluated at least once");
    println!(
        "{:<11} {} params  {} steps in {:.1} s ({:.0} ms/step)  held-out loss {:.3}, accuracy {:.1}%",
        run.label,
        run.params,
        options.steps,
        run.seconds,
        1000.0 * run.seconds / options.steps as f64,
        last.loss,
        100.0 * last.accuracy
    );
    Ok(run)
}

/// The plain net and the residual one of a depth.
fn experiment<P: LanguageModel, R: LanguageModel>(
    options: &Options,
    language: &Language,
) -> Result<(Run, Run), Box<dyn Error>> {
    // Same seed, same parameter paths in the same order: the same initial weights.
    let plain = read_tensors(&Cpu::seed_from_u64(options.seed).build_module::<P, f32>(), None);
    let residual = read_tensors(&Cpu::seed_from_u64(options.seed).build_module::<R, f32>(), None);
    if plain != residual {
        return Err(format!("{} and {} do not start from the same weights", P::NAME, R::NAME).into());
    }
    println!(
        "{} and {}: {} parameters each, {} tensors, the same initial weights (same seed, same paths)",
        P::NAME,
        R::NAME,
        P::NUM_PARAMS,
        plain.len()
    );
    println!();
    let plain = run_network::<P, PlainStage<f32, Cpu>>(options, language, false)?;
    let residual = run_network::<R, ResidualStage<f32, Cpu>>(options, language, true)?;
    Ok((plain, residual))
}

fn main() -> Result<(), Box<dyn Error>> {
    let options = Options::parse()?;
    let started = Instant::now();
    let language = Language::new(options.seed);
    println!(
        "language: Fibonacci sequences mod {VOCAB}, {SEQ} tokens; {} start pairs train, {} held out; \
         next-token loss floor {:.3} (chance ln {VOCAB} = {:.3})",
        language.train_starts.len(),
        language.held_out_starts.len(),
        language.loss_floor(),
        (VOCAB as f64).ln()
    );
    println!(
        "each net: {} blocks of width {WIDTH}, 4 causal heads, MLP 128; {} Adam steps of {} sentences, \
         lr {} after a linear warm-up of {} steps, seed {}",
        options.depth, options.steps, options.batch, options.lr, options.warmup, options.seed
    );
    let (plain, residual) = experiment::<Plain12<f32, Cpu>, Residual12<f32, Cpu>>(&options, &language)?;
    let runs = [plain, residual];

    println!();
    print_initialisation(&runs);
    println!();
    print_training(&runs);
    println!();

    std::fs::create_dir_all(&options.out)?;
    let paths = [
        options.out.join("grad_norms.svg"),
        options.out.join("token_spread.svg"),
        options.out.join("loss.svg"),
        options.out.join("held_out_accuracy.svg"),
    ];
    plot_gradient_norms(&runs, &paths[0])?;
    plot_spread(&runs, &paths[1])?;
    plot_losses(&runs, &paths[2])?;
    plot_accuracy(&runs, &paths[3])?;
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    println!("plots: {}", shown.join(", "));
    println!("total time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tables
// ---------------------------------------------------------------------------------------------

fn print_initialisation(runs: &[Run; 2]) {
    let [plain, residual] = runs;
    println!("(a) at initialisation, first batch, before any update (both nets: the same weights, the same batch):");
    println!("    gradient L2 norm of each block's attention in_proj_weight [192, 64] and MLP fc1 weight [128, 64],");
    println!("    and the token spread after the block, ||X - mean over positions|| / ||X|| (0: every position alike)");
    println!(
        "{:<7} | {:^34} | {:^34}",
        "",
        format!("{} (plain)", plain.label),
        format!("{} (residual)", residual.label)
    );
    println!(
        "{:<7} | {:>11} {:>11} {:>10} | {:>11} {:>11} {:>10}",
        "block", "attn grad", "fc1 grad", "spread", "attn grad", "fc1 grad", "spread"
    );
    println!(
        "{:<7} | {:>11} {:>11} {:>10.4} | {:>11} {:>11} {:>10.4}",
        "embed", "", "", plain.spread[0], "", "", residual.spread[0]
    );
    for block in 0..plain.attn_grad.len() {
        println!(
            "{:<7} | {:>11.3e} {:>11.3e} {:>10.2e} | {:>11.3e} {:>11.3e} {:>10.4}",
            block + 1,
            plain.attn_grad[block],
            plain.fc1_grad[block],
            plain.spread[block + 1],
            residual.attn_grad[block],
            residual.fc1_grad[block],
            residual.spread[block + 1]
        );
    }
    for run in runs {
        let first_last = |g: &[f64]| g[0] / g[g.len() - 1];
        println!(
            "{:<11} first/last block: attn {:.2}, fc1 {:.2}; embedding gradients: wte {:.3e}, pos_embedding {:.3e}; \
             block-by-block logits match the net's within {:.1e}",
            run.label,
            first_last(&run.attn_grad),
            first_last(&run.fc1_grad),
            run.wte_grad,
            run.pos_grad,
            run.probe_error
        );
    }
}

/// Mean of `values[from..to]` (per-step values, 0-based, `to` exclusive).
fn mean_loss(values: &[f32], from: usize, to: usize) -> f32 {
    let window = &values[from.min(values.len())..to.min(values.len())];
    window.iter().sum::<f32>() / window.len().max(1) as f32
}

fn print_training(runs: &[Run; 2]) {
    println!("(b) training: loss and next-token accuracy (on the determined tokens; chance 6.2%) on the training");
    println!(
        "    batches of the steps since the last evaluation (step 0: the first batch), and on the held-out sentences"
    );
    print!("{:>6}", "");
    for run in runs {
        print!(" | {:^33}", run.label);
    }
    println!();
    print!("{:>6}", "step");
    for _ in runs {
        print!(" | {:>7} {:>7} {:>8} {:>8}", "train", "acc", "held-out", "acc");
    }
    println!();
    for (i, (step, _)) in runs[0].evals.iter().enumerate() {
        print!("{step:>6}");
        for run in runs {
            let (_, eval) = run.evals[i];
            let from = if i == 0 { 0 } else { run.evals[i - 1].0 };
            let to = (*step).max(1);
            print!(
                " | {:>7.3} {:>6.1}% {:>8.3} {:>7.1}%",
                mean_loss(&run.losses, from, to),
                100.0 * mean_loss(&run.train_accuracy, from, to),
                eval.loss,
                100.0 * eval.accuracy
            );
        }
        println!();
    }
}

// ---------------------------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------------------------

fn plot_gradient_norms(runs: &[Run; 2], path: &Path) -> Result<(), Box<dyn Error>> {
    let by_block = |g: &[f64]| g.iter().enumerate().map(|(i, &n)| ((i + 1) as f64, n)).collect();
    let series: Vec<Series> = runs
        .iter()
        .flat_map(|run| {
            [
                Series {
                    label: format!("{}: attn in_proj_weight", run.label),
                    points: by_block(&run.attn_grad),
                    colour: PALETTE[0],
                    dashed: !run.residual,
                },
                Series {
                    label: format!("{}: mlp fc1 weight", run.label),
                    points: by_block(&run.fc1_grad),
                    colour: PALETTE[1],
                    dashed: !run.residual,
                },
            ]
        })
        .collect();
    let chart = Chart {
        title: "Gradient norm at initialisation (dashed: plain)",
        x_label: "block (1 = input side)",
        y_label: "gradient L2 norm",
        log_y: true,
    };
    chart.draw(path, &series)
}

fn plot_spread(runs: &[Run; 2], path: &Path) -> Result<(), Box<dyn Error>> {
    let series: Vec<Series> = runs
        .iter()
        .map(|run| Series {
            label: run.label.clone(),
            points: run.spread.iter().enumerate().map(|(i, &s)| (i as f64, s)).collect(),
            colour: PALETTE[if run.residual { 2 } else { 1 }],
            dashed: !run.residual,
        })
        .collect();
    let chart = Chart {
        title: "Token spread at initialisation: ||X - mean_t X|| / ||X||",
        x_label: "after block (0 = embeddings)",
        y_label: "token spread",
        log_y: true,
    };
    chart.draw(path, &series)
}

fn plot_losses(runs: &[Run; 2], path: &Path) -> Result<(), Box<dyn Error>> {
    let width = (runs[0].losses.len() / 30).clamp(1, 10);
    let series: Vec<Series> = runs
        .iter()
        .map(|run| Series {
            label: run.label.clone(),
            points: (width..=run.losses.len())
                .map(|end| (end as f64, f64::from(mean_loss(&run.losses, end - width, end))))
                .collect(),
            colour: PALETTE[if run.residual { 2 } else { 1 }],
            dashed: !run.residual,
        })
        .collect();
    let title = format!("Training loss, moving average of {width} steps (dashed: plain)");
    Chart { title: &title, x_label: "step", y_label: "cross-entropy", log_y: false }.draw(path, &series)
}

fn plot_accuracy(runs: &[Run; 2], path: &Path) -> Result<(), Box<dyn Error>> {
    let series: Vec<Series> = runs
        .iter()
        .map(|run| Series {
            label: run.label.clone(),
            points: run.evals.iter().map(|(step, e)| (*step as f64, f64::from(e.accuracy))).collect(),
            colour: PALETTE[if run.residual { 2 } else { 1 }],
            dashed: !run.residual,
        })
        .collect();
    let chart = Chart {
        title: "Held-out next-token accuracy (dashed: plain)",
        x_label: "step",
        y_label: "accuracy",
        log_y: false,
    };
    chart.draw(path, &series)
}
