//! Skiff's Raft engine: a deterministic consensus state machine with no I/O.
//!
//! The engine never reads a clock, touches a file or socket, spawns a thread or uses a
//! global random number generator (`engine/clippy.toml` makes those build errors, and a
//! test scans the sources). Time is [`RawNode::tick`]; randomness comes from a generator
//! seeded by [`Config::seed`]. Everything it wants done comes out as a [`Ready`].
//!
//! # The caller's obligations, step by step
//!
//! A shard's loop drives one [`RawNode`]:
//!
//! 1. **Feed input.** Call [`RawNode::tick`] once per tick interval, [`RawNode::step`]
//!    for every message from a peer, and [`RawNode::propose`] /
//!    [`RawNode::propose_batch`] / [`RawNode::read_index`] for client requests.
//!    Proposals that arrive while a write is in flight simply accumulate: the next
//!    Ready carries all of them, so one write commits the batch (group commit).
//! 2. **Take a Ready** when [`RawNode::has_ready`]: `let mut rd = node.ready();`.
//! 3. **Send `rd.messages` now**, in parallel with the disk write. They never depend
//!    on the write: a leader's appends may leave before its own copy is durable (the
//!    leader counts itself toward a quorum only once it is; diss. §10.2.1).
//! 4. **Persist** `rd.snapshot` (if any), `rd.entries` and `rd.hard_state` in one
//!    write; fdatasync when `rd.must_sync`. Entries whose first index is at or below
//!    the last index replace the log from there. A failed write or fsync must stop the
//!    node: never retry and acknowledge. A Ready without [`Ready::has_write`] carries at
//!    most a new commit index: its write may be skipped, the latest hard state going
//!    out with the next write. A Ready whose entries hold a membership change always
//!    carries the hard state, changed or not: it must be durable no later than those
//!    entries (one all-or-nothing write, or an earlier one), so that a member that
//!    restarts knowing a change also knows every earlier one committed.
//! 5. **Send `rd.persisted_messages` only once step 4 is durable.** These are votes,
//!    append responses and anything else a non-leader says while state is being
//!    written: each vouches for state that must survive a crash (diss. §3.8).
//! 6. **Apply**: install `rd.snapshot` in the state machine, then apply
//!    `rd.committed_entries` in order (calling [`RawNode::apply_conf_change`] for each
//!    [`EntryKind::ConfChange`] entry before any later entry), then serve the reads in
//!    `rd.read_states` whose `index` is now applied.
//! 7. **Advance**: [`RawNode::advance`]`(rd)`.
//!
//! ## Asynchronous persistence
//!
//! To write the next batch while the previous one syncs (pipelining), replace steps 4,
//! 5 and 7: submit the write, call [`RawNode::advance_async`]`(rd)` at once, leaving
//! `rd.persisted_messages` untouched — the engine keeps them — and when the storage
//! reports the write of Ready `n` durable, call [`RawNode::on_persist_ready`]`(n)`.
//! The held messages then come out in a later Ready's `messages`. Reports must be in
//! order; each covers every earlier Ready. Committed entries are handed out for
//! application only once they are durable locally too.
//!
//! ## Storage
//!
//! The engine reads the stable log through [`Storage`]; the caller writes it (appending
//! entries once written, installing snapshots, compacting). Entries handed out but not
//! yet reported durable stay readable from the engine's own unstable buffer.
//!
//! ## Other obligations
//!
//! - **Compaction**: snapshot and compact only at an index that is both applied and
//!   durable, and take its term from [`RawNode::log_term`] — after a snapshot was
//!   received, the disk may still hold a different, older entry at that index until
//!   the snapshot itself is durable.
//! - **Snapshots sent**: report every snapshot message's fate with
//!   [`RawNode::report_snapshot`] (success or failure); until then the leader sends that
//!   peer nothing else.
//! - **Unreachable peers**: call [`RawNode::report_unreachable`] when a message could
//!   not be delivered, so the leader stops streaming optimistically to that peer.
//! - **Time**: tick at a fixed interval; with [`ReadMode::Lease`], tick once for every
//!   interval that elapsed, also after a stall, or the lease outlives its guarantee.
//! - **Membership**: call [`RawNode::apply_conf_change`] while applying each committed
//!   [`EntryKind::ConfChange`] entry, before applying the entries after it.
//!
//! # Layout
//!
//! - [`types`]: entries, messages, hard state, membership, snapshots.
//! - [`storage`]: the [`Storage`] trait and [`MemStorage`].
//! - `log`: durable log plus unstable tail; commit/persisted/applied positions.
//! - `progress`: per-peer replication state and quorum arithmetic.
//! - `raft`: the protocol itself.
//! - [`raw_node`]: [`RawNode`], [`Ready`], [`Status`].
//! - [`describe`]: compact text forms used by tests and logs.

pub mod config;
pub mod describe;
mod log;
mod progress;
mod raft;
pub mod raw_node;
mod rng;
pub mod storage;
pub mod types;

pub use config::{Config, ConfigError, ReadMode};
pub use progress::ProgressState;
pub use raft::{Error, RequestError, Stats};
pub use raw_node::{PeerProgress, RawNode, Ready, Status};
pub use storage::{MemStorage, RaftState, Storage, StorageError};
pub use types::*;

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the check itself reads the sources
mod purity {
    //! The engine must stay free of I/O, clocks, threads and global randomness. Clippy's
    //! `disallowed-methods` (engine/clippy.toml) enforces this at lint time; this test
    //! enforces it in every `cargo test` run too.

    #[test]
    fn sources_name_no_clock_io_thread_or_global_rng() {
        let forbidden = [
            "std::time",
            "Instant::",
            "SystemTime",
            "std::fs",
            "std::net",
            "std::thread",
            "std::process",
            "std::env",
            "thread_rng",
            "rand::",
            "println!",
            "eprintln!",
            "print!(",
            "tokio",
            "glommio",
        ];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut checked = 0;
        let mut stack = vec![std::path::PathBuf::from(dir)];
        while let Some(p) = stack.pop() {
            for entry in std::fs::read_dir(&p).expect("engine/src is readable") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                // This test module itself names the forbidden items; skip its text.
                let text = match text.find("mod purity {") {
                    Some(pos) => &text[..pos],
                    None => &text[..],
                };
                for f in forbidden {
                    assert!(!text.contains(f), "{} uses `{f}`: the engine must stay pure", path.display());
                }
                checked += 1;
            }
        }
        assert!(checked >= 8, "found only {checked} source files under {dir}");
    }
}
