//! Argument binding: call arguments matched to a block's or a layer's parameters (by position,
//! then by name; defaults filled in; `first:` overrides merged), with an error for each that
//! does not fit, and typed access to a built-in layer's bound arguments for its family's `build`
//! (`layers/`).

use std::rc::Rc;

use syn::Ident;

use super::eval::{EArg, Value};
use super::expand::Inst;
use super::MAX_SIZE;
use crate::ctxt::{Ctxt, Origin, Sp};
use crate::layers::{Dflt, Layer, Spec};
use crate::suggest::did_you_mean;

/// An evaluated argument with the range of the expression that produced it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct V<T> {
    pub v: T,
    pub sp: Sp,
}

/// `name(a, b = 1)`, as shown in errors.
pub(crate) fn signature(name: &str, params: &[(String, Option<String>)]) -> String {
    let ps: Vec<String> = params
        .iter()
        .map(|(n, d)| match d {
            Some(d) => format!("{n} = {d}"),
            None => n.clone(),
        })
        .collect();
    format!("{name}({})", ps.join(", "))
}

impl Inst<'_> {
    /// Binds arguments to `params` (positional first, then named). `None` after reporting.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn bind(
        &mut self,
        callee: &Ident,
        callee_sp: Sp,
        sig: &str,
        params: &[(String, bool)],
        args: &[EArg],
        origin: &Option<Rc<Origin>>,
    ) -> Option<Vec<Option<(Value, Sp)>>> {
        let mut slots: Vec<Option<(Value, Sp)>> = vec![None; params.len()];
        let mut ok = true;
        let mut seen_named = false;
        for (i, a) in args.iter().enumerate() {
            match &a.name {
                None => {
                    if seen_named {
                        self.err(
                            a.sp,
                            "positional argument after a named one",
                            Some(format!("pass arguments by position first, then by name: `{sig}`")),
                            origin,
                        );
                        ok = false;
                        continue;
                    }
                    match slots.get_mut(i) {
                        Some(slot) => *slot = Some((a.value, a.sp)),
                        None => {
                            self.err(
                                a.sp,
                                format!(
                                    "`{callee}` takes {} argument{}, found {}",
                                    params.len(),
                                    if params.len() == 1 { "" } else { "s" },
                                    args.iter().filter(|a| a.name.is_none()).count()
                                ),
                                Some(format!("the signature is `{sig}`")),
                                origin,
                            );
                            ok = false;
                        }
                    }
                }
                Some(name) => {
                    seen_named = true;
                    let n = name.to_string();
                    match params.iter().position(|(p, _)| *p == n) {
                        Some(idx) => {
                            if let Some(slot) = slots.get_mut(idx) {
                                if slot.is_some() {
                                    self.err(
                                        Sp::one(name.span()),
                                        format!("argument `{n}` is given twice"),
                                        None,
                                        origin,
                                    );
                                    ok = false;
                                } else {
                                    *slot = Some((a.value, a.sp));
                                }
                            }
                        }
                        None => {
                            let help = match did_you_mean(&n, params.iter().map(|(p, _)| p.as_str())) {
                                Some(s) => format!("did you mean `{s}`? The signature is `{sig}`"),
                                None => format!("the signature is `{sig}`"),
                            };
                            self.err(
                                Sp::one(name.span()),
                                format!("`{callee}` has no parameter `{n}`"),
                                Some(help),
                                origin,
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let missing: Vec<&str> = params
            .iter()
            .zip(&slots)
            .filter(|((_, has_default), slot)| !has_default && slot.is_none())
            .map(|((p, _), _)| p.as_str())
            .collect();
        // Missing arguments are only worth reporting when the given ones made sense.
        if ok && !missing.is_empty() {
            let list: Vec<String> = missing.iter().map(|m| format!("`{m}`")).collect();
            self.err(
                callee_sp,
                format!(
                    "missing argument{} {} for `{callee}`",
                    if missing.len() == 1 { "" } else { "s" },
                    list.join(", ")
                ),
                Some(format!("the signature is `{sig}`")),
                origin,
            );
            ok = false;
        }
        ok.then_some(slots)
    }

    /// Applies `(first: ..)` overrides: named arguments replacing or adding to `args`.
    pub(super) fn merge_first(
        &mut self,
        mut args: Vec<EArg>,
        first: Option<Vec<EArg>>,
        origin: &Option<Rc<Origin>>,
    ) -> Vec<EArg> {
        for f in first.into_iter().flatten() {
            let Some(name) = f.name.clone() else {
                self.err(
                    f.sp,
                    "arguments after `first:` must be named",
                    Some("write e.g. `(first: stride = 2)`".into()),
                    origin,
                );
                continue;
            };
            match args.iter_mut().find(|a| a.name.as_ref().is_some_and(|n| *n == name)) {
                Some(a) => {
                    a.value = f.value;
                    a.sp = f.sp;
                }
                None => args.push(f),
            }
        }
        args
    }

    /// Binds a built-in layer's arguments, fills its defaults and builds it with its family's
    /// `build`. `None` after reporting.
    pub(super) fn layer(
        &mut self,
        name: &Ident,
        call_sp: Sp,
        args: Vec<EArg>,
        spec: &'static Spec,
        origin: &Option<Rc<Origin>>,
    ) -> Option<Rc<dyn Layer>> {
        let sig = spec.signature();
        let params: Vec<(String, bool)> =
            spec.params.iter().map(|p| (p.name.to_string(), !matches!(p.default, Dflt::Required))).collect();
        let slots = self.bind(name, call_sp, &sig, &params, &args, origin)?;
        // Defaults carry the name's span: an error about one points at the layer.
        let name_sp = Sp::one(name.span());
        let mut vals: Vec<(&'static str, (Value, Sp))> = Vec::new();
        for (param, slot) in spec.params.iter().zip(slots) {
            let v = match (slot, param.default) {
                (Some(v), _) => v,
                (None, Dflt::Int(i)) => (Value::Int(i), name_sp),
                (None, Dflt::Bool(b)) => (Value::Bool(b), name_sp),
                (None, Dflt::Float(f)) => (Value::Float(f), name_sp),
                (None, Dflt::Same(other)) => (vals.iter().find(|(n, _)| *n == other)?.1 .0, name_sp),
                // Not bound: the layer infers it (`Args::size_or_inferred`).
                (None, Dflt::Inferred(_)) => continue,
                (None, Dflt::Required) => return None,
            };
            vals.push((param.name, v));
        }
        let positional = args.iter().filter(|a| a.name.is_none()).map(|a| (a.value, a.sp)).collect();
        let mut bound = Args { layer: spec.name, sig, vals, positional, cx: self.cx, origin };
        (spec.build)(&mut bound)
    }
}

/// A built-in layer's bound arguments (defaults filled in), for its family's `build`: typed
/// getters that report a value of the wrong kind or size at the argument.
pub(crate) struct Args<'a> {
    layer: &'static str,
    /// The layer's signature, for the help of a value of the wrong kind.
    sig: String,
    vals: Vec<(&'static str, (Value, Sp))>,
    positional: Vec<(Value, Sp)>,
    cx: &'a mut Ctxt,
    origin: &'a Option<Rc<Origin>>,
}

impl Args<'_> {
    /// The bound value of parameter `name` with its span. A name the layer's spec does not
    /// declare is a bug in its family file: reported as such rather than dropping the layer.
    pub fn value(&mut self, name: &str) -> Option<(Value, Sp)> {
        let found = self.vals.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        if found.is_none() {
            let sp = self.vals.first().map(|(_, (_, sp))| *sp).unwrap_or(Sp::one(proc_macro2::Span::call_site()));
            self.err(
                sp,
                format!("internal error: `{}` reads an argument `{name}` its spec does not declare", self.layer),
                None,
            );
        }
        found
    }

    /// The positional arguments as written (PyTorch-order checks look at them).
    pub fn positional(&self) -> &[(Value, Sp)] {
        &self.positional
    }

    pub fn err(&mut self, sp: Sp, msg: impl Into<String>, help: Option<String>) {
        self.cx.push(sp, msg, help, self.origin.clone());
    }

    /// A size: an integer from `min` to `MAX_SIZE`.
    pub fn size(&mut self, what: &str, min: i128) -> Option<V<usize>> {
        let (value, sp) = self.value(what)?;
        match value {
            Value::Int(i) if i < min => {
                let msg = if min == 1 {
                    format!("`{what}` must be at least 1, found {i}")
                } else {
                    format!("`{what}` must not be negative, found {i}")
                };
                self.err(sp, msg, None);
                None
            }
            Value::Int(i) if i > MAX_SIZE => {
                self.err(sp, format!("`{what}` is too large: {i} (at most {MAX_SIZE})"), None);
                None
            }
            Value::Int(i) => usize::try_from(i).ok().map(|v| V { v, sp }),
            other => {
                let help = format!("the signature is `{}`", self.sig);
                self.err(sp, format!("`{what}` must be an integer, found `{other}`"), Some(help));
                None
            }
        }
    }

    /// A size the layer infers when it is not given (`Dflt::Inferred`): `Some(None)` then;
    /// `None` after reporting a bad one.
    pub fn size_or_inferred(&mut self, what: &str, min: i128) -> Option<Option<V<usize>>> {
        if !self.vals.iter().any(|(n, _)| *n == what) {
            return Some(None);
        }
        self.size(what, min).map(Some)
    }

    pub fn boolean(&mut self, what: &str) -> Option<bool> {
        let (value, sp) = self.value(what)?;
        match value {
            Value::Bool(b) => Some(b),
            other => {
                let help = format!("write `{what} = true` or `{what} = false`");
                self.err(sp, format!("`{what}` must be `true` or `false`, found `{other}`"), Some(help));
                None
            }
        }
    }

    /// A finite number; integers are taken as floats.
    pub fn float(&mut self, what: &str) -> Option<V<f64>> {
        let (value, sp) = self.value(what)?;
        match value {
            Value::Float(f) if f.is_finite() => Some(V { v: f, sp }),
            Value::Int(i) if i.unsigned_abs() < MAX_SIZE as u128 => Some(V { v: i as f64, sp }),
            other => {
                let help = format!("the signature is `{}`", self.sig);
                self.err(sp, format!("`{what}` must be a number, found `{other}`"), Some(help));
                None
            }
        }
    }
}
