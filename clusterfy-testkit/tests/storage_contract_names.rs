//! The `# Contract` of `clusterfy_core::StorageBackend` names the case that checks each rule;
//! every name it gives must be a case of the storage suite, and every case but the model test
//! must be named there, so renaming either side cannot go unnoticed.

use std::path::Path;

/// The one case that checks the contract as a whole rather than one bullet of it.
const MODEL_CASE: &str = "model_matches_btreemap";

#[test]
fn contract_bullets_all_have_cases() {
    // Read at run time rather than with include_str!, so the crate still builds when packaged
    // without the workspace around it.
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clusterfy-core/src/storage.rs");
    let Ok(text) = std::fs::read_to_string(&source) else {
        let message = format!("skipped: {} is not readable", source.display());
        assert!(std::env::var_os("CI").is_none(), "{message}, and CI is set");
        eprintln!("{message}");
        return;
    };
    let start = text.find("/// # Contract").expect("storage.rs has a # Contract section");
    let end =
        start + text[start..].find("pub trait StorageBackend").expect("the section documents StorageBackend");
    // The bullets also quote method names (`scan_prefix`, `apply_batch`): those are not cases.
    let methods: Vec<&str> =
        text[end..].split("fn ").skip(1).filter_map(|rest| rest.split(['(', '<']).next()).collect();
    let named: Vec<&str> = text[start..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| word.contains('_') && word.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .filter(|word| !methods.contains(word))
        .collect();
    assert!(named.len() >= 10, "the contract names only {named:?}; the parsing above is out of date");
    let cases: Vec<&str> = clusterfy_testkit::storage::case_names().collect();
    for name in &named {
        assert!(
            cases.contains(name),
            "the StorageBackend contract names `{name}`, which is not a case: {cases:?}"
        );
    }
    for case in cases.iter().filter(|case| **case != MODEL_CASE) {
        assert!(
            named.contains(case),
            "the case `{case}` is named by no bullet of the StorageBackend contract: {named:?}"
        );
    }
}
