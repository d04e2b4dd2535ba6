//! Top level: blocks, models, their attributes and parameters.

use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Ident, LitInt, Token, Visibility};

use super::expr::Expr;
use super::kw;
use super::seq::Seq;
use crate::ctxt::Sp;

/// A whole `residual!` invocation.
///
/// ```text
/// file := item*
/// ```
#[derive(Clone, Debug)]
pub(crate) struct Input {
    pub items: Vec<Item>,
}

impl Parse for Input {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut items = Vec::new();
        while !input.is_empty() {
            items.push(input.parse()?);
        }
        Ok(Input { items })
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Item {
    Block(BlockDef),
    Model(ModelDef),
}

impl Parse for Item {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs: Attrs = input.parse()?;
        if input.peek(kw::block) {
            let kw: kw::block = input.parse()?;
            if let Some(sp) = attrs.init.as_ref().map(|i| i.1).or(attrs.zero_init) {
                return Err(sp.error("`#[init(..)]` and `#[zero_init_residual]` apply to models, not to blocks"));
            }
            let _ = kw;
            let mut block = BlockDef::parse_rest(input)?;
            block.docs = attrs.docs;
            return Ok(Item::Block(block));
        }
        let vis: Visibility = input.parse()?;
        if input.peek(kw::model) {
            return Ok(Item::Model(ModelDef::parse_rest(input, attrs, vis)?));
        }
        if matches!(vis, Visibility::Inherited) {
            Err(input.error(
                "expected `block` or `model` (e.g. `block Basic(width) { .. }` or `pub model Net[3, 32, 32] { .. }`)",
            ))
        } else {
            Err(input.error("expected `model` after the visibility (blocks are not types, they take no visibility)"))
        }
    }
}

/// Model initialisation scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Init {
    TorchDefault,
    KaimingNormal,
}

/// Outer attributes of a block or model.
///
/// ```text
/// attr := '#[' 'init' '(' ('torch_default' | 'kaiming_normal') ')' ']'
///       | '#[' 'zero_init_residual' ']'
///       | doc comment
/// ```
#[derive(Clone, Debug, Default)]
pub(crate) struct Attrs {
    pub docs: Vec<Attribute>,
    pub init: Option<(Init, Sp)>,
    pub zero_init: Option<Sp>,
}

impl Parse for Attrs {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut out = Attrs::default();
        for attr in input.call(Attribute::parse_outer)? {
            let sp = Sp::of(&attr);
            if attr.path().is_ident("doc") {
                out.docs.push(attr);
            } else if attr.path().is_ident("init") {
                let init = attr.parse_args_with(|p: ParseStream| {
                    let look = p.lookahead1();
                    if look.peek(kw::kaiming_normal) {
                        let _: kw::kaiming_normal = p.parse()?;
                        Ok(Init::KaimingNormal)
                    } else if look.peek(kw::torch_default) {
                        let _: kw::torch_default = p.parse()?;
                        Ok(Init::TorchDefault)
                    } else {
                        Err(look.error())
                    }
                })?;
                if out.init.is_some() {
                    return Err(sp.error("duplicate `#[init(..)]`"));
                }
                out.init = Some((init, sp));
            } else if attr.path().is_ident("zero_init_residual") {
                attr.meta.require_path_only()?;
                if out.zero_init.is_some() {
                    return Err(sp.error("duplicate `#[zero_init_residual]`"));
                }
                out.zero_init = Some(sp);
            } else {
                return Err(syn::Error::new_spanned(
                    attr.path(),
                    "unknown attribute; expected `#[init(kaiming_normal)]`, `#[init(torch_default)]`, `#[zero_init_residual]` or a doc comment",
                ));
            }
        }
        Ok(out)
    }
}

/// A block parameter.
///
/// ```text
/// param := Ident ('=' expr)?
/// ```
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub name: Ident,
    pub default: Option<Expr>,
}

impl Parse for Param {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name = super::plain_ident(input)?;
        let default = if input.peek(Token![=]) {
            let _: Token![=] = input.parse()?;
            Some(input.parse()?)
        } else {
            None
        };
        Ok(Param { name, default })
    }
}

/// A block template.
///
/// ```text
/// block := attr* 'block' Ident '(' params? ')' '{' seq '}'      (the parentheses may be omitted)
/// params := param (',' param)* ','?
/// ```
#[derive(Clone, Debug)]
pub(crate) struct BlockDef {
    /// The template's doc comment: shown in the docs of every model that instantiates it.
    pub docs: Vec<Attribute>,
    pub name: Ident,
    pub params: Vec<Param>,
    pub body: Seq,
}

impl BlockDef {
    fn parse_rest(input: ParseStream) -> syn::Result<Self> {
        let name = super::plain_ident(input)?;
        let params = if input.peek(syn::token::Paren) {
            let content;
            syn::parenthesized!(content in input);
            content.parse_terminated(Param::parse, Token![,])?.into_iter().collect()
        } else {
            Vec::new()
        };
        if !input.peek(syn::token::Brace) {
            return Err(input.error("expected `{` and the block's body"));
        }
        let body = Seq::parse_delimited(input, 0)?;
        Ok(BlockDef { docs: Vec::new(), name, params, body })
    }
}

/// A model: a concrete network with an input shape (without the batch dimension).
///
/// ```text
/// model := attr* vis? 'model' Ident '[' int (',' int)* ']' '{' seq '}'
/// ```
#[derive(Clone, Debug)]
pub(crate) struct ModelDef {
    pub attrs: Attrs,
    pub vis: Visibility,
    pub name: Ident,
    pub dims: Vec<LitInt>,
    pub dims_sp: Sp,
    pub body: Seq,
}

impl ModelDef {
    fn parse_rest(input: ParseStream, attrs: Attrs, vis: Visibility) -> syn::Result<Self> {
        let _: kw::model = input.parse()?;
        let name = super::plain_ident(input)?;
        if !input.peek(syn::token::Bracket) {
            return Err(
                input.error("expected the input shape in brackets, e.g. `[3, 224, 224]`, `[16, 64]` or `[128]`")
            );
        }
        let content;
        let b = syn::bracketed!(content in input);
        let dims: Vec<LitInt> =
            content.parse_terminated(|p: ParseStream| p.parse::<LitInt>(), Token![,])?.into_iter().collect();
        let dims_sp = Sp { start: b.span.open(), end: b.span.close() };
        if !input.peek(syn::token::Brace) {
            return Err(input.error("expected `{` and the model's body"));
        }
        let body = Seq::parse_delimited(input, 0)?;
        Ok(ModelDef { attrs, vis, name, dims, dims_sp, body })
    }
}
