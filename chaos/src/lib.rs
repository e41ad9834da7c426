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
//! - [`runner`]: one run, start to verdict; [`RunReport`] is what it found.
//! - [`faults`]: the fault kinds and the seeded schedule.
//! - [`workload`]: the client workers and how replies are classified.
//! - [`monitor`]: leadership and catch-up timing, polled from every node.
//! - [`procs`]: the node processes, and cleanup on drop and on Ctrl-C.
//! - [`client`]: blocking RESP and HTTP clients with deadlines.
//! - [`waltail`]: damage to the unwritten tail of a stopped node's WAL.

pub mod check;
pub mod client;
pub mod faults;
pub mod history;
pub mod model;
pub mod monitor;
pub mod procs;
pub mod rng;
pub mod runner;
#[cfg(test)]
mod testgen;
pub mod waltail;
pub mod workload;

pub use check::{CheckOptions, CheckReport, Verdict, check};
pub use faults::FaultKind;
pub use history::{Input, Op, Outcome, Output, Value};
pub use runner::{ChaosError, Config, RunReport, run};
