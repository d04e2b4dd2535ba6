//! `Module` (eval: batch norm uses running statistics, dropout is the identity) and `ModuleMut`
//! (training: batch statistics, dropout active) as straight-line code, every intermediate
//! tensor type spelled out so rustc re-checks the shape arithmetic.

use proc_macro2::TokenStream;
use quote::quote;

use super::{at_user, dfdx, ident, lit, private, tensor_ty};
use crate::ir::{ForwardCx, Op, Program, Var};
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
    let shape_of = |v: Var| prog.vars.get(v).cloned().unwrap_or_default();
    let mut out = TokenStream::new();
    for op in &prog.ops {
        let (stmt, sp) = match op {
            Op::Fork { input, output } => {
                let (x, y, ty) = (var(*input), var(*output), tensor_ty(&shape_of(*output)));
                out.extend(quote!(let #y: #ty = #d::tensor::WithEmptyTape::with_empty_tape(&#x);));
                continue;
            }
            Op::Add { a, b, output, b_is_tap, sp } => {
                let (a, b, y, ty) = (var(*a), var(*b), var(*output), tensor_ty(&shape_of(*output)));
                let stmt = if *b_is_tap {
                    // Taps may be read more than once: add a fresh handle, never the tap itself.
                    // The tap is a fork with no ops of its own, so its gradient reaches the
                    // tapped value through the shared tensor id.
                    quote!(let #y: #ty = #d::tensor_ops::TryAdd::try_add(#a, #d::tensor::WithEmptyTape::with_empty_tape(&#b))?;)
                } else {
                    // A residual join: move the shortcut's output, so the tape holding its
                    // ops (a projection's conv and bn, option A's subsampling) merges into the
                    // sum and its backward runs. A fresh handle here would drop that tape.
                    quote!(let #y: #ty = #d::tensor_ops::TryAdd::try_add(#a, #b)?;)
                };
                (stmt, *sp)
            }
            Op::Cat { a, b, output, sp } => {
                let (sa, sb, so) = (shape_of(*a), shape_of(*b), shape_of(*output));
                let (ca, cb) = (lit(sa.first().copied().unwrap_or(0)), lit(sb.first().copied().unwrap_or(0)));
                let consts = |dims: &[usize]| -> Vec<TokenStream> {
                    dims.iter()
                        .map(|n| {
                            let n = lit(*n);
                            quote!(#d::shapes::Const::<#n>)
                        })
                        .collect()
                };
                let (rest, all) = (consts(so.get(1..).unwrap_or(&[])), consts(&so));
                let (a, b, y, ty) = (var(*a), var(*b), var(*output), tensor_ty(&so));
                // `a` is the tap (first, a fresh handle: it may be read again), `b` the current
                // value (moved: its tape carries on); see `Op::Cat`.
                let stmt = quote! {
                    let #y: #ty = {
                        let batch = #d::shapes::HasShape::shape(&#b).0;
                        // Const + Const has no stable `Add`, so concatenate with runtime channel dims.
                        let lhs = #d::tensor_ops::ReshapeTo::try_reshape_like(
                            #d::tensor::WithEmptyTape::with_empty_tape(&#a), &(batch, #ca as usize, #(#rest,)*))?;
                        let rhs = #d::tensor_ops::ReshapeTo::try_reshape_like(#b, &(batch, #cb as usize, #(#rest,)*))?;
                        let both = #d::tensor_ops::TryConcatAlong::try_concat_along((lhs, rhs), #d::shapes::Axis::<1>)?;
                        #d::tensor_ops::ReshapeTo::try_reshape_like(both, &(batch, #(#all,)*))?
                    };
                };
                (stmt, *sp)
            }
            Op::Mul { a, b, output, sp } => {
                let (sa, sb) = (shape_of(*a), shape_of(*b));
                let (a, b, y, ty) = (var(*a), var(*b), var(*output), tensor_ty(&sa));
                let stmt = if sa == sb {
                    quote!(let #y: #ty = #d::tensor_ops::TryMul::try_mul(#a, #b)?;)
                } else {
                    // One factor per channel, `[B, C]` (a `[C, 1, 1]` gate reshaped), broadcast
                    // over the map: the axes are named, since `C` may equal `H` or `W`.
                    let c = lit(sa.first().copied().unwrap_or(0));
                    quote!(let #y: #ty = {
                        let shape = *#d::shapes::HasShape::shape(&#a);
                        let factor = #d::tensor_ops::ReshapeTo::try_reshape_like(#b, &(shape.0, #d::shapes::Const::<#c>))?;
                        let factor = #d::tensor_ops::BroadcastTo::try_broadcast_like::<_, #d::shapes::Axes2<2, 3>>(factor, &shape)?;
                        #d::tensor_ops::TryMul::try_mul(#a, factor)?
                    };)
                };
                (stmt, *sp)
            }
            Op::Field { input, output, field, sp } => {
                let (x, y) = (var(*input), var(*output));
                let (si, so) = (shape_of(*input), shape_of(*output));
                let ty = tensor_ty(&so);
                let f = ident(&prog.fields.get(*field).map(|f| f.ident.clone()).unwrap_or_default());
                let own = prog.fields.get(*field).and_then(|fd| {
                    let cx = ForwardCx { x: &x, train: mode == Mode::Train, input: &si, output: &so };
                    fd.ty.forward(&quote!(self.#f), &cx)
                });
                let expr = match (own, mode) {
                    (Some(e), _) => e,
                    (None, Mode::Eval) => quote!(#d::nn::Module::try_forward(&self.#f, #x)?),
                    (None, Mode::Train) => quote!(#d::nn::ModuleMut::try_forward_mut(&mut self.#f, #x)?),
                };
                (quote!(let #y: #ty = #expr;), *sp)
            }
            Op::Layer { input, output, code, sp } => {
                let (x, y) = (var(*input), var(*output));
                let (si, so) = (shape_of(*input), shape_of(*output));
                let ty = tensor_ty(&so);
                let expr = code.forward(&ForwardCx { x: &x, train: mode == Mode::Train, input: &si, output: &so });
                (quote!(let #y: #ty = #expr;), *sp)
            }
        };
        out.extend(at_user(sp, stmt));
    }
    let y = var(prog.output);
    out.extend(quote!(::core::result::Result::Ok(#y)));
    out
}

pub(crate) fn module_impls(m: &Model, prog: &Program) -> TokenStream {
    let d = dfdx();
    let p = private();
    let name = &m.name;
    // A model that starts with `embedding` reads token ids.
    let in_ty = match prog.token_input {
        Some(_) => super::ids_ty(&m.input),
        None => tensor_ty(&m.input),
    };
    let out_shape = prog.vars.get(prog.output).cloned().unwrap_or_default();
    let out_ty = tensor_ty(&out_shape);
    let x0 = var(0);
    let eval = body(prog, Mode::Eval);
    let train = body(prog, Mode::Train);
    let generics = quote!(<B: #d::shapes::Dim, E: #p::runtime::Element, D: #p::runtime::Backend<E>, T: #d::tensor::Tape<E, D> + 'static>);

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

#[cfg(test)]
mod tests {
    use proc_macro2::{TokenStream, TokenTree};

    /// `(variable, line)` of every `let xN` the layer-by-layer bodies bind, in order.
    fn lets(ts: TokenStream, out: &mut Vec<(String, usize)>) {
        let tokens: Vec<TokenTree> = ts.into_iter().collect();
        for (i, t) in tokens.iter().enumerate() {
            match t {
                TokenTree::Group(g) => lets(g.stream(), out),
                TokenTree::Ident(id) if id == "let" => {
                    if let Some(TokenTree::Ident(v)) = tokens.get(i + 1) {
                        if v.to_string().starts_with('x') {
                            out.push((v.to_string(), id.span().start().line));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Every generated statement sits at the token of the layer that made it (each on its own
    /// line here), so that a failing check of rustc's underlines the user's layer.
    #[test]
    fn statements_sit_at_the_users_tokens() {
        let src = "model M[3, 8, 8] {\n conv(4, 3, padding = 1)\n -> bn\n -> residual { relu }\n -> tap(t)\n -> add(t)\n -> global_avgpool\n -> linear(10)\n}";
        let out = crate::expand(src.parse().unwrap_or_default());
        let mut found = Vec::new();
        lets(out, &mut found);
        // Forks (a residual's or a tap's second handle) are the macro's own and stay at the
        // call site; every op the user wrote is on its line.
        let expected = [("x1", 2), ("x2", 3), ("x4", 4), ("x5", 4), ("x7", 6), ("x8", 7), ("x9", 8)];
        for (var, line) in expected {
            let lines: Vec<usize> = found.iter().filter(|(v, _)| v == var).map(|(_, l)| *l).collect();
            // Once in `Module`, once in `ModuleMut`.
            assert_eq!(lines, vec![line, line], "`let {var}` in {found:?}");
        }
    }
}
