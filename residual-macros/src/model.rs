//! The network as data: block templates instantiated into a tree of nodes per model.
//!
//! This stage evaluates every argument expression, binds block and layer arguments (positional
//! then named, defaults filled in), expands `x N` repetitions, computes every parameter path
//! (see `docs/ARCHITECTURE.md`), and checks names: unknown layers/blocks/parameters, duplicate
//! names, wrong or missing arguments, repetition counts. Shapes are `infer.rs`'s job.

use std::collections::HashMap;
use std::fmt;
use std::rc::Rc;

use syn::{Attribute, Ident, Visibility};

use crate::ctxt::{Ctxt, Origin, Sp};
use crate::parse::{self, Arg, BinOp, BlockDef, Expr, Init, Input, Item, Seq, ShortcutKind, Step, TapKind, Unit};

/// Most layers one expansion may produce (ResNet-152 has about 600; ResNet-1001 about 3,000).
pub(crate) const MAX_NODES: usize = 10_000;
/// Largest size accepted for a dimension or an argument.
pub(crate) const MAX_SIZE: i128 = 1 << 31;
/// Deepest nesting of block instantiations.
const MAX_BLOCK_DEPTH: usize = 32;

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

/// An evaluated argument with the range of the expression that produced it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct V<T> {
    pub v: T,
    pub sp: Sp,
}

/// A built-in layer with its evaluated arguments.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Debug)]
pub(crate) enum Layer {
    Conv {
        out: V<usize>,
        kernel: V<usize>,
        stride: V<usize>,
        padding: V<usize>,
        dilation: V<usize>,
        groups: V<usize>,
        bias: bool,
    },
    Bn,
    MaxPool {
        kernel: V<usize>,
        stride: V<usize>,
        padding: V<usize>,
    },
    AvgPool {
        kernel: V<usize>,
        stride: V<usize>,
        padding: V<usize>,
    },
    GlobalAvgPool,
    Flatten,
    Linear {
        out: V<usize>,
        bias: bool,
    },
    LayerNorm,
    Dropout {
        p: f64,
    },
    Relu,
    Gelu,
    Sigmoid,
    Tanh,
    Silu,
    LeakyRelu {
        slope: f64,
    },
    Identity,
}

impl Layer {
    pub fn has_params(&self) -> bool {
        matches!(self, Layer::Conv { .. } | Layer::Bn | Layer::Linear { .. } | Layer::LayerNorm)
    }
}

/// Default of a built-in layer's parameter.
#[derive(Clone, Copy)]
enum Dflt {
    Required,
    Int(i128),
    Bool(bool),
    Float(f64),
    /// Pool stride: the kernel size.
    Kernel,
}

/// Built-in layers and their parameters, PyTorch names and defaults.
const LAYERS: &[(&str, &[(&str, Dflt)])] = &[
    (
        "conv",
        &[
            ("out", Dflt::Required),
            ("kernel", Dflt::Required),
            ("stride", Dflt::Int(1)),
            ("padding", Dflt::Int(0)),
            ("dilation", Dflt::Int(1)),
            ("groups", Dflt::Int(1)),
            ("bias", Dflt::Bool(false)),
        ],
    ),
    ("bn", &[]),
    ("maxpool", &[("kernel", Dflt::Required), ("stride", Dflt::Kernel), ("padding", Dflt::Int(0))]),
    ("avgpool", &[("kernel", Dflt::Required), ("stride", Dflt::Kernel), ("padding", Dflt::Int(0))]),
    ("global_avgpool", &[]),
    ("flatten", &[]),
    ("linear", &[("out", Dflt::Required), ("bias", Dflt::Bool(true))]),
    ("layernorm", &[]),
    ("dropout", &[("p", Dflt::Float(0.5))]),
    ("relu", &[]),
    ("gelu", &[]),
    ("sigmoid", &[]),
    ("tanh", &[]),
    ("silu", &[]),
    ("leaky_relu", &[("slope", Dflt::Float(0.01))]),
    ("identity", &[]),
];

/// Other libraries' names for the built-in layers, for "did you mean".
const ALIASES: &[(&str, &str)] = &[
    ("batchnorm", "bn"),
    ("batch_norm", "bn"),
    ("batchnorm2d", "bn"),
    ("bn2d", "bn"),
    ("conv2d", "conv"),
    ("max_pool", "maxpool"),
    ("maxpool2d", "maxpool"),
    ("avg_pool", "avgpool"),
    ("avgpool2d", "avgpool"),
    ("adaptive_avgpool", "global_avgpool"),
    ("avgpool_global", "global_avgpool"),
    ("gap", "global_avgpool"),
    ("dense", "linear"),
    ("fc", "linear"),
    ("layer_norm", "layernorm"),
    ("ln", "layernorm"),
    ("swish", "silu"),
    ("leakyrelu", "leaky_relu"),
    ("id", "identity"),
    ("shortcut", "residual { .. } shortcut .."),
];

/// The generic parameters of the generated struct and impls (dtype, device, batch, tape, and
/// the tensor visitor of `TensorCollection`): a model of one of these names would shadow them.
pub(crate) const GENERIC_PARAMS: &[&str] = &["E", "D", "B", "T", "V"];

/// Names the language reserves (cannot be block names).
const RESERVED: &[&str] = &["residual", "shortcut", "tap", "add", "cat", "block", "model", "auto", "pad", "x", "first"];

fn layer_spec(name: &str) -> Option<&'static [(&'static str, Dflt)]> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

fn signature(name: &str, params: &[(String, Option<String>)]) -> String {
    let ps: Vec<String> = params
        .iter()
        .map(|(n, d)| match d {
            Some(d) => format!("{n} = {d}"),
            None => n.clone(),
        })
        .collect();
    format!("{name}({})", ps.join(", "))
}

fn layer_signature(name: &str, spec: &[(&str, Dflt)]) -> String {
    let ps: Vec<(String, Option<String>)> = spec
        .iter()
        .map(|(n, d)| {
            let d = match d {
                Dflt::Required => None,
                Dflt::Int(v) => Some(v.to_string()),
                Dflt::Bool(v) => Some(v.to_string()),
                Dflt::Float(v) => Some(format!("{v:?}")),
                Dflt::Kernel => Some("kernel".to_string()),
            };
            (n.to_string(), d)
        })
        .collect();
    signature(name, &ps)
}

/// A model ready for shape inference.
pub(crate) struct Model {
    pub name: Ident,
    pub vis: Visibility,
    pub docs: Vec<Attribute>,
    pub init: Init,
    pub zero_init: bool,
    pub input: Vec<usize>,
    pub body: Vec<Node>,
    /// The block templates the model instantiates, in first-use order, with their doc comments.
    pub blocks: Vec<(String, Vec<Attribute>)>,
}

/// One node of an instantiated network.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub kind: Kind,
    /// The tokens the node came from (in the template, for nodes instantiated from a block).
    pub sp: Sp,
    /// The block instance the node belongs to (`None` in a model's own body).
    pub origin: Option<Rc<Origin>>,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    /// A built-in layer. `path` is its parameter path; `named` says the user named it.
    Layer {
        layer: Layer,
        path: String,
        named: bool,
    },
    /// A group, a repetition or a block instance: the children in order.
    Seq(Vec<Node>),
    Residual {
        body: Vec<Node>,
        shortcut: Shortcut,
        shortcut_sp: Sp,
    },
    /// `tap`, `add`, `cat`; names are scoped to one block instance (or the model body).
    Tap {
        kind: TapKind,
        name: String,
        name_sp: Sp,
        scope: usize,
    },
    /// A step that is already an error (unknown name, bad arguments, bad count): what it does
    /// to the shape is unknown, so shape inference does not check what follows it (it would
    /// report false follow-on errors).
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(distance("widht", "width"), 1);
        assert_eq!(distance("cnv", "conv"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(did_you_mean("strde", ["stride", "padding"]), Some("stride".into()));
        assert_eq!(did_you_mean("xyz", ["stride", "padding"]), None);
        assert_eq!(did_you_mean("Botleneck", ["Bottleneck", "Basic"]), Some("Bottleneck".into()));
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Shortcut {
    Identity { explicit: bool },
    Auto { path: String },
    Pad,
    Projection { body: Vec<Node> },
}

type Env = HashMap<String, Value>;

/// Edit distance with adjacent transpositions (optimal string alignment), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    let at = |i: usize, j: usize| i * w + j;
    for i in 0..=a.len() {
        if let Some(c) = d.get_mut(at(i, 0)) {
            *c = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(c) = d.get_mut(at(0, j)) {
            *c = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let get = |i: usize, j: usize| d.get(at(i, j)).copied().unwrap_or(usize::MAX / 2);
            let (ca, cb) = (a.get(i - 1), b.get(j - 1));
            let cost = usize::from(ca != cb);
            let mut v = (get(i - 1, j) + 1).min(get(i, j - 1) + 1).min(get(i - 1, j - 1) + cost);
            if i > 1 && j > 1 && ca == b.get(j - 2) && a.get(i - 2) == cb {
                v = v.min(get(i - 2, j - 2) + 1);
            }
            if let Some(c) = d.get_mut(at(i, j)) {
                *c = v;
            }
        }
    }
    d.get(at(a.len(), b.len())).copied().unwrap_or(usize::MAX)
}

/// The closest candidate, when close enough to be a typo.
pub(crate) fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= limit && *c != name)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_string())
}

fn join(prefix: &str, seg: &str) -> String {
    if prefix.is_empty() {
        seg.to_string()
    } else {
        format!("{prefix}.{seg}")
    }
}

/// An evaluated call argument.
struct EArg {
    name: Option<Ident>,
    value: Value,
    sp: Sp,
}

struct Inst<'a> {
    cx: &'a mut Ctxt,
    blocks: &'a HashMap<String, &'a BlockDef>,
    model: String,
    nodes: usize,
    exhausted: bool,
    stack: Vec<String>,
    next_scope: usize,
    used: Vec<(String, Vec<Attribute>)>,
}

impl<'a> Inst<'a> {
    fn err(&mut self, sp: Sp, msg: impl Into<String>, help: Option<String>, origin: &Option<Rc<Origin>>) {
        self.cx.push(sp, msg, help, origin.clone());
    }

    fn count_node(&mut self, sp: Sp) -> bool {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            if !self.exhausted {
                self.exhausted = true;
                self.cx.error(sp, format!("model `{}` is too large: more than {MAX_NODES} layers", self.model));
            }
            return false;
        }
        true
    }

    fn eval(&mut self, e: &Expr, env: &Env, origin: &Option<Rc<Origin>>) -> Option<Value> {
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

    fn eval_args(&mut self, args: &[Arg], env: &Env, origin: &Option<Rc<Origin>>) -> Option<Vec<EArg>> {
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

    /// Binds arguments to `params` (positional first, then named). `None` after reporting.
    #[allow(clippy::too_many_arguments)]
    fn bind(
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

    fn size_arg(&mut self, v: (Value, Sp), what: &str, min: i128, origin: &Option<Rc<Origin>>) -> Option<V<usize>> {
        let (value, sp) = v;
        match value {
            Value::Int(i) if i < min => {
                let msg = if min == 1 {
                    format!("`{what}` must be at least 1, found {i}")
                } else {
                    format!("`{what}` must not be negative, found {i}")
                };
                self.err(sp, msg, None, origin);
                None
            }
            Value::Int(i) if i > MAX_SIZE => {
                self.err(sp, format!("`{what}` is too large: {i} (at most {MAX_SIZE})"), None, origin);
                None
            }
            Value::Int(i) => usize::try_from(i).ok().map(|v| V { v, sp }),
            other => {
                self.err(sp, format!("`{what}` must be an integer, found `{other}`"), None, origin);
                None
            }
        }
    }

    fn bool_arg(&mut self, v: (Value, Sp), what: &str, origin: &Option<Rc<Origin>>) -> Option<bool> {
        match v.0 {
            Value::Bool(b) => Some(b),
            other => {
                self.err(v.1, format!("`{what}` must be `true` or `false`, found `{other}`"), None, origin);
                None
            }
        }
    }

    fn float_arg(&mut self, v: (Value, Sp), what: &str, origin: &Option<Rc<Origin>>) -> Option<f64> {
        match v.0 {
            Value::Float(f) if f.is_finite() => Some(f),
            Value::Int(i) if i.unsigned_abs() < MAX_SIZE as u128 => Some(i as f64),
            other => {
                self.err(v.1, format!("`{what}` must be a number, found `{other}`"), None, origin);
                None
            }
        }
    }

    /// Applies `(first: ..)` overrides: named arguments replacing or adding to `args`.
    fn merge_first(&mut self, mut args: Vec<EArg>, first: Option<Vec<EArg>>, origin: &Option<Rc<Origin>>) -> Vec<EArg> {
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

    fn layer(
        &mut self,
        name: &Ident,
        call_sp: Sp,
        args: Vec<EArg>,
        spec: &[(&str, Dflt)],
        origin: &Option<Rc<Origin>>,
    ) -> Option<Layer> {
        let lname = name.to_string();
        let sig = layer_signature(&lname, spec);
        let params: Vec<(String, bool)> =
            spec.iter().map(|(n, d)| (n.to_string(), !matches!(d, Dflt::Required))).collect();
        let slots = self.bind(name, call_sp, &sig, &params, &args, origin)?;
        // Fill defaults; every default has the call's span.
        let name_sp = Sp::one(name.span());
        let mut vals: HashMap<&str, (Value, Sp)> = HashMap::new();
        for ((pname, d), slot) in spec.iter().zip(slots) {
            let v = match (slot, d) {
                (Some(v), _) => v,
                (None, Dflt::Int(i)) => (Value::Int(*i), name_sp),
                (None, Dflt::Bool(b)) => (Value::Bool(*b), name_sp),
                (None, Dflt::Float(f)) => (Value::Float(*f), name_sp),
                (None, Dflt::Kernel) => match vals.get("kernel") {
                    Some(k) => (k.0, name_sp),
                    None => return None,
                },
                (None, Dflt::Required) => return None,
            };
            vals.insert(pname, v);
        }
        let get = |n: &str| vals.get(n).copied();
        let layer = match lname.as_str() {
            "conv" => {
                let out = self.size_arg(get("out")?, "out", 1, origin);
                let kernel = self.size_arg(get("kernel")?, "kernel", 1, origin);
                let stride = self.size_arg(get("stride")?, "stride", 1, origin);
                let padding = self.size_arg(get("padding")?, "padding", 0, origin);
                let dilation = self.size_arg(get("dilation")?, "dilation", 1, origin);
                let groups = self.size_arg(get("groups")?, "groups", 1, origin);
                let bias = self.bool_arg(get("bias")?, "bias", origin);
                Layer::Conv {
                    out: out?,
                    kernel: kernel?,
                    stride: stride?,
                    padding: padding?,
                    dilation: dilation?,
                    groups: groups?,
                    bias: bias?,
                }
            }
            "maxpool" | "avgpool" => {
                let kernel = self.size_arg(get("kernel")?, "kernel", 1, origin);
                let stride = self.size_arg(get("stride")?, "stride", 1, origin);
                let padding = self.size_arg(get("padding")?, "padding", 0, origin);
                let (kernel, stride, padding) = (kernel?, stride?, padding?);
                if lname == "maxpool" {
                    Layer::MaxPool { kernel, stride, padding }
                } else {
                    Layer::AvgPool { kernel, stride, padding }
                }
            }
            "linear" => {
                let positional: Vec<&EArg> = args.iter().filter(|a| a.name.is_none()).collect();
                if let [first, second, ..] = positional.as_slice() {
                    if let (Value::Int(i), Value::Int(o)) = (first.value, second.value) {
                        self.err(
                            first.sp.to(second.sp),
                            format!("`linear({i}, {o})` looks like PyTorch's `Linear(in_features, out_features)`; here the second argument is `bias`"),
                            Some(format!("`linear` infers its input size from the value flowing in: write `linear({o})`")),
                            origin,
                        );
                        return None;
                    }
                }
                let out = self.size_arg(get("out")?, "out", 1, origin);
                let bias = self.bool_arg(get("bias")?, "bias", origin);
                Layer::Linear { out: out?, bias: bias? }
            }
            "dropout" => {
                let pv = get("p")?;
                let p = self.float_arg(pv, "p", origin)?;
                if !(0.0..1.0).contains(&p) {
                    self.err(pv.1, format!("dropout probability must be in [0, 1), found {p}"), None, origin);
                    return None;
                }
                Layer::Dropout { p }
            }
            "leaky_relu" => Layer::LeakyRelu { slope: self.float_arg(get("slope")?, "slope", origin)? },
            "bn" => Layer::Bn,
            "global_avgpool" => Layer::GlobalAvgPool,
            "flatten" => Layer::Flatten,
            "layernorm" => Layer::LayerNorm,
            "relu" => Layer::Relu,
            "gelu" => Layer::Gelu,
            "sigmoid" => Layer::Sigmoid,
            "tanh" => Layer::Tanh,
            "silu" => Layer::Silu,
            "identity" => Layer::Identity,
            _ => return None,
        };
        Some(layer)
    }

    fn seq(&mut self, seq: &Seq, env: &Env, prefix: &str, origin: &Option<Rc<Origin>>, scope: usize) -> Vec<Node> {
        self.seq_in(seq, env, prefix, prefix, origin, scope)
    }

    /// `prefix` is where named steps live, `index_prefix` where unnamed ones are indexed. They
    /// differ only in an unnamed residual's body: named steps are transparent
    /// (`layer1.0.conv1`), unnamed ones are indexed under the residual's own index, so they
    /// cannot collide with the enclosing sequence's indices.
    #[allow(clippy::too_many_arguments)]
    // clippy's `map_entry` would fold the duplicate check into an `Entry` match; the if/else keeps
    // the rule (first name wins, a repeat is an error) readable beside the error it reports.
    #[allow(clippy::map_entry)]
    fn seq_in(
        &mut self,
        seq: &Seq,
        env: &Env,
        prefix: &str,
        index_prefix: &str,
        origin: &Option<Rc<Origin>>,
        scope: usize,
    ) -> Vec<Node> {
        let mut names: HashMap<String, Sp> = HashMap::new();
        let mut out = Vec::new();
        for (i, step) in seq.steps.iter().enumerate() {
            let mut duplicate = false;
            if let Some(name) = &step.name {
                let n = name.to_string();
                if names.contains_key(&n) {
                    self.err(
                        Sp::one(name.span()),
                        format!("duplicate name `{n}` in this sequence"),
                        Some(
                            "names in one sequence become parameter paths and must be unique; rename one of them"
                                .into(),
                        ),
                        origin,
                    );
                    duplicate = true;
                } else {
                    names.insert(n, Sp::one(name.span()));
                }
            }
            // A duplicate keeps going under a private path, so it is reported once, not again as
            // a parameter-path collision.
            let dup_prefix = format!("{prefix}.__duplicate{i}");
            let named_prefix = if duplicate { dup_prefix.as_str() } else { prefix };
            match self.step(step, i, env, named_prefix, index_prefix, origin, scope) {
                Some(node) => out.push(node),
                None => out.push(Node { kind: Kind::Unknown, sp: step.sp(), origin: origin.clone() }),
            }
            if self.exhausted {
                break;
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        step: &Step,
        index: usize,
        env: &Env,
        prefix: &str,
        index_prefix: &str,
        origin: &Option<Rc<Origin>>,
        scope: usize,
    ) -> Option<Node> {
        let path = match &step.name {
            Some(n) => join(prefix, &n.to_string()),
            None => join(index_prefix, &index.to_string()),
        };
        let named = step.name.is_some();
        let Some(rep) = &step.repeat else {
            // An unnamed residual is transparent: its children live in the enclosing prefix.
            let res_prefix = if named { path.clone() } else { prefix.to_string() };
            return self.unit(&step.unit, step.name.as_ref(), path, &res_prefix, None, env, origin, scope);
        };
        let count = match self.eval(&rep.count, env, origin)? {
            Value::Int(n) if n < 1 => {
                self.err(
                    rep.count.sp(),
                    format!("repetition count must be at least 1, found {n}"),
                    Some("remove the step, or repeat it at least once (`x 1`)".into()),
                    origin,
                );
                return None;
            }
            Value::Int(n) if n > MAX_NODES as i128 => {
                self.err(
                    rep.count.sp(),
                    format!("repetition count {n} is too large: a model has at most {MAX_NODES} layers"),
                    None,
                    origin,
                );
                return None;
            }
            Value::Int(n) => n as usize,
            other => {
                self.err(rep.count.sp(), format!("repetition count must be an integer, found `{other}`"), None, origin);
                return None;
            }
        };
        let first = match &rep.first {
            Some((fsp, args)) => {
                if !matches!(step.unit, Unit::Call { .. }) {
                    self.err(
                        *fsp,
                        "`first:` overrides arguments of a block or layer call, but this step is not a call",
                        Some("put the repeated sequence in a block and repeat the block".into()),
                        origin,
                    );
                    return None;
                }
                Some(args.as_slice())
            }
            None => None,
        };
        let mut children = Vec::new();
        for k in 0..count {
            let copy_path = join(&path, &k.to_string());
            let f = if k == 0 { first } else { None };
            match self.unit(&step.unit, None, copy_path.clone(), &copy_path, f, env, origin, scope) {
                Some(n) => children.push(n),
                None => children.push(Node { kind: Kind::Unknown, sp: step.sp(), origin: origin.clone() }),
            }
            if self.exhausted {
                break;
            }
        }
        Some(Node { kind: Kind::Seq(children), sp: step.sp(), origin: origin.clone() })
    }

    #[allow(clippy::too_many_arguments)]
    fn unit(
        &mut self,
        unit: &Unit,
        name: Option<&Ident>,
        path: String,
        res_prefix: &str,
        first: Option<&[Arg]>,
        env: &Env,
        origin: &Option<Rc<Origin>>,
        scope: usize,
    ) -> Option<Node> {
        if !self.count_node(unit.sp()) {
            return None;
        }
        let node = |kind: Kind, sp: Sp| Some(Node { kind, sp, origin: origin.clone() });
        match unit {
            Unit::Group(seq) => {
                let children = self.seq(seq, env, &path, origin, scope);
                node(Kind::Seq(children), seq.sp)
            }
            Unit::Tap { kind, kw_sp, name: tap } => node(
                Kind::Tap { kind: *kind, name: tap.to_string(), name_sp: Sp::one(tap.span()), scope },
                kw_sp.to(Sp::one(tap.span())),
            ),
            Unit::Residual { kw_sp, body, shortcut } => {
                let body_nodes = self.seq_in(body, env, res_prefix, &path, origin, scope);
                let (sc, sc_sp) = match shortcut {
                    None => (Shortcut::Identity { explicit: false }, *kw_sp),
                    Some(s) => {
                        let sc_name = s.name.as_ref().map(|n| n.to_string()).unwrap_or_else(|| "downsample".into());
                        let sc_path = join(res_prefix, &sc_name);
                        match &s.kind {
                            ShortcutKind::Identity(sp) => (Shortcut::Identity { explicit: true }, *sp),
                            ShortcutKind::Auto(sp) => (Shortcut::Auto { path: sc_path }, *sp),
                            ShortcutKind::Pad(sp) => (Shortcut::Pad, *sp),
                            ShortcutKind::Projection(seq) => {
                                let b = self.seq(seq, env, &sc_path, origin, scope);
                                (Shortcut::Projection { body: b }, seq.sp)
                            }
                        }
                    }
                };
                node(Kind::Residual { body: body_nodes, shortcut: sc, shortcut_sp: sc_sp }, *kw_sp)
            }
            Unit::Call { name: callee, args, paren } => {
                let call_sp = match paren {
                    Some(p) => Sp::one(callee.span()).to(*p),
                    None => Sp::one(callee.span()),
                };
                let cname = callee.to_string();
                if !self.blocks.contains_key(&cname) && layer_spec(&cname).is_none() {
                    // Only the name: its arguments mean nothing without it (`mul(x)` is not an
                    // "unknown parameter `x`").
                    self.unknown_callee(callee, origin);
                    return None;
                }
                let eargs = self.eval_args(args, env, origin);
                let efirst = match first {
                    Some(f) => Some(self.eval_args(f, env, origin)?),
                    None => None,
                };
                let eargs = eargs?;
                let eargs = self.merge_first(eargs, efirst, origin);
                if let Some(block) = self.blocks.get(&cname).copied() {
                    let children = self.instantiate(block, callee, call_sp, eargs, path, origin)?;
                    return node(Kind::Seq(children), call_sp);
                }
                if let Some(spec) = layer_spec(&cname) {
                    let layer = self.layer(callee, call_sp, eargs, spec, origin)?;
                    return node(Kind::Layer { layer, path, named: name.is_some() }, call_sp);
                }
                self.unknown_callee(callee, origin);
                None
            }
        }
    }

    fn unknown_callee(&mut self, callee: &Ident, origin: &Option<Rc<Origin>>) {
        let cname = callee.to_string();
        let candidates: Vec<&str> =
            LAYERS.iter().map(|(n, _)| *n).chain(self.blocks.keys().map(String::as_str)).collect();
        let help = match ALIASES
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(&cname))
            .map(|(_, l)| l.to_string())
            .or_else(|| did_you_mean(&cname, candidates.iter().copied()))
        {
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                let mut blocks: Vec<&str> = self.blocks.keys().map(String::as_str).collect();
                blocks.sort();
                let layers: Vec<&str> = LAYERS.iter().map(|(n, _)| *n).collect();
                format!(
                    "built-in layers: {}{}",
                    layers.join(", "),
                    if blocks.is_empty() { String::new() } else { format!("; blocks: {}", blocks.join(", ")) }
                )
            }
        };
        self.err(Sp::one(callee.span()), format!("unknown layer or block `{cname}`"), Some(help), origin);
    }

    fn instantiate(
        &mut self,
        block: &BlockDef,
        callee: &Ident,
        call_sp: Sp,
        args: Vec<EArg>,
        path: String,
        origin: &Option<Rc<Origin>>,
    ) -> Option<Vec<Node>> {
        let bname = block.name.to_string();
        if self.stack.contains(&bname) {
            let mut chain = self.stack.clone();
            chain.push(bname.clone());
            self.err(
                Sp::one(callee.span()),
                format!("block `{bname}` instantiates itself: {}", chain.join(" -> ")),
                Some("blocks cannot be recursive".into()),
                origin,
            );
            return None;
        }
        if self.stack.len() >= MAX_BLOCK_DEPTH {
            let shown = match self.stack.as_slice() {
                [first, .., last] => format!("{first} -> .. -> {last} -> {bname}"),
                _ => format!("{} -> {bname}", self.stack.join(" -> ")),
            };
            self.err(
                Sp::one(callee.span()),
                format!("blocks nested too deeply: `{bname}` would be level {} ({shown}), the limit is {MAX_BLOCK_DEPTH}", self.stack.len() + 1),
                Some(format!("at most {MAX_BLOCK_DEPTH} block instantiations may be nested; inline some of the blocks into their callers")),
                origin,
            );
            return None;
        }
        let sig_params: Vec<(String, Option<String>)> =
            block.params.iter().map(|p| (p.name.to_string(), p.default.as_ref().map(expr_text))).collect();
        let sig = signature(&bname, &sig_params);
        let params: Vec<(String, bool)> =
            block.params.iter().map(|p| (p.name.to_string(), p.default.is_some())).collect();
        let slots = self.bind(callee, call_sp, &sig, &params, &args, origin)?;
        let shown: Vec<String> = args
            .iter()
            .map(|a| match &a.name {
                Some(n) => format!("{n} = {}", a.value),
                None => a.value.to_string(),
            })
            .collect();
        let new_origin = Some(Rc::new(Origin {
            path: path.clone(),
            call: format!("{bname}({})", shown.join(", ")),
            call_sp,
            model: self.model.clone(),
            parent: origin.clone(),
        }));
        let mut env = Env::new();
        for (p, slot) in block.params.iter().zip(slots) {
            let v = match (slot, &p.default) {
                (Some((v, _)), _) => v,
                (None, Some(d)) => self.eval(d, &env, &new_origin)?,
                (None, None) => return None,
            };
            env.insert(p.name.to_string(), v);
        }
        if !self.used.iter().any(|(n, _)| *n == bname) {
            self.used.push((bname.clone(), block.docs.clone()));
        }
        self.stack.push(bname);
        self.next_scope += 1;
        let scope = self.next_scope;
        let body = self.seq(&block.body, &env, &path, &new_origin, scope);
        self.stack.pop();
        Some(body)
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

/// Instantiates every model of the input. Name errors go to `cx`.
// As on `seq_in`: duplicate checks written as if/else next to their errors.
#[allow(clippy::map_entry)]
pub(crate) fn build(input: &Input, cx: &mut Ctxt) -> Vec<Model> {
    let mut blocks: HashMap<String, &BlockDef> = HashMap::new();
    let mut models: Vec<&parse::ModelDef> = Vec::new();
    let mut model_names: HashMap<String, Sp> = HashMap::new();
    for item in &input.items {
        match item {
            Item::Block(b) => {
                let n = b.name.to_string();
                let sp = Sp::one(b.name.span());
                if layer_spec(&n).is_some() {
                    cx.push(
                        sp,
                        format!("block `{n}` has the name of a built-in layer"),
                        Some("rename the block".into()),
                        None,
                    );
                } else if RESERVED.contains(&n.as_str()) {
                    cx.push(
                        sp,
                        format!("`{n}` is a keyword of the `residual!` language"),
                        Some("rename the block".into()),
                        None,
                    );
                } else if blocks.contains_key(&n) {
                    cx.push(
                        sp,
                        format!("duplicate block `{n}`"),
                        Some("each block needs its own name; rename or remove one".into()),
                        None,
                    );
                } else {
                    blocks.insert(n, b);
                }
                let mut seen: Vec<String> = Vec::new();
                for p in &b.params {
                    let pn = p.name.to_string();
                    if seen.contains(&pn) {
                        cx.push(
                            Sp::one(p.name.span()),
                            format!("duplicate parameter `{pn}` in block `{}`", b.name),
                            None,
                            None,
                        );
                    }
                    seen.push(pn);
                }
            }
            Item::Model(m) => {
                let n = m.name.to_string();
                if GENERIC_PARAMS.contains(&n.as_str()) {
                    cx.push(
                        Sp::one(m.name.span()),
                        format!("model name `{n}` is taken by a generic parameter of the generated impls"),
                        Some(format!(
                            "the impls are generic over {}; give the model a longer name",
                            GENERIC_PARAMS.join(", ")
                        )),
                        None,
                    );
                } else if model_names.contains_key(&n) {
                    cx.push(
                        Sp::one(m.name.span()),
                        format!("duplicate model `{n}`"),
                        Some("each model is a struct and needs its own name".into()),
                        None,
                    );
                } else {
                    model_names.insert(n, Sp::one(m.name.span()));
                    models.push(m);
                }
            }
        }
    }
    let mut out = Vec::new();
    for m in models {
        let mut input_dims = Vec::new();
        let mut ok = true;
        for d in &m.dims {
            match d.base10_parse::<u64>() {
                Ok(v) if v >= 1 && (v as i128) <= MAX_SIZE && d.suffix().is_empty() => input_dims.push(v as usize),
                _ => {
                    cx.push(
                        Sp::one(d.span()),
                        format!("input dimensions must be integers from 1 to {MAX_SIZE}, found `{d}`"),
                        None,
                        None,
                    );
                    ok = false;
                }
            }
        }
        let elements = input_dims.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        if ok && elements.is_some_and(|n| n > MAX_SIZE as u128) {
            cx.push(
                m.dims_sp,
                format!(
                    "the input holds {} values per sample, more than the 2^31 = 2,147,483,648 a tensor may hold",
                    crate::infer::thousands(elements.unwrap_or(0))
                ),
                Some("every tensor (a value per sample, a layer's weight) is capped at 2^31 elements".into()),
                None,
            );
            ok = false;
        }
        if m.dims.is_empty() || m.dims.len() > 3 {
            cx.push(
                m.dims_sp,
                format!(
                    "expected an input shape of rank 1 to 3 ([D], [S, D] or [C, H, W]), found rank {}",
                    m.dims.len()
                ),
                None,
                None,
            );
            ok = false;
        }
        let name = m.name.to_string();
        let mut inst = Inst {
            cx,
            blocks: &blocks,
            model: name,
            nodes: 0,
            exhausted: false,
            stack: Vec::new(),
            next_scope: 0,
            used: Vec::new(),
        };
        let body = inst.seq(&m.body, &Env::new(), "", &None, 0);
        let used = inst.used;
        if !ok {
            continue;
        }
        out.push(Model {
            name: m.name.clone(),
            vis: m.vis.clone(),
            docs: m.attrs.docs.clone(),
            init: m.attrs.init.map(|i| i.0).unwrap_or(Init::TorchDefault),
            zero_init: m.attrs.zero_init.is_some(),
            input: input_dims,
            body,
            blocks: used,
        });
    }
    out
}
