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
                        ids: built.is_some_and(|(_, (p, _))| p.token_input.is_some()),
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

/// Expansion and shape inference of every model (`model::build_model`, `infer`), with every
/// error in the returned context. A block that reads its input's shape (`in_channels`, ..) is
/// expanded once that shape is known: a pass over its model that finds such instances records
/// what flows into them, and the next pass over that model (a fresh one, so nothing is reported
/// twice) expands them with it. Models without such blocks take one pass; other models of the
/// invocation are not expanded again.
pub(crate) fn lower(parsed: &parse::Input) -> (Vec<model::Model>, Vec<Inferred>, ctxt::Ctxt) {
    let mut cx = ctxt::Ctxt::new();
    let items = model::check_items(parsed, &mut cx);
    let (mut models, mut inferred) = (Vec::new(), Vec::new());
    // Model by model, so that only a model with such blocks is expanded again.
    for def in &items.models {
        let mut known = model::KnownInputs::new();
        let mut passes = 0;
        loop {
            passes += 1;
            let mut model_cx = ctxt::Ctxt::new();
            let built = model::build_model(&items, def, &mut model_cx, &known);
            let result = built.as_ref().map(|m| infer::infer_with_output(m, &mut model_cx));
            let needs: &[(String, Vec<usize>, ctxt::Sp)] = result.as_ref().map_or(&[], |(prog, _)| &prog.needs_input);
            let mut learnt = false;
            for (path, shape, _) in needs {
                if let std::collections::hash_map::Entry::Vacant(e) = known.entry((def.name.to_string(), path.clone()))
                {
                    e.insert(shape.clone());
                    learnt = true;
                }
            }
            // A chain of MAX_PASSES blocks is expanded by pass MAX_PASSES + 1; one more is too many.
            let too_many = learnt && passes > MAX_PASSES;
            if learnt && !too_many {
                // A partial expansion: its errors are the next pass's to report.
                let _ = model_cx.check();
                continue;
            }
            if let Some((path, _, sp)) = needs.first() {
                if too_many {
                    model_cx.error(
                        *sp,
                        format!(
                            "more than {MAX_PASSES} blocks in sequence read their input's shape (`in_channels`, ..); `{path}` is one too many"
                        ),
                    );
                } else if model_cx.is_empty() {
                    // Still unexpanded with nothing learnt: its input is unknown, which an error
                    // explains; without one this is a bug.
                    model_cx.error(*sp, format!("internal error: block instance `{path}` was never expanded"));
                }
            }
            cx.absorb(model_cx);
            if let (Some(m), Some(r)) = (built, result) {
                models.push(m);
                inferred.push(r);
            }
            break;
        }
    }
    (models, inferred, cx)
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
                    // Unknown after a parse error: a float input (a model on token ids gets a
                    // follow-on type error here, beside the parse error that explains it).
                    ids: false,
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
