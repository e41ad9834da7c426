//! Engine configuration: timing in ticks, flow-control bounds, and the optional
//! behaviours (PreVote, CheckQuorum, lease reads, proposal forwarding).

use crate::types::{Index, NO_NODE, NodeId};

/// etcd's maxSizePerMsg: one append message carries at most this many bytes of entries,
/// so a catch-up stream cannot monopolise a connection or a receive buffer.
pub const MAX_SIZE_PER_MSG_BYTES_DEFAULT: u64 = 1 << 20;
/// etcd's maxInflightMsgs: appends in flight per peer before the leader waits for acks.
pub const MAX_INFLIGHT_MSGS_DEFAULT: usize = 512;
/// Bytes in flight per peer: 512 full-size appends would be 512 MiB of buffered data on
/// a slow follower; 64 MiB keeps a lagging peer's queue bounded while still filling a
/// 10 Gb/s link with a 50 ms round trip.
pub const MAX_INFLIGHT_BYTES_DEFAULT: u64 = 64 << 20;
/// Uncommitted bytes a leader accepts before refusing proposals: bounds the memory an
/// unreachable quorum can make the leader hold.
pub const MAX_UNCOMMITTED_BYTES_DEFAULT: u64 = 256 << 20;
/// Bytes of committed entries handed out per Ready, so one Ready's apply step stays
/// short and heartbeats keep flowing.
pub const MAX_COMMITTED_BYTES_PER_READY_DEFAULT: u64 = 64 << 20;
/// Election timeout in ticks (etcd's default with a 100 ms tick is 10).
pub const ELECTION_TICKS_DEFAULT: u32 = 10;
/// Heartbeat interval in ticks.
pub const HEARTBEAT_TICKS_DEFAULT: u32 = 1;
/// Upper bound on the election timeout: a longer one is a configuration mistake (and
/// randomisation doubles it).
pub const ELECTION_TICKS_MAX: u32 = 1 << 20;
/// Upper bound on the append messages in flight to one follower: far more than a
/// window needs (the default is 512), and it keeps a typo from asking for an
/// impossible allocation when the node becomes leader.
pub const MAX_INFLIGHT_MSGS_MAX: usize = 1 << 16;

const _: () = assert!(HEARTBEAT_TICKS_DEFAULT < ELECTION_TICKS_DEFAULT);

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// ReadIndex with a heartbeat round per batch of reads (Raft dissertation §6.4).
    #[default]
    Safe,
    /// Serve from the leader's lease (dissertation §6.4.1) when one is held, else fall
    /// back to `Safe`. Requires `check_quorum`, and a caller that ticks for every
    /// elapsed tick interval even after a stall (it must catch up missed ticks).
    Lease,
}

/// Engine configuration. Every field's default is given; [`Config::validate`] checks
/// the bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This member's id (non-zero).
    pub id: NodeId,
    /// Election timeout in ticks; a follower's actual timeout is drawn from
    /// `[election_ticks, 2 * election_ticks)`. Default 10; must exceed `heartbeat_ticks`.
    pub election_ticks: u32,
    /// Heartbeat interval in ticks. Default 1.
    pub heartbeat_ticks: u32,
    /// Index the caller's state machine has already applied (on restart: its snapshot
    /// index). Default 0.
    pub applied: Index,
    /// Bytes of entries per append message. Default 1 MiB.
    pub max_size_per_msg: u64,
    /// Append messages in flight per peer. Default 512; at least 1.
    pub max_inflight_msgs: usize,
    /// Bytes in flight per peer (0: unbounded). Default 64 MiB.
    pub max_inflight_bytes: u64,
    /// Uncommitted bytes the leader accepts before refusing proposals (0: unbounded).
    /// Default 256 MiB.
    pub max_uncommitted_bytes: u64,
    /// Committed bytes handed out per Ready. Default 64 MiB.
    pub max_committed_bytes_per_ready: u64,
    /// A leader that has not heard from a quorum within an election timeout steps down,
    /// and followers ignore vote requests while they hear from a leader. Default on.
    pub check_quorum: bool,
    /// Campaign with a PreVote round first (dissertation §9.6). Default on.
    pub pre_vote: bool,
    /// How reads are confirmed. Default [`ReadMode::Safe`].
    pub read_mode: ReadMode,
    /// Followers relay proposals (and read-index and transfer requests) to the leader
    /// (OVS behaviour). When off they are refused. Default on.
    pub forward_proposals: bool,
    /// Seed of the engine's random number generator.
    pub seed: u64,
}

impl Config {
    /// Defaults for member `id`.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: ELECTION_TICKS_DEFAULT,
            heartbeat_ticks: HEARTBEAT_TICKS_DEFAULT,
            applied: 0,
            max_size_per_msg: MAX_SIZE_PER_MSG_BYTES_DEFAULT,
            max_inflight_msgs: MAX_INFLIGHT_MSGS_DEFAULT,
            max_inflight_bytes: MAX_INFLIGHT_BYTES_DEFAULT,
            max_uncommitted_bytes: MAX_UNCOMMITTED_BYTES_DEFAULT,
            max_committed_bytes_per_ready: MAX_COMMITTED_BYTES_PER_READY_DEFAULT,
            check_quorum: true,
            pre_vote: true,
            read_mode: ReadMode::Safe,
            forward_proposals: true,
            seed: id,
        }
    }

    /// Checks every bound; the error says which field is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == NO_NODE {
            return Err(ConfigError("id must be non-zero (0 means \"no node\")".into()));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError("heartbeat_ticks must be at least 1".into()));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({}); etcd recommends 10x",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.election_ticks > ELECTION_TICKS_MAX {
            return Err(ConfigError(format!(
                "election_ticks ({}) exceeds the maximum {ELECTION_TICKS_MAX}",
                self.election_ticks
            )));
        }
        if self.max_inflight_msgs == 0 || self.max_inflight_msgs > MAX_INFLIGHT_MSGS_MAX {
            return Err(ConfigError(format!(
                "max_inflight_msgs ({}) must be between 1 and {MAX_INFLIGHT_MSGS_MAX}",
                self.max_inflight_msgs
            )));
        }
        if self.max_size_per_msg == 0 {
            return Err(ConfigError("max_size_per_msg must be at least 1 byte".into()));
        }
        if self.max_committed_bytes_per_ready == 0 {
            return Err(ConfigError("max_committed_bytes_per_ready must be at least 1 byte".into()));
        }
        if self.read_mode == ReadMode::Lease && !self.check_quorum {
            return Err(ConfigError(
                "read_mode Lease requires check_quorum: without it a deposed leader keeps serving reads".into(),
            ));
        }
        Ok(())
    }
}

/// A configuration that [`Config::validate`] refused; the text names the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid engine configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_each_bound_is_enforced() {
        assert_eq!(Config::new(1).validate(), Ok(()));
        let bad: Vec<(&str, Config)> = vec![
            ("id", Config { id: 0, ..Config::new(1) }),
            ("heartbeat_ticks", Config { heartbeat_ticks: 0, ..Config::new(1) }),
            ("election_ticks", Config { election_ticks: 1, ..Config::new(1) }),
            ("election_ticks", Config { election_ticks: ELECTION_TICKS_MAX + 1, ..Config::new(1) }),
            ("max_inflight_msgs", Config { max_inflight_msgs: 0, ..Config::new(1) }),
            ("max_size_per_msg", Config { max_size_per_msg: 0, ..Config::new(1) }),
            ("check_quorum", Config { read_mode: ReadMode::Lease, check_quorum: false, ..Config::new(1) }),
        ];
        for (field, c) in bad {
            let err = c.validate().expect_err(field);
            assert!(err.0.contains(field), "error for {field} names it: {err}");
        }
    }
}
