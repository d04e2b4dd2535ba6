//! Code generation: one flat struct per model with a named field per parameter-bearing layer,
//! `Module`/`ModuleMut` with every intermediate tensor type spelled out, `TensorCollection`
//! (safetensors keys = parameter paths), `BuildOnDevice`, and `ModelInfo`. Every path is
//! absolute through `::residual::__private`.

mod collection;
mod docs;
mod fallback;
mod forward;
mod info;
mod plan;

pub(crate) use fallback::{fallback, Known};

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::quote;

use crate::ir::{FieldTy, Program};
use crate::model::Model;

/// `::residual::__private`
pub(crate) fn private() -> TokenStream {
    quote!(::residual::__private)
}

pub(crate) fn dfdx() -> TokenStream {
    let p = private();
    quote!(#p::dfdx)
}

pub(crate) fn lit(n: usize) -> Literal {
    Literal::usize_unsuffixed(n)
}

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for", "if", "impl", "in",
    "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "Self", "static", "struct", "super",
    "trait", "true", "type", "unsafe", "use", "where", "while", "async", "await", "dyn", "abstract", "become", "box",
    "do", "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// Whether `s` is an identifier Rust accepts (non-ASCII ones included, as in `日本` or `π`), not
/// a keyword and not `_`: what every generated field and variable name must be.
pub(crate) fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s != "_"
        && !KEYWORDS.contains(&s)
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && syn::parse_str::<syn::Ident>(s).is_ok_and(|i| i == s)
}

/// An identifier that cannot make `Ident::new` panic: invalid strings map to a fixed name (names
/// are parsed as identifiers and `validate::check_fields` rejects a field name that is not one,
/// so this cannot reach generated code, but the macro must never panic).
pub(crate) fn ident(s: &str) -> Ident {
    if valid_ident(s) {
        Ident::new(s, Span::call_site())
    } else {
        Ident::new("__residual_invalid_name", Span::call_site())
    }
}

/// The tensor type `Tensor<(B, Const<..>, ..), E, D, T>` for a shape without batch.
pub(crate) fn tensor_ty(shape: &[usize]) -> TokenStream {
    let d = dfdx();
    let dims = shape.iter().map(|n| {
        let n = lit(*n);
        quote!(#d::shapes::Const<#n>)
    });
    quote!(#d::tensor::Tensor<(B, #(#dims,)*), E, D, T>)
}

/// The type of a field.
pub(crate) fn field_ty(ty: &FieldTy) -> TokenStream {
    let p = private();
    let d = dfdx();
    match ty {
        FieldTy::Conv { in_ch, conv, oh, ow, kaiming } => {
            let per_group = lit(in_ch / conv.groups.max(1));
            let (i, o, k, s, pd, dl, g, oh, ow) = (
                lit(*in_ch),
                lit(conv.out),
                lit(conv.kernel),
                lit(conv.stride),
                lit(conv.padding),
                lit(conv.dilation),
                lit(conv.groups),
                lit(*oh),
                lit(*ow),
            );
            let init = if *kaiming {
                quote!(#p::runtime::init::KaimingNormalFanOut)
            } else {
                quote!(#p::runtime::init::TorchDefaultInit)
            };
            quote!(#p::layers::Conv2d<#i, #o, #k, #s, #pd, #dl, #g, #per_group, #oh, #ow, E, D, #init>)
        }
        FieldTy::Bias2d { c, fan_in } => {
            let (c, f) = (lit(*c), lit(*fan_in));
            quote!(#p::layers::Bias2d<#c, #f, E, D>)
        }
        FieldTy::Bn { c, zero_gamma } => {
            let c = lit(*c);
            quote!(#p::layers::BatchNorm2d<#c, E, D, #zero_gamma>)
        }
        FieldTy::Linear { i, o, bias } => {
            let (i, o) = (lit(*i), lit(*o));
            if *bias {
                quote!(#d::nn::modules::Linear<#i, #o, E, D>)
            } else {
                quote!(#d::nn::modules::UnbiasedLinear<#i, #o, E, D>)
            }
        }
        FieldTy::LayerNorm { m } => {
            let m = lit(*m);
            quote!(#p::layers::LayerNorm<#m, E, D>)
        }
    }
}

/// Everything generated for one model.
pub(crate) fn model(m: &Model, prog: &Program) -> TokenStream {
    let d = dfdx();
    let name = &m.name;
    let vis = &m.vis;
    let docs = &m.docs;
    let shown = docs::model_docs(m, prog);
    let fields = prog.fields.iter().map(|f| {
        let id = ident(&f.ident);
        let ty = field_ty(&f.ty);
        let doc = format!(" `{}`", f.path);
        quote!(#[doc = #doc] pub #id: #ty)
    });
    let marker = if prog.fields.is_empty() {
        quote!(#[doc(hidden)] pub _marker: ::core::marker::PhantomData<(E, D)>,)
    } else {
        quote!()
    };
    let module = forward::module_impls(m, prog);
    let collection = collection::collection_impl(m, prog);
    let info = info::info_impl(m, prog);
    quote! {
        #(#docs)*
        #shown
        #[derive(Clone, Debug)]
        #vis struct #name<E: #d::shapes::Dtype = f32, D: #d::tensor_ops::Device<E> = #d::tensor::Cpu> {
            #(#fields,)*
            #marker
        }
        #module
        #collection
        #info
    }
}
