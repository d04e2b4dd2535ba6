//! One training step and one evaluation pass for the zoo's CIFAR classifiers.

use dfdx::prelude::*;

use super::data::{batches, Batch, ChannelNorm, ImageSet, Images, NUM_CLASSES};

/// The tape a training forward pass records on.
pub type Tape = OwnedTape<f32, Cpu>;
/// A batch of class scores.
pub type Logits<T = NoneTape> = Tensor<(usize, Const<NUM_CLASSES>), f32, Cpu, T>;

/// What the examples need from a model: `[3, 32, 32] -> [10]` in evaluation mode (`Module`:
/// batch norm uses its running statistics) and in training mode (`ModuleMut`: batch
/// statistics, recorded on the tape), and its tensors for the optimiser and checkpoints.
/// Every CIFAR model of `residual::zoo` is one.
pub trait Classifier:
    Module<Images, Output = Logits> + ModuleMut<Images<Tape>, Output = Logits<Tape>> + TensorCollection<f32, Cpu>
{
}

impl<M> Classifier for M where
    M: Module<Images, Output = Logits> + ModuleMut<Images<Tape>, Output = Logits<Tape>> + TensorCollection<f32, Cpu>
{
}

/// What one training-mode forward and backward pass saw.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    /// Mean cross-entropy over the batch.
    pub loss: f32,
    /// Images whose highest score was their label (scores from the same training-mode pass).
    pub correct: usize,
}

/// Forward in training mode, cross-entropy loss, backward. Returns the gradients of every
/// parameter (accumulated into `grads`, which the caller zeroes after using them).
pub fn forward_backward<M: Classifier>(
    model: &mut M,
    grads: Gradients<f32, Cpu>,
    batch: &Batch,
    dev: &Cpu,
) -> (Gradients<f32, Cpu>, StepStats) {
    let logits = model.forward_mut(batch.images.clone().traced(grads));
    let correct = count_correct(&logits.as_vec(), &batch.labels);
    let loss = cross_entropy_with_logits_loss(logits, batch.one_hot_targets(dev));
    let loss_value = loss.array();
    (loss.backward(), StepStats { loss: loss_value, correct })
}

/// Number of rows of `logits` (row-major, `NUM_CLASSES` per row) whose arg-max is the label.
pub fn count_correct(logits: &[f32], labels: &[usize]) -> usize {
    logits
        .chunks_exact(NUM_CLASSES)
        .zip(labels)
        .filter(|(scores, &label)| {
            let best =
                scores
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (class, &s)| if s > best.1 { (class, s) } else { best });
            best.0 == label
        })
        .count()
}

/// Loss and accuracy on a whole set.
#[derive(Clone, Copy, Debug)]
pub struct Evaluation {
    pub loss: f32,
    pub accuracy: f32,
    pub images: usize,
}

/// Evaluation mode (`Module::forward`: batch norm with running statistics, no tape) over every
/// image of `set`, in order.
pub fn evaluate<M: Classifier>(
    model: &M,
    set: &dyn ImageSet,
    norm: &ChannelNorm,
    batch_size: usize,
    dev: &Cpu,
) -> Evaluation {
    let order: Vec<usize> = (0..set.len()).collect();
    let (mut loss_sum, mut correct) = (0f64, 0usize);
    // Every image counts, so the last batch may be shorter (unlike training's `batches`).
    for indices in order.chunks(batch_size) {
        let batch = Batch::gather(set, indices, norm, dev);
        let logits = model.forward(batch.images.clone());
        correct += count_correct(&logits.as_vec(), &batch.labels);
        let loss = cross_entropy_with_logits_loss(logits, batch.one_hot_targets(dev));
        loss_sum += loss.array() as f64 * indices.len() as f64;
    }
    let images = set.len().max(1);
    Evaluation { loss: (loss_sum / images as f64) as f32, accuracy: correct as f32 / images as f32, images: set.len() }
}

/// Number of full training batches in an epoch of `len` images (see [`batches`]).
pub fn steps_per_epoch(len: usize, batch_size: usize) -> usize {
    let order: Vec<usize> = (0..len).collect();
    batches(&order, batch_size).count()
}
