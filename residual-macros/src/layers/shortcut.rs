//! The code of `shortcut pad` (option A: subsample by the body's stride, zero-pad channels half
//! in front), the one op a shortcut adds that no layer has. `shortcut auto` is a `conv` and a
//! `bn` (see `infer.rs`), so it needs nothing here.

use proc_macro2::TokenStream;
use quote::quote;

use crate::codegen::{dfdx, lit, private};
use crate::ir::{ForwardCx, OpCode, PlanCx};

#[derive(Debug)]
pub(crate) struct SubsamplePad {
    pub stride: usize,
}

impl OpCode for SubsamplePad {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, p, x) = (dfdx(), private(), cx.x);
        let (si, so) = (cx.input, cx.output);
        let (ic, oc) = (lit(si.first().copied().unwrap_or(0)), lit(so.first().copied().unwrap_or(0)));
        let (oh, ow) = (lit(so.get(1).copied().unwrap_or(0)), lit(so.get(2).copied().unwrap_or(0)));
        let s = lit(self.stride);
        quote!(#d::nn::Module::try_forward(
            &<#p::layers::SubsamplePad<#ic, #oc, #s, #oh, #ow> as ::core::default::Default>::default(), #x)?)
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        let plan = cx.plan;
        let (x, y, s) = (lit(cx.input), lit(cx.output), lit(self.stride));
        Some(quote!(#plan::Step::SubsamplePad { input: #x, output: #y, stride: #s }))
    }
}
