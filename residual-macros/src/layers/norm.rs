//! Normalisation: `bn` (batch norm over the channels of `[C, H, W]`; running statistics in
//! inference) and `layernorm` (over the last dim of `[D]` or `[S, D]`).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{Layer, Spec};
use crate::codegen::{lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, PlanCx, PlanTensor, Var};
use crate::shape;

pub(super) const SPECS: &[Spec] = &[
    Spec {
        name: "bn",
        params: &[],
        aliases: &["batchnorm", "batch_norm", "batchnorm2d", "bn2d"],
        build: |_| Some(Rc::new(BatchNorm)),
    },
    Spec { name: "layernorm", params: &[], aliases: &["layer_norm", "ln"], build: |_| Some(Rc::new(LayerNorm)) },
];

/// `bn`: its channel count comes from the value flowing in.
#[derive(Debug)]
pub(crate) struct BatchNorm;

impl Layer for BatchNorm {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        if let Err(e) = shape::rank3(&input) {
            inf.shape_error(at.node, "bn", e, &[], &input, None);
            return inf.lost(Some(input));
        }
        let c = input.first().copied().unwrap_or(0);
        let f = inf.add_field(at.node, at.path, field_ident(at.path), Box::new(BnField { c, zero_gamma: false }));
        let v = inf.field_op(at.input, input.clone(), f, at.node.sp);
        inf.row(at.shown, format!("bn {c}"), &input, 2 * c as u64, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct BnField {
    c: usize,
    /// `#[zero_init_residual]` on the last batch norm of a residual body.
    zero_gamma: bool,
}

impl FieldType for BnField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (c, zero_gamma) = (lit(self.c), self.zero_gamma);
        quote!(#p::layers::BatchNorm2d<#c, E, D, #zero_gamma>)
    }

    fn plan_tensors(&self) -> Option<Vec<PlanTensor>> {
        let t = |name, trainable| PlanTensor { name, len: self.c, trainable };
        Some(vec![t("weight", true), t("bias", true), t("running_mean", false), t("running_var", false)])
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        if cx.in_shape.len() != 3 {
            return None;
        }
        let plan = cx.plan;
        let (x, y) = (lit(cx.input), lit(cx.output));
        let [w, b, m, v] = [0, 1, 2, 3].map(|i| cx.params.get(i).map(|p| lit(*p)));
        let (w, b, m, v) = (w?, b?, m?, v?);
        Some(quote!(#plan::Step::BatchNorm { input: #x, output: #y, weight: #w, bias: #b,
            running_mean: #m, running_var: #v }))
    }

    fn set_zero_gamma(&mut self) -> bool {
        self.zero_gamma = true;
        true
    }
}

/// `layernorm`: normalises the last dim.
#[derive(Debug)]
struct LayerNorm;

impl Layer for LayerNorm {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        match shape::last_dim(&input) {
            Ok(m) => {
                let f = inf.add_field(at.node, at.path, field_ident(at.path), Box::new(LayerNormField { m }));
                let v = inf.field_op(at.input, input.clone(), f, at.node.sp);
                inf.row(at.shown, format!("layernorm {m}"), &input, 2 * m as u64, 0);
                Some(v)
            }
            Err(e) => {
                inf.shape_error(at.node, "layernorm", e, &[], &input, None);
                inf.lost(Some(input))
            }
        }
    }
}

/// No plan kernel: a model with a layer norm runs layer by layer.
#[derive(Debug)]
struct LayerNormField {
    m: usize,
}

impl FieldType for LayerNormField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let m = lit(self.m);
        quote!(#p::layers::LayerNorm<#m, E, D>)
    }
}
