#![doc = include_str!("../README.md")]

mod config;
mod error;
mod group_commit;
mod storage;

pub use config::SledStorageBuilder;
pub use storage::SledStorage;
