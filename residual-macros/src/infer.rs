//! Shape inference: walks a model's node tree with the shape flowing through it, checks every
//! layer against `shape.rs`, and lowers the tree into a flat program of tensor operations plus
//! the model's parameter-bearing fields. Every error is collected; after an error whose output
//! shape is still known (e.g. a shortcut mismatch) inference goes on with that shape, after one
//! where it is not (e.g. a window that does not fit) it goes on without checking until the next
//! point where the shape is known again, so independent mistakes are all reported.

use std::collections::HashMap;
use std::rc::Rc;

use crate::ctxt::{Ctxt, Origin, Sp};
use crate::ir::{Field, FieldType, Op, OpCode, Program, Row, Var};
use crate::layers::shortcut::SubsamplePad;
use crate::layers::{BatchNorm, ConvLayer, Layer};
use crate::model::{Kind, Model, Node, Shortcut, V};
use crate::parse::{Init, TapKind};
use crate::shape::{self, show, ShapeError};
use crate::suggest::did_you_mean;

/// Groups digits by thousands: 25557032 -> "25,557,032".
pub(crate) fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

struct Tap {
    var: Option<Var>,
    sp: Sp,
}

/// A conv or pool whose output is not `ceil(input / stride)` on some axis.
struct Shrinker {
    sp: Sp,
    origin: Option<Rc<Origin>>,
    op: &'static str,
    from: [usize; 2],
    to: [usize; 2],
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

/// Shape inference of one model: the program being built and what the walk needs to know. The
/// layer families (`layers/`) record their fields, ops and rows through its methods.
pub(crate) struct Infer<'a> {
    cx: &'a mut Ctxt,
    prog: Program,
    /// `#[init(kaiming_normal)]`: convs get torchvision's fan-out Kaiming init.
    pub kaiming: bool,
    zero_init: bool,
    taps: HashMap<(usize, String), Tap>,
    /// Variables whose shape is a guess: after an error that loses the shape, inference goes on
    /// with a best guess (a window that does not fit gives size 1, `linear` on an image gives
    /// `[out]`, ...), kept only to give the fallback emitted after the error the output type the
    /// user most likely meant. Shape errors about guessed values are not reported (they could be
    /// follow-ons of the first); errors about known values still are.
    guesses: std::collections::HashSet<Var>,
    /// The op being checked reads a guessed value.
    guessing: bool,
    /// The node being checked: where an overflow of the model's totals is reported.
    at: Option<(Sp, Option<Rc<Origin>>)>,
    /// The totals overflowed (reported once).
    total_overflow: bool,
    /// Convs and pools that changed the spatial size by more than their stride explains (a 3x3
    /// without `padding = 1`), in order: when a residual body's output no longer lines up with
    /// its input, the error goes to them, not to the shortcut.
    shrinkers: Vec<Shrinker>,
}

/// Where a layer is inferred: its node, its parameter path, the path its summary row shows
/// (empty for an unnamed parameter-free layer) and the value flowing in.
pub(crate) struct LayerAt<'a> {
    pub node: &'a Node,
    pub path: &'a str,
    pub shown: &'a str,
    pub input: Var,
}

/// The struct field of a parameter path: `.` and whatever else no identifier holds (the `-` of a
/// quoted name) become `_` (`validate` rejects two paths that meet in one field).
pub(crate) fn field_ident(path: &str) -> String {
    let mut s: String = path.chars().map(|c| if c.is_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if s.starts_with(|c: char| c.is_ascii_digit()) || s.is_empty() {
        s.insert(0, '_');
    }
    s
}

/// Infers shapes of one model; errors go to `cx`. The program is complete only when no error
/// was reported.
#[allow(dead_code)] // the stable entry point; `expand` uses `infer_with_output`
pub(crate) fn infer(model: &Model, cx: &mut Ctxt) -> Program {
    infer_with_output(model, cx).0
}

/// [`infer`], plus the model's output shape when it is known, even after errors (a shortcut
/// mismatch keeps the body's shape, a window that does not fit loses it): what the fallback
/// emitted after an error declares as the model's output.
pub(crate) fn infer_with_output(model: &Model, cx: &mut Ctxt) -> (Program, Option<Vec<usize>>) {
    let mut inf = Infer {
        cx,
        prog: Program::default(),
        kaiming: model.init == Init::KaimingNormal,
        zero_init: model.zero_init,
        taps: HashMap::new(),
        guesses: Default::default(),
        guessing: false,
        at: None,
        total_overflow: false,
        shrinkers: Vec::new(),
    };
    inf.prog.vars.push(model.input.clone());
    let out = inf.walk(&model.body, Some(0));
    inf.prog.output = out.unwrap_or(0);
    let mut prog = inf.prog;
    remove_unused_forks(&mut prog);
    let shape = out.and_then(|v| prog.vars.get(v).cloned());
    (prog, shape)
}

/// Taps that are never read would be unused variables in the generated code.
fn remove_unused_forks(prog: &mut Program) {
    let mut used = vec![false; prog.vars.len()];
    for op in &prog.ops {
        match op {
            Op::Layer { input, .. } | Op::Field { input, .. } | Op::Fork { input, .. } => {
                if let Some(u) = used.get_mut(*input) {
                    *u = true;
                }
            }
            Op::Add { a, b, .. } | Op::Cat { a, b, .. } | Op::Mul { a, b, .. } => {
                for v in [a, b] {
                    if let Some(u) = used.get_mut(*v) {
                        *u = true;
                    }
                }
            }
        }
    }
    let output = prog.output;
    prog.ops.retain(|op| match op {
        Op::Fork { output: o, .. } => used.get(*o).copied().unwrap_or(false) || *o == output,
        _ => true,
    });
}

impl Infer<'_> {
    pub(crate) fn err(&mut self, node: &Node, sp: Sp, msg: impl Into<String>, help: Option<String>) {
        if !self.guessing {
            self.cx.push(sp, msg, help, node.origin.clone());
        }
    }

    /// An error that does not depend on the shapes (a tap name): reported even while guessing.
    fn name_err(&mut self, node: &Node, sp: Sp, msg: impl Into<String>, help: Option<String>) {
        self.cx.push(sp, msg, help, node.origin.clone());
    }

    /// After an error that loses the shape: switch to guessing and go on with `guess`.
    pub(crate) fn lost(&mut self, guess: Option<Vec<usize>>) -> Option<Var> {
        self.guessing = true;
        guess.map(|g| self.new_var(g))
    }

    pub(crate) fn shape(&self, v: Var) -> Vec<usize> {
        self.prog.vars.get(v).cloned().unwrap_or_default()
    }

    pub(crate) fn new_var(&mut self, shape: Vec<usize>) -> Var {
        self.prog.vars.push(shape);
        let v = self.prog.vars.len() - 1;
        if self.guessing {
            self.guesses.insert(v);
        }
        v
    }

    /// Records a conv or pool whose output is not `ceil(input / stride)` (see `shrinkers`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn note_shrink(
        &mut self,
        node: &Node,
        op: &'static str,
        input: &[usize],
        o: [usize; 3],
        stride: usize,
        kernel: usize,
        padding: usize,
        dilation: usize,
    ) {
        if let [_, h, w] = input {
            let same = |n: usize| n.div_ceil(stride.max(1));
            if same(*h) != o[1] || same(*w) != o[2] {
                self.shrinkers.push(Shrinker {
                    sp: node.sp,
                    origin: node.origin.clone(),
                    op,
                    from: [*h, *w],
                    to: [o[1], o[2]],
                    kernel,
                    stride,
                    padding,
                    dilation,
                });
            }
        }
    }

    /// A residual body whose spatial size no striding explains: the error goes to the convs and
    /// pools in the body that changed the size (with the padding that keeps it), not to the
    /// shortcut, whose help would bake the bug in. `false` when there are none.
    fn blame_shrinkers(&mut self, from: usize) -> bool {
        let found: Vec<Shrinker> = self.shrinkers.drain(from.min(self.shrinkers.len())..).collect();
        if found.is_empty() || self.guessing {
            return false;
        }
        for s in found {
            let keep = (s.kernel / 2).saturating_mul(s.dilation);
            let verb = if s.to[0] < s.from[0] || s.to[1] < s.from[1] { "shrinks" } else { "grows" };
            let kernel_text = if s.dilation > 1 {
                format!("{0}x{0} kernel, dilation {1}", s.kernel, s.dilation)
            } else {
                format!("{0}x{0} kernel", s.kernel)
            };
            let help = if s.kernel % 2 == 1 {
                format!(
                    "`padding = {keep}` keeps the size (`kernel / 2 * dilation`){}",
                    if self.shrink_is_strided(&s) { " up to the stride" } else { "" }
                )
            } else {
                format!("an even kernel cannot keep the size; use an odd kernel with `padding = {keep}`")
            };
            // Without the sizes when the change is the same everywhere, so that the instances of
            // a repeated block (each on a smaller map) give one error, not one each.
            let (dh, dw) = (s.from[0].abs_diff(s.to[0]), s.from[1].abs_diff(s.to[1]));
            let change = if s.stride == 1 && dh == dw {
                format!("by {dh} in height and width")
            } else {
                format!("from {}x{} to {}x{}", s.from[0], s.from[1], s.to[0], s.to[1])
            };
            self.cx.push(
                s.sp,
                format!(
                    "this `{}` {verb} the map {change} ({kernel_text}, padding {}), so the residual body's output no longer lines up with its input",
                    s.op, s.padding,
                ),
                Some(help),
                s.origin.clone(),
            );
        }
        true
    }

    fn shrink_is_strided(&self, s: &Shrinker) -> bool {
        s.from[0] != s.to[0] && s.from[0].div_ceil(2) == s.to[0]
    }

    fn is_guess(&self, v: Option<Var>) -> bool {
        v.is_some_and(|v| self.guesses.contains(&v))
    }

    /// A parameter-free op from `input` to a new value of `shape`.
    pub(crate) fn layer_op(&mut self, input: Var, shape: Vec<usize>, code: Rc<dyn OpCode>, sp: Sp) -> Var {
        let output = self.new_var(shape);
        self.prog.ops.push(Op::Layer { input, output, code, sp });
        output
    }

    /// A forward through struct field `field` from `input` to a new value of `shape`.
    pub(crate) fn field_op(&mut self, input: Var, shape: Vec<usize>, field: usize, sp: Sp) -> Var {
        let output = self.new_var(shape);
        self.prog.ops.push(Op::Field { input, output, field, sp });
        output
    }

    /// The model's token embedding, once inferred.
    pub(crate) fn token_input(&self) -> Option<crate::ir::TokenInput> {
        self.prog.token_input
    }

    /// The model reads token ids through `t.field`.
    pub(crate) fn set_token_input(&mut self, t: crate::ir::TokenInput) {
        self.prog.token_input = Some(t);
    }

    /// The struct field name of field `field`.
    pub(crate) fn field_ident_of(&self, field: usize) -> String {
        self.prog.fields.get(field).map(|f| f.ident.clone()).unwrap_or_default()
    }

    /// A struct field for a parameter-bearing layer; its index.
    pub(crate) fn add_field(&mut self, node: &Node, path: &str, ident: String, ty: Box<dyn FieldType>) -> usize {
        self.prog.fields.push(Field { path: path.to_string(), ident, ty, sp: node.sp, origin: node.origin.clone() });
        self.prog.fields.len() - 1
    }

    /// One summary row; its counts go into the model's totals, which must not overflow (they
    /// once saturated at `u64::MAX` silently): an overflow is an error at the layer that caused it.
    pub(crate) fn row(&mut self, path: &str, op: String, shape: &[usize], params: u64, macs: u64) {
        match (self.prog.params.checked_add(params), self.prog.macs.checked_add(macs)) {
            (Some(p), Some(m)) => (self.prog.params, self.prog.macs) = (p, m),
            (p, _) => {
                if !self.total_overflow && !self.guessing {
                    self.total_overflow = true;
                    let what = if p.is_none() { "parameter count" } else { "MAC count" };
                    if let Some((sp, origin)) = self.at.clone() {
                        self.cx.push(
                            sp,
                            format!("the model's {what} overflows a 64-bit integer at this layer"),
                            Some("the totals must fit `u64`; this model is far beyond any that can be built".into()),
                            origin,
                        );
                    }
                }
            }
        }
        self.prog.rows.push(Row { path: path.to_string(), op, shape: shape.to_vec(), params, macs });
    }

    /// A layer's own parameter or MAC count; `None` (it overflows `u64`) is an error at the layer.
    pub(crate) fn count(&mut self, node: &Node, what: &str, n: Option<u64>) -> u64 {
        n.unwrap_or_else(|| {
            self.err(node, node.sp, format!("the {what} of this layer overflows a 64-bit integer"), None);
            0
        })
    }

    /// Every tensor, a value per sample or a layer's weight, holds at most `MAX_SIZE` (2^31)
    /// elements, the cap on input dims: `conv(2000000000, 1)` once passed `cargo check`. An error
    /// at `sp` (the argument that made it so) when `dims` exceed it.
    pub(crate) fn too_big(&mut self, node: &Node, sp: Sp, what: &str, dims: &[usize], arg: &str) -> bool {
        let n = dims.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128));
        let cap = crate::model::MAX_SIZE as u128;
        if n.is_some_and(|n| n <= cap) {
            return false;
        }
        let shown =
            n.map(|n| format!("{} values", thousands(n))).unwrap_or_else(|| "more values than a u128 counts".into());
        self.err(
            node,
            sp,
            format!("{what} {} holds {shown}, more than the 2^31 = 2,147,483,648 a tensor may hold", show(dims)),
            Some(format!("every tensor (a value per sample, a layer's weight) is capped at 2^31 elements, like the input; check {arg}")),
        );
        true
    }

    fn walk(&mut self, nodes: &[Node], mut cur: Option<Var>) -> Option<Var> {
        for n in nodes {
            cur = self.node(n, cur);
        }
        cur
    }

    fn node(&mut self, node: &Node, cur: Option<Var>) -> Option<Var> {
        self.guessing = self.is_guess(cur);
        if !matches!(node.kind, Kind::Seq(_)) {
            self.at = Some((node.sp, node.origin.clone()));
        }
        match &node.kind {
            Kind::Seq(children) => self.walk(children, cur),
            Kind::Layer { layer, path, named, .. } => {
                let input = cur?;
                let shown = if *named || layer.has_params() { path.as_str() } else { "" };
                layer.infer(self, &LayerAt { node, path, shown, input })
            }
            Kind::Residual { body, shortcut, shortcut_sp } => self.residual(node, body, shortcut, *shortcut_sp, cur),
            Kind::Gate { body } => self.gate(node, body, cur),
            // Record what flows in for the next expansion pass; until then what the block does to
            // the shape is unknown (as after an error, but nothing is reported).
            Kind::NeedsInput { path } => {
                if let (Some(c), false) = (cur, self.guessing) {
                    let shape = self.shape(c);
                    self.prog.needs_input.push((path.clone(), shape, node.sp));
                }
                self.guessing = true;
                None
            }
            Kind::Tap { kind, name, name_sp, scope } => self.tap(node, *kind, name, *name_sp, *scope, cur),
            // Already an error: guess that it keeps the shape, check nothing that depends on it.
            Kind::Unknown => {
                let guess = cur.map(|c| self.shape(c));
                self.lost(guess)
            }
        }
    }

    /// Reports a shape-rule violation of `op` with the span that best explains it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn shape_error(
        &mut self,
        node: &Node,
        op: &str,
        e: ShapeError,
        args: &[(&str, Option<Sp>)],
        input: &[usize],
        out_channels: Option<usize>,
    ) {
        let arg_sp = |name: &str| args.iter().find(|(n, _)| *n == name).and_then(|(_, s)| *s);
        match e {
            ShapeError::Rank { expected, ref found } => {
                // The rule says what it takes: an op on the last dim given an image, or an op on
                // images given a vector or sequence.
                let help = match (expected, found.len()) {
                    (shape::LAST_DIM, 3) => Some(format!(
                        "`{op}` acts on the last dim of [D] or [S, D]; add `global_avgpool ->` (to [{}]) or `flatten ->` before it",
                        found.first().copied().unwrap_or(0)
                    )),
                    (shape::IMAGE, 1 | 2) => Some(format!(
                        "`{op}` needs an image; the value here is {} because of an earlier `global_avgpool`, `flatten` or `linear`, or because the model's input shape is not [C, H, W]",
                        show(found)
                    )),
                    _ => None,
                };
                self.err(
                    node,
                    node.sp,
                    format!("`{op}` expects a {expected} input, found {} (rank {})", show(found), found.len()),
                    help,
                );
            }
            ShapeError::Window { axis, input: size, padding, window } => {
                let sp = arg_sp("kernel").unwrap_or(node.sp);
                // The window does not fit, so `padding < need`: that padding is also within a
                // pool's limit of half its kernel.
                let need = window.saturating_sub(size).div_ceil(2);
                let help = Some(format!(
                    "the input is {}; use a kernel of at most {} or `padding = {}`",
                    show(input),
                    size.saturating_add(padding.saturating_mul(2)),
                    need.max(padding + 1)
                ));
                self.err(
                    node,
                    sp,
                    format!(
                        "`{op}` window does not fit: it spans {window}, but the input {axis} is {size} ({} with padding {padding}), so the output {axis} would be 0",
                        size.saturating_add(padding.saturating_mul(2))
                    ),
                    help,
                );
            }
            ShapeError::Groups { groups, channels, which } => {
                let sp = arg_sp("groups").unwrap_or(node.sp);
                let in_ch = input.first().copied().unwrap_or(1);
                let out_ch = out_channels.unwrap_or(channels);
                self.err(
                    node,
                    sp,
                    format!("`groups = {groups}` does not divide the {which} channels ({channels})"),
                    Some(format!(
                        "groups must divide both the input channels ({in_ch}) and the output channels ({out_ch}); e.g. `groups = {}`",
                        suggest_groups(groups, in_ch, out_ch)
                    )),
                );
            }
            ShapeError::PoolPadding { padding, kernel } => {
                let sp = arg_sp("padding").unwrap_or(node.sp);
                self.err(
                    node,
                    sp,
                    format!("`{op}` padding {padding} is more than half the kernel size {kernel}"),
                    Some(format!("use `padding = {}` or less", kernel / 2)),
                );
            }
            ShapeError::Overflow => self.err(node, node.sp, format!("`{op}`: sizes overflow"), None),
            ShapeError::Zero { what } => self.err(node, node.sp, format!("`{op}`: {what} must be at least 1"), None),
        }
    }

    fn residual(&mut self, node: &Node, body: &[Node], sc: &Shortcut, sc_sp: Sp, cur: Option<Var>) -> Option<Var> {
        let Some(input) = cur else {
            // Unknown input: still look inside for errors that do not depend on it.
            let _ = self.walk(body, None);
            if let Shortcut::Projection { body: p } = sc {
                let _ = self.walk(p, None);
            }
            return None;
        };
        let in_shape = self.shape(input);
        let fork = self.new_var(in_shape.clone());
        self.prog.ops.push(Op::Fork { input, output: fork });
        let fields_before = self.prog.fields.len();
        let shrinkers_before = self.shrinkers.len();
        let body_out = self.walk(body, Some(input));
        if self.zero_init {
            // The last batch norm of the body (`any` stops at the first that takes it).
            let _ = self.prog.fields.iter_mut().skip(fields_before).rev().any(|f| f.ty.set_zero_gamma());
        }
        let body_shape = body_out.map(|v| self.shape(v));
        let hint = body_stride(body);
        self.guessing = self.is_guess(Some(input)) || self.is_guess(body_out);
        if let Some(bs) = &body_shape {
            let unexplained = bs.len() == 3
                && in_shape.len() == 3
                && bs.get(1..) != in_shape.get(1..)
                && shape::shortcut_stride(&in_shape, bs, hint).is_none();
            if unexplained && self.blame_shrinkers(shrinkers_before) {
                // Go on with the shape the body would have with the size kept, so that later
                // checks do not report follow-ons of this mistake.
                let fixed: Vec<usize> = match (bs.as_slice(), in_shape.as_slice()) {
                    ([c, ..], [_, h, w]) => vec![*c, h.div_ceil(hint.max(1)), w.div_ceil(hint.max(1))],
                    _ => bs.clone(),
                };
                return Some(self.new_var(fixed));
            }
        }
        // The body's own shrinkers are settled: an outer residual must not blame them again.
        self.shrinkers.truncate(shrinkers_before);
        let sc_out: Option<Var> = match sc {
            Shortcut::Identity { explicit } => {
                if let Some(bs) = &body_shape {
                    if *bs != in_shape {
                        let what = if *explicit {
                            "the shortcut is `identity`"
                        } else {
                            "the shortcut is the identity (none given)"
                        };
                        self.err(
                            node,
                            sc_sp,
                            format!(
                                "residual body changes the shape, but {what}: expected the body to output {}, found {}",
                                show(&in_shape),
                                show(bs)
                            ),
                            Some(identity_help(&in_shape, bs, hint)),
                        );
                    }
                }
                Some(fork)
            }
            Shortcut::Auto { path } => match &body_shape {
                None => None,
                Some(bs) if *bs == in_shape => Some(fork),
                Some(bs) => {
                    let stride = shape::shortcut_stride(&in_shape, bs, hint);
                    match (stride, in_shape.as_slice(), bs.as_slice()) {
                        (Some(_), [ic, _, _], [oc, _, _])
                            if self.too_big(
                                node,
                                sc_sp,
                                "the projection's weight",
                                &[*oc, *ic],
                                "the channel counts",
                            ) =>
                        {
                            Some(fork)
                        }
                        (Some(s), [_, _, _], [oc, _, _]) => {
                            // torchvision's `downsample`: exactly `conv(oc, 1, stride = s) -> bn`,
                            // at `<path>.0` and `<path>.1`, blamed on the `shortcut` token.
                            let at = |v| V { v, sp: sc_sp };
                            let conv = ConvLayer {
                                out: at(*oc),
                                kernel: at(1),
                                stride: at(s),
                                padding: at(0),
                                dilation: at(1),
                                groups: at(1),
                                bias: false,
                            };
                            let (cpath, bpath) = (format!("{path}.0"), format!("{path}.1"));
                            let v1 = conv.infer(self, &LayerAt { node, path: &cpath, shown: &cpath, input: fork })?;
                            BatchNorm::torch_default(sc_sp)
                                .infer(self, &LayerAt { node, path: &bpath, shown: &bpath, input: v1 })
                        }
                        _ => {
                            self.err(
                                node,
                                sc_sp,
                                format!(
                                    "`shortcut auto` cannot map {} to {} with a strided 1x1 conv",
                                    show(&in_shape),
                                    show(bs)
                                ),
                                Some(format!(
                                    "`auto` projects [C, H, W] images; write the projection yourself: `shortcut {{ .. }}` producing {}{}",
                                    show(bs),
                                    if bs.len() < 3 { format!(", e.g. `shortcut {{ linear({}, bias = false) }}`", bs.last().copied().unwrap_or(0)) } else { String::new() }
                                )),
                            );
                            Some(fork)
                        }
                    }
                }
            },
            Shortcut::Optional => match &body_shape {
                Some(bs) if *bs == in_shape => Some(fork),
                // Another shape: no residual here (the unused fork is dropped).
                _ => return body_out,
            },
            Shortcut::Pad => match &body_shape {
                None => None,
                Some(bs) => {
                    let stride = shape::shortcut_stride(&in_shape, bs, hint);
                    match (stride, in_shape.as_slice(), bs.as_slice()) {
                        (Some(s), [ic, _, _], [oc, _, _]) if oc >= ic => {
                            let v = self.layer_op(fork, bs.clone(), Rc::new(SubsamplePad { stride: s }), sc_sp);
                            self.row("", format!("subsample_pad /{s} {ic}->{oc}"), bs, 0, 0);
                            Some(v)
                        }
                        (_, [ic, _, _], [oc, _, _]) if oc < ic => {
                            self.err(
                                node,
                                sc_sp,
                                format!("`shortcut pad` can only add channels, but the body goes from {ic} to {oc} channels"),
                                Some(format!("use `shortcut auto` or a projection: `shortcut {{ conv({oc}, 1) -> bn }}`")),
                            );
                            Some(fork)
                        }
                        _ => {
                            self.err(
                                node,
                                sc_sp,
                                format!("`shortcut pad` cannot map {} to {} by subsampling and zero-padding channels", show(&in_shape), show(bs)),
                                Some("`pad` needs [C, H, W] values whose spatial size shrinks by an integer stride; write a projection `shortcut { .. }`".into()),
                            );
                            Some(fork)
                        }
                    }
                }
            },
            Shortcut::Projection { body: proj } => {
                let p_out = self.walk(proj, Some(fork));
                self.guessing = self.is_guess(Some(input)) || self.is_guess(body_out) || self.is_guess(p_out);
                if let (Some(po), Some(bs)) = (p_out, &body_shape) {
                    let ps = self.shape(po);
                    if ps != *bs {
                        let sp = sc_sp;
                        let origin_node = node;
                        let help = match (shape::shortcut_stride(&in_shape, bs, hint), bs.as_slice()) {
                            (Some(s), [oc, _, _]) => format!(
                                "make the projection output {}, e.g. `shortcut {{ {} }}`",
                                show(bs),
                                projection_text(*oc, s)
                            ),
                            _ => format!("make the projection output {}", show(bs)),
                        };
                        self.err(
                            origin_node,
                            sp,
                            format!("shortcut projection does not match the residual body: expected {} (the body's output), found {}", show(bs), show(&ps)),
                            Some(help),
                        );
                    }
                }
                p_out
            }
        };
        let (a, b) = (body_out?, sc_out?);
        self.guessing = self.is_guess(Some(a)) || self.is_guess(Some(b));
        let out_shape = self.shape(a);
        if self.shape(b) != out_shape {
            return Some(a);
        }
        let output = self.new_var(out_shape.clone());
        self.prog.ops.push(Op::Add { a, b, output, b_is_tap: false, sp: node.sp });
        self.row("", "+ shortcut".into(), &out_shape, 0, 0);
        Some(output)
    }

    /// `gate { body }`: the body reads a second handle of the value, and the value is multiplied
    /// by what it makes: one factor per channel (`[C]` or `[C, 1, 1]`, squeeze-and-excitation) or
    /// one per element (the value's shape). The output has the value's shape.
    fn gate(&mut self, node: &Node, body: &[Node], cur: Option<Var>) -> Option<Var> {
        let Some(input) = cur else {
            // Unknown input: still look inside for errors that do not depend on it.
            let _ = self.walk(body, None);
            return None;
        };
        let in_shape = self.shape(input);
        let fork = self.new_var(in_shape.clone());
        self.prog.ops.push(Op::Fork { input, output: fork });
        // A body whose shape is lost was already reported; the product keeps the value's shape.
        let factor = self.walk(body, Some(fork))?;
        self.guessing = self.is_guess(Some(input)) || self.is_guess(Some(factor));
        let fs = self.shape(factor);
        let per_channel = match (in_shape.as_slice(), fs.as_slice()) {
            ([c, _, _], [f]) | ([c, _, _], [f, 1, 1]) => c == f,
            _ => false,
        };
        if !per_channel && fs != in_shape {
            // Blame the body's last layer with parameters (the conv or linear that set the
            // factor's size), else the `gate` keyword.
            let last_layer = self
                .prog
                .ops
                .iter()
                .rev()
                .take_while(|op| !matches!(op, Op::Fork { output, .. } if *output == fork))
                .find_map(|op| match op {
                    Op::Field { sp, .. } => Some(*sp),
                    _ => None,
                });
            let msg = format!(
                "`gate` multiplies the value {} by its body's output, which must be {}: found {}",
                show(&in_shape),
                match in_shape.as_slice() {
                    [c, _, _] => format!(
                        "one factor per channel ([{c}] or [{c}, 1, 1]) or one per element ({})",
                        show(&in_shape)
                    ),
                    _ => format!("of the same shape ({})", show(&in_shape)),
                },
                show(&fs)
            );
            let help = match (in_shape.as_slice(), last_layer) {
                ([c, _, _], Some(_)) => format!(
                    "make this layer output {c} channels, as squeeze-and-excitation's last conv: `fc2: conv({c}, 1, bias = true)`"
                ),
                ([c, _, _], None) => format!(
                    "end the body with {c} channels, e.g. squeeze-and-excitation: `gate {{ adaptive_avgpool(1) -> conv({}, 1, bias = true) -> relu -> conv({c}, 1, bias = true) -> sigmoid }}`",
                    (c / 4).max(1)
                ),
                _ => format!("end the body with a layer that outputs {}", show(&in_shape)),
            };
            self.err(node, last_layer.unwrap_or(node.sp), msg, Some(help));
            return Some(input);
        }
        let output = self.new_var(in_shape.clone());
        self.prog.ops.push(Op::Mul { a: input, b: factor, output, sp: node.sp });
        self.row("", "* gate".into(), &in_shape, 0, 0);
        Some(output)
    }

    fn tap(
        &mut self,
        node: &Node,
        kind: TapKind,
        name: &str,
        name_sp: Sp,
        scope: usize,
        cur: Option<Var>,
    ) -> Option<Var> {
        let key = (scope, name.to_string());
        match kind {
            TapKind::Tap => {
                if let Some(prev) = self.taps.get(&key) {
                    let _ = prev.sp;
                    self.name_err(
                        node,
                        name_sp,
                        format!("duplicate tap `{name}`"),
                        Some("each tap in a block or model body needs its own name".into()),
                    );
                    return cur;
                }
                let var = cur.map(|c| {
                    let shape = self.shape(c);
                    let fork = self.new_var(shape);
                    self.prog.ops.push(Op::Fork { input: c, output: fork });
                    fork
                });
                self.taps.insert(key, Tap { var, sp: name_sp });
                cur
            }
            TapKind::Add | TapKind::Cat => {
                let word = if kind == TapKind::Add { "add" } else { "cat" };
                let Some(tap) = self.taps.get(&key) else {
                    let names: Vec<&str> =
                        self.taps.keys().filter(|(s, _)| *s == scope).map(|(_, n)| n.as_str()).collect();
                    let help = match did_you_mean(name, names.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("bind it first with `tap({name})` earlier in the same block or model body"),
                    };
                    self.name_err(node, name_sp, format!("unknown tap `{name}`"), Some(help));
                    return cur;
                };
                let (cur, tv) = (cur?, tap.var?);
                self.guessing = self.is_guess(Some(cur)) || self.is_guess(Some(tv));
                let (cs, ts) = (self.shape(cur), self.shape(tv));
                if kind == TapKind::Add {
                    if cs != ts {
                        self.err(
                            node,
                            name_sp,
                            format!("`add({name})` needs equal shapes: expected {} (the value here), found {} (tapped)", show(&cs), show(&ts)),
                            Some(format!("`add` sums elementwise; use `cat({name})` to concatenate channels, or tap at a point with shape {}", show(&cs))),
                        );
                        return Some(cur);
                    }
                    let output = self.new_var(cs.clone());
                    self.prog.ops.push(Op::Add { a: cur, b: tv, output, b_is_tap: true, sp: name_sp });
                    self.row("", format!("add({name})"), &cs, 0, 0);
                    Some(output)
                } else {
                    match shape::cat_channels(&ts, &cs) {
                        Some(o)
                            if self.too_big(node, name_sp, &format!("`cat({name})`'s output"), &o, "the channels") =>
                        {
                            self.lost(Some(o.to_vec()))
                        }
                        Some(o) => {
                            let output = self.new_var(o.to_vec());
                            self.prog.ops.push(Op::Cat { a: tv, b: cur, output, sp: name_sp });
                            self.row("", format!("cat({name})"), &o, 0, 0);
                            Some(output)
                        }
                        None => {
                            let _ = word;
                            self.err(
                                node,
                                name_sp,
                                format!(
                                    "`cat({name})` concatenates [C, H, W] values along channels, so the spatial sizes must match: the value here is {}, the tapped value is {}",
                                    show(&cs),
                                    show(&ts)
                                ),
                                Some(format!("tap at a point with spatial size {}", show(cs.get(1..).unwrap_or(&[])))),
                            );
                            let guess = match (cs.as_slice(), ts.first()) {
                                ([c, h, w], Some(t)) => Some(vec![c.saturating_add(*t), *h, *w]),
                                _ => None,
                            };
                            self.lost(guess)
                        }
                    }
                }
            }
        }
    }
}

/// The product of the strides of the convs and pools in a body (nested residual shortcuts
/// aside): the stride an `auto` / `pad` shortcut should use.
fn body_stride(nodes: &[Node]) -> usize {
    let mut s: usize = 1;
    for n in nodes {
        let k = match &n.kind {
            Kind::Layer { layer, .. } => layer.stride(),
            Kind::Seq(c) => body_stride(c),
            Kind::Residual { body, .. } => body_stride(body),
            // A gate's body makes the factor; the value it scales keeps its size.
            Kind::Gate { .. } => 1,
            _ => 1,
        };
        s = s.saturating_mul(k);
    }
    s
}

fn projection_text(oc: usize, stride: usize) -> String {
    if stride == 1 {
        format!("conv({oc}, 1) -> bn")
    } else {
        format!("conv({oc}, 1, stride = {stride}) -> bn")
    }
}

fn identity_help(input: &[usize], output: &[usize], hint: usize) -> String {
    match (shape::shortcut_stride(input, output, hint), input, output) {
        (Some(s), [ic, _, _], [oc, _, _]) => {
            let mut h = format!(
                "add `shortcut auto` (a 1x1 conv + bn), or write the projection: `shortcut {{ {} }}`",
                projection_text(*oc, s)
            );
            if oc >= ic {
                h.push_str(", or `shortcut pad` (option A: subsample and zero-pad channels)");
            }
            h
        }
        (_, _, [.., d]) if output.len() < 3 => {
            format!("write a projection that outputs {}: `shortcut {{ linear({d}, bias = false) }}`", show(output))
        }
        _ => format!("write a projection that maps {} to {}: `shortcut {{ .. }}`", show(input), show(output)),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn suggest_groups(groups: usize, in_ch: usize, out_ch: usize) -> usize {
    let g = gcd(in_ch, out_ch);
    // The largest divisor of both channel counts not above the requested `groups`.
    (1..=groups.min(g).max(1)).rev().find(|d| g.is_multiple_of(*d)).unwrap_or(1)
}

#[cfg(test)]
mod tests;
