//! `layer_scale(init)`: a learned scale per channel of `[C, H, W]` (ConvNeXt's `layer_scale`,
//! Touvron et al.'s LayerScale), starting at `init`. As in torchvision, the parameter belongs to
//! the enclosing block: its key is `<block path>.layer_scale`, shaped `[C, 1, 1]`.

use std::rc::Rc;

use proc_macro2::TokenStream;
use quote::quote;

use super::{in_units, p, Dflt, Layer, Spec};
use crate::codegen::{lit, private};
use crate::infer::{field_ident, Infer, LayerAt};
use crate::ir::{FieldType, Var};
use crate::model::{Args, V};
use crate::shape;

pub(super) const SPECS: &[Spec] =
    &[Spec { name: "layer_scale", params: &[p("init", Dflt::Float(1e-6))], aliases: &["layerscale", "ls"], build }];

/// The runtime's `LayerScale` takes its initial value in billionths (a const parameter cannot
/// be a float on stable Rust).
const UNIT: f64 = 1e9;

fn build(a: &mut Args<'_>) -> Option<Rc<dyn Layer>> {
    let init = a.float("init")?;
    let Some(init_e9) = in_units(init.v, UNIT) else {
        a.err(
            init.sp,
            format!("`init` must be in (0, 1000] and a multiple of 1e-9, found {}", init.v),
            Some("ConvNeXt starts its layer scales at 1e-6: `layer_scale(1e-6)`".into()),
        );
        return None;
    };
    Some(Rc::new(LayerScale { init_e9: V { v: init_e9, sp: init.sp } }))
}

#[derive(Debug)]
struct LayerScale {
    init_e9: V<usize>,
}

impl Layer for LayerScale {
    fn has_params(&self) -> bool {
        true
    }

    fn infer(&self, inf: &mut Infer<'_>, at: &LayerAt<'_>) -> Option<Var> {
        let input = inf.shape(at.input);
        let c = match shape::rank3(&input) {
            Ok([c, _, _]) => c,
            Err(e) => {
                inf.shape_error(at.node, "layer_scale", e, &[], &input, None);
                return inf.lost(Some(input));
            }
        };
        // The block's own parameter: `<enclosing path>.layer_scale`, whatever the step's index.
        let Some((parent, _)) = at.path.rsplit_once('.') else {
            inf.err(
                at.node,
                at.node.sp,
                "`layer_scale` is a parameter of the block it is in, and this one is in none",
                Some("use it in a block, or in a named group: `stage: (.. -> layer_scale(1e-6))`".into()),
            );
            return inf.lost(Some(input));
        };
        let path = parent.to_string();
        let ident = field_ident(&format!("{path}.layer_scale"));
        let f = inf.add_field(at.node, &path, ident, Box::new(LayerScaleField { c, init_e9: self.init_e9.v }));
        let v = inf.field_op(at.input, input.clone(), f, at.node.sp);
        inf.row(&format!("{path}.layer_scale"), format!("layer_scale {c}"), &input, c as u64, 0);
        Some(v)
    }
}

/// No plan kernel: a model with a layer scale runs layer by layer.
#[derive(Debug)]
struct LayerScaleField {
    c: usize,
    init_e9: usize,
}

impl FieldType for LayerScaleField {
    fn rust_type(&self) -> TokenStream {
        let p = private();
        let (c, init) = (lit(self.c), lit(self.init_e9));
        quote!(#p::layers::LayerScale<#c, #init, E, D>)
    }
}
