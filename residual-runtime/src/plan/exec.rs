//! Checking a plan, fusing its steps into nodes, and running the nodes on host buffers.
//!
//! Fusion is greedy over single-reader chains: a conv absorbs the bias, batch norm, add and relu
//! that follow it when each intermediate value has no other reader (it then runs where the last
//! absorbed step stood, once every input it reads exists). A batch norm absorbs a following relu,
//! and so does an add. This is the one place that decides what fuses with what.

use rayon::prelude::*;

use super::{ConvGeom, Plan, PlanError, PoolGeom, Step};
use crate::conv::winograd::Store;
use crate::conv::{conv_out_size, Conv2dOp};
use crate::pool::{Pool2dConfig, Pool2dOp, PoolKind};
use crate::real::{BufPool, Real};
use crate::shortcut::SubsamplePadOp;

/// `nn.BatchNorm2d`'s defaults.
const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;
/// Elements per task of the elementwise loops: large enough to amortise a rayon task.
const CHUNK: usize = 1 << 14;

/// The largest batch a training step runs in CNHW (see [`Layout`]); larger ones run in NCHW.
/// Measured on ResNet-56 steps (AVX-512 Xeon, 2 threads, two rounds, ms, NCHW vs CNHW): b16
/// 242/234 vs 207/206, b32 396/388 vs 362/372, b64 754/758 vs 709/702, but b128 1330/1295 vs
/// 1424/1374 (why is not established: there every activation row is 512 KiB long, a power of
/// two, and the threads' image runs no longer match the elementwise passes' channel split);
/// ResNet-50 b8 1585/1517 vs 1540/1529.
#[doc(hidden)]
pub static CNHW_TRAIN_MAX_BATCH: crate::Knob = crate::Knob::new(64);

/// How a run lays out each value's `batch` images: NCHW (`[B, C, H, W]`, the tensors' layout), or
/// CNHW (`[C, B, H, W]`), in which batched inference runs. In CNHW a channel's planes of every
/// image are one block, so a conv's output is its GEMM's `[O, B * P]` result as it lies (no scatter
/// into images) and a 1x1 conv reads its input as it lies (no im2col); batch norm, relu, add,
/// pooling and the option-A shortcut see `C` planes of `B * H * W` (or `C * B` planes of `H * W`)
/// and run their NCHW kernels unchanged, forward and backward; the conv's backward reads the output
/// gradient as the GEMMs' `[O, B * P]` matrix. Training runs CNHW up to [`CNHW_TRAIN_MAX_BATCH`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Nchw,
    Cnhw,
}

#[derive(Clone, Copy, Debug)]
struct Bn {
    weight: usize,
    bias: usize,
    mean: usize,
    var: usize,
}

/// A fused unit of work. Ops hold batch 1; [`with_batch`] sets the run's batch.
#[derive(Clone, Copy, Debug)]
enum Node {
    Conv {
        x: usize,
        y: usize,
        op: Conv2dOp,
        weight: usize,
        bias: Option<usize>,
        bn: Option<Bn>,
        res: Option<usize>,
        relu: bool,
    },
    Norm {
        x: usize,
        y: usize,
        bn: Bn,
        relu: bool,
    },
    Relu {
        x: usize,
        y: usize,
    },
    Add {
        a: usize,
        b: usize,
        y: usize,
        relu: bool,
    },
    Pool {
        kind: PoolKind,
        x: usize,
        y: usize,
        op: Pool2dOp,
    },
    Gap {
        x: usize,
        y: usize,
    },
    Linear {
        x: usize,
        y: usize,
        weight: usize,
        bias: Option<usize>,
    },
    SubPad {
        x: usize,
        y: usize,
        op: SubsamplePadOp,
    },
}

impl Node {
    fn output(&self) -> usize {
        match *self {
            Node::Conv { y, .. }
            | Node::Norm { y, .. }
            | Node::Relu { y, .. }
            | Node::Add { y, .. }
            | Node::Pool { y, .. }
            | Node::Gap { y, .. }
            | Node::Linear { y, .. }
            | Node::SubPad { y, .. } => y,
        }
    }

    fn inputs(&self) -> [Option<usize>; 2] {
        match *self {
            Node::Conv { x, res, .. } => [Some(x), res],
            Node::Add { a, b, .. } => [Some(a), Some(b)],
            Node::Norm { x, .. }
            | Node::Relu { x, .. }
            | Node::Pool { x, .. }
            | Node::Gap { x, .. }
            | Node::Linear { x, .. }
            | Node::SubPad { x, .. } => [Some(x), None],
        }
    }
}

/// What a plan compiled into: how many steps became how many nodes, and which fusions fired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fusion {
    pub steps: usize,
    pub nodes: usize,
    /// Convs that absorbed a batch norm.
    pub conv_bn: usize,
    /// Convs that absorbed a residual add.
    pub conv_add: usize,
    /// Nodes that end in a relu.
    pub relu: usize,
}

/// A checked, fused plan.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    values: Vec<[usize; 3]>,
    trainable: Vec<bool>,
    nodes: Vec<Node>,
    /// The last node that reads each value (`usize::MAX`: never read).
    last_read: Vec<usize>,
    output: usize,
}

fn err<T>(msg: impl Into<String>) -> Result<T, PlanError> {
    Err(PlanError(msg.into()))
}

fn numel(d: [usize; 3]) -> Option<usize> {
    d[0].checked_mul(d[1])?.checked_mul(d[2])
}

impl Compiled {
    /// Checks `plan` (indices, order, every shape rule, parameter lengths against `params`) and
    /// fuses it.
    pub(crate) fn new<E>(plan: &Plan, params: &[&[E]]) -> Result<Self, PlanError> {
        if params.len() != plan.params.len() {
            return err(format!("{} parameter tensors for {} declared", params.len(), plan.params.len()));
        }
        for (i, (p, spec)) in params.iter().zip(plan.params).enumerate() {
            if p.len() != spec.len {
                return err(format!("parameter {i} has {} elements, the plan says {}", p.len(), spec.len));
            }
        }
        Self::compile(plan)
    }

    /// Checks and fuses `plan` (parameter lengths are checked by [`Compiled::new`]).
    pub(crate) fn compile(plan: &Plan) -> Result<Self, PlanError> {
        let nv = plan.values.len();
        if nv == 0 || plan.output >= nv {
            return err("no values, or the output index is out of range");
        }
        for (v, d) in plan.values.iter().enumerate() {
            if numel(*d).is_none_or(|n| n == 0 || n > 1 << 31) {
                return err(format!("value {v} has shape {d:?} (empty, or over 2^31 elements)"));
            }
        }
        let mut defined = vec![false; nv];
        defined[0] = true;
        let mut readers: Vec<Vec<usize>> = vec![Vec::new(); nv];
        for (i, step) in plan.steps.iter().enumerate() {
            check_step(plan, step).map_err(|e| PlanError(format!("step {i} ({step:?}): {}", e.0)))?;
            let (ins, out) = step_io(step);
            for v in ins.into_iter().flatten() {
                if !defined[v] {
                    return err(format!("step {i} reads value {v} before any step writes it"));
                }
                readers[v].push(i);
            }
            if defined[out] {
                return err(format!("step {i} writes value {out}, which is already written"));
            }
            defined[out] = true;
        }
        if !defined[plan.output] {
            return err(format!("no step writes the output value {}", plan.output));
        }

        // Fusion over single-reader chains.
        let single = |v: usize| -> Option<usize> { (v != plan.output && readers[v].len() == 1).then(|| readers[v][0]) };
        let mut absorbed = vec![false; plan.steps.len()];
        let mut placed: Vec<(usize, Node)> = Vec::new();
        for (i, step) in plan.steps.iter().enumerate() {
            if absorbed[i] {
                continue;
            }
            let node = match *step {
                Step::Conv { input, output, weight, geom } => {
                    let op = conv_op(geom, plan.values[input]).ok_or_else(|| PlanError("conv".into()))?;
                    let (mut cur, mut pos) = (output, i);
                    let (mut bias, mut bn, mut res, mut relu) = (None, None, None, false);
                    if let Some(j) = single(cur).filter(|&j| !absorbed[j]) {
                        if let Step::Bias { output, bias: b, .. } = plan.steps[j] {
                            (bias, cur, pos) = (Some(b), output, j);
                            absorbed[j] = true;
                        }
                    }
                    if let Some(j) = single(cur).filter(|&j| !absorbed[j]) {
                        if let Step::BatchNorm { output, weight, bias, running_mean, running_var, .. } = plan.steps[j] {
                            bn = Some(Bn { weight, bias, mean: running_mean, var: running_var });
                            (cur, pos) = (output, j);
                            absorbed[j] = true;
                        }
                    }
                    if let Some(j) = single(cur).filter(|&j| !absorbed[j]) {
                        if let Step::Add { a, b, output } = plan.steps[j] {
                            if a != b {
                                res = Some(if a == cur { b } else { a });
                                (cur, pos) = (output, j);
                                absorbed[j] = true;
                            }
                        }
                    }
                    if let Some(j) = single(cur).filter(|&j| !absorbed[j]) {
                        if let Step::Relu { output, .. } = plan.steps[j] {
                            relu = true;
                            (cur, pos) = (output, j);
                            absorbed[j] = true;
                        }
                    }
                    placed.push((pos, Node::Conv { x: input, y: cur, op, weight, bias, bn, res, relu }));
                    continue;
                }
                Step::BatchNorm { input, output, weight, bias, running_mean, running_var } => {
                    let bn = Bn { weight, bias, mean: running_mean, var: running_var };
                    match single(output).filter(|&j| !absorbed[j]).map(|j| (j, plan.steps[j])) {
                        Some((j, Step::Relu { output: y, .. })) => {
                            absorbed[j] = true;
                            placed.push((j, Node::Norm { x: input, y, bn, relu: true }));
                            continue;
                        }
                        _ => Node::Norm { x: input, y: output, bn, relu: false },
                    }
                }
                Step::Add { a, b, output } => {
                    match single(output).filter(|&j| !absorbed[j]).map(|j| (j, plan.steps[j])) {
                        Some((j, Step::Relu { output: y, .. })) => {
                            absorbed[j] = true;
                            placed.push((j, Node::Add { a, b, y, relu: true }));
                            continue;
                        }
                        _ => Node::Add { a, b, y: output, relu: false },
                    }
                }
                // The macro emits a conv's bias right after it, where the conv absorbs it.
                Step::Bias { .. } => return err(format!("step {i}: a bias must follow a conv")),
                Step::Relu { input, output } => Node::Relu { x: input, y: output },
                Step::MaxPool { input, output, geom } | Step::AvgPool { input, output, geom } => {
                    let kind = if matches!(step, Step::MaxPool { .. }) { PoolKind::Max } else { PoolKind::Avg };
                    Node::Pool {
                        kind,
                        x: input,
                        y: output,
                        op: pool_op(geom, plan.values[input]).ok_or_else(|| PlanError("pool".into()))?,
                    }
                }
                Step::GlobalAvgPool { input, output } => Node::Gap { x: input, y: output },
                Step::Linear { input, output, weight, bias } => Node::Linear { x: input, y: output, weight, bias },
                Step::SubsamplePad { input, output, stride } => {
                    let [c, h, w] = plan.values[input];
                    let op = SubsamplePadOp::new([1, c, h, w], plan.values[output][0], stride)
                        .ok_or_else(|| PlanError("option A".into()))?;
                    Node::SubPad { x: input, y: output, op }
                }
            };
            placed.push((i, node));
        }
        placed.sort_by_key(|(pos, _)| *pos);
        let nodes: Vec<Node> = placed.into_iter().map(|(_, n)| n).collect();
        let mut last_read = vec![usize::MAX; nv];
        for (n, node) in nodes.iter().enumerate() {
            for v in node.inputs().into_iter().flatten() {
                last_read[v] = n;
            }
        }
        Ok(Compiled {
            values: plan.values.to_vec(),
            trainable: plan.params.iter().map(|p| p.trainable).collect(),
            nodes,
            last_read,
            output: plan.output,
        })
    }

    pub(crate) fn fusion(&self, steps: usize) -> super::Fusion {
        let mut f = super::Fusion { steps, nodes: self.nodes.len(), ..Default::default() };
        for n in &self.nodes {
            match *n {
                Node::Conv { bn, res, relu, .. } => {
                    f.conv_bn += bn.is_some() as usize;
                    f.conv_add += res.is_some() as usize;
                    f.relu += relu as usize;
                }
                Node::Norm { relu, .. } | Node::Add { relu, .. } => f.relu += relu as usize,
                _ => {}
            }
        }
        f
    }

    fn len(&self, v: usize, batch: usize) -> Result<usize, PlanError> {
        numel(self.values[v])
            .and_then(|n| n.checked_mul(batch))
            .ok_or_else(|| PlanError(format!("value {v} times batch {batch} overflows")))
    }

    /// Gives back to the pool the inputs of node `n` that no later node reads.
    fn release_dead<E: Real>(&self, pool: &mut BufPool<E>, n: usize, node: &Node, vals: &mut [Option<Vec<E>>]) {
        for v in node.inputs().into_iter().flatten() {
            if self.last_read[v] == n && v != self.output {
                if let Some(b) = vals[v].take() {
                    pool.give(b);
                }
            }
        }
    }

    /// The layout a run of `batch` images takes: CNHW where it is not NCHW already (batch 1), every
    /// conv has a CNHW kernel (grouped convs do not) and, in training, up to
    /// [`CNHW_TRAIN_MAX_BATCH`] images.
    fn layout(&self, batch: usize, training: bool) -> Layout {
        let grouped = self.nodes.iter().any(|n| matches!(n, Node::Conv { op, .. } if op.groups > 1));
        if batch > 1 && !grouped && (!training || batch <= CNHW_TRAIN_MAX_BATCH.get()) {
            Layout::Cnhw
        } else {
            Layout::Nchw
        }
    }

    /// `buf`, value `v`'s `batch` images laid out as `from`, laid out as `to` (a pooled buffer;
    /// `buf` goes back to the pool when it is copied).
    fn relayout<E: Real>(
        &self,
        pool: &mut BufPool<E>,
        from: Layout,
        to: Layout,
        v: usize,
        batch: usize,
        buf: Vec<E>,
    ) -> Vec<E> {
        if from == to {
            return buf;
        }
        let [c, h, w] = self.values[v];
        // NCHW is [B, C, plane], CNHW [C, B, plane]: swap the outer two dims of `from`.
        let (a, b) = if from == Layout::Nchw { (batch, c) } else { (c, batch) };
        let mut t = pool.take(buf.len());
        swap_outer(&buf, &mut t, a, b, h * w);
        pool.give(buf);
        t
    }

    /// Value `v`'s buffer in `layout` as a new NCHW buffer: what leaves a run for the caller (an
    /// exact copy, so that the pool keeps its buffer: handing a pooled buffer out loses whatever
    /// capacity best fit gave it).
    fn to_nchw<E: Real>(&self, layout: Layout, v: usize, batch: usize, buf: &[E]) -> Vec<E> {
        match layout {
            Layout::Nchw => buf.to_vec(),
            Layout::Cnhw => {
                let [c, h, w] = self.values[v];
                let mut t = vec![E::ZERO; buf.len()];
                swap_outer(buf, &mut t, c, batch, h * w);
                t
            }
        }
    }

    /// Inference: returns the output buffer.
    pub(crate) fn infer<E: Real>(
        &self,
        pool: &mut BufPool<E>,
        batch: usize,
        input: Vec<E>,
        params: &[&[E]],
    ) -> Result<Vec<E>, PlanError> {
        if input.len() != self.len(0, batch)? {
            return err("input length does not match the plan");
        }
        let layout = self.layout(batch, false);
        let mut vals: Vec<Option<Vec<E>>> = (0..self.values.len()).map(|_| None).collect();
        vals[0] = Some(self.relayout(pool, Layout::Nchw, layout, 0, batch, input));
        let result = (|| {
            for (n, node) in self.nodes.iter().enumerate() {
                let y = node.output();
                let mut out = pool.take(self.len(y, batch)?);
                self.forward_eval(node, batch, layout, &vals, &mut out, params)?;
                vals[y] = Some(out);
                self.release_dead(pool, n, node, &mut vals);
            }
            let out = vals[self.output].as_ref().ok_or_else(|| PlanError("the output was never written".into()))?;
            Ok(self.to_nchw(layout, self.output, batch, out))
        })();
        vals.into_iter().flatten().for_each(|b| pool.give(b));
        result
    }

    /// Training forward: batch statistics, running statistics updated in `params`. With `save`,
    /// returns what backward needs.
    pub(crate) fn train<E: Real>(
        &self,
        pool: &mut BufPool<E>,
        batch: usize,
        input: Vec<E>,
        params: &[&[E]],
        running: &mut [Vec<E>],
        save: bool,
    ) -> Result<(Vec<E>, Option<Saved<E>>), PlanError> {
        if input.len() != self.len(0, batch)? {
            return err("input length does not match the plan");
        }
        let layout = self.layout(batch, true);
        let mut vals: Vec<Option<Vec<E>>> = (0..self.values.len()).map(|_| None).collect();
        let mut aux: Vec<Option<Aux<E>>> = (0..self.nodes.len()).map(|_| None).collect();
        vals[0] = Some(self.relayout(pool, Layout::Nchw, layout, 0, batch, input));
        let result = (|| {
            for (n, node) in self.nodes.iter().enumerate() {
                let y = node.output();
                let mut out = pool.take(self.len(y, batch)?);
                aux[n] = self.forward_train(pool, node, batch, layout, &vals, &mut out, params, running)?;
                vals[y] = Some(out);
                if !save {
                    if let Some(a) = aux[n].take() {
                        a.give(pool);
                    }
                    self.release_dead(pool, n, node, &mut vals);
                }
            }
            let out = vals[self.output].as_ref().ok_or_else(|| PlanError("the output was never written".into()))?;
            Ok(self.to_nchw(layout, self.output, batch, out))
        })();
        match result {
            Ok(out) if save => Ok((out, Some(Saved { compiled: self.clone(), batch, layout, vals, aux }))),
            other => {
                vals.into_iter().flatten().for_each(|b| pool.give(b));
                aux.into_iter().flatten().for_each(|a| a.give(pool));
                other.map(|o| (o, None))
            }
        }
    }

    fn forward_eval<E: Real>(
        &self,
        node: &Node,
        batch: usize,
        layout: Layout,
        vals: &[Option<Vec<E>>],
        out: &mut [E],
        params: &[&[E]],
    ) -> Result<(), PlanError> {
        let val = |v: usize| live(vals, v);
        match *node {
            Node::Conv { x, op, weight, bias, bn, res, relu, .. } => {
                let op = Conv2dOp { batch, ..op };
                let res = res.map(val).transpose()?;
                let plane = plane(layout, batch, op.out_h * op.out_w);
                match bn {
                    Some(bn) => {
                        // Folded: y = conv(x, w) * scale[o] + shift[o], shift = beta + (bias - mean)
                        // * scale. The scale is applied to the output in the epilogue's pass, not to
                        // the weights: that would write a scaled copy of every weight per call (at
                        // batch 1 the weights outnumber the outputs up to 100x).
                        let (scale, shift) = fold(bn, bias, params);
                        let store = Store::Epilogue { scale: Some(&scale), shift: Some(&shift), res, relu };
                        conv_fwd_epilogue(layout, &op, val(x)?, params[weight], out, plane, store)?;
                    }
                    None => {
                        let store = Store::Epilogue { scale: None, shift: bias.map(|b| params[b]), res, relu };
                        conv_fwd_epilogue(layout, &op, val(x)?, params[weight], out, plane, store)?;
                    }
                }
            }
            Node::Norm { x, bn, relu, .. } => {
                let (scale, shift) = fold(bn, None, params);
                let [c, h, w] = self.values[x];
                affine(val(x)?, out, plane(layout, batch, h * w), c, &scale, &shift, relu);
            }
            _ => self.forward_common(node, batch, layout, vals, out, params)?,
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_train<E: Real>(
        &self,
        pool: &mut BufPool<E>,
        node: &Node,
        batch: usize,
        layout: Layout,
        vals: &[Option<Vec<E>>],
        out: &mut [E],
        params: &[&[E]],
        running: &mut [Vec<E>],
    ) -> Result<Option<Aux<E>>, PlanError> {
        let val = |v: usize| live(vals, v);
        match *node {
            Node::Conv { x, op, weight, bias, bn, res, relu, .. } => {
                let op = Conv2dOp { batch, ..op };
                let res = res.map(val).transpose()?;
                let plane = plane(layout, batch, op.out_h * op.out_w);
                match bn {
                    Some(bn) => {
                        let mut pre = pool.take(out.len());
                        conv_fwd(layout, &op, val(x)?, params[weight], &mut pre)?;
                        if let Some(b) = bias {
                            epilogue(&mut pre, plane, op.out_channels, None, Some(params[b]), None, false);
                        }
                        let (mean, invstd) = norm_forward(
                            pool,
                            &pre,
                            out,
                            plane,
                            op.out_channels,
                            bn,
                            running,
                            (params[bn.weight], params[bn.bias]),
                            res,
                            relu,
                        )?;
                        Ok(Some(Aux { pre, mean, invstd }))
                    }
                    None => {
                        conv_fwd(layout, &op, val(x)?, params[weight], out)?;
                        epilogue(out, plane, op.out_channels, None, bias.map(|b| params[b]), res, relu);
                        Ok(None)
                    }
                }
            }
            Node::Norm { x, bn, relu, .. } => {
                let [c, h, w] = self.values[x];
                let xs = val(x)?;
                let plane = plane(layout, batch, h * w);
                let affine = (params[bn.weight], params[bn.bias]);
                let (mean, invstd) = norm_forward(pool, xs, out, plane, c, bn, running, affine, None, relu)?;
                Ok(Some(Aux { pre: Vec::new(), mean, invstd }))
            }
            _ => {
                self.forward_common(node, batch, layout, vals, out, params)?;
                Ok(None)
            }
        }
    }

    /// The nodes that run the same in inference and training.
    fn forward_common<E: Real>(
        &self,
        node: &Node,
        batch: usize,
        layout: Layout,
        vals: &[Option<Vec<E>>],
        out: &mut [E],
        params: &[&[E]],
    ) -> Result<(), PlanError> {
        let val = |v: usize| live(vals, v);
        match *node {
            Node::Relu { x, .. } => {
                out.par_chunks_mut(CHUNK).zip(val(x)?.par_chunks(CHUNK)).for_each(|(o, i)| {
                    o.iter_mut().zip(i).for_each(|(o, &i)| *o = if i > E::ZERO { i } else { E::ZERO });
                });
            }
            Node::Add { a, b, relu, .. } => {
                let (a, b) = (val(a)?, val(b)?);
                out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
                    for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                        let s = a + b;
                        *o = relu_if(relu, s);
                    }
                });
            }
            Node::Pool { kind, x, op, .. } => {
                let op = pool_op_in(layout, batch, op);
                let xs = val(x)?;
                check_len(xs.len(), op.batch * op.channels * op.in_h * op.in_w)?;
                check_len(out.len(), op.batch * op.channels * op.out_h * op.out_w)?;
                crate::pool::cpu::forward(kind, &op, xs, out);
            }
            Node::Gap { x, .. } => {
                let [_, h, w] = self.values[x];
                let hw = h * w;
                let xs = val(x)?;
                check_len(xs.len(), out.len() * hw)?;
                let inv = E::ONE / E::from_f64_lossy(hw as f64);
                out.par_iter_mut().zip(xs.par_chunks(hw)).for_each(|(o, p)| {
                    *o = p.iter().fold(E::ZERO, |a, &v| a + v) * inv;
                });
            }
            Node::Linear { x, weight, bias, .. } => {
                let w = &params[weight];
                let xs = val(x)?;
                let (i, o) = (xs.len() / batch, out.len() / batch);
                check_len(w.len(), o * i)?;
                // NCHW: y (batch x o) = x (batch x i) w^T; CNHW: y (o x batch) = w (o x i) x (i x batch).
                let (dims, y_rs, lhs, lhs_s, rhs, rhs_s) = match layout {
                    Layout::Nchw => ((batch, o, i), o, xs.as_ptr(), (i, 1), w.as_ptr(), (1, i)),
                    Layout::Cnhw => ((o, batch, i), batch, w.as_ptr(), (i, 1), xs.as_ptr(), (batch, 1)),
                };
                // SAFETY: the shapes above address exactly the checked lengths of y, x and w.
                unsafe { crate::conv::cpu::matmul(dims, out.as_mut_ptr(), y_rs, false, lhs, lhs_s, rhs, rhs_s, true) }
                if let Some(b) = bias {
                    let b = params[b];
                    check_len(b.len(), o)?;
                    match layout {
                        Layout::Nchw => {
                            out.chunks_mut(o).for_each(|row| row.iter_mut().zip(b).for_each(|(y, &b)| *y += b))
                        }
                        Layout::Cnhw => {
                            out.chunks_mut(batch).zip(b).for_each(|(row, &b)| row.iter_mut().for_each(|y| *y += b))
                        }
                    }
                }
            }
            Node::SubPad { x, op, .. } => {
                let op = subpad_op_in(layout, batch, op);
                let xs = val(x)?;
                check_len(xs.len(), op.batch * op.in_channels * op.in_h * op.in_w)?;
                check_len(out.len(), op.batch * op.out_channels * op.out_h * op.out_w)?;
                crate::shortcut::cpu::forward(&op, xs, out);
            }
            Node::Conv { .. } | Node::Norm { .. } => return err("internal: conv/norm in forward_common"),
        }
        Ok(())
    }
}

/// Per-node state kept for backward: the pre-norm conv output and the batch statistics.
pub(crate) struct Aux<E> {
    pre: Vec<E>,
    mean: Vec<E>,
    invstd: Vec<E>,
}

impl<E: Real> Aux<E> {
    fn give(self, pool: &mut BufPool<E>) {
        pool.give(self.pre);
        pool.give(self.mean);
        pool.give(self.invstd);
    }
}

/// A training forward pass's values, kept for its backward pass.
pub(crate) struct Saved<E> {
    compiled: Compiled,
    batch: usize,
    layout: Layout,
    vals: Vec<Option<Vec<E>>>,
    aux: Vec<Option<Aux<E>>>,
}

impl<E: Real> Saved<E> {
    /// Runs backward from the output's gradient; returns the input's gradient and one gradient
    /// per parameter (empty for non-trainable ones). Consumes the saved buffers.
    pub(crate) fn backward(
        self,
        pool: &mut BufPool<E>,
        grad_out: Vec<E>,
        params: &[&[E]],
    ) -> Result<(Vec<E>, Vec<Vec<E>>), PlanError> {
        let Saved { compiled: c, batch, layout, vals, mut aux } = self;
        let mut grads: Vec<Option<Vec<E>>> = (0..c.values.len()).map(|_| None).collect();
        if grad_out.len() != c.len(c.output, batch)? {
            return err("output gradient length does not match the plan");
        }
        grads[c.output] = Some(c.relayout(pool, Layout::Nchw, layout, c.output, batch, grad_out));
        let mut pgrads: Vec<Vec<E>> =
            c.trainable.iter().zip(params).map(|(&t, p)| if t { zeroed(pool, p.len()) } else { Vec::new() }).collect();
        let result = (|| {
            for (n, node) in c.nodes.iter().enumerate().rev() {
                let Some(gy) = grads[node.output()].take() else { continue };
                let r = c.backward_node(
                    pool,
                    node,
                    batch,
                    layout,
                    &vals,
                    aux[n].as_ref(),
                    &gy,
                    &mut grads,
                    &mut pgrads,
                    params,
                );
                pool.give(gy);
                r?;
            }
            Ok(())
        })();
        let gx = match grads[0].take() {
            // A pooled buffer: the caller gives the input gradient back to the pool.
            Some(g) => c.relayout(pool, layout, Layout::Nchw, 0, batch, g),
            None => zeroed(pool, c.len(0, batch)?),
        };
        grads.into_iter().flatten().for_each(|g| pool.give(g));
        vals.into_iter().flatten().for_each(|v| pool.give(v));
        aux.iter_mut().filter_map(Option::take).for_each(|a| a.give(pool));
        result.map(|()| (gx, pgrads))
    }
}

/// The buffer of value `v`, which the node order guarantees is live (or saved, in backward).
fn live<E>(vals: &[Option<Vec<E>>], v: usize) -> Result<&[E], PlanError> {
    vals[v].as_deref().ok_or_else(|| PlanError(format!("value {v} is not live")))
}

fn zeroed<E: Real>(pool: &mut BufPool<E>, len: usize) -> Vec<E> {
    let mut v = pool.take(len);
    // On the threads: the parameter gradients of a ResNet-50 are 100 MB.
    v.par_chunks_mut(CHUNK).for_each(|c| c.fill(E::ZERO));
    v
}

/// The gradient buffer of value `v`, zero-filled on first use.
fn grad_of<'g, E: Real>(
    pool: &mut BufPool<E>,
    grads: &'g mut [Option<Vec<E>>],
    v: usize,
    len: usize,
) -> &'g mut Vec<E> {
    grads[v].get_or_insert_with(|| zeroed(pool, len))
}

impl Compiled {
    #[allow(clippy::too_many_arguments)]
    fn backward_node<E: Real>(
        &self,
        pool: &mut BufPool<E>,
        node: &Node,
        batch: usize,
        layout: Layout,
        vals: &[Option<Vec<E>>],
        aux: Option<&Aux<E>>,
        gy: &[E],
        grads: &mut [Option<Vec<E>>],
        pgrads: &mut [Vec<E>],
        params: &[&[E]],
    ) -> Result<(), PlanError> {
        let val = |v: usize| live(vals, v);
        let len = |v: usize| self.len(v, batch);
        match *node {
            Node::Conv { x, y, op, weight, bias, bn, res, relu } => {
                let op = Conv2dOp { batch, ..op };
                let plane = plane(layout, batch, op.out_h * op.out_w);
                // g: the gradient at the conv (+ bias) output, built in place; in the same pass,
                // the residual's gradient (the gradient at the add: the same values).
                let mut g = pool.take(gy.len());
                let y_relu = if relu { Some(val(y)?) } else { None };
                match res {
                    Some(r) => {
                        let (fresh, rl) = (grads[r].is_none(), len(r)?);
                        let gr = grads[r].get_or_insert_with(|| pool.take(rl));
                        check_len(gr.len(), g.len())?;
                        masked_into_res(gy, y_relu, &mut g, gr, fresh);
                    }
                    None => masked(gy, y_relu, &mut g),
                }
                if let Some(bn) = bn {
                    let a = aux.ok_or_else(|| PlanError("batch statistics were not saved".into()))?;
                    norm_backward(&a.pre, &mut g, plane, op.out_channels, &a.mean, &a.invstd, bn, pgrads, params);
                }
                if let Some(b) = bias {
                    channel_sums_into(&g, plane, op.out_channels, &mut pgrads[b]);
                }
                // The conv writes the input's first gradient (no zero-fill to add into).
                let (fresh, xl) = (grads[x].is_none(), len(x)?);
                let gx = grads[x].get_or_insert_with(|| pool.take(xl));
                let r = conv_bwd(layout, &op, val(x)?, params[weight], gx, fresh, &mut pgrads[weight], &g);
                pool.give(g);
                r?;
            }
            Node::Norm { x, y, bn, relu } => {
                let [c, h, w] = self.values[x];
                let a = aux.ok_or_else(|| PlanError("batch statistics were not saved".into()))?;
                let mut g = pool.take(gy.len());
                masked(gy, if relu { Some(val(y)?) } else { None }, &mut g);
                norm_backward(val(x)?, &mut g, plane(layout, batch, h * w), c, &a.mean, &a.invstd, bn, pgrads, params);
                add_assign(grad_of(pool, grads, x, len(x)?), &g);
                pool.give(g);
            }
            Node::Relu { x, y } => {
                let ys = val(y)?;
                let gx = grad_of(pool, grads, x, len(x)?);
                gx.par_chunks_mut(CHUNK).zip(gy.par_chunks(CHUNK)).zip(ys.par_chunks(CHUNK)).for_each(|((d, g), y)| {
                    for ((d, &g), &y) in d.iter_mut().zip(g).zip(y) {
                        if y > E::ZERO {
                            *d += g;
                        }
                    }
                });
            }
            Node::Add { a, b, y, relu } => {
                let mut g = pool.take(gy.len());
                masked(gy, if relu { Some(val(y)?) } else { None }, &mut g);
                add_assign(grad_of(pool, grads, a, len(a)?), &g);
                add_assign(grad_of(pool, grads, b, len(b)?), &g);
                pool.give(g);
            }
            Node::Pool { kind, x, op, .. } => {
                let op = pool_op_in(layout, batch, op);
                let xs = val(x)?;
                let gx = grad_of(pool, grads, x, len(x)?);
                check_len(gy.len(), op.batch * op.channels * op.out_h * op.out_w)?;
                crate::pool::cpu::backward(kind, &op, xs, gx, gy);
            }
            Node::Gap { x, .. } => {
                let [_, h, w] = self.values[x];
                let hw = h * w;
                let inv = E::ONE / E::from_f64_lossy(hw as f64);
                let gx = grad_of(pool, grads, x, len(x)?);
                gx.par_chunks_mut(hw).zip(gy.par_iter()).for_each(|(p, &g)| {
                    let s = g * inv;
                    p.iter_mut().for_each(|d| *d += s);
                });
            }
            Node::Linear { x, weight, bias, .. } => {
                let xs = val(x)?;
                let (i, o) = (xs.len() / batch, gy.len() / batch);
                check_len(params[weight].len(), o * i)?;
                check_len(pgrads[weight].len(), o * i)?;
                let w = &params[weight];
                let gx = grad_of(pool, grads, x, len(x)?);
                // NCHW: gx (batch x i) += gy (batch x o) w, gw (o x i) += gy^T x.
                // CNHW: gx (i x batch) += w^T gy (o x batch), gw (o x i) += gy x^T (batch x i).
                let ((gx_dims, gx_rs, gx_lhs, gx_rhs), (gw_lhs, gw_rhs)) = match layout {
                    Layout::Nchw => (((batch, i, o), i, (gy.as_ptr(), (o, 1)), (w.as_ptr(), (i, 1))), ((1, o), (i, 1))),
                    Layout::Cnhw => (
                        ((i, batch, o), batch, (w.as_ptr(), (1, i)), (gy.as_ptr(), (batch, 1))),
                        ((batch, 1), (1, batch)),
                    ),
                };
                // SAFETY: the shapes above address exactly the checked lengths of gx, gy, w, gw
                // and x; the destinations are distinct buffers.
                unsafe {
                    let m = crate::conv::cpu::matmul;
                    m(gx_dims, gx.as_mut_ptr(), gx_rs, true, gx_lhs.0, gx_lhs.1, gx_rhs.0, gx_rhs.1, true);
                    let gw = &mut pgrads[weight];
                    m((o, i, batch), gw.as_mut_ptr(), i, true, gy.as_ptr(), gw_lhs, xs.as_ptr(), gw_rhs, true);
                }
                if let Some(b) = bias {
                    let gb = &mut pgrads[b];
                    check_len(gb.len(), o)?;
                    match layout {
                        Layout::Nchw => gy.chunks(o).for_each(|row| gb.iter_mut().zip(row).for_each(|(d, &g)| *d += g)),
                        Layout::Cnhw => gb
                            .iter_mut()
                            .zip(gy.chunks(batch))
                            .for_each(|(d, row)| *d += row.iter().fold(E::ZERO, |a, &g| a + g)),
                    }
                }
            }
            Node::SubPad { x, op, .. } => {
                let op = subpad_op_in(layout, batch, op);
                let gx = grad_of(pool, grads, x, len(x)?);
                check_len(gx.len(), op.batch * op.in_channels * op.in_h * op.in_w)?;
                check_len(gy.len(), op.batch * op.out_channels * op.out_h * op.out_w)?;
                crate::shortcut::cpu::backward(&op, gx, gy);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- checks

fn step_io(step: &Step) -> ([Option<usize>; 2], usize) {
    match *step {
        Step::Conv { input, output, .. }
        | Step::Bias { input, output, .. }
        | Step::BatchNorm { input, output, .. }
        | Step::Relu { input, output }
        | Step::MaxPool { input, output, .. }
        | Step::AvgPool { input, output, .. }
        | Step::GlobalAvgPool { input, output }
        | Step::Linear { input, output, .. }
        | Step::SubsamplePad { input, output, .. } => ([Some(input), None], output),
        Step::Add { a, b, output } => ([Some(a), Some(b)], output),
    }
}

fn conv_op(g: ConvGeom, [c, h, w]: [usize; 3]) -> Option<Conv2dOp> {
    if g.groups == 0 || g.out_channels == 0 || !c.is_multiple_of(g.groups) || !g.out_channels.is_multiple_of(g.groups) {
        return None;
    }
    let oh = conv_out_size(h, g.kernel, g.stride, g.padding, g.dilation)?;
    let ow = conv_out_size(w, g.kernel, g.stride, g.padding, g.dilation)?;
    Some(Conv2dOp {
        batch: 1,
        in_channels: c,
        out_channels: g.out_channels,
        groups: g.groups,
        kernel: g.kernel,
        stride: g.stride,
        padding: g.padding,
        dilation: g.dilation,
        in_h: h,
        in_w: w,
        out_h: oh,
        out_w: ow,
    })
}

fn pool_op(g: PoolGeom, [c, h, w]: [usize; 3]) -> Option<Pool2dOp> {
    if g.kernel == 0 || g.padding > g.kernel / 2 {
        return None;
    }
    let cfg = Pool2dConfig { kernel: g.kernel, stride: g.stride, padding: g.padding };
    Some(Pool2dOp {
        batch: 1,
        channels: c,
        kernel: g.kernel,
        stride: g.stride,
        padding: g.padding,
        in_h: h,
        in_w: w,
        out_h: cfg.output_size(h)?,
        out_w: cfg.output_size(w)?,
    })
}

fn check_step(plan: &Plan, step: &Step) -> Result<(), PlanError> {
    let nv = plan.values.len();
    let (ins, out) = step_io(step);
    for v in ins.into_iter().flatten().chain([out]) {
        if v >= nv {
            return err(format!("value {v} is out of range ({nv} values)"));
        }
    }
    let param = |p: usize, len: Option<usize>| -> Result<(), PlanError> {
        let spec = plan.params.get(p).ok_or_else(|| PlanError(format!("parameter {p} is out of range")))?;
        if Some(spec.len) != len {
            return err(format!("parameter {p} has {} elements, the step needs {len:?}", spec.len));
        }
        Ok(())
    };
    let shape = |v: usize| plan.values[v];
    let same = |a: usize, b: usize| -> Result<(), PlanError> {
        if shape(a) != shape(b) {
            return err(format!("values {a} {:?} and {b} {:?} differ in shape", shape(a), shape(b)));
        }
        Ok(())
    };
    match *step {
        Step::Conv { input, output, weight, geom } => {
            let op = conv_op(geom, shape(input)).ok_or_else(|| PlanError("the conv does not fit its input".into()))?;
            if shape(output) != [op.out_channels, op.out_h, op.out_w] {
                return err(format!("conv output should be {:?}", [op.out_channels, op.out_h, op.out_w]));
            }
            let wl = op
                .out_channels
                .checked_mul(op.in_channels / op.groups)
                .and_then(|n| n.checked_mul(op.kernel))
                .and_then(|n| n.checked_mul(op.kernel));
            param(weight, wl)
        }
        Step::Bias { input, output, bias } => {
            same(input, output)?;
            param(bias, Some(shape(input)[0]))
        }
        Step::BatchNorm { input, output, weight, bias, running_mean, running_var } => {
            same(input, output)?;
            let c = Some(shape(input)[0]);
            for p in [weight, bias, running_mean, running_var] {
                param(p, c)?;
            }
            // Training updates the running statistics in copies made of the non-trainable
            // parameters (plan::train); a trainable one would have no copy.
            if plan.params[running_mean].trainable || plan.params[running_var].trainable {
                return err(format!("running statistics {running_mean} and {running_var} must not be trainable"));
            }
            Ok(())
        }
        Step::Relu { input, output } => same(input, output),
        Step::Add { a, b, output } => {
            same(a, b)?;
            same(a, output)
        }
        Step::MaxPool { input, output, geom } | Step::AvgPool { input, output, geom } => {
            let op =
                pool_op(geom, shape(input)).ok_or_else(|| PlanError("the window does not fit its input".into()))?;
            if shape(output) != [op.channels, op.out_h, op.out_w] {
                return err(format!("pool output should be {:?}", [op.channels, op.out_h, op.out_w]));
            }
            Ok(())
        }
        Step::GlobalAvgPool { input, output } => {
            if shape(output) != [shape(input)[0], 1, 1] {
                return err("global average pooling gives [C, 1, 1]");
            }
            Ok(())
        }
        Step::Linear { input, output, weight, bias } => {
            let i = numel(shape(input)).unwrap_or(0);
            let [o, oh, ow] = shape(output);
            if oh != 1 || ow != 1 {
                return err("a linear layer gives [O, 1, 1]");
            }
            param(weight, o.checked_mul(i))?;
            match bias {
                Some(b) => param(b, Some(o)),
                None => Ok(()),
            }
        }
        Step::SubsamplePad { input, output, stride } => {
            let [c, h, w] = shape(input);
            let op = SubsamplePadOp::new([1, c, h, w], shape(output)[0], stride)
                .ok_or_else(|| PlanError("option A needs output channels >= input channels, stride >= 1".into()))?;
            if shape(output) != [op.out_channels, op.out_h, op.out_w] {
                return err(format!("option-A output should be {:?}", [op.out_channels, op.out_h, op.out_w]));
            }
            Ok(())
        }
    }
}

fn check_len(have: usize, want: usize) -> Result<(), PlanError> {
    if have != want {
        return err(format!("a buffer of {have} elements where {want} are needed"));
    }
    Ok(())
}

// ---------------------------------------------------------------- kernels on buffers

fn conv_lens(op: &Conv2dOp) -> Result<[usize; 3], PlanError> {
    match op.buffer_lens() {
        Some(lens) => Ok(lens),
        None => err(format!("an invalid conv op {op:?}")),
    }
}

/// Whether a conv forward's buffers are the lengths its op reads and writes.
fn check_conv_fwd<E>(op: &Conv2dOp, x: &[E], w: &[E], y: &[E]) -> Result<(), PlanError> {
    let [xl, wl, yl] = conv_lens(op)?;
    check_len(x.len(), xl)?;
    check_len(w.len(), wl)?;
    check_len(y.len(), yl)
}

/// The conv forward on `layout`'s activations (the buffer lengths are the same in both).
fn conv_fwd<E: Real>(layout: Layout, op: &Conv2dOp, x: &[E], w: &[E], y: &mut [E]) -> Result<(), PlanError> {
    check_conv_fwd(op, x, w, y)?;
    match layout {
        Layout::Nchw => crate::conv::cpu::forward(op, x, w, y),
        Layout::Cnhw => crate::conv::cpu::forward_cnhw(op, x, w, y),
    }
    Ok(())
}

/// The conv forward and its epilogue (`store`, an [`Store::Epilogue`]): in one pass where the
/// conv fuses it (Winograd), else the conv, then [`epilogue`].
#[allow(clippy::too_many_arguments)]
fn conv_fwd_epilogue<E: Real>(
    layout: Layout,
    op: &Conv2dOp,
    x: &[E],
    w: &[E],
    y: &mut [E],
    plane: usize,
    store: Store<E>,
) -> Result<(), PlanError> {
    check_conv_fwd(op, x, w, y)?;
    let Store::Epilogue { scale, shift, res, relu } = store else {
        return err("a conv epilogue that is not one");
    };
    if let Some(r) = res {
        check_len(r.len(), y.len())?;
    }
    if crate::conv::cpu::forward_fused(op, matches!(layout, Layout::Cnhw), x, w, y, store) {
        return Ok(());
    }
    conv_fwd(layout, op, x, w, y)?;
    epilogue(y, plane, op.out_channels, scale, shift, res, relu);
    Ok(())
}

/// The elements of one channel's block: a plane of `p` per image in NCHW, all `batch` of them in
/// CNHW (see [`Layout`]).
fn plane(layout: Layout, batch: usize, p: usize) -> usize {
    match layout {
        Layout::Nchw => p,
        Layout::Cnhw => batch * p,
    }
}

/// A pooling op for `batch` images in `layout`: in CNHW, one image of `C * B` planes (pooling is
/// per plane).
fn pool_op_in(layout: Layout, batch: usize, op: Pool2dOp) -> Pool2dOp {
    match layout {
        Layout::Nchw => Pool2dOp { batch, ..op },
        Layout::Cnhw => Pool2dOp { batch: 1, channels: op.channels * batch, ..op },
    }
}

/// The option-A shortcut for `batch` images in `layout`: in CNHW, one image of `C * B` planes,
/// the padding channels' planes `B` times as many.
fn subpad_op_in(layout: Layout, batch: usize, op: SubsamplePadOp) -> SubsamplePadOp {
    match layout {
        Layout::Nchw => SubsamplePadOp { batch, ..op },
        Layout::Cnhw => SubsamplePadOp {
            batch: 1,
            in_channels: op.in_channels * batch,
            out_channels: op.out_channels * batch,
            pad_front: op.pad_front * batch,
            ..op
        },
    }
}

/// `dst[j, i, :] = src[i, j, :]` for `src` of shape `[a, b, plane]`: NCHW <-> CNHW.
fn swap_outer<E: Real>(src: &[E], dst: &mut [E], a: usize, b: usize, plane: usize) {
    if plane == 0 {
        return;
    }
    dst.par_chunks_mut(plane).enumerate().for_each(|(k, d)| {
        let (j, i) = (k / a, k % a);
        d.copy_from_slice(&src[(i * b + j) * plane..][..plane]);
    });
}

/// The conv backward on `layout`'s buffers: `gw += `, and `gx += ` the input gradient, or
/// `gx = ` with `gx_fresh` (a buffer holding no gradient yet).
#[allow(clippy::too_many_arguments)]
fn conv_bwd<E: Real>(
    layout: Layout,
    op: &Conv2dOp,
    x: &[E],
    w: &[E],
    gx: &mut [E],
    gx_fresh: bool,
    gw: &mut [E],
    gy: &[E],
) -> Result<(), PlanError> {
    let [xl, wl, yl] = conv_lens(op)?;
    check_len(x.len(), xl)?;
    check_len(gx.len(), xl)?;
    check_len(w.len(), wl)?;
    check_len(gw.len(), wl)?;
    check_len(gy.len(), yl)?;
    match layout {
        Layout::Nchw => crate::conv::cpu::backward(op, x, w, gx, gx_fresh, gw, gy),
        Layout::Cnhw => crate::conv::cpu::backward_cnhw(op, x, w, gx, gx_fresh, gw, gy),
    }
    Ok(())
}

/// Running-statistics batch norm folded to `y = x * scale + shift` (with a conv bias before it).
fn fold<E: Real>(bn: Bn, bias: Option<usize>, params: &[&[E]]) -> (Vec<E>, Vec<E>) {
    let (g, b, m, v) = (&params[bn.weight], &params[bn.bias], &params[bn.mean], &params[bn.var]);
    let mut scale = Vec::with_capacity(g.len());
    let mut shift = Vec::with_capacity(g.len());
    for c in 0..g.len() {
        let s = g[c] / (v[c] + E::from_f64_lossy(EPS)).sqrt_();
        let pre = bias.map_or(E::ZERO, |bi| params[bi][c]);
        scale.push(s);
        shift.push(b[c] + (pre - m[c]) * s);
    }
    (scale, shift)
}

/// In place, per plane `(b, c)`: `y = y * scale[c] + shift[c] (+ res)`, then relu.
#[allow(clippy::too_many_arguments)]
fn epilogue<E: Real>(
    y: &mut [E],
    plane: usize,
    channels: usize,
    scale: Option<&[E]>,
    shift: Option<&[E]>,
    res: Option<&[E]>,
    relu: bool,
) {
    if scale.is_none() && shift.is_none() && res.is_none() && !relu {
        return;
    }
    y.par_chunks_mut(plane).enumerate().for_each(|(i, p)| {
        let k = scale.map_or(E::ONE, |k| k[i % channels]);
        let s = shift.map_or(E::ZERO, |s| s[i % channels]);
        let r = res.map(|r| &r[i * plane..(i + 1) * plane]);
        wide!(epilogue_plane(p, k, s, r, relu))
    });
}

/// One plane of [`epilogue`]: `p = p * k + s (+ r)`, then relu. Inlined into its caller, which
/// compiles it with AVX-512 where the CPU has it (`wide!`).
#[inline(always)]
fn epilogue_plane<E: Real>(p: &mut [E], k: E, s: E, r: Option<&[E]>, relu: bool) {
    match r {
        Some(r) => p.iter_mut().zip(r).for_each(|(v, &r)| {
            let t = *v * k + s + r;
            *v = relu_if(relu, t);
        }),
        None => p.iter_mut().for_each(|v| {
            let t = *v * k + s;
            *v = relu_if(relu, t);
        }),
    }
}

/// `out = x * scale[c] + shift[c]` (then relu), per plane.
fn affine<E: Real>(x: &[E], out: &mut [E], plane: usize, channels: usize, scale: &[E], shift: &[E], relu: bool) {
    out.par_chunks_mut(plane).zip(x.par_chunks(plane)).enumerate().for_each(|(i, (o, x))| {
        let (k, s) = (scale[i % channels], shift[i % channels]);
        o.iter_mut().zip(x).for_each(|(o, &x)| {
            let t = x * k + s;
            *o = relu_if(relu, t);
        });
    });
}

/// Batch norm in training, `x` (`[B, C, plane]`) into `out`: per channel (a task each), its batch
/// mean and 1/sqrt(var + eps), then `out = gamma * (x - mean) * invstd + beta (+ res)`, relu,
/// while the channel's planes are still in cache (a CIFAR channel at batch 16 is 64 KB): one
/// pass over memory and one fork-join where statistics and normalisation made three passes and
/// two. The running statistics are updated as PyTorch does (unbiased variance; none when one
/// value per channel). Sums run in f64. Returns the mean and 1/sqrt(var + eps).
#[allow(clippy::too_many_arguments)]
fn norm_forward<E: Real>(
    pool: &mut BufPool<E>,
    x: &[E],
    out: &mut [E],
    plane: usize,
    channels: usize,
    bn: Bn,
    running: &mut [Vec<E>],
    (gamma, beta): (&[E], &[E]),
    res: Option<&[E]>,
    relu: bool,
) -> Result<(Vec<E>, Vec<E>), PlanError> {
    let len = x.len();
    let Some(per_image) = plane.checked_mul(channels).filter(|&pc| pc > 0 && len.is_multiple_of(pc)) else {
        return err("batch norm: buffer is not whole planes of its channels");
    };
    check_len(out.len(), len)?;
    if res.is_some_and(|r| r.len() != len) || gamma.len() < channels || beta.len() < channels {
        return err("batch norm: residual or affine parameters of the wrong length");
    }
    let batch = len / per_image;
    let n = (batch * plane) as f64;
    // Tasks write the disjoint planes of their own channel: `out` travels as an address.
    let out_addr = out.as_mut_ptr() as usize;
    let stats: Vec<(f64, f64, E)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let (m, v) = channel_moments(x, batch, channels, plane, c);
            let is = E::from_f64_lossy(1.0 / (v + EPS).sqrt());
            let (mean, k, shift) = (E::from_f64_lossy(m), gamma[c] * is, beta[c]);
            for b in 0..batch {
                let off = (b * channels + c) * plane;
                // SAFETY: plane (b, c) lies inside `out` (len = batch * channels * plane, checked
                // above), and only this task (channel c) makes a reference to it.
                let o = unsafe { std::slice::from_raw_parts_mut((out_addr as *mut E).add(off), plane) };
                normalize_plane(&x[off..][..plane], o, mean, k, shift, res.map(|r| &r[off..][..plane]), relu);
            }
            (m, v, is)
        })
        .collect();
    let mut mean = pool.take(channels);
    let mut invstd = pool.take(channels);
    for (c, &(m, v, is)) in stats.iter().enumerate() {
        mean[c] = E::from_f64_lossy(m);
        invstd[c] = is;
        let rm = &mut running[bn.mean][c];
        *rm = E::from_f64_lossy((1.0 - MOMENTUM) * rm.to_f64_lossless() + MOMENTUM * m);
        if n > 1.0 {
            let rv = &mut running[bn.var][c];
            *rv = E::from_f64_lossy((1.0 - MOMENTUM) * rv.to_f64_lossless() + MOMENTUM * v * n / (n - 1.0));
        }
    }
    Ok((mean, invstd))
}

/// Partial sums of `f(v)` over `xs` in f64, `LANES` of them interleaved, then added in a fixed
/// order. One running sum is a chain of dependent adds, an add's latency per element (it cannot
/// be vectorised: reordering changes the rounding); the batch-norm statistics of a ResNet-50 b8
/// training step spent ~13% of it so. This order is fixed too, so results do not vary by run.
#[inline(always)]
fn lane_sums<E: Real, const N: usize>(xs: &[E], ys: &[E], f: impl Fn(E, E) -> [f64; N]) -> [f64; N] {
    const LANES: usize = 8;
    let mut acc = [[0.0f64; LANES]; N];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (xb, yb) in xc.zip(yc) {
        for l in 0..LANES {
            let v = f(xb[l], yb[l]);
            for k in 0..N {
                acc[k][l] += v[k];
            }
        }
    }
    let mut out = [0.0; N];
    for k in 0..N {
        out[k] = acc[k].iter().sum();
    }
    for (&x, &y) in xr.iter().zip(yr) {
        let v = f(x, y);
        for k in 0..N {
            out[k] += v[k];
        }
    }
    out
}

/// Channel `c`'s mean and (biased) variance over its `batch` planes, in f64: the mean first, then
/// the squared deviations from it (exact where a one-pass sum of squares would cancel).
fn channel_moments<E: Real>(x: &[E], batch: usize, channels: usize, plane: usize, c: usize) -> (f64, f64) {
    #[inline(always)]
    fn moments<E: Real>(x: &[E], batch: usize, channels: usize, plane: usize, c: usize) -> (f64, f64) {
        let n = (batch * plane) as f64;
        let mut sum = 0.0;
        for b in 0..batch {
            let p = &x[(b * channels + c) * plane..][..plane];
            sum += f32_sums(p, p, 0.0).map_or_else(|| lane_sums(p, p, |v, _| [v.to_f64_lossless()])[0], |s| s[0]);
        }
        let mean = sum / n;
        let mut ss = 0.0;
        for b in 0..batch {
            let p = &x[(b * channels + c) * plane..][..plane];
            ss += f32_sums(p, p, mean).map_or_else(
                || {
                    lane_sums(p, p, |v, _| {
                        let d = v.to_f64_lossless() - mean;
                        [d * d]
                    })[0]
                },
                |s| s[1],
            );
        }
        (mean, ss / n)
    }
    wide!(moments(x, batch, channels, plane, c))
}

/// One channel's `sum(g)` and `sum(g * xhat)` (`xhat = (x - mean) * invstd`) over its planes
/// (pairs of `g` and `x`), in f64: the batch norm's backward reductions. For f32, as `(sum(g * x) - mean * sum(g)) *
/// invstd`: two f32 values multiply exactly in f64, and the sums keep 29 more bits than the f32
/// result, so the cancellation of the difference stays far below f32's rounding; per element,
/// two converts and two adds where the direct form also subtracts and multiplies twice (the
/// reductions were 8.6% of a ResNet-50 b8 training step). f64 keeps the direct form: its
/// products round, and PyTorch's f64 gradients are matched to 1e-13.
fn channel_grad_sums<'a, E: Real>(planes: impl Iterator<Item = (&'a [E], &'a [E])>, mean: E, invstd: E) -> (f64, f64) {
    let (m, is) = (mean.to_f64_lossless(), invstd.to_f64_lossless());
    let exact_products = std::any::TypeId::of::<E>() == std::any::TypeId::of::<f32>();
    let (mut sg, mut sgx) = (0.0, 0.0);
    for (gp, xp) in planes {
        let [a, b] = if let Some(s) = f32_sums(gp, xp, 0.0) {
            s
        } else if exact_products {
            wide!(lane_sums(gp, xp, |gv, xv| {
                let gv = gv.to_f64_lossless();
                [gv, gv * xv.to_f64_lossless()]
            }))
        } else {
            wide!(lane_sums(gp, xp, |gv, xv| {
                let gv = gv.to_f64_lossless();
                [gv, gv * (xv.to_f64_lossless() - m) * is]
            }))
        };
        sg += a;
        sgx += b;
    }
    if exact_products {
        sgx = (sgx - m * sg) * is;
    }
    (sg, sgx)
}

/// `[sum(g), sum(g * (x - m))]` in f64 for f32 slices of one length, on AVX-512 (else `None`):
/// eight f64 lanes, two vectors per 16 elements, each sum in four interleaved accumulators, added
/// in a fixed order. Serves the batch-norm statistics (`g = x`: the sum, and with the mean the
/// squared deviations) and backward sums (`m = 0`). The generic `lane_sums` compiled to scalar
/// or SSE code here (the compiler vectorised across the sums, or the closures it calls were not
/// built for AVX-512).
fn f32_sums<E: Real>(g: &[E], x: &[E], m: f64) -> Option<[f64; 2]> {
    if std::any::TypeId::of::<E>() != std::any::TypeId::of::<f32>()
        || !crate::wide::wide_vectors()
        || g.len() != x.len()
    {
        return None;
    }
    // SAFETY: E is f32 (checked): the same memory, renamed.
    let (g, x) = unsafe {
        (
            std::slice::from_raw_parts(g.as_ptr() as *const f32, g.len()),
            std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()),
        )
    };
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
        unsafe fn sums(g: &[f32], x: &[f32], m: f64) -> [f64; 2] {
            use std::arch::x86_64::*;
            let z = _mm512_setzero_pd();
            let mv = _mm512_set1_pd(m);
            let (mut sg, mut sgx) = ([z; 4], [z; 4]);
            let (gc, xc) = (g.chunks_exact(32), x.chunks_exact(32));
            let (gr, xr) = (gc.remainder(), xc.remainder());
            for (gb, xb) in gc.zip(xc) {
                for h in 0..4 {
                    // SAFETY: each chunk holds 32 elements: 8 at h * 8.. are in it.
                    let gv = _mm512_cvtps_pd(_mm256_loadu_ps(gb.as_ptr().add(h * 8)));
                    let xv = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(xb.as_ptr().add(h * 8))), mv);
                    sg[h] = _mm512_add_pd(sg[h], gv);
                    sgx[h] = _mm512_fmadd_pd(gv, xv, sgx[h]);
                }
            }
            let total = |a: [__m512d; 4]| {
                _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(a[0], a[1]), _mm512_add_pd(a[2], a[3])))
            };
            let (mut a, mut b) = (total(sg), total(sgx));
            for (&gv, &xv) in gr.iter().zip(xr) {
                a += gv as f64;
                b += gv as f64 * (xv as f64 - m);
            }
            [a, b]
        }
        // SAFETY: the CPU has AVX-512 (checked above: `wide_vectors`).
        Some(unsafe { sums(g, x, m) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, x, m);
        None
    }
}

/// One plane of the batch norm: `out = (x - mean) * k + shift (+ res)`, then relu, `k` being
/// gamma * invstd.
fn normalize_plane<E: Real>(x: &[E], out: &mut [E], mean: E, k: E, shift: E, res: Option<&[E]>, relu: bool) {
    #[inline(always)]
    fn run<E: Real>(x: &[E], out: &mut [E], m: E, k: E, b: E, res: Option<&[E]>, relu: bool) {
        // (x - mean) first: exact for x near the mean, where x * k - mean * k would cancel.
        match res {
            Some(r) => {
                for ((o, &x), &r) in out.iter_mut().zip(x).zip(r) {
                    *o = relu_if(relu, (x - m) * k + b + r);
                }
            }
            None => {
                for (o, &x) in out.iter_mut().zip(x) {
                    *o = relu_if(relu, (x - m) * k + b + E::ZERO);
                }
            }
        }
    }
    wide!(run(x, out, mean, k, shift, res, relu))
}

/// `max(t, 0)` when `relu`; NaN stays NaN (as PyTorch's relu).
#[inline(always)]
fn relu_if<E: Real>(relu: bool, t: E) -> E {
    if relu && t <= E::ZERO {
        E::ZERO
    } else {
        t
    }
}

/// `g = gy * (y > 0)` (no mask: a copy).
fn masked<E: Real>(gy: &[E], y: Option<&[E]>, g: &mut [E]) {
    match y {
        Some(y) => {
            g.par_chunks_mut(CHUNK).zip(gy.par_chunks(CHUNK)).zip(y.par_chunks(CHUNK)).for_each(|((g, gy), y)| {
                for ((g, &gy), &y) in g.iter_mut().zip(gy).zip(y) {
                    *g = if y > E::ZERO { gy } else { E::ZERO };
                }
            })
        }
        None => g.copy_from_slice(gy),
    }
}

/// [`masked`], and `res = ` (`res_fresh`: a buffer holding no gradient yet) or `+= ` the same
/// values, in one pass.
fn masked_into_res<E: Real>(gy: &[E], y: Option<&[E]>, g: &mut [E], res: &mut [E], res_fresh: bool) {
    // Without a relu, `y` is never read: `gy` stands in so the chunks zip alike.
    let (relu, y) = (y.is_some(), y.unwrap_or(gy));
    g.par_chunks_mut(CHUNK).zip(res.par_chunks_mut(CHUNK)).zip(gy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK))).for_each(
        |((g, r), (gy, y))| {
            for (((g, r), &gy), &y) in g.iter_mut().zip(r).zip(gy).zip(y) {
                let v = if !relu || y > E::ZERO { gy } else { E::ZERO };
                *g = v;
                *r = if res_fresh { v } else { *r + v };
            }
        },
    );
}

/// `dst += src`, elementwise, on the threads (also the plan's gradients into dfdx's).
pub(super) fn add_assign<E: Real>(dst: &mut [E], src: &[E]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s));
}

/// `dst[c] += sum over (b, plane) of g[b, c, :]`.
fn channel_sums_into<E: Real>(g: &[E], plane: usize, channels: usize, dst: &mut [E]) {
    let batch = g.len() / (plane * channels);
    for (c, d) in dst.iter_mut().enumerate() {
        for b in 0..batch {
            *d += g[(b * channels + c) * plane..][..plane].iter().fold(E::ZERO, |a, &v| a + v);
        }
    }
}

/// Batch-norm backward in place: `g` holds the gradient at the norm's output and becomes the
/// gradient at its input `x`; gamma's and beta's gradients are accumulated.
#[allow(clippy::too_many_arguments)]
fn norm_backward<E: Real>(
    x: &[E],
    g: &mut [E],
    plane: usize,
    channels: usize,
    mean: &[E],
    invstd: &[E],
    bn: Bn,
    pgrads: &mut [Vec<E>],
    params: &[&[E]],
) {
    let batch = g.len() / (plane * channels);
    let n = (batch * plane) as f64;
    let gamma = &params[bn.weight];
    assert!(x.len() >= g.len() && gamma.len() >= channels && mean.len() >= channels && invstd.len() >= channels);
    // Per channel (a task each): sum(g) and sum(g * xhat) in f64, then the input gradient, while
    // the channel's planes are still in cache (one pass over memory and one fork-join where
    // there were two). Tasks write the disjoint planes of their own channel: `g` travels as an
    // address.
    let g_addr = g.as_mut_ptr() as usize;
    let plane_of = |b: usize, c: usize| -> (&mut [E], &[E]) {
        let off = (b * channels + c) * plane;
        // SAFETY: plane (b, c) lies inside g (len batch * channels * plane) and x (as long);
        // only the task of channel c makes references to it, one at a time.
        (unsafe { std::slice::from_raw_parts_mut((g_addr as *mut E).add(off), plane) }, &x[off..][..plane])
    };
    let sums: Vec<(f64, f64)> = (0..channels)
        .into_par_iter()
        .map(|c| {
            let (m, is) = (mean[c], invstd[c]);
            let (sg, sgx) = channel_grad_sums(
                (0..batch).map(|b| {
                    let (gp, xp) = plane_of(b, c);
                    (&*gp, xp)
                }),
                m,
                is,
            );
            let k = gamma[c] * is;
            let (mg, mgx) = (E::from_f64_lossy(sg / n), E::from_f64_lossy(sgx / n));
            #[inline(always)]
            fn apply<E: Real>(gp: &mut [E], xp: &[E], m: E, is: E, k: E, mg: E, mgx: E) {
                for (gv, &xv) in gp.iter_mut().zip(xp) {
                    let xhat = (xv - m) * is;
                    *gv = k * (*gv - mg - xhat * mgx);
                }
            }
            for b in 0..batch {
                let (gp, xp) = plane_of(b, c);
                wide!(apply(gp, xp, m, is, k, mg, mgx));
            }
            (sg, sgx)
        })
        .collect();
    for (c, &(sg, sgx)) in sums.iter().enumerate() {
        pgrads[bn.weight][c] += E::from_f64_lossy(sgx);
        pgrads[bn.bias][c] += E::from_f64_lossy(sg);
    }
}
