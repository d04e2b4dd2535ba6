//! Elementwise activations on any shape: `relu`, `relu6`, `gelu` (the tanh approximation),
//! `sigmoid`, `tanh`, `silu`, `hardsigmoid`, `hardswish` (PyTorch's `Hardsigmoid`: `relu6(x + 3) /
//! 6`, and `Hardswish`: `x * hardsigmoid(x)`), `leaky_relu(slope)`. Plans have a kernel for `relu` (fused into the conv or
//! add before it); a model with another activation runs layer by layer.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, lit};
use crate::infer::{Infer, LayerAt};
use crate::ir::{ForwardCx, OpCode, PlanCx, Var};

pub(super) const SPECS: &[Spec] = &[
    Spec { name: "relu", params: &[], aliases: &[], build: |_| Some(Rc::new(Activation::Relu)) },
    Spec { name: "relu6", params: &[], aliases: &[], build: |_| Some(Rc::new(Activation::Relu6)) },
    Spec { name: "gelu", params: &[], aliases: &[], build: |_| Some(Rc::new(Activation::Gelu)) },
    Spec { name: "sigmoid", params: &[], aliases: &[], build: |_| Some(Rc::new(Activation::Sigmoid)) },
    Spec { name: "tanh", params: &[], aliases: &[], build: |_| Some(Rc::new(Activation::Tanh)) },
    Spec { name: "silu", params: &[], aliases: &["swish"], build: |_| Some(Rc::new(Activation::Silu)) },
    Spec {
        name: "hardsigmoid",
        params: &[],
        aliases: &["hard_sigmoid"],
        build: |_| Some(Rc::new(Activation::Hardsigmoid)),
    },
    Spec {
        name: "hardswish",
        params: &[],
        aliases: &["hard_swish", "h_swish"],
        build: |_| Some(Rc::new(Activation::Hardswish)),
    },
    Spec {
        name: "leaky_relu",
        params: &[p("slope", Dflt::Float(0.01))],
        aliases: &["leakyrelu"],
        build: |a| Some(Rc::new(Activation::LeakyRelu(a.float("slope")?.v))),
    },
];

#[derive(Clone, Copy, Debug)]
enum Activation {
    Relu,
    Relu6,
    Gelu,
    Sigmoid,
    Tanh,
    Silu,
    Hardsigmoid,
    Hardswish,
    LeakyRelu(f64),
}

impl Layer for Activation {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let name = match self {
            Activation::Relu => "relu".to_string(),
            Activation::Relu6 => "relu6".to_string(),
            Activation::Hardsigmoid => "hardsigmoid".to_string(),
            Activation::Hardswish => "hardswish".to_string(),
            Activation::Gelu => "gelu".to_string(),
            Activation::Sigmoid => "sigmoid".to_string(),
            Activation::Tanh => "tanh".to_string(),
            Activation::Silu => "silu".to_string(),
            Activation::LeakyRelu(slope) => format!("leaky_relu {slope}"),
        };
        let v = inf.layer_op(at.input, input.clone(), Rc::new(*self), at.node.sp);
        inf.row(at.shown, name, &input, 0, 0);
        Some(v)
    }
}

impl OpCode for Activation {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x) = (dfdx(), cx.x);
        // `relu6(x + 3) / 6` on `$t`, PyTorch's `Hardsigmoid` (its slope 1/6 inside [-3, 3]).
        let hardsigmoid = |t: TokenStream| {
            quote!(#d::tensor_ops::TryMul::try_mul(
                #d::tensor_ops::TryAdd::try_add(#t, E::from_f64(3.0).unwrap_or_default())?.try_clamp(0.0, 6.0)?,
                E::from_f64(1.0 / 6.0).unwrap_or_default(),
            )?)
        };
        match self {
            Activation::Relu => quote!(#x.try_relu()?),
            Activation::Relu6 => quote!(#x.try_clamp(0.0, 6.0)?),
            Activation::Hardsigmoid => hardsigmoid(quote!(#x)),
            Activation::Hardswish => {
                // The gate reads a second handle of `x` (same tensor id): both tapes merge in the
                // product, so the gradient is `hardsigmoid(x) + x * hardsigmoid'(x)`, as silu's.
                let gate = hardsigmoid(quote!(#d::tensor::WithEmptyTape::with_empty_tape(&#x)));
                quote!({
                    let gate = #gate;
                    #d::tensor_ops::TryMul::try_mul(#x, gate)?
                })
            }
            // The tanh approximation (PyTorch's `GELU(approximate='tanh')`): dfdx 0.13's exact
            // `accurate_gelu` has a wrong backward (its Gaussian term lacks a 1/sqrt(2)), which
            // tests/macro_gradients.rs catches against finite differences.
            Activation::Gelu => quote!(#x.try_fast_gelu()?),
            Activation::Sigmoid => quote!(#x.try_sigmoid()?),
            Activation::Tanh => quote!(#x.try_tanh()?),
            Activation::Silu => quote!({
                let gate = #d::tensor::WithEmptyTape::with_empty_tape(&#x).try_sigmoid()?;
                #d::tensor_ops::TryMul::try_mul(#x, gate)?
            }),
            Activation::LeakyRelu(slope) => {
                let s = proc_macro2::Literal::f64_suffixed(if slope.is_finite() { *slope } else { 0.0 });
                quote!(#d::tensor_ops::TryPReLU::try_prelu(#x, E::from_f64(#s).unwrap_or_default())?)
            }
        }
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        let plan = cx.plan;
        let (x, y) = (lit(cx.input), lit(cx.output));
        match self {
            Activation::Relu => Some(quote!(#plan::Step::Relu { input: #x, output: #y })),
            _ => None,
        }
    }
}
