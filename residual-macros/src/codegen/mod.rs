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

use proc_macro2::{Group, Ident, Literal, Span, TokenStream, TokenTree};
use quote::quote;

use crate::ctxt::Sp;
use crate::ir::Program;
use crate::model::Model;

/// `::residual::__private`
pub(crate) fn private() -> TokenStream {
    quote!(::residual::__private)
}

pub(crate) fn dfdx() -> TokenStream {
    let p = private();
    quote!(#p::dfdx)
}

/// `tokens` with every span located at the user's token `sp` (name resolution stays the
/// macro's call site): when rustc's own check of a generated statement fails (a tensor type
/// that does not match), it underlines the layer the user wrote, not the macro invocation.
pub(crate) fn at_user(sp: Sp, tokens: TokenStream) -> TokenStream {
    respan(tokens, Span::call_site().located_at(sp.start))
}

fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
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
    tensor_ty_of(shape, quote!(E))
}

/// The token-id tensor `Tensor<(B, Const<..>, ..), usize, D, T>` of a model that reads ids.
pub(crate) fn ids_ty(shape: &[usize]) -> TokenStream {
    tensor_ty_of(shape, quote!(usize))
}

fn tensor_ty_of(shape: &[usize], elem: TokenStream) -> TokenStream {
    let d = dfdx();
    let dims = shape.iter().map(|n| {
        let n = lit(*n);
        quote!(#d::shapes::Const<#n>)
    });
    quote!(#d::tensor::Tensor<(B, #(#dims,)*), #elem, D, T>)
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
        let ty = f.ty.rust_type();
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
