//! Sequence plumbing, what a transformer needs around its blocks:
//! - `to_tokens`: `[C, H, W] -> [H*W, C]` (after a strided conv, ViT's patch embedding);
//! - `class_token`: a learned token put first, `[S, D] -> [S+1, D]` (key `<block>.class_token`);
//! - `pos_embedding(len = S)`: a learned position embedding added (key `<block>.pos_embedding`,
//!   `[1, len, D]`; a shorter sequence gets the first `S` positions);
//! - `embedding(num, dim)`: token ids `[S]` (the model's input) to vectors `[S, dim]`;
//! - `token(index = 0)`: `[S, D] -> [D]`, one token (ViT's class token); `global_avgpool` on
//!   `[S, D]` is the mean over tokens (`pool.rs`);
//! - `unembed`: `[S, D] -> [S, num]` by the model's token embedding, transposed (a tied LM head).
//!
//! None has a plan kernel: a model holding one runs layer by layer.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{p, Dflt, Layer, Spec};
use crate::codegen::{dfdx, ident, lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, ForwardCx, OpCode, TokenInput, Var};
use crate::model::{Args, V};
use crate::shape::show;

pub(super) const SPECS: &[Spec] = &[
    Spec {
        name: "to_tokens",
        params: &[],
        aliases: &["tokens", "image_to_tokens", "patches_to_tokens"],
        build: |_| Some(Rc::new(ToTokens)),
    },
    Spec { name: "class_token", params: &[], aliases: &["cls_token"], build: |_| Some(Rc::new(ClassToken)) },
    Spec {
        name: "pos_embedding",
        params: &[p("len", Dflt::Inferred("S"))],
        aliases: &["pos_embed", "position_embedding", "positional_embedding"],
        build: build_pos,
    },
    Spec {
        name: "embedding",
        params: &[p("num", Dflt::Required), p("dim", Dflt::Required)],
        aliases: &["embed", "token_embedding"],
        build: build_embedding,
    },
    Spec {
        name: "token",
        params: &[p("index", Dflt::Int(0))],
        aliases: &["select_token", "take_token", "cls_pool"],
        build: build_token,
    },
    Spec { name: "unembed", params: &[], aliases: &["tied_head", "lm_head"], build: |_| Some(Rc::new(Unembed)) },
];

/// The sequence `[S, D]` flowing into `op`, or an error saying how to get one.
fn sequence(inf: &mut Infer<'_>, at: &LayerAt<'_>, op: &str) -> Option<[usize; 2]> {
    let input = inf.shape(at.input);
    if let [s, d] = input[..] {
        return Some([s, d]);
    }
    let help = match input.len() {
        3 => format!("`{op}` works on a sequence of tokens: `to_tokens ->` turns [C, H, W] into [H*W, C]"),
        _ => format!("`{op}` works on a sequence [S, D]; the value here is {} (one vector)", show(&input)),
    };
    inf.err(
        at.node,
        at.node.sp,
        format!("`{op}` expects a sequence [S, D], found {} (rank {})", show(&input), input.len()),
        Some(help),
    );
    None
}

/// A parameter that belongs to the enclosing block (as torchvision's ViT has `class_token` on the
/// model and `pos_embedding` on its encoder), whatever the step's own name or index: the field's
/// path is the block's (`""` at the model's top level; the runtime names the tensor) and its key
/// `<block path>.<name>`.
fn block_param(path: &str, name: &str) -> (String, String) {
    match path.rsplit_once('.') {
        Some((parent, _)) => (parent.to_string(), format!("{parent}.{name}")),
        None => (String::new(), name.to_string()),
    }
}

#[derive(Debug)]
struct ToTokens;

impl Layer for ToTokens {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let [c, h, w] = match input[..] {
            [c, h, w] => [c, h, w],
            _ => {
                inf.err(
                    at.node,
                    at.node.sp,
                    format!("`to_tokens` expects an image [C, H, W], found {} (rank {})", show(&input), input.len()),
                    Some("it turns each pixel of a map into a token of C features; a sequence needs nothing".into()),
                );
                return inf.lost(None);
            }
        };
        // [C, H, W] holds at most 2^31 values, so `H * W` fits.
        let o = vec![h.saturating_mul(w), c];
        let v = inf.layer_op(at.input, o.clone(), Rc::new(ToTokensCode), at.node.sp);
        inf.row(at.shown, "to_tokens".into(), &o, 0, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct ToTokensCode;

impl OpCode for ToTokensCode {
    /// `[B, C, H, W] -> [B, C, H*W] -> [B, H*W, C]`, as `x.flatten(2).transpose(1, 2)`.
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x) = (dfdx(), cx.x);
        let [s, c] = cx.output[..] else { return quote!(#x) };
        let (s, c) = (lit(s), lit(c));
        quote!({
            let batch = #d::shapes::HasShape::shape(&#x).0;
            let flat = #d::tensor_ops::ReshapeTo::try_reshape_like(#x, &(batch, #d::shapes::Const::<#c>, #d::shapes::Const::<#s>))?;
            #d::tensor_ops::PermuteTo::try_permute::<_, #d::shapes::Axes3<0, 2, 1>>(flat)?
        })
    }
}

#[derive(Debug)]
struct ClassToken;

impl Layer for ClassToken {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let Some([s, d]) = sequence(inf, at, "class_token") else {
            let guess = inf.shape(at.input);
            return inf.lost(Some(guess));
        };
        let o = vec![s.saturating_add(1), d];
        if inf.too_big(at.node, at.node.sp, "the output", &o, "the sequence") {
            return inf.lost(Some(o));
        }
        let (parent, key) = block_param(at.path, "class_token");
        let f = inf.add_field(at.node, &parent, field_ident(&key), Box::new(ClassTokenField { s1: s + 1, d }));
        let v = inf.field_op(at.input, o.clone(), f, at.node.sp);
        inf.row(&key, "class_token".into(), &o, d as u64, 0);
        Some(v)
    }
}

/// The runtime's `ClassToken<D>`; its output's middle dim is a runtime `S + 1`, made `Const` here.
#[derive(Debug)]
struct ClassTokenField {
    s1: usize,
    d: usize,
}

impl FieldType for ClassTokenField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let d = lit(self.d);
        quote!(#p::layers::ClassToken<#d, E, D>)
    }

    fn forward(&self, field: &TokenStream, cx: &ForwardCx<'_>) -> Option<TokenStream> {
        let (d, x) = (dfdx(), cx.x);
        let (s1, m) = (lit(self.s1), lit(self.d));
        Some(quote!({
            let batch = #d::shapes::HasShape::shape(&#x).0;
            let longer = #d::nn::Module::try_forward(&#field, #x)?;
            #d::tensor_ops::ReshapeTo::try_reshape_like(longer, &(batch, #d::shapes::Const::<#s1>, #d::shapes::Const::<#m>))?
        }))
    }
}

fn build_pos(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let len = a.size_or_inferred("len", 1)?;
    Some(Rc::new(PosEmbedding { len }))
}

#[derive(Debug)]
struct PosEmbedding {
    /// The positions stored; `None`: the sequence's length.
    len: Option<V<usize>>,
}

impl Layer for PosEmbedding {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let Some([s, d]) = sequence(inf, at, "pos_embedding") else {
            return inf.lost(Some(input));
        };
        let len = match self.len {
            Some(len) if len.v < s => {
                inf.err(
                    at.node,
                    len.sp,
                    format!("a position embedding of {} positions does not fit a sequence of {s} tokens", len.v),
                    Some(format!(
                        "give it at least {s} positions (`len = {s}`), or leave `len` out to fit the sequence"
                    )),
                );
                return inf.lost(Some(input));
            }
            Some(len) => len.v,
            None => s,
        };
        if inf.too_big(at.node, at.node.sp, "the position embedding", &[len, d], "`len`") {
            return inf.lost(Some(input));
        }
        let (parent, key) = block_param(at.path, "pos_embedding");
        let f = inf.add_field(at.node, &parent, field_ident(&key), Box::new(PosEmbeddingField { len, d }));
        let v = inf.field_op(at.input, input.clone(), f, at.node.sp);
        let params = inf.count(at.node, "parameter count", (len as u64).checked_mul(d as u64));
        inf.row(&key, format!("pos_embedding {len}x{d}"), &input, params, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct PosEmbeddingField {
    len: usize,
    d: usize,
}

impl FieldType for PosEmbeddingField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (l, d) = (lit(self.len), lit(self.d));
        quote!(#p::layers::PosEmbedding<#l, #d, E, D>)
    }
}

fn build_embedding(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let num = a.size("num", 1);
    let dim = a.size("dim", 1);
    Some(Rc::new(Embedding { num: num?, dim: dim? }))
}

#[derive(Debug)]
struct Embedding {
    num: V<usize>,
    dim: V<usize>,
}

impl Layer for Embedding {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let (node, num, dim) = (at.node, self.num, self.dim);
        let input = inf.shape(at.input);
        let guess = input.first().map(|s| vec![*s, dim.v]);
        // Token ids are integers: they can only be the model's input, read by this layer.
        if at.input != 0 || inf.token_input().is_some() {
            inf.err(
                node,
                node.sp,
                "`embedding` reads token ids, and only the model's input holds them",
                Some("make it the model's first layer: `model Gpt[64] { wte: embedding(50257, 768) -> .. }`".into()),
            );
            return inf.lost(guess);
        }
        let [s] = input[..] else {
            inf.err(
                node,
                node.sp,
                format!("`embedding` reads a sequence of token ids [S]; the model's input is {}", show(&input)),
                Some("declare the model on its sequence length: `model Gpt[64] { .. }` takes 64 ids per sample".into()),
            );
            return inf.lost(guess);
        };
        let o = vec![s, dim.v];
        if inf.too_big(node, dim.sp, "the output", &o, "`dim`")
            || inf.too_big(node, num.sp, "the table", &[num.v, dim.v], "`num`")
        {
            return inf.lost(Some(o));
        }
        let f = inf.add_field(node, at.path, field_ident(at.path), Box::new(EmbeddingField { num: num.v, dim: dim.v }));
        inf.set_token_input(TokenInput { field: f, num: num.v, dim: dim.v });
        let v = inf.field_op(at.input, o.clone(), f, node.sp);
        let params = inf.count(node, "parameter count", (num.v as u64).checked_mul(dim.v as u64));
        inf.row(at.shown, format!("embedding {}x{}", num.v, dim.v), &o, params, 0);
        Some(v)
    }
}

/// dfdx's `Embedding` (key `<path>.weight`, `[num, dim]`).
#[derive(Debug)]
struct EmbeddingField {
    num: usize,
    dim: usize,
}

impl FieldType for EmbeddingField {
    fn rust_type(&self) -> TokenStream {
        let d = dfdx();
        let (n, m) = (lit(self.num), lit(self.dim));
        quote!(#d::nn::modules::Embedding<#n, #m, E, D>)
    }

    /// The ids are checked against the table first (`check_token_ids` panics naming a bad one).
    fn forward(&self, field: &TokenStream, cx: &ForwardCx<'_>) -> Option<TokenStream> {
        let (d, p, x, n) = (dfdx(), private(), cx.x, lit(self.num));
        Some(quote!({
            #p::layers::check_token_ids(&#x, #n);
            #d::nn::Module::try_forward(&#field, #x)?
        }))
    }
}

fn build_token(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let index = a.size("index", 0)?;
    Some(Rc::new(Token { index }))
}

#[derive(Debug)]
struct Token {
    index: V<usize>,
}

impl Layer for Token {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let Some([s, d]) = sequence(inf, at, "token") else {
            let guess = inf.shape(at.input).last().map(|d| vec![*d]);
            return inf.lost(guess);
        };
        if self.index.v >= s {
            inf.err(
                at.node,
                self.index.sp,
                format!("token {} of a sequence of {s} tokens (they are numbered from 0)", self.index.v),
                Some("ViT's class token is `token(0)`; `global_avgpool` takes the mean over tokens".into()),
            );
            return inf.lost(Some(vec![d]));
        }
        let v = inf.layer_op(at.input, vec![d], Rc::new(TokenCode { index: self.index.v }), at.node.sp);
        inf.row(at.shown, format!("token {}", self.index.v), &[d], 0, 0);
        Some(v)
    }
}

#[derive(Debug)]
struct TokenCode {
    index: usize,
}

impl OpCode for TokenCode {
    /// `x[:, index]`.
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x) = (dfdx(), cx.x);
        let [m] = cx.output[..] else { return quote!(#x) };
        let (i, next, m) = (lit(self.index), lit(self.index + 1), lit(m));
        quote!({
            let batch = #d::shapes::HasShape::shape(&#x).0;
            let one = #x.try_slice((.., #i..#next, ..))?;
            #d::tensor_ops::ReshapeTo::try_reshape_like(one, &(batch, #d::shapes::Const::<#m>))?
        })
    }
}

#[derive(Debug)]
struct Unembed;

impl Layer for Unembed {
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let Some(table) = inf.token_input() else {
            inf.err(
                at.node,
                at.node.sp,
                "`unembed` multiplies by the model's token embedding, and this model has none",
                Some("a model reading token ids starts with `embedding(num, dim)`; otherwise write `linear(num, bias = false)`".into()),
            );
            return inf.lost(None);
        };
        let d = match input[..] {
            [d] | [_, d] => d,
            _ => {
                inf.err(
                    at.node,
                    at.node.sp,
                    format!("`unembed` expects [S, D] or [D], found {} (rank {})", show(&input), input.len()),
                    None,
                );
                return inf.lost(None);
            }
        };
        let mut o = input.clone();
        if let Some(last) = o.last_mut() {
            *last = table.num;
        }
        if d != table.dim {
            inf.err(
                at.node,
                at.node.sp,
                format!(
                    "`unembed` uses the token embedding's {}x{} table, but the value here has {d} features",
                    table.num, table.dim
                ),
                Some(format!(
                    "the value must have the embedding's width {} here (a `linear({})` first)",
                    table.dim, table.dim
                )),
            );
            return inf.lost(Some(o));
        }
        if inf.too_big(at.node, at.node.sp, "the output", &o, "the embedding's `num`") {
            return inf.lost(Some(o));
        }
        let embedding = inf.field_ident_of(table.field);
        let v = inf.layer_op(at.input, o.clone(), Rc::new(UnembedCode { embedding }), at.node.sp);
        let tokens = if input.len() == 2 { input.first().copied().unwrap_or(1) } else { 1 };
        let macs = (tokens as u64).checked_mul(d as u64).and_then(|n| n.checked_mul(table.num as u64));
        let macs = inf.count(at.node, "MAC count", macs);
        inf.row(at.shown, format!("unembed {d}->{} (tied)", table.num), &o, 0, macs);
        Some(v)
    }
}

/// `x @ embedding.weight^T`: the embedding's own tensor (its gradient collects both uses).
#[derive(Debug)]
struct UnembedCode {
    /// The struct field of the model's `embedding`.
    embedding: String,
}

impl OpCode for UnembedCode {
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream {
        let (d, x, f) = (dfdx(), cx.x, ident(&self.embedding));
        quote!({
            let table = self.#f.weight.retaped::<T>();
            let table = #d::tensor_ops::PermuteTo::try_permute::<_, #d::shapes::Axes2<1, 0>>(table)?;
            #d::tensor_ops::TryMatMul::try_matmul(#x, table)?
        })
    }
}
