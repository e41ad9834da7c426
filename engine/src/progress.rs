//! What the leader knows about each member's log (etcd's `tracker` package): match and
//! next index, the replication state machine (probe / replicate / snapshot), the bounded
//! window of appends in flight, and quorum arithmetic over the voters.

use std::collections::VecDeque;

use crate::types::{ConfState, Index, NodeId};

/// How the leader is currently replicating to a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProgressState {
    /// Not known where the logs agree: one append at a time, each waiting for an answer
    /// (or the next heartbeat response) before the next.
    #[default]
    Probe,
    /// Logs agree up to `matched`: stream appends optimistically within the window.
    Replicate,
    /// The peer needs a snapshot; appends pause until it is reported done or failed.
    Snapshot,
}

impl ProgressState {
    /// Lower-case name for status output.
    pub fn name(&self) -> &'static str {
        match self {
            ProgressState::Probe => "probe",
            ProgressState::Replicate => "replicate",
            ProgressState::Snapshot => "snapshot",
        }
    }
}

/// Appends sent but not yet acknowledged, bounded in count and bytes.
#[derive(Clone, Debug)]
pub(crate) struct Inflights {
    /// (last index carried by the message, payload bytes), oldest first.
    buf: VecDeque<(Index, u64)>,
    bytes: u64,
    max_count: usize,
    /// 0: no byte bound.
    max_bytes: u64,
}

impl Inflights {
    pub(crate) fn new(max_count: usize, max_bytes: u64) -> Inflights {
        Inflights { buf: VecDeque::new(), bytes: 0, max_count, max_bytes }
    }

    /// # Panics
    /// If the window is already full (callers check [`Inflights::full`] first).
    pub(crate) fn add(&mut self, last: Index, bytes: u64) {
        assert!(!self.full(), "Inflights::add on a full window");
        debug_assert!(self.buf.back().is_none_or(|&(i, _)| i < last), "inflight indexes must increase");
        if self.buf.capacity() == 0 {
            // Allocated on first use (followers never use theirs), and only as far as a
            // window usually gets; it grows beyond that if it must.
            self.buf.reserve_exact(self.max_count.min(1024));
        }
        self.buf.push_back((last, bytes));
        self.bytes += bytes;
    }

    /// Acknowledges every message whose last index is `<= to`.
    pub(crate) fn free_le(&mut self, to: Index) {
        while let Some(&(i, b)) = self.buf.front() {
            if i > to {
                break;
            }
            self.bytes -= b;
            self.buf.pop_front();
        }
    }

    /// Frees the oldest message: a heartbeat response proves the peer is alive, so one
    /// more append may go out even if acknowledgements were lost (etcd behaviour).
    pub(crate) fn free_first_one(&mut self) {
        if let Some((_, b)) = self.buf.pop_front() {
            self.bytes -= b;
        }
    }

    pub(crate) fn full(&self) -> bool {
        self.buf.len() >= self.max_count || (self.max_bytes > 0 && self.bytes >= self.max_bytes)
    }

    pub(crate) fn count(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn reset(&mut self) {
        self.buf.clear();
        self.bytes = 0;
    }
}

/// The leader's view of one member.
#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub(crate) matched: Index,
    pub(crate) next: Index,
    pub(crate) state: ProgressState,
    /// In `Snapshot` state: the index of the snapshot being sent.
    pub(crate) pending_snapshot: Index,
    /// Heard from within the current CheckQuorum period.
    pub(crate) recent_active: bool,
    /// In `Probe` state: an append is outstanding; wait before sending another.
    pub(crate) probe_sent: bool,
    pub(crate) inflights: Inflights,
    pub(crate) is_learner: bool,
    /// Highest heartbeat round (ReadIndex context) this peer has acknowledged.
    pub(crate) read_acked: u64,
    /// Engine tick at which the leader last heard from this peer.
    pub(crate) last_heard_tick: u64,
    /// Commit index carried by the last append sent to this peer.
    pub(crate) sent_commit: Index,
}

impl Progress {
    pub(crate) fn new(next: Index, max_inflight: usize, max_inflight_bytes: u64, is_learner: bool) -> Progress {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            pending_snapshot: 0,
            recent_active: false,
            probe_sent: false,
            inflights: Inflights::new(max_inflight, max_inflight_bytes),
            is_learner,
            read_acked: 0,
            last_heard_tick: 0,
            sent_commit: 0,
        }
    }

    fn reset_state(&mut self, state: ProgressState) {
        self.probe_sent = false;
        self.pending_snapshot = 0;
        self.state = state;
        self.inflights.reset();
    }

    pub(crate) fn become_probe(&mut self) {
        // After a snapshot, resume just past it: the peer has at least that much.
        if self.state == ProgressState::Snapshot {
            let pending = self.pending_snapshot;
            self.reset_state(ProgressState::Probe);
            self.next = (self.matched + 1).max(pending + 1);
        } else {
            self.reset_state(ProgressState::Probe);
            self.next = self.matched + 1;
        }
    }

    pub(crate) fn become_replicate(&mut self) {
        self.reset_state(ProgressState::Replicate);
        self.next = self.matched + 1;
    }

    pub(crate) fn become_snapshot(&mut self, snapshot_index: Index) {
        self.reset_state(ProgressState::Snapshot);
        self.pending_snapshot = snapshot_index;
    }

    /// Records that an append carrying `count` entries (last index `last`, `bytes`
    /// payload) was sent.
    pub(crate) fn sent_entries(&mut self, count: usize, last: Index, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                if count > 0 {
                    self.next = last + 1;
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot => unreachable!("append sent to a peer awaiting a snapshot"),
        }
    }

    /// An append was acknowledged up to `n`. Returns whether `matched` advanced.
    pub(crate) fn maybe_update(&mut self, n: Index) -> bool {
        let updated = n > self.matched;
        if updated {
            self.matched = n;
            self.probe_sent = false;
        }
        self.next = self.next.max(n + 1);
        updated
    }

    /// An append at `rejected` was refused; `hint` is where the peer's log may agree.
    /// Returns false when the rejection is stale (an answer to an older message).
    pub(crate) fn maybe_decr_to(&mut self, rejected: Index, hint: Index) -> bool {
        if self.state == ProgressState::Replicate {
            if rejected <= self.matched {
                return false;
            }
            self.next = self.matched + 1;
            return true;
        }
        if self.next.checked_sub(1) != Some(rejected) {
            return false;
        }
        self.next = rejected.min(hint + 1).max(self.matched + 1);
        self.probe_sent = false;
        true
    }

    /// Whether the leader should hold off sending appends to this peer.
    pub(crate) fn is_paused(&self) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(),
            ProgressState::Snapshot => true,
        }
    }
}

/// Outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Membership and per-member progress. Small clusters (3–7 members) make sorted vectors
/// faster than maps.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    pub(crate) voters: Vec<NodeId>,
    pub(crate) learners: Vec<NodeId>,
    /// Sorted by id; one entry per voter and learner.
    pub(crate) progress: Vec<(NodeId, Progress)>,
    votes: Vec<(NodeId, bool)>,
    max_inflight: usize,
    max_inflight_bytes: u64,
    scratch: Vec<Index>,
}

impl Tracker {
    pub(crate) fn new(max_inflight: usize, max_inflight_bytes: u64) -> Tracker {
        Tracker {
            voters: Vec::new(),
            learners: Vec::new(),
            progress: Vec::new(),
            votes: Vec::new(),
            max_inflight,
            max_inflight_bytes,
            scratch: Vec::new(),
        }
    }

    pub(crate) fn conf_state(&self) -> ConfState {
        ConfState { voters: self.voters.clone(), learners: self.learners.clone() }
    }

    /// Replaces the membership; progress of members that stay is kept, new members start
    /// probing at `next`.
    pub(crate) fn set_conf(&mut self, cs: &ConfState, next: Index) {
        debug_assert!(cs.is_well_formed(), "malformed conf state {cs:?}");
        self.voters = cs.voters.clone();
        self.learners = cs.learners.clone();
        let mut progress = Vec::with_capacity(cs.voters.len() + cs.learners.len());
        let mut ids: Vec<(NodeId, bool)> = cs.voters.iter().map(|&v| (v, false)).collect();
        ids.extend(cs.learners.iter().map(|&l| (l, true)));
        ids.sort_unstable();
        for (id, is_learner) in ids {
            let pr = match self.progress.binary_search_by_key(&id, |(i, _)| *i) {
                Ok(pos) => {
                    let mut pr = self.progress[pos].1.clone();
                    pr.is_learner = is_learner;
                    pr
                }
                Err(_) => Progress::new(next, self.max_inflight, self.max_inflight_bytes, is_learner),
            };
            progress.push((id, pr));
        }
        self.progress = progress;
        self.votes.retain(|(id, _)| cs.voters.binary_search(id).is_ok());
    }

    pub(crate) fn is_voter(&self, id: NodeId) -> bool {
        self.voters.binary_search(&id).is_ok()
    }

    pub(crate) fn is_member(&self, id: NodeId) -> bool {
        self.progress.binary_search_by_key(&id, |(i, _)| *i).is_ok()
    }

    pub(crate) fn get(&self, id: NodeId) -> Option<&Progress> {
        let pos = self.progress.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(&self.progress[pos].1)
    }

    pub(crate) fn get_mut(&mut self, id: NodeId) -> Option<&mut Progress> {
        let pos = self.progress.binary_search_by_key(&id, |(i, _)| *i).ok()?;
        Some(&mut self.progress[pos].1)
    }

    fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The largest index replicated on a quorum of voters (Raft §5.3 / §5.4).
    pub(crate) fn committed(&mut self) -> Index {
        if self.voters.is_empty() {
            return 0;
        }
        self.scratch.clear();
        for (id, pr) in &self.progress {
            if !pr.is_learner {
                debug_assert!(self.voters.binary_search(id).is_ok());
                self.scratch.push(pr.matched);
            }
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        self.scratch[self.quorum() - 1]
    }

    pub(crate) fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records a vote; the first answer from a voter counts, later ones are ignored.
    pub(crate) fn record_vote(&mut self, id: NodeId, granted: bool) {
        if !self.is_voter(id) || self.votes.iter().any(|(v, _)| *v == id) {
            return;
        }
        self.votes.push((id, granted));
    }

    pub(crate) fn tally(&self) -> (usize, usize) {
        let granted = self.votes.iter().filter(|(_, g)| *g).count();
        (granted, self.votes.len() - granted)
    }

    pub(crate) fn vote_result(&self) -> VoteResult {
        let (granted, rejected) = self.tally();
        if granted >= self.quorum() {
            VoteResult::Won
        } else if rejected > self.voters.len() - self.quorum() {
            VoteResult::Lost
        } else {
            VoteResult::Pending
        }
    }

    /// CheckQuorum: whether a quorum of voters (counting `self_id`) was recently active.
    pub(crate) fn quorum_active(&self, self_id: NodeId) -> bool {
        let active =
            self.progress.iter().filter(|(id, pr)| !pr.is_learner && (*id == self_id || pr.recent_active)).count();
        active >= self.quorum()
    }

    /// The highest heartbeat round acknowledged by a quorum of voters (`self_seq` for
    /// `self_id`, which needs no acknowledgement).
    pub(crate) fn read_quorum_acked(&mut self, self_id: NodeId, self_seq: u64) -> u64 {
        if self.voters.is_empty() {
            return 0;
        }
        self.scratch.clear();
        for (id, pr) in &self.progress {
            if !pr.is_learner {
                self.scratch.push(if *id == self_id { self_seq } else { pr.read_acked });
            }
        }
        self.scratch.sort_unstable_by(|a, b| b.cmp(a));
        self.scratch[self.quorum() - 1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[NodeId], learners: &[NodeId]) -> Tracker {
        let mut t = Tracker::new(4, 0);
        t.set_conf(&ConfState { voters: voters.to_vec(), learners: learners.to_vec() }, 1);
        t
    }

    #[test]
    fn committed_is_the_quorum_match_ignoring_learners() {
        let mut t = tracker(&[1, 2, 3], &[4]);
        for (id, m) in [(1, 5), (2, 3), (3, 1), (4, 100)] {
            t.get_mut(id).unwrap().matched = m;
        }
        assert_eq!(t.committed(), 3);
        let mut t = tracker(&[1, 2, 3, 4], &[]);
        for (id, m) in [(1, 5), (2, 3), (3, 1), (4, 2)] {
            t.get_mut(id).unwrap().matched = m;
        }
        assert_eq!(t.committed(), 2, "4 voters need 3");
    }

    #[test]
    fn votes_count_once_and_only_from_voters() {
        let mut t = tracker(&[1, 2, 3], &[4]);
        t.record_vote(1, true);
        t.record_vote(4, true);
        t.record_vote(1, false);
        assert_eq!(t.vote_result(), VoteResult::Pending);
        t.record_vote(2, true);
        assert_eq!(t.vote_result(), VoteResult::Won);
        let mut t = tracker(&[1, 2, 3], &[]);
        t.record_vote(2, false);
        t.record_vote(3, false);
        assert_eq!(t.vote_result(), VoteResult::Lost);
    }

    #[test]
    fn inflights_bound_count_and_bytes() {
        let mut inf = Inflights::new(3, 100);
        inf.add(1, 10);
        inf.add(2, 10);
        assert!(!inf.full());
        inf.add(3, 10);
        assert!(inf.full(), "count bound");
        inf.free_le(2);
        assert_eq!((inf.count(), inf.bytes()), (1, 10));
        inf.add(9, 95);
        assert!(inf.full(), "byte bound");
        inf.free_first_one();
        assert_eq!(inf.count(), 1);
    }

    #[test]
    fn probe_decrements_only_for_the_outstanding_probe() {
        let mut pr = Progress::new(10, 4, 0, false);
        pr.matched = 3;
        assert!(!pr.maybe_decr_to(5, 4), "rejection of an older probe is stale");
        assert!(pr.maybe_decr_to(9, 6));
        assert_eq!(pr.next, 7);
        assert!(pr.maybe_decr_to(6, 0));
        assert_eq!(pr.next, 4, "never below matched + 1");
    }

    #[test]
    fn replicate_rejection_falls_back_to_match() {
        let mut pr = Progress::new(10, 4, 0, false);
        pr.matched = 5;
        pr.become_replicate();
        pr.sent_entries(3, 8, 30);
        assert_eq!(pr.next, 9);
        assert!(!pr.maybe_decr_to(5, 5), "at or below match: stale");
        assert!(pr.maybe_decr_to(7, 6));
        assert_eq!(pr.next, 6);
    }

    #[test]
    fn snapshot_to_probe_resumes_after_the_snapshot() {
        let mut pr = Progress::new(10, 4, 0, false);
        pr.become_snapshot(20);
        assert!(pr.is_paused());
        pr.become_probe();
        assert_eq!(pr.next, 21);
    }

    #[test]
    fn read_quorum_counts_self_without_ack() {
        let mut t = tracker(&[1, 2, 3], &[]);
        t.get_mut(2).unwrap().read_acked = 7;
        t.get_mut(3).unwrap().read_acked = 4;
        assert_eq!(t.read_quorum_acked(1, 9), 7);
    }
}
