//! End-to-end tests of `expand` on proc_macro2 tokens: valid inputs expand to the expected
//! items, invalid ones to `compile_error!`s with the expected text.

use proc_macro2::TokenStream;
use std::str::FromStr;

pub(crate) const RESNET152: &str = r#"
    /// torchvision's Bottleneck (ResNet v1.5: the stride sits on the 3x3).
    block Bottleneck(width, stride = 1, expansion = 4) {
        residual {
            conv1: conv(width, 1) -> bn1: bn -> relu
            -> conv2: conv(width, 3, stride = stride, padding = 1) -> bn2: bn -> relu
            -> conv3: conv(expansion * width, 1) -> bn3: bn
        } shortcut auto
        -> relu
    }

    /// ResNet-152 for 224x224 ImageNet images.
    #[init(kaiming_normal)]
    pub model ResNet152[3, 224, 224] {
        conv1: conv(64, 7, stride = 2, padding = 3) -> bn1: bn -> relu
        -> maxpool(3, stride = 2, padding = 1)
        -> layer1: Bottleneck(64) x 3
        -> layer2: Bottleneck(128) x 8 (first: stride = 2)
        -> layer3: Bottleneck(256) x 36 (first: stride = 2)
        -> layer4: Bottleneck(512) x 3 (first: stride = 2)
        -> global_avgpool -> fc: linear(1000)
    }
"#;

pub(crate) fn expand_str(src: &str) -> String {
    let ts = TokenStream::from_str(src).expect("test input tokenizes");
    crate::expand(ts).to_string()
}

/// The error messages of an expansion, in order.
pub(crate) fn errors(src: &str) -> Vec<String> {
    let ts = TokenStream::from_str(src).expect("test input tokenizes");
    let out = crate::expand(ts);
    let file: syn::File = match syn::parse2(out) {
        Ok(f) => f,
        Err(e) => return vec![format!("unparseable output: {e}")],
    };
    let mut msgs = Vec::new();
    for item in file.items {
        if let syn::Item::Macro(m) = item {
            if m.mac.path.segments.last().is_some_and(|s| s.ident == "compile_error") {
                if let Ok(lit) = m.mac.parse_body::<syn::LitStr>() {
                    msgs.push(lit.value());
                }
            }
        }
    }
    msgs
}

#[test]
fn resnet152_expands() {
    let out = expand_str(RESNET152);
    assert!(!out.contains("compile_error"), "{out}");
    assert!(out.contains("pub struct ResNet152"));
    assert!(out.contains("\"layer2.0.downsample.0\""));
    assert!(out.contains("\"layer3.35.conv3\""));
    assert!(out.contains("layer4_2_bn3"));
    if std::env::var("RESIDUAL_PRINT").is_ok() {
        println!("{out}");
    }
}

#[test]
fn dump_errors() {
    if std::env::var("RESIDUAL_PRINT").is_err() {
        return;
    }
    let cases = [
        "model M[3, 8, 8] { conv(16, 3) -> residual { conv(32, 3, padding = 1) } }",
        "block B(w, stride = 1) { residual { conv(w, 3, stride = stride, padding = 1) -> bn } -> relu } model M[3, 32, 32] { conv(16, 3, padding = 1) -> l: B(16) x 2 -> l2: B(32, stride = 2) x 2 }",
        "model M[3, 8, 8] { conv(16, 3) -> residual { conv(32, 1, stride = 2) } shortcut { conv(16, 1) } }",
        "model M[3, 8, 8] { conv(16, 3) -> tap(a) -> conv(8, 3) -> add(a) -> cat(b) }",
        "model M[3, 8, 8] { conv(16, 11) }",
        "model M[3, 8, 8] { conv(16, 3, groups = 5) }",
        "model M[3, 8, 8] { conv(16, 3) -> linear(10) }",
        "model M[16] { conv(16, 3) }",
        "model M[3, 8, 8] { cnv(16, 3) -> Foo }",
        "block B(w) { conv(w, 3) } model M[3, 8, 8] { B(strde = 3) -> B(1, 2) -> B(w = 1, w = 2) }",
        "block B(w) { conv(w, 3) } model M[3, 8, 8] { B(4) x 0 }",
        "block B(w) { conv(w, 3) } block B(v) { relu } model M[3, 8, 8] { a: relu -> a: relu } model M[3, 8, 8] { relu }",
        "model M[3, 8, 8] { conv(16, 3) -> x y }",
        "model M[3, 8, 8] { maxpool(3, padding = 2) }",
    ];
    for c in cases {
        println!("=== {c}");
        for e in errors(c) {
            println!("--- {e}");
        }
    }
}

/// Expansion time of the ResNet-152 declaration (printed, not asserted):
/// `cargo test --release -p residual-macros expansion_time -- --nocapture`.
#[test]
fn expansion_time() {
    let ts = TokenStream::from_str(RESNET152).expect("tokenizes");
    let n = 20;
    let mut times = Vec::new();
    for _ in 0..n {
        let t = std::time::Instant::now();
        let out = crate::expand(ts.clone());
        times.push(t.elapsed());
        assert!(!out.is_empty());
    }
    times.sort();
    let out = crate::expand(ts.clone());
    println!(
        "expand(ResNet-152): median {:?}, min {:?} over {n} runs; output {} tokens, {} chars",
        times[n / 2],
        times[0],
        out.clone().into_iter().count(),
        out.to_string().len()
    );
    // Stage split: parse alone.
    let t = std::time::Instant::now();
    let _: crate::parse::Input = syn::parse2(ts).expect("parses");
    println!("  of which parsing: {:?}", t.elapsed());
}

/// 3,000-5,000-term expressions once overflowed rustc's stack inside the macro (a chain of `+`
/// is a tree as deep as it is long). They are one error now, at the first operator too many,
/// and this test runs them on a test thread's small stack, in debug builds too.
#[test]
fn very_long_expressions_are_one_error() {
    for n in [300, 3_000, 5_000] {
        let sum = format!("1{}", " + 0".repeat(n));
        let product = format!("16{}", " * 1".repeat(n));
        for src in [
            format!("model M[3, 8, 8] {{ conv({product}, 1) }}"),
            format!("block B(w) {{ conv(w, 1) }} model M[3, 8, 8] {{ B({sum}) }}"),
            format!("model M[3, 8, 8] {{ relu x {sum} }}"),
        ] {
            let e = errors(&src);
            assert_eq!(e.len(), 1, "{e:#?}");
            assert!(e[0].contains("expression too long: more than 256 operators"), "{}", e[0]);
        }
    }
    // 256 operators are fine.
    let product = format!("16{}", " * 1".repeat(256));
    let src = format!("model M[3, 8, 8] {{ conv({product}, 1) }}");
    assert!(errors(&src).is_empty(), "{:?}", errors(&src));
}

/// Rust accepts non-ASCII identifiers, and so do layer names: each gets its own field (once, two
/// of them shared the field `__residual_invalid_name`, which did not compile).
#[test]
fn non_ascii_layer_names_are_fields_of_their_own() {
    let out = expand_str("model M[3, 8, 8] { 日本: conv(8, 3) -> π: bn }");
    assert!(!out.contains("compile_error"), "{out}");
    assert!(!out.contains("__residual_invalid_name"), "{out}");
    assert!(out.contains("pub 日本 :") && out.contains("pub π :"), "{out}");
    assert!(out.contains("\"日本\"") && out.contains("\"π\""), "{out}");
}

/// After an error each model still gets a fallback that builds and runs forward with the declared
/// types, so the user's code adds no errors of its own.
#[test]
fn failed_models_get_a_fallback_with_the_declared_types() {
    // A shape error: the input and (guessed) output types are known.
    let out = expand_str("model Net[3, 8, 8] { conv(16, 9) -> global_avgpool -> linear(10) }");
    assert!(out.contains("compile_error"), "{out}");
    for needle in ["BuildOnDevice", "TensorCollection", "ModelInfo", "Module <", "ModuleMut <", "Const < 10 >"] {
        assert!(out.contains(needle), "missing {needle}: {out}");
    }
    assert!(!out.contains("Never"), "the output is known: {out}");
    // A parse error: the input shape is read from the tokens, the output is unknown (`!`).
    let out = expand_str("model Net[3, 8, 8] { conv(16, 3) bn }");
    assert!(out.contains("compile_error") && out.contains("Const < 8 >") && out.contains("Never"), "{out}");
    // No input shape at all: `Module` for any input.
    let out = expand_str("model Net { relu }");
    assert!(out.contains("compile_error") && out.contains("Module < X >"), "{out}");
}
