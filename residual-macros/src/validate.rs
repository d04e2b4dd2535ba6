//! Validation, its own stage after shape inference: cross-cutting checks on the lowered program,
//! one documented `check_*` function per rule, every error collected in the context.

use std::collections::HashMap;

use crate::ctxt::Ctxt;
use crate::ir::{Field, Op, Program};

/// Runs every rule on one model's program.
pub(crate) fn validate(prog: &Program, cx: &mut Ctxt) {
    check_fields(&prog.fields, cx);
    check_token_input(prog, cx);
}

/// A model that reads token ids (`embedding` first) has integers for its input: only the
/// embedding may read them (a residual around it, or a tap of the ids, would add ids to vectors).
fn check_token_input(prog: &Program, cx: &mut Ctxt) {
    let Some(t) = prog.token_input else { return };
    // The input and its second handles (the fork of a shortcut or a tap around the embedding).
    let mut ids = vec![0];
    for op in &prog.ops {
        let (reads_ids, sp) = match op {
            Op::Fork { input, output } => {
                if ids.contains(input) {
                    ids.push(*output);
                }
                continue;
            }
            Op::Field { input, field, sp, .. } => (ids.contains(input) && *field != t.field, *sp),
            Op::Layer { input, sp, .. } => (ids.contains(input), *sp),
            Op::Add { a, b, sp, .. } | Op::Mul { a, b, sp, .. } | Op::Cat { a, b, sp, .. } => {
                (ids.contains(a) || ids.contains(b), *sp)
            }
        };
        if reads_ids {
            let origin = prog.fields.get(t.field).and_then(|f| f.origin.clone());
            cx.push(
                sp,
                "this reads the model's input, which is token ids: only its `embedding` may read them",
                Some("put the residual, tap or layer after the embedding".into()),
                origin,
            );
            return;
        }
    }
}

/// Every parameter-bearing layer becomes one struct field named after its path (`.` -> `_`),
/// so two layers must not share a path (e.g. a body step named `downsample` beside an `auto`
/// shortcut) nor a field name (`a.b` and `a_b`). The conv bias field shares its conv's path on
/// purpose (keys `conv1.weight` and `conv1.bias`).
pub(crate) fn check_fields(fields: &[Field], cx: &mut Ctxt) {
    let mut idents: HashMap<&str, &Field> = HashMap::new();
    let mut paths: HashMap<&str, &Field> = HashMap::new();
    for f in fields {
        if !f.ty.shares_layer_path() {
            if paths.contains_key(f.path.as_str()) {
                cx.push(
                    f.sp,
                    format!("duplicate parameter path `{}`", f.path),
                    Some("two layers would save under the same key; name one of them differently".into()),
                    f.origin.clone(),
                );
                continue;
            }
            paths.insert(&f.path, f);
        }
        if !crate::codegen::valid_ident(&f.ident) {
            cx.push(
                f.sp,
                format!(
                    "parameter path `{}` gives the struct field `{}`, which is not a Rust identifier",
                    f.path, f.ident
                ),
                Some("rename the layer".into()),
                f.origin.clone(),
            );
            continue;
        }
        if let Some(prev) = idents.get(f.ident.as_str()) {
            cx.push(
                f.sp,
                format!(
                    "parameter path `{}` gives the struct field `{}`, which `{}` already uses",
                    f.path, f.ident, prev.path
                ),
                Some("rename one of the layers".into()),
                f.origin.clone(),
            );
            continue;
        }
        idents.insert(&f.ident, f);
    }
}
