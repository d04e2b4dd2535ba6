//! `conv_transpose`: 2-D transposed convolution on `[C, H, W]` (PyTorch's `ConvTranspose2d`
//! without `in_channels`, which is inferred): the U-Net's up-conv. Its fields are `ConvTranspose2d`
//! and, as PyTorch's default, a bias saved as `<layer>.bias`.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::conv::BiasField;
use super::{p, Dflt, Layer, Spec};
use crate::codegen::{lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, Var};
use crate::model::{Args, V};
use crate::shape::{self, show};

pub(super) const SPECS: &[Spec] = &[Spec {
    name: "conv_transpose",
    params: &[
        p("out", Dflt::Required),
        p("kernel", Dflt::Required),
        p("stride", Dflt::Int(1)),
        p("padding", Dflt::Int(0)),
        p("output_padding", Dflt::Int(0)),
        p("groups", Dflt::Int(1)),
        p("bias", Dflt::Bool(true)),
        p("dilation", Dflt::Int(1)),
    ],
    aliases: &["convtranspose2d", "conv_transpose2d", "deconv", "upconv"],
    build,
}];

fn build(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let out = a.size("out", 1);
    let kernel = a.size("kernel", 1);
    let stride = a.size("stride", 1);
    let padding = a.size("padding", 0);
    let output_padding = a.size("output_padding", 0);
    let groups = a.size("groups", 1);
    let bias = a.boolean("bias");
    let dilation = a.size("dilation", 1);
    Some(Rc::new(ConvTranspose {
        out: out?,
        kernel: kernel?,
        stride: stride?,
        padding: padding?,
        output_padding: output_padding?,
        groups: groups?,
        bias: bias?,
        dilation: dilation?,
    }))
}

#[derive(Debug)]
struct ConvTranspose {
    out: V<usize>,
    kernel: V<usize>,
    stride: V<usize>,
    padding: V<usize>,
    output_padding: V<usize>,
    groups: V<usize>,
    bias: bool,
    dilation: V<usize>,
}

/// `(size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`, checked.
fn out_size(size: usize, c: &ConvTranspose) -> Option<usize> {
    let full = size
        .checked_sub(1)?
        .checked_mul(c.stride.v)?
        .checked_add(c.dilation.v.checked_mul(c.kernel.v.checked_sub(1)?)?)?
        .checked_add(c.output_padding.v)?
        .checked_add(1)?;
    full.checked_sub(c.padding.v.checked_mul(2)?).filter(|&n| n >= 1)
}

impl Layer for ConvTranspose {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let node = at.node;
        let input = inf.shape(at.input);
        let [c, h, w] = match shape::rank3(&input) {
            Ok(dims) => dims,
            Err(e) => {
                inf.shape_error(node, "conv_transpose", e, &[], &input, None);
                return inf.lost(None);
            }
        };
        let (out, g) = (self.out.v, self.groups.v);
        if c % g != 0 || out % g != 0 {
            let which = if c % g != 0 { format!("input channels ({c})") } else { format!("output channels ({out})") };
            inf.err(
                node,
                self.groups.sp,
                format!("`groups = {g}` does not divide the {which}"),
                Some(format!("groups must divide both the input channels ({c}) and `out` ({out})")),
            );
            return inf.lost(None);
        }
        if self.output_padding.v >= self.stride.v && self.output_padding.v >= self.dilation.v {
            inf.err(
                node,
                self.output_padding.sp,
                format!(
                    "`output_padding = {}` must be smaller than the stride ({}) or the dilation ({})",
                    self.output_padding.v, self.stride.v, self.dilation.v
                ),
                Some("as PyTorch: output padding only picks among the sizes a strided conv maps to one size".into()),
            );
            return inf.lost(None);
        }
        let (Some(oh), Some(ow)) = (out_size(h, self), out_size(w, self)) else {
            inf.err(
                node,
                self.padding.sp,
                format!("`conv_transpose` on {}: `padding = {}` leaves no output", show(&input), self.padding.v),
                Some("the output is `(H - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1`: use a smaller padding".into()),
            );
            return inf.lost(None);
        };
        let o = [out, oh, ow];
        let weight = [c, out / g, self.kernel.v, self.kernel.v];
        if inf.too_big(node, self.out.sp, "the output", &o, "`out` and `stride`")
            || inf.too_big(node, self.out.sp, "the weight", &weight, "`out` and `kernel`")
        {
            return inf.lost(Some(o.to_vec()));
        }
        let ident = field_ident(at.path);
        let k2 = self.kernel.v.saturating_mul(self.kernel.v);
        let field = ConvTransposeField {
            in_ch: c,
            out,
            kernel: self.kernel.v,
            stride: self.stride.v,
            padding: self.padding.v,
            output_padding: self.output_padding.v,
            dilation: self.dilation.v,
            groups: g,
            oh,
            ow,
            kaiming: inf.kaiming,
        };
        let f = inf.add_field(node, at.path, ident.clone(), Box::new(field));
        let mut v = inf.field_op(at.input, o.to_vec(), f, node.sp);
        if self.bias {
            let fan_in = (out / g).saturating_mul(k2);
            let fb = inf.add_field(node, at.path, format!("{ident}_bias"), Box::new(BiasField { c: out, fan_in }));
            v = inf.field_op(v, o.to_vec(), fb, node.sp);
        }
        let mut op = format!("conv_transpose {0}x{0}", self.kernel.v);
        if self.stride.v != 1 {
            op.push_str(&format!("/{}", self.stride.v));
        }
        op.push_str(&format!(" {c}->{out}"));
        if g != 1 {
            op.push_str(&format!(" g{g}"));
        }
        // Each input value meets `out / groups * k * k` weights.
        let weights = (c as u64).checked_mul((out / g) as u64).and_then(|n| n.checked_mul(k2 as u64));
        let params = weights.and_then(|n| n.checked_add(if self.bias { out as u64 } else { 0 }));
        let macs = weights.and_then(|n| n.checked_mul(h as u64)).and_then(|n| n.checked_mul(w as u64));
        let params = inf.count(node, "parameter count", params);
        let macs = inf.count(node, "MAC count", macs);
        inf.row(at.shown, op, &o, params, macs);
        Some(v)
    }
}

/// The runtime's `ConvTranspose2d`. No plan kernel: a model with one runs layer by layer.
#[derive(Debug)]
struct ConvTransposeField {
    in_ch: usize,
    out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
    groups: usize,
    oh: usize,
    ow: usize,
    kaiming: bool,
}

impl FieldType for ConvTransposeField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let per_group = lit(self.out / self.groups.max(1));
        let (i, o, k, s, pd, op, dl, g, oh, ow) = (
            lit(self.in_ch),
            lit(self.out),
            lit(self.kernel),
            lit(self.stride),
            lit(self.padding),
            lit(self.output_padding),
            lit(self.dilation),
            lit(self.groups),
            lit(self.oh),
            lit(self.ow),
        );
        let init = if self.kaiming {
            quote!(#p::runtime::init::KaimingNormalFanOut)
        } else {
            quote!(#p::runtime::init::TorchDefaultInit)
        };
        quote!(#p::layers::ConvTranspose2d<#i, #o, #k, #s, #pd, #op, #dl, #g, #per_group, #oh, #ow, E, D, #init>)
    }
}
