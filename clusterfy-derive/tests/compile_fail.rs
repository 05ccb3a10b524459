//! What `#[derive(Command)]` refuses to build, and the message it gives (tests/compile_fail/).

#[test]
fn bad_commands_do_not_build() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
    cases.pass("tests/pass/*.rs");
}
