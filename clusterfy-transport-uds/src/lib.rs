#![doc = include_str!("../README.md")]

mod config;
mod error;
mod transport;

pub use config::UdsTransportBuilder;
pub use transport::{ENV_UDS_PATH, UdsTransport};
