#![doc = include_str!("../README.md")]

mod transport;

pub use transport::{ENV_UDS_FD, UdsTransport};
