//! Skiff's node configuration and machine topology.
//!
//! # Layout
//!
//! - [`config`]: the TOML schema ([`NodeConfig`]), its defaults, flag overrides and
//!   [`NodeConfig::validate`], whose errors name the key and the fix.
//! - [`topology`]: online CPUs, cores, packages and NUMA nodes from sysfs.

pub mod config;
pub mod topology;

pub use config::{ConfigError, NodeConfig, Persistence, ReadModeSetting, WalSyncSetting, load, parse_members, resolve};
pub use topology::{Cpu, Topology, TopologyError};
