//! The phases of a run, one module per group of rows ([`Section`](crate::report::Section)): each
//! starts its cluster(s) and its baseline, measures both interleaved in each repetition, and
//! shuts them down before the next phase starts.

pub(crate) mod http;
pub(crate) mod process;
pub(crate) mod redis;
pub(crate) mod sled;
pub(crate) mod stdio;
pub(crate) mod storm;
pub(crate) mod uds;
