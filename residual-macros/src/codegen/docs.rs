//! The generated model's rustdoc: the user's doc comment, then what the macro knows (input and
//! output shapes, parameter and MAC counts, the layer table) and the docs of the block templates
//! the model instantiates, so that `cargo doc` shows them where the model is.

use proc_macro2::TokenStream;
use quote::quote;

use crate::ir::Program;
use crate::model::Model;
use crate::shape::show;

/// Groups digits by thousands (see `infer::thousands`).
fn thousands(n: u64) -> String {
    crate::infer::thousands(u128::from(n))
}

/// The layer table, as `ModelSummary`'s `Display` prints it (the runtime is not a dependency of
/// the macro, so the layout is repeated here).
fn table(prog: &Program) -> Vec<String> {
    let rows: Vec<[String; 5]> = prog
        .rows
        .iter()
        .map(|r| {
            [
                r.path.clone(),
                r.op.clone(),
                show(&r.shape),
                if r.params == 0 { "-".into() } else { thousands(r.params) },
                if r.macs == 0 { "-".into() } else { thousands(r.macs) },
            ]
        })
        .collect();
    let header = ["Layer", "Op", "Output shape", "Params", "MACs"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |r: &[String; 5]| {
        let pad = |s: &str, w: usize, right: bool| {
            let fill = " ".repeat(w.saturating_sub(s.chars().count()));
            if right {
                format!("{fill}{s}")
            } else {
                format!("{s}{fill}")
            }
        };
        let cells: Vec<String> = r.iter().zip(widths).enumerate().map(|(i, (c, w))| pad(c, w, i >= 3)).collect();
        cells.join("   ").trim_end().to_string()
    };
    let total: usize = widths.iter().sum::<usize>() + 3 * 4;
    let mut out = vec![line(&header), "-".repeat(total)];
    out.extend(rows.iter().map(line));
    out
}

pub(crate) fn model_docs(m: &Model, prog: &Program) -> TokenStream {
    let output = prog.vars.get(prog.output).cloned().unwrap_or_default();
    let mut lines: Vec<String> = Vec::new();
    if !m.docs.is_empty() {
        lines.push(String::new());
    }
    lines.push("# Shapes and costs".into());
    lines.push(String::new());
    lines.push("Computed by `residual!` when it expanded (shapes without the batch dimension):".into());
    lines.push(String::new());
    lines.push(format!("- input: `{}`, output: `{}`", show(&m.input), show(&output)));
    lines.push(format!("- trainable parameters: {}", thousands(prog.params)));
    lines.push(format!(
        "- multiply-accumulates per sample: {} ({:.3} G)",
        thousands(prog.macs),
        prog.macs as f64 / 1e9
    ));
    lines.push(String::new());
    lines.push("```text".into());
    lines.extend(table(prog));
    lines.push("```".into());
    let mut out = TokenStream::new();
    for l in lines {
        let l = format!(" {l}");
        out.extend(quote!(#[doc = #l]));
    }
    for (name, docs) in &m.blocks {
        if docs.is_empty() {
            continue;
        }
        let head = format!(" # Block `{name}`");
        out.extend(quote!(#[doc = ""] #[doc = #head] #[doc = ""] #(#docs)*));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn model_docs_hold_shapes_counts_table_and_block_docs() {
        let out = crate::tests::expand_str(crate::tests::RESNET152);
        assert!(out.contains("input: `[3, 224, 224]`, output: `[1000]`"), "shapes");
        assert!(out.contains("trainable parameters: 60,192,808"), "params");
        assert!(out.contains("multiply-accumulates per sample: 11,5"), "macs");
        assert!(out.contains("layer4.2.conv3"), "table rows");
        assert!(out.contains("# Block `Bottleneck`"), "block heading");
        assert!(out.contains("torchvision's Bottleneck (ResNet v1.5"), "block doc");
    }
}
