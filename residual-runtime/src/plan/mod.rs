//! Compiled plans: a whole model run as one op on dfdx's tape.
//!
//! The `residual!` macro knows every layer and every shape when it expands, so for a
//! convolutional model it emits, beside the layer-by-layer `Module` code, a static [`Plan`]: the
//! model's steps over numbered values (activation buffers) and parameters. Running a plan
//! ([`infer`], [`train`]) reads the parameters in place (a shared handle to each tensor's buffer:
//! [`PlanDevice::host_view`]), copies the input once (dfdx 0.13 lends no buffer: see `storage.rs`),
//! then runs fused kernels on buffers drawn from a per-thread pool:
//!
//! - conv -> (bias) -> batch norm -> (add shortcut) -> (relu) is one kernel; in inference the
//!   batch norm is folded into a per-channel scale and shift (recomputed per call, since
//!   parameters may change between calls), applied with the add and relu in the conv's output
//!   pass;
//! - a batch runs channel-major (CNHW, `exec::Layout`): the convs' GEMMs read and write the
//!   activations as they lie;
//! - a batch norm (+ relu) on its own, an add (+ relu), pooling, global average pooling, linear
//!   and the option-A shortcut are kernels of their own;
//! - values die after their last reader, and their buffers go back to the pool, so after the
//!   first call no buffer of activation size is allocated.
//!
//! In training, the forward pass keeps what backward needs (conv inputs, pre-norm conv outputs,
//! batch statistics, relu outputs for their masks) and records **one** backward op on the input's
//! tape, which runs the fused backward kernels and accumulates into dfdx's `Gradients` of every
//! parameter tensor and of the input. So dfdx's optimisers, `ZeroGrads` and safetensors work as
//! before.
//!
//! Which devices run plans is [`PlanDevice::RUNS_PLANS`]: the CPU does; CUDA keeps the
//! layer-by-layer path until it is verified on a GPU. [`with_plans_disabled`] runs a closure with
//! the layer-by-layer path on this thread: the tests compare both.

mod exec;

use std::cell::Cell;

use dfdx::shapes::{Dtype, HasShape, Shape};
use dfdx::tensor::{Cpu, Gradients, HasErr, NoneTape, PutTape, SplitTape, Storage, Tape, Tensor};
use dfdx::tensor_ops::{Device, ReshapeTo};

use crate::real::Real;
use crate::Element;

pub use exec::{Fusion, CNHW_TRAIN_MAX_BATCH};

/// A convolution's hyper-parameters; its input channels and size are those of its input value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub dilation: usize,
    pub groups: usize,
}

/// A pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolGeom {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

/// One step of a plan. `input`/`output`/`a`/`b` index [`Plan::values`]; `weight`, `bias`, ... index
/// [`Plan::params`]. Steps are in execution order; every value but the input is written by
/// exactly one step, before any step reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `[C, H, W] -> [O, OH, OW]`, weight `[O, C / groups, K, K]`, no bias.
    Conv {
        input: usize,
        output: usize,
        weight: usize,
        geom: ConvGeom,
    },
    /// A conv's bias: `y[c] = x[c] + bias[c]`.
    Bias {
        input: usize,
        output: usize,
        bias: usize,
    },
    /// `nn.BatchNorm2d` (eps 1e-5, momentum 0.1): running statistics in inference, batch
    /// statistics (and a running-statistics update) in training.
    BatchNorm {
        input: usize,
        output: usize,
        weight: usize,
        bias: usize,
        running_mean: usize,
        running_var: usize,
    },
    Relu {
        input: usize,
        output: usize,
    },
    /// `output = a + b` (same shape).
    Add {
        a: usize,
        b: usize,
        output: usize,
    },
    MaxPool {
        input: usize,
        output: usize,
        geom: PoolGeom,
    },
    /// Average pooling, padding counted (PyTorch's `count_include_pad = True`).
    AvgPool {
        input: usize,
        output: usize,
        geom: PoolGeom,
    },
    /// `[C, H, W] -> [C, 1, 1]`, the mean of each plane.
    GlobalAvgPool {
        input: usize,
        output: usize,
    },
    /// `[I, 1, 1] -> [O, 1, 1]` with weight `[O, I]` and an optional bias `[O]`.
    Linear {
        input: usize,
        output: usize,
        weight: usize,
        bias: Option<usize>,
    },
    /// The ResNet paper's option A: `x[:, :, ::s, ::s]` zero-padded to the output's channels.
    SubsamplePad {
        input: usize,
        output: usize,
        stride: usize,
    },
}

/// A parameter or buffer tensor of the model, in the order the generated code passes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Its number of elements.
    pub len: usize,
    /// Trainable parameters get gradients; running statistics do not.
    pub trainable: bool,
}

/// A model as steps over values. Value 0 is the input; `values[v]` is value `v`'s per-image
/// shape `[C, H, W]` (a vector of `D` features is `[D, 1, 1]`).
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    pub values: &'a [[usize; 3]],
    pub params: &'a [ParamSpec],
    pub steps: &'a [Step],
    pub output: usize,
}

/// Why a plan cannot run. Plans the macro emits are valid by construction; these checks make any
/// other plan an error instead of undefined behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError(pub String);

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid plan: {}", self.0)
    }
}

impl std::error::Error for PlanError {}

/// A device whose models can run as plans (on host memory).
pub trait PlanDevice<E: Dtype>: Storage<E> {
    /// Whether generated models use their plan on this device.
    const RUNS_PLANS: bool;
    /// A gradient buffer as a host slice, or `None` where buffers live elsewhere.
    fn host_mut(buf: &mut Self::Vec) -> Option<&mut [E]>;
    /// `t`'s elements as a host slice, read in place, or `None` where buffers live elsewhere.
    fn host_view(t: &Flat<E, Self>) -> Option<&[E]>;
    /// The device error a failed plan check becomes (the `Module` error type is the device's).
    fn plan_error(e: PlanError) -> Self::Err;
}

impl<E: Dtype> PlanDevice<E> for Cpu {
    const RUNS_PLANS: bool = true;
    fn host_mut(buf: &mut Self::Vec) -> Option<&mut [E]> {
        Some(&mut buf[..])
    }
    fn host_view(t: &Flat<E, Self>) -> Option<&[E]> {
        // dfdx 0.13 lends no slice of a tensor's buffer, but `Index` lends a reference to one
        // element of it (the buffer is a `Vec`, and the index is bounds-checked against it). The
        // first and the last element, n - 1 elements apart, make the stride 1, so the n elements
        // from the first are the tensor's, in order, inside one initialised allocation.
        let n = t.shape().0;
        if n == 0 {
            return Some(&[]);
        }
        let first: *const E = &t[[0]];
        let last: *const E = &t[[n - 1]];
        // SAFETY: both pointers point into the same `Vec` (see above).
        if unsafe { last.offset_from(first) } != (n - 1) as isize {
            return None;
        }
        // SAFETY: `[first, last]` lies in one allocation of initialised `E`s (above). The slice
        // borrows `t`, which holds a reference count of the buffer: dfdx mutates a CPU buffer only
        // through `Arc::make_mut`, which copies a shared one, so nothing writes it meanwhile.
        Some(unsafe { std::slice::from_raw_parts(first, n) })
    }
    fn plan_error(_: PlanError) -> Self::Err {
        // CpuError has no variant that carries a message. Plans the macro emits pass every check;
        // `plan::fusion` reports a hand-built plan's problem in words.
        dfdx::tensor::CpuError::WrongNumElements
    }
}

#[cfg(feature = "cuda")]
impl<E: Dtype> PlanDevice<E> for dfdx::tensor::Cuda {
    // Not verified on a GPU yet: CUDA models keep the layer-by-layer path.
    const RUNS_PLANS: bool = false;
    fn host_mut(_: &mut Self::Vec) -> Option<&mut [E]> {
        None
    }
    fn host_view(_: &Flat<E, Self>) -> Option<&[E]> {
        None
    }
    fn plan_error(_: PlanError) -> Self::Err {
        // CudaError has no variant that carries a message; plans never run on CUDA (above).
        dfdx::tensor::CudaError::Cpu(dfdx::tensor::CpuError::WrongNumElements)
    }
}

thread_local! {
    static DISABLED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with compiled plans off on this thread: generated models take the layer-by-layer
/// path (one dfdx op per layer), the reference the tests compare plans with.
pub fn with_plans_disabled<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            DISABLED.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DISABLED.with(|d| d.replace(true)));
    f()
}

/// Whether generated models on this thread run their plans (see [`with_plans_disabled`]).
pub fn plans_enabled() -> bool {
    !DISABLED.with(|d| d.get())
}

type GradSlot<E, D> = Box<dyn Fn(&mut Gradients<E, D>) -> Result<&mut <D as Storage<E>>::Vec, <D as HasErr>::Err>>;

/// A parameter tensor as a plan holds it: a handle to the model tensor's own buffer (dfdx's
/// `Arc`, cloned, not the values), flattened.
pub type Flat<E, D> = Tensor<(usize,), E, D>;

/// The parameters of one call in [`Plan::params`] order: shared handles to the model's tensors
/// (nothing copied), and (for training) how to find each trainable tensor's gradient and a copy of
/// each running statistic to update.
pub struct Params<E: Element, D: Storage<E>> {
    tensors: Vec<Option<Flat<E, D>>>,
    slots: Vec<Option<GradSlot<E, D>>>,
    /// After [`train`]: the updated running statistics (the non-trainable parameters), empty
    /// for trainable ones.
    running: Vec<Vec<E>>,
}

impl<E: Element, D: Device<E> + PlanDevice<E>> Params<E, D> {
    pub fn with_capacity(n: usize) -> Self {
        Params { tensors: Vec::with_capacity(n), slots: Vec::with_capacity(n), running: Vec::new() }
    }

    /// Appends a handle to `t`'s buffer; `trainable` tensors also get a gradient slot for [`train`].
    pub fn push<S: Shape, T>(&mut self, t: &Tensor<S, E, D, T>, trainable: bool) -> Result<(), D::Err> {
        // A reshape of a contiguous tensor (a parameter always is) shares its buffer.
        let flat = t.retaped::<NoneTape>().try_reshape_like(&(t.shape().num_elements(),))?;
        self.tensors.push(Some(flat));
        self.slots.push(if trainable {
            let ghost = t.ghost();
            let slot: GradSlot<E, D> = Box::new(move |g: &mut Gradients<E, D>| g.get_or_alloc_mut(&ghost));
            Some(slot)
        } else {
            None
        });
        Ok(())
    }

    /// Writes parameter `index` (a running statistic updated by [`train`]) back into `t`.
    pub fn store<S: Shape>(&self, index: usize, t: &mut Tensor<S, E, D>) {
        if let Some(v) = self.running.get(index) {
            if !v.is_empty() && v.len() == t.shape().num_elements() {
                t.copy_from(v);
            }
        }
    }

    /// Every parameter's values, read in place.
    fn views(&self) -> Result<Vec<&[E]>, PlanError> {
        views::<E, D>(&self.tensors)
    }
}

fn views<E: Dtype, D: PlanDevice<E>>(tensors: &[Option<Flat<E, D>>]) -> Result<Vec<&[E]>, PlanError> {
    tensors
        .iter()
        .map(|t| match t {
            Some(t) => D::host_view(t).ok_or_else(|| PlanError("device buffers are not host memory".into())),
            None => Ok(&[][..]),
        })
        .collect()
}

impl<E: Element, D: Storage<E>> Drop for Params<E, D> {
    fn drop(&mut self) {
        let running = std::mem::take(&mut self.running);
        E::with_pool(|p| running.into_iter().for_each(|v| p.give(v)));
    }
}

/// Checks `plan` and reports what it fuses into (the bench and tests print it).
pub fn fusion(plan: &Plan) -> Result<Fusion, PlanError> {
    Ok(exec::Compiled::compile(plan)?.fusion(plan.steps.len()))
}

/// The batch size of `shape` (its first dim) after checking the rest against `per_image`.
fn batch_of(dims: &[usize], per_image: [usize; 3], what: &str) -> Result<usize, PlanError> {
    let (&batch, rest) = dims.split_first().ok_or_else(|| PlanError(format!("{what}: no batch dim")))?;
    let n: usize = rest.iter().product();
    let want = per_image.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    if want != Some(n) {
        return Err(PlanError(format!("{what}: shape {dims:?} does not hold per-image values of shape {per_image:?}")));
    }
    Ok(batch)
}

/// What `infer` and `train` begin with: the plan checked and fused against the parameters, the
/// batch size (the same for input and output), and the input copied into a pooled buffer.
fn start<S: Shape, O: Shape, E: Element, D: Device<E>>(
    plan: &Plan,
    host: &[&[E]],
    x: &Tensor<S, E, D>,
    out_shape: &O,
    pool: &mut crate::real::BufPool<E>,
) -> Result<(exec::Compiled, usize, Vec<E>), PlanError> {
    let compiled = exec::Compiled::new(plan, host)?;
    let batch = batch_of(x.shape().concrete().as_ref(), plan.values[0], "plan input")?;
    let out_batch = batch_of(out_shape.concrete().as_ref(), plan.values[plan.output], "plan output")?;
    if out_batch != batch {
        return Err(PlanError(format!("output batch {out_batch} differs from input batch {batch}")));
    }
    let mut input = pool.take(x.shape().num_elements());
    x.copy_into(&mut input);
    Ok((compiled, batch, input))
}

/// Inference (`Module::forward` without a tape): batch norm with running statistics.
pub fn infer<S, O, E, D, T>(
    plan: &Plan,
    params: &Params<E, D>,
    x: Tensor<S, E, D, T>,
    out_shape: O,
) -> Result<Tensor<O, E, D, T>, D::Err>
where
    S: Shape,
    O: Shape,
    E: Element,
    D: Device<E> + PlanDevice<E>,
    T: Tape<E, D>,
{
    let x = x.try_contiguous()?;
    let (x, tape) = x.split_tape();
    let dev = x.device().clone();
    if x.shape().num_elements() == 0 {
        // An empty batch: nothing to compute (the kernels divide by the batch).
        return Ok(dev.try_tensor_from_vec(Vec::new(), out_shape)?.put_tape(tape));
    }
    let out = E::with_pool(|pool| -> Result<Vec<E>, PlanError> {
        let views = params.views()?;
        let (compiled, batch, input) = start(plan, &views, &x, &out_shape, pool)?;
        crate::threads::hot(|| compiled.infer(pool, batch, input, &views))
    })
    .map_err(D::plan_error)?;
    Ok(dev.try_tensor_from_vec(out, out_shape)?.put_tape(tape))
}

/// Training (`ModuleMut::forward_mut`): batch statistics; updates the running statistics in
/// `params` (write them back with [`Params::store`]); with an owned tape, records one backward op
/// that accumulates the gradients of every trainable parameter and of the input.
pub fn train<S, O, E, D, T>(
    plan: &Plan,
    params: &mut Params<E, D>,
    x: Tensor<S, E, D, T>,
    out_shape: O,
) -> Result<Tensor<O, E, D, T>, D::Err>
where
    S: Shape,
    O: Shape,
    E: Element,
    D: Device<E> + PlanDevice<E>,
    T: Tape<E, D>,
{
    let x = x.try_contiguous()?;
    let (x, mut tape) = x.split_tape();
    let dev = x.device().clone();
    if x.shape().num_elements() == 0 {
        // An empty batch: no output, no statistics to update, no gradient to add.
        return Ok(dev.try_tensor_from_vec(Vec::new(), out_shape)?.put_tape(tape));
    }
    let (out, saved) = E::with_pool(|pool| -> Result<_, PlanError> {
        let views = params.views()?;
        // The forward pass updates the running statistics in copies (`store` writes them back).
        let mut running: Vec<Vec<E>> = Vec::with_capacity(views.len());
        for (v, slot) in views.iter().zip(&params.slots) {
            running.push(if slot.is_none() {
                let mut c = pool.take(v.len());
                c.copy_from_slice(v);
                c
            } else {
                Vec::new()
            });
        }
        let (compiled, batch, input) = start(plan, &views, &x, &out_shape, pool)?;
        let r = crate::threads::hot(|| compiled.train(pool, batch, input, &views, &mut running, T::OWNS_TAPE));
        Ok((r, running))
    })
    .and_then(|(r, running)| {
        params.running = running;
        r
    })
    .map_err(D::plan_error)?;
    // Let go of the running statistics' handles, so that `store` writes their tensors in place
    // instead of copying a shared buffer.
    for (t, slot) in params.tensors.iter_mut().zip(&params.slots) {
        if slot.is_none() {
            *t = None;
        }
    }
    let out = dev.try_tensor_from_vec(out, out_shape)?;
    if let Some(saved) = saved {
        let x_ghost = x.ghost();
        let out_ghost = out.ghost();
        // The backward pass reads the weights: hand the trainable parameters' handles over (the
        // running statistics' are gone). Backward drops them when it has run, so an optimiser's
        // update after it finds the buffers unshared and writes them in place.
        let weights: Vec<Option<Flat<E, D>>> = std::mem::take(&mut params.tensors);
        let slots: Vec<Option<GradSlot<E, D>>> = std::mem::take(&mut params.slots);
        tape.add_backward_op(move |grads: &mut Gradients<E, D>| {
            let grad_out: Vec<E> = {
                let g = grads.get_or_alloc_mut(&out_ghost)?;
                let g = D::host_mut(g)
                    .ok_or_else(|| D::plan_error(PlanError("device buffers are not host memory".into())))?;
                E::with_pool(|p| {
                    let mut v = p.take(g.len());
                    v.copy_from_slice(g);
                    v
                })
            };
            let (grad_input, param_grads) = E::with_pool(|pool| {
                let weights = views(&weights)?;
                crate::threads::hot(|| saved.backward(pool, grad_out, &weights))
            })
            .map_err(D::plan_error)?;
            let not_host = || D::plan_error(PlanError("device buffers are not host memory".into()));
            let gx = D::host_mut(grads.get_or_alloc_mut(&x_ghost)?).ok_or_else(not_host)?;
            add_into(gx, &grad_input).map_err(D::plan_error)?;
            for (slot, g) in slots.iter().zip(&param_grads) {
                if let Some(slot) = slot {
                    let dst = D::host_mut(slot(grads)?).ok_or_else(not_host)?;
                    add_into(dst, g).map_err(D::plan_error)?;
                }
            }
            E::with_pool(|p| {
                p.give(grad_input);
                param_grads.into_iter().for_each(|g| p.give(g));
            });
            Ok(())
        });
    }
    Ok(out.put_tape(tape))
}

fn add_into<E: Real>(dst: &mut [E], src: &[E]) -> Result<(), PlanError> {
    if src.is_empty() {
        return Ok(());
    }
    if dst.len() != src.len() {
        return Err(PlanError(format!("gradient of {} elements for a tensor of {}", src.len(), dst.len())));
    }
    // On the threads: a ResNet-50's parameter gradients are 100 MB, added once per step.
    exec::add_assign(dst, src);
    Ok(())
}
