//! The Skiff node (work in progress).

pub mod commands;
pub mod kv;
pub mod snapshot;
