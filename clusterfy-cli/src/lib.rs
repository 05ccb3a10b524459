//! The parts of the `clusterfy` command that read what a user types, as a library so they can
//! be tested and fuzzed apart from the command.

pub mod json;
