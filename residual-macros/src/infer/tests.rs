//! Shape inference and name checks through `expand`: the exact error texts (spans are checked
//! by the trybuild snapshots in `tests/ui`).

use crate::tests::{errors, expand_str, RESNET152};

fn one(src: &str) -> String {
    let e = errors(src);
    assert_eq!(e.len(), 1, "expected one error for {src}, got {e:#?}");
    e.into_iter().next().unwrap_or_default()
}

/// The one error of a mistake in a block template: at the template's token, naming the
/// instance and where it is called.
fn first(src: &str) -> String {
    let e = one(src);
    assert!(e.contains(", instantiated at line "), "{e}");
    e
}

const BASIC: &str = "block Basic(planes, stride = 1) {
    residual { conv1: conv(planes, 3, stride = stride, padding = 1) -> bn1: bn -> relu
               -> conv2: conv(planes, 3, padding = 1) -> bn2: bn }
    -> relu
}";

#[test]
fn valid_models_have_no_errors() {
    assert!(errors(RESNET152).is_empty());
    let src = format!(
        "{BASIC} model M[3, 32, 32] {{ conv(16, 3, padding = 1) -> Basic(16) x 3 -> global_avgpool -> linear(10) }}"
    );
    assert!(errors(&src).is_empty(), "{:?}", errors(&src));
}

#[test]
fn identity_shortcut_changing_channels_and_size() {
    let src = format!("{BASIC} model M[3, 32, 32] {{ conv(16, 3, padding = 1) -> layer2: Basic(32, stride = 2) }}");
    let e = errors(&src);
    assert_eq!(e.len(), 1, "{e:#?}"); // at the template's token; the call site is in the note
    assert!(e[0].contains("residual body changes the shape, but the shortcut is the identity"), "{}", e[0]);
    assert!(e[0].contains("expected the body to output [16, 32, 32], found [32, 16, 16]"));
    assert!(e[0].contains("in `layer2` (Basic(32, stride = 2)) of model `M`"));
    assert!(e[0].contains("help: add `shortcut auto`"));
    assert!(e[0].contains("`shortcut { conv(32, 1, stride = 2) -> bn }`"));
    assert!(e[0].contains("`shortcut pad`"));
    assert!(
        e[0].contains("note: in `layer2` (Basic(32, stride = 2)) of model `M`, instantiated at line 5, column "),
        "{}",
        e[0]
    );
}

#[test]
fn identity_errors_merge_across_instances() {
    let src = format!("{BASIC} model M[3, 32, 32] {{ conv(16, 3, padding = 1) -> layer1: Basic(32) x 3 }}");
    let e = errors(&src);
    // layer1.0 changes channels; layer1.1 and .2 are fine.
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(e[0].contains("[16, 32, 32], found [32, 32, 32]"));
    assert!(e[0].contains("`shortcut { conv(32, 1) -> bn }`"));
}

#[test]
fn explicit_identity_and_sequence_shortcut() {
    let e = one("model M[4, 8] { residual { linear(16) } shortcut identity }");
    assert!(e.contains("the shortcut is `identity`"));
    assert!(e.contains("`shortcut { linear(16, bias = false) }`"), "{e}");
}

#[test]
fn projection_mismatch() {
    let e = one(
        "model M[16, 8, 8] { residual { conv(32, 3, stride = 2, padding = 1) -> bn } shortcut { conv(32, 1) -> bn } }",
    );
    assert!(e.contains("shortcut projection does not match the residual body: expected [32, 4, 4] (the body's output), found [32, 8, 8]"), "{e}");
    assert!(e.contains("`shortcut { conv(32, 1, stride = 2) -> bn }`"), "{e}");
}

#[test]
fn auto_and_pad_shortcuts() {
    assert!(errors("model M[16, 8, 8] { residual { conv(32, 3, stride = 2, padding = 1) } shortcut auto }").is_empty());
    assert!(errors("model M[16, 8, 8] { residual { conv(32, 3, stride = 2, padding = 1) } shortcut pad }").is_empty());
    let e = one("model M[16, 8, 8] { residual { conv(8, 3, padding = 1) } shortcut pad }");
    assert!(e.contains("`shortcut pad` can only add channels, but the body goes from 16 to 8 channels"), "{e}");
    let e = one("model M[4, 8] { residual { linear(16) } shortcut auto }");
    assert!(e.contains("`shortcut auto` cannot map [4, 8] to [4, 16]"), "{e}");
    // No stride maps 8x8 to 12x12: the conv that grew the map is at fault, not the shortcut.
    let e = one("model M[16, 8, 8] { residual { conv(16, 3, padding = 3) } shortcut auto }");
    assert!(e.contains("this `conv` grows the map by 4 in height and width (3x3 kernel, padding 3)"), "{e}");
    assert!(e.contains("`padding = 1` keeps the size"), "{e}");
}

#[test]
fn taps() {
    assert!(errors(
        "model M[3, 8, 8] { conv(8, 3, padding = 1) -> tap(a) -> conv(8, 3, padding = 1) -> add(a) -> cat(a) }"
    )
    .is_empty());
    let e = errors("model M[3, 8, 8] { conv(16, 3) -> tap(a) -> conv(8, 3) -> add(a) -> cat(b) -> tap(a) -> tap(a) }");
    assert_eq!(e.len(), 4, "{e:#?}");
    assert!(
        e[0].contains("`add(a)` needs equal shapes: expected [8, 4, 4] (the value here), found [16, 6, 6] (tapped)")
    );
    assert!(e[1].contains("unknown tap `b`") && e[1].contains("did you mean `a`?"));
    assert!(e[2].contains("duplicate tap `a`"));
    let e = one("model M[3, 8, 8] { conv(16, 3) -> tap(a) -> conv(8, 3) -> cat(a) }");
    assert!(e.contains("the value here is [8, 4, 4], the tapped value is [16, 6, 6]"), "{e}");
    let e = one("model M[3, 8, 8] { add(a) }");
    assert!(e.contains("bind it first with `tap(a)`"), "{e}");
    // Taps are scoped to a block instance.
    let e = first("block B { add(a) } model M[3, 8, 8] { tap(a) -> B }");
    assert!(e.contains("unknown tap `a`"), "{e}");
}

#[test]
fn windows_groups_rank() {
    let e = one("model M[3, 8, 8] { conv(16, 11) }");
    assert!(e.contains("`conv` window does not fit: it spans 11, but the input height is 8 (8 with padding 0)"), "{e}");
    assert!(e.contains("`padding = 2`"), "{e}");
    let e = one("model M[3, 8, 8] { conv(16, 3, dilation = 4) }");
    assert!(e.contains("with `dilation = 4` the 3x3 kernel spans 9"), "{e}");
    assert!(e.contains("use `dilation = 3` or less, or `padding = 1`"), "{e}");
    let e = one("model M[3, 2, 2] { maxpool(3) }");
    assert!(e.contains("`maxpool` window does not fit"), "{e}");
    let e = one("model M[3, 8, 8] { avgpool(2, padding = 2) }");
    assert!(e.contains("padding 2 is more than half the kernel size 2"), "{e}");
    let e = one("model M[6, 8, 8] { conv(16, 3, groups = 4) }");
    assert!(e.contains("`groups = 4` does not divide the input channels (6)") && e.contains("`groups = 2`"), "{e}");
    let e = one("model M[8, 8, 8] { conv(12, 3, groups = 8) }");
    assert!(e.contains("does not divide the output channels (12)") && e.contains("`groups = 4`"), "{e}");
    let e = one("model M[3, 8, 8] { conv(16, 3) -> linear(10) }");
    assert!(
        e.contains("`linear` expects a [D] or [S, D] input, found [16, 6, 6]") && e.contains("global_avgpool"),
        "{e}"
    );
    let e = one("model M[16] { conv(16, 3) }");
    assert!(e.contains("`conv` expects a [C, H, W] input, found [16] (rank 1)"), "{e}");
    let e = one("model M[3, 8, 8] { global_avgpool -> bn }");
    assert!(e.contains("`bn` expects a [C, H, W] input, found [3]"), "{e}");
    // On an image, `layernorm` normalises each pixel's channels (ConvNeXt's LayerNorm2d).
    let out = expand_str("model M[3, 8, 8] { layernorm(eps = 1e-6) }");
    assert!(out.contains("LayerNorm < 3 , E , D , 1000 >"), "{out}");
    let e = one("model M[3, 8, 8] { layernorm(eps = 2) }");
    assert!(e.contains("`eps` must be in (0, 1] and a multiple of 1e-9, found 2"), "{e}");
}

#[test]
fn independent_errors_are_all_reported_in_order() {
    let e = errors(
        "model M[3, 8, 8] { conv(16, 3, groups = 2) -> conv(16, 3) -> residual { conv(32, 1) } -> bogus -> linear(3) }",
    );
    // What `bogus` does to the shape is unknown, so `linear(3)` after it is not checked: an
    // error there would be a follow-on (`bogus` may be a misspelt `global_avgpool`).
    assert_eq!(e.len(), 3, "{e:#?}");
    assert!(e[0].contains("groups = 2"));
    assert!(e[1].contains("residual body changes the shape"));
    assert!(e[2].contains("unknown layer or block `bogus`"));
}

#[test]
fn names_and_arguments() {
    let e = one("model M[3, 8, 8] { cnv(16, 3) }");
    assert!(e.contains("unknown layer or block `cnv`") && e.contains("did you mean `conv`?"));
    let e = one("model M[3, 8, 8] { batchnorm }");
    assert!(e.contains("did you mean `bn`?"), "{e}");
    let e = one("block Bottleneck(w) { conv(w, 1) } model M[3, 8, 8] { Botleneck(4) }");
    assert!(e.contains("did you mean `Bottleneck`?"));
    let e = one("model M[3, 8, 8] { conv(16, 3, strde = 2) }");
    assert!(e.contains("`conv` has no parameter `strde`") && e.contains("did you mean `stride`?"));
    let e = one("model M[3, 8, 8] { conv(16) }");
    assert!(e.contains("missing argument `kernel` for `conv`") && e.contains("conv(out, kernel, stride = 1"));
    let e = one("model M[3, 8, 8] { conv(16, 3, 1, 0, 1, 1, false, 9) }");
    assert!(e.contains("`conv` takes 7 arguments, found 8"), "{e}");
    let e = one("model M[3, 8, 8] { conv(16, 3, stride = 1, stride = 2) }");
    assert!(e.contains("argument `stride` is given twice"));
    let e = one("model M[3, 8, 8] { conv(out = 16, 3) }");
    assert!(e.contains("positional argument after a named one"));
    let e = one("model M[3, 8, 8] { conv(16, 3, stride = 0) }");
    assert!(e.contains("`stride` must be at least 1, found 0"));
    let e = one("model M[3, 8, 8] { conv(16, 3, padding = -1) }");
    assert!(e.contains("`padding` must not be negative, found -1"));
    let e = one("model M[3, 8, 8] { conv(16, 3, bias = 1) }");
    assert!(e.contains("`bias` must be `true` or `false`, found `1`"));
    let e = one("model M[3, 8, 8] { dropout(1.5) }");
    assert!(e.contains("dropout probability must be in [0, 1)"));
    let e = first("block B(width) { conv(widht, 1) } model M[3, 8, 8] { B(4) }");
    assert!(
        e.contains("unknown parameter `widht`") && e.contains("did you mean `width`?") && e.contains("in `0` (B(4))"),
        "{e}"
    );
    let e = one("model M[3, 8, 8] { conv(width, 1) }");
    assert!(e.contains("unknown parameter `width`") && e.contains("a model body has none"));
    let e = first("block B(w) { conv(w / 0, 1) } model M[3, 8, 8] { B(4) }");
    assert!(e.contains("division by zero"), "{e}");
    let e = one("model M[3, 8, 8] { relu x 0 }");
    assert!(e.contains("repetition count must be at least 1, found 0"));
    let e = one("model M[3, 8, 8] { (relu) x 2 (first: k = 1) }");
    assert!(e.contains("`first:` overrides arguments of a block or layer call"));
    let e = errors("block A { B } block B { A } model M[3, 8, 8] { A }").join("\n");
    assert!(
        e.contains("block `A` instantiates itself: A -> B -> A") && e.contains("blocks cannot be recursive"),
        "{e}"
    );
}

#[test]
fn duplicate_names() {
    let e = errors("block B(w, w) { relu } block B { relu } block conv { relu } model M[3] { a: relu -> a: relu } model M[3] { relu }");
    let all = e.join("\n");
    assert!(all.contains("duplicate parameter `w` in block `B`"));
    assert!(all.contains("duplicate block `B`"));
    assert!(all.contains("block `conv` has the name of a built-in layer"));
    assert!(all.contains("duplicate name `a` in this sequence"));
    assert!(all.contains("duplicate model `M`"));
    // Path collisions: a body step named like the auto projection.
    let e = one("model M[8, 4, 4] { residual { downsample: (conv(16, 1)) } shortcut auto }");
    assert!(e.contains("duplicate parameter path `downsample.0`"), "{e}");
    let e = one("model M[8, 4, 4] { a_b: conv(8, 1) -> a: (b: conv(8, 1)) }");
    assert!(e.contains("parameter path `a.b` gives the struct field `a_b`, which `a_b` already uses"), "{e}");
}

#[test]
fn paths_follow_torchvision() {
    let out = expand_str(RESNET152);
    for key in [
        "\"conv1\"",
        "\"bn1\"",
        "\"layer1.0.downsample.0\"",
        "\"layer1.0.downsample.1\"",
        "\"layer2.7.conv3\"",
        "\"fc\"",
    ] {
        assert!(out.contains(key), "{key}");
    }
    assert!(!out.contains("\"layer1.1.downsample"), "identity blocks have no projection");
    assert!(out.contains("KaimingNormalFanOut"));
    // Unnamed params are indexed; an unnamed residual's unnamed steps are indexed under it.
    let out = expand_str(
        "model M[3, 8, 8] { conv(8, 3, padding = 1) -> residual { conv(8, 3, padding = 1) -> c: conv(8, 1) } }",
    );
    assert!(out.contains("\"0\"") && out.contains("\"1.0\"") && out.contains("\"c\""), "{out}");
    assert!(out.contains("pub _0 :") && out.contains("pub _1_0 :"));
}

#[test]
fn zero_init_marks_the_last_bn_of_each_body() {
    let src = format!("{BASIC} #[zero_init_residual] model M[3, 8, 8] {{ conv(8, 3, padding = 1) -> b: Basic(8) }}");
    let out = expand_str(&src);
    assert!(out.contains("BatchNorm2d < 8 , E , D , true , 10000 , 100000 >"), "{out}");
    assert_eq!(out.matches(", true , 10000").count(), 1);
}

/// The first model's program and output shape, for a declaration without errors.
fn lowered(src: &str) -> (crate::ir::Program, Option<Vec<usize>>) {
    let parsed: crate::parse::Input = syn::parse2(src.parse().expect("tokens")).expect("parses");
    let (_, mut inferred, cx) = crate::lower(&parsed);
    assert!(cx.check().is_ok(), "errors in {src}");
    inferred.remove(0)
}

/// The output shape the fallback declares after an error.
fn fallback_output(src: &str) -> Option<Vec<usize>> {
    let ts: proc_macro2::TokenStream = src.parse().ok()?;
    let parsed: crate::parse::Input = syn::parse2(ts).ok()?;
    let (_, inferred, cx) = crate::lower(&parsed);
    let _ = cx.check();
    inferred.into_iter().next().and_then(|(_, out)| out)
}

#[test]
fn after_a_lost_shape_inference_guesses_on_and_reports_nothing_more() {
    // The window does not fit: size 1 is guessed, global_avgpool and linear give [10].
    let src = "model M[3, 8, 8] { conv(16, 9) -> bn -> relu -> global_avgpool -> linear(10) }";
    assert!(one(src).contains("`conv` window does not fit"));
    assert_eq!(fallback_output(src), Some(vec![10]));
    // A missing global_avgpool: `linear` on an image is guessed to give [out]; the following
    // layers' would-be errors are not reported.
    let src = "model M[3, 8, 8] { conv(16, 3) -> linear(10) -> relu -> linear(5) }";
    assert!(one(src).contains("`linear` expects a [D] or [S, D] input"));
    assert_eq!(fallback_output(src), Some(vec![5]));
    // A shortcut mismatch keeps the body's shape.
    let src = "model M[3, 8, 8] { residual { conv(4, 1) } -> flatten }";
    assert!(one(src).contains("residual body changes the shape"));
    assert_eq!(fallback_output(src), Some(vec![256]));
}

#[test]
fn errors_about_known_values_are_still_reported_after_a_lost_shape() {
    // The body loses its shape; the projection reads the residual's (known) input, so its own
    // mistake is an independent error.
    let src = "model M[3, 8, 8] { residual { conv(8, 99) } shortcut { conv(8, 1) -> linear(3) } }";
    let e = errors(src);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].contains("`conv` window does not fit"), "{e:#?}");
    assert!(e[1].contains("`linear` expects"), "{e:#?}");
}

#[test]
fn every_tensor_is_capped_at_2_pow_31_elements() {
    // Once accepted by `cargo check`: 128 billion values per sample.
    let e = one("model M[3, 8, 8] { conv(2000000000, 1) }");
    assert!(e.contains("the output [2000000000, 8, 8] holds 128,000,000,000 values, more than the 2^31"), "{e}");
    assert!(e.contains("check `out`"), "{e}");
    // A weight past the cap.
    let e = one("model M[3, 100, 100] { flatten -> linear(100000) }");
    assert!(e.contains("the weight [100000, 30000] holds 3,000,000,000 values"), "{e}");
    // The input itself.
    let e = one("model M[1024, 1024, 4096] { relu }");
    assert!(e.contains("the input holds 4,294,967,296 values per sample"), "{e}");
    // `cat` doubling channels past the cap.
    let e = one("model M[1, 40000, 40000] { tap(a) -> cat(a) }");
    assert!(e.contains("`cat(a)`'s output [2, 40000, 40000] holds 3,200,000,000 values"), "{e}");
}

#[test]
fn totals_overflow_is_an_error_not_a_saturated_count() {
    // Each conv is 46000^2 x 45999^2 ~ 4.5e18 MACs; the fifth takes the total past u64::MAX,
    // where MACS once saturated silently.
    let e = one("model M[1, 46000, 46000] { conv(1, 46000, padding = 22999) x 5 }");
    assert!(e.contains("the model's MAC count overflows a 64-bit integer at this layer"), "{e}");
}

#[test]
fn an_unknown_unit_is_one_error() {
    // Once "unknown parameter `x`" and then a false shape error after it.
    let e = one("model M[3, 8, 8] { conv(8, 3) -> mul(x) -> linear(10) }");
    assert!(e.contains("unknown layer or block `mul`"), "{e}");
    // Bad arguments also stop the checks that depend on the step's output.
    let e = one("model M[3, 8, 8] { conv(8, 3, strde = 2) -> linear(10) }");
    assert!(e.contains("`conv` has no parameter `strde`"), "{e}");
}

#[test]
fn nesting_limit_is_not_called_recursion() {
    let mut src = String::from("block B0 { relu }");
    for i in 1..=33 {
        src.push_str(&format!(" block B{i} {{ B{} }}", i - 1));
    }
    src.push_str(" model M[3, 8, 8] { B33 }");
    let e = errors(&src);
    assert!(!e.is_empty());
    assert!(e[0].contains("blocks nested too deeply: `B1` would be level 33"), "{e:#?}");
    assert!(e[0].contains("the limit is 32"), "{e:#?}");
    assert!(!e.iter().any(|m| m.contains("instantiates itself")), "{e:#?}");
}

#[test]
fn pytorch_linear_order_is_named() {
    let e = one("model M[512] { linear(512, 10) }");
    assert!(e.contains("`linear(512, 10)` looks like PyTorch's `Linear(in_features, out_features)`"), "{e}");
    assert!(e.contains("write `linear(10)`"), "{e}");
}

#[test]
fn a_conv_that_shrinks_the_map_in_a_block_is_blamed_not_the_shortcut() {
    let src = "block B(w) { residual { conv(w, 3, padding = 1) -> bn -> relu -> conv(w, 3) -> bn } shortcut auto }
               model M[3, 32, 32] { conv(16, 3, padding = 1) -> B(16) x 2 }";
    let e = first(src);
    assert!(e.contains("this `conv` shrinks the map by 2 in height and width (3x3 kernel, padding 0)"), "{e}");
    assert!(e.contains("`padding = 1` keeps the size (`kernel / 2 * dilation`)"), "{e}");
    assert!(!e.contains("shortcut"), "{e}");
}

#[test]
fn padding_on_a_1x1_conv_is_one_error_at_the_padding() {
    let src = "block B(w) { residual { conv(w, 1, padding = 1) -> bn } -> relu }
               model M[3, 8, 8] { conv(16, 3, padding = 1) -> B(16) x 7 }";
    let e = first(src);
    assert!(e.contains("`padding = 1` on a 1x1 conv adds a border of zeros"), "{e}");
}

#[test]
fn pytorch_conv_order_is_named() {
    let e = one("model M[3, 32, 32] { conv(3, 64, 3) }");
    assert!(e.contains("this reads as `out = 3, kernel = 64`: it looks like PyTorch's `Conv2d("), "{e}");
    assert!(e.contains("write `conv(64, 3, ..)`"), "{e}");
    // Ours: out = 64 on 64 channels, a 3x3 with stride 2.
    assert!(errors("model M[64, 8, 8] { conv(64, 3, 2) }").is_empty());
}

#[test]
fn cat_puts_the_tapped_value_first() {
    use crate::ir::Op;
    let src = "model M[3, 8, 8] { conv(8, 3, padding = 1) -> tap(s) -> conv(4, 1) -> cat(s) }";
    let (prog, out) = lowered(src);
    assert_eq!(out, Some(vec![12, 8, 8]));
    let tap = prog.ops.iter().find_map(|op| match op {
        Op::Fork { output, .. } => Some(*output),
        _ => None,
    });
    let cat = prog.ops.iter().find_map(|op| match op {
        Op::Cat { a, b, .. } => Some((*a, *b)),
        _ => None,
    });
    let (a, b) = cat.unwrap();
    assert_eq!(Some(a), tap, "the tapped value comes first");
    assert_eq!(prog.vars[a], vec![8, 8, 8]);
    assert_eq!(prog.vars[b], vec![4, 8, 8]);
}

#[test]
fn gates_scale_channels_or_elements() {
    // Squeeze-and-excitation: a [C, 1, 1] factor.
    let se = "gate { adaptive_avgpool(1) -> fc1: conv(4, 1, bias = true) -> relu -> fc2: conv(16, 1, bias = true) -> hardsigmoid }";
    assert!(errors(&format!("model M[16, 8, 8] {{ {se} }}")).is_empty());
    // A [C] factor and an elementwise one.
    assert!(errors("model M[16, 8, 8] { gate { global_avgpool -> linear(16) -> sigmoid } }").is_empty());
    assert!(errors("model M[16, 8, 8] { gate { conv(16, 3, padding = 1) -> sigmoid } }").is_empty());
    assert!(errors("model M[4, 8] { gate { linear(8) -> sigmoid } }").is_empty());
    // A factor of the wrong channel count.
    let e = one("model M[16, 8, 8] { gate { adaptive_avgpool(1) -> conv(8, 1) -> sigmoid } }");
    assert!(e.contains("`gate` multiplies the value [16, 8, 8] by its body's output, which must be one factor per channel ([16] or [16, 1, 1]) or one per element ([16, 8, 8]): found [8, 1, 1]"), "{e}");
    assert!(e.contains("make this layer output 16 channels"), "{e}");
    let e = one("model M[16, 8, 8] { gate { maxpool(2) } }");
    assert!(e.contains("found [16, 4, 4]") && e.contains("conv(4, 1, bias = true)"), "{e}");
    let e = one("model M[4, 8] { gate { linear(3) } }");
    assert!(e.contains("which must be of the same shape ([4, 8]): found [4, 3]"), "{e}");
    // A mistake inside the body is its own error, not also a gate error.
    let e = one("model M[16, 8, 8] { gate { conv(16, 99) -> sigmoid } }");
    assert!(e.contains("`conv` window does not fit"), "{e}");
}

#[test]
fn a_gate_is_a_module_of_its_own() {
    use crate::ir::Op;
    let src = "model M[16, 8, 8] { conv(16, 3, padding = 1) -> se: gate { adaptive_avgpool(1) -> fc1: conv(4, 1, bias = true) -> relu -> fc2: conv(16, 1, bias = true) -> sigmoid } -> gate { conv(16, 1) } }";
    let (prog, out) = lowered(src);
    assert_eq!(out, Some(vec![16, 8, 8]));
    let paths: Vec<&str> = prog.fields.iter().map(|f| f.path.as_str()).collect();
    // Named: its layers under its name (torchvision's `SqueezeExcitation` keys); unnamed: under
    // its index.
    assert_eq!(paths, ["0", "se.fc1", "se.fc1", "se.fc2", "se.fc2", "2.0"]);
    assert_eq!(prog.ops.iter().filter(|op| matches!(op, Op::Mul { .. })).count(), 2);
}

#[test]
fn adaptive_pools_and_hard_activations() {
    assert_eq!(fallback_output("model M[8, 7, 9] { adaptive_avgpool(1) }"), Some(vec![8, 1, 1]));
    assert!(errors("model M[8, 7, 9] { adaptive_avgpool(1) -> relu6 -> hardswish -> hardsigmoid }").is_empty());
    assert!(errors("model M[8, 14, 14] { adaptive_avgpool(7) -> global_maxpool -> linear(2) }").is_empty());
    // PyTorch's uneven bins: resampled by matrices, not a plan step.
    let out = expand_str("model M[8, 7, 9] { adaptive_avgpool(3) -> upsample_bilinear(2, align_corners = false) }");
    assert!(out.contains("Resample :: AdaptiveAverage"), "{out}");
    assert!(out.contains("Resample :: BilinearHalfPixel"), "{out}");
    assert_eq!(fallback_output("model M[8, 7, 9] { adaptive_avgpool(3) }"), Some(vec![8, 3, 3]));
    let e = one("model M[8] { global_maxpool }");
    assert!(e.contains("`global_maxpool` expects a [C, H, W] input"), "{e}");
}

#[test]
fn batch_norm_takes_pytorchs_eps_and_momentum() {
    let out = expand_str("model M[3, 8, 8] { bn(eps = 0.001, momentum = 0.01) -> bn(1e-3) -> bn }");
    assert!(out.contains("BatchNorm2d < 3 , E , D , false , 1000000 , 10000 >"), "{out}");
    assert!(out.contains("BatchNorm2d < 3 , E , D , false , 1000000 , 100000 >"), "{out}");
    assert!(out.contains("BatchNorm2d < 3 , E , D , false , 10000 , 100000 >"), "{out}");
    // PyTorch's `BatchNorm2d(64)` habit: the channels are inferred.
    let e = one("model M[64, 8, 8] { bn(64) }");
    assert!(e.contains("`eps` must be in (0, 1] and a multiple of 1e-9, found 64"), "{e}");
    assert!(e.contains("PyTorch's `BatchNorm2d(64)` is plain `bn` here"), "{e}");
    let e = one("model M[64, 8, 8] { bn(momentum = 0.0000001) }");
    assert!(e.contains("`momentum` must be in (0, 1] and a multiple of 1e-6"), "{e}");
    assert!(!one("model M[64, 8, 8] { bn(eps = 0) }").is_empty());
}

const DEPTHWISE: &str =
    "block DW(stride = 1) { conv(in_channels, 3, stride = stride, padding = 1, groups = in_channels) -> bn }";

#[test]
fn blocks_read_their_inputs_shape() {
    let src = format!("{DEPTHWISE} model M[8, 16, 16] {{ conv(12, 1) -> DW -> DW(2) -> conv(24, 1) -> DW }}");
    assert!(errors(&src).is_empty(), "{:?}", errors(&src));
    assert_eq!(fallback_output(&src), Some(vec![24, 8, 8]));
    // In a parameter default, after other parameters; `in_features` on [S, D].
    let src = "block IR(oup, t = 6, hidden = in_channels * t) { conv(hidden, 1) -> conv(oup, 1) }
               block Mlp(r = 4) { linear(r * in_features) -> gelu -> linear(in_features) }
               model M[4, 8, 8] { IR(16) -> IR(8, t = 2) } model S[5, 32] { Mlp -> Mlp(2) }";
    assert!(errors(src).is_empty(), "{:?}", errors(src));
    let out = expand_str(src);
    assert!(out.contains("conv 1x1 16->32"), "IR(8, t = 2) after IR(16) expands 16 -> 32");
    assert!(out.contains("linear 32->128"), "Mlp's hidden size is 4 * 32");
    // A block's parameter shadows the input's name.
    assert!(errors("block B(in_channels) { conv(in_channels, 1) } model M[4, 8, 8] { B(6) }").is_empty());
}

#[test]
fn input_names_outside_their_place_are_errors() {
    let e = one("block B { linear(in_height) } model M[16] { B }");
    assert!(e.contains("`in_height` is not a size of this block's input"), "{e}");
    let e = one("model M[3, 8, 8] { conv(in_channels, 1) }");
    assert!(e.contains("`in_channels` names the input of a block, and this is a model body"), "{e}");
    // After an error upstream the block's input is unknown: that error alone, nothing about it.
    let src = format!("{DEPTHWISE} model M[8, 16, 16] {{ conv(12, 99) -> DW -> DW }}");
    let e = one(&src);
    assert!(e.contains("`conv` window does not fit"), "{e}");
}

#[test]
fn chains_of_input_reading_blocks_are_bounded() {
    let calls = vec!["DW"; 300].join(" -> ");
    let e = one(&format!("{DEPTHWISE} model M[8, 16, 16] {{ {calls} }}"));
    assert!(e.contains("more than 256 blocks in sequence read their input's shape"), "{e}");
    let calls = vec!["DW"; 256].join(" -> ");
    assert!(errors(&format!("{DEPTHWISE} model M[8, 16, 16] {{ {calls} }}")).is_empty());
}

#[test]
fn optional_shortcuts_add_when_the_shape_is_kept() {
    use crate::ir::Op;
    let block = "block IR(oup, stride = 1) { residual { conv: (conv(in_channels * 4, 1) -> conv(oup, 3, stride = stride, padding = 1)) } shortcut optional }";
    let src = format!("{block} model M[8, 16, 16] {{ IR(8) -> IR(16) -> IR(16, 2) -> IR(16) }}");
    let (prog, out) = lowered(&src);
    assert_eq!(out, Some(vec![16, 8, 8]));
    // Added in IR(8) on 8 channels and the last IR(16); not where channels or size change.
    assert_eq!(prog.ops.iter().filter(|op| matches!(op, Op::Add { .. })).count(), 2);
    assert_eq!(prog.ops.iter().filter(|op| matches!(op, Op::Fork { .. })).count(), 2, "unused forks dropped");
    let paths: Vec<&str> = prog.fields.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(&paths[..4], ["0.conv.0", "0.conv.1", "1.conv.0", "1.conv.1"]);
}

#[test]
fn transposed_convs_follow_pytorchs_arithmetic() {
    let out = expand_str("model M[8, 7, 7] { up: conv_transpose(4, 3, stride = 2, padding = 1, output_padding = 1) -> conv_transpose(2, 2, stride = 2, groups = 2, bias = false) }");
    // 7 -> 14 -> 28; weights [8, 4, 3, 3] + bias 4, then [4, 1, 2, 2].
    assert!(out.contains("ConvTranspose2d < 8 , 4 , 3 , 2 , 1 , 1 , 1 , 1 , 4 , 14 , 14"), "{out}");
    assert!(out.contains("ConvTranspose2d < 4 , 2 , 2 , 2 , 0 , 0 , 1 , 2 , 1 , 28 , 28"), "{out}");
    assert!(out.contains("Bias2d < 4 , 36"), "the bias's fan-in is PyTorch's: out / groups * k * k");
    assert_eq!(fallback_output("model M[8, 7, 7] { conv_transpose(4, 2, stride = 2) }"), Some(vec![4, 14, 14]));
    let e = one("model M[8, 7, 7] { conv_transpose(4, 3, stride = 2, output_padding = 2) }");
    assert!(e.contains("`output_padding = 2` must be smaller than the stride (2) or the dilation (1)"), "{e}");
    let e = one("model M[8, 7, 7] { conv_transpose(6, 3, groups = 4) }");
    assert!(e.contains("`groups = 4` does not divide the output channels (6)"), "{e}");
    let e = one("model M[8, 1, 1] { conv_transpose(4, 1, padding = 1) }");
    assert!(e.contains("`padding = 1` leaves no output"), "{e}");
}

#[test]
fn numbered_names_make_sibling_copies() {
    let src = "block L(g) { tap(x) -> norm1: bn -> relu -> conv1: conv(g, 3, padding = 1) -> cat(x) }
               model M[4, 8, 8] { denseblock1: (denselayer{1}: L(2) x 3) -> layer{0}: conv(4, 1) x 2 }";
    let (prog, out) = lowered(src);
    assert_eq!(out, Some(vec![4, 8, 8]));
    let paths: Vec<&str> = prog.fields.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "denseblock1.denselayer1.norm1",
            "denseblock1.denselayer1.conv1",
            "denseblock1.denselayer2.norm1",
            "denseblock1.denselayer2.conv1",
            "denseblock1.denselayer3.norm1",
            "denseblock1.denselayer3.conv1",
            "layer0",
            "layer1",
        ]
    );
    let e = one("model M[4, 8, 8] { l{1}: conv(4, 1) }");
    assert!(e.contains("a numbered name numbers the copies of a repetition, but this step is not repeated"), "{e}");
}

#[test]
fn quoted_names_are_keys_that_are_no_identifiers() {
    let src = r#"model M[4, 8, 8] { stage: ("block-"{0}: conv(4, 1) x 2) -> "a-b": bn }"#;
    let (prog, _) = lowered(src);
    let keys: Vec<(&str, &str)> = prog.fields.iter().map(|f| (f.path.as_str(), f.ident.as_str())).collect();
    assert_eq!(keys, [("stage.block-0", "stage_block_0"), ("stage.block-1", "stage_block_1"), ("a-b", "a_b")]);
    // Two names that meet in one field are an error, not a silent merge.
    let e = one(r#"model M[4, 8, 8] { "a-b": bn -> a_b: bn }"#);
    assert!(e.contains("gives the struct field `a_b`, which `a-b` already uses"), "{e}");
    // A `.` would make a false level of the key.
    let e = crate::tests::errors(r#"model M[4, 8, 8] { "a.b": bn }"#);
    assert!(e.iter().any(|e| e.contains("a name in quotes must be non-empty, without `.` or spaces")), "{e:?}");
}

#[test]
fn layer_scale_belongs_to_its_block() {
    let src =
        "block B { conv(8, 3, padding = 1, groups = 8) -> layer_scale(1e-6) } model M[8, 4, 4] { stage: (B x 2) }";
    let out = expand_str(src);
    assert!(out.contains("LayerScale < 8 , 1000 , E , D >"), "{out}");
    let (prog, _) = lowered(src);
    let keys: Vec<(&str, &str)> = prog.fields.iter().map(|f| (f.path.as_str(), f.ident.as_str())).collect();
    // The blocks are `stage.0.0` and `stage.0.1` (`x 2` inside the group); each conv is the
    // block's step 0, and each scale is the block's own `layer_scale`.
    assert_eq!(
        keys,
        [
            ("stage.0.0.0", "stage_0_0_0"),
            ("stage.0.0", "stage_0_0_layer_scale"),
            ("stage.0.1.0", "stage_0_1_0"),
            ("stage.0.1", "stage_0_1_layer_scale")
        ]
    );
    let e = one("model M[8, 4, 4] { layer_scale }");
    assert!(e.contains("`layer_scale` is a parameter of the block it is in, and this one is in none"), "{e}");
    let e = one("model M[8] { g: (layer_scale) }");
    assert!(e.contains("`layer_scale` expects a [C, H, W] input"), "{e}");
    let e = one("block B { layer_scale -> layer_scale } model M[8, 4, 4] { B }");
    assert!(e.contains("duplicate parameter path `0`"), "{e}");
}
