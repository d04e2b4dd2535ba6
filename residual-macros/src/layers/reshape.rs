//! Reshapes that keep the buffer: `flatten` (any rank -> `[N]`) and `identity`. Plans run them as
//! no-ops (the output is the input's value).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{Layer, Spec};
use crate::codegen::{dfdx, lit, private};
use crate::infer::{Infer, LayerAt};
use crate::ir::{ForwardCx, OpCode, Var};
use crate::shape;

pub(super) const SPECS: &[Spec] = &[
    Spec { name: "flatten", params: &[], aliases: &[], build: |_| Some(Rc::new(Flatten)) },
    Spec { name: "identity", params: &[], aliases: &["id"], build: |_| Some(Rc::new(Identity)) },
];

#[derive(Debug)]
struct Flatten;

impl Layer for Flatten {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        match shape::flatten(&input) {
            Ok(o) => {
                let v = inf.layer_op(at.input, o.to_vec(), Rc::new(FlattenCode), at.node.sp);
                inf.row(at.shown, "flatten".into(), &o, 0, 0);
                Some(v)
            }
            Err(e) => {
                inf.shape_error(at.node, "flatten", e, &[], &input, None);
                inf.lost(None)
            }
        }
    }
}

#[derive(Debug)]
struct FlattenCode;

impl OpCode for FlattenCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, p, x) = (dfdx(), private(), cx.x);
        match cx.input.len() {
            1 => quote!(#x),
            _ => {
                let n = lit(cx.output.first().copied().unwrap_or(0));
                quote!(#d::nn::Module::try_forward(&<#p::layers::Flatten<#n> as ::core::default::Default>::default(), #x)?)
            }
        }
    }

    fn is_view(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct Identity;

impl Layer for Identity {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let v = inf.layer_op(at.input, input.clone(), Rc::new(IdentityCode), at.node.sp);
        inf.row(at.shown, "identity".into(), &input, 0, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct IdentityCode;

impl OpCode for IdentityCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let x = cx.x;
        quote!(#x)
    }

    fn is_view(&self) -> bool {
        true
    }
}
