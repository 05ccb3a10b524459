//! The `# Contract` of `clusterfy_core::Transport` names the case that checks each rule; every
//! name it gives must be a case of the suite, so renaming either side cannot go unnoticed.

use std::path::Path;

#[test]
fn every_case_the_transport_contract_names_is_in_the_suite() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clusterfy-core/src/transport.rs");
    let Ok(text) = std::fs::read_to_string(&source) else {
        // Outside the workspace (a packaged crate) the contract's source is not at hand.
        let message = format!("skipped: {} is not readable", source.display());
        assert!(std::env::var_os("CI").is_none(), "{message}, and CI is set");
        eprintln!("{message}");
        return;
    };
    let start = text.find("/// # Contract").expect("transport.rs has a # Contract section");
    let end = start + text[start..].find("pub trait Transport").expect("the section documents Transport");
    let named: Vec<&str> = text[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.contains('_') && word.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(!named.is_empty(), "the contract names no case; the parsing above is out of date");
    let cases: Vec<&str> = clusterfy_testkit::transport::case_names().collect();
    for name in named {
        assert!(
            cases.contains(&name),
            "the Transport contract names `{name}`, which is not a case: {cases:?}"
        );
    }
}
