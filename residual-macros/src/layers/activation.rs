//! Elementwise activations on any shape: `relu`, `relu6`, `gelu` (exact, PyTorch's default `GELU()`;
//! `gelu(approximate = true)` is the tanh form),
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
    Spec {
        name: "gelu",
        params: &[p("approximate", Dflt::Bool(false))],
        aliases: &[],
        build: |a| Some(Rc::new(if a.boolean("approximate")? { Activation::GeluTanh } else { Activation::Gelu })),
    },
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
    /// `x * Phi(x)` with the normal CDF by `erf`.
    Gelu,
    /// The tanh approximation.
    GeluTanh,
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
            Activation::GeluTanh => "gelu tanh".to_string(),
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
            // dfdx 0.13's `accurate_gelu` computes `x * Phi(x)` right but its derivative wrong: it
            // adds `x * exp(-x^2 / 2) / sqrt(pi)` to `Phi(x)` where `1 / sqrt(2 pi)` is right (on
            // the CPU and CUDA alike), too much by `K x exp(-x^2 / 2)`, K = (1 - 1/sqrt(2)) / sqrt(pi).
            // `g = K exp(-x^2 / 2)` has the derivative `-K x exp(-x^2 / 2)`, so adding `g` minus a
            // copy of `g` off the tape adds exactly 0 to the value and cancels the error in the
            // gradient (tests/macro_gradients.rs checks it against finite differences).
            Activation::Gelu => {
                let k = proc_macro2::Literal::f64_suffixed(
                    (1.0 - std::f64::consts::FRAC_1_SQRT_2) / std::f64::consts::PI.sqrt(),
                );
                quote!({
                    let g = #d::tensor::WithEmptyTape::with_empty_tape(&#x).try_square()?;
                    let g = #d::tensor_ops::TryMul::try_mul(g, E::from_f64(-0.5).unwrap_or_default())?.try_exp()?;
                    let g = #d::tensor_ops::TryMul::try_mul(g, E::from_f64(#k).unwrap_or_default())?;
                    // A copy with its own id and no tape: the difference's backward reaches `g` only.
                    let g_value = #d::tensor_ops::TryMul::try_mul(
                        g.retaped::<#d::tensor::NoneTape>(), E::from_f64(1.0).unwrap_or_default())?;
                    let zero = #d::tensor_ops::TrySub::try_sub(g, g_value)?;
                    #d::tensor_ops::TryAdd::try_add(#x.try_accurate_gelu()?, zero)?
                })
            }
            Activation::GeluTanh => quote!(#x.try_fast_gelu()?),
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
