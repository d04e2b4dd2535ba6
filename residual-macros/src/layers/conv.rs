//! `conv`: 2-D convolution (square kernel; stride, padding, dilation, groups, optional bias) on
//! `[C, H, W]`, and its struct fields (`Conv2d`, and `Bias2d` saved as `<conv>.bias`).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, PlanCx, PlanTensor, Var};
use crate::model::{Args, V};
use crate::shape::{self, show, Conv, ShapeError};

pub(super) const SPECS: &[Spec] = &[Spec {
    name: "conv",
    params: &[
        p("out", Dflt::Required),
        p("kernel", Dflt::Required),
        p("stride", Dflt::Int(1)),
        p("padding", Dflt::Int(0)),
        p("dilation", Dflt::Int(1)),
        p("groups", Dflt::Int(1)),
        p("bias", Dflt::Bool(false)),
    ],
    aliases: &["conv2d"],
    build,
}];

/// A convolution with its arguments and their spans.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvLayer {
    pub out: V<usize>,
    pub kernel: V<usize>,
    pub stride: V<usize>,
    pub padding: V<usize>,
    pub dilation: V<usize>,
    pub groups: V<usize>,
    pub bias: bool,
}

fn build(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    // Every argument is checked, so that each bad one is reported, not only the first.
    let out = a.size("out", 1);
    let kernel = a.size("kernel", 1);
    let stride = a.size("stride", 1);
    let padding = a.size("padding", 0);
    let dilation = a.size("dilation", 1);
    let groups = a.size("groups", 1);
    let bias = a.boolean("bias");
    Some(Rc::new(ConvLayer {
        out: out?,
        kernel: kernel?,
        stride: stride?,
        padding: padding?,
        dilation: dilation?,
        groups: groups?,
        bias: bias?,
    }))
}

impl ConvLayer {
    fn geometry(&self) -> Conv {
        Conv {
            out: self.out.v,
            kernel: self.kernel.v,
            stride: self.stride.v,
            padding: self.padding.v,
            dilation: self.dilation.v,
            groups: self.groups.v,
        }
    }
}

impl Layer for ConvLayer {
    fn stride(&self) -> usize {
        self.stride.v
    }

    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let node = at.node;
        let input = inf.shape(at.input);
        let c = self.geometry();
        let Self { out, kernel, stride, padding, dilation, groups, bias } = *self;
        if let (true, [in_ch, ..]) = (out.v != 0, input.as_slice()) {
            // PyTorch's `Conv2d(in, out, kernel)`: `conv(3, 64, 3)` on 3 channels reads as
            // out = 3, kernel = 64. No real kernel is that large. Only with a third argument:
            // PyTorch's kernel size is required, ours is the second, so `conv(1, 46000)` on one
            // channel is left alone.
            let stride_given = stride.sp.start.start() != node.sp.start.start();
            if *in_ch == out.v && kernel.v > 11 && stride_given {
                let rest = stride.v;
                inf.err(
                    node,
                    node.sp,
                    format!(
                        "this reads as `out = {}, kernel = {}`: it looks like PyTorch's `Conv2d(in_channels, out_channels, kernel_size, ..)`",
                        out.v, kernel.v
                    ),
                    Some(format!(
                        "`conv` infers its input channels ({in_ch} here) and takes `conv(out, kernel, stride, padding, ..)`: write `conv({}, {rest}, ..)` (drop the first argument)",
                        kernel.v
                    )),
                );
                return inf.lost(None);
            }
        }
        if kernel.v == 1 && padding.v > 0 {
            // Always a slip: a 1x1 conv keeps the size with no padding, and with it the map grows
            // at every such conv (once an error repeated at each block).
            inf.err(
                node,
                padding.sp,
                format!(
                    "`padding = {}` on a 1x1 conv adds a border of zeros: the map grows by {} at each side",
                    padding.v, padding.v
                ),
                Some("a 1x1 conv keeps the size with `padding = 0` (the default): remove the padding".into()),
            );
            // Go on as if it were fixed, so that later checks stay meaningful.
            let fixed = ConvLayer { padding: V { v: 0, sp: padding.sp }, ..*self };
            return fixed.infer(inf, at);
        }
        let o = match shape::conv2d(&input, c) {
            Ok(o) => o,
            Err(ShapeError::Window { axis, input: size, padding: pd, window }) if c.dilation > 1 => {
                let padded = size.saturating_add(pd.saturating_mul(2));
                let max_d = padded.saturating_sub(1) / c.kernel.saturating_sub(1).max(1);
                let help = if max_d >= 1 {
                    format!(
                        "a kernel of {k} spans `dilation * (kernel - 1) + 1`; on {} use `dilation = {max_d}` or less, or `padding = {}`",
                        show(&input),
                        window.saturating_sub(size).div_ceil(2),
                        k = c.kernel
                    )
                } else {
                    format!("the input is {}; use a smaller kernel", show(&input))
                };
                inf.err(
                    node,
                    dilation.sp,
                    format!(
                        "`conv` window does not fit: with `dilation = {}` the {k}x{k} kernel spans {window}, but the input {axis} is {size} ({padded} with padding {pd}), so the output {axis} would be 0",
                        c.dilation,
                        k = c.kernel
                    ),
                    Some(help),
                );
                return inf.lost((input.len() == 3).then(|| vec![c.out, 1, 1]));
            }
            Err(e) => {
                // A groups error still has a well-defined output: continue with it.
                let cont = matches!(e, ShapeError::Groups { .. });
                inf.shape_error(
                    node,
                    "conv",
                    e,
                    &[("kernel", Some(kernel.sp)), ("groups", Some(groups.sp)), ("padding", Some(padding.sp))],
                    &input,
                    Some(c.out),
                );
                let axis_out = |axis: &'static str, i: usize| {
                    shape::window_out(
                        axis,
                        input.get(i).copied().unwrap_or(0),
                        c.kernel,
                        c.stride,
                        c.padding,
                        c.dilation,
                    )
                };
                if let (true, Ok(oh), Ok(ow)) = (cont, axis_out("height", 1), axis_out("width", 2)) {
                    return Some(inf.new_var(vec![c.out, oh, ow]));
                }
                let guess = (input.len() == 3)
                    .then(|| vec![c.out, axis_out("height", 1).unwrap_or(1), axis_out("width", 2).unwrap_or(1)]);
                return inf.lost(guess);
            }
        };
        let in_ch = input.first().copied().unwrap_or(0);
        let [_, oh, ow] = o;
        inf.note_shrink(node, "conv", &input, o, c.stride, c.kernel, c.padding, c.dilation);
        let weight = [c.out, in_ch / c.groups.max(1), c.kernel, c.kernel];
        if inf.too_big(node, out.sp, "the output", &o, "`out`")
            || inf.too_big(node, out.sp, "the weight", &weight, "`out` and `kernel`")
        {
            return inf.lost(Some(o.to_vec()));
        }
        let ident = field_ident(at.path);
        let kaiming = inf.kaiming;
        let f = inf.add_field(node, at.path, ident.clone(), Box::new(ConvField { in_ch, conv: c, oh, ow, kaiming }));
        let mut v = inf.field_op(at.input, o.to_vec(), f, node.sp);
        if bias {
            let fan_in = (in_ch / c.groups.max(1)).saturating_mul(c.kernel).saturating_mul(c.kernel);
            let fb = inf.add_field(node, at.path, format!("{ident}_bias"), Box::new(BiasField { c: c.out, fan_in }));
            v = inf.field_op(v, o.to_vec(), fb, node.sp);
        }
        let mut op = format!("conv {0}x{0}", c.kernel);
        if c.stride != 1 {
            op.push_str(&format!("/{}", c.stride));
        }
        op.push_str(&format!(" {in_ch}->{}", c.out));
        if c.groups != 1 {
            op.push_str(&format!(" g{}", c.groups));
        }
        if c.dilation != 1 {
            op.push_str(&format!(" d{}", c.dilation));
        }
        let params = inf.count(node, "parameter count", shape::conv_params(in_ch, c, bias));
        let macs = inf.count(node, "MAC count", shape::conv_macs(in_ch, c, o));
        inf.row(at.shown, op, &o, params, macs);
        Some(v)
    }
}

/// The `Conv2d` field: weights `[out, in / groups, k, k]`.
#[derive(Debug)]
struct ConvField {
    in_ch: usize,
    conv: Conv,
    oh: usize,
    ow: usize,
    kaiming: bool,
}

impl FieldType for ConvField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let c = &self.conv;
        let per_group = lit(self.in_ch / c.groups.max(1));
        let (i, o, k, s, pd, dl, g, oh, ow) = (
            lit(self.in_ch),
            lit(c.out),
            lit(c.kernel),
            lit(c.stride),
            lit(c.padding),
            lit(c.dilation),
            lit(c.groups),
            lit(self.oh),
            lit(self.ow),
        );
        let init = if self.kaiming {
            quote!(#p::runtime::init::KaimingNormalFanOut)
        } else {
            quote!(#p::runtime::init::TorchDefaultInit)
        };
        quote!(#p::layers::Conv2d<#i, #o, #k, #s, #pd, #dl, #g, #per_group, #oh, #ow, E, D, #init>)
    }

    fn plan_tensors(&self) -> Option<Vec<PlanTensor>> {
        let c = &self.conv;
        let len = c.out.checked_mul(self.in_ch / c.groups.max(1))?.checked_mul(c.kernel)?.checked_mul(c.kernel)?;
        Some(vec![PlanTensor { name: "weight", len, trainable: true }])
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        if cx.in_shape.len() != 3 {
            return None;
        }
        let plan = cx.plan;
        let c = &self.conv;
        let (x, y, w) = (lit(cx.input), lit(cx.output), lit(*cx.params.first()?));
        let (o, k, s, pd, dl, g) =
            (lit(c.out), lit(c.kernel), lit(c.stride), lit(c.padding), lit(c.dilation), lit(c.groups));
        Some(quote!(#plan::Step::Conv { input: #x, output: #y, weight: #w, geom: #plan::ConvGeom {
            out_channels: #o, kernel: #k, stride: #s, padding: #pd, dilation: #dl, groups: #g } }))
    }
}

/// A conv's bias, its own field `<conv>_bias` saved under the conv's path (`conv1.bias`).
#[derive(Debug)]
pub(super) struct BiasField {
    pub c: usize,
    pub fan_in: usize,
}

impl FieldType for BiasField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (c, f) = (lit(self.c), lit(self.fan_in));
        quote!(#p::layers::Bias2d<#c, #f, E, D>)
    }

    fn plan_tensors(&self) -> Option<Vec<PlanTensor>> {
        Some(vec![PlanTensor { name: "bias", len: self.c, trainable: true }])
    }

    fn plan_step(&self, cx: &PlanCx<'_>) -> Option<TokenStream> {
        let plan = cx.plan;
        let (x, y, b) = (lit(cx.input), lit(cx.output), lit(*cx.params.first()?));
        Some(quote!(#plan::Step::Bias { input: #x, output: #y, bias: #b }))
    }

    fn shares_layer_path(&self) -> bool {
        true
    }
}
