#![doc = include_str!("../README.md")]

mod transport;

pub use transport::StdioTransport;
