//! Never-panics property test: `expand` must return (never unwind) on any token stream, and
//! every input it rejects must produce `compile_error!`.
//!
//! Inputs are valid declarations (the ResNet-152 example and smaller models covering every
//! unit, shortcut and layer) mutated at the token-tree level: deleting, duplicating and swapping
//! tokens, replacing literals with 0 / huge / negative / float / bool values, replacing tokens
//! with random keywords, identifiers and punctuation, truncating, wrapping runs of tokens in
//! new groups, recursing into groups; plus random token soup. The generator is a fixed-seed
//! xorshift, so failures reproduce.
//!
//! Default: 3,000 cases (a few seconds, release or debug; CI runs it in both, since a user's dev
//! build runs the macro with overflow checks on). A longer run:
//! `RESIDUAL_FUZZ_CASES=200000 RESIDUAL_FUZZ_SEED=7 cargo test --release -p residual-macros never_panics -- --nocapture`

use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use std::str::FromStr;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const SEEDS: &[&str] = &[
    "model M[3, 8, 8] { conv(8, 3, padding = 1) -> bn -> relu -> residual { c: conv(8, 3, padding = 1) -> bn } -> global_avgpool -> fc: linear(10) }",
    "block B(w, s = 1) { residual { conv(w, 3, stride = s, padding = 1) -> bn -> relu } shortcut auto -> relu }
     #[zero_init_residual] pub model N[3, 16, 16] { stem: conv(8, 3) -> l: B(8) x 2 (first: s = 2) -> l2: B(2 * 8, s = 2) -> flatten -> linear(4) }",
    "model T[3, 8, 8] { stem: conv(8, 3, padding = 1) -> tap(a) -> conv(8, 1) -> add(a) -> cat(a) -> maxpool(2) -> avgpool(2, stride = 1) }",
    "model S[16, 32] { residual { layernorm -> linear(64) -> gelu -> dropout(0.1) -> linear(32) } shortcut identity -> leaky_relu(0.2) -> silu }",
    "model V[20] { linear(8, bias = false) -> sigmoid -> residual { linear(4) -> tanh } shortcut { linear(4) } -> identity }",
    "block P(c, s = 1) { bn -> relu -> residual { conv(c, 3, stride = s, padding = 1, groups = 2, dilation = 1) } shortcut pad }
     #[init(kaiming_normal)] model C[4, 8, 8] { P(8, s = 2) x 2 -> (relu -> bn) x 2 }",
    // Non-ASCII names, long arithmetic, a residual that a conv without padding breaks.
    "block D(w) { 日本: conv(w * 1 * 1 + 0 - 0, 3, padding = 1) -> π: bn -> tap(t) -> conv(w, 1) -> cat(t) }
     model U[3, 8, 8] { D(4) x 2 -> residual { conv(12, 3) } shortcut auto -> global_avgpool -> linear(3) }",
];

const IDENTS: &[&str] = &[
    "conv",
    "bn",
    "relu",
    "x",
    "first",
    "residual",
    "shortcut",
    "auto",
    "pad",
    "identity",
    "tap",
    "add",
    "cat",
    "model",
    "block",
    "layer1",
    "stride",
    "padding",
    "groups",
    "width",
    "linear",
    "flatten",
    "global_avgpool",
    "maxpool",
    "dropout",
    "layernorm",
    "B",
    "M",
    "pub",
    "init",
    "zero_init_residual",
    "kaiming_normal",
    "downsample",
    "true",
    "false",
    "self",
    "type",
    "_",
];
const PUNCTS: &[&str] = &["->", ":", ",", "=", "*", "/", "%", "-", "+", "#", "::", "==", "=>", "!", "&", "."];
const LITERALS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "64",
    "4294967296",
    "18446744073709551615",
    "340282366920938463463374607431768211455",
    "99999999999999999999999999999999999999999",
    "0.0",
    "0.5",
    "1.5",
    "1e308",
    "\"s\"",
    "'c'",
    "3u8",
    "2.0f32",
    "0x10",
];

fn random_token(rng: &mut Rng) -> TokenTree {
    match rng.below(3) {
        0 => {
            let s = IDENTS[rng.below(IDENTS.len())];
            if s == "_" || s == "self" || s == "type" || s == "pub" || s == "true" || s == "false" {
                TokenStream::from_str(s)
                    .ok()
                    .and_then(|t| t.into_iter().next())
                    .unwrap_or_else(|| TokenTree::Ident(Ident::new("q", Span::call_site())))
            } else {
                TokenTree::Ident(Ident::new(s, Span::call_site()))
            }
        }
        1 => {
            let s = PUNCTS[rng.below(PUNCTS.len())];
            let mut chars = s.chars().peekable();
            let c = chars.next().unwrap_or('-');
            let spacing = if chars.peek().is_some() { Spacing::Joint } else { Spacing::Alone };
            TokenTree::Punct(Punct::new(c, spacing))
        }
        _ => TokenTree::Literal(
            Literal::from_str(LITERALS[rng.below(LITERALS.len())]).unwrap_or_else(|_| Literal::usize_unsuffixed(0)),
        ),
    }
}

fn soup(rng: &mut Rng, depth: usize) -> Vec<TokenTree> {
    let n = rng.below(24);
    (0..n)
        .map(|_| {
            if depth < 4 && rng.chance(15) {
                let delim = [Delimiter::Parenthesis, Delimiter::Brace, Delimiter::Bracket][rng.below(3)];
                TokenTree::Group(Group::new(delim, soup(rng, depth + 1).into_iter().collect()))
            } else {
                random_token(rng)
            }
        })
        .collect()
}

fn mutate(tokens: &mut Vec<TokenTree>, rng: &mut Rng) {
    let n = tokens.len();
    // Descend into a group.
    let groups: Vec<usize> = (0..n).filter(|&i| matches!(tokens.get(i), Some(TokenTree::Group(_)))).collect();
    if !groups.is_empty() && rng.chance(55) {
        let i = groups[rng.below(groups.len())];
        if let Some(TokenTree::Group(g)) = tokens.get(i) {
            let mut inner: Vec<TokenTree> = g.stream().into_iter().collect();
            let delim = g.delimiter();
            mutate(&mut inner, rng);
            tokens[i] = TokenTree::Group(Group::new(delim, inner.into_iter().collect()));
        }
        return;
    }
    match rng.below(8) {
        0 if n > 0 => {
            tokens.remove(rng.below(n));
        }
        1 if n > 0 => {
            let i = rng.below(n);
            let t = tokens[i].clone();
            tokens.insert(i, t);
        }
        2 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            tokens.swap(a, b);
        }
        3 => {
            // Replace a literal (or any token) with an extreme value.
            let lits: Vec<usize> = (0..n).filter(|&i| matches!(tokens.get(i), Some(TokenTree::Literal(_)))).collect();
            let i = if lits.is_empty() { rng.below(n.max(1)) } else { lits[rng.below(lits.len())] };
            let lit =
                Literal::from_str(LITERALS[rng.below(LITERALS.len())]).unwrap_or_else(|_| Literal::usize_unsuffixed(0));
            if i < n {
                if rng.chance(30) {
                    tokens.insert(i, TokenTree::Punct(Punct::new('-', Spacing::Alone)));
                    tokens[i + 1] = TokenTree::Literal(lit);
                } else {
                    tokens[i] = TokenTree::Literal(lit);
                }
            }
        }
        4 if n > 0 => {
            let i = rng.below(n);
            tokens[i] = random_token(rng);
        }
        5 if n > 0 => {
            tokens.truncate(rng.below(n));
        }
        6 if n > 0 => {
            let a = rng.below(n);
            let b = (a + 1 + rng.below(4)).min(n);
            let inner: TokenStream = tokens.drain(a..b).collect();
            let delim = [Delimiter::Parenthesis, Delimiter::Brace, Delimiter::Bracket][rng.below(3)];
            tokens.insert(a, TokenTree::Group(Group::new(delim, inner)));
        }
        _ => {
            let i = rng.below(n + 1);
            tokens.insert(i, random_token(rng));
        }
    }
}

fn check(input: TokenStream) -> Result<(), String> {
    let shown = input.to_string();
    let result = std::panic::catch_unwind(|| crate::expand(input));
    let out = result.map_err(|_| format!("expand panicked on: {shown}"))?;
    let text = out.to_string();
    if text.contains("compile_error") {
        return Ok(());
    }
    // Accepted: the output must be well-formed items.
    syn::parse2::<syn::File>(out).map_err(|e| format!("accepted input produced unparseable output ({e}): {shown}"))?;
    Ok(())
}

#[test]
fn never_panics() {
    let cases: usize = std::env::var("RESIDUAL_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let seed: u64 = std::env::var("RESIDUAL_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5EED_CAFE_F00D);
    let mut rng = Rng(seed | 1);
    let big = crate::tests::RESNET152;
    let (mut accepted, mut rejected) = (0usize, 0usize);
    let start = std::time::Instant::now();
    // Silence the default panic hook's output; panics are still caught and reported.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    for case in 0..cases {
        let input: TokenStream = if rng.chance(10) {
            soup(&mut rng, 0).into_iter().collect()
        } else {
            // ResNet-152 is expensive to generate code for: use it for 3% of the cases.
            let src = if rng.chance(3) { big } else { SEEDS[rng.below(SEEDS.len())] };
            let mut tokens: Vec<TokenTree> =
                TokenStream::from_str(src).map(|t| t.into_iter().collect()).unwrap_or_default();
            for _ in 0..1 + rng.below(4) {
                mutate(&mut tokens, &mut rng);
            }
            tokens.into_iter().collect()
        };
        let shown = input.to_string();
        match check(input) {
            Ok(()) => {
                if crate::expand(TokenStream::from_str(&shown).unwrap_or_default())
                    .to_string()
                    .contains("compile_error")
                {
                    rejected += 1;
                } else {
                    accepted += 1;
                }
            }
            Err(e) => failures.push(format!("case {case}: {e}")),
        }
        if failures.len() > 5 {
            break;
        }
    }
    std::panic::set_hook(hook);
    println!("{cases} cases in {:?}: {accepted} accepted, {rejected} rejected", start.elapsed());
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(accepted > 0 && rejected > 0, "the generator should produce both valid and invalid inputs");
}

#[test]
fn extreme_inputs_are_errors_not_panics() {
    for src in [
        "model M[3, 4294967296, 4294967296] { conv(8, 3) }",
        "model M[2147483648, 2147483648, 2147483648] { conv(2147483648, 1) -> flatten -> linear(2147483648) }",
        "model M[3, 8, 8] { relu x 4294967296 }",
        "model M[3, 8, 8] { (relu x 100) x 100 -> (relu x 100) x 100 }",
        "block A(n) { relu x n } model M[3, 8, 8] { A(1000000) }",
        "model M[3, 8, 8] { conv(8, 3, padding = 340282366920938463463374607431768211455) }",
        "model M[0] { relu }",
        "model M[] { relu }",
        "model M[1, 2, 3, 4] { relu }",
        "model M[3, 8, 8] { dropout(1e308) -> leaky_relu(1e308 * 10.0) }",
        // i128::MIN through arithmetic (its `abs` would overflow), and past it.
        "block B(w) { conv(w, 1) } model M[3, 8, 8] { B(-170141183460469231731687303715884105727 - 1) }",
        "block B(w) { conv(w, 1) } model M[3, 8, 8] { B(-170141183460469231731687303715884105727 - 2) }",
        "block B(w) { conv(w * w * w * w, 1) } model M[3, 8, 8] { B(65536) }",
        "model M[3, 8, 8] { leaky_relu(-170141183460469231731687303715884105727 - 1) }",
    ] {
        let e = crate::tests::errors(src);
        assert!(!e.is_empty(), "expected an error for {src}");
    }
}
