//! Pooling: `maxpool` and `avgpool` (square window, stride defaulting to the kernel, padding at
//! most half the kernel as in PyTorch) on `[C, H, W]`; `global_avgpool` and `global_maxpool` (also over the tokens of `[S, D]`)
//! (`[C, H, W] -> [C]`); `adaptive_avgpool(out)` (`[C, H, W] -> [C, out, out]`, PyTorch's
//! `AdaptiveAvgPool2d(out)`: a global mean when `out` is 1, an average pool when `out` splits the
//! map into equal square bins, and PyTorch's uneven bins by separable resampling otherwise).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, lit, private};
use crate::infer::{Infer, LayerAt};
use crate::ir::{ForwardCx, OpCode, PlanCx, Var};
use crate::model::{Args, V};
use crate::shape;

const WINDOW: &[super::Param] =
    &[p("kernel", Dflt::Required), p("stride", Dflt::Same("kernel")), p("padding", Dflt::Int(0))];

pub(super) const SPECS: &[Spec] = &[
    Spec { name: "maxpool", params: WINDOW, aliases: &["max_pool", "maxpool2d"], build: |a| build(a, true) },
    Spec { name: "avgpool", params: WINDOW, aliases: &["avg_pool", "avgpool2d"], build: |a| build(a, false) },
    Spec {
        name: "global_avgpool",
        params: &[],
        aliases: &["avgpool_global", "gap"],
        build: |_| Some(Rc::new(GlobalPool { max: false })),
    },
    Spec {
        name: "global_maxpool",
        params: &[],
        aliases: &["maxpool_global", "gmp"],
        build: |_| Some(Rc::new(GlobalPool { max: true })),
    },
    Spec {
        name: "adaptive_avgpool",
        params: &[p("out", Dflt::Required)],
        aliases: &["adaptive_avg_pool", "adaptiveavgpool2d"],
        build: |a| Some(Rc::new(AdaptiveAvgPool { out: a.size("out", 1)? })),
    },
];

fn build(a: &mut Args<'_>, max: bool) -> Option<Rc<dyn Layer>> {
    let kernel = a.size("kernel", 1);
    let stride = a.size("stride", 1);
    let padding = a.size("padding", 0);
    Some(Rc::new(Pool { max, kernel: kernel?, stride: stride?, padding: padding? }))
}

/// `maxpool` or `avgpool`.
#[derive(Debug)]
struct Pool {
    max: bool,
    kernel: V<usize>,
    stride: V<usize>,
    padding: V<usize>,
}

impl Layer for Pool {
    fn stride(&self) -> usize {
        self.stride.v
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let name = if self.max { "maxpool" } else { "avgpool" };
        let (kernel, stride, padding) = (self.kernel.v, self.stride.v, self.padding.v);
        match shape::pool2d(&input, kernel, stride, padding) {
            Ok(o) => {
                inf.note_shrink(at.node, name, &input, o, stride, kernel, padding, 1);
                let code = Pool2dCode { max: self.max, kernel, stride, padding };
                let v = inf.layer_op(at.input, o.to_vec(), Rc::new(code), at.node.sp);
                inf.row(at.shown, format!("{name} {kernel}x{kernel}/{stride}"), &o, 0, 0);
                Some(v)
            }
            Err(e) => {
                inf.shape_error(
                    at.node,
                    name,
                    e,
                    &[("kernel", Some(self.kernel.sp)), ("padding", Some(self.padding.sp))],
                    &input,
                    None,
                );
                let guess = match input.as_slice() {
                    [c, h, w] => Some(vec![
                        *c,
                        shape::window_out("height", *h, kernel, stride, 0, 1).unwrap_or(1),
                        shape::window_out("width", *w, kernel, stride, 0, 1).unwrap_or(1),
                    ]),
                    _ => None,
                };
                inf.lost(guess)
            }
        }
    }
}

#[derive(Debug)]
struct Pool2dCode {
    max: bool,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl OpCode for Pool2dCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, p, x) = (dfdx(), private(), cx.x);
        let (k, s, pd) = (lit(self.kernel), lit(self.stride), lit(self.padding));
        let (oh, ow) = (lit(cx.output.get(1).copied().unwrap_or(0)), lit(cx.output.get(2).copied().unwrap_or(0)));
        let ty = if self.max {
            quote!(#p::layers::MaxPool2d<#k, #s, #pd, #oh, #ow>)
        } else {
            quote!(#p::layers::AvgPool2d<#k, #s, #pd, #oh, #ow>)
        };
        quote!(#d::nn::Module::try_forward(&<#ty as ::core::default::Default>::default(), #x)?)
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        if cx.in_shape.len() != 3 {
            return None;
        }
        let plan = cx.plan;
        let (x, y) = (lit(cx.input), lit(cx.output));
        let (k, s, pd) = (lit(self.kernel), lit(self.stride), lit(self.padding));
        let geom = quote!(#plan::PoolGeom { kernel: #k, stride: #s, padding: #pd });
        Some(if self.max {
            quote!(#plan::Step::MaxPool { input: #x, output: #y, geom: #geom })
        } else {
            quote!(#plan::Step::AvgPool { input: #x, output: #y, geom: #geom })
        })
    }
}

/// `global_avgpool` (the mean of each channel) or `global_maxpool` (its maximum).
#[derive(Debug)]
struct GlobalPool {
    max: bool,
}

impl Layer for GlobalPool {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let name = if self.max { "global_maxpool" } else { "global_avgpool" };
        // Over the tokens of a sequence: `[S, D] -> [D]` (timm's `global_pool = "avg"` of a ViT).
        if let [_, d] = input[..] {
            let v = inf.layer_op(at.input, vec![d], Rc::new(GlobalPoolCode { max: self.max }), at.node.sp);
            inf.row(at.shown, format!("{name} over tokens"), &[d], 0, 0);
            return Some(v);
        }
        match shape::global_avgpool(&input) {
            Ok(o) => {
                let v = inf.layer_op(at.input, o.to_vec(), Rc::new(GlobalPoolCode { max: self.max }), at.node.sp);
                inf.row(at.shown, name.into(), &o, 0, 0);
                Some(v)
            }
            Err(e) => {
                inf.shape_error(at.node, name, e, &[], &input, None);
                inf.lost(input.first().map(|c| vec![*c]))
            }
        }
    }
}

#[derive(Debug)]
struct GlobalPoolCode {
    max: bool,
}

impl OpCode for GlobalPoolCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x) = (dfdx(), cx.x);
        if cx.input.len() == 2 {
            return if self.max {
                quote!(#d::tensor_ops::MaxTo::try_max::<_, #d::shapes::Axis<1>>(#x)?)
            } else {
                quote!(#d::tensor_ops::MeanTo::try_mean::<_, #d::shapes::Axis<1>>(#x)?)
            };
        }
        if self.max {
            quote!(#d::nn::Module::try_forward(&#d::nn::modules::MaxPoolGlobal, #x)?)
        } else {
            quote!(#d::nn::Module::try_forward(&#d::nn::modules::AvgPoolGlobal, #x)?)
        }
    }

    /// Plans have a global average pool; a global max pool runs layer by layer.
    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        if cx.in_shape.len() != 3 || self.max {
            return None;
        }
        let plan = cx.plan;
        let (x, y) = (lit(cx.input), lit(cx.output));
        Some(quote!(#plan::Step::GlobalAvgPool { input: #x, output: #y }))
    }
}

/// `adaptive_avgpool(out)`: `out x out` bins.
#[derive(Debug)]
struct AdaptiveAvgPool {
    out: V<usize>,
}

impl Layer for AdaptiveAvgPool {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let out = self.out.v;
        let [c, h, w] = match shape::rank3(&input) {
            Ok(dims) => dims,
            Err(e) => {
                inf.shape_error(at.node, "adaptive_avgpool", e, &[], &input, None);
                return inf.lost(input.first().map(|c| vec![*c, out, out]));
            }
        };
        let o = vec![c, out, out];
        // One bin is the global mean; equal square bins are exactly an average pool (both have
        // plan kernels); PyTorch's uneven bins are resampled by matrices.
        let code: Rc<dyn OpCode> = if out == 1 {
            Rc::new(AdaptiveAvgPoolCode::Global)
        } else if h % out == 0 && w % out == 0 && h / out == w / out {
            Rc::new(Pool2dCode { max: false, kernel: h / out, stride: h / out, padding: 0 })
        } else {
            Rc::new(AdaptiveAvgPoolCode::Uneven)
        };
        let v = inf.layer_op(at.input, o.clone(), code, at.node.sp);
        inf.row(at.shown, format!("adaptive_avgpool {out}x{out}"), &o, 0, 0);
        Some(v)
    }
}

#[derive(Debug)]
enum AdaptiveAvgPoolCode {
    /// `[C, H, W] -> [C, 1, 1]`.
    Global,
    /// PyTorch's bins `floor(o * in / out) .. ceil((o + 1) * in / out)`, of uneven sizes.
    Uneven,
}

impl OpCode for AdaptiveAvgPoolCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, p, x) = (dfdx(), private(), cx.x);
        match self {
            AdaptiveAvgPoolCode::Global => {
                let c = lit(cx.output.first().copied().unwrap_or(0));
                quote!({
                    let batch = #d::shapes::HasShape::shape(&#x).0;
                    let mean = #d::nn::Module::try_forward(&#d::nn::modules::AvgPoolGlobal, #x)?;
                    #d::tensor_ops::ReshapeTo::try_reshape_like(
                        mean, &(batch, #d::shapes::Const::<#c>, #d::shapes::Const::<1>, #d::shapes::Const::<1>))?
                })
            }
            AdaptiveAvgPoolCode::Uneven => {
                quote!(#p::runtime::upsample::try_resample(#x, #p::runtime::upsample::Resample::AdaptiveAverage)?)
            }
        }
    }

    /// The global mean is a plan's global average pool (its `[C, 1, 1]` value is the plan's own
    /// shape for it); uneven bins have no plan kernel.
    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        match self {
            AdaptiveAvgPoolCode::Global => GlobalPoolCode { max: false }.plan_step(cx),
            AdaptiveAvgPoolCode::Uneven => None,
        }
    }
}
