//! skiff-bench: the load generator bundled with Skiff. It loads Skiff, Redis (RESP)
//! or etcd (gRPC) with the same workload and reports throughput, errors by kind,
//! latency percentiles corrected for coordinated omission in the open loop, and the
//! CPU time of both the generator and the servers it spawned.
//!
//! # Layout
//! - [`cli`]: flags, bounds and their validation into a [`run::RunConfig`].
//! - [`app`]: the program's flow: one run (against targets or a spawned cluster).
//! - [`compare`]: the same workload against Skiff, Redis and etcd, side by side.
//! - [`run`]: worker threads, warm-up, progress, and the measured window.
//! - [`resp`]: one RESP connection's closed or open request loop.
//! - [`etcd`]: the etcd v3 KV client (hand-written gRPC messages) and its loop.
//! - [`workload`]: keys, operations and pre-encoded request templates.
//! - [`stats`]: histograms, error kinds, and the run's shared control.
//! - [`report`]: the summary, its text, JSON and `.hgrm` renderings.
//! - [`plot`]: the latency-by-percentile SVG.
//! - [`spawn`]: starting and stopping Skiff, Redis and etcd servers by pid.
//! - [`sys`]: the few libc calls (signals, CPU time); the only `unsafe` code.
#![deny(unsafe_code)]

pub mod app;
pub mod cli;
pub mod compare;
pub mod error;
pub mod etcd;
pub mod plot;
pub mod report;
pub mod resp;
pub mod run;
pub mod spawn;
pub mod stats;
pub mod sys;
pub mod workload;

pub use error::BenchError;
