//! `linear`: a fully connected layer on the last dim of `[D]` or `[S, D]` (its input size is
//! inferred), with PyTorch's `Linear(in, out)` habit named when it shows; `linear_channels`: the
//! same on the channels of each pixel of `[C, H, W]` (ConvNeXt's MLP).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, lit};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, ForwardCx, PlanCx, PlanTensor, Var};
use crate::model::{Args, Value, V};
use crate::shape;

pub(super) const SPECS: &[Spec] = &[
    Spec {
        name: "linear",
        params: &[p("out", Dflt::Required), p("bias", Dflt::Bool(true))],
        aliases: &["dense", "fc"],
        build,
    },
    Spec {
        name: "linear_channels",
        params: &[p("out", Dflt::Required), p("bias", Dflt::Bool(true))],
        aliases: &["pointwise_linear", "channel_linear"],
        build: build_channels,
    },
];

fn build_channels(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let out = a.size("out", 1);
    let bias = a.boolean("bias");
    Some(Rc::new(LinearChannels { out: out?, bias: bias? }))
}

/// `linear_channels(out)`: PyTorch's `Linear` applied to each pixel's channels of `[C, H, W]`
/// (after a channels-last permute, as ConvNeXt's MLP): `[out, H, W]`, weights `[out, C]`.
#[derive(Debug)]
struct LinearChannels {
    out: V<usize>,
    bias: bool,
}

impl Layer for LinearChannels {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let (node, out, bias) = (at.node, self.out, self.bias);
        let input = inf.shape(at.input);
        let [c, h, w] = match shape::rank3(&input) {
            Ok(dims) => dims,
            Err(e) => {
                inf.shape_error(node, "linear_channels", e, &[], &input, None);
                return inf.lost(None);
            }
        };
        let o = vec![out.v, h, w];
        if inf.too_big(node, out.sp, "the output", &o, "`out`")
            || inf.too_big(node, out.sp, "the weight", &[out.v, c], "`out`")
        {
            return inf.lost(Some(o));
        }
        let field = LinearField { i: c, o: out.v, bias, over_channels: true };
        let f = inf.add_field(node, at.path, field_ident(at.path), Box::new(field));
        let v = inf.field_op(at.input, o.clone(), f, node.sp);
        let params = inf.count(node, "parameter count", shape::linear_params(c, out.v, bias));
        let macs = (h as u64)
            .checked_mul(w as u64)
            .and_then(|p| p.checked_mul(c as u64))
            .and_then(|p| p.checked_mul(out.v as u64));
        let macs = inf.count(node, "MAC count", macs);
        inf.row(at.shown, format!("linear_channels {c}->{}", out.v), &o, params, macs);
        Some(v)
    }
}

fn build(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    if let [(Value::Int(i), first), (Value::Int(o), second), ..] = *a.positional() {
        a.err(
            first.to(second),
            format!("`linear({i}, {o})` looks like PyTorch's `Linear(in_features, out_features)`; here the second argument is `bias`"),
            Some(format!("`linear` infers its input size from the value flowing in: write `linear({o})`")),
        );
        return None;
    }
    let out = a.size("out", 1);
    let bias = a.boolean("bias");
    Some(Rc::new(Linear { out: out?, bias: bias? }))
}

#[derive(Debug)]
struct Linear {
    out: V<usize>,
    bias: bool,
}

impl Layer for Linear {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let (node, out, bias) = (at.node, self.out, self.bias);
        let input = inf.shape(at.input);
        match shape::linear(&input, out.v) {
            Ok(o) => {
                let i = input.last().copied().unwrap_or(0);
                if inf.too_big(node, out.sp, "the output", &o, "`out`")
                    || inf.too_big(node, out.sp, "the weight", &[out.v, i], "`out`")
                {
                    return inf.lost(Some(o));
                }
                let field = LinearField { i, o: out.v, bias, over_channels: false };
                let f = inf.add_field(node, at.path, field_ident(at.path), Box::new(field));
                let v = inf.field_op(at.input, o.clone(), f, node.sp);
                let params = inf.count(node, "parameter count", shape::linear_params(i, out.v, bias));
                let macs = inf.count(node, "MAC count", shape::linear_macs(&input, out.v));
                inf.row(at.shown, format!("linear {i}->{}", out.v), &o, params, macs);
                Some(v)
            }
            Err(e) => {
                inf.shape_error(node, "linear", e, &[], &input, None);
                // Most likely a missing `global_avgpool` / `flatten`: the user meant `[out]`.
                inf.lost(Some(vec![out.v]))
            }
        }
    }
}

/// dfdx's `Linear` / `UnbiasedLinear`.
#[derive(Debug)]
struct LinearField {
    i: usize,
    o: usize,
    bias: bool,
    /// Applied to the channels of each pixel of `[C, H, W]` (`linear_channels`).
    over_channels: bool,
}

impl FieldType for LinearField {
    fn rust_type(&self) -> TokenStream {
        let d = dfdx();
        let (i, o) = (lit(self.i), lit(self.o));
        if self.bias {
            quote!(#d::nn::modules::Linear<#i, #o, E, D>)
        } else {
            quote!(#d::nn::modules::UnbiasedLinear<#i, #o, E, D>)
        }
    }

    /// Over channels: to channels-last `[B, H * W, C]`, the linear layer, and back.
    fn forward(&self, field: &TokenStream, cx: &ForwardCx<'_>) -> Option<TokenStream> {
        if !self.over_channels {
            return None;
        }
        let (d, x) = (dfdx(), cx.x);
        let [_, h, w] = *cx.input else { return None };
        let (hw, h, w, c, o) = (lit(h.checked_mul(w)?), lit(h), lit(w), lit(self.i), lit(self.o));
        Some(quote!({
            let batch = #d::shapes::HasShape::shape(&#x).0;
            let last = #d::tensor_ops::PermuteTo::try_permute::<_, #d::shapes::Axes4<0, 2, 3, 1>>(#x)?;
            let rows = #d::tensor_ops::ReshapeTo::try_reshape_like(last, &(batch, #d::shapes::Const::<#hw>, #d::shapes::Const::<#c>))?;
            let rows = #d::nn::Module::try_forward(&#field, rows)?;
            let last = #d::tensor_ops::ReshapeTo::try_reshape_like(
                rows, &(batch, #d::shapes::Const::<#h>, #d::shapes::Const::<#w>, #d::shapes::Const::<#o>))?;
            #d::tensor_ops::PermuteTo::try_permute::<_, #d::shapes::Axes4<0, 3, 1, 2>>(last)?
        }))
    }

    fn plan_tensors(&self) -> Option<Vec<PlanTensor>> {
        if self.over_channels {
            return None;
        }
        let mut t = vec![PlanTensor { name: "weight", len: self.o.checked_mul(self.i)?, trainable: true }];
        if self.bias {
            t.push(PlanTensor { name: "bias", len: self.o, trainable: true });
        }
        Some(t)
    }

    /// Plans run `linear` on vectors only (after a global pool), not on sequences.
    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        if cx.in_shape.len() != 1 {
            return None;
        }
        let plan = cx.plan;
        let (x, y, w) = (lit(cx.input), lit(cx.output), lit(*cx.params.first()?));
        let b = if self.bias {
            let b = lit(*cx.params.get(1)?);
            quote!(::core::option::Option::Some(#b))
        } else {
            quote!(::core::option::Option::None)
        };
        Some(quote!(#plan::Step::Linear { input: #x, output: #y, weight: #w, bias: #b }))
    }
}
