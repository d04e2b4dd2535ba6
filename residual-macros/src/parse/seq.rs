//! Sequences, steps, units and shortcuts.

use syn::parse::{Parse, ParseStream};
use syn::{Ident, Token};

use super::expr::{parse_args, Arg, Expr};
use super::kw;
use crate::ctxt::Sp;

/// Steps chained by arrows; always the whole content of a `{}` or `()` group.
///
/// ```text
/// seq := step ('->' step)*
/// ```
#[derive(Clone, Debug)]
pub(crate) struct Seq {
    pub steps: Vec<Step>,
    /// The delimiters around the sequence (for errors about the sequence as a whole).
    pub sp: Sp,
}

impl Seq {
    pub fn parse_in(input: ParseStream, sp: Sp, depth: usize) -> syn::Result<Seq> {
        if depth > MAX_NESTING {
            return Err(input.error("sequences nested too deeply"));
        }
        if input.is_empty() {
            return Err(syn::Error::new(sp.end, "expected at least one layer in this sequence"));
        }
        let mut steps = vec![Step::parse_at(input, depth)?];
        while !input.is_empty() {
            if !input.peek(Token![->]) {
                return Err(input.error("expected `->` between steps, or the end of the sequence"));
            }
            let _: Token![->] = input.parse()?;
            steps.push(Step::parse_at(input, depth)?);
        }
        Ok(Seq { steps, sp })
    }

    /// Parses `{ seq }` (when `brace`) or `( seq )`.
    pub fn parse_delimited(input: ParseStream, depth: usize) -> syn::Result<Seq> {
        let content;
        let sp = if input.peek(syn::token::Brace) {
            let b = syn::braced!(content in input);
            Sp { start: b.span.open(), end: b.span.close() }
        } else {
            let p = syn::parenthesized!(content in input);
            Sp { start: p.span.open(), end: p.span.close() }
        };
        Seq::parse_in(&content, sp, depth + 1)
    }
}

const MAX_NESTING: usize = 48;

/// One step of a sequence.
///
/// ```text
/// step := (name ('{' int '}')? ':')? unit ('x' expr ('(' 'first' ':' args ')')?)?
/// name := Ident | string                       a string for keys that are no identifier: "block1-0"
/// ```
///
/// `name{1}: unit x N` numbers the copies: `name1` .. `nameN`, siblings in the sequence
/// (torchvision's DenseNet keys: `denselayer1`), instead of `name.0` .. `name.{N-1}`.
#[derive(Clone, Debug)]
pub(crate) struct Step {
    pub name: Option<StepName>,
    /// `{start}` after the name: the number of the first copy, and the braces' range.
    pub numbered: Option<(u64, Sp)>,
    pub unit: Unit,
    pub repeat: Option<Repeat>,
}

/// `x N (first: stride = 2)`
#[derive(Clone, Debug)]
pub(crate) struct Repeat {
    pub count: Expr,
    pub first: Option<(Sp, Vec<Arg>)>,
}

/// A step's name: an identifier, or a string for a key that is none (`"block1-0"`, as
/// torchvision's RegNet has). It becomes a segment of parameter paths, so it holds no `.`.
#[derive(Clone, Debug)]
pub(crate) struct StepName {
    pub text: String,
    pub sp: Sp,
}

impl std::fmt::Display for StepName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl StepName {
    fn parse(input: ParseStream) -> syn::Result<StepName> {
        if input.peek(syn::LitStr) {
            let lit: syn::LitStr = input.parse()?;
            let text = lit.value();
            if text.is_empty() || text.chars().any(|c| c == '.' || c.is_whitespace() || c.is_control()) {
                return Err(syn::Error::new(
                    lit.span(),
                    "a name in quotes must be non-empty, without `.` or spaces: it is one segment of the parameter keys",
                ));
            }
            return Ok(StepName { text, sp: Sp::one(lit.span()) });
        }
        let ident = super::plain_ident(input)?;
        Ok(StepName { text: ident.to_string(), sp: Sp::one(ident.span()) })
    }
}

impl Step {
    fn parse_at(input: ParseStream, depth: usize) -> syn::Result<Step> {
        let mut numbered = None;
        let named = input.peek(Ident) || input.peek(syn::LitStr);
        let name = if named && input.peek2(Token![:]) && !input.peek2(Token![::]) {
            let name = StepName::parse(input)?;
            let _: Token![:] = input.parse()?;
            Some(name)
        } else if named && input.peek2(syn::token::Brace) && input.peek3(Token![:]) && !input.peek3(Token![::]) {
            // `denselayer{1}:` (`residual {` and `gate {` are never followed by `:`).
            let name = StepName::parse(input)?;
            let content;
            let braces = syn::braced!(content in input);
            let start: syn::LitInt = content.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected the number of the first copy, e.g. `denselayer{1}: DenseLayer(32) x 6`",
                )
            })?;
            if !content.is_empty() {
                return Err(content.error("expected one integer in the braces"));
            }
            let start_value = start
                .base10_parse::<u64>()
                .ok()
                .filter(|v| *v <= crate::model::MAX_SIZE as u64 && start.suffix().is_empty())
                .ok_or_else(|| syn::Error::new(start.span(), "expected a plain non-negative integer"))?;
            numbered = Some((start_value, Sp { start: braces.span.open(), end: braces.span.close() }));
            let _: Token![:] = input.parse()?;
            Some(name)
        } else {
            None
        };
        let unit = Unit::parse_at(input, depth)?;
        let repeat = if input.peek(kw::x) {
            let x: kw::x = input.parse()?;
            let count: Expr = input.parse()?;
            let first = if input.peek(syn::token::Paren) {
                let content;
                let p = syn::parenthesized!(content in input);
                let _: kw::first = content.parse().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "expected `first:` (arguments for the first copy, e.g. `(first: stride = 2)`)",
                    )
                })?;
                let _: Token![:] = content.parse()?;
                let args = parse_args(&content)?;
                if args.is_empty() {
                    return Err(syn::Error::new(p.span.close(), "expected arguments after `first:`"));
                }
                Some((Sp { start: p.span.open(), end: p.span.close() }, args))
            } else {
                None
            };
            let _ = x;
            Some(Repeat { count, first })
        } else {
            None
        };
        Ok(Step { name, numbered, unit, repeat })
    }

    /// The source range of the step's unit (for errors about the step).
    pub fn sp(&self) -> Sp {
        self.unit.sp()
    }
}

/// What a step computes.
///
/// ```text
/// unit := Ident ('(' args? ')')?                 a layer or a user block
///       | '(' seq ')'                            a sub-sequence
///       | 'residual' '{' seq '}' shortcut?
///       | 'gate' '{' seq '}'                     the value times what `seq` makes of it
///       | ('tap' | 'add' | 'cat') '(' Ident ')'
/// ```
#[derive(Clone, Debug)]
pub(crate) enum Unit {
    Call { name: Ident, args: Vec<Arg>, paren: Option<Sp> },
    Group(Seq),
    Residual { kw_sp: Sp, body: Seq, shortcut: Option<Shortcut> },
    Gate { kw_sp: Sp, body: Seq },
    Tap { kind: TapKind, kw_sp: Sp, name: Ident },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TapKind {
    Tap,
    Add,
    Cat,
}

impl Unit {
    fn parse_at(input: ParseStream, depth: usize) -> syn::Result<Unit> {
        if input.peek(kw::residual) && input.peek2(syn::token::Brace) {
            let kw: kw::residual = input.parse()?;
            let body = Seq::parse_delimited(input, depth)?;
            let shortcut = if input.peek(kw::shortcut) { Some(Shortcut::parse_at(input, depth)?) } else { None };
            return Ok(Unit::Residual { kw_sp: Sp::one(kw.span), body, shortcut });
        }
        if input.peek(kw::gate) && input.peek2(syn::token::Brace) {
            let kw: kw::gate = input.parse()?;
            let body = Seq::parse_delimited(input, depth)?;
            return Ok(Unit::Gate { kw_sp: Sp::one(kw.span), body });
        }
        for (kind, is) in [
            (TapKind::Tap, input.peek(kw::tap)),
            (TapKind::Add, input.peek(kw::add)),
            (TapKind::Cat, input.peek(kw::cat)),
        ] {
            if is && input.peek2(syn::token::Paren) {
                let kw: Ident = input.parse()?;
                let content;
                let p = syn::parenthesized!(content in input);
                if content.is_empty() {
                    return Err(syn::Error::new(p.span.close(), format!("expected a tap name: `{kw}(name)`")));
                }
                let name = super::plain_ident(&content)?;
                if !content.is_empty() {
                    return Err(content.error(format!("`{kw}` takes one tap name")));
                }
                return Ok(Unit::Tap { kind, kw_sp: Sp::one(kw.span()), name });
            }
        }
        if input.peek(syn::token::Paren) {
            return Ok(Unit::Group(Seq::parse_delimited(input, depth)?));
        }
        if input.peek(Ident) {
            let name = super::plain_ident(input)?;
            if input.peek(syn::token::Paren) {
                let content;
                let p = syn::parenthesized!(content in input);
                let args = parse_args(&content)?;
                return Ok(Unit::Call { name, args, paren: Some(Sp { start: p.span.open(), end: p.span.close() }) });
            }
            return Ok(Unit::Call { name, args: Vec::new(), paren: None });
        }
        Err(input.error(
            "expected a layer, a block, `residual { .. }`, `gate { .. }`, `tap(..)`, `add(..)`, `cat(..)` or `( .. )`",
        ))
    }

    pub fn sp(&self) -> Sp {
        match self {
            Unit::Call { name, paren, .. } => match paren {
                Some(p) => Sp::one(name.span()).to(*p),
                None => Sp::one(name.span()),
            },
            Unit::Group(seq) => seq.sp,
            Unit::Residual { kw_sp, .. } | Unit::Gate { kw_sp, .. } => *kw_sp,
            Unit::Tap { kw_sp, name, .. } => kw_sp.to(Sp::one(name.span())),
        }
    }
}

impl Parse for Unit {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Unit::parse_at(input, 0)
    }
}

/// The shortcut branch of a residual.
///
/// ```text
/// shortcut := 'shortcut' (Ident ':')? ('identity' | 'auto' | 'pad' | 'optional' | '{' seq '}')
/// ```
#[derive(Clone, Debug)]
pub(crate) struct Shortcut {
    pub name: Option<Ident>,
    pub kind: ShortcutKind,
}

#[derive(Clone, Debug)]
pub(crate) enum ShortcutKind {
    Identity(Sp),
    Auto(Sp),
    Pad(Sp),
    /// The input is added when the body keeps its shape; otherwise there is no shortcut.
    Optional(Sp),
    Projection(Seq),
}

impl Shortcut {
    fn parse_at(input: ParseStream, depth: usize) -> syn::Result<Shortcut> {
        let kw: kw::shortcut = input.parse()?;
        let name = if input.peek(Ident) && input.peek2(Token![:]) && !input.peek2(Token![::]) {
            let n = super::plain_ident(input)?;
            let _: Token![:] = input.parse()?;
            Some(n)
        } else {
            None
        };
        let look = input.lookahead1();
        let kind = if look.peek(kw::identity) {
            ShortcutKind::Identity(Sp::one(input.parse::<kw::identity>()?.span))
        } else if look.peek(kw::auto) {
            ShortcutKind::Auto(Sp::one(input.parse::<kw::auto>()?.span))
        } else if look.peek(kw::pad) {
            ShortcutKind::Pad(Sp::one(input.parse::<kw::pad>()?.span))
        } else if look.peek(kw::optional) {
            ShortcutKind::Optional(Sp::one(input.parse::<kw::optional>()?.span))
        } else if look.peek(syn::token::Brace) {
            ShortcutKind::Projection(Seq::parse_delimited(input, depth)?)
        } else {
            return Err(look.error());
        };
        let _ = kw;
        Ok(Shortcut { name, kind })
    }
}
