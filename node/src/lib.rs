//! The Skiff node: the `skiff` binary's library.
//!
//! # Layout
//!
//! - [`metrics`]: what each shard records (counters, gauges, HDR histograms), the
//!   heartbeat-contention and slow-operation detectors, and the reports shards publish.
//! - [`admin`]: the admin HTTP port on its own thread: `/status`, `/metrics`,
//!   `/histograms`, and operations forwarded to the shards.
//! - [`server`]: start-up checks, the data directory's identity, listeners, the shard
//!   executor, graceful stop.
//! - [`shard`]: one Raft group member on one core: the Ready loop, client requests,
//!   snapshots.
//! - [`client`]: a RESP client connection (pipelining, protocol errors).
//! - [`commands`]: what each client command is and how it is answered.
//! - [`kv`]: the replicated state machine and the entry encoding of writes.
//! - [`snapshot`]: snapshot files: format, writing, reading, receiving in chunks.
//! - [`local`]: `skiff local`, a whole cluster on loopback.
//! - [`trace`]: an optional trace of WAL and transport activity, and the check of the
//!   durability rule over it.
//! - [`cli`]: command-line flags.

pub mod admin;
pub mod cli;
pub mod client;
pub mod commands;
pub mod failpoints;
pub mod kv;
pub mod local;
pub mod logging;
pub mod metrics;
pub mod server;
pub mod shard;
pub mod snapshot;
pub mod sync;
pub mod trace;
