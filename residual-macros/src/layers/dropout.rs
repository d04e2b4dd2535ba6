//! `dropout(p)`: zeroes each value with probability `p` in training (scaling the rest by
//! `1 / (1 - p)`), the identity in inference. No plan kernel: its masks live on dfdx's tape.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, lit, private};
use crate::infer::{Infer, LayerAt};
use crate::ir::{ForwardCx, OpCode, Var};
use crate::model::Args;

pub(super) const SPECS: &[Spec] = &[Spec { name: "dropout", params: &[p("p", Dflt::Float(0.5))], aliases: &[], build }];

fn build(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let prob = a.float("p")?;
    if !(0.0..1.0).contains(&prob.v) {
        let help = "`p` is the probability of zeroing a value, e.g. `dropout(0.1)`".to_string();
        a.err(prob.sp, format!("dropout probability must be in [0, 1), found {}", prob.v), Some(help));
        return None;
    }
    Some(Rc::new(Dropout { p: prob.v }))
}

#[derive(Debug)]
struct Dropout {
    p: f64,
}

impl Layer for Dropout {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        // The runtime's `Dropout` takes the probability as a const parameter, in millionths.
        let per_million = (self.p * 1e6).round().clamp(0.0, 999_999.0) as usize;
        let v = inf.layer_op(at.input, input.clone(), Rc::new(DropoutCode { per_million }), at.node.sp);
        inf.row(at.shown, format!("dropout {}", self.p), &input, 0, 0);
        Some(v)
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
