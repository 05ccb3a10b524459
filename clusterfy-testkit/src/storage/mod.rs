//! Placeholder: the storage conformance suite (being written).
