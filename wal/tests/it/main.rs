//! The skiff-wal integration tests: one binary, a module per area.

mod basic;
mod common;
mod crash_states;
mod faults;
mod kill;
mod recovery_table;
mod torn_tail;
