//! The values the engine exchanges with its caller: log entries, hard state, cluster
//! configuration, snapshots and Raft messages.
//!
//! These types are plain data. The engine never serialises them for a disk or a socket;
//! the WAL (`skiff-wal`) and the transport (`skiff-net`) own those encodings. The one
//! encoding defined here is the payload of configuration entries ([`ConfChange`] and the
//! election-timeout setting), because every member must decode those identically when
//! it applies them.

use bytes::Bytes;

/// A member's identity within one Raft group. `0` is never a valid id (it means "none").
pub type NodeId = u64;
/// A Raft term. Terms start at 1; `0` means "before any election".
pub type Term = u64;
/// A log position. The first real entry has index 1; `0` means "empty log".
pub type Index = u64;

/// "No node": the value of `vote` and `leader` when there is none.
pub const NO_NODE: NodeId = 0;

/// Per-entry bookkeeping counted against byte limits in addition to the payload:
/// term (8), index (8), kind (1) and a length prefix, rounded up. Keeps a flood of empty
/// entries from evading `max_size_per_msg` and the uncommitted-bytes bound.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// What an entry carries. The numeric values are part of the WAL and wire formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum EntryKind {
    /// Application data (a client command), or empty: the no-op a new leader appends.
    #[default]
    Normal = 0,
    /// A membership change, encoded by [`ConfChange::encode`].
    ConfChange = 1,
    /// A cluster-wide election timeout (little-endian `u32` ticks), adopted by every
    /// member when the entry is applied (OVS `change-election-timer`).
    ElectionTimeout = 2,
}

impl EntryKind {
    /// Decodes the on-disk / on-wire value.
    pub fn from_u8(v: u8) -> Option<EntryKind> {
        match v {
            0 => Some(EntryKind::Normal),
            1 => Some(EntryKind::ConfChange),
            2 => Some(EntryKind::ElectionTimeout),
            _ => None,
        }
    }
}

/// One log entry. `data` is reference-counted: cloning an entry (into the log, a WAL
/// batch, an append message) never copies the payload.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    /// A normal entry with no position yet (the leader assigns term and index).
    pub fn new(data: Bytes) -> Entry {
        Entry { term: 0, index: 0, kind: EntryKind::Normal, data }
    }

    /// Bytes this entry counts against message and uncommitted-log limits.
    #[inline]
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// State that must be durable before the messages that depend on it are sent
/// (Raft §5.1 / Figure 2 "persistent state on all servers"; `commit` is an optimisation
/// that may be stale after a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HardState {
    pub term: Term,
    pub vote: NodeId,
    pub commit: Index,
}

impl HardState {
    /// True when nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        *self == HardState::default()
    }
}

/// Cluster membership as of some log position.
///
/// Invariant: `voters` and `learners` are sorted, free of duplicates and disjoint.
#[derive(Clone, Debug, PartialEq, Eq, Default, Hash)]
pub struct ConfState {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl ConfState {
    /// A configuration of the given voters, no learners.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> ConfState {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        ConfState { voters, learners: Vec::new() }
    }

    /// True when `id` is a voter or learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok() || self.learners.binary_search(&id).is_ok()
    }

    /// True when the invariant above holds and no id is `0`.
    pub fn is_well_formed(&self) -> bool {
        let sorted = |v: &[NodeId]| v.windows(2).all(|w| w[0] < w[1]);
        sorted(&self.voters)
            && sorted(&self.learners)
            && !self.voters.contains(&NO_NODE)
            && !self.learners.contains(&NO_NODE)
            && self.voters.iter().all(|v| self.learners.binary_search(v).is_err())
    }
}

/// What a snapshot stands for: the log up to and including `index`, taken at `term`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf_state: ConfState,
    /// The cluster-wide election timeout in force at `index` (0: none was ever set
    /// through the log; the local configuration applies).
    pub election_timeout_ticks: u32,
}

/// A snapshot of the state machine. `data` is opaque to the engine.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

impl Snapshot {
    /// True for the "no snapshot" value.
    pub fn is_empty(&self) -> bool {
        self.meta.index == 0
    }
}

/// A single-server membership change (Raft dissertation §4.1), or a new cluster's
/// founding membership.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfChange {
    /// Add a voter, or promote a learner to voter.
    AddVoter(NodeId),
    /// Add a non-voting member that receives the log.
    AddLearner(NodeId),
    /// Remove a voter or learner.
    RemoveNode(NodeId),
    /// Every founding voter at once (sorted, no duplicates): entry 1 of a cluster made by
    /// [`crate::RawNode::bootstrap`]; applies only to an empty membership. One entry, not
    /// one per voter: a member that learns the log from the start (one that joins, or
    /// lost its data) never holds a prefix of the founding membership — with one
    /// `AddVoter` per founder, a member that had applied only `AddVoter(itself)` would
    /// be the sole voter in its own view and elect itself.
    Bootstrap(Vec<NodeId>),
}

impl ConfChange {
    /// Payload of a [`EntryKind::ConfChange`] entry:
    ///
    /// ```text
    /// byte 0      change type: 1 add voter, 2 add learner, 3 remove node, 4 bootstrap
    /// bytes 1..9  node id, u64 little-endian (types 1-3)
    /// bytes 1..   n >= 1 node ids, u64 little-endian each, ascending (type 4)
    /// ```
    pub fn encode(&self) -> Bytes {
        let (tag, ids): (u8, &[NodeId]) = match self {
            ConfChange::AddVoter(id) => (1, std::slice::from_ref(id)),
            ConfChange::AddLearner(id) => (2, std::slice::from_ref(id)),
            ConfChange::RemoveNode(id) => (3, std::slice::from_ref(id)),
            ConfChange::Bootstrap(ids) => (4, ids),
        };
        let mut buf = Vec::with_capacity(1 + 8 * ids.len());
        buf.push(tag);
        for id in ids {
            buf.extend_from_slice(&id.to_le_bytes());
        }
        Bytes::from(buf)
    }

    /// Decodes a conf change payload; `None` when it is malformed.
    pub fn decode(data: &[u8]) -> Option<ConfChange> {
        let (&tag, rest) = data.split_first()?;
        if rest.is_empty() || !rest.len().is_multiple_of(8) {
            return None;
        }
        let ids: Vec<NodeId> =
            rest.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        if ids.contains(&NO_NODE) {
            return None;
        }
        match (tag, ids.as_slice()) {
            (1, &[id]) => Some(ConfChange::AddVoter(id)),
            (2, &[id]) => Some(ConfChange::AddLearner(id)),
            (3, &[id]) => Some(ConfChange::RemoveNode(id)),
            (4, _) if ids.windows(2).all(|w| w[0] < w[1]) => Some(ConfChange::Bootstrap(ids)),
            _ => None,
        }
    }
}

/// Encodes the payload of an [`EntryKind::ElectionTimeout`] entry.
pub fn encode_election_timeout(ticks: u32) -> Bytes {
    Bytes::copy_from_slice(&ticks.to_le_bytes())
}

/// Decodes the payload of an [`EntryKind::ElectionTimeout`] entry.
pub fn decode_election_timeout(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

/// A Raft message between members of one group.
///
/// `term` is the sender's current term, except for messages that carry no term
/// ([`MessageBody::Propose`], [`MessageBody::ReadIndex`], [`MessageBody::TransferLeader`]
/// use `0`: they are requests relayed to the leader, valid in any term) and pre-vote
/// traffic, which carries the term the sender *would* campaign in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

/// Request and response kinds (Raft Figure 2, plus the dissertation's extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// AppendEntries (Raft §5.3): entries following (`prev_index`, `prev_term`).
    Append { prev_index: Index, prev_term: Term, commit: Index, entries: Vec<Entry> },
    /// Answer to `Append`. On success `index` is the last index known to match the
    /// leader's log. On rejection `index` is the rejected `prev_index` and
    /// (`hint_index`, `hint_term`) is the follower's guess of where the logs may agree:
    /// the last index at or below `hint_index` whose term is at most `hint_term`
    /// (fast backtracking, as etcd's `findConflictByTerm`).
    AppendResponse { index: Index, reject: bool, hint_index: Index, hint_term: Term },
    /// Leader liveness and commit propagation. `ctx` names the latest ReadIndex round
    /// the leader wants confirmed (0: none).
    Heartbeat { commit: Index, ctx: u64 },
    /// Answer to `Heartbeat`, echoing `ctx`.
    HeartbeatResponse { ctx: u64 },
    /// RequestVote (Raft §5.2) or PreVote (dissertation §9.6) when `pre`. `transfer`
    /// marks a campaign started by leadership transfer, which bypasses leader
    /// stickiness (§4.2.3 / §6 of the dissertation).
    Vote { pre: bool, last_index: Index, last_term: Term, transfer: bool },
    /// Answer to `Vote`. A rejection also tells the voter's commit index and the term
    /// of the entry there (0, 0 in a grant, or when the voter cannot say): a candidate
    /// holding that same entry learns that its log is committed up to there
    /// (etcd-io/etcd#12359). Without it, a candidate whose configuration is out of date
    /// may need the vote of a member that has applied its own demotion — a learner now,
    /// which never campaigns — and with a longer log refuses: no leader, ever.
    VoteResponse { pre: bool, reject: bool, commit: Index, commit_term: Term },
    /// InstallSnapshot (Raft §7).
    Snapshot { snapshot: Snapshot },
    /// Leadership transfer: the recipient campaigns at once (dissertation §3.10).
    TimeoutNow,
    /// Proposals relayed from a follower to the leader.
    Propose { entries: Vec<Entry> },
    /// A ReadIndex request relayed from a follower to the leader.
    ReadIndex { ctx: u64 },
    /// The leader's answer to `ReadIndex`: reads may be served once `index` is applied.
    ReadIndexResponse { ctx: u64, index: Index },
    /// A leadership-transfer request relayed from a follower to the leader.
    TransferLeader { target: NodeId },
}

impl MessageBody {
    /// A short name for logs and counters.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::Vote { pre: true, .. } => "pre_vote",
            MessageBody::Vote { pre: false, .. } => "vote",
            MessageBody::VoteResponse { pre: true, .. } => "pre_vote_response",
            MessageBody::VoteResponse { pre: false, .. } => "vote_response",
            MessageBody::Snapshot { .. } => "snapshot",
            MessageBody::TimeoutNow => "timeout_now",
            MessageBody::Propose { .. } => "propose",
            MessageBody::ReadIndex { .. } => "read_index",
            MessageBody::ReadIndexResponse { .. } => "read_index_response",
            MessageBody::TransferLeader { .. } => "transfer_leader",
        }
    }

    /// True for small control messages that a transport should not queue behind bulk
    /// appends and snapshots (heartbeats, votes, transfer, read-index traffic).
    pub fn is_control(&self) -> bool {
        !matches!(self, MessageBody::Append { .. } | MessageBody::Snapshot { .. } | MessageBody::Propose { .. })
    }

    /// True for responses: they carry no request of their own.
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            MessageBody::AppendResponse { .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::VoteResponse { .. }
                | MessageBody::ReadIndexResponse { .. }
        )
    }
}

/// A ReadIndex result: the read identified by `ctx` may be served once the local state
/// machine has applied `index` (Raft dissertation §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

/// The role a member plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Role {
    #[default]
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    /// Lower-case name as shown on status pages.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// Volatile state worth reporting when it changes (not persisted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SoftState {
    pub leader: NodeId,
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_change_round_trips_and_rejects_malformed() {
        for cc in [
            ConfChange::AddVoter(7),
            ConfChange::AddLearner(u64::MAX),
            ConfChange::RemoveNode(1),
            ConfChange::Bootstrap(vec![1, 2, 9]),
            ConfChange::Bootstrap(vec![4]),
        ] {
            assert_eq!(ConfChange::decode(&cc.encode()), Some(cc));
        }
        assert_eq!(ConfChange::decode(&[4]), None, "bootstrap of nobody");
        assert_eq!(ConfChange::decode(&ConfChange::Bootstrap(vec![2, 1]).encode()), None, "unsorted");
        assert_eq!(ConfChange::decode(&ConfChange::Bootstrap(vec![2, 2]).encode()), None, "duplicate");
        assert_eq!(ConfChange::decode(&ConfChange::Bootstrap(vec![0, 2]).encode()), None, "node id 0");
        assert_eq!(ConfChange::decode(&[]), None);
        assert_eq!(ConfChange::decode(&[9, 1, 0, 0, 0, 0, 0, 0, 0]), None, "unknown tag");
        assert_eq!(ConfChange::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0]), None, "node id 0");
        assert_eq!(ConfChange::decode(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), None, "trailing byte");
    }

    #[test]
    fn election_timeout_payload_round_trips() {
        assert_eq!(decode_election_timeout(&encode_election_timeout(42)), Some(42));
        assert_eq!(decode_election_timeout(&[1, 2, 3]), None);
    }

    #[test]
    fn conf_state_well_formedness() {
        assert!(ConfState::with_voters([3, 1, 2, 2]).is_well_formed());
        let overlap = ConfState { voters: vec![1, 2], learners: vec![2] };
        assert!(!overlap.is_well_formed());
        let zero = ConfState { voters: vec![0, 1], learners: vec![] };
        assert!(!zero.is_well_formed());
    }
}
