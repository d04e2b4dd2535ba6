//! Pooling: `maxpool` and `avgpool` (square window, stride defaulting to the kernel, padding at
//! most half the kernel as in PyTorch) on `[C, H, W]`, and `global_avgpool` (`[C, H, W] -> [C]`).

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
        aliases: &["adaptive_avgpool", "avgpool_global", "gap"],
        build: |_| Some(Rc::new(GlobalAvgPool)),
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

/// `global_avgpool`: the mean of each channel.
#[derive(Debug)]
struct GlobalAvgPool;

impl Layer for GlobalAvgPool {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        match shape::global_avgpool(&input) {
            Ok(o) => {
                let v = inf.layer_op(at.input, o.to_vec(), Rc::new(GlobalAvgPoolCode), at.node.sp);
                inf.row(at.shown, "global_avgpool".into(), &o, 0, 0);
                Some(v)
            }
            Err(e) => {
                inf.shape_error(at.node, "global_avgpool", e, &[], &input, None);
                inf.lost(input.first().map(|c| vec![*c]))
            }
        }
    }
}

#[derive(Debug)]
struct GlobalAvgPoolCode;

impl OpCode for GlobalAvgPoolCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x) = (dfdx(), cx.x);
        quote!(#d::nn::Module::try_forward(&#d::nn::modules::AvgPoolGlobal, #x)?)
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        if cx.in_shape.len() != 3 {
            return None;
        }
        let plan = cx.plan;
        let (x, y) = (lit(cx.input), lit(cx.output));
        Some(quote!(#plan::Step::GlobalAvgPool { input: #x, output: #y }))
    }
}
