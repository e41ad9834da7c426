//! The seeded simulator: 3 or 5 engine instances over a simulated network that drops,
//! duplicates, delays, reorders and partitions messages, with crashes that lose every
//! write not yet reported durable (or keep only a prefix of them), restarts, membership
//! changes, leadership transfers, election-timeout changes, compaction and snapshots,
//! ReadIndex and lease reads — all driven by one seed.
//!
//! After every step it checks Election Safety, State Machine Safety (and with it Log
//! Matching of committed entries), Leader Completeness on every new leader, Log
//! Matching of uncommitted suffixes, and that every read is served at an index no lower
//! than any commit index known when it was requested. After healing it checks liveness:
//! a leader within a bounded number of ticks, and fresh proposals applied on every
//! member with identical state machines.
//!
//! A failure names the seed: `SEED=N cargo test -p skiff-engine --test it sim::seed_from_env`.
//! A long random sweep: `SIM_SWEEP_SECS=600 cargo test --release -p skiff-engine --test it
//! sim::sweep -- --ignored --nocapture`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};
use skiff_engine::{
    ConfChange, Config, Entry, EntryKind, HardState, MemStorage, Message, MessageBody, NodeId, RawNode, ReadMode, Role,
    Snapshot, Storage, StorageError,
};

/// The simulator's own generator (SplitMix64), so that the schedule is a pure
/// function of the seed.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn per_mille(&mut self, p: u32) -> bool {
        self.below(1000) < u64::from(p)
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() { None } else { Some(v[self.below(v.len() as u64) as usize]) }
    }
}

/// What a run varies; [`Options::from_seed`] derives a different mix per seed.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub nodes: usize,
    /// Steps of the fault phase.
    pub steps: u64,
    pub steps_per_tick: u64,
    pub drop_per_mille: u32,
    pub dup_per_mille: u32,
    pub max_delay_steps: u64,
    pub crash_per_mille: u32,
    pub partition_per_mille: u32,
    pub propose_per_mille: u32,
    pub read_per_mille: u32,
    pub conf_change_per_mille: u32,
    pub transfer_per_mille: u32,
    pub compact_per_mille: u32,
    pub timeout_change_per_mille: u32,
    /// Crashes may keep a prefix of the writes not yet reported durable.
    pub keep_unreported_writes: bool,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub read_mode: ReadMode,
    /// Which members persist asynchronously (the rest use the synchronous path).
    pub async_mask: u32,
    pub max_write_delay_steps: u64,
    /// Entries a member's storage keeps below each snapshot it takes, so that a
    /// follower slightly behind catches up from the log (0: compact to the snapshot).
    pub catchup_entries: u64,
}

impl Options {
    pub fn from_seed(seed: u64) -> Options {
        let mut r = Rng(seed ^ 0x5EED_5EED);
        let check_quorum = r.below(4) != 0;
        Options {
            seed,
            nodes: if r.below(2) == 0 { 3 } else { 5 },
            steps: 2500,
            steps_per_tick: 5,
            drop_per_mille: r.below(150) as u32,
            dup_per_mille: r.below(50) as u32,
            max_delay_steps: 1 + r.below(15),
            crash_per_mille: r.below(6) as u32,
            partition_per_mille: r.below(8) as u32,
            propose_per_mille: 100 + r.below(300) as u32,
            read_per_mille: r.below(60) as u32,
            conf_change_per_mille: r.below(5) as u32,
            transfer_per_mille: r.below(5) as u32,
            compact_per_mille: r.below(10) as u32,
            timeout_change_per_mille: r.below(2) as u32,
            keep_unreported_writes: r.below(2) == 0,
            pre_vote: r.below(4) != 0,
            check_quorum,
            read_mode: if check_quorum && r.below(3) == 0 { ReadMode::Lease } else { ReadMode::Safe },
            async_mask: r.next() as u32,
            max_write_delay_steps: r.below(12),
            // Drawn last, so that the draws above (and so the runs of seeds recorded
            // before this option existed) are unchanged when it is 0.
            catchup_entries: [0, 0, 3, 40][r.below(4) as usize],
        }
    }
}

/// What a run observed, for reporting and for tests that want coverage evidence.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub leaders_elected: u64,
    pub entries_committed: u64,
    pub crashes: u64,
    pub snapshots_applied: u64,
    pub reads_served: u64,
    pub conf_changes_applied: u64,
    pub transfers_requested: u64,
}

struct PendingWrite {
    number: u64,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
    done_at: u64,
}

struct SimNode {
    id: NodeId,
    cfg: Config,
    raw: Option<RawNode<MemStorage>>,
    /// The disk of a crashed member.
    disk: Option<MemStorage>,
    async_writes: bool,
    pending: VecDeque<PendingWrite>,
    /// Applied normal entries (index, term, data): the state machine.
    sm: Vec<(u64, u64, Bytes)>,
    down_until: u64,
    /// Reads requested: ctx -> highest commit index known anywhere at request time.
    reads: BTreeMap<u64, u64>,
    next_ctx: u64,
    last_applied: u64,
}

struct Sim {
    opts: Options,
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    net: BTreeMap<(u64, u64), Message>,
    net_seq: u64,
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Election Safety: the leader of each term.
    leaders: BTreeMap<u64, NodeId>,
    /// State Machine Safety: the entry applied at each index, anywhere.
    applied: BTreeMap<u64, (u64, Bytes)>,
    proposal_seq: u64,
    faults: bool,
    debug: bool,
    /// SIM_TRACE_FROM=STEP: print every delivered message from that step on.
    trace_from: Option<u64>,
    report: Report,
}

fn encode_sm(sm: &[(u64, u64, Bytes)]) -> Bytes {
    let mut b = BytesMut::new();
    for (i, t, d) in sm {
        b.put_u64_le(*i);
        b.put_u64_le(*t);
        b.put_u32_le(d.len() as u32);
        b.put_slice(d);
    }
    b.freeze()
}

fn decode_sm(mut data: Bytes) -> Vec<(u64, u64, Bytes)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let i = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let t = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
        let n = u32::from_le_bytes(data[16..20].try_into().expect("4 bytes")) as usize;
        let d = data.slice(20..20 + n);
        data = data.slice(20 + n..);
        out.push((i, t, d));
    }
    out
}

fn trace_persist(id: NodeId, now: u64, hs: &Option<HardState>, entries: &[Entry], snapshot: &Option<Snapshot>) {
    if std::env::var("SIM_TRACE_FROM").ok().and_then(|s| s.parse::<u64>().ok()).is_some_and(|t| now >= t) {
        eprintln!(
            "{now} persist at {id}: hs={hs:?} entries={:?} snapshot={:?}",
            entries.first().map(|e| (e.term, e.index)).zip(entries.last().map(|e| (e.term, e.index))),
            snapshot.as_ref().map(|s| (s.meta.term, s.meta.index))
        );
    }
}

fn persist(s: &mut MemStorage, hs: Option<HardState>, entries: Vec<Entry>, snapshot: Option<Snapshot>) {
    if let Some(snap) = snapshot {
        s.apply_snapshot(snap);
    }
    s.append_owned(entries);
    if let Some(hs) = hs {
        s.set_hard_state(hs);
    }
}

impl Sim {
    fn new(opts: Options) -> Sim {
        let mut rng = Rng(opts.seed);
        let ids: Vec<NodeId> = (1..=opts.nodes as u64).collect();
        let nodes = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id);
                cfg.seed = rng.next();
                cfg.pre_vote = opts.pre_vote;
                cfg.check_quorum = opts.check_quorum;
                cfg.read_mode = opts.read_mode;
                cfg.max_size_per_msg = 1 + rng.below(4096);
                cfg.max_inflight_msgs = 1 + rng.below(8) as usize;
                let mut storage = MemStorage::new();
                storage.set_catchup_entries(opts.catchup_entries);
                let raw = RawNode::bootstrap(&cfg, storage, &ids).expect("bootstrap");
                SimNode {
                    id,
                    cfg,
                    raw: Some(raw),
                    disk: None,
                    async_writes: opts.async_mask & (1 << id) != 0,
                    pending: VecDeque::new(),
                    sm: Vec::new(),
                    down_until: 0,
                    reads: BTreeMap::new(),
                    next_ctx: 1,
                    last_applied: 0,
                }
            })
            .collect();
        Sim {
            opts,
            rng,
            now: 0,
            nodes,
            net: BTreeMap::new(),
            net_seq: 0,
            blocked: BTreeSet::new(),
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            proposal_seq: 0,
            faults: true,
            debug: std::env::var_os("SIM_DEBUG").is_some(),
            trace_from: std::env::var("SIM_TRACE_FROM").ok().and_then(|s| s.parse().ok()),
            report: Report::default(),
        }
    }

    fn fail(&self, what: String) -> String {
        let mut members = String::new();
        for n in &self.nodes {
            match &n.raw {
                Some(r) => {
                    let st = r.status();
                    members.push_str(&format!(
                        "\n  {}: {} term={} vote={} leader={} commit={} applied={} last={} voters={:?} learners={:?} election-timeout={} pending-writes={} stats={:?}",
                        n.id,
                        st.role.name(),
                        st.term,
                        st.vote,
                        st.leader,
                        st.commit,
                        st.applied,
                        st.last_index,
                        st.conf_state.voters,
                        st.conf_state.learners,
                        st.election_timeout_ticks,
                        n.pending.len(),
                        st.stats
                    ));
                    for p in &st.progress {
                        members.push_str(&format!(
                            "\n     peer {}: {} match={} next={} inflight={} paused={} active={}",
                            p.id,
                            p.state.name(),
                            p.matched,
                            p.next,
                            p.inflight_msgs,
                            p.paused,
                            p.recent_active
                        ));
                    }
                }
                None => members.push_str(&format!("\n  {}: down", n.id)),
            }
        }
        format!("seed {}: step {}: {what}\noptions: {:?}\nmembers:{members}", self.opts.seed, self.now, self.opts)
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].raw.is_some()).collect()
    }

    fn max_commit(&self) -> u64 {
        self.nodes.iter().filter_map(|n| n.raw.as_ref()).map(|r| r.commit_index()).max().unwrap_or(0)
    }

    fn send(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        if self.trace_from.is_some_and(|t| self.now >= t) {
            eprintln!("{} send {}", self.now, skiff_engine::describe::message(&m));
        }
        let dropped = self.blocked.contains(&(from, to))
            || (self.faults && self.rng.per_mille(self.opts.drop_per_mille))
            || self.nodes[(to - 1) as usize].raw.is_none();
        if dropped {
            if matches!(m.body, MessageBody::Snapshot { .. })
                && let Some(raw) = self.nodes[(from - 1) as usize].raw.as_mut()
            {
                raw.report_snapshot(to, false);
            }
            return;
        }
        let copies = if self.faults && self.rng.per_mille(self.opts.dup_per_mille) { 2 } else { 1 };
        for _ in 0..copies {
            let max_delay = if self.faults { self.opts.max_delay_steps } else { 2 };
            let at = self.now + 1 + self.rng.below(max_delay);
            self.net_seq += 1;
            self.net.insert((at, self.net_seq), m.clone());
        }
    }

    fn deliver_due(&mut self) -> Result<(), String> {
        while let Some((&key, _)) = self.net.first_key_value() {
            if key.0 > self.now {
                break;
            }
            let m = self.net.remove(&key).expect("present");
            let (from, to) = (m.from, m.to);
            let is_snap = matches!(m.body, MessageBody::Snapshot { .. });
            let delivered = !self.blocked.contains(&(from, to)) && self.nodes[(to - 1) as usize].raw.is_some();
            if delivered {
                let raw = self.nodes[(to - 1) as usize].raw.as_mut().expect("checked");
                if self.trace_from.is_some_and(|t| self.now >= t) {
                    eprintln!("{} deliver {}", self.now, skiff_engine::describe::message(&m));
                }
                if self.debug {
                    // SIM_DEBUG=1: show every message a member refuses as malformed.
                    let before = raw.stats().msgs_malformed;
                    let desc = skiff_engine::describe::message(&m);
                    raw.step(m);
                    if raw.stats().msgs_malformed != before {
                        eprintln!("malformed at {to}: {desc}");
                    }
                } else {
                    raw.step(m);
                }
            }
            // A transport always reports how a snapshot fared, or the leader waits for
            // it forever (the engine's contract, as etcd's).
            if is_snap && let Some(sender) = self.nodes[(from - 1) as usize].raw.as_mut() {
                sender.report_snapshot(to, delivered);
            }
        }
        Ok(())
    }

    /// Handles one Ready of member `i`, checking invariants on what it reveals.
    fn process_ready(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        let write_delay = self.rng.below(self.opts.max_write_delay_steps + 1);
        let n = &mut self.nodes[i];
        let Some(raw) = n.raw.as_mut() else { return Ok(()) };
        if !raw.has_ready() {
            return Ok(());
        }
        let mut rd = raw.ready();
        let mut out: Vec<Message> = std::mem::take(&mut rd.messages);
        if let Some(ss) = rd.soft_state
            && ss.role == Role::Leader
        {
            let term = raw.term();
            self.report.leaders_elected += 1;
            match self.leaders.insert(term, n.id) {
                Some(other) if other != n.id => {
                    return Err(format!("Election Safety: {} and {other} both led term {term}", n.id));
                }
                _ => {}
            }
            // Leader Completeness (§5.4): every entry applied anywhere is in the new
            // leader's log with the same term.
            let first = raw.first_index();
            let last = raw.last_index();
            for (&index, (term_applied, _)) in &self.applied {
                if index < first {
                    continue;
                }
                if index > last {
                    return Err(format!(
                        "Leader Completeness: leader {} of term {term} lacks committed index {index} (last {last})",
                        n.id
                    ));
                }
                let t = raw.log_term(index).map_err(|e| format!("leader log read {index}: {e}"))?;
                if t != *term_applied {
                    return Err(format!(
                        "Leader Completeness: leader {} of term {term} has term {t} at committed index {index}, not {term_applied}",
                        n.id
                    ));
                }
            }
        }
        if n.async_writes {
            if rd.has_write() {
                n.pending.push_back(PendingWrite {
                    number: rd.number(),
                    hard_state: rd.hard_state,
                    entries: std::mem::take(&mut rd.entries),
                    snapshot: rd.snapshot.clone(),
                    done_at: now + write_delay,
                });
            }
        } else {
            trace_persist(n.id, now, &rd.hard_state, &rd.entries, &rd.snapshot);
            persist(raw.storage_mut(), rd.hard_state, std::mem::take(&mut rd.entries), rd.snapshot.clone());
            out.append(&mut rd.persisted_messages);
        }
        if let Some(snap) = &rd.snapshot {
            n.sm = decode_sm(snap.data.clone());
            n.last_applied = snap.meta.index;
            self.report.snapshots_applied += 1;
        }
        for e in &rd.committed_entries {
            if e.index != n.last_applied + 1 {
                return Err(format!("member {} applied {} after {}", n.id, e.index, n.last_applied));
            }
            n.last_applied = e.index;
            match self.applied.get(&e.index) {
                Some((t, d)) if *t != e.term || *d != e.data => {
                    return Err(format!(
                        "State Machine Safety: member {} applied {}/{} {:?}, another applied {t}/{} {:?}",
                        n.id, e.term, e.index, e.data, e.index, d
                    ));
                }
                Some(_) => {}
                None => {
                    self.applied.insert(e.index, (e.term, e.data.clone()));
                    self.report.entries_committed += 1;
                }
            }
            match e.kind {
                EntryKind::Normal if !e.data.is_empty() => n.sm.push((e.index, e.term, e.data.clone())),
                EntryKind::ConfChange => {
                    let cc = ConfChange::decode(&e.data).ok_or("committed conf change does not decode")?;
                    raw.apply_conf_change(cc);
                    self.report.conf_changes_applied += 1;
                }
                _ => {}
            }
        }
        for rs in &rd.read_states {
            if let Some(g) = n.reads.remove(&rs.ctx) {
                if rs.index < g {
                    return Err(format!(
                        "linearizable read: member {} read ctx {} served at index {} but index {g} was committed when it was asked",
                        n.id, rs.ctx, rs.index
                    ));
                }
                self.report.reads_served += 1;
            }
        }
        if n.async_writes {
            raw.advance_async(rd);
        } else {
            raw.advance(rd);
        }
        for m in out {
            self.send(m);
        }
        Ok(())
    }

    fn complete_writes(&mut self, i: usize) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let Some(raw) = n.raw.as_mut() else { return };
        let mut last = None;
        while n.pending.front().is_some_and(|w| w.done_at <= now) {
            let w = n.pending.pop_front().expect("checked");
            trace_persist(n.id, now, &w.hard_state, &w.entries, &w.snapshot);
            persist(raw.storage_mut(), w.hard_state, w.entries, w.snapshot);
            last = Some(w.number);
        }
        if let Some(num) = last {
            raw.on_persist_ready(num);
        }
    }

    fn crash(&mut self, i: usize) {
        let keep = self.opts.keep_unreported_writes;
        let k = self.rng.below(self.nodes[i].pending.len() as u64 + 1);
        let down = 20 + self.rng.below(300);
        let n = &mut self.nodes[i];
        let Some(raw) = n.raw.take() else { return };
        let mut disk = raw.storage().clone();
        // Writes that were submitted but not reported may or may not have reached the
        // disk; a prefix of them did.
        if keep {
            for w in n.pending.drain(..).take(k as usize) {
                persist(&mut disk, w.hard_state, w.entries, w.snapshot);
            }
        }
        n.pending.clear();
        n.disk = Some(disk);
        n.down_until = self.now + down;
        n.reads.clear();
        self.report.crashes += 1;
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let n = &mut self.nodes[i];
        let Some(disk) = n.disk.take() else { return Ok(()) };
        let snap = disk.snapshot(0, 0).map_err(|e| format!("snapshot read: {e}"))?;
        let mut cfg = n.cfg.clone();
        cfg.applied = snap.meta.index;
        cfg.seed = cfg.seed.wrapping_add(self.now);
        n.sm = decode_sm(snap.data.clone());
        n.last_applied = snap.meta.index;
        n.raw = Some(RawNode::new(&cfg, disk).map_err(|e| format!("restart of {}: {e}", n.id))?);
        Ok(())
    }

    fn compact(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let Some(raw) = n.raw.as_mut() else { return };
        let applied = n.last_applied;
        // Compact only at an index that is applied and whose durable entry is the one
        // that was applied: a snapshot just received may not be durable yet, and the
        // disk may still hold a divergent entry at that index.
        if applied <= raw.storage().snapshot_meta().index + 1
            || applied > raw.storage().last_index()
            || raw.storage().term(applied) != raw.log_term(applied)
            || !n.pending.is_empty()
        {
            return;
        }
        let cs = raw.conf_state();
        let et = raw.election_timeout_from_log();
        let data = encode_sm(&n.sm);
        raw.storage_mut().create_snapshot(applied, cs, et, data);
    }

    /// Without PreVote and CheckQuorum nothing keeps a member that was removed while
    /// cut off (and so never learned of it) from disrupting every election with ever
    /// higher terms (dissertation §4.2.3; etcd behaves the same; seed
    /// 1796415177936860640). An operator stops a removed member; so does the liveness
    /// check: a member outside the leader's applied configuration. One that a change
    /// still in the log adds back is started again once the leader applies it (so a
    /// pending change need not hold the check off: it may never commit while the
    /// removed member disrupts, seed 1796420345609195476).
    fn stop_removed_members(&mut self) -> Result<(), String> {
        if self.opts.pre_vote || self.opts.check_quorum {
            return Ok(());
        }
        let Some(li) = self.leader() else { return Ok(()) };
        let cs = self.nodes[li].raw.as_ref().expect("live").conf_state();
        for i in self.live() {
            let id = self.nodes[i].raw.as_ref().expect("live").id();
            if !cs.contains(id) {
                let n = &mut self.nodes[i];
                let raw = n.raw.take().expect("live");
                n.disk = Some(raw.storage().clone());
                n.pending.clear();
                n.reads.clear();
                n.down_until = u64::MAX;
            }
        }
        // A stopped member that the cluster adds back is started again, on its old
        // disk, as an operator would (seed 1796419822072008445: a member stopped after
        // its removal and then re-added as a learner stayed down for good).
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.raw.is_none() && n.down_until == u64::MAX && cs.contains(n.id) {
                self.restart(i).map_err(|e| self.fail(e))?;
            }
        }
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for i in self.live() {
            let raw = self.nodes[i].raw.as_ref().expect("live");
            if raw.role() == Role::Leader && best.is_none_or(|(t, _)| raw.term() > t) {
                best = Some((raw.term(), i));
            }
        }
        best.map(|(_, i)| i)
    }

    fn propose(&mut self, i: usize) {
        self.proposal_seq += 1;
        let data = Bytes::from(format!("{}-{}-{}", self.opts.seed, i + 1, self.proposal_seq));
        if let Some(raw) = self.nodes[i].raw.as_mut() {
            let _ = raw.propose(data);
        }
    }

    fn random_conf_change(&mut self) {
        let Some(li) = self.leader() else { return };
        let cs = self.nodes[li].raw.as_ref().expect("live").conf_state();
        let id = 1 + self.rng.below(self.nodes.len() as u64);
        let min_voters = if self.nodes.len() >= 5 { 3 } else { 2 };
        let cc = if cs.voters.contains(&id) {
            if cs.voters.len() <= min_voters {
                return;
            }
            if self.rng.below(2) == 0 { ConfChange::RemoveNode(id) } else { ConfChange::AddLearner(id) }
        } else if cs.learners.contains(&id) {
            ConfChange::AddVoter(id)
        } else {
            ConfChange::AddLearner(id)
        };
        let _ = self.nodes[li].raw.as_mut().expect("live").propose_conf_change(cc);
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += 1;
        // Time: every live member ticks together, in a random order.
        if self.now.is_multiple_of(self.opts.steps_per_tick) {
            let mut order = self.live();
            for k in (1..order.len()).rev() {
                order.swap(k, self.rng.below(k as u64 + 1) as usize);
            }
            for i in order {
                self.nodes[i].raw.as_mut().expect("live").tick();
            }
        }
        // Clients.
        if self.rng.per_mille(self.opts.propose_per_mille)
            && let Some(i) = self.rng.pick(&self.live())
        {
            self.propose(i);
        }
        if self.rng.per_mille(self.opts.read_per_mille)
            && let Some(i) = self.rng.pick(&self.live())
        {
            let g = self.max_commit();
            let n = &mut self.nodes[i];
            let ctx = n.next_ctx;
            n.next_ctx += 1;
            if n.raw.as_mut().expect("live").read_index(ctx).is_ok() {
                n.reads.insert(ctx, g);
            }
        }
        if self.faults {
            self.inject_faults()?;
        }
        self.deliver_due()?;
        let mut order = self.live();
        for k in (1..order.len()).rev() {
            order.swap(k, self.rng.below(k as u64 + 1) as usize);
        }
        for i in order {
            self.complete_writes(i);
            self.process_ready(i).map_err(|e| self.fail(e))?;
        }
        if self.now.is_multiple_of(50) {
            self.check_log_matching().map_err(|e| self.fail(e))?;
        }
        if self.now.is_multiple_of(5) {
            self.check_match_is_durable().map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let o = self.opts.clone();
        if self.rng.per_mille(o.crash_per_mille) {
            // Keep a quorum of the original members up most of the time, but not always.
            // Half the crashes hit the leader: the interesting interleavings (§5.4.2,
            // Figure 8) need leaders to die mid-replication.
            let live = self.live();
            let target = match self.leader() {
                Some(li) if self.rng.below(2) == 0 => Some(li),
                _ => self.rng.pick(&live),
            };
            if live.len() > 1
                && let Some(i) = target
            {
                self.crash(i);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].raw.is_none() && self.nodes[i].down_until <= self.now {
                self.restart(i).map_err(|e| self.fail(e))?;
            }
        }
        if self.rng.per_mille(o.partition_per_mille) {
            self.blocked.clear();
            match self.rng.below(4) {
                0 => {} // heal
                1 => {
                    // Isolate one member both ways.
                    let x = 1 + self.rng.below(self.nodes.len() as u64);
                    for y in 1..=self.nodes.len() as u64 {
                        if y != x {
                            self.blocked.insert((x, y));
                            self.blocked.insert((y, x));
                        }
                    }
                }
                2 => {
                    // One-way: a member can send but not receive.
                    let x = 1 + self.rng.below(self.nodes.len() as u64);
                    for y in 1..=self.nodes.len() as u64 {
                        if y != x {
                            self.blocked.insert((y, x));
                        }
                    }
                }
                _ => {
                    // A random split.
                    let mask = self.rng.next();
                    for x in 1..=self.nodes.len() as u64 {
                        for y in 1..=self.nodes.len() as u64 {
                            if (mask >> x) & 1 != (mask >> y) & 1 {
                                self.blocked.insert((x, y));
                            }
                        }
                    }
                }
            }
        }
        if self.rng.per_mille(o.conf_change_per_mille) {
            self.random_conf_change();
        }
        if self.rng.per_mille(o.transfer_per_mille)
            && let Some(li) = self.leader()
        {
            let target = 1 + self.rng.below(self.nodes.len() as u64);
            self.report.transfers_requested += 1;
            self.nodes[li].raw.as_mut().expect("live").transfer_leadership(target);
        }
        if self.rng.per_mille(o.compact_per_mille)
            && let Some(i) = self.rng.pick(&self.live())
        {
            self.compact(i);
        }
        if self.rng.per_mille(o.timeout_change_per_mille)
            && let Some(li) = self.leader()
        {
            let ticks = 8 + self.rng.below(8) as u32;
            let _ = self.nodes[li].raw.as_mut().expect("live").propose_election_timeout(ticks);
        }
        Ok(())
    }

    /// Durability of acknowledgements (diss. §3.8): whatever a leader believes a live
    /// follower holds (its match index) is on that follower's disk with the same term.
    /// A follower that acknowledged an append before making it durable, then crashed,
    /// breaks this.
    fn check_match_is_durable(&self) -> Result<(), String> {
        let Some(li) = self.leader() else { return Ok(()) };
        let leader = self.nodes[li].raw.as_ref().expect("live");
        for p in leader.status().progress {
            let Some(peer) = self.nodes[(p.id - 1) as usize].raw.as_ref() else { continue };
            if p.id == leader.id() || p.matched == 0 || peer.term() > leader.term() {
                continue;
            }
            let disk = peer.storage();
            match (disk.term(p.matched), leader.log_term(p.matched)) {
                (Ok(a), Ok(b)) if a != b => {
                    return Err(format!(
                        "acknowledged but not durable: leader {} has match {} for {}, whose disk has term {a} there, not {b}",
                        leader.id(),
                        p.matched,
                        p.id
                    ));
                }
                (Err(StorageError::Unavailable), _) => {
                    return Err(format!(
                        "acknowledged but not durable: leader {} has match {} for {}, whose disk ends at {}",
                        leader.id(),
                        p.matched,
                        p.id,
                        disk.last_index()
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Log Matching (§5.3) on what members hold: where two logs agree on the term of an
    /// index, they agree on every entry up to it (checked over a window, for speed).
    fn check_log_matching(&self) -> Result<(), String> {
        let live = self.live();
        for (a, &i) in live.iter().enumerate() {
            for &j in &live[a + 1..] {
                let (x, y) = (self.nodes[i].raw.as_ref().expect("live"), self.nodes[j].raw.as_ref().expect("live"));
                let lo = x.first_index().max(y.first_index());
                let mut k = x.last_index().min(y.last_index());
                while k >= lo && x.log_term(k) != y.log_term(k) {
                    k -= 1;
                }
                if k < lo {
                    continue;
                }
                let from = lo.max(k.saturating_sub(64)).max(1);
                if from > k {
                    continue;
                }
                let read = |r: &RawNode<MemStorage>| -> Result<Vec<Entry>, StorageError> {
                    r.log_entries(from, k + 1, u64::MAX)
                };
                let (ex, ey) = (read(x), read(y));
                if let (Ok(ex), Ok(ey)) = (ex, ey)
                    && ex != ey
                {
                    return Err(format!(
                        "Log Matching: members {} and {} agree on the term at {k} but differ in {from}..={k}",
                        x.id(),
                        y.id()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Heals every fault and checks that the cluster elects a leader and commits new
    /// proposals on every member within bounded time.
    fn liveness(&mut self) -> Result<(), String> {
        self.faults = false;
        self.blocked.clear();
        for i in 0..self.nodes.len() {
            self.restart(i).map_err(|e| self.fail(e))?;
        }
        let tick_steps = self.opts.steps_per_tick;
        let budget_ticks = 60 * 16; // 60 election timeouts at the largest timeout in use
        let mut leader = None;
        for _ in 0..budget_ticks * tick_steps {
            self.step()?;
            self.stop_removed_members()?;
            if let Some(li) = self.leader() {
                // Members of the leader's configuration follow it. A member removed
                // while cut off never learns of its removal (as in etcd) and may keep
                // pre-campaigning; it is not part of the cluster any more.
                let lr = self.nodes[li].raw.as_ref().expect("live");
                let (term, cs) = (lr.term(), lr.conf_state());
                let all_follow = self.live().iter().all(|&i| {
                    let r = self.nodes[i].raw.as_ref().expect("live");
                    !cs.contains(r.id()) || (r.term() == term && r.leader() == li as u64 + 1)
                });
                if all_follow {
                    leader = Some(li);
                    break;
                }
            }
        }
        let Some(li) = leader else {
            return Err(self.fail(format!("liveness: no stable leader within {budget_ticks} ticks after healing")));
        };
        let finals: Vec<Bytes> = (0..5).map(|k| Bytes::from(format!("final-{}-{k}", self.opts.seed))).collect();
        // A proposal accepted by a leader that then loses leadership may be discarded;
        // like a real client, re-propose what has not been applied after a while.
        let retry_steps = 20 * tick_steps;
        let mut next_try = 0;
        for step in 0..budget_ticks * tick_steps {
            if step >= next_try
                && let Some(cur) = self.leader()
            {
                next_try = step + retry_steps;
                for f in &finals {
                    if !self.nodes[cur].sm.iter().any(|(_, _, d)| d == f) {
                        let _ = self.nodes[cur].raw.as_mut().expect("live").propose(f.clone());
                    }
                }
            }
            self.step()?;
            self.stop_removed_members()?;
            let Some(cur) = self.leader() else { continue };
            let cs = self.nodes[cur].raw.as_ref().expect("live").conf_state();
            let members: Vec<usize> = (0..self.nodes.len()).filter(|&i| cs.contains(i as u64 + 1)).collect();
            let done = members.iter().all(|&i| finals.iter().all(|f| self.nodes[i].sm.iter().any(|(_, _, d)| d == f)));
            if done {
                // Members may be at different points (clients keep proposing): compare
                // the prefix every member has applied.
                let upto = members.iter().map(|&i| self.nodes[i].last_applied).min().unwrap_or(0);
                let prefix = |i: usize| -> Vec<(u64, u64, Bytes)> {
                    self.nodes[i].sm.iter().filter(|(idx, _, _)| *idx <= upto).cloned().collect()
                };
                let reference = prefix(members[0]);
                for &i in &members {
                    if prefix(i) != reference {
                        return Err(self.fail(format!(
                            "state machines differ after healing: member {} vs member {}",
                            members[0] + 1,
                            i + 1
                        )));
                    }
                }
                let _ = li;
                return Ok(());
            }
        }
        Err(self.fail(format!("liveness: final proposals not applied everywhere within {budget_ticks} ticks")))
    }
}

/// Runs one simulation: the fault phase, then healing and the liveness check.
pub fn run(opts: Options) -> Result<Report, String> {
    let mut sim = Sim::new(opts);
    // Founders apply their bootstrap entries before anything else happens.
    for i in 0..sim.nodes.len() {
        sim.process_ready(i)?;
    }
    for _ in 0..sim.opts.steps {
        sim.step()?;
    }
    sim.liveness()?;
    Ok(sim.report)
}

fn run_seeds(seeds: impl Iterator<Item = u64>) -> Report {
    run_seeds_with(seeds, None)
}

/// Like [`run_seeds`], with `catchup_entries` (when given) in place of the seed's.
fn run_seeds_with(seeds: impl Iterator<Item = u64>, catchup_entries: Option<u64>) -> Report {
    let mut total = Report::default();
    for seed in seeds {
        let mut opts = Options::from_seed(seed);
        if let Some(n) = catchup_entries {
            opts.catchup_entries = n;
        }
        let catchup = opts.catchup_entries;
        // An assertion inside the engine panics; name the seed for that too.
        let outcome = std::panic::catch_unwind(|| run(opts)).unwrap_or_else(|p| {
            let what = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Err(format!("seed {seed}: panicked: {}", what.unwrap_or_default()))
        });
        match outcome {
            Ok(r) => {
                total.leaders_elected += r.leaders_elected;
                total.entries_committed += r.entries_committed;
                total.crashes += r.crashes;
                total.snapshots_applied += r.snapshots_applied;
                total.reads_served += r.reads_served;
                total.conf_changes_applied += r.conf_changes_applied;
                total.transfers_requested += r.transfers_requested;
            }
            Err(e) => panic!(
                "{e}\nreproduce with SEED={seed} SIM_CATCHUP={catchup} cargo test -p skiff-engine --test it sim::seed_from_env"
            ),
        }
    }
    total
}

/// The default run covers seeds 0..1000 in four parts (so the test runner can spread
/// them over cores), and checks that the faults it claims to inject happened.
fn fixed_part(part: u64) {
    let r = run_seeds((part * 250)..(part + 1) * 250);
    assert!(r.leaders_elected > 250, "leaders: {r:?}");
    assert!(r.crashes > 50, "crashes: {r:?}");
    assert!(r.snapshots_applied > 0, "snapshots: {r:?}");
    assert!(r.reads_served > 100, "reads: {r:?}");
    assert!(r.conf_changes_applied > 250 * 3, "conf changes (bootstrap included): {r:?}");
    assert!(r.entries_committed > 250 * 100, "entries: {r:?}");
}

#[test]
fn fixed_seeds_0_to_249() {
    fixed_part(0);
}

#[test]
fn fixed_seeds_250_to_499() {
    fixed_part(1);
}

#[test]
fn fixed_seeds_500_to_749() {
    fixed_part(2);
}

#[test]
fn fixed_seeds_750_to_999() {
    fixed_part(3);
}

/// Seeds a long sweep found failing, kept in the default run.
///
/// 1796415177936860640: not an engine bug. Without PreVote and CheckQuorum, a member
/// removed while cut off kept starting elections at ever higher terms and the other
/// two never kept a leader long enough to commit; the liveness check now stops such
/// a member, as an operator would (`stop_removed_members`).
///
/// 1796415882901706226: a learner whose term a vote request (from a member removed
/// while cut off) had raised above the leader's ignored the leader's appends without
/// answering (etcd's rule without PreVote and CheckQuorum), and as a learner never
/// campaigned to spread its term: it never followed again. Stale appends are now
/// always answered with the current term.
///
/// 1796414610601729683: no leader was ever elected after healing. Member 3 had applied
/// its own demotion to learner and held the longest log; member 2 had the later
/// changes in its log but had not learned them committed, so it still counted {2, 3}
/// as voters and asked 3, which refused it (longer log) and, a learner in its own
/// view, never campaigned; member 1 was behind both (etcd-io/etcd#12359). Fixed by
/// vote rejections that carry the voter's commit index and the term there: a
/// candidate holding that entry learns the changes committed and campaigns under the
/// current configuration (engine/testdata/confchange_liveness.txt).
///
/// 1796415177936833537 and 1796416375865743016 failed with an earlier attempt at that
/// fix, since taken out (a panic "a leader is a voter", then two leaders in one term).
///
/// 1796417129547604977 and 1796417642243393656: Leader Completeness failed. 5 members;
/// entry 176 was committed in term 8 by members 1 and 2 under configuration {1, 2, 4},
/// while members 4 and 5, which had not learned that two later membership changes (2
/// promoted, 5 removed) committed, still used {1, 4, 5} and elected 5 in term 10
/// without that entry. In the second, a member that had led a term appended two
/// changes while every hard state it persisted said commit 5 (commit advances that
/// come alone need not be written), restarted knowing only that, campaigned under the
/// configuration of index 5 and won with the votes of members that had applied their
/// own removal. Configurations two changes apart can have disjoint quorums. Fixed by
/// etcd-io/etcd#7625's "Append" invariant: a Ready that appends a membership change
/// always carries the hard state, whose commit index covers every earlier change, to
/// be made durable with it; so a member that knows a change knows every earlier one
/// committed, and applies them before it campaigns.
///
/// 1796419822072008445: not an engine bug. A member stopped after its removal (see the
/// first seed) and then added back as a learner stayed down, so the final proposals
/// never reached it; the simulator now starts such a member again.
///
/// 1796420345609195476: not an engine bug (fails the same on older code). Without
/// PreVote and CheckQuorum a removed member disrupted every election after healing,
/// and the check that stops it waited for the leader to apply the changes still in its
/// log, which it never could commit meanwhile: it no longer waits.
///
/// 1796421868665811437: Leader Completeness failed (also on older code). A founder
/// crashed before its bootstrap write was durable and restarted empty; the leader sent
/// it the log from index 1 one entry per message, it applied the first bootstrap entry,
/// `AddVoter(1)`, was then the only voter in its own view and elected itself. The
/// founding membership is now one entry (`ConfChange::Bootstrap`). 4000000000000253664
/// is another instance.
///
/// 7000000000000128661: no stable leader after healing (also on older code). Without
/// PreVote, member 2, behind and with a stale configuration and a shorter election
/// timeout (applied from an older change), campaigned about twice as often as member
/// 1, the one that could win, and kept its term ahead: 1 only ever asked at terms 2 had
/// already voted in. A member that a rejection has shown to lack committed entries now
/// withholds its campaigns until it has them (`Stats::campaigns_withheld`).
///
/// Each runs twice: as its seed draws it, and with no catch-up entries kept below
/// snapshots (as every seed ran when these were found), so the recorded scenarios stay
/// covered.
#[test]
fn regression_seeds() {
    let seeds = [
        1_796_414_610_601_729_683,
        1_796_415_177_936_860_640,
        1_796_415_882_901_706_226,
        1_796_415_177_936_833_537,
        1_796_416_375_865_743_016,
        1_796_417_129_547_604_977,
        1_796_417_642_243_393_656,
        1_796_419_822_072_008_445,
        1_796_420_345_609_195_476,
        1_796_421_868_665_811_437,
        4_000_000_000_000_253_664,
        7_000_000_000_000_128_661,
    ];
    run_seeds(seeds.into_iter());
    run_seeds_with(seeds.into_iter(), Some(0));
}

/// Entries kept below snapshots replace snapshot transfers: over the same seeds, a
/// storage that keeps 40 entries sends far fewer snapshots than one that keeps none
/// (and every safety and liveness check holds either way).
#[test]
fn catchup_entries_replace_snapshots() {
    let none = run_seeds_with(0..150, Some(0));
    let kept = run_seeds_with(0..150, Some(40));
    assert!(none.snapshots_applied > 20, "too few snapshots to compare: {none:?}");
    assert!(
        kept.snapshots_applied * 2 < none.snapshots_applied,
        "snapshots applied: {} keeping 40 entries, {} keeping none",
        kept.snapshots_applied,
        none.snapshots_applied
    );
}

#[test]
fn seed_from_env() {
    if let Some(seed) = std::env::var("SEED").ok().and_then(|s| s.parse().ok()) {
        let mut opts = Options::from_seed(seed);
        if let Some(n) = std::env::var("SIM_CATCHUP").ok().and_then(|s| s.parse().ok()) {
            opts.catchup_entries = n;
        }
        println!("{opts:?}");
        match run(opts) {
            Ok(r) => println!("seed {seed}: ok {r:?}"),
            Err(e) => panic!("{e}"),
        }
    }
}

/// A time-boxed random sweep: `SIM_SWEEP_SECS` seconds of seeds from `SIM_SWEEP_START`
/// (default: derived from the clock, printed).
#[test]
#[ignore = "long-running; run explicitly"]
fn sweep() {
    let secs: u64 = std::env::var("SIM_SWEEP_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let start: u64 = std::env::var("SIM_SWEEP_START").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    println!("sweep: {secs} s from seed {start}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut seed = start;
    let mut n = 0;
    while std::time::Instant::now() < deadline {
        run_seeds(seed..seed + 1);
        seed = seed.wrapping_add(1);
        n += 1;
    }
    println!("sweep: {n} seeds passed ({start}..{seed})");
}
