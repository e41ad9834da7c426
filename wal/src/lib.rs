//! Skiff's write-ahead log: each shard's Raft entries, hard state and snapshot markers,
//! written as group-committed, block-aligned O_DIRECT appends through io_uring, and
//! recovered exactly after a crash.
//!
//! # Layout
//! - [`format`]: the on-disk encoding (segment header, batch header, records), drawn
//!   byte by byte at its top.
//! - [`fs`]: the small file-system trait all I/O goes through, and [`fs::DmaFs`], the
//!   real glommio `DmaFile` implementation.
//! - [`sim`]: [`sim::SimFs`], a simulated disk that tears and drops unsynced writes on
//!   a crash and fails fsync on demand.
//! - [`recovery`]: recovery as a pure function, with its decision table.
//! - [`log`]: the in-memory index and tail cache, and [`WalStorage`], the engine's
//!   `Storage` over them.
//! - [`wal`]: [`Wal`], the writer: submit, pipelined write/fdatasync, in-order
//!   completions, segment rotation and compaction.
//!
//! # How the node drives it
//! ```text
//! let wal = Wal::open(DmaFs, WalOptions::new(dir, identity)).await?;
//! let storage = wal.storage();               // give to the engine (cheap Rc handle)
//! loop {
//!     let rd = engine.ready();
//!     wal.submit(&Append { tag: n, entries: &rd.entries, hard_state: rd.hard_state,
//!                          must_sync: rd.must_sync, ..Default::default() }).await?;
//!     // ... go on; elsewhere, in order:
//!     let c = wal.next_completion().await?;  // c.tag == n: durable
//!     engine.on_persist_ready(c.tag);
//! }
//! ```

mod crc;
pub mod error;
pub mod format;
pub mod fs;
pub mod log;
pub mod recovery;
pub mod sim;
pub mod wal;

pub use error::WalError;
pub use format::{APPENDS_IN_FLIGHT_MAX, Identity, RECORD_HEADER_BYTES};
pub use fs::{DmaFs, FileSystem, WalFile};
pub use log::WalStorage;
pub use recovery::TornTail;
pub use sim::SimFs;
pub use wal::{Append, Completion, IoTiming, OpenReport, SyncMode, Wal, WalOptions};
