//! Error collection (after serde_derive's `Ctxt`): every stage pushes its errors here instead of
//! returning at the first one; `expand` checks the context once, sorts the errors by position and
//! turns them into `compile_error!`s.
//!
//! serde's context panics in `Drop` when nobody checked it. This macro must never panic, so the
//! context is instead consumed by [`Ctxt::check`], and it is `#[must_use]`: a stage cannot
//! forget its errors without a warning (the crate denies warnings in CI).

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A range of source tokens: where an error is reported (rustc underlines `start..end`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sp {
    pub start: Span,
    pub end: Span,
}

impl Sp {
    pub fn one(span: Span) -> Self {
        Sp { start: span, end: span }
    }
    /// From the first to the last token of `tokens` (call site when there are none).
    pub fn of<T: ToTokens + ?Sized>(tokens: &T) -> Self {
        let ts = tokens.to_token_stream();
        let mut iter = ts.into_iter();
        let first = iter.next().map(|t| t.span());
        let last = iter.last().map(|t: TokenTree| t.span());
        match (first, last) {
            (Some(a), Some(b)) => Sp { start: a, end: b },
            (Some(a), None) => Sp::one(a),
            _ => Sp::one(Span::call_site()),
        }
    }
    pub fn to(self, other: Sp) -> Sp {
        Sp { start: self.start, end: other.end }
    }
    /// Line and column of the start, for sorting and de-duplication.
    pub fn pos(&self) -> (usize, usize) {
        let lc = self.start.start();
        let end = self.end.end();
        // Tie-break on the end so that nested ranges sort outer-first deterministically.
        let _ = end;
        (lc.line, lc.column)
    }
    pub fn error(&self, msg: impl std::fmt::Display) -> syn::Error {
        let mut ts = TokenStream::new();
        ts.extend([
            TokenTree::Ident(proc_macro2::Ident::new("a", self.start)),
            TokenTree::Ident(proc_macro2::Ident::new("b", self.end)),
        ]);
        syn::Error::new_spanned(ts, msg)
    }
}

/// Where a node came from when it was instantiated from a block template.
#[derive(Debug)]
pub(crate) struct Origin {
    /// Parameter path of the instance, e.g. `layer2.0`.
    pub path: String,
    /// The call with its evaluated arguments, e.g. `Bottleneck(128, stride = 2)`.
    pub call: String,
    /// The call site (the block name in the model or enclosing block).
    pub call_sp: Sp,
    /// The model the instance belongs to.
    pub model: String,
    pub parent: Option<Rc<Origin>>,
}

impl Origin {
    /// `` `layer2.0` (Bottleneck(128, stride = 2)) in `ResNet152` ``
    pub fn describe(&self) -> String {
        let shown = if self.path.is_empty() { "the model body".to_string() } else { format!("`{}`", self.path) };
        let mut s = format!("{} ({})", shown, self.call);
        // At most three enclosing instances: deeper chains (up to the nesting limit of 32)
        // would bury the message.
        let mut p = self.parent.as_ref();
        let mut shown = 0;
        while let Some(o) = p {
            if shown == 3 {
                let mut rest = 0;
                while let Some(o) = p {
                    rest += 1;
                    p = o.parent.as_ref();
                }
                s.push_str(&format!(" within {rest} more"));
                break;
            }
            s.push_str(&format!(" within `{}` ({})", o.path, o.call));
            shown += 1;
            p = o.parent.as_ref();
        }
        s.push_str(&format!(" of model `{}`", self.model));
        s
    }

    /// `instantiated at line 14, column 45`: where the call is (columns 1-based, as rustc shows
    /// them).
    pub fn called_at(&self) -> String {
        let (line, column) = self.call_sp.pos();
        format!("instantiated at line {line}, column {}", column + 1)
    }
}

/// Errors are merged when they have the same position, message and help.
type GroupKey = ((usize, usize), String, String);

#[derive(Debug)]
pub(crate) struct Diag {
    pub sp: Sp,
    pub msg: String,
    pub help: Option<String>,
    pub origin: Option<Rc<Origin>>,
}

/// The error context. Create one per expansion, pass `&mut` to every stage, consume with
/// [`Ctxt::check`].
#[must_use = "a Ctxt holds errors; consume it with `check()`"]
#[derive(Default)]
pub(crate) struct Ctxt {
    diags: Vec<Diag>,
}

impl Ctxt {
    pub fn new() -> Self {
        Ctxt::default()
    }
    /// Takes every error of `other` (a model's own context, see `lower`).
    pub fn absorb(&mut self, other: Ctxt) {
        self.diags.extend(other.diags);
    }
    /// No error recorded so far.
    pub fn is_empty(&self) -> bool {
        self.diags.is_empty()
    }
    pub fn error(&mut self, sp: Sp, msg: impl Into<String>) {
        self.push(sp, msg, None, None);
    }
    pub fn push(&mut self, sp: Sp, msg: impl Into<String>, help: Option<String>, origin: Option<Rc<Origin>>) {
        self.diags.push(Diag { sp, msg: msg.into(), help, origin });
    }

    /// Consumes the context: `Ok(())` when no error was recorded, else every error, sorted by
    /// position, with errors raised identically by several instantiations of one template
    /// merged into one (listing the instances and where the first is called).
    pub fn check(self) -> Result<(), Vec<syn::Error>> {
        if self.diags.is_empty() {
            return Ok(());
        }
        // Group identical errors (same place, same text) raised by several instances.
        let mut groups: BTreeMap<GroupKey, (Sp, Vec<Rc<Origin>>, usize)> = BTreeMap::new();
        for (seq, d) in self.diags.into_iter().enumerate() {
            let key = (d.sp.pos(), d.msg.clone(), d.help.clone().unwrap_or_default());
            let entry = groups.entry(key).or_insert((d.sp, Vec::new(), seq));
            if let Some(o) = d.origin {
                entry.1.push(o);
            }
        }
        let mut out: Vec<((usize, usize), usize, syn::Error)> = Vec::new();
        for ((pos, msg, help), (sp, origins, seq)) in groups {
            let mut text = msg.clone();
            if let Some(first) = origins.first() {
                // The instance and where it is called, in the note: one mistake is one error
                // (a second `compile_error!` at the call site once doubled every template error).
                text.push_str(&format!("\n  note: in {}, {}", first.describe(), first.called_at()));
                if origins.len() > 1 {
                    let others: Vec<String> = origins.iter().skip(1).take(3).map(|o| format!("`{}`", o.path)).collect();
                    let more = origins.len().saturating_sub(4);
                    text.push_str(&format!(
                        "\n  note: also in {}{}",
                        others.join(", "),
                        if more > 0 { format!(" and {more} more") } else { String::new() }
                    ));
                }
            }
            if !help.is_empty() {
                text.push_str(&format!("\n  help: {help}"));
            }
            out.push((pos, seq, sp.error(text)));
        }
        out.sort_by_key(|e| (e.0, e.1));
        Err(out.into_iter().map(|(_, _, e)| e).collect())
    }
}
