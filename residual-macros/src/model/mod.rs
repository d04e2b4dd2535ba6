//! The network as data: block templates instantiated into a tree of nodes per model.
//!
//! This stage evaluates every argument expression (`eval.rs`), binds block and layer arguments
//! (`bind.rs`: positional then named, defaults filled in), expands blocks and `x N` repetitions
//! and computes every parameter path (`expand.rs`, see `docs/ARCHITECTURE.md`), and checks
//! names: unknown layers/blocks/parameters, duplicate names, wrong or missing arguments,
//! repetition counts. Shapes are `infer.rs`'s job; each built-in layer is its family's file in
//! `layers/`.

mod bind;
mod eval;
mod expand;

use std::collections::HashMap;
use std::rc::Rc;

use syn::{Attribute, Ident, Visibility};

pub(crate) use bind::{signature, Args, V};
use eval::Env;
pub(crate) use eval::Value;
use expand::Inst;

use crate::ctxt::{Ctxt, Origin, Sp};
use crate::layers::{self, Layer};
use crate::parse::{self, BlockDef, Init, Input, Item, TapKind};

/// Most layers one expansion may produce (ResNet-152 has about 600; ResNet-1001 about 3,000).
pub(crate) const MAX_NODES: usize = 10_000;
/// Largest size accepted for a dimension or an argument.
pub(crate) const MAX_SIZE: i128 = 1 << 31;
/// Deepest nesting of block instantiations.
const MAX_BLOCK_DEPTH: usize = 32;

/// The generic parameters of the generated struct and impls (dtype, device, batch, tape, and
/// the tensor visitor of `TensorCollection`): a model of one of these names would shadow them.
pub(crate) const GENERIC_PARAMS: &[&str] = &["E", "D", "B", "T", "V"];

/// Names the language reserves (cannot be block names).
const RESERVED: &[&str] =
    &["residual", "gate", "shortcut", "tap", "add", "cat", "block", "model", "auto", "pad", "x", "first"];

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
        layer: Rc<dyn Layer>,
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
    /// `gate { body }`: the value times the body's output (per channel, or elementwise).
    Gate {
        body: Vec<Node>,
    },
    /// `tap`, `add`, `cat`; names are scoped to one block instance (or the model body).
    Tap {
        kind: TapKind,
        name: String,
        name_sp: Sp,
        scope: usize,
    },
    /// A block instance that reads its input's shape (`in_channels`, ..), expanded before that
    /// shape was known: shape inference records the shape flowing in at `path`, and the next
    /// expansion pass (`KnownInputs`) expands the block with it.
    NeedsInput {
        path: String,
    },
    /// A step that is already an error (unknown name, bad arguments, bad count): what it does
    /// to the shape is unknown, so shape inference does not check what follows it (it would
    /// report false follow-on errors).
    Unknown,
}

#[derive(Clone, Debug)]
pub(crate) enum Shortcut {
    Identity {
        explicit: bool,
    },
    Auto {
        path: String,
    },
    Pad,
    /// Identity when the body keeps the shape, else no shortcut (torchvision's
    /// `use_res_connect`).
    Optional,
    Projection {
        body: Vec<Node>,
    },
}

/// Input shapes of block instances, by model and instance path, learnt by shape inference in an
/// earlier expansion pass: what `in_channels` and its kin are in that instance.
pub(crate) type KnownInputs = HashMap<(String, String), Vec<usize>>;

/// The items of an invocation, checked: block templates by name, and the models to build (a
/// duplicate or badly named one is an error in `cx`, not built).
pub(crate) struct Items<'a> {
    blocks: HashMap<String, &'a BlockDef>,
    pub models: Vec<&'a parse::ModelDef>,
}

/// Checks the invocation's names (blocks, their parameters, models); errors go to `cx`.
// As on `seq_in`: duplicate checks written as if/else next to their errors.
#[allow(clippy::map_entry)]
pub(crate) fn check_items<'a>(input: &'a Input, cx: &mut Ctxt) -> Items<'a> {
    let mut blocks: HashMap<String, &BlockDef> = HashMap::new();
    let mut models: Vec<&parse::ModelDef> = Vec::new();
    let mut model_names: HashMap<String, Sp> = HashMap::new();
    for item in &input.items {
        match item {
            Item::Block(b) => {
                let n = b.name.to_string();
                let sp = Sp::one(b.name.span());
                if layers::spec(&n).is_some() {
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
                            Some("each parameter of a block needs its own name; rename one of them".into()),
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
    Items { blocks, models }
}

/// Instantiates one model; its errors go to `cx`. `None` when its input shape is invalid (its
/// body is still expanded, so that its other errors are reported).
pub(crate) fn build_model(items: &Items<'_>, m: &parse::ModelDef, cx: &mut Ctxt, known: &KnownInputs) -> Option<Model> {
    {
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
            blocks: &items.blocks,
            model: name,
            nodes: 0,
            exhausted: false,
            stack: Vec::new(),
            next_scope: 0,
            used: Vec::new(),
            known,
            reads_input: Vec::new(),
        };
        let body = inst.seq(&m.body, &Env::new(), "", &None, 0);
        let used = inst.used;
        if !ok {
            return None;
        }
        Some(Model {
            name: m.name.clone(),
            vis: m.vis.clone(),
            docs: m.attrs.docs.clone(),
            init: m.attrs.init.map(|i| i.0).unwrap_or(Init::TorchDefault),
            zero_init: m.attrs.zero_init.is_some(),
            input: input_dims,
            body,
            blocks: used,
        })
    }
}
