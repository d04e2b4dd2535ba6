//! Block expansion: a model's body walked step by step, block templates instantiated with
//! their arguments (each instance an `Origin` for errors), `x N` repetitions unrolled, every
//! parameter path computed (see `docs/ARCHITECTURE.md`), names checked (unknown layers and
//! blocks, duplicates, nesting depth, model size).

use std::collections::HashMap;
use std::rc::Rc;

use syn::{Attribute, Ident};

use super::bind::signature;
use super::eval::{expr_text, EArg, Env, Value};
use super::{Kind, KnownInputs, Node, Shortcut, MAX_BLOCK_DEPTH, MAX_NODES};
use crate::ctxt::{Ctxt, Origin, Sp};
use crate::layers;
use crate::parse::{Arg, BlockDef, Seq, ShortcutKind, Step, Unit};
use crate::suggest::did_you_mean;

pub(super) fn join(prefix: &str, seg: &str) -> String {
    if prefix.is_empty() {
        seg.to_string()
    } else {
        format!("{prefix}.{seg}")
    }
}

/// The expansion of one model: the error context, the block templates by name, and the
/// counters that bound the expansion.
pub(crate) struct Inst<'a> {
    pub(super) cx: &'a mut Ctxt,
    pub(super) blocks: &'a HashMap<String, &'a BlockDef>,
    pub(super) model: String,
    pub(super) nodes: usize,
    pub(super) exhausted: bool,
    pub(super) stack: Vec<String>,
    pub(super) next_scope: usize,
    /// The block templates instantiated, in first-use order, with their doc comments.
    pub(super) used: Vec<(String, Vec<Attribute>)>,
    /// Input shapes of block instances learnt by earlier passes.
    pub(super) known: &'a KnownInputs,
    /// One entry per block instance being expanded, innermost last.
    pub(super) reads_input: Vec<ReadsInput>,
}

impl Inst<'_> {
    pub(super) fn err(&mut self, sp: Sp, msg: impl Into<String>, help: Option<String>, origin: &Option<Rc<Origin>>) {
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

    pub(super) fn seq(
        &mut self,
        seq: &Seq,
        env: &Env,
        prefix: &str,
        origin: &Option<Rc<Origin>>,
        scope: usize,
    ) -> Vec<Node> {
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
                        name.sp,
                        format!("duplicate name `{n}` in this sequence"),
                        Some(
                            "names in one sequence become parameter paths and must be unique; rename one of them"
                                .into(),
                        ),
                        origin,
                    );
                    duplicate = true;
                } else {
                    names.insert(n, name.sp);
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
        if let (Some((_, nsp)), None) = (step.numbered, &step.repeat) {
            self.err(
                nsp,
                "a numbered name numbers the copies of a repetition, but this step is not repeated",
                Some("add `x N`, or drop the braces".into()),
                origin,
            );
            return None;
        }
        let Some(rep) = &step.repeat else {
            // An unnamed residual is transparent: its children live in the enclosing prefix.
            let res_prefix = if named { path.clone() } else { prefix.to_string() };
            return self.unit(&step.unit, named, path, &res_prefix, None, env, origin, scope);
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
            // `name{s}: .. x N`: siblings `name{s}` .. `name{s + N - 1}`; else `name.0` ...
            let copy_path = match (step.numbered, &step.name) {
                (Some((start, _)), Some(n)) => join(prefix, &format!("{n}{}", start.saturating_add(k as u64))),
                _ => join(&path, &k.to_string()),
            };
            let f = if k == 0 { first } else { None };
            match self.unit(&step.unit, false, copy_path.clone(), &copy_path, f, env, origin, scope) {
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
        named: bool,
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
            // A gate is a module of its own (torchvision's `SqueezeExcitation`): its layers live
            // under its path, named or indexed.
            Unit::Gate { kw_sp, body } => {
                let children = self.seq(body, env, &path, origin, scope);
                node(Kind::Gate { body: children }, *kw_sp)
            }
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
                            ShortcutKind::Optional(sp) => (Shortcut::Optional, *sp),
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
                if !self.blocks.contains_key(&cname) && layers::spec(&cname).is_none() {
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
                if let Some(spec) = layers::spec(&cname) {
                    let layer = self.layer(callee, call_sp, eargs, spec, origin)?;
                    return node(Kind::Layer { layer, path, named }, call_sp);
                }
                self.unknown_callee(callee, origin);
                None
            }
        }
    }

    fn unknown_callee(&mut self, callee: &Ident, origin: &Option<Rc<Origin>>) {
        let cname = callee.to_string();
        let candidates: Vec<&str> =
            layers::all().map(|s| s.name).chain(self.blocks.keys().map(String::as_str)).collect();
        let help = match layers::alias(&cname)
            .map(str::to_string)
            .or_else(|| did_you_mean(&cname, candidates.iter().copied()))
        {
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                let mut blocks: Vec<&str> = self.blocks.keys().map(String::as_str).collect();
                blocks.sort();
                let layers: Vec<&str> = layers::all().map(|s| s.name).collect();
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
        // The shape flowing in, when an earlier pass learnt it (see `KnownInputs`): its sizes
        // are names in the block (`in_channels`, ..), which its parameters may shadow.
        let mut env = Env::new();
        let input = self.known.get(&(self.model.clone(), path.clone())).cloned();
        for (name, v) in input_names(input.as_deref()) {
            env.insert(name.to_string(), Value::Int(v as i128));
        }
        self.reads_input.push(ReadsInput { known: input.is_some(), read: false });
        let body = self.instance_body(block, bname, slots, &mut env, &path, &new_origin);
        let reads = self.reads_input.pop();
        if reads.is_some_and(|r| r.read && !r.known) {
            // The block reads its input's shape, which is not known yet: shape inference records
            // it here, and the next pass expands the block with it.
            return Some(vec![Node { kind: Kind::NeedsInput { path }, sp: call_sp, origin: origin.clone() }]);
        }
        body
    }

    fn instance_body(
        &mut self,
        block: &BlockDef,
        bname: String,
        slots: Vec<Option<(Value, Sp)>>,
        env: &mut Env,
        path: &str,
        origin: &Option<Rc<Origin>>,
    ) -> Option<Vec<Node>> {
        for (p, slot) in block.params.iter().zip(slots) {
            let v = match (slot, &p.default) {
                (Some((v, _)), _) => v,
                (None, Some(d)) => self.eval(d, env, origin)?,
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
        let body = self.seq(&block.body, env, path, origin, scope);
        self.stack.pop();
        Some(body)
    }
}

/// The names a block instance gets for the shape flowing into it: `in_channels`, `in_height`,
/// `in_width` for `[C, H, W]`; `in_features` (the last dim) for `[D]` and `[S, D]`. None when
/// the shape is not known.
pub(super) fn input_names(shape: Option<&[usize]>) -> Vec<(&'static str, usize)> {
    match shape {
        Some([c, h, w]) => vec![("in_channels", *c), ("in_height", *h), ("in_width", *w)],
        Some([.., d]) => vec![("in_features", *d)],
        _ => Vec::new(),
    }
}

/// Whether the block instance being expanded knows its input's shape, and read it.
pub(super) struct ReadsInput {
    pub known: bool,
    pub read: bool,
}
