//! Skiff's chaos runner and linearizability checker: real `skiff serve` processes on
//! loopback driven through crashes, pauses, partitions, message loss and disk damage
//! while client workers record every operation; then the recorded history is checked
//! for linearizability, the acknowledged writes are looked for, and the replicas'
//! state digests are compared.
//!
//! It talks to the nodes only through their client (RESP) and admin (HTTP) ports and
//! their process ids, so it does not depend on the node crate.
//!
//! # Layout
//!
//! - [`history`]: the recorded operations and their JSON-lines form.
//! - [`model`]: the register (GET / SET / INCR) each key is checked against.
//! - [`check`]: the Wing–Gong–Lowe search, per key, memoized and bounded.
//! - [`rng`]: the seeded generator behind every random choice.

pub mod check;
pub mod history;
pub mod model;
pub mod rng;
#[cfg(test)]
mod testgen;

pub use check::{CheckOptions, CheckReport, Verdict, check};
pub use history::{Input, Op, Outcome, Output, Value};
