//! Decoder upsampling on `[C, H, W]` by an integer factor: `upsample(scale)` (nearest neighbour,
//! PyTorch's `Upsample(scale_factor)` / `UpsamplingNearest2d`) and `upsample_bilinear(scale,
//! align_corners = true)` (PyTorch's `UpsamplingBilinear2d`; with `align_corners = false`, its
//! `Upsample(mode="bilinear")` default). No plan kernel: a model with upsampling runs layer by
//! layer.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, lit, private};
use crate::infer::{Infer, LayerAt};
use crate::ir::{ForwardCx, OpCode, Var};
use crate::model::{Args, V};
use crate::shape;

pub(super) const SPECS: &[Spec] = &[
    Spec {
        name: "upsample",
        params: &[p("scale", Dflt::Required)],
        aliases: &["upsample_nearest", "upsamplingnearest2d", "interpolate"],
        build: |a| build(a, false),
    },
    Spec {
        name: "upsample_bilinear",
        params: &[p("scale", Dflt::Required), p("align_corners", Dflt::Bool(true))],
        aliases: &["upsamplingbilinear2d", "bilinear"],
        build: |a| build(a, true),
    },
];

fn build(a: &mut Args<'_>, bilinear: bool) -> Option<Rc<dyn Layer>> {
    let scale = a.size("scale", 1);
    let mode = if !bilinear {
        Mode::Nearest
    } else if a.boolean("align_corners")? {
        Mode::BilinearAligned
    } else {
        Mode::BilinearHalfPixel
    };
    Some(Rc::new(Upsample { mode, scale: scale? }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Nearest,
    /// `align_corners=True`: dfdx's kernel.
    BilinearAligned,
    /// `align_corners=False`: the runtime's separable resampling.
    BilinearHalfPixel,
}

#[derive(Debug)]
struct Upsample {
    mode: Mode,
    scale: V<usize>,
}

impl Layer for Upsample {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let name = if self.mode == Mode::Nearest { "upsample" } else { "upsample_bilinear" };
        let [c, h, w] = match shape::rank3(&input) {
            Ok(dims) => dims,
            Err(e) => {
                inf.shape_error(at.node, name, e, &[], &input, None);
                return inf.lost(None);
            }
        };
        let s = self.scale.v;
        let o = vec![c, h.saturating_mul(s), w.saturating_mul(s)];
        if inf.too_big(at.node, self.scale.sp, "the output", &o, "`scale`") {
            return inf.lost(Some(o));
        }
        let v = inf.layer_op(at.input, o.clone(), Rc::new(UpsampleCode { mode: self.mode }), at.node.sp);
        let corners = if self.mode == Mode::BilinearHalfPixel { " (half-pixel)" } else { "" };
        inf.row(at.shown, format!("{name} x{s}{corners}"), &o, 0, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct UpsampleCode {
    mode: Mode,
}

impl OpCode for UpsampleCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, p, x) = (dfdx(), private(), cx.x);
        let (oh, ow) = (lit(cx.output.get(1).copied().unwrap_or(0)), lit(cx.output.get(2).copied().unwrap_or(0)));
        let f = match self.mode {
            Mode::Nearest => quote!(try_upsample_nearest),
            Mode::BilinearAligned => quote!(try_upsample_bilinear),
            Mode::BilinearHalfPixel => {
                return quote!(#p::runtime::upsample::try_resample(#x, #p::runtime::upsample::Resample::BilinearHalfPixel)?);
            }
        };
        quote!(<D as #p::runtime::upsample::Upsample2d<E>>::#f(#x, #d::shapes::Const::<#oh>, #d::shapes::Const::<#ow>)?)
    }
}
