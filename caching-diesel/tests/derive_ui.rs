//! Compile-fail tests of `#[derive(Cached)]`: every error the derive reports, with its message
//! and span. Regenerate the expected output with `TRYBUILD=overwrite cargo test -p
//! caching-diesel --test derive_ui` and read the diff.

#[test]
fn derive_errors() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
