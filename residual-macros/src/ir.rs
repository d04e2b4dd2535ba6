//! The intermediate representation: what shape inference produces (`infer.rs`) and validation
//! (`validate.rs`) and code generation (`codegen/`) read. A model lowered to straight-line tensor
//! operations over numbered variables, its parameter-bearing fields (with the spans of the tokens
//! that made them), and the summary rows. No stage writes it after inference.

use std::fmt;
use std::rc::Rc;

use proc_macro2::TokenStream;

use crate::ctxt::{Origin, Sp};

pub(crate) type Var = usize;

/// A parameter-bearing layer: one field of the generated struct.
#[derive(Debug)]
pub(crate) struct Field {
    /// Parameter path (the safetensors prefix), e.g. `layer1.0.conv1`.
    pub path: String,
    /// Struct field name: the path with `.` replaced by `_` (`_`-prefixed when it starts with a digit).
    pub ident: String,
    /// What the field is, from the layer's family file (`layers/`).
    pub ty: Box<dyn FieldType>,
    pub sp: Sp,
    pub origin: Option<Rc<Origin>>,
}

/// A struct field's type as code generation sees it; each parameter-bearing layer family
/// implements it beside its shape rule (`layers/conv.rs`, `layers/norm.rs`, ...).
pub(crate) trait FieldType: fmt::Debug {
    /// The field's Rust type, generic over `E` and `D`.
    fn rust_type(&self) -> TokenStream;
    /// The field's tensors as a compiled plan takes them, in order. `None`: plans have no kernel
    /// for this layer, and a model holding it runs layer by layer.
    fn plan_tensors(&self) -> Option<Vec<PlanTensor>> {
        None
    }
    /// The plan step that forwards a value through this field (its tensors at `cx.params`).
    fn plan_step(&self, _cx: &PlanCx<'_>) -> Option<TokenStream> {
        None
    }
    /// A second field saved under its layer's own path (a conv's bias: `conv1.bias` beside
    /// `conv1.weight`), so it does not count as a duplicate path.
    fn shares_layer_path(&self) -> bool {
        false
    }
    /// `#[zero_init_residual]`: a batch norm becomes one whose gamma starts at zero and says
    /// `true`; other fields say `false`.
    fn set_zero_gamma(&mut self) -> bool {
        false
    }
    /// The forward expression through the field `cx.field` (`self.<field>`), when it is not the
    /// field's own `Module::try_forward` / `ModuleMut::try_forward_mut` on the value.
    fn forward(&self, _field: &TokenStream, _cx: &ForwardCx<'_>) -> Option<TokenStream> {
        None
    }
}

/// One tensor of a field, for a plan: its name in the runtime struct, its element count, and
/// whether it is trained (running statistics are not).
pub(crate) struct PlanTensor {
    pub name: &'static str,
    pub len: usize,
    pub trainable: bool,
}

/// What a plan step is lowered with: the plan's path, the input and output value indices, the
/// input's shape and (for a field) the plan indices of the field's tensors.
pub(crate) struct PlanCx<'a> {
    pub plan: &'a TokenStream,
    pub input: usize,
    pub output: usize,
    pub in_shape: &'a [usize],
    pub params: &'a [usize],
}

/// A parameter-free op's code (pools, activations, reshapes, dropout, option A), from its
/// family's file in `layers/`.
pub(crate) trait OpCode: fmt::Debug {
    /// The expression that computes the op's output from the tensor `cx.x`.
    fn forward(&self, cx: &ForwardCx<'_>) -> TokenStream;
    /// A no-op on the buffer (flatten, identity): a plan's output value is its input's.
    fn is_view(&self) -> bool {
        false
    }
    /// The plan step, or `None` when plans have no kernel for this op.
    fn plan_step(&self, _cx: &PlanCx<'_>) -> Option<TokenStream> {
        None
    }
}

/// What an op's forward expression is written from.
pub(crate) struct ForwardCx<'a> {
    /// The input tensor's variable.
    pub x: &'a proc_macro2::Ident,
    /// Training (`ModuleMut`) or inference (`Module`).
    pub train: bool,
    pub input: &'a [usize],
    pub output: &'a [usize],
}

/// One straight-line operation; `sp` is the user's token it came from (generated statements
/// carry it, so that rustc's own checks underline the layer that made them).
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Forward through the struct field with this index.
    Field { input: Var, output: Var, field: usize, sp: Sp },
    /// A parameter-free op.
    Layer { input: Var, output: Var, code: Rc<dyn OpCode>, sp: Sp },
    /// `output = input.with_empty_tape()`: a second handle for a shortcut or a tap.
    Fork { input: Var, output: Var },
    /// `output = a + b`. A residual join moves `b` so the shortcut's tape (its projection's
    /// backward ops) merges into the result; a tap is only borrowed, since it may be read again.
    Add { a: Var, b: Var, output: Var, b_is_tap: bool, sp: Sp },
    /// `output = a * b`, `b` the output of a gate on `a`: `[C]` or `[C, 1, 1]` scales the channels
    /// of an `a` of `[C, H, W]`, a `b` of `a`'s shape multiplies elementwise. `b` is moved (its
    /// tape, the gate's backward, merges into the product).
    Mul { a: Var, b: Var, output: Var, sp: Sp },
    /// `output = cat(a, b)` along channels, `a` first. `cat(t)` gives `a` = the tapped value
    /// (only borrowed: a tap may be read again) and `b` = the current value (moved, its tape
    /// carries on): torchvision's DenseNet order, `torch.cat([old, new], 1)`.
    Cat { a: Var, b: Var, output: Var, sp: Sp },
}

/// One row of the summary table.
#[derive(Clone, Debug)]
pub(crate) struct Row {
    pub path: String,
    pub op: String,
    pub shape: Vec<usize>,
    pub params: u64,
    pub macs: u64,
}

/// A model lowered to straight-line code.
#[derive(Debug, Default)]
pub(crate) struct Program {
    pub ops: Vec<Op>,
    /// Shape of every variable (without batch); variable 0 is the input.
    pub vars: Vec<Vec<usize>>,
    pub fields: Vec<Field>,
    pub rows: Vec<Row>,
    pub output: Var,
    pub params: u64,
    pub macs: u64,
    /// Block instances expanded before their input's shape was known (they read `in_channels`
    /// or its kin), with the shape inference found flowing into them: the next expansion pass
    /// expands them with it (the span is the call's). Empty in the program that code generation
    /// reads.
    pub needs_input: Vec<(String, Vec<usize>, Sp)>,
    /// The model reads token ids (its input is `[S]` of `usize`) through this `embedding`.
    pub token_input: Option<TokenInput>,
}

/// A model's token embedding: the field reading the ids, and its table's size.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenInput {
    pub field: usize,
    pub num: usize,
    pub dim: usize,
}
