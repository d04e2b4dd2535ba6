//! Normalisation: `bn(eps, momentum)` (batch norm over the channels of `[C, H, W]`; running
//! statistics in inference; PyTorch's defaults 1e-5 and 0.1) and `layernorm(eps)` (over the last
//! dim of `[D]` or `[S, D]`, or the channels of each pixel of `[C, H, W]`).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{in_units, p, Dflt, Layer, Spec};
use crate::codegen::{lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, PlanCx, PlanTensor, Var};
use crate::model::{Args, V};
use crate::shape;

pub(super) const SPECS: &[Spec] = &[
    Spec {
        name: "bn",
        params: &[p("eps", Dflt::Float(1e-5)), p("momentum", Dflt::Float(0.1))],
        aliases: &["batchnorm", "batch_norm", "batchnorm2d", "bn2d"],
        build: build_bn,
    },
    Spec {
        name: "layernorm",
        params: &[p("eps", Dflt::Float(1e-5))],
        aliases: &["layer_norm", "ln", "layernorm2d"],
        build: build_layer_norm,
    },
];

/// The runtime's `BatchNorm2d` takes eps and momentum as integers (a const parameter cannot be
/// a float on stable Rust): eps in billionths, momentum in millionths.
const EPS_UNIT: f64 = 1e9;
const MOMENTUM_UNIT: f64 = 1e6;

fn build_bn(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let eps = a.float("eps");
    let momentum = a.float("momentum");
    let (eps, momentum) = (eps?, momentum?);
    let eps_e9 = match in_units(eps.v, EPS_UNIT) {
        Some(n) if eps.v <= 1.0 => n,
        _ => {
            let help = if eps.v >= 1.0 && eps.v.fract() == 0.0 {
                "`bn` infers its channels: PyTorch's `BatchNorm2d(64)` is plain `bn` here, and `bn(eps = 0.001)` sets eps"
            } else {
                "eps is a small positive number, a multiple of 1e-9 (PyTorch's default is 1e-5)"
            };
            a.err(
                eps.sp,
                format!("`eps` must be in (0, 1] and a multiple of 1e-9, found {}", eps.v),
                Some(help.into()),
            );
            return None;
        }
    };
    let momentum_e6 = match in_units(momentum.v, MOMENTUM_UNIT) {
        Some(n) if momentum.v <= 1.0 => n,
        _ => {
            a.err(
                momentum.sp,
                format!("`momentum` must be in (0, 1] and a multiple of 1e-6, found {}", momentum.v),
                Some("PyTorch's default is 0.1: `running = (1 - momentum) * running + momentum * batch`".into()),
            );
            return None;
        }
    };
    Some(Rc::new(BatchNorm { eps: V { v: eps_e9, sp: eps.sp }, momentum_e6 }))
}

/// `bn`: its channel count comes from the value flowing in.
#[derive(Debug)]
pub(crate) struct BatchNorm {
    /// eps in billionths.
    eps: V<usize>,
    /// momentum in millionths.
    momentum_e6: usize,
}

impl BatchNorm {
    /// PyTorch's defaults, eps 1e-5 and momentum 0.1 (an `auto` shortcut's batch norm).
    pub(crate) fn torch_default(sp: crate::ctxt::Sp) -> Self {
        BatchNorm { eps: V { v: 10_000, sp }, momentum_e6: 100_000 }
    }

    fn is_default(&self) -> bool {
        self.eps.v == 10_000 && self.momentum_e6 == 100_000
    }
}

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
        let field = BnField { c, zero_gamma: false, eps_e9: self.eps.v, momentum_e6: self.momentum_e6 };
        let f = inf.add_field(at.node, at.path, field_ident(at.path), Box::new(field));
        let v = inf.field_op(at.input, input.clone(), f, at.node.sp);
        let op =
            if self.is_default() { format!("bn {c}") } else { format!("bn {c} eps {}", self.eps.v as f64 / EPS_UNIT) };
        inf.row(at.shown, op, &input, 2 * c as u64, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct BnField {
    c: usize,
    /// `#[zero_init_residual]` on the last batch norm of a residual body.
    zero_gamma: bool,
    eps_e9: usize,
    momentum_e6: usize,
}

impl FieldType for BnField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (c, zero_gamma, eps, momentum) = (lit(self.c), self.zero_gamma, lit(self.eps_e9), lit(self.momentum_e6));
        quote!(#p::layers::BatchNorm2d<#c, E, D, #zero_gamma, #eps, #momentum>)
    }

    /// Plans normalise with PyTorch's defaults only: a batch norm with another eps or momentum
    /// runs layer by layer.
    fn plan_tensors(&self) -> Option<Vec<PlanTensor>> {
        if (self.eps_e9, self.momentum_e6) != (10_000, 100_000) {
            return None;
        }
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

fn build_layer_norm(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let eps = a.float("eps")?;
    match in_units(eps.v, EPS_UNIT) {
        Some(n) if eps.v <= 1.0 => Some(Rc::new(LayerNorm { eps_e9: n })),
        _ => {
            a.err(
                eps.sp,
                format!("`eps` must be in (0, 1] and a multiple of 1e-9, found {}", eps.v),
                Some("PyTorch's default is 1e-5; ConvNeXt's 1e-6".into()),
            );
            None
        }
    }
}

/// `layernorm`: normalises the last dim of `[D]` / `[S, D]`, or the channels of each pixel of
/// `[C, H, W]` (ConvNeXt's `LayerNorm2d`).
#[derive(Debug)]
struct LayerNorm {
    eps_e9: usize,
}

impl Layer for LayerNorm {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let (m, over) = match input.as_slice() {
            [c, _, _] => (*c, " channels"),
            _ => match shape::last_dim(&input) {
                Ok(m) => (m, ""),
                Err(e) => {
                    inf.shape_error(at.node, "layernorm", e, &[], &input, None);
                    return inf.lost(Some(input));
                }
            },
        };
        let field = LayerNormField { m, eps_e9: self.eps_e9 };
        let f = inf.add_field(at.node, at.path, field_ident(at.path), Box::new(field));
        let v = inf.field_op(at.input, input.clone(), f, at.node.sp);
        inf.row(at.shown, format!("layernorm {m}{over}"), &input, 2 * m as u64, 0);
        Some(v)
    }
}

/// No plan kernel: a model with a layer norm runs layer by layer.
#[derive(Debug)]
struct LayerNormField {
    m: usize,
    eps_e9: usize,
}

impl FieldType for LayerNormField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (m, eps) = (lit(self.m), lit(self.eps_e9));
        quote!(#p::layers::LayerNorm<#m, E, D, #eps>)
    }
}
