//! Skiff's node: the shards, their Ready loops, the key-value state machine, and the
//! client and admin ports.
//!
//! # Layout
//!
//! - [`metrics`]: what each shard records (counters, gauges, HDR histograms), the
//!   heartbeat-contention and slow-operation detectors, and the reports shards publish.
//! - [`admin`]: the admin HTTP port on its own thread: `/status`, `/metrics`,
//!   `/histograms`, and operations forwarded to the shards.

pub mod admin;
pub mod metrics;
