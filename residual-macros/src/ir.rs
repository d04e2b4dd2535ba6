//! The intermediate representation: what shape inference produces (`infer.rs`) and validation
//! (`validate.rs`) and code generation (`codegen/`) read. A model lowered to straight-line tensor
//! operations over numbered variables, its parameter-bearing fields (with the spans of the tokens
//! that made them), and the summary rows. No stage writes it after inference.

use std::rc::Rc;

use crate::ctxt::{Origin, Sp};
use crate::shape::Conv;

pub(crate) type Var = usize;

/// A parameter-bearing layer: one field of the generated struct.
#[derive(Clone, Debug)]
pub(crate) struct Field {
    /// Parameter path (the safetensors prefix), e.g. `layer1.0.conv1`.
    pub path: String,
    /// Struct field name: the path with `.` replaced by `_` (`_`-prefixed when it starts with a digit).
    pub ident: String,
    pub ty: FieldTy,
    pub sp: Sp,
    pub origin: Option<Rc<Origin>>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum FieldTy {
    Conv { in_ch: usize, conv: Conv, oh: usize, ow: usize, kaiming: bool },
    Bias2d { c: usize, fan_in: usize },
    Bn { c: usize, zero_gamma: bool },
    Linear { i: usize, o: usize, bias: bool },
    LayerNorm { m: usize },
}

/// What a layer op does to its input.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum OpKind {
    /// Forward through the struct field with this index.
    Field(usize),
    MaxPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool {
        kernel: usize,
        stride: usize,
        padding: usize,
    },
    GlobalAvgPool,
    Flatten,
    Dropout {
        per_million: usize,
    },
    Relu,
    Gelu,
    Sigmoid,
    Tanh,
    Silu,
    LeakyRelu(f64),
    Identity,
    SubsamplePad {
        stride: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    Layer {
        input: Var,
        output: Var,
        kind: OpKind,
    },
    /// `output = input.with_empty_tape()`: a second handle for a shortcut or a tap.
    Fork {
        input: Var,
        output: Var,
    },
    /// `output = a + b`. A residual join moves `b` so the shortcut's tape (its projection's
    /// backward ops) merges into the result; a tap is only borrowed, since it may be read again.
    Add {
        a: Var,
        b: Var,
        output: Var,
        b_is_tap: bool,
    },
    /// `output = cat(a, b)` along channels, `a` first. `cat(t)` gives `a` = the tapped value
    /// (only borrowed: a tap may be read again) and `b` = the current value (moved, its tape
    /// carries on): torchvision's DenseNet order, `torch.cat([old, new], 1)`.
    Cat {
        a: Var,
        b: Var,
        output: Var,
    },
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
#[derive(Clone, Debug, Default)]
pub(crate) struct Program {
    pub ops: Vec<Op>,
    /// Shape of every variable (without batch); variable 0 is the input.
    pub vars: Vec<Vec<usize>>,
    pub fields: Vec<Field>,
    pub rows: Vec<Row>,
    pub output: Var,
    pub params: u64,
    pub macs: u64,
}
