//! The skiff-wal integration tests: one binary, a module per area.

mod basic;
mod common;
mod faults;
mod torn_tail;
