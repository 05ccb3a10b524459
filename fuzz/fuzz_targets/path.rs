//! Any text parses as a dotted storage path or fails cleanly; a parsed path prints back to text
//! that parses to the same path, and its parts agree with it.
#![no_main]

use clusterfy_core::path::Path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(path) = Path::parse(text) else { return };
    assert_eq!(Path::parse(path.as_str()).expect("printed back, it parses"), path);
    assert!(path.segments().all(Path::is_valid_segment));
    if let Some(parent) = path.parent() {
        let last = path.last().expect("a path with a parent has a last segment");
        assert_eq!(parent.child(last).expect("its own child"), path);
        assert!(path.starts_with(&parent));
    } else {
        assert!(path.is_root());
    }
});
