//! `attention(heads, causal = false)`: multi-head self-attention on a sequence `[S, D]`, its
//! parameters stored and named as PyTorch's `nn.MultiheadAttention` (`in_proj_weight` `[3D, D]`,
//! `in_proj_bias`, `out_proj.weight`, `out_proj.bias`), so torchvision's ViT keys fall out.
//! `causal = true` masks the future (a decoder). The runtime's `SelfAttention` is built of dfdx
//! ops (layer by layer: plans have no attention kernel).

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, Var};
use crate::model::{Args, V};
use crate::shape::show;

pub(super) const SPECS: &[Spec] = &[Spec {
    name: "attention",
    params: &[p("heads", Dflt::Required), p("causal", Dflt::Bool(false))],
    aliases: &["multiheadattention", "multi_head_attention", "mha", "self_attention", "selfattention"],
    build,
}];

fn build(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let heads = a.size("heads", 1);
    let causal = a.boolean("causal");
    Some(Rc::new(Attention { heads: heads?, causal: causal? }))
}

#[derive(Debug)]
struct Attention {
    heads: V<usize>,
    causal: bool,
}

impl Layer for Attention {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let (node, heads) = (at.node, self.heads);
        let input = inf.shape(at.input);
        let [s, d] = match input[..] {
            [s, d] => [s, d],
            _ => {
                let what = if self.causal { "causal attention" } else { "attention" };
                let help = match input.len() {
                    3 => "attention works on a sequence of tokens: `to_tokens` turns [C, H, W] into [H*W, C] (after a strided conv, ViT's patch embedding)".to_string(),
                    _ => format!("attention works on a sequence [S, D]; the value here is {} (one token): attention over one token is a linear layer", show(&input)),
                };
                inf.err(
                    node,
                    node.sp,
                    format!("{what} expects a sequence [S, D], found {} (rank {})", show(&input), input.len()),
                    Some(help),
                );
                return inf.lost(Some(input));
            }
        };
        if d % heads.v != 0 {
            let fits: Vec<String> = (1..=d.min(64)).filter(|h| d % h == 0).map(|h| h.to_string()).collect();
            inf.err(
                node,
                heads.sp,
                format!("the model width {d} is not a multiple of `heads` = {}", heads.v),
                Some(format!(
                    "each head takes an equal share of the {d} features; heads dividing {d}: {}",
                    fits.join(", ")
                )),
            );
            return inf.lost(Some(input));
        }
        // A sequence is at most 2^31 values, so `3 * d` fits; the weight must still fit a tensor.
        let d3 = d.saturating_mul(3);
        if inf.too_big(node, node.sp, "the projection weight", &[d3, d], "the model width") {
            return inf.lost(Some(input));
        }
        let field = AttentionField { d, d3, heads: heads.v, causal: self.causal };
        let f = inf.add_field(node, at.path, field_ident(at.path), Box::new(field));
        let v = inf.field_op(at.input, input.clone(), f, node.sp);
        // 4 D^2 + 4 D parameters; per token: the projections (4 D^2) and, per head, D/H products
        // with each of the S tokens twice (scores and the weighted sum): 2 S D.
        let dd = (d as u64).checked_mul(d as u64);
        let params = dd.and_then(|dd| dd.checked_add(d as u64)).and_then(|n| n.checked_mul(4));
        let params = inf.count(node, "parameter count", params);
        let per_token = dd
            .and_then(|dd| dd.checked_mul(4))
            .and_then(|p| (s as u64).checked_mul(d as u64)?.checked_mul(2)?.checked_add(p));
        let macs = inf.count(node, "MAC count", per_token.and_then(|t| t.checked_mul(s as u64)));
        let causal = if self.causal { ", causal" } else { "" };
        inf.row(at.shown, format!("attention {d}, {} heads{causal}", heads.v), &input, params, macs);
        Some(v)
    }
}

/// The runtime's `SelfAttention<D, 3D, H, CAUSAL>`.
#[derive(Debug)]
struct AttentionField {
    d: usize,
    d3: usize,
    heads: usize,
    causal: bool,
}

impl FieldType for AttentionField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (d, d3, h, c) = (lit(self.d), lit(self.d3), lit(self.heads), self.causal);
        quote!(#p::layers::SelfAttention<#d, #d3, #h, #c, E, D>)
    }
}
