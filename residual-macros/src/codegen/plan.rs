//! The model as a static `runtime::plan::Plan`: steps over numbered values, which the runtime
//! fuses and runs as one op (see `residual-runtime/src/plan`). Emitted only for models whose
//! every op the plan language has (convolutional nets: conv, bias, batch norm, relu, add, pools,
//! linear on vectors, option A, and the reshapes that are no-ops on a buffer); any other model
//! keeps the layer-by-layer code alone.

use proc_macro2::TokenStream;
use quote::quote;

use super::{ident, lit, private};
use crate::ir::{FieldTy, Op, OpKind, Program};

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

/// Lowers `prog`, or `None` when it holds an op plans do not have.
pub(crate) fn lower(prog: &Program) -> Option<Lowered> {
    let p = private();
    let plan = quote!(#p::runtime::plan);

    // Parameters, field by field.
    let mut params: Vec<(String, &'static str, bool)> = Vec::new();
    let mut field_params: Vec<Vec<usize>> = Vec::new();
    let mut running = Vec::new();
    let mut specs = Vec::new();
    for f in &prog.fields {
        let tensors: &[(&'static str, bool)] = match f.ty {
            FieldTy::Conv { .. } => &[("weight", true)],
            FieldTy::Bias2d { .. } => &[("bias", true)],
            FieldTy::Bn { .. } => &[("weight", true), ("bias", true), ("running_mean", false), ("running_var", false)],
            FieldTy::Linear { bias: true, .. } => &[("weight", true), ("bias", true)],
            FieldTy::Linear { bias: false, .. } => &[("weight", true)],
            FieldTy::LayerNorm { .. } => return None,
        };
        let len = |t: &str| -> Option<usize> {
            match (&f.ty, t) {
                (FieldTy::Conv { in_ch, conv, .. }, _) => {
                    conv.out.checked_mul(in_ch / conv.groups.max(1))?.checked_mul(conv.kernel)?.checked_mul(conv.kernel)
                }
                (FieldTy::Bias2d { c, .. }, _) | (FieldTy::Bn { c, .. }, _) => Some(*c),
                (FieldTy::Linear { i, o, .. }, "weight") => o.checked_mul(*i),
                (FieldTy::Linear { o, .. }, _) => Some(*o),
                _ => None,
            }
        };
        let mut idx = Vec::new();
        for &(t, trainable) in tensors {
            let n = lit(len(t)?);
            specs.push(quote!(#plan::ParamSpec { len: #n, trainable: #trainable }));
            if !trainable {
                running.push((params.len(), f.ident.clone(), t));
            }
            idx.push(params.len());
            params.push((f.ident.clone(), t, trainable));
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
            Op::Cat { .. } => return None,
            Op::Layer { input, output, kind } => {
                let x = (*value_of.get(*input)?)?;
                let in_shape = prog.vars.get(*input)?;
                if matches!(kind, OpKind::Flatten | OpKind::Identity) {
                    *value_of.get_mut(*output)? = Some(x);
                    continue;
                }
                let xl = lit(x);
                let y = lit(new_value(*output, &mut value_of)?);
                let step = match kind {
                    OpKind::Field(fi) => {
                        let f = prog.fields.get(*fi)?;
                        let ps = field_params.get(*fi)?;
                        match &f.ty {
                            FieldTy::Conv { conv, .. } => {
                                if in_shape.len() != 3 {
                                    return None;
                                }
                                let w = lit(ps[0]);
                                let (o, k, s, pd, dl, g) = (
                                    lit(conv.out),
                                    lit(conv.kernel),
                                    lit(conv.stride),
                                    lit(conv.padding),
                                    lit(conv.dilation),
                                    lit(conv.groups),
                                );
                                quote!(#plan::Step::Conv { input: #xl, output: #y, weight: #w, geom: #plan::ConvGeom {
                                    out_channels: #o, kernel: #k, stride: #s, padding: #pd, dilation: #dl, groups: #g } })
                            }
                            FieldTy::Bias2d { .. } => {
                                let b = lit(ps[0]);
                                quote!(#plan::Step::Bias { input: #xl, output: #y, bias: #b })
                            }
                            FieldTy::Bn { .. } => {
                                if in_shape.len() != 3 {
                                    return None;
                                }
                                let (w, b, m, v) = (lit(ps[0]), lit(ps[1]), lit(ps[2]), lit(ps[3]));
                                quote!(#plan::Step::BatchNorm { input: #xl, output: #y, weight: #w, bias: #b,
                                    running_mean: #m, running_var: #v })
                            }
                            FieldTy::Linear { bias, .. } => {
                                if in_shape.len() != 1 {
                                    return None;
                                }
                                let w = lit(ps[0]);
                                let b = if *bias {
                                    let b = lit(ps[1]);
                                    quote!(::core::option::Option::Some(#b))
                                } else {
                                    quote!(::core::option::Option::None)
                                };
                                quote!(#plan::Step::Linear { input: #xl, output: #y, weight: #w, bias: #b })
                            }
                            FieldTy::LayerNorm { .. } => return None,
                        }
                    }
                    OpKind::MaxPool { kernel, stride, padding } | OpKind::AvgPool { kernel, stride, padding } => {
                        if in_shape.len() != 3 {
                            return None;
                        }
                        let (k, s, pd) = (lit(*kernel), lit(*stride), lit(*padding));
                        let geom = quote!(#plan::PoolGeom { kernel: #k, stride: #s, padding: #pd });
                        if matches!(kind, OpKind::MaxPool { .. }) {
                            quote!(#plan::Step::MaxPool { input: #xl, output: #y, geom: #geom })
                        } else {
                            quote!(#plan::Step::AvgPool { input: #xl, output: #y, geom: #geom })
                        }
                    }
                    OpKind::GlobalAvgPool => {
                        if in_shape.len() != 3 {
                            return None;
                        }
                        quote!(#plan::Step::GlobalAvgPool { input: #xl, output: #y })
                    }
                    OpKind::Relu => quote!(#plan::Step::Relu { input: #xl, output: #y }),
                    OpKind::SubsamplePad { stride } => {
                        let s = lit(*stride);
                        quote!(#plan::Step::SubsamplePad { input: #xl, output: #y, stride: #s })
                    }
                    // Dropout (random masks on the tape), the smooth activations and layer norm
                    // have no plan kernels yet: such models run layer by layer.
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

/// `params.push(&self.field.tensor, trainable);` for every plan parameter.
pub(crate) fn push_params(l: &Lowered) -> TokenStream {
    let pushes = l.params.iter().map(|(f, t, trainable)| {
        let (f, t) = (ident(f), ident(t));
        quote!(params.push(&self.#f.#t, #trainable);)
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
