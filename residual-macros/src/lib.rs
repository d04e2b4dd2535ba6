//! The `residual!` macro: declare residual networks, get statically shaped dfdx modules.
//!
//! # Grammar
//!
//! ```text
//! file      := item*
//! item      := attr* 'block' Ident ('(' params? ')')? '{' seq '}'
//!            | attr* vis? 'model' Ident '[' int (',' int)* ']' '{' seq '}'
//! attr      := '#[' 'init' '(' ('torch_default' | 'kaiming_normal') ')' ']'
//!            | '#[' 'zero_init_residual' ']'               (models only)
//!            | doc comment                                  (copied onto the struct)
//! params    := param (',' param)* ','?         param := Ident ('=' expr)?
//! seq       := step ('->' step)*
//! step      := (Ident ':')? unit ('x' expr ('(' 'first' ':' args ')')?)?
//! unit      := Ident ('(' args? ')')?                       a built-in layer or a user block
//!            | '(' seq ')'                                  a sub-sequence
//!            | 'residual' '{' seq '}' shortcut?
//!            | 'tap' '(' Ident ')' | 'add' '(' Ident ')' | 'cat' '(' Ident ')'
//! shortcut  := 'shortcut' (Ident ':')? ('identity' | 'auto' | 'pad' | '{' seq '}')
//! args      := arg (',' arg)* ','?             arg := expr | Ident '=' expr
//! expr      := integer arithmetic (+ - * / % parentheses) on literals and block parameters;
//!              `true` / `false`; float literals (dropout `p`, leaky_relu `slope`)
//! ```
//!
//! Ops after a residual's addition are simply the following steps: `residual { .. } -> relu`.
//!
//! ## Semantics decided here
//!
//! - Arguments bind by position, then by name; block parameter defaults may use earlier
//!   parameters (`block B(w, out = 4 * w)`).
//! - `x N (first: k = v, ..)` overrides named arguments of copy 0 of a block or layer call.
//! - `linear(out)` infers its input size from the last dim of the value flowing in, so it takes
//!   `[D]` or `[S, D]`; on `[C, H, W]` it is an error whose help says to add `global_avgpool ->`
//!   or `flatten ->` first. `layernorm` likewise normalises the last dim of `[D]` / `[S, D]`.
//! - `flatten` turns any rank into `[N]`. `global_avgpool` is `[C, H, W] -> [C]`.
//! - `shortcut auto` on a body that keeps the shape is the identity; otherwise a 1x1 conv (with
//!   the body's stride) and a batch norm at `downsample.0` / `downsample.1`. It needs
//!   `[C, H, W]` values; for `[S, D]` write `shortcut { linear(D2, bias = false) }`.
//! - `shortcut pad` subsamples by the body's stride and zero-pads channels, half in front.
//! - Taps are scoped to one block instance (or the model body): `tap(s)` binds the current
//!   value, `add(s)` adds it (same shape), `cat(s)` concatenates `[tapped, current]` along
//!   channels (same spatial size): torchvision's DenseNet order, `torch.cat([old, new], 1)`, so
//!   its weights map channel for channel.
//! - Parameter paths: a named step contributes its name, an unnamed one its index in the
//!   sequence, `x N` copies `0..N`; an unnamed, unrepeated `residual` is transparent; a
//!   projection shortcut is `downsample` unless named. Struct fields are the paths with `.`
//!   replaced by `_` (`_`-prefixed when they start with a digit); a conv's bias is a second
//!   field `<conv>_bias` saved under the conv's own path (`conv1.bias`).
//! - `#[zero_init_residual]` sets `ZERO_GAMMA` on the last batch norm of every residual body;
//!   `#[init(kaiming_normal)]` gives every conv torchvision's fan-out Kaiming normal init.
//! - Errors inside a block template are reported at the template's token, with the instance
//!   (`in `layer2.0` (Bottleneck(128, stride = 2))`) in the message, plus one error at the call
//!   site. Identical errors from several instances are merged.
//!
//! # Pipeline
//!
//! `parse/` (syn) -> `model.rs` (instantiate blocks, names, arguments) -> `infer.rs` (shapes,
//! lowering) + `validate.rs` -> `codegen/`. Errors are collected in `ctxt::Ctxt`, sorted by
//! position, and emitted after one fallback per model (`codegen/fallback.rs`: a type of the
//! model's name that builds, runs forward with the declared input and output types where they
//! are known, and implements `TensorCollection` and `ModelInfo`, so user code adds no errors).

mod codegen;
mod ctxt;
mod infer;
mod ir;
mod model;
mod parse;
mod shape;
mod validate;

use proc_macro2::{TokenStream, TokenTree};

// The grammar and the layer table, from the one file that holds them.
#[doc = include_str!("../../docs/GRAMMAR.md")]
#[proc_macro]
pub fn residual(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand(input.into()).into()
}

/// The whole expansion on `proc_macro2` types (unit-testable without the proc-macro boundary).
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let parsed: parse::Input = match syn::parse2(input.clone()) {
        Ok(p) => p,
        Err(e) => {
            let mut out = fallbacks_from_tokens(input);
            out.extend(e.to_compile_error());
            return out;
        }
    };
    let mut cx = ctxt::Ctxt::new();
    let models = model::build(&parsed, &mut cx);
    let inferred: Vec<(ir::Program, Option<Vec<usize>>)> =
        models.iter().map(|m| infer::infer_with_output(m, &mut cx)).collect();
    for (prog, _) in &inferred {
        validate::validate(prog, &mut cx);
    }
    match cx.check() {
        Ok(()) => models.iter().zip(&inferred).map(|(m, (p, _))| codegen::model(m, p)).collect(),
        Err(errors) => {
            let mut out = TokenStream::new();
            let mut seen: Vec<String> = Vec::new();
            for item in &parsed.items {
                if let parse::Item::Model(m) = item {
                    // One fallback per name: a duplicate model is already an error of its own.
                    let name = m.name.to_string();
                    if seen.contains(&name) {
                        continue;
                    }
                    seen.push(name);
                    let built = models.iter().zip(&inferred).find(|(b, _)| b.name == m.name);
                    out.extend(codegen::fallback(&codegen::Known {
                        vis: &m.vis,
                        name: &m.name,
                        docs: &m.attrs.docs,
                        input: built.map(|(b, _)| b.input.as_slice()),
                        output: built.and_then(|(_, (_, o))| o.as_deref()),
                    }));
                }
            }
            for e in errors {
                out.extend(e.to_compile_error());
            }
            out
        }
    }
}

/// After a parse error, still declare the models we can see (`model Name`, with the input shape
/// when `[..]` follows and holds plain integers), so that the user's other code does not cascade
/// into "cannot find type" errors.
fn fallbacks_from_tokens(input: TokenStream) -> TokenStream {
    let tokens: Vec<TokenTree> = input.into_iter().collect();
    let mut out = TokenStream::new();
    let mut seen: Vec<String> = Vec::new();
    let vis: syn::Visibility = syn::parse_quote!(pub);
    for (i, pair) in tokens.windows(2).enumerate() {
        if let [TokenTree::Ident(kw), TokenTree::Ident(name)] = pair {
            let n = name.to_string();
            if kw == "model" && !n.starts_with("r#") && !seen.contains(&n) {
                seen.push(n);
                let dims = match tokens.get(i + 2) {
                    Some(TokenTree::Group(g)) if g.delimiter() == proc_macro2::Delimiter::Bracket => {
                        input_dims(g.stream())
                    }
                    _ => None,
                };
                out.extend(codegen::fallback(&codegen::Known {
                    vis: &vis,
                    name,
                    docs: &[],
                    input: dims.as_deref(),
                    output: None,
                }));
            }
        }
    }
    out
}

/// `3, 224, 224` as dims, when it is a valid input shape.
fn input_dims(ts: TokenStream) -> Option<Vec<usize>> {
    let list =
        syn::parse::Parser::parse2(syn::punctuated::Punctuated::<syn::LitInt, syn::Token![,]>::parse_terminated, ts)
            .ok()?;
    let dims: Vec<usize> = list
        .iter()
        .map(|l| match l.base10_parse::<usize>() {
            Ok(v) if v >= 1 && v as i128 <= model::MAX_SIZE && l.suffix().is_empty() => Some(v),
            _ => None,
        })
        .collect::<Option<_>>()?;
    (1..=3).contains(&dims.len()).then_some(dims)
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
