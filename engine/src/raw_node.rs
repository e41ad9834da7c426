//! [`RawNode`]: the synchronous interface the caller drives, and [`Ready`], the batch of
//! work it hands back (etcd's `RawNode`/`Ready`, raft-rs's asynchronous persistence).
//!
//! The durability rule lives here: messages that vouch for local state (votes, append
//! responses — anything a non-leader sends while a write is pending) travel in
//! [`Ready::persisted_messages`] and may leave only once that state is durable
//! (diss. §3.8; etcd's "messages after append"). With [`RawNode::advance_async`] the
//! engine keeps them itself until [`RawNode::on_persist_ready`] says the write landed.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::config::Config;
use crate::progress::ProgressState;
use crate::raft::{AppliedSummary, Error, Raft, RequestError, Stats};
use crate::storage::Storage;
use crate::types::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Index, Message, NO_NODE, NodeId, ReadState, Role, Snapshot,
    SoftState, Term, encode_election_timeout,
};

/// Work for the caller: persist, send, apply — then [`RawNode::advance`] (or
/// [`RawNode::advance_async`]).
#[derive(Debug, Default)]
pub struct Ready {
    number: u64,
    /// Leader or role changed (volatile; for logging and metrics).
    pub soft_state: Option<SoftState>,
    /// Term, vote or commit changed: persist it with `entries`. Also present, changed or
    /// not, when `entries` hold a membership change: it must then become durable no
    /// later than those entries (in the same all-or-nothing write, or before it).
    pub hard_state: Option<HardState>,
    /// Entries to append to stable storage. Their first index may be at or below the
    /// current last index: the log is then truncated there first (§5.3).
    pub entries: Vec<Entry>,
    /// A snapshot to persist and install in the state machine before any committed
    /// entry that follows it.
    pub snapshot: Option<Snapshot>,
    /// Whether the write must be followed by an fdatasync before `persisted_messages`
    /// leave and before the write is reported durable (true when entries, a snapshot, or
    /// a new term or vote are written; a commit-index change alone may stay buffered).
    pub must_sync: bool,
    /// Committed, locally durable entries to apply, in order.
    pub committed_entries: Vec<Entry>,
    /// Messages that may be sent at once, in parallel with the write (the leader's
    /// appends, diss. §10.2.1; anything released by an earlier write becoming durable).
    pub messages: Vec<Message>,
    /// Messages to send only after this Ready's write is durable (synchronous path).
    /// With [`RawNode::advance_async`], leave them in place: the engine keeps them and
    /// releases them through a later Ready's `messages`.
    pub persisted_messages: Vec<Message>,
    /// Reads that may be served once the state machine has applied `index`.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    /// This Ready's sequence number, for [`RawNode::on_persist_ready`].
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Whether this Ready has anything that must be made durable (and, on the
    /// asynchronous path, reported with [`RawNode::on_persist_ready`]): entries, a
    /// snapshot, or a new term or vote. A Ready whose only change is the commit index
    /// has none: writing its hard state is optional — a commit index that lags on disk is
    /// safe, the leader tells it again — so a caller may skip that write and record the
    /// latest hard state with its next one (one disk write per batch instead of two).
    pub fn has_write(&self) -> bool {
        self.must_sync
    }
}

/// A write handed to storage and not yet reported durable.
#[derive(Debug)]
struct PendingWrite {
    number: u64,
    last: Option<(Index, Term)>,
    snapshot_index: Option<Index>,
    has_write: bool,
    messages: Vec<Message>,
}

/// What a Ready contained, recorded when it was handed out.
#[derive(Debug)]
struct Handed {
    number: u64,
    last: Option<(Index, Term)>,
    snapshot_index: Option<Index>,
    has_write: bool,
    /// Last committed entry handed out for application.
    applied_to: Option<Index>,
    applied: AppliedSummary,
}

/// Per-peer replication state, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: NodeId,
    pub is_learner: bool,
    pub matched: Index,
    pub next: Index,
    pub state: ProgressState,
    pub inflight_msgs: usize,
    pub inflight_bytes: u64,
    /// Heard from within the current CheckQuorum period.
    pub recent_active: bool,
    /// Whether appends to it are paused (probe outstanding, window full, snapshot).
    pub paused: bool,
    /// Ticks since the leader last heard from it.
    pub ticks_since_heard: u64,
}

/// Everything an admin `/status` page shows about one group member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub vote: NodeId,
    pub leader: NodeId,
    pub commit: Index,
    pub applied: Index,
    pub persisted: Index,
    pub first_index: Index,
    pub last_index: Index,
    /// Target of a leadership transfer in progress (0: none).
    pub lead_transferee: NodeId,
    /// Election timeout in force (from the log, or the local configuration).
    pub election_timeout_ticks: u64,
    pub conf_state: ConfState,
    /// Reads received and not yet answered.
    pub pending_reads: u64,
    /// Per-peer progress (leaders only; empty otherwise).
    pub progress: Vec<PeerProgress>,
    pub stats: Stats,
}

/// The engine's interface: a Raft group member driven by the caller's loop.
///
/// Every method of etcd's `Node` has a counterpart here; see the crate documentation
/// for the caller's obligations, in order.
#[derive(Debug)]
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    /// Hard state last handed out in a Ready.
    prev_hard: HardState,
    ready_number: u64,
    /// The Ready that is out and not yet advanced, as recorded when it was handed out:
    /// the caller is free to move entries and messages out of it.
    outstanding: Option<Handed>,
    pending: VecDeque<PendingWrite>,
    /// Messages whose write became durable, to go out with the next Ready.
    released: Vec<Message>,
}

impl<S: Storage> RawNode<S> {
    /// Restarts (or starts empty) from whatever `store` holds: hard state, membership
    /// from its snapshot, and the log. A member with empty storage and no membership
    /// waits to be contacted by a leader (joining an existing cluster).
    pub fn new(cfg: &Config, store: S) -> Result<RawNode<S>, Error> {
        let raft = Raft::new(cfg, store)?;
        let prev_hard = raft.hard_state();
        let prev_soft = raft.soft_state();
        Ok(RawNode {
            raft,
            prev_soft,
            prev_hard,
            ready_number: 0,
            outstanding: None,
            pending: VecDeque::new(),
            released: Vec::new(),
        })
    }

    /// Bootstraps a new cluster whose initial voters are `voters` (etcd `StartNode`):
    /// the log starts with one committed [`ConfChange::Bootstrap`] entry naming every
    /// voter, at index 1 and term 1, so every founding member writes the same first
    /// entry. `store` must be empty.
    pub fn bootstrap(cfg: &Config, store: S, voters: &[NodeId]) -> Result<RawNode<S>, Error> {
        let rs = store.initial_state().map_err(Error::Storage)?;
        if store.last_index() != 0 || !rs.hard_state.is_empty() || !rs.conf_state.voters.is_empty() {
            return Err(Error::AlreadyBootstrapped);
        }
        let mut ids = voters.to_vec();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() || ids.contains(&NO_NODE) {
            return Err(Error::Corrupt("bootstrap needs at least one non-zero voter id".into()));
        }
        let mut node = RawNode::new(cfg, store)?;
        let r = &mut node.raft;
        r.become_follower(1, NO_NODE);
        // The whole founding membership in one entry (see `ConfChange::Bootstrap`).
        let cc = ConfChange::Bootstrap(ids);
        r.log.append(vec![Entry { term: 1, index: 1, kind: EntryKind::ConfChange, data: cc.encode() }]);
        r.log.commit_to(1);
        // Membership is known at once; applying the entry again later is a no-op.
        r.apply_conf_change(cc);
        Ok(node)
    }

    /// Advances logical time by one tick. The caller ticks at a fixed interval and, in
    /// lease-read mode, must tick once per elapsed interval even after a stall.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Starts an election now (etcd `Campaign`), with PreVote if configured.
    pub fn campaign(&mut self) {
        self.raft.hup(false);
    }

    /// Proposes application data. A follower relays it to the leader (unless
    /// forwarding is disabled). `Ok` means accepted for replication, not committed.
    pub fn propose(&mut self, data: Bytes) -> Result<(), RequestError> {
        self.raft.propose(vec![Entry::new(data)])
    }

    /// Proposes a batch of entries in one call (the group-commit path). Their kind is
    /// kept; term and index are assigned by the leader.
    pub fn propose_batch(&mut self, entries: Vec<Entry>) -> Result<(), RequestError> {
        self.raft.propose(entries)
    }

    /// Proposes a single-server membership change. One at a time: another is refused
    /// until this one has been applied.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(), RequestError> {
        self.raft.propose(vec![Entry { term: 0, index: 0, kind: EntryKind::ConfChange, data: cc.encode() }])
    }

    /// Proposes a new cluster-wide election timeout (OVS `change-election-timer`):
    /// every member adopts it when the entry is applied.
    pub fn propose_election_timeout(&mut self, ticks: u32) -> Result<(), RequestError> {
        self.raft.propose(vec![Entry {
            term: 0,
            index: 0,
            kind: EntryKind::ElectionTimeout,
            data: encode_election_timeout(ticks),
        }])
    }

    /// Feeds a message from a peer. Invalid or stale messages are dropped and counted
    /// in [`Status::stats`]; nothing a peer sends can make this panic.
    pub fn step(&mut self, m: Message) {
        self.raft.step(m);
    }

    /// Applies a committed conf change (call it while applying the entry). Returns the
    /// membership now in force.
    pub fn apply_conf_change(&mut self, cc: ConfChange) -> ConfState {
        self.raft.apply_conf_change(cc)
    }

    /// Asks the leader to hand leadership to `target` (etcd `TransferLeadership`); a
    /// follower relays the request. Abandoned if it does not finish within an election
    /// timeout; proposals are refused meanwhile.
    pub fn transfer_leadership(&mut self, target: NodeId) {
        self.raft.transfer_leadership(target);
    }

    /// Requests a linearizable read. The answer arrives as a [`ReadState`] with the same
    /// `ctx` in a later Ready; serve the read once `index` is applied.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), RequestError> {
        self.raft.read_index(ctx)
    }

    /// Tells the leader that the last message to `id` probably did not arrive.
    pub fn report_unreachable(&mut self, id: NodeId) {
        self.raft.report_unreachable(id);
    }

    /// Tells the leader whether sending a snapshot to `id` succeeded.
    pub fn report_snapshot(&mut self, id: NodeId, success: bool) {
        self.raft.report_snapshot(id, success);
    }

    /// Whether [`RawNode::ready`] has anything to hand out.
    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        !self.released.is_empty()
            || !r.msgs.is_empty()
            || !r.read_states.is_empty()
            || r.has_pending_flush()
            || r.log.has_next_unstable()
            || r.log.has_next_committed()
            || r.hard_state() != self.prev_hard
            || r.soft_state() != self.prev_soft
    }

    /// Collects the work accumulated since the last Ready.
    ///
    /// # Panics
    /// If the previous Ready has not been advanced.
    pub fn ready(&mut self) -> Ready {
        assert!(self.outstanding.is_none(), "ready() called before advancing Ready {}", self.ready_number);
        let r = &mut self.raft;
        r.flush();
        self.ready_number += 1;
        let entries = r.log.next_unstable_entries().to_vec();
        let snapshot = r.log.next_unstable_snapshot().cloned();
        let hs = r.hard_state();
        // A membership change goes to disk only with a commit index that covers every
        // earlier one (the leader appends a change only after applying the previous
        // one; a follower learns that commit index from the message that carries the
        // change). Otherwise a member could restart knowing the new change but not that
        // the previous one committed, activate a configuration two changes old, and
        // win an election with a quorum disjoint from the current one's (etcd-io/etcd#7625,
        // invariant "Append"). So the hard state is always part of such a write, even
        // when unchanged since the last Ready: that Ready's write may have been skipped.
        let carries_conf_change = entries.iter().any(|e| e.kind == EntryKind::ConfChange);
        let hard_state = (hs != self.prev_hard || carries_conf_change).then_some(hs);
        let must_sync = !entries.is_empty()
            || snapshot.is_some()
            || hs.term != self.prev_hard.term
            || hs.vote != self.prev_hard.vote;
        let mut committed_entries = Vec::new();
        if r.log.has_next_committed() {
            r.log.next_committed(r.max_committed_bytes_per_ready, &mut committed_entries);
        }
        let soft = r.soft_state();
        let soft_state = (soft != self.prev_soft).then_some(soft);
        let mut rd = Ready {
            number: self.ready_number,
            soft_state,
            hard_state,
            entries,
            snapshot,
            must_sync,
            committed_entries,
            messages: std::mem::take(&mut self.released),
            persisted_messages: Vec::new(),
            read_states: std::mem::take(&mut r.read_states),
        };
        let msgs = std::mem::take(&mut r.msgs);
        // The leader's messages vouch for nothing it has not already made durable
        // (§10.2.1). Anyone else's wait for the write — unless there is no write at all
        // and none outstanding, when there is nothing to wait for.
        if r.role == Role::Leader || (!rd.has_write() && self.pending.is_empty()) {
            rd.messages.extend(msgs);
        } else {
            rd.persisted_messages = msgs;
        }
        r.log.accept_unstable();
        self.prev_hard = hs;
        self.prev_soft = soft;
        self.outstanding = Some(Handed {
            number: rd.number,
            last: rd.entries.last().map(|e| (e.index, e.term)),
            snapshot_index: rd.snapshot.as_ref().map(|s| s.meta.index),
            has_write: rd.has_write(),
            applied_to: rd.committed_entries.last().map(|e| e.index),
            applied: AppliedSummary::of(&rd.committed_entries),
        });
        rd
    }

    fn take_back(&mut self, rd: &mut Ready) -> PendingWrite {
        let h = self.outstanding.take().expect("advance without an outstanding Ready");
        assert!(h.number == rd.number, "advance of Ready {} but the outstanding Ready is {}", rd.number, h.number);
        let r = &mut self.raft;
        if let Some(index) = h.snapshot_index {
            r.log.applied_to(index);
        }
        if let Some(index) = h.applied_to {
            r.log.applied_to(index);
            r.applied_entries(&h.applied);
        }
        PendingWrite {
            number: h.number,
            last: h.last,
            snapshot_index: h.snapshot_index,
            has_write: h.has_write,
            messages: std::mem::take(&mut rd.persisted_messages),
        }
    }

    /// Synchronous path: the caller has made `rd`'s writes durable, sent
    /// `persisted_messages` (any it left in place go out with the next Ready), and
    /// applied `committed_entries` and `snapshot`.
    pub fn advance(&mut self, mut rd: Ready) {
        let number = rd.number;
        let w = self.take_back(&mut rd);
        self.pending.push_back(w);
        self.on_persist_ready(number);
    }

    /// Asynchronous path: the caller has *submitted* `rd`'s writes (not necessarily
    /// durable yet), sent `messages`, and applied `committed_entries` and `snapshot`.
    /// It must not send `persisted_messages`: the engine keeps them until
    /// [`RawNode::on_persist_ready`] reports the write durable.
    pub fn advance_async(&mut self, mut rd: Ready) {
        let w = self.take_back(&mut rd);
        if w.has_write || !self.pending.is_empty() {
            self.pending.push_back(w);
        } else {
            self.released.extend(w.messages);
        }
    }

    /// Reports that the writes of every Ready up to and including `number` are durable
    /// (reports are cumulative and must come in order). Releases the messages that
    /// waited for them and lets the leader count its own copy towards commitment.
    pub fn on_persist_ready(&mut self, number: u64) {
        while let Some(front) = self.pending.front() {
            if front.number > number && front.has_write {
                break;
            }
            let w = self.pending.pop_front().expect("checked");
            self.raft.on_persist(w.last, w.snapshot_index);
            self.released.extend(w.messages);
        }
    }

    /// The member's state, for status pages and tests.
    pub fn status(&self) -> Status {
        let r = &self.raft;
        let progress = if r.role == Role::Leader {
            r.tracker
                .progress
                .iter()
                .map(|(id, pr)| PeerProgress {
                    id: *id,
                    is_learner: pr.is_learner,
                    matched: pr.matched,
                    next: pr.next,
                    state: pr.state,
                    inflight_msgs: pr.inflights.count(),
                    inflight_bytes: pr.inflights.bytes(),
                    recent_active: pr.recent_active,
                    paused: pr.is_paused(),
                    ticks_since_heard: if *id == r.id { 0 } else { r.ticks - pr.last_heard_tick },
                })
                .collect()
        } else {
            Vec::new()
        };
        Status {
            id: r.id,
            role: r.role,
            term: r.term,
            vote: r.vote,
            leader: r.leader,
            commit: r.log.committed,
            applied: r.log.applied,
            persisted: r.log.persisted,
            first_index: r.log.first_index(),
            last_index: r.log.last_index(),
            lead_transferee: r.lead_transferee,
            election_timeout_ticks: r.election_timeout,
            conf_state: r.tracker.conf_state(),
            pending_reads: r.pending_reads(),
            progress,
            stats: r.stats,
        }
    }

    /// The membership in force (as of the last applied conf change or snapshot).
    pub fn conf_state(&self) -> ConfState {
        self.raft.tracker.conf_state()
    }

    /// Election timeout adopted through the log (0: none). Record it in snapshots.
    pub fn election_timeout_from_log(&self) -> u32 {
        self.raft.election_timeout_from_log
    }

    /// The configured (local) election timeout in ticks.
    pub fn config_election_ticks(&self) -> u64 {
        self.raft.config_election_ticks()
    }

    /// The current randomized election timeout (tests and diagnostics).
    pub fn randomized_election_timeout(&self) -> u64 {
        self.raft.randomized_election_timeout()
    }

    /// Counters of ignored and refused input.
    pub fn stats(&self) -> Stats {
        self.raft.stats
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.raft.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.raft.role
    }

    /// Current leader (0: unknown).
    pub fn leader(&self) -> NodeId {
        self.raft.leader
    }

    /// Current term.
    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// Entries `[lo, hi)` of the log as this member holds it (durable entries plus those
    /// not yet reported durable), at most `max_bytes` (but at least one entry).
    pub fn log_entries(&self, lo: Index, hi: Index, max_bytes: u64) -> Result<Vec<Entry>, crate::StorageError> {
        let mut out = Vec::new();
        self.raft.log.slice(lo, hi, max_bytes, &mut out)?;
        Ok(out)
    }

    /// Term of the entry at `index` in this member's log.
    pub fn log_term(&self, index: Index) -> Result<Term, crate::StorageError> {
        self.raft.log.term(index)
    }

    /// Highest index known committed.
    pub fn commit_index(&self) -> Index {
        self.raft.log.committed
    }

    /// Highest index handed out for application and advanced.
    pub fn applied_index(&self) -> Index {
        self.raft.log.applied
    }

    /// Index of the last entry in this member's log.
    pub fn last_index(&self) -> Index {
        self.raft.log.last_index()
    }

    /// Index of the first entry still held (after the last compaction).
    pub fn first_index(&self) -> Index {
        self.raft.log.first_index()
    }

    /// The storage, for reading.
    pub fn storage(&self) -> &S {
        &self.raft.log.store
    }

    /// The storage, for the caller's writes (appending durable entries, installing
    /// snapshots, compacting).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }
}
