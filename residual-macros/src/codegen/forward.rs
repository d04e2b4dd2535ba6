//! `Module` (eval: batch norm uses running statistics, dropout is the identity) and `ModuleMut`
//! (training: batch statistics, dropout active) as straight-line code, every intermediate
//! tensor type spelled out so rustc re-checks the shape arithmetic.

use proc_macro2::TokenStream;
use quote::quote;

use super::{dfdx, ident, lit, private, tensor_ty};
use crate::ir::{Op, OpKind, Program, Var};
use crate::model::Model;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Eval,
    Train,
}

fn var(v: Var) -> proc_macro2::Ident {
    ident(&format!("x{v}"))
}

fn body(prog: &Program, mode: Mode) -> TokenStream {
    let d = dfdx();
    let p = private();
    let shape_of = |v: Var| prog.vars.get(v).cloned().unwrap_or_default();
    let mut out = TokenStream::new();
    for op in &prog.ops {
        let stmt = match op {
            Op::Fork { input, output } => {
                let (x, y, ty) = (var(*input), var(*output), tensor_ty(&shape_of(*output)));
                quote!(let #y: #ty = #d::tensor::WithEmptyTape::with_empty_tape(&#x);)
            }
            Op::Add { a, b, output, b_is_tap } => {
                let (a, b, y, ty) = (var(*a), var(*b), var(*output), tensor_ty(&shape_of(*output)));
                if *b_is_tap {
                    // Taps may be read more than once: add a fresh handle, never the tap itself.
                    // The tap is a fork with no ops of its own, so its gradient reaches the
                    // tapped value through the shared tensor id.
                    quote!(let #y: #ty = #d::tensor_ops::TryAdd::try_add(#a, #d::tensor::WithEmptyTape::with_empty_tape(&#b))?;)
                } else {
                    // A residual join: move the shortcut's output, so the tape holding its
                    // ops (a projection's conv and bn, option A's subsampling) merges into the
                    // sum and its backward runs. A fresh handle here would drop that tape.
                    quote!(let #y: #ty = #d::tensor_ops::TryAdd::try_add(#a, #b)?;)
                }
            }
            Op::Cat { a, b, output } => {
                let (sa, sb, so) = (shape_of(*a), shape_of(*b), shape_of(*output));
                let (ca, cb) = (lit(sa.first().copied().unwrap_or(0)), lit(sb.first().copied().unwrap_or(0)));
                let rest: Vec<TokenStream> = so
                    .iter()
                    .skip(1)
                    .map(|n| {
                        let n = lit(*n);
                        quote!(#d::shapes::Const::<#n>)
                    })
                    .collect();
                let all: Vec<TokenStream> = so
                    .iter()
                    .map(|n| {
                        let n = lit(*n);
                        quote!(#d::shapes::Const::<#n>)
                    })
                    .collect();
                let (a, b, y, ty) = (var(*a), var(*b), var(*output), tensor_ty(&so));
                // `a` is the tap (first, a fresh handle: it may be read again), `b` the current
                // value (moved: its tape carries on); see `Op::Cat`.
                quote! {
                    let #y: #ty = {
                        let batch = #d::shapes::HasShape::shape(&#b).0;
                        // Const + Const has no stable `Add`, so concatenate with runtime channel dims.
                        let lhs = #d::tensor_ops::ReshapeTo::try_reshape_like(
                            #d::tensor::WithEmptyTape::with_empty_tape(&#a), &(batch, #ca as usize, #(#rest,)*))?;
                        let rhs = #d::tensor_ops::ReshapeTo::try_reshape_like(#b, &(batch, #cb as usize, #(#rest,)*))?;
                        let both = #d::tensor_ops::TryConcatAlong::try_concat_along((lhs, rhs), #d::shapes::Axis::<1>)?;
                        #d::tensor_ops::ReshapeTo::try_reshape_like(both, &(batch, #(#all,)*))?
                    };
                }
            }
            Op::Layer { input, output, kind } => {
                let (x, y) = (var(*input), var(*output));
                let (si, so) = (shape_of(*input), shape_of(*output));
                let ty = tensor_ty(&so);
                let module = quote!(#d::nn::Module::try_forward);
                let expr = match kind {
                    OpKind::Field(f) => {
                        let fid = ident(&prog.fields.get(*f).map(|f| f.ident.clone()).unwrap_or_default());
                        match mode {
                            Mode::Eval => quote!(#module(&self.#fid, #x)?),
                            Mode::Train => quote!(#d::nn::ModuleMut::try_forward_mut(&mut self.#fid, #x)?),
                        }
                    }
                    OpKind::MaxPool { kernel, stride, padding } | OpKind::AvgPool { kernel, stride, padding } => {
                        let (k, s, pd) = (lit(*kernel), lit(*stride), lit(*padding));
                        let (oh, ow) = (lit(so.get(1).copied().unwrap_or(0)), lit(so.get(2).copied().unwrap_or(0)));
                        let ty = if matches!(kind, OpKind::MaxPool { .. }) {
                            quote!(#p::layers::MaxPool2d<#k, #s, #pd, #oh, #ow>)
                        } else {
                            quote!(#p::layers::AvgPool2d<#k, #s, #pd, #oh, #ow>)
                        };
                        quote!(#module(&<#ty as ::core::default::Default>::default(), #x)?)
                    }
                    OpKind::GlobalAvgPool => quote!(#module(&#d::nn::modules::AvgPoolGlobal, #x)?),
                    OpKind::Flatten => match si.len() {
                        1 => quote!(#x),
                        _ => {
                            let n = lit(so.first().copied().unwrap_or(0));
                            quote!(#module(&<#p::layers::Flatten<#n> as ::core::default::Default>::default(), #x)?)
                        }
                    },
                    OpKind::Dropout { per_million } => match mode {
                        Mode::Eval => quote!(#x),
                        Mode::Train => {
                            let pm = lit(*per_million);
                            quote!(#d::nn::ModuleMut::try_forward_mut(
                                &mut <#p::layers::Dropout<#pm> as ::core::default::Default>::default(), #x)?)
                        }
                    },
                    OpKind::Relu => quote!(#x.try_relu()?),
                    // The tanh approximation (PyTorch's `GELU(approximate='tanh')`): dfdx 0.13's exact
                    // `accurate_gelu` has a wrong backward (its Gaussian term lacks a 1/sqrt(2)),
                    // which tests/macro_gradients.rs catches against finite differences.
                    OpKind::Gelu => quote!(#x.try_fast_gelu()?),
                    OpKind::Sigmoid => quote!(#x.try_sigmoid()?),
                    OpKind::Tanh => quote!(#x.try_tanh()?),
                    OpKind::Silu => quote!({
                        let gate = #d::tensor::WithEmptyTape::with_empty_tape(&#x).try_sigmoid()?;
                        #d::tensor_ops::TryMul::try_mul(#x, gate)?
                    }),
                    OpKind::LeakyRelu(slope) => {
                        let s = proc_macro2::Literal::f64_suffixed(if slope.is_finite() { *slope } else { 0.0 });
                        quote!(#d::tensor_ops::TryPReLU::try_prelu(#x, E::from_f64(#s).unwrap_or_default())?)
                    }
                    OpKind::Identity => quote!(#x),
                    OpKind::SubsamplePad { stride } => {
                        let (ic, oc) = (lit(si.first().copied().unwrap_or(0)), lit(so.first().copied().unwrap_or(0)));
                        let (oh, ow) = (lit(so.get(1).copied().unwrap_or(0)), lit(so.get(2).copied().unwrap_or(0)));
                        let s = lit(*stride);
                        quote!(#module(&<#p::layers::SubsamplePad<#ic, #oc, #s, #oh, #ow> as ::core::default::Default>::default(), #x)?)
                    }
                };
                quote!(let #y: #ty = #expr;)
            }
        };
        out.extend(stmt);
    }
    let y = var(prog.output);
    out.extend(quote!(::core::result::Result::Ok(#y)));
    out
}

pub(crate) fn module_impls(m: &Model, prog: &Program) -> TokenStream {
    let d = dfdx();
    let p = private();
    let name = &m.name;
    let in_ty = tensor_ty(&m.input);
    let out_shape = prog.vars.get(prog.output).cloned().unwrap_or_default();
    let out_ty = tensor_ty(&out_shape);
    let x0 = var(0);
    let eval = body(prog, Mode::Eval);
    let train = body(prog, Mode::Train);
    let generics =
        quote!(<B: #d::shapes::Dim, E: #p::runtime::Element, D: #p::runtime::Backend<E>, T: #d::tensor::Tape<E, D>>);

    // With a plan: the CPU runs the whole model as one fused op (runtime/src/plan); other devices,
    // and `with_plans_disabled`, take the layer-by-layer code below it.
    let (plan_const, eval_plan, train_plan) = match super::plan::lower(prog) {
        Some(l) => {
            let plan = &l.plan;
            let n = lit(l.params.len());
            let push = super::plan::push_params(&l);
            let store = super::plan::store_running(&l);
            let dims = out_shape.iter().map(|n| {
                let n = lit(*n);
                quote!(#d::shapes::Const::<#n>)
            });
            let shape = quote!((#d::shapes::HasShape::shape(&#x0).0, #(#dims,)*));
            let runs =
                quote!(<D as #p::runtime::plan::PlanDevice<E>>::RUNS_PLANS && #p::runtime::plan::plans_enabled());
            (
                quote! {
                    impl<E: #d::shapes::Dtype, D: #d::tensor_ops::Device<E>> #name<E, D> {
                        #[doc(hidden)]
                        pub const __RESIDUAL_PLAN: #p::runtime::plan::Plan<'static> = #plan;
                    }
                },
                quote! {
                    if #runs && !<T as #d::tensor::Tape<E, D>>::OWNS_TAPE {
                        let mut params = #p::runtime::plan::Params::<E, D>::with_capacity(#n);
                        #push
                        let shape = #shape;
                        return #p::runtime::plan::infer(&Self::__RESIDUAL_PLAN, &params, #x0, shape);
                    }
                },
                quote! {
                    if #runs {
                        let mut params = #p::runtime::plan::Params::<E, D>::with_capacity(#n);
                        #push
                        let shape = #shape;
                        let y = #p::runtime::plan::train(&Self::__RESIDUAL_PLAN, &mut params, #x0, shape)?;
                        #store
                        return ::core::result::Result::Ok(y);
                    }
                },
            )
        }
        None => (quote!(), quote!(), quote!()),
    };
    quote! {
        #plan_const
        impl #generics #d::nn::Module<#in_ty> for #name<E, D> {
            type Output = #out_ty;
            type Error = D::Err;
            #[allow(clippy::let_and_return, unused_mut)]
            fn try_forward(&self, #x0: #in_ty) -> ::core::result::Result<Self::Output, D::Err> {
                #eval_plan
                #eval
            }
        }
        impl #generics #d::nn::ModuleMut<#in_ty> for #name<E, D> {
            type Output = #out_ty;
            type Error = D::Err;
            #[allow(clippy::let_and_return, unused_mut)]
            fn try_forward_mut(&mut self, #x0: #in_ty) -> ::core::result::Result<Self::Output, D::Err> {
                #train_plan
                #train
            }
        }
    }
}
