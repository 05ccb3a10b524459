//! Shared pieces of Clusterfy's end-to-end tests and benchmarks: the command types the helper
//! worker binaries and the tests agree on.
