//! `dropout(p)`: zeroes each value with probability `p` in training (scaling the rest by
//! `1 / (1 - p)`), the identity in inference. `drop_path(p)`: stochastic depth (torchvision's
//! `StochasticDepth(p, "row")`), the same per sample: in training each sample's whole value is
//! zeroed with probability `p` (the rest scaled by `1 / (1 - p)`); put it at the end of a residual
//! body, so that a dropped sample passes through the shortcut alone. No plan kernels: their
//! masks are random on every call.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, lit, private};
use crate::infer::{Infer, LayerAt};
use crate::ir::{ForwardCx, OpCode, Var};
use crate::model::Args;

pub(super) const SPECS: &[Spec] = &[
    Spec { name: "dropout", params: &[p("p", Dflt::Float(0.5))], aliases: &[], build: |a| build(a, false) },
    Spec {
        name: "drop_path",
        params: &[p("p", Dflt::Required)],
        aliases: &["stochastic_depth", "droppath"],
        build: |a| build(a, true),
    },
];

fn build(a: &mut Args<'_>, per_sample: bool) -> Option<Rc<dyn Layer>> {
    let prob = a.float("p")?;
    if !(0.0..1.0).contains(&prob.v) {
        let (name, example) = if per_sample { ("drop_path", "drop_path(0.1)") } else { ("dropout", "dropout(0.1)") };
        let help = format!("`p` is the probability of zeroing, e.g. `{example}`");
        a.err(prob.sp, format!("{name} probability must be in [0, 1), found {}", prob.v), Some(help));
        return None;
    }
    Some(Rc::new(Dropout { p: prob.v, per_sample }))
}

#[derive(Debug)]
struct Dropout {
    p: f64,
    /// `drop_path`: one draw per sample, not per value.
    per_sample: bool,
}

impl Layer for Dropout {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let (code, name): (Rc<dyn OpCode>, _) = if self.per_sample {
            (Rc::new(DropPathCode { p: self.p }), "drop_path")
        } else {
            // The runtime's `Dropout` takes the probability as a const parameter, in millionths.
            let per_million = (self.p * 1e6).round().clamp(0.0, 999_999.0) as usize;
            (Rc::new(DropoutCode { per_million }), "dropout")
        };
        let v = inf.layer_op(at.input, input.clone(), code, at.node.sp);
        inf.row(at.shown, format!("{name} {}", self.p), &input, 0, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct DropPathCode {
    p: f64,
}

impl OpCode for DropPathCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x) = (dfdx(), cx.x);
        if !cx.train || self.p == 0.0 {
            return quote!(#x);
        }
        // A mask per sample: dropout of a vector of ones (0 or 1 / (1 - p)), broadcast over the
        // sample's value along named axes (a dim may repeat another's size).
        let axes = match cx.input.len() {
            1 => quote!(#d::shapes::Axis<1>),
            2 => quote!(#d::shapes::Axes2<1, 2>),
            _ => quote!(#d::shapes::Axes3<1, 2, 3>),
        };
        let p = proc_macro2::Literal::f64_suffixed(self.p);
        quote!({
            let shape = *#d::shapes::HasShape::shape(&#x);
            let keep = #d::tensor::OnesTensor::try_ones_like(#x.device(), &(shape.0,))?.try_dropout(#p)?;
            let keep = #d::tensor_ops::BroadcastTo::try_broadcast_like::<_, #axes>(keep, &shape)?;
            #d::tensor_ops::TryMul::try_mul(#x, keep)?
        })
    }
}

#[derive(Debug)]
struct DropoutCode {
    per_million: usize,
}

impl OpCode for DropoutCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, p, x) = (dfdx(), private(), cx.x);
        if !cx.train {
            return quote!(#x);
        }
        let pm = lit(self.per_million);
        quote!(#d::nn::ModuleMut::try_forward_mut(
            &mut <#p::layers::Dropout<#pm> as ::core::default::Default>::default(), #x)?)
    }
}
