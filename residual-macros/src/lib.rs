//! The `residual!` macro: declare residual networks, get statically shaped dfdx modules.
//!
//! The language (grammar, layers, shortcuts, taps, parameter paths, errors) is
//! `docs/GRAMMAR.md`, which is also the rustdoc of the `residual!` macro itself.
//!
//! # Pipeline
//!
//! `parse/` (syn) -> `model/` (evaluate, bind, expand blocks: names, arguments, paths) ->
//! `infer.rs` (shapes, lowering to `ir.rs`) -> `validate.rs` -> `codegen/`. Each built-in layer
//! lives in its family's file under `layers/` (arguments, shape rule, counts, summary text,
//! generated code). Errors are collected in `ctxt::Ctxt`, sorted by position, and emitted after
//! one fallback per model (`codegen/fallback.rs`: a type of the model's name that builds, runs
//! forward with the declared input and output types where they are known, and implements
//! `TensorCollection` and `ModelInfo`, so user code adds no errors).

mod codegen;
mod ctxt;
mod infer;
mod ir;
mod layers;
mod model;
mod parse;
mod shape;
mod suggest;
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
    let (models, inferred, mut cx) = lower(&parsed);
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

/// A model's program and its output shape (known even after some errors).
type Inferred = (ir::Program, Option<Vec<usize>>);

/// Most blocks in sequence that read their input's shape: each pass learns the inputs of the
/// instances whose inputs the previous one could infer, so a chain of N such blocks takes N + 1
/// passes (MobileNetV2 has 17).
const MAX_PASSES: usize = 256;

/// Expansion and shape inference of every model (`model::build`, `infer`), with every error in
/// the returned context. A block that reads its input's shape (`in_channels`, ..) is expanded
/// once that shape is known: a pass that finds such instances records what flows into them, and
/// the next pass (a fresh one, so nothing is reported twice) expands them with it. Models
/// without such blocks take one pass.
pub(crate) fn lower(parsed: &parse::Input) -> (Vec<model::Model>, Vec<Inferred>, ctxt::Ctxt) {
    let mut known = model::KnownInputs::new();
    let mut passes = 0;
    loop {
        passes += 1;
        let mut cx = ctxt::Ctxt::new();
        let models = model::build(parsed, &mut cx, &known);
        let inferred: Vec<Inferred> = models.iter().map(|m| infer::infer_with_output(m, &mut cx)).collect();
        let mut learnt = false;
        for (m, (prog, _)) in models.iter().zip(&inferred) {
            for (path, shape, _) in &prog.needs_input {
                if let std::collections::hash_map::Entry::Vacant(e) = known.entry((m.name.to_string(), path.clone())) {
                    e.insert(shape.clone());
                    learnt = true;
                }
            }
        }
        if !learnt {
            // What is still unexpanded had an unknown input, which an error explains.
            if cx.is_empty() {
                if let Some((path, _, sp)) = inferred.iter().find_map(|(prog, _)| prog.needs_input.first()) {
                    cx.error(*sp, format!("internal error: block instance `{path}` was never expanded"));
                }
            }
            return (models, inferred, cx);
        }
        // A chain of MAX_PASSES blocks is expanded by pass MAX_PASSES + 1; one more is too many.
        if passes > MAX_PASSES {
            if let Some((path, _, sp)) = inferred.iter().find_map(|(prog, _)| prog.needs_input.first()) {
                cx.error(
                    *sp,
                    format!(
                        "more than {MAX_PASSES} blocks in sequence read their input's shape (`in_channels`, ..); `{path}` is one too many"
                    ),
                );
            }
            return (models, inferred, cx);
        }
        // This pass's errors are those of a partial expansion: the next pass reports its own.
        let _ = cx.check();
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
