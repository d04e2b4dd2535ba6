//! Parser tests: accepted forms build the expected nodes; malformed input is a `syn::Error`
//! with a useful message.

use super::*;
use proc_macro2::TokenStream;
use std::str::FromStr;

fn parse(src: &str) -> syn::Result<Input> {
    syn::parse2(TokenStream::from_str(src).map_err(|e| syn::Error::new(proc_macro2::Span::call_site(), e.to_string()))?)
}

fn err(src: &str) -> String {
    match parse(src) {
        Ok(_) => panic!("expected a parse error for {src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn parses_the_grammar_example() {
    let input = parse(crate::tests::RESNET152).unwrap();
    assert_eq!(input.items.len(), 2);
    let Item::Block(b) = &input.items[0] else { panic!("block first") };
    assert_eq!(b.name, "Bottleneck");
    assert_eq!(b.params.len(), 3);
    assert!(b.params[0].default.is_none() && b.params[1].default.is_some());
    assert_eq!(b.body.steps.len(), 2);
    let Unit::Residual { body, shortcut, .. } = &b.body.steps[0].unit else { panic!("residual") };
    assert_eq!(body.steps.len(), 8);
    assert!(matches!(shortcut.as_ref().map(|s| &s.kind), Some(ShortcutKind::Auto(_))));
    let Item::Model(m) = &input.items[1] else { panic!("model second") };
    assert_eq!(m.name, "ResNet152");
    assert!(matches!(m.vis, syn::Visibility::Public(_)));
    assert_eq!(m.dims.len(), 3);
    assert_eq!(m.attrs.init.map(|i| i.0), Some(Init::KaimingNormal));
    assert_eq!(m.attrs.docs.len(), 1);
    let steps = &m.body.steps;
    assert_eq!(steps.len(), 10);
    let layer2 = &steps[5];
    assert_eq!(layer2.name.as_ref().unwrap().text, "layer2");
    let rep = layer2.repeat.as_ref().unwrap();
    assert!(matches!(rep.count, Expr::Int(8, _)));
    let first = &rep.first.as_ref().unwrap().1;
    assert_eq!(first[0].name.as_ref().unwrap(), "stride");
}

#[test]
fn expressions_respect_precedence() {
    let e: Expr = syn::parse_str("2 + 3 * width - (4 % 3)").unwrap();
    // ((2 + (3 * width)) - (4 % 3))
    let Expr::Bin(lhs, BinOp::Sub, _, rhs) = e else { panic!("top is -") };
    assert!(matches!(*rhs, Expr::Paren(..)));
    let Expr::Bin(_, BinOp::Add, _, mul) = *lhs else { panic!("then +") };
    assert!(matches!(*mul, Expr::Bin(_, BinOp::Mul, _, _)));
    let e: Expr = syn::parse_str("-3").unwrap();
    assert!(matches!(e, Expr::Neg(..)));
    let e: Expr = syn::parse_str("0.25").unwrap();
    assert!(matches!(e, Expr::Float(v, _) if v == 0.25));
    let e: Expr = syn::parse_str("true").unwrap();
    assert!(matches!(e, Expr::Bool(true, _)));
}

#[test]
fn all_unit_forms() {
    let src = "model M[3, 8, 8] {
        stem: (conv(8, 3) -> relu) -> tap(a) -> residual { relu } shortcut sc: { conv(8, 1) }
        -> residual { relu } shortcut identity -> residual { relu } shortcut pad
        -> add(a) -> cat(a) -> bn -> B x 2 -> C(1, k = 2,) x n (first: k = 3) -> se: gate { relu }
    }";
    let input = parse(src).unwrap();
    let Item::Model(m) = &input.items[0] else { panic!() };
    let kinds: Vec<&str> = m
        .body
        .steps
        .iter()
        .map(|s| match &s.unit {
            Unit::Call { .. } => "call",
            Unit::Group(_) => "group",
            Unit::Residual { .. } => "residual",
            Unit::Gate { .. } => "gate",
            Unit::Tap { kind: TapKind::Tap, .. } => "tap",
            Unit::Tap { kind: TapKind::Add, .. } => "add",
            Unit::Tap { kind: TapKind::Cat, .. } => "cat",
        })
        .collect();
    assert_eq!(
        kinds,
        ["group", "tap", "residual", "residual", "residual", "add", "cat", "call", "call", "call", "gate"]
    );
    let Unit::Residual { shortcut: Some(sc), .. } = &m.body.steps[2].unit else { panic!() };
    assert_eq!(sc.name.as_ref().unwrap(), "sc");
    assert!(matches!(sc.kind, ShortcutKind::Projection(_)));
}

#[test]
fn syntax_errors_are_explained() {
    assert!(err("model M[3, 8, 8] { conv(8, 3) relu }").contains("expected `->` between steps"));
    assert!(err("model M { relu }").contains("expected the input shape in brackets"));
    assert!(err("model M[3] { }").contains("expected at least one layer"));
    assert!(err("modle M[3] { relu }").contains("expected `block` or `model`"));
    assert!(err("model M[3] { relu x }").contains("expected"));
    assert!(err("model M[3] { relu -> }").contains("expected a layer"));
    assert!(err("model M[3] { relu x 2 (second: k = 1) }").contains("expected `first:`"));
    assert!(err("model M[3] { residual { relu } shortcut bogus }").contains("expected one of"));
    assert!(err("#[init(xavier)] model M[3] { relu }").contains("kaiming_normal"));
    assert!(err("#[derive(Debug)] model M[3] { relu }").contains("unknown attribute"));
    assert!(err("#[zero_init_residual] block B { relu }").contains("apply to models"));
    assert!(err("pub block B { relu }").contains("expected `model` after the visibility"));
    assert!(err("model M[3] { conv(8u8, 3) }").contains("without a type suffix"));
    assert!(err("model M[3] { conv(999999999999999999999999999999999999999999, 3) }").contains("too large"));
    assert!(err("model M[3] { r#type: relu }").contains("raw identifiers"));
    assert!(err("model M[3] { tap() }").contains("expected a tap name"));
    assert!(err("model M[3] { tap(a, b) }").contains("takes one tap name"));
    let deep = format!("model M[3] {{ conv({}1{}, 3) }}", "(".repeat(200), ")".repeat(200));
    assert!(err(&deep).contains("nested too deeply"));
}
