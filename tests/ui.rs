//! trybuild: `residual!` declarations that must compile (`tests/ui/pass`) and ones that must fail
//! with the reviewed messages in `tests/ui/fail/<category>/*.stderr`.
//! Regenerate snapshots with `TRYBUILD=overwrite cargo test --release --test ui`, then review
//! every changed `.stderr` by eye.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*/*.rs");
}
