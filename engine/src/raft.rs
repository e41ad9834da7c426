//! The Raft protocol: roles, elections (with PreVote and CheckQuorum), log replication
//! with flow control, commitment, ReadIndex and lease reads, leadership transfer,
//! membership changes and snapshots.
//!
//! Section references are to the Raft paper (Ongaro & Ousterhout 2014, "§5.x") and
//! Ongaro's dissertation ("diss. §x"). Behaviour follows etcd's `raft` package except
//! where a comment says otherwise.

use std::collections::VecDeque;

use crate::config::{Config, ConfigError, ELECTION_TICKS_MAX, ReadMode};
use crate::log::{AppendOutcome, RaftLog};
use crate::progress::{ProgressState, Tracker, VoteResult};
use crate::rng::Rng;
use crate::storage::{Storage, StorageError};
use crate::types::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Index, Message, MessageBody, NO_NODE, NodeId, ReadState, Role,
    Snapshot, SoftState, Term, decode_election_timeout,
};

// The refusal of an election-timeout entry names this bound by value, for the operator.
const _: () = assert!(ELECTION_TICKS_MAX == 1_048_576, "update the election-timeout refusal message");

/// Largest term or index a message may carry. No real log or term sequence gets near
/// 2^62; refusing larger values keeps `index + 1` and `term + 1` from ever overflowing
/// on input a peer controls.
const POSITION_MAX: u64 = 1 << 62;

/// Heartbeat rounds kept while unacknowledged and carrying no reads: enough to span an
/// election timeout of heartbeats, after which CheckQuorum settles the matter anyway.
const READ_ROUNDS_IDLE_MAX: usize = 64;
/// Share of the election timeout a lease gives up to cover tick-rate drift between
/// members (diss. §6.4.1: the lease must end before any follower's timer can fire).
const LEASE_DRIFT_MARGIN_PERCENT: u64 = 10;

/// Why a proposal, read or transfer request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// No leader is known (an election is under way); retry later.
    NoLeader,
    /// This member is not the leader and forwarding is disabled.
    ForwardingDisabled,
    /// The leader is handing over leadership; retry at the new leader.
    TransferInProgress,
    /// A membership change is still being applied (one at a time, diss. §4.1).
    ConfChangePending,
    /// The leader holds too many uncommitted bytes (`max_uncommitted_bytes`).
    Overloaded,
    /// The request is malformed; the text says why.
    Invalid(&'static str),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::NoLeader => f.write_str("no leader is known"),
            RequestError::ForwardingDisabled => f.write_str("not the leader and forwarding is disabled"),
            RequestError::TransferInProgress => f.write_str("leadership transfer in progress"),
            RequestError::ConfChangePending => f.write_str("a membership change is still pending"),
            RequestError::Overloaded => f.write_str("too many uncommitted entries"),
            RequestError::Invalid(why) => write!(f, "invalid request: {why}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// Why the engine could not start.
#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    Config(ConfigError),
    Storage(StorageError),
    /// The recovered state contradicts itself (for example a commit index beyond the
    /// log); the text names what.
    Corrupt(String),
    /// `bootstrap` on storage that already holds state.
    AlreadyBootstrapped,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Storage(e) => write!(f, "reading initial state: {e}"),
            Error::Corrupt(why) => write!(f, "recovered state is inconsistent: {why}"),
            Error::AlreadyBootstrapped => f.write_str("storage already holds Raft state; restart instead of bootstrap"),
        }
    }
}

impl std::error::Error for Error {}

/// Counters of everything the engine ignored, refused or did unusually: bad input is
/// never fatal, but it is always visible.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages that could not be valid (sender 0 or self, wrong recipient, non-contiguous
    /// entries, malformed snapshot, a term-less kind with a term or vice versa).
    pub msgs_malformed: u64,
    /// Messages from an older term, dropped (§5.1).
    pub msgs_stale_term: u64,
    /// Responses from members not in the configuration, dropped.
    pub msgs_from_non_member: u64,
    /// Vote requests ignored because a leader is known and live (CheckQuorum lease).
    pub votes_ignored_in_lease: u64,
    /// Appends refused because they would overwrite committed entries.
    pub appends_conflicting_with_committed: u64,
    /// Commit indexes beyond the local log, ignored.
    pub commits_beyond_log: u64,
    /// Proposals (local or relayed) dropped.
    pub proposals_dropped: u64,
    /// Read requests dropped (no leader, or leadership lost before confirmation).
    pub reads_dropped: u64,
    /// Conf changes that were no-ops or invalid when applied.
    pub conf_changes_invalid: u64,
    /// Elections (or pre-vote rounds) started.
    pub campaigns: u64,
    /// Elections not started because a voter's rejection showed that entries beyond
    /// this member's log are committed: it cannot win (§5.4.1) and would only raise terms.
    pub campaigns_withheld: u64,
    /// Times this member became leader.
    pub leaderships_won: u64,
    /// Times a leader stepped down because a quorum went quiet.
    pub check_quorum_step_downs: u64,
    /// Leadership transfers abandoned after an election timeout.
    pub transfers_aborted: u64,
    /// Snapshots sent to followers.
    pub snapshots_sent: u64,
    /// Storage reads that failed (other than "compacted" / "not yet available").
    pub storage_errors: u64,
}

/// One heartbeat round: a broadcast whose quorum acknowledgement confirms leadership as
/// of `sent_tick`, and with it the reads that arrived before it went out (diss. §6.4).
#[derive(Debug)]
struct ReadRound {
    seq: u64,
    sent_tick: u64,
    index: Index,
    requests: Vec<(NodeId, u64)>,
}

#[derive(Debug, Default)]
struct Reads {
    /// Arrived before this leader committed an entry of its term (diss. §6.4 step 1).
    awaiting_term_commit: Vec<(NodeId, u64)>,
    /// Waiting for the next heartbeat round.
    queued: Vec<(NodeId, u64)>,
    rounds: VecDeque<ReadRound>,
    seq: u64,
    /// Tick at which the latest quorum-acknowledged round was sent.
    lease_start: Option<u64>,
}

impl Reads {
    fn pending(&self) -> u64 {
        let in_rounds: usize = self.rounds.iter().map(|r| r.requests.len()).sum();
        (self.awaiting_term_commit.len() + self.queued.len() + in_rounds) as u64
    }
}

#[derive(Debug)]
pub(crate) struct Raft<S> {
    pub(crate) id: NodeId,
    pub(crate) term: Term,
    pub(crate) vote: NodeId,
    pub(crate) leader: NodeId,
    pub(crate) role: Role,
    pub(crate) log: RaftLog<S>,
    pub(crate) tracker: Tracker,
    pub(crate) msgs: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) stats: Stats,

    /// Ticks since the last election timeout reset (followers: since hearing from the
    /// leader; leaders: since the last CheckQuorum check).
    election_elapsed: u64,
    heartbeat_elapsed: u64,
    pub(crate) election_timeout: u64,
    randomized_election_timeout: u64,
    heartbeat_timeout: u64,
    /// Monotonic tick count since start.
    pub(crate) ticks: u64,
    /// Election timeout adopted from the log (0: none; the local configuration applies).
    pub(crate) election_timeout_from_log: u32,
    config_election_ticks: u64,

    check_quorum: bool,
    pre_vote: bool,
    read_mode: ReadMode,
    forward_proposals: bool,
    max_size_per_msg: u64,
    max_uncommitted_bytes: u64,
    pub(crate) max_committed_bytes_per_ready: u64,
    rng: Rng,

    /// Index of the latest conf change appended by this leader; another may be
    /// proposed only once it is applied.
    /// The highest index a voter's rejection said is committed (see `hup`).
    known_commit: Index,
    pending_conf_index: Index,
    uncommitted_bytes: u64,
    pub(crate) lead_transferee: NodeId,
    /// This leader sent TimeoutNow in its term: a transfer may elect another leader
    /// despite followers' leases, so lease reads are off for the rest of the term.
    lease_void: bool,
    reads: Reads,
    scratch: Vec<Entry>,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(cfg: &Config, store: S) -> Result<Raft<S>, Error> {
        cfg.validate().map_err(Error::Config)?;
        let rs = store.initial_state().map_err(Error::Storage)?;
        if !rs.conf_state.is_well_formed() {
            return Err(Error::Corrupt(format!("malformed membership {:?}", rs.conf_state)));
        }
        let (first, last) = (store.first_index(), store.last_index());
        if first > last + 1 {
            return Err(Error::Corrupt(format!("first index {first} beyond last index {last} + 1")));
        }
        let hs = rs.hard_state;
        // A recovered commit index beyond the log is clamped: commit is allowed to be
        // stale, and the log is what was durably written. What the caller has applied
        // (its snapshot) is committed, even where the log below it is still kept.
        let commit = hs.commit.max(cfg.applied.min(last)).clamp(first - 1, last);
        if cfg.applied > commit {
            return Err(Error::Corrupt(format!(
                "applied index {} is beyond the recovered commit index {commit}",
                cfg.applied
            )));
        }
        let log = RaftLog::new(store, commit, cfg.applied);
        let mut tracker = Tracker::new(cfg.max_inflight_msgs, cfg.max_inflight_bytes);
        tracker.set_conf(&rs.conf_state, last + 1);
        let election_timeout_from_log = rs.election_timeout_ticks;
        let mut r = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            leader: NO_NODE,
            role: Role::Follower,
            log,
            tracker,
            msgs: Vec::new(),
            read_states: Vec::new(),
            stats: Stats::default(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            election_timeout: u64::from(cfg.election_ticks),
            randomized_election_timeout: 0,
            heartbeat_timeout: u64::from(cfg.heartbeat_ticks),
            ticks: 0,
            election_timeout_from_log: 0,
            config_election_ticks: u64::from(cfg.election_ticks),
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            read_mode: cfg.read_mode,
            forward_proposals: cfg.forward_proposals,
            max_size_per_msg: cfg.max_size_per_msg,
            max_uncommitted_bytes: cfg.max_uncommitted_bytes,
            max_committed_bytes_per_ready: cfg.max_committed_bytes_per_ready,
            rng: Rng::new(cfg.seed),
            known_commit: 0,
            pending_conf_index: 0,
            uncommitted_bytes: 0,
            lead_transferee: NO_NODE,
            lease_void: false,
            reads: Reads::default(),
            scratch: Vec::new(),
        };
        r.adopt_election_timeout(election_timeout_from_log);
        r.become_follower(hs.term, NO_NODE);
        Ok(r)
    }

    pub(crate) fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.log.committed }
    }

    pub(crate) fn soft_state(&self) -> SoftState {
        SoftState { leader: self.leader, role: self.role }
    }

    // ---- sending -------------------------------------------------------------------

    fn send(&mut self, to: NodeId, term: Term, body: MessageBody) {
        debug_assert!(to != self.id, "message to self: {body:?}");
        self.msgs.push(Message { from: self.id, to, term, body });
    }

    /// Sends an append (or a snapshot, if the entries it needs are compacted) to `to`.
    /// Returns whether anything was sent.
    fn maybe_send_append(&mut self, to: NodeId, send_if_empty: bool) -> bool {
        let Some(pr) = self.tracker.get(to) else { return false };
        if pr.is_paused() {
            return false;
        }
        let next = pr.next;
        let recent_active = pr.recent_active;
        let last = self.log.last_index();
        let prev_term = self.log.term(next - 1);
        let mut ents = std::mem::take(&mut self.scratch);
        ents.clear();
        let ents_res = self.log.slice(next, last + 1, self.max_size_per_msg, &mut ents);
        match (prev_term, ents_res) {
            (Ok(prev_term), Ok(())) => {
                if ents.is_empty() && !send_if_empty {
                    self.scratch = ents;
                    return false;
                }
                let count = ents.len();
                let last_sent = ents.last().map_or(next - 1, |e| e.index);
                let bytes: u64 = ents.iter().map(Entry::size_bytes).sum();
                let pr = self.tracker.get_mut(to).expect("checked above");
                pr.sent_entries(count, last_sent, bytes);
                let commit = self.log.committed;
                pr.sent_commit = commit;
                let entries = std::mem::replace(&mut ents, Vec::with_capacity(count));
                self.scratch = ents;
                self.send(to, self.term, MessageBody::Append { prev_index: next - 1, prev_term, commit, entries });
                true
            }
            (Err(StorageError::Compacted), _) | (_, Err(StorageError::Compacted)) => {
                self.scratch = ents;
                self.maybe_send_snapshot(to, recent_active)
            }
            (Err(e), _) | (_, Err(e)) => {
                self.scratch = ents;
                if !matches!(e, StorageError::Unavailable) {
                    self.stats.storage_errors += 1;
                }
                false
            }
        }
    }

    fn maybe_send_snapshot(&mut self, to: NodeId, recent_active: bool) -> bool {
        // A snapshot is expensive: only for a peer that has shown signs of life (etcd).
        if !recent_active {
            return false;
        }
        let need = self.tracker.get(to).map_or(0, |p| p.next.saturating_sub(1));
        let snapshot = match self.log.store.snapshot(need, to) {
            Ok(s) => s,
            Err(StorageError::SnapshotTemporarilyUnavailable) => return false,
            Err(_) => {
                self.stats.storage_errors += 1;
                return false;
            }
        };
        if snapshot.is_empty() || snapshot.meta.index + 1 < self.log.first_index() {
            // Storage compacted past its own snapshot: it cannot serve this peer yet.
            self.stats.storage_errors += 1;
            return false;
        }
        let pr = self.tracker.get_mut(to).expect("member");
        pr.become_snapshot(snapshot.meta.index);
        self.stats.snapshots_sent += 1;
        self.send(to, self.term, MessageBody::Snapshot { snapshot });
        true
    }

    fn bcast_append(&mut self) {
        let committed = self.log.committed;
        for i in 0..self.tracker.progress.len() {
            let (id, ref pr) = self.tracker.progress[i];
            if id == self.id {
                continue;
            }
            let lacks_commit = pr.sent_commit < committed;
            if !self.send_append_loop(id) && lacks_commit {
                // Nothing new to send, but the follower does not know the commit index.
                self.maybe_send_append(id, true);
            }
        }
    }

    /// Sends everything the window allows to `to`. Returns whether anything was sent.
    fn send_append_loop(&mut self, to: NodeId) -> bool {
        let mut sent = false;
        while self.maybe_send_append(to, false) {
            sent = true;
        }
        sent
    }

    /// Broadcasts a heartbeat round; any queued reads ride on it.
    fn bcast_heartbeat(&mut self) {
        self.reads.seq += 1;
        let seq = self.reads.seq;
        let requests = std::mem::take(&mut self.reads.queued);
        if requests.is_empty()
            && self.reads.rounds.len() >= READ_ROUNDS_IDLE_MAX
            && self.reads.rounds.front().is_some_and(|r| r.requests.is_empty())
        {
            self.reads.rounds.pop_front();
        }
        self.reads.rounds.push_back(ReadRound { seq, sent_tick: self.ticks, index: self.log.committed, requests });
        for i in 0..self.tracker.progress.len() {
            let (id, ref mut pr) = self.tracker.progress[i];
            if id == self.id {
                continue;
            }
            // Never tell a follower to commit past what it is known to hold (§5.3).
            let commit = pr.matched.min(self.log.committed);
            pr.sent_commit = pr.sent_commit.max(commit);
            self.send(id, self.term, MessageBody::Heartbeat { commit, ctx: seq });
        }
        // A lone voter confirms its own rounds.
        self.process_read_acks();
    }

    // ---- role transitions ------------------------------------------------------------

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.leader = NO_NODE;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_election_timeout();
        self.lead_transferee = NO_NODE;
        self.lease_void = false;
        self.tracker.reset_votes();
        let last = self.log.last_index();
        let persisted = self.log.persisted;
        let id = self.id;
        for (pid, pr) in self.tracker.progress.iter_mut() {
            pr.become_probe();
            pr.next = last + 1;
            pr.matched = if *pid == id { persisted } else { 0 };
            pr.recent_active = *pid == id;
            pr.read_acked = 0;
            pr.sent_commit = 0;
        }
        self.pending_conf_index = 0;
        self.uncommitted_bytes = 0;
        let dropped = self.reads.pending();
        self.stats.reads_dropped += dropped;
        let seq = self.reads.seq;
        self.reads = Reads { seq, ..Reads::default() };
    }

    fn reset_randomized_election_timeout(&mut self) {
        self.randomized_election_timeout = self.rng.range(self.election_timeout, 2 * self.election_timeout);
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader: NodeId) {
        self.reset(term);
        self.leader = leader;
        self.role = Role::Follower;
    }

    fn become_pre_candidate(&mut self) {
        assert!(self.role != Role::Leader, "invalid transition [leader -> pre-candidate]");
        // A pre-candidate changes neither term nor vote (diss. §9.6): losing the
        // pre-vote must leave no trace.
        self.tracker.reset_votes();
        self.leader = NO_NODE;
        self.role = Role::PreCandidate;
    }

    fn become_candidate(&mut self) {
        assert!(self.role != Role::Leader, "invalid transition [leader -> candidate]");
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    fn become_leader(&mut self) {
        assert!(self.role == Role::Candidate, "invalid transition [{} -> leader]", self.role.name());
        self.reset(self.term);
        self.leader = self.id;
        self.role = Role::Leader;
        self.stats.leaderships_won += 1;
        let persisted = self.log.persisted;
        let pr = self.tracker.get_mut(self.id).expect("a leader is a voter");
        pr.become_replicate();
        pr.matched = persisted;
        // Conservatively assume the tail may hold an unapplied conf change (etcd).
        self.pending_conf_index = self.log.last_index();
        // §5.4.2 / diss. §6.4: commit an entry of this term at once, so that earlier
        // entries commit and reads can be served.
        self.append_entries(vec![Entry::default()], true).expect("the no-op is never refused");
    }

    // ---- ticks -----------------------------------------------------------------------

    pub(crate) fn tick(&mut self) {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_timeout {
            self.election_elapsed = 0;
            if self.check_quorum {
                if !self.tracker.quorum_active(self.id) {
                    self.stats.check_quorum_step_downs += 1;
                    self.become_follower(self.term, NO_NODE);
                    return;
                }
                let id = self.id;
                for (pid, pr) in self.tracker.progress.iter_mut() {
                    pr.recent_active = *pid == id;
                }
            }
            // A transfer that has not finished within an election timeout is abandoned
            // (diss. §3.10), so proposals are accepted again.
            if self.lead_transferee != NO_NODE {
                self.stats.transfers_aborted += 1;
                self.lead_transferee = NO_NODE;
            }
        }
        if self.heartbeat_elapsed >= self.heartbeat_timeout {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// Whether this member may become leader: a voter with no snapshot being installed.
    pub(crate) fn promotable(&self) -> bool {
        self.tracker.is_voter(self.id)
            && self.log.next_unstable_snapshot().is_none()
            && self.log.unstable.snapshot.is_none()
    }

    fn has_unapplied_conf_change(&self) -> bool {
        if self.log.committed <= self.log.applied {
            return false;
        }
        let mut ents = Vec::new();
        // Bounded scan; a failure to read means we cannot tell, so be cautious.
        match self.log.slice(self.log.applied + 1, self.log.committed + 1, u64::MAX, &mut ents) {
            Ok(()) => ents.iter().any(|e| e.kind == EntryKind::ConfChange),
            Err(_) => true,
        }
    }

    /// Starts an election (or a pre-vote round). `transfer` skips PreVote and marks the
    /// request so that voters bypass their leader lease (diss. §3.10).
    pub(crate) fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        // etcd: a member must not campaign while it may be applying a conf change that
        // changes who can vote.
        if self.has_unapplied_conf_change() {
            return;
        }
        // A member that lacks committed entries cannot win; without PreVote every
        // attempt would still raise the term, and a member that campaigns more often
        // than the one that can win (a shorter election timeout, applied from an older
        // configuration) keeps outbidding it: simulator seed 7000000000000128661. The
        // entries it lacks reach it from a leader, which lifts this.
        if self.known_commit > self.log.last_index() {
            self.stats.campaigns_withheld += 1;
            // The election timeout passed without word from a leader: stop believing
            // in one, as a campaign would, or the CheckQuorum lease would have us
            // ignore the vote requests of the member that can win (seed 327).
            self.leader = NO_NODE;
            return;
        }
        self.stats.campaigns += 1;
        if self.pre_vote && !transfer {
            self.campaign_pre();
        } else {
            self.campaign(transfer);
        }
    }

    fn campaign_pre(&mut self) {
        self.become_pre_candidate();
        self.tracker.record_vote(self.id, true);
        if self.tracker.vote_result() == VoteResult::Won {
            self.campaign(false);
            return;
        }
        self.request_votes(true, false, self.term + 1);
    }

    fn campaign(&mut self, transfer: bool) {
        self.become_candidate();
        self.tracker.record_vote(self.id, true);
        if self.tracker.vote_result() == VoteResult::Won {
            self.become_leader();
            return;
        }
        self.request_votes(false, transfer, self.term);
    }

    fn request_votes(&mut self, pre: bool, transfer: bool, term: Term) {
        let (last_index, last_term) = (self.log.last_index(), self.log.last_term());
        for i in 0..self.tracker.voters.len() {
            let id = self.tracker.voters[i];
            if id != self.id {
                self.send(id, term, MessageBody::Vote { pre, last_index, last_term, transfer });
            }
        }
    }

    // ---- step ------------------------------------------------------------------------

    fn is_malformed(&self, m: &Message) -> bool {
        if m.from == NO_NODE || m.from == self.id || m.to != self.id {
            return true;
        }
        let relayed = matches!(
            m.body,
            MessageBody::Propose { .. } | MessageBody::ReadIndex { .. } | MessageBody::TransferLeader { .. }
        );
        if relayed != (m.term == 0) || m.term > POSITION_MAX {
            return true;
        }
        let big = |x: u64| x > POSITION_MAX;
        match &m.body {
            MessageBody::Append { prev_index, prev_term, commit, entries } => {
                if big(*prev_index) || big(*prev_term) || big(*commit) {
                    return true;
                }
                let mut term = *prev_term;
                for (expect, e) in (*prev_index + 1..).zip(entries) {
                    if e.index != expect || e.term < term || e.term > m.term || big(e.index) {
                        return true;
                    }
                    term = e.term;
                }
                false
            }
            MessageBody::AppendResponse { index, hint_index, hint_term, .. } => {
                big(*index) || big(*hint_index) || big(*hint_term)
            }
            MessageBody::Heartbeat { commit, .. } => big(*commit),
            MessageBody::Vote { last_index, last_term, .. } => big(*last_index) || big(*last_term),
            MessageBody::ReadIndexResponse { index, .. } => big(*index),
            MessageBody::Snapshot { snapshot } => {
                snapshot.is_empty()
                    || snapshot.meta.term == 0
                    || big(snapshot.meta.index)
                    || big(snapshot.meta.term)
                    || !snapshot.meta.conf_state.is_well_formed()
            }
            _ => false,
        }
    }

    pub(crate) fn step(&mut self, m: Message) {
        if self.is_malformed(&m) {
            self.stats.msgs_malformed += 1;
            return;
        }
        if m.term == 0 {
            self.step_relayed(m);
            return;
        }
        if m.term > self.term {
            if let MessageBody::Vote { transfer, .. } = m.body {
                // CheckQuorum lease (diss. §4.2.3): while we hear from a live leader, a
                // vote request is a disruption, not an election.
                let in_lease =
                    self.check_quorum && self.leader != NO_NODE && self.election_elapsed < self.election_timeout;
                if in_lease && !transfer {
                    self.stats.votes_ignored_in_lease += 1;
                    return;
                }
            }
            match m.body {
                // A pre-vote is a question about a future term: it changes nothing here.
                MessageBody::Vote { pre: true, .. } => {}
                // Granted pre-votes come back at the future term; our term moves only
                // when we really campaign.
                MessageBody::VoteResponse { pre: true, reject: false, .. } => {}
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                    self.become_follower(m.term, m.from)
                }
                MessageBody::Vote { .. } => {
                    // Raft Figure 2: the election timer restarts on hearing from the
                    // leader or on granting a vote — not on merely seeing a higher
                    // term. Otherwise a member that can never win (a stale log) but
                    // times out sooner than the others would reset their timers with
                    // every request and keep the cluster leaderless forever.
                    let elapsed = self.election_elapsed;
                    self.become_follower(m.term, NO_NODE);
                    self.election_elapsed = elapsed;
                }
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term {
            self.stats.msgs_stale_term += 1;
            match m.body {
                // A deposed leader (or one cut off and healed) learns the new term from
                // our answer and steps down (Raft Figure 2: replies carry currentTerm).
                // With PreVote/CheckQuorum it could otherwise keep a follower from ever
                // timing out (etcd). etcd answers only with one of those on, relying on
                // the higher-term member to campaign; a learner never does, so a
                // learner that saw a higher term (a vote request from a member removed
                // while cut off) ignored the leader's appends forever (simulator seed
                // 1796415882901706226). We always answer.
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    self.send(
                        m.from,
                        self.term,
                        MessageBody::AppendResponse { index: 0, reject: false, hint_index: 0, hint_term: 0 },
                    );
                }
                // Answer a stale (pre-)candidate with a rejection at our term, so it
                // learns the term (Raft Figure 2: RequestVote replies carry
                // currentTerm). etcd ignores stale vote requests; then a candidate that
                // nobody else talks to — one that a voter's stale configuration lists
                // as a learner, say — stays behind forever and the cluster cannot elect.
                MessageBody::Vote { pre, .. } => self.reject_vote(m.from, self.term, pre),
                _ => {}
            }
            return;
        }

        if let MessageBody::VoteResponse { reject: true, commit, commit_term, .. } = m.body {
            self.learn_commit(commit, commit_term);
        }
        if m.body.is_response() && !self.tracker.is_member(m.from) {
            self.stats.msgs_from_non_member += 1;
            return;
        }
        if let MessageBody::Vote { pre, last_index, last_term, .. } = m.body {
            self.handle_vote_request(&m, pre, last_index, last_term);
            return;
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::Candidate | Role::PreCandidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    /// §5.2, §5.4.1 and diss. §9.6 (pre-vote).
    fn handle_vote_request(&mut self, m: &Message, pre: bool, last_index: Index, last_term: Term) {
        let can_vote = self.vote == m.from
            // Not voted in this term and no leader known (a leader known at this term
            // means we accepted someone else's election).
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            // A pre-vote for a future term may be granted whatever we did this term.
            || (pre && m.term > self.term);
        if can_vote && self.log.is_up_to_date(last_index, last_term) {
            // The grant carries the request's term, so a pre-candidate can count it.
            self.send(m.from, m.term, MessageBody::VoteResponse { pre, reject: false, commit: 0, commit_term: 0 });
            if !pre {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            self.reject_vote(m.from, self.term, pre);
        }
    }

    /// Refuses a (pre-)vote, telling our commit index and the term of the entry there.
    fn reject_vote(&mut self, to: NodeId, term: Term, pre: bool) {
        let commit = self.log.committed;
        let (commit, commit_term) = match self.log.term(commit) {
            Ok(t) if commit > 0 => (commit, t),
            _ => (0, 0),
        };
        self.send(to, term, MessageBody::VoteResponse { pre, reject: true, commit, commit_term });
    }

    /// A voter that refused us knows entry `commit` (of term `commit_term`) committed.
    /// If that is beyond our log, we cannot win an election (see `hup`).
    /// If our log holds that same entry, Log Matching (§5.3) makes our log identical to
    /// the voter's up to there, so all of it is committed: we may say so, and apply it.
    /// This lets a candidate whose configuration is out of date catch up with a change
    /// that only members which no longer campaign know committed (etcd-io/etcd#12359;
    /// engine/testdata/confchange_liveness.txt). The role stays as it is: the campaign
    /// runs its course, and the next one uses the configuration applied by then.
    fn learn_commit(&mut self, commit: Index, commit_term: Term) {
        self.known_commit = self.known_commit.max(commit);
        if commit > self.log.committed && commit_term > 0 && self.log.term(commit).is_ok_and(|t| t == commit_term) {
            self.log.commit_to(commit);
        }
    }

    fn step_relayed(&mut self, m: Message) {
        match (self.role, m.body) {
            (Role::Leader, MessageBody::Propose { mut entries }) => {
                if self.lead_transferee != NO_NODE {
                    self.stats.proposals_dropped += entries.len() as u64;
                    return;
                }
                // Relayed conf changes obey the same one-at-a-time rule as local ones;
                // offending entries are dropped, the rest proceed.
                let before = entries.len();
                let mut keep = Vec::with_capacity(before);
                for e in entries.drain(..) {
                    if e.kind == EntryKind::Normal || self.check_config_entry(&e).is_ok() {
                        if e.kind == EntryKind::ConfChange {
                            self.pending_conf_index = self.log.last_index() + keep.len() as u64 + 1;
                        }
                        keep.push(e);
                    }
                }
                self.stats.proposals_dropped += (before - keep.len()) as u64;
                if !keep.is_empty() {
                    let n = keep.len() as u64;
                    if self.append_entries(keep, false).is_err() {
                        self.stats.proposals_dropped += n;
                    }
                }
            }
            (Role::Leader, MessageBody::ReadIndex { ctx }) => self.handle_read_request(m.from, ctx),
            (Role::Leader, MessageBody::TransferLeader { target }) => self.transfer_leadership(target),
            // Relayed requests reaching a non-leader are not relayed again: two members
            // with stale ideas of the leader could bounce them forever.
            (_, MessageBody::Propose { entries }) => self.stats.proposals_dropped += entries.len() as u64,
            (_, MessageBody::ReadIndex { .. }) => self.stats.reads_dropped += 1,
            (_, _) => {}
        }
    }

    fn step_leader(&mut self, m: Message) {
        if let Some(pr) = self.tracker.get_mut(m.from) {
            pr.recent_active = true;
            pr.last_heard_tick = self.ticks;
        }
        match m.body {
            MessageBody::AppendResponse { index, reject, hint_index, hint_term } => {
                self.handle_append_response(m.from, index, reject, hint_index, hint_term)
            }
            MessageBody::HeartbeatResponse { ctx } => self.handle_heartbeat_response(m.from, ctx),
            // Two leaders in one term cannot happen (§5.2 Election Safety); a message
            // claiming it is dropped.
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } | MessageBody::Snapshot { .. } => {
                self.stats.msgs_malformed += 1
            }
            _ => {}
        }
    }

    fn handle_append_response(&mut self, from: NodeId, index: Index, reject: bool, hint_index: Index, hint_term: Term) {
        let last = self.log.last_index();
        let first = self.log.first_index();
        if reject {
            // Fast backtracking (etcd): jump to the last index at which the logs can
            // agree given the follower's hint, instead of one entry per round trip.
            let probe =
                if hint_term > 0 { self.log.find_conflict_by_term(hint_index, hint_term).0 } else { hint_index };
            let pr = self.tracker.get_mut(from).expect("member checked in step");
            if pr.maybe_decr_to(index, probe) {
                if pr.state == ProgressState::Replicate {
                    pr.become_probe();
                }
                self.maybe_send_append(from, true);
            }
            return;
        }
        if index > last {
            // A follower cannot hold entries of this term that the leader never had.
            self.stats.msgs_malformed += 1;
            return;
        }
        // An acknowledgement opens the window; what it lets through goes out at the next
        // flush, together with the newest commit index.
        let pr = self.tracker.get_mut(from).expect("member checked in step");
        if !pr.maybe_update(index) {
            return;
        }
        match pr.state {
            ProgressState::Probe => pr.become_replicate(),
            // The follower can continue from our log: the snapshot is no longer needed
            // (or it arrived).
            ProgressState::Snapshot if pr.matched + 1 >= first => {
                pr.become_probe();
                pr.become_replicate();
            }
            ProgressState::Snapshot => {}
            ProgressState::Replicate => pr.inflights.free_le(index),
        }
        let matched = pr.matched;
        self.maybe_commit();
        if from == self.lead_transferee && matched == last {
            self.send_timeout_now(from);
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, ctx: u64) {
        let last = self.log.last_index();
        let pr = self.tracker.get_mut(from).expect("member checked in step");
        pr.probe_sent = false;
        // The peer is alive: let one more append out even if acks were lost (etcd).
        if pr.state == ProgressState::Replicate && pr.inflights.full() {
            pr.inflights.free_first_one();
        }
        let lagging = pr.matched < last;
        if ctx > pr.read_acked {
            pr.read_acked = ctx;
        }
        if lagging {
            self.maybe_send_append(from, true);
        }
        self.process_read_acks();
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { prev_index, prev_term, commit, entries } => {
                self.become_follower(m.term, m.from);
                self.handle_append(m.from, prev_index, prev_term, commit, entries);
            }
            MessageBody::Heartbeat { commit, ctx } => {
                self.become_follower(m.term, m.from);
                self.handle_heartbeat(m.from, commit, ctx);
            }
            MessageBody::Snapshot { snapshot } => {
                self.become_follower(m.term, m.from);
                self.handle_snapshot(m.from, snapshot);
            }
            MessageBody::VoteResponse { pre, reject, .. } if pre == (self.role == Role::PreCandidate) => {
                self.tracker.record_vote(m.from, !reject);
                match self.tracker.vote_result() {
                    VoteResult::Won if self.role == Role::PreCandidate => self.campaign(false),
                    VoteResult::Won => self.become_leader(),
                    VoteResult::Lost => self.become_follower(self.term, NO_NODE),
                    VoteResult::Pending => {}
                }
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::Append { prev_index, prev_term, commit, entries } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_append(m.from, prev_index, prev_term, commit, entries);
            }
            MessageBody::Heartbeat { commit, ctx } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_heartbeat(m.from, commit, ctx);
            }
            MessageBody::Snapshot { snapshot } => {
                self.election_elapsed = 0;
                self.leader = m.from;
                self.handle_snapshot(m.from, snapshot);
            }
            MessageBody::TimeoutNow => {
                // Leadership transfer: campaign at once, skipping PreVote, with the
                // transfer flag so voters bypass their lease (diss. §3.10).
                self.hup(true);
            }
            MessageBody::ReadIndexResponse { ctx, index } if m.from == self.leader => {
                self.read_states.push(ReadState { ctx, index });
            }
            _ => {}
        }
    }

    /// §5.3 receiver side.
    fn handle_append(&mut self, from: NodeId, prev_index: Index, prev_term: Term, commit: Index, entries: Vec<Entry>) {
        if prev_index < self.log.committed {
            // Everything up to our commit index is known to match: say so, and the
            // leader continues from there.
            let committed = self.log.committed;
            self.send(
                from,
                self.term,
                MessageBody::AppendResponse { index: committed, reject: false, hint_index: 0, hint_term: 0 },
            );
            return;
        }
        match self.log.maybe_append(prev_index, prev_term, commit, entries) {
            AppendOutcome::Accepted(last_new) => {
                self.send(
                    from,
                    self.term,
                    MessageBody::AppendResponse { index: last_new, reject: false, hint_index: 0, hint_term: 0 },
                );
            }
            AppendOutcome::Mismatch => {
                // Help the leader skip a whole term of disagreement per round trip.
                let hint = prev_index.min(self.log.last_index());
                let (hint_index, hint_term) = self.log.find_conflict_by_term(hint, prev_term);
                self.send(
                    from,
                    self.term,
                    MessageBody::AppendResponse { index: prev_index, reject: true, hint_index, hint_term },
                );
            }
            AppendOutcome::ConflictsWithCommitted(_) => self.stats.appends_conflicting_with_committed += 1,
        }
    }

    fn handle_heartbeat(&mut self, from: NodeId, commit: Index, ctx: u64) {
        if commit > self.log.committed && !self.log.commit_to(commit) {
            self.stats.commits_beyond_log += 1;
        }
        self.send(from, self.term, MessageBody::HeartbeatResponse { ctx });
    }

    fn handle_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        let index = if self.restore(snapshot) { self.log.last_index() } else { self.log.committed };
        self.send(from, self.term, MessageBody::AppendResponse { index, reject: false, hint_index: 0, hint_term: 0 });
    }

    /// §7: install a snapshot unless the log already covers it.
    fn restore(&mut self, snapshot: Snapshot) -> bool {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        if index <= self.log.committed {
            return false;
        }
        // Unlike etcd, a snapshot whose membership excludes us is installed too: a member
        // removed and re-added is sent the leader's latest snapshot, which may predate
        // the re-addition. It is committed state either way, and the conf change that
        // re-adds us follows it in the log (promotable() keeps us from campaigning
        // until then).
        if self.log.match_term(index, term) {
            // We already hold the entries: fast-forward the commit index instead of
            // throwing the log away.
            self.log.commit_to(index);
            return false;
        }
        let cs = snapshot.meta.conf_state.clone();
        let et = snapshot.meta.election_timeout_ticks;
        self.log.restore(snapshot);
        self.tracker.set_conf(&cs, self.log.last_index() + 1);
        self.adopt_election_timeout(et);
        true
    }

    // ---- commitment --------------------------------------------------------------------

    /// Advances the commit index to what a quorum holds, if it is of this term (§5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let mci = self.tracker.committed();
        if !self.log.maybe_commit(mci, self.term) {
            return false;
        }
        if !self.reads.awaiting_term_commit.is_empty() {
            for (from, ctx) in std::mem::take(&mut self.reads.awaiting_term_commit) {
                self.handle_read_request(from, ctx);
            }
        }
        true
    }

    fn committed_in_current_term(&self) -> bool {
        self.log.term(self.log.committed).is_ok_and(|t| t == self.term)
    }

    /// Caller reports entries up to `last` (and a snapshot) durable.
    pub(crate) fn on_persist(&mut self, last: Option<(Index, Term)>, snap_index: Option<Index>) {
        self.log.stable_to(last, snap_index);
        if self.role == Role::Leader {
            let persisted = self.log.persisted;
            let updated = self.tracker.get_mut(self.id).is_some_and(|pr| pr.maybe_update(persisted));
            if updated {
                self.maybe_commit();
            }
        }
    }

    // ---- proposals ---------------------------------------------------------------------

    /// Assigns term and index and appends to the leader's log.
    fn append_entries(&mut self, mut ents: Vec<Entry>, is_noop: bool) -> Result<(), RequestError> {
        let size: u64 = ents.iter().map(Entry::size_bytes).sum();
        // Always admit a proposal into an empty window, so a single huge entry can
        // still make progress (etcd).
        if !is_noop
            && self.max_uncommitted_bytes > 0
            && self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.max_uncommitted_bytes
        {
            return Err(RequestError::Overloaded);
        }
        if !is_noop {
            self.uncommitted_bytes += size;
        }
        let li = self.log.last_index();
        for (i, e) in ents.iter_mut().enumerate() {
            e.term = self.term;
            e.index = li + 1 + i as u64;
        }
        self.log.append(ents);
        Ok(())
    }

    /// Validates a conf change or election-timeout entry at the leader.
    fn check_config_entry(&self, e: &Entry) -> Result<(), RequestError> {
        match e.kind {
            EntryKind::Normal => Ok(()),
            EntryKind::ConfChange => {
                if self.pending_conf_index > self.log.applied {
                    return Err(RequestError::ConfChangePending);
                }
                let cc = ConfChange::decode(&e.data).ok_or(RequestError::Invalid("malformed conf change"))?;
                let mut cs = self.tracker.conf_state();
                match apply_to_conf_state(&mut cs, cc) {
                    ConfOutcome::Changed => Ok(()),
                    ConfOutcome::Unchanged => Err(RequestError::Invalid("conf change changes nothing")),
                    ConfOutcome::Refused => {
                        Err(RequestError::Invalid("conf change would leave no voter or names an unknown member"))
                    }
                }
            }
            EntryKind::ElectionTimeout => match decode_election_timeout(&e.data) {
                Some(t) if u64::from(t) > self.heartbeat_timeout && t <= ELECTION_TICKS_MAX => Ok(()),
                _ => Err(RequestError::Invalid(
                    "election timeout must exceed the heartbeat interval and be at most 1048576 ticks",
                )),
            },
        }
    }

    pub(crate) fn propose(&mut self, entries: Vec<Entry>) -> Result<(), RequestError> {
        if entries.is_empty() {
            return Err(RequestError::Invalid("empty proposal"));
        }
        match self.role {
            Role::Leader => {
                if self.lead_transferee != NO_NODE {
                    self.stats.proposals_dropped += entries.len() as u64;
                    return Err(RequestError::TransferInProgress);
                }
                let mut conf_at = None;
                for (i, e) in entries.iter().enumerate() {
                    self.check_config_entry(e)?;
                    if e.kind == EntryKind::ConfChange {
                        if conf_at.is_some() {
                            return Err(RequestError::Invalid("at most one conf change per proposal"));
                        }
                        conf_at = Some(i);
                    }
                }
                let li = self.log.last_index();
                self.append_entries(entries, false)?;
                if let Some(i) = conf_at {
                    self.pending_conf_index = li + 1 + i as u64;
                }
                Ok(())
            }
            Role::Follower if self.leader != NO_NODE => {
                if !self.forward_proposals {
                    self.stats.proposals_dropped += entries.len() as u64;
                    return Err(RequestError::ForwardingDisabled);
                }
                for e in &entries {
                    if e.kind != EntryKind::Normal
                        && e.kind != EntryKind::ConfChange
                        && e.kind != EntryKind::ElectionTimeout
                    {
                        return Err(RequestError::Invalid("unknown entry kind"));
                    }
                }
                let leader = self.leader;
                self.send(leader, 0, MessageBody::Propose { entries });
                Ok(())
            }
            _ => {
                self.stats.proposals_dropped += entries.len() as u64;
                Err(RequestError::NoLeader)
            }
        }
    }

    // ---- reads -------------------------------------------------------------------------

    pub(crate) fn read_index(&mut self, ctx: u64) -> Result<(), RequestError> {
        match self.role {
            Role::Leader => {
                self.handle_read_request(self.id, ctx);
                Ok(())
            }
            Role::Follower if self.leader != NO_NODE => {
                if !self.forward_proposals {
                    self.stats.reads_dropped += 1;
                    return Err(RequestError::ForwardingDisabled);
                }
                let leader = self.leader;
                self.send(leader, 0, MessageBody::ReadIndex { ctx });
                Ok(())
            }
            _ => {
                self.stats.reads_dropped += 1;
                Err(RequestError::NoLeader)
            }
        }
    }

    fn respond_read(&mut self, from: NodeId, ctx: u64, index: Index) {
        if from == self.id {
            self.read_states.push(ReadState { ctx, index });
        } else {
            self.send(from, self.term, MessageBody::ReadIndexResponse { ctx, index });
        }
    }

    fn lease_valid(&self) -> bool {
        if self.read_mode != ReadMode::Lease || self.lease_void || self.lead_transferee != NO_NODE {
            return false;
        }
        let margin = (self.election_timeout * LEASE_DRIFT_MARGIN_PERCENT).div_ceil(100);
        self.reads.lease_start.is_some_and(|s| self.ticks < s + self.election_timeout - margin)
    }

    fn handle_read_request(&mut self, from: NodeId, ctx: u64) {
        debug_assert!(self.role == Role::Leader);
        if !self.committed_in_current_term() {
            // Diss. §6.4 step 1: until an entry of its term commits, a new leader does
            // not know the commit index of its predecessor.
            self.reads.awaiting_term_commit.push((from, ctx));
            return;
        }
        let lone_voter = self.tracker.voters.len() == 1 && self.tracker.is_voter(self.id);
        if lone_voter || self.lease_valid() {
            let index = self.log.committed;
            self.respond_read(from, ctx, index);
            return;
        }
        self.reads.queued.push((from, ctx));
    }

    /// Sends what accumulated since the last Ready: one heartbeat round for all queued
    /// reads, and to every follower the new entries its window allows, or the commit
    /// index if it lacks it. Appends go out here, once per Ready, rather than per
    /// proposal or acknowledgement, so everything since the last Ready shares one
    /// message per follower.
    pub(crate) fn flush(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if !self.reads.queued.is_empty() {
            self.bcast_heartbeat();
        }
        if self.wants_append() {
            self.bcast_append();
        }
    }

    /// Whether some follower can be sent entries, or lacks the commit index.
    fn wants_append(&self) -> bool {
        let (last, committed) = (self.log.last_index(), self.log.committed);
        self.tracker
            .progress
            .iter()
            .any(|(id, pr)| *id != self.id && !pr.is_paused() && (pr.next <= last || pr.sent_commit < committed))
    }

    /// Whether `flush` would send anything.
    pub(crate) fn has_pending_flush(&self) -> bool {
        self.role == Role::Leader && (!self.reads.queued.is_empty() || self.wants_append())
    }

    fn process_read_acks(&mut self) {
        if self.reads.rounds.is_empty() {
            return;
        }
        let acked = self.tracker.read_quorum_acked(self.id, self.reads.seq);
        while self.reads.rounds.front().is_some_and(|r| r.seq <= acked) {
            let round = self.reads.rounds.pop_front().expect("checked");
            self.reads.lease_start = Some(self.reads.lease_start.map_or(round.sent_tick, |s| s.max(round.sent_tick)));
            for (from, ctx) in round.requests {
                self.respond_read(from, ctx, round.index);
            }
        }
    }

    // ---- leadership transfer -------------------------------------------------------

    pub(crate) fn transfer_leadership(&mut self, target: NodeId) {
        if self.role != Role::Leader {
            if self.role == Role::Follower && self.leader != NO_NODE && self.forward_proposals {
                let leader = self.leader;
                self.send(leader, 0, MessageBody::TransferLeader { target });
            }
            return;
        }
        if target == self.id || !self.tracker.is_voter(target) {
            return;
        }
        if self.lead_transferee == target {
            return;
        }
        // A new target replaces the old one; the transfer must finish within one
        // election timeout.
        self.lead_transferee = target;
        self.election_elapsed = 0;
        let caught_up = self.tracker.get(target).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(target);
        } else {
            self.maybe_send_append(target, true);
        }
    }

    fn send_timeout_now(&mut self, to: NodeId) {
        self.lease_void = true;
        self.send(to, self.term, MessageBody::TimeoutNow);
    }

    // ---- reports from the caller -----------------------------------------------------

    pub(crate) fn report_unreachable(&mut self, id: NodeId) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.tracker.get_mut(id) {
            // Appends in flight are likely lost: fall back to probing (etcd).
            if pr.state == ProgressState::Replicate {
                pr.become_probe();
            }
        }
    }

    pub(crate) fn report_snapshot(&mut self, id: NodeId, success: bool) {
        if self.role != Role::Leader {
            return;
        }
        if let Some(pr) = self.tracker.get_mut(id) {
            if pr.state != ProgressState::Snapshot {
                return;
            }
            if !success {
                pr.pending_snapshot = 0;
            }
            pr.become_probe();
            // Wait for an answer (or a heartbeat response) before the next append.
            pr.probe_sent = true;
        }
    }

    // ---- applying ------------------------------------------------------------------------

    /// Applies a committed membership change. A change that would leave no voter or
    /// names an unknown member is ignored (deterministically, on every member) and
    /// counted; one that changes nothing is simply nothing.
    pub(crate) fn apply_conf_change(&mut self, cc: ConfChange) -> ConfState {
        let mut cs = self.tracker.conf_state();
        match apply_to_conf_state(&mut cs, cc) {
            ConfOutcome::Changed => {}
            ConfOutcome::Unchanged => return cs,
            ConfOutcome::Refused => {
                self.stats.conf_changes_invalid += 1;
                return cs;
            }
        }
        let next = self.log.last_index() + 1;
        let before: Vec<NodeId> = self.tracker.progress.iter().map(|(id, _)| *id).collect();
        self.tracker.set_conf(&cs, next);
        if matches!(self.role, Role::Candidate | Role::PreCandidate) && !self.tracker.is_voter(self.id) {
            // A campaigner that learned of its own removal or demotion mid-campaign
            // (`learn_commit`) gives up; the term and its vote stay as they are.
            self.become_follower(self.term, NO_NODE);
            return cs;
        }
        if self.role == Role::Leader {
            if !self.tracker.is_voter(self.id) {
                // Removed or demoted: hand over by stepping down; a voter will time out
                // and take over (CheckQuorum keeps the rest safe).
                self.become_follower(self.term, NO_NODE);
                return cs;
            }
            if self.lead_transferee != NO_NODE && !self.tracker.is_voter(self.lead_transferee) {
                self.lead_transferee = NO_NODE;
            }
            // A smaller quorum may commit more at once.
            self.maybe_commit();
            let added: Vec<NodeId> =
                self.tracker.progress.iter().map(|(id, _)| *id).filter(|id| !before.contains(id)).collect();
            for id in added {
                if let Some(pr) = self.tracker.get_mut(id) {
                    pr.recent_active = true;
                }
                self.maybe_send_append(id, true);
            }
        }
        cs
    }

    /// Adopts a cluster-wide election timeout (from a snapshot or an applied entry).
    pub(crate) fn adopt_election_timeout(&mut self, ticks: u32) {
        if ticks == 0 || u64::from(ticks) <= self.heartbeat_timeout {
            return;
        }
        self.election_timeout_from_log = ticks;
        self.election_timeout = u64::from(ticks);
        self.reset_randomized_election_timeout();
        // A lease computed with the old timeout must not outlive the change.
        self.reads.lease_start = None;
    }

    /// Bookkeeping once the caller has applied a batch summarised by
    /// [`AppliedSummary::of`].
    pub(crate) fn applied_entries(&mut self, summary: &AppliedSummary) {
        if let Some(t) = summary.election_timeout {
            self.adopt_election_timeout(t);
        }
        if self.role == Role::Leader {
            self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(summary.bytes);
        }
    }

    pub(crate) fn config_election_ticks(&self) -> u64 {
        self.config_election_ticks
    }

    pub(crate) fn randomized_election_timeout(&self) -> u64 {
        self.randomized_election_timeout
    }

    pub(crate) fn pending_reads(&self) -> u64 {
        self.reads.pending()
    }
}

/// What applying a batch of committed entries changes in the engine; computed when the
/// batch is handed out, so the caller may move the entries out of the Ready.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct AppliedSummary {
    bytes: u64,
    election_timeout: Option<u32>,
}

impl AppliedSummary {
    pub(crate) fn of(ents: &[Entry]) -> AppliedSummary {
        let mut s = AppliedSummary::default();
        for e in ents {
            s.bytes += e.size_bytes();
            if e.kind == EntryKind::ElectionTimeout
                && let Some(t) = decode_election_timeout(&e.data)
            {
                s.election_timeout = Some(t);
            }
        }
        s
    }
}

/// What applying a conf change to a membership does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConfOutcome {
    Changed,
    /// The membership already is what the change asks for (re-applying a bootstrap
    /// entry, adding a voter twice): nothing to do, nothing wrong.
    Unchanged,
    /// The change would leave the cluster without a voter, or removes an unknown
    /// member: refused.
    Refused,
}

/// Applies `cc` to `cs`, leaving it unchanged unless the outcome is `Changed`.
pub(crate) fn apply_to_conf_state(cs: &mut ConfState, cc: ConfChange) -> ConfOutcome {
    let (id, change) = match cc {
        ConfChange::Bootstrap(ids) => {
            return if cs.voters.is_empty() && cs.learners.is_empty() {
                cs.voters = ids;
                ConfOutcome::Changed
            } else if cs.voters == ids && cs.learners.is_empty() {
                // `bootstrap` applies it at once; the committed entry comes back later.
                ConfOutcome::Unchanged
            } else {
                ConfOutcome::Refused
            };
        }
        ConfChange::AddVoter(id) => (id, Single::AddVoter),
        ConfChange::AddLearner(id) => (id, Single::AddLearner),
        ConfChange::RemoveNode(id) => (id, Single::Remove),
    };
    let is_voter = cs.voters.binary_search(&id);
    let is_learner = cs.learners.binary_search(&id);
    match change {
        Single::AddVoter => {
            let Err(pos) = is_voter else { return ConfOutcome::Unchanged };
            cs.voters.insert(pos, id);
            if let Ok(l) = is_learner {
                cs.learners.remove(l);
            }
        }
        Single::AddLearner => {
            let Err(pos) = is_learner else { return ConfOutcome::Unchanged };
            if let Ok(v) = is_voter {
                // Demotion: allowed as long as a voter remains.
                if cs.voters.len() == 1 {
                    return ConfOutcome::Refused;
                }
                cs.voters.remove(v);
            }
            cs.learners.insert(pos, id);
        }
        Single::Remove => match (is_voter, is_learner) {
            (Ok(_), _) if cs.voters.len() == 1 => return ConfOutcome::Refused,
            (Ok(v), _) => {
                cs.voters.remove(v);
            }
            (_, Ok(l)) => {
                cs.learners.remove(l);
            }
            _ => return ConfOutcome::Refused,
        },
    }
    ConfOutcome::Changed
}

/// The kinds of single-server change.
enum Single {
    AddVoter,
    AddLearner,
    Remove,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_state_changes() {
        use ConfOutcome::*;
        let mut cs = ConfState::with_voters([1, 2]);
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::AddLearner(3)), Changed);
        assert_eq!(cs.learners, vec![3]);
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::AddVoter(3)), Changed, "promotion");
        assert_eq!((cs.voters.clone(), cs.learners.clone()), (vec![1, 2, 3], vec![]));
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::AddVoter(3)), Unchanged, "already a voter");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::AddLearner(2)), Changed, "demotion");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::AddLearner(2)), Unchanged, "already a learner");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::RemoveNode(1)), Changed);
        assert_eq!(cs.voters, vec![3]);
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::RemoveNode(3)), Refused, "last voter stays");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::AddLearner(3)), Refused, "last voter cannot be demoted");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::RemoveNode(9)), Refused, "unknown node");
        assert_eq!(cs.voters, vec![3]);
        assert!(cs.is_well_formed());
    }

    #[test]
    fn bootstrap_applies_to_an_empty_membership_only() {
        use ConfOutcome::*;
        let mut cs = ConfState::default();
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::Bootstrap(vec![1, 2, 3])), Changed);
        assert_eq!(cs.voters, vec![1, 2, 3]);
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::Bootstrap(vec![1, 2, 3])), Unchanged, "re-applied");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::Bootstrap(vec![4])), Refused, "a second founding");
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::RemoveNode(3)), Changed);
        assert_eq!(apply_to_conf_state(&mut cs, ConfChange::Bootstrap(vec![1, 2, 3])), Refused, "history moved on");
        assert_eq!(cs.voters, vec![1, 2]);
    }
}
