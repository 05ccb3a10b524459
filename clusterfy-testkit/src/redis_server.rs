//! Placeholder: a `redis-server` owned by a test (being written).
