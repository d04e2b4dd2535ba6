//! Expressions and call arguments.

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitBool, LitFloat, LitInt, Token};

use crate::ctxt::Sp;

/// Integer arithmetic on literals and block parameters, booleans, float literals.
///
/// ```text
/// expr   := term (('+' | '-') term)*
/// term   := unary (('*' | '/' | '%') unary)*
/// unary  := '-' unary | atom
/// atom   := int | float | 'true' | 'false' | Ident | '(' expr ')'
/// ```
#[derive(Clone, Debug)]
pub(crate) enum Expr {
    Int(u128, Sp),
    Float(f64, Sp),
    Bool(bool, Sp),
    Param(Ident),
    Neg(Span, Box<Expr>),
    Bin(Box<Expr>, BinOp, Span, Box<Expr>),
    Paren(Sp, Box<Expr>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// Deepest nesting of parentheses / unary minus accepted (keeps recursion bounded).
const MAX_DEPTH: usize = 64;
/// Most binary operators in one expression. The tree of a long chain `1 + 0 + 0 + ..` is as deep
/// as the chain is long, and evaluating, printing, cloning and dropping it recurse that deep:
/// 3,000 terms overflowed rustc's stack. With this bound and `MAX_DEPTH` no tree is deeper than
/// about 320 nodes.
pub(crate) const MAX_OPS: usize = 256;

impl Expr {
    /// The source range of the whole expression.
    pub fn sp(&self) -> Sp {
        match self {
            Expr::Int(_, s) | Expr::Float(_, s) | Expr::Bool(_, s) | Expr::Paren(s, _) => *s,
            Expr::Param(i) => Sp::one(i.span()),
            Expr::Neg(s, e) => Sp::one(*s).to(e.sp()),
            Expr::Bin(a, _, _, b) => a.sp().to(b.sp()),
        }
    }

    /// Counts a binary operator against [`MAX_OPS`].
    fn count_op(span: Span, ops: &mut usize) -> syn::Result<()> {
        *ops += 1;
        if *ops > MAX_OPS {
            return Err(syn::Error::new(
                span,
                format!("expression too long: more than {MAX_OPS} operators (write the value, or name it as a block parameter)"),
            ));
        }
        Ok(())
    }

    fn parse_sum(input: ParseStream, depth: usize, ops: &mut usize) -> syn::Result<Expr> {
        let mut lhs = Expr::parse_term(input, depth, ops)?;
        loop {
            let op = if input.peek(Token![+]) {
                BinOp::Add
            } else if input.peek(Token![-]) && !input.peek(Token![->]) {
                BinOp::Sub
            } else {
                return Ok(lhs);
            };
            let span = input.parse::<proc_macro2::Punct>()?.span();
            Expr::count_op(span, ops)?;
            let rhs = Expr::parse_term(input, depth, ops)?;
            lhs = Expr::Bin(Box::new(lhs), op, span, Box::new(rhs));
        }
    }

    fn parse_term(input: ParseStream, depth: usize, ops: &mut usize) -> syn::Result<Expr> {
        let mut lhs = Expr::parse_unary(input, depth, ops)?;
        loop {
            let op = if input.peek(Token![*]) {
                BinOp::Mul
            } else if input.peek(Token![/]) {
                BinOp::Div
            } else if input.peek(Token![%]) {
                BinOp::Rem
            } else {
                return Ok(lhs);
            };
            let span = input.parse::<proc_macro2::Punct>()?.span();
            Expr::count_op(span, ops)?;
            let rhs = Expr::parse_unary(input, depth, ops)?;
            lhs = Expr::Bin(Box::new(lhs), op, span, Box::new(rhs));
        }
    }

    fn parse_unary(input: ParseStream, depth: usize, ops: &mut usize) -> syn::Result<Expr> {
        if depth > MAX_DEPTH {
            return Err(input.error("expression nested too deeply"));
        }
        if input.peek(Token![-]) && !input.peek(Token![->]) {
            let minus: Token![-] = input.parse()?;
            let inner = Expr::parse_unary(input, depth + 1, ops)?;
            return Ok(Expr::Neg(minus.span, Box::new(inner)));
        }
        Expr::parse_atom(input, depth, ops)
    }

    fn parse_atom(input: ParseStream, depth: usize, ops: &mut usize) -> syn::Result<Expr> {
        let look = input.lookahead1();
        if look.peek(LitInt) {
            let lit: LitInt = input.parse()?;
            if !lit.suffix().is_empty() {
                return Err(syn::Error::new(lit.span(), "write integers without a type suffix"));
            }
            let v = lit.base10_parse::<u128>().map_err(|_| syn::Error::new(lit.span(), "integer literal too large"))?;
            Ok(Expr::Int(v, Sp::one(lit.span())))
        } else if look.peek(LitFloat) {
            let lit: LitFloat = input.parse()?;
            let v = lit.base10_parse::<f64>().map_err(|_| syn::Error::new(lit.span(), "invalid float literal"))?;
            Ok(Expr::Float(v, Sp::one(lit.span())))
        } else if look.peek(LitBool) {
            let lit: LitBool = input.parse()?;
            Ok(Expr::Bool(lit.value, Sp::one(lit.span)))
        } else if look.peek(Ident) {
            Ok(Expr::Param(super::plain_ident(input)?))
        } else if look.peek(syn::token::Paren) {
            let content;
            let paren = syn::parenthesized!(content in input);
            let inner = Expr::parse_sum(&content, depth + 1, ops)?;
            if !content.is_empty() {
                return Err(content.error("expected an operator or `)`"));
            }
            let s = paren.span;
            Ok(Expr::Paren(Sp { start: s.open(), end: s.close() }, Box::new(inner)))
        } else {
            Err(look.error())
        }
    }
}

impl Parse for Expr {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        Expr::parse_sum(input, 0, &mut 0)
    }
}

/// One call argument.
///
/// ```text
/// arg := expr | Ident '=' expr
/// ```
#[derive(Clone, Debug)]
pub(crate) struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(Ident) && input.peek2(Token![=]) && !input.peek2(Token![==]) && !input.peek2(Token![=>]) {
            let name = super::plain_ident(input)?;
            let _: Token![=] = input.parse()?;
            let value: Expr = input.parse()?;
            return Ok(Arg { name: Some(name), value });
        }
        Ok(Arg { name: None, value: input.parse()? })
    }
}

/// `args := arg (',' arg)* ','?` — the whole content of a parenthesized group.
pub(crate) fn parse_args(input: ParseStream) -> syn::Result<Vec<Arg>> {
    let list = input.parse_terminated(Arg::parse, Token![,])?;
    Ok(list.into_iter().collect())
}
