//! The layer table: one file per layer family, each holding everything about its layers —
//! the names and parameters users write (PyTorch's names and defaults), how bound arguments
//! become a layer (`build`), the shape rule with its errors, the parameter and MAC counts and
//! the summary text (`Layer::infer`), and the generated code (`ir::FieldType` for a struct
//! field, `ir::OpCode` for a parameter-free op, each with its compiled-plan step where the
//! runtime has a kernel).
//!
//! Adding a layer is adding its family file (or a `Spec` in one) and naming the file's `SPECS`
//! in [`FAMILIES`]: no other stage matches on layer names. docs/GRAMMAR.md's layer table lists
//! every spec (a test checks it).

mod activation;
mod attention;
mod conv;
mod conv_transpose;
mod dropout;
mod linear;
mod norm;
mod pool;
mod reshape;
mod scale;
mod sequence;
pub(crate) mod shortcut;
mod upsample;

use std::fmt;
use std::rc::Rc;

pub(crate) use conv::ConvLayer;
pub(crate) use norm::BatchNorm;

use crate::infer::{Infer, LayerAt};
use crate::ir::Var;
use crate::model::Args;

/// Every family's specs, in the order the "built-in layers: .." help lists them.
const FAMILIES: &[&[Spec]] = &[
    conv::SPECS,
    conv_transpose::SPECS,
    norm::SPECS,
    pool::SPECS,
    upsample::SPECS,
    reshape::SPECS,
    linear::SPECS,
    dropout::SPECS,
    scale::SPECS,
    sequence::SPECS,
    attention::SPECS,
    activation::SPECS,
];

/// Other libraries' names for language constructs that are not layers, for "did you mean".
const OTHER_ALIASES: &[(&str, &str)] = &[("shortcut", "residual { .. } shortcut ..")];

/// One built-in layer as users call it.
pub(crate) struct Spec {
    /// The name users write, e.g. `conv`.
    pub name: &'static str,
    /// Parameters in positional order.
    pub params: &'static [Param],
    /// Other libraries' names for it (`conv2d`, `batchnorm`, ..), matched case-insensitively.
    pub aliases: &'static [&'static str],
    /// Builds the layer from its bound arguments; `None` after reporting a bad one.
    pub build: fn(&mut Args<'_>) -> Option<Rc<dyn Layer>>,
}

/// A parameter of a built-in layer: PyTorch's name and its default.
pub(crate) struct Param {
    pub name: &'static str,
    pub default: Dflt,
}

/// The default of a built-in layer's parameter.
#[derive(Clone, Copy)]
pub(crate) enum Dflt {
    Required,
    Int(i128),
    Bool(bool),
    Float(f64),
    /// The value of an earlier parameter (a pool's stride is its kernel).
    Same(&'static str),
    /// Inferred from the value flowing in when not given (a position embedding's length is the
    /// sequence's); the text is what the signature shows (`len = S`).
    Inferred(&'static str),
}

/// `Param` in a `const` table: `p("stride", Dflt::Int(1))`.
pub(crate) const fn p(name: &'static str, default: Dflt) -> Param {
    Param { name, default }
}

/// A built layer with its evaluated arguments.
pub(crate) trait Layer: fmt::Debug {
    /// The shape rule: checks the value flowing in (`at.input`), reports what does not fit at the
    /// argument that explains it, and records the layer's fields, ops and summary row; returns
    /// the output value (`None` or a guess via `Infer::lost` when the shape is lost).
    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var>;
    /// How much the layer subsamples: what an `auto` or `pad` shortcut's stride is made of.
    fn stride(&self) -> usize {
        1
    }
    /// Whether the layer has parameters (its path then shows in the summary even unnamed).
    fn has_params(&self) -> bool {
        false
    }
}

/// `value` in `unit`ths (1 to 10^12 of them), when that is exact to a millionth of it: how a
/// float parameter reaches a runtime layer, whose const parameters cannot be floats on stable
/// Rust (batch-norm and layer-norm eps, momentum, a layer scale's initial value).
pub(crate) fn in_units(value: f64, unit: f64) -> Option<usize> {
    let n = (value * unit).round();
    ((1.0..=1e12).contains(&n) && ((n / unit) - value).abs() <= 1e-6 * value).then_some(n as usize)
}

/// Every built-in layer.
pub(crate) fn all() -> impl Iterator<Item = &'static Spec> {
    FAMILIES.iter().flat_map(|f| f.iter())
}

/// The built-in layer called `name`.
pub(crate) fn spec(name: &str) -> Option<&'static Spec> {
    all().find(|s| s.name == name)
}

/// What another library's name (`BatchNorm2d`, `dense`, ..) is called here.
pub(crate) fn alias(name: &str) -> Option<&'static str> {
    all()
        .find(|s| s.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
        .map(|s| s.name)
        .or_else(|| OTHER_ALIASES.iter().find(|(a, _)| a.eq_ignore_ascii_case(name)).map(|(_, l)| *l))
}

impl Spec {
    /// `conv(out, kernel, stride = 1, ..)`, as errors show it.
    pub fn signature(&self) -> String {
        let ps: Vec<(String, Option<String>)> = self
            .params
            .iter()
            .map(|p| {
                let d = match p.default {
                    Dflt::Required => None,
                    Dflt::Int(v) => Some(v.to_string()),
                    Dflt::Bool(v) => Some(v.to_string()),
                    Dflt::Float(v) => Some(format!("{v:?}")),
                    Dflt::Same(other) | Dflt::Inferred(other) => Some(other.to_string()),
                };
                (p.name.to_string(), d)
            })
            .collect();
        crate::model::signature(self.name, &ps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_unique() {
        let mut seen: Vec<String> = Vec::new();
        for s in all() {
            for n in std::iter::once(s.name).chain(s.aliases.iter().copied()) {
                let n = n.to_ascii_lowercase();
                assert!(!seen.contains(&n), "`{n}` twice in the layer table");
                seen.push(n);
            }
            for (i, p) in s.params.iter().enumerate() {
                if let Dflt::Same(other) = p.default {
                    assert!(
                        s.params.iter().take(i).any(|q| q.name == other),
                        "`{}`'s `{}` defaults to `{other}`, which is not an earlier parameter",
                        s.name,
                        p.name
                    );
                }
            }
        }
        assert_eq!(alias("BatchNorm2d"), Some("bn"));
        assert_eq!(alias("shortcut"), Some("residual { .. } shortcut .."));
        assert_eq!(alias("nothing"), None);
    }

    /// Every layer builds from its signature with its required arguments set to 1, on an image, a
    /// vector, a sequence or token ids, in a named group (a layer scale belongs to one) (so a `build` that reads an argument its spec lacks, or drops the layer, fails).
    #[test]
    fn every_layer_builds_from_its_signature() {
        for s in all() {
            // 1 for sizes; a probability below 1.
            let req: Vec<&str> = s
                .params
                .iter()
                .filter(|p| matches!(p.default, Dflt::Required))
                .map(|p| if p.name == "p" { "0.5" } else { "1" })
                .collect();
            let call = format!("{}({})", s.name, req.join(", "));
            // An image, a vector, a sequence, and token ids (then after the model's embedding,
            // which `unembed` needs).
            let ok = ["[4, 8, 8] { g: (", "[8] { g: (", "[4, 8] { g: (", "[4] { wte: embedding(3, 8) -> g: ("]
                .iter()
                .any(|head| crate::tests::errors(&format!("model M{head}{call}) }}")).is_empty());
            assert!(ok, "`{call}` fails on an image, a vector, a sequence and after an embedding");
        }
    }

    /// docs/GRAMMAR.md's layer table names every layer with its signature's parameters.
    #[test]
    fn grammar_lists_every_layer() {
        let grammar = include_str!("../../../docs/GRAMMAR.md");
        for s in all() {
            assert!(grammar.contains(&format!("`{}", s.name)), "GRAMMAR.md does not list `{}`", s.name);
            for p in s.params {
                assert!(grammar.contains(p.name), "GRAMMAR.md does not mention `{}`'s `{}`", s.name, p.name);
            }
        }
    }
}
