//! The README's usage example is a real program (`readme-example`): it stays the same as the
//! README's text and prints every line it promises, every time.

use std::time::Duration;

/// The first `rust,no_run` block after the README's `## Usage` heading.
fn readme_usage_block() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README");
    let usage = readme.find("## Usage").expect("a Usage section");
    let fence = "```rust,no_run\n";
    let start = usage + readme[usage..].find(fence).expect("a rust block under Usage") + fence.len();
    let end = start + readme[start..].find("```\n").expect("the block's end");
    readme[start..end].to_owned()
}

#[test]
fn the_example_program_is_the_readme_text() {
    let program = include_str!("../src/bin/readme-example.rs");
    let body = program.split_once("\n\n").map_or(program, |(_, rest)| rest);
    assert_eq!(
        body,
        readme_usage_block(),
        "tests/src/bin/readme-example.rs and README.md's Usage block differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_prints_every_line_it_promises() {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_readme-example"));
    command.kill_on_drop(true).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let run = tokio::time::timeout(Duration::from_secs(30), command.output()).await;
    let output = run.expect("the example ends within 30 s").expect("running readme-example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {}; stdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    for line in [
        "SomeName1 says 42",
        "SomeName1 says Ok(42)",
        "EmailServer says Ok(42)",
        "SomeName1 read Some(2)",
        "EmailServer read Some(2)",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing line {line:?}; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // Both workers print to the one stderr, unbuffered, a piece at a time, so their lines may
    // interleave: count the pieces.
    for piece in ["bye (", "Requested"] {
        assert_eq!(stderr.matches(piece).count(), 2, "both shutdown hooks ran; stderr:\n{stderr}");
    }
}
