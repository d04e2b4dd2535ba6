//! The model as a static `runtime::plan::Plan`: steps over numbered values, which the runtime
//! fuses and runs as one op (see `residual-runtime/src/plan`). Emitted only for models whose
//! every op the plan language has (convolutional nets: conv, bias, batch norm, relu, add, pools,
//! linear on vectors, option A, and the reshapes that are no-ops on a buffer); any other model
//! keeps the layer-by-layer code alone.

use proc_macro2::TokenStream;
use quote::quote;

use super::{ident, lit, private};
use crate::ir::{Op, PlanCx, Program};

/// A lowered plan: its tokens and the parameter tensors, in plan order.
pub(crate) struct Lowered {
    /// `Plan { .. }` as a constant expression.
    pub plan: TokenStream,
    /// `(field ident, tensor name, trainable)` per plan parameter.
    pub params: Vec<(String, &'static str, bool)>,
    /// Indices of the running statistics (written back after training), with their tensors.
    pub running: Vec<(usize, String, &'static str)>,
}

/// The per-image shape of a value: `[C, H, W]`, or `[D, 1, 1]` for a vector.
fn dims3(shape: &[usize]) -> Option<[usize; 3]> {
    match *shape {
        [c, h, w] => Some([c, h, w]),
        [d] => Some([d, 1, 1]),
        _ => None,
    }
}

/// Lowers `prog`, or `None` when it holds an op plans do not have (each layer family says which
/// of its layers have plan kernels: `ir::FieldType::plan_step`, `ir::OpCode::plan_step`).
pub(crate) fn lower(prog: &Program) -> Option<Lowered> {
    let p = private();
    let plan = quote!(#p::runtime::plan);

    // Parameters, field by field.
    let mut params: Vec<(String, &'static str, bool)> = Vec::new();
    let mut field_params: Vec<Vec<usize>> = Vec::new();
    let mut running = Vec::new();
    let mut specs = Vec::new();
    for f in &prog.fields {
        let mut idx = Vec::new();
        for t in f.ty.plan_tensors()? {
            let (n, trainable) = (lit(t.len), t.trainable);
            specs.push(quote!(#plan::ParamSpec { len: #n, trainable: #trainable }));
            if !trainable {
                running.push((params.len(), f.ident.clone(), t.name));
            }
            idx.push(params.len());
            params.push((f.ident.clone(), t.name, trainable));
        }
        field_params.push(idx);
    }

    // Values: a var that is a no-op on its buffer (a fork, flatten, identity) shares its input's.
    let mut value_of: Vec<Option<usize>> = vec![None; prog.vars.len()];
    let mut values: Vec<[usize; 3]> = Vec::new();
    let mut new_value = |v: usize, value_of: &mut Vec<Option<usize>>| -> Option<usize> {
        let d = dims3(prog.vars.get(v)?)?;
        values.push(d);
        *value_of.get_mut(v)? = Some(values.len() - 1);
        Some(values.len() - 1)
    };
    new_value(0, &mut value_of)?;
    let mut steps = Vec::new();
    for op in &prog.ops {
        match op {
            Op::Fork { input, output } => *value_of.get_mut(*output)? = *value_of.get(*input)?,
            Op::Add { a, b, output, .. } => {
                let (a, b) = (lit((*value_of.get(*a)?)?), lit((*value_of.get(*b)?)?));
                let y = lit(new_value(*output, &mut value_of)?);
                steps.push(quote!(#plan::Step::Add { a: #a, b: #b, output: #y }));
            }
            // Concatenation and gates have no plan kernels: such models run layer by layer.
            Op::Cat { .. } | Op::Mul { .. } => return None,
            Op::Layer { input, output, code, .. } if code.is_view() => {
                *value_of.get_mut(*output)? = *value_of.get(*input)?;
            }
            Op::Layer { input, output, .. } | Op::Field { input, output, .. } => {
                let x = (*value_of.get(*input)?)?;
                let y = new_value(*output, &mut value_of)?;
                let in_shape = prog.vars.get(*input)?;
                let cx = |params| PlanCx { plan: &plan, input: x, output: y, in_shape, params };
                let step = match op {
                    Op::Field { field, .. } => prog.fields.get(*field)?.ty.plan_step(&cx(field_params.get(*field)?))?,
                    Op::Layer { code, .. } => code.plan_step(&cx(&[]))?,
                    _ => return None,
                };
                steps.push(step);
            }
        }
    }
    // A plan's global pooling gives [C, 1, 1]; the model's var is [C]: same buffer.
    let output = lit((*value_of.get(prog.output)?)?);
    let vals = values.iter().map(|[c, h, w]| {
        let (c, h, w) = (lit(*c), lit(*h), lit(*w));
        quote!([#c, #h, #w])
    });
    let plan_tokens = quote! {
        #plan::Plan { values: &[#(#vals),*], params: &[#(#specs),*], steps: &[#(#steps),*], output: #output }
    };
    Some(Lowered { plan: plan_tokens, params, running })
}

/// `params.push(&self.field.tensor, trainable)?;` for every plan parameter.
pub(crate) fn push_params(l: &Lowered) -> TokenStream {
    let pushes = l.params.iter().map(|(f, t, trainable)| {
        let (f, t) = (ident(f), ident(t));
        quote!(params.push(&self.#f.#t, #trainable)?;)
    });
    quote!(#(#pushes)*)
}

/// `params.store(i, &mut self.field.running_mean);` for every running statistic.
pub(crate) fn store_running(l: &Lowered) -> TokenStream {
    let stores = l.running.iter().map(|(i, f, t)| {
        let (i, f, t) = (lit(*i), ident(f), ident(t));
        quote!(params.store(#i, &mut self.#f.#t);)
    });
    quote!(#(#stores)*)
}
