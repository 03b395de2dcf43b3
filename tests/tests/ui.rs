//! The macros' user interface: what must compile (`ui/pass`) and the message each mistake gets
//! (`ui/fail/<mistake>.rs` beside its `.stderr`). Refresh the snapshots with
//! `TRYBUILD=overwrite cargo test -p cqrs-tests --test ui`, then read every changed message.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
