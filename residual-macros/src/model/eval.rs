//! Argument evaluation: the integer, float and boolean expressions of the language, checked
//! (overflow, division by zero, unknown names with "did you mean"), and rendered back as written.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use super::expand::Inst;
use super::MAX_SIZE;
use crate::ctxt::{Origin, Sp};
use crate::parse::{Arg, BinOp, Expr};
use crate::suggest::did_you_mean;

/// An evaluated expression.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v:?}"),
            Value::Bool(v) => write!(f, "{v}"),
        }
    }
}

/// Block parameters in scope: name -> value.
pub(crate) type Env = HashMap<String, Value>;

/// An evaluated call argument.
pub(crate) struct EArg {
    pub name: Option<syn::Ident>,
    pub value: Value,
    pub sp: Sp,
}

/// The names of the input's sizes inside a block (`expand::input_names`).
pub(super) const INPUT_NAMES: &[&str] = &["in_channels", "in_height", "in_width", "in_features"];

impl Inst<'_> {
    /// `in_channels` (or another input size) that the environment lacks: in a block whose input
    /// is not known yet, a note that the block reads it (expanded again once it is known); else
    /// an error that says why it has no value.
    fn input_name(&mut self, ident: &syn::Ident, origin: &Option<Rc<Origin>>) -> Option<Value> {
        let name = ident.to_string();
        let (msg, help) = match self.reads_input.last_mut() {
            Some(r) if !r.known => {
                r.read = true;
                return None;
            }
            Some(_) => (
                format!("`{name}` is not a size of this block's input"),
                "`in_channels`, `in_height` and `in_width` name the sizes of a [C, H, W] input; `in_features` the last dim of [D] or [S, D]",
            ),
            None => (
                format!("`{name}` names the input of a block, and this is a model body"),
                "a model body knows its input shape: write the number",
            ),
        };
        self.err(Sp::one(ident.span()), msg, Some(help.into()), origin);
        None
    }

    pub(super) fn eval(&mut self, e: &Expr, env: &Env, origin: &Option<Rc<Origin>>) -> Option<Value> {
        match e {
            Expr::Int(v, sp) => match i128::try_from(*v) {
                Ok(v) => Some(Value::Int(v)),
                Err(_) => {
                    self.err(*sp, "integer literal too large", None, origin);
                    None
                }
            },
            Expr::Float(v, _) => Some(Value::Float(*v)),
            Expr::Bool(v, _) => Some(Value::Bool(*v)),
            Expr::Paren(_, inner) => self.eval(inner, env, origin),
            Expr::Param(ident) => {
                let name = ident.to_string();
                match env.get(&name) {
                    Some(v) => Some(*v),
                    None if INPUT_NAMES.contains(&name.as_str()) => self.input_name(ident, origin),
                    None => {
                        let help = did_you_mean(&name, env.keys().map(String::as_str))
                            .map(|s| format!("did you mean `{s}`?"))
                            .or_else(|| {
                                if env.is_empty() {
                                    Some(
                                        "names stand for block parameters; a model body has none, write a number"
                                            .into(),
                                    )
                                } else {
                                    let mut ks: Vec<&String> = env.keys().collect();
                                    ks.sort();
                                    let ks: Vec<String> = ks.iter().map(|k| format!("`{k}`")).collect();
                                    Some(format!("the parameters here are {}", ks.join(", ")))
                                }
                            });
                        self.err(Sp::one(ident.span()), format!("unknown parameter `{name}`"), help, origin);
                        None
                    }
                }
            }
            Expr::Neg(_, inner) => match self.eval(inner, env, origin)? {
                Value::Int(v) => Some(Value::Int(v.checked_neg()?)),
                Value::Float(v) => Some(Value::Float(-v)),
                Value::Bool(_) => {
                    self.err(e.sp(), "cannot negate a boolean", None, origin);
                    None
                }
            },
            Expr::Bin(a, op, op_span, b) => {
                let (va, vb) = (self.eval(a, env, origin), self.eval(b, env, origin));
                let (Value::Int(x), Value::Int(y)) = (va?, vb?) else {
                    self.err(Sp::one(*op_span), format!("`{}` works on integers only", op.symbol()), None, origin);
                    return None;
                };
                let r = match op {
                    BinOp::Add => x.checked_add(y),
                    BinOp::Sub => x.checked_sub(y),
                    BinOp::Mul => x.checked_mul(y),
                    BinOp::Div | BinOp::Rem if y == 0 => {
                        self.err(b.sp(), "division by zero", None, origin);
                        return None;
                    }
                    BinOp::Div => x.checked_div(y),
                    BinOp::Rem => x.checked_rem(y),
                };
                match r {
                    Some(v) if v.unsigned_abs() <= (MAX_SIZE * MAX_SIZE) as u128 => Some(Value::Int(v)),
                    _ => {
                        self.err(e.sp(), "arithmetic overflow", None, origin);
                        None
                    }
                }
            }
        }
    }

    pub(super) fn eval_args(&mut self, args: &[Arg], env: &Env, origin: &Option<Rc<Origin>>) -> Option<Vec<EArg>> {
        let mut out = Vec::new();
        let mut ok = true;
        for a in args {
            match self.eval(&a.value, env, origin) {
                Some(value) => out.push(EArg { name: a.name.clone(), value, sp: a.value.sp() }),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }
}

/// Renders an expression as written, e.g. `4 * width`.
pub(crate) fn expr_text(e: &Expr) -> String {
    match e {
        Expr::Int(v, _) => v.to_string(),
        Expr::Float(v, _) => format!("{v:?}"),
        Expr::Bool(v, _) => v.to_string(),
        Expr::Param(i) => i.to_string(),
        Expr::Neg(_, e) => format!("-{}", expr_text(e)),
        Expr::Paren(_, e) => format!("({})", expr_text(e)),
        Expr::Bin(a, op, _, b) => format!("{} {} {}", expr_text(a), op.symbol(), expr_text(b)),
    }
}
