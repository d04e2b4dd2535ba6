//! Validation, its own stage after shape inference: cross-cutting checks on the lowered program,
//! one documented `check_*` function per rule, every error collected in the context.

use std::collections::HashMap;

use crate::ctxt::Ctxt;
use crate::ir::{Field, Program};

/// Runs every rule on one model's program.
pub(crate) fn validate(prog: &Program, cx: &mut Ctxt) {
    check_fields(&prog.fields, cx);
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
