//! Skiff's Raft engine (work in progress: types and storage first).

pub mod storage;
pub mod types;

pub use storage::{MemStorage, RaftState, Storage, StorageError};
pub use types::*;
