//! Parsing: one `Parse` impl per grammar node, the accepted grammar in each node's doc comment.
//! The whole language is in `docs/GRAMMAR.md`; these types keep the tokens they came from so
//! later stages can report errors at the user's tokens.

mod expr;
mod item;
mod seq;

pub(crate) use expr::{Arg, BinOp, Expr};
pub(crate) use item::{BlockDef, Init, Input, Item, ModelDef};
pub(crate) use seq::{Seq, ShortcutKind, Step, TapKind, Unit};

/// The language's keywords (contextual: they are ordinary identifiers elsewhere).
pub(crate) mod kw {
    syn::custom_keyword!(block);
    syn::custom_keyword!(model);
    syn::custom_keyword!(residual);
    syn::custom_keyword!(gate);
    syn::custom_keyword!(shortcut);
    syn::custom_keyword!(identity);
    syn::custom_keyword!(auto);
    syn::custom_keyword!(pad);
    syn::custom_keyword!(optional);
    syn::custom_keyword!(tap);
    syn::custom_keyword!(add);
    syn::custom_keyword!(cat);
    syn::custom_keyword!(x);
    syn::custom_keyword!(first);
    syn::custom_keyword!(init);
    syn::custom_keyword!(zero_init_residual);
    syn::custom_keyword!(torch_default);
    syn::custom_keyword!(kaiming_normal);
}

/// Parses a name the user gives (layer, block, model, parameter, tap): a plain identifier.
/// Raw identifiers (`r#type`) are refused: names become struct fields and safetensors keys.
pub(crate) fn plain_ident(input: syn::parse::ParseStream) -> syn::Result<syn::Ident> {
    let ident: syn::Ident = input.parse()?;
    if ident.to_string().starts_with("r#") {
        return Err(syn::Error::new(ident.span(), "raw identifiers are not allowed as names here"));
    }
    Ok(ident)
}

#[cfg(test)]
mod tests;
