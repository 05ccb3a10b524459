#![doc = include_str!("../README.md")]

mod memory;

pub use memory::MemStorage;
