#![doc = include_str!("../README.md")]

mod config;
mod error;
mod mirror;
mod redact;
mod state;
mod task;
mod tls;

pub use config::{AckMode, DEFAULT_ACK_TIMEOUT, RedisMirrorBuilder};
pub use mirror::{MirrorStatus, RedisMirror};
