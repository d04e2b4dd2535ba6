//! `ModelInfo`: input/output shapes, parameter and MAC counts, and the layer table.

use proc_macro2::TokenStream;
use quote::quote;

use super::{dfdx, lit, private};
use crate::ir::Program;
use crate::model::Model;

fn dims(d: &[usize]) -> TokenStream {
    let ns = d.iter().map(|n| lit(*n));
    quote!(&[#(#ns),*])
}

pub(crate) fn info_impl(m: &Model, prog: &Program) -> TokenStream {
    let d = dfdx();
    let p = private();
    let name = &m.name;
    let name_str = name.to_string();
    let input = dims(&m.input);
    let output = dims(&prog.vars.get(prog.output).cloned().unwrap_or_default());
    // As written: a count past the target's `usize` is rustc's `overflowing_literals` error, not
    // a silent `usize::MAX` (the macro's own totals are checked, see `infer::Infer::row`).
    let params = proc_macro2::Literal::u64_unsuffixed(prog.params);
    let macs = proc_macro2::Literal::u64_suffixed(prog.macs);
    let rows = prog.rows.iter().map(|r| {
        let (path, op, shape) = (&r.path, &r.op, dims(&r.shape));
        let rp = proc_macro2::Literal::u64_unsuffixed(r.params);
        let rm = proc_macro2::Literal::u64_suffixed(r.macs);
        quote!(#p::runtime::summary::LayerSummary { path: #path, op: #op, output_shape: #shape, params: #rp, macs: #rm })
    });
    quote! {
        impl<E: #d::shapes::Dtype, D: #d::tensor_ops::Device<E>> #p::runtime::summary::ModelInfo for #name<E, D> {
            const NAME: &'static str = #name_str;
            const INPUT_SHAPE: &'static [usize] = #input;
            const OUTPUT_SHAPE: &'static [usize] = #output;
            const NUM_PARAMS: usize = #params;
            const MACS: u64 = #macs;
            const SUMMARY: #p::runtime::summary::ModelSummary = #p::runtime::summary::ModelSummary {
                name: #name_str,
                input_shape: #input,
                output_shape: #output,
                layers: &[#(#rows),*],
                params: #params,
                macs: #macs,
            };
        }
    }
}
