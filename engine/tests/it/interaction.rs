//! The interaction environment behind the scripts in `engine/testdata/`: a handful of
//! engine instances on in-memory storage, a mailbox standing in for the network, and
//! commands that drive them one step at a time (after etcd-io/raft's rafttest).
//!
//! Commands (ids are member ids; `ID...` means one or more):
//!
//! - `add-nodes N [voters=(..)] [learners=(..)] [index=I] [async] [pre-vote=B]
//!   [check-quorum=B] [read-mode=safe|lease] [forward=B] [max-size=BYTES]
//!   [max-inflight=N] [max-uncommitted=BYTES] [election=T] [heartbeat=T]`: adds N
//!   members. With `voters`, their storage starts from a snapshot at index I (default
//!   0) of that membership; without, they start empty (joining). `async` makes
//!   `process-ready` submit writes that complete only on `persist`.
//! - `bootstrap ID voters=(..)`: replaces member ID with one bootstrapped as a founder.
//! - `campaign ID`, `propose ID DATA`, `propose-conf-change ID v4|l4|r4`,
//!   `propose-election-timeout ID TICKS`, `read-index ID CTX`,
//!   `transfer-leadership from=ID to=ID`, `report-unreachable ID TARGET`,
//!   `report-snapshot ID TARGET ok|fail`.
//! - `tick ID [n=N]`, `tick-heartbeat ID`, `tick-election ID` (ticks until the member
//!   starts a campaign, or for two election timeouts, and says how many it took).
//! - `process-ready ID...`: prints each Ready and handles it fully (persist, queue
//!   messages, apply, advance; in `async` mode the write stays pending).
//! - `persist ID [upto=N]`: completes pending writes of an `async` member.
//! - `deliver-msgs [ID...] [drop=(..)] [type=NAME]`: delivers queued messages to the
//!   given members (default: all), dropping those to `drop`.
//! - `stabilize [ID...]`: processes Readies, persists and delivers until quiet.
//! - `step ID from=F term=T type=KIND ...`: injects one hand-made message.
//! - `raft-log ID`, `raft-state`, `status ID`, `stats ID`, `applied ID`.
//! - `compact ID INDEX`: snapshots the member's state machine at INDEX and compacts.
//! - `restart ID`: crashes the member (losing everything not yet durable) and restarts
//!   it from its storage.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use bytes::Bytes;
use skiff_engine::{
    ConfChange, ConfState, Config, Entry, EntryKind, HardState, MemStorage, Message, MessageBody, RawNode, ReadMode,
    Ready, Snapshot, SnapshotMeta, Storage, describe,
};

use crate::datadriven::Case;

/// A write submitted by an `async` member and not yet durable.
struct PendingWrite {
    number: u64,
    hard_state: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<Snapshot>,
}

struct TNode {
    raw: RawNode<MemStorage>,
    cfg: Config,
    /// Applied normal entries: (index, data).
    applied: Vec<(u64, String)>,
    async_writes: bool,
    pending: VecDeque<PendingWrite>,
}

impl TNode {
    fn new(cfg: Config, storage: MemStorage, async_writes: bool) -> TNode {
        let raw = RawNode::new(&cfg, storage).expect("valid test configuration");
        TNode { raw, cfg, applied: Vec::new(), async_writes, pending: VecDeque::new() }
    }
}

#[derive(Default)]
pub struct Env {
    nodes: BTreeMap<u64, TNode>,
    mailbox: Vec<Message>,
}

fn persist(storage: &mut MemStorage, hs: Option<HardState>, entries: &[Entry], snapshot: Option<Snapshot>) {
    if let Some(s) = snapshot {
        storage.apply_snapshot(s);
    }
    storage.append(entries);
    if let Some(hs) = hs {
        storage.set_hard_state(hs);
    }
}

fn encode_sm(applied: &[(u64, String)]) -> Bytes {
    let parts: Vec<String> = applied.iter().map(|(i, d)| format!("{i}:{d}")).collect();
    Bytes::from(parts.join(";"))
}

fn decode_sm(data: &[u8]) -> Vec<(u64, String)> {
    let s = String::from_utf8_lossy(data);
    s.split(';')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (i, d) = p.split_once(':').expect("state machine snapshot entry");
            (i.parse().expect("index"), d.to_string())
        })
        .collect()
}

fn parse_term_index(s: &str) -> (u64, u64) {
    let (t, i) = s.split_once('/').unwrap_or_else(|| panic!("expected TERM/INDEX, got {s}"));
    (t.parse().expect("term"), i.parse().expect("index"))
}

impl Env {
    fn node(&mut self, id: u64) -> &mut TNode {
        self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no member {id}"))
    }

    pub fn handle(&mut self, c: &Case) -> String {
        match c.cmd.as_str() {
            "add-nodes" => self.add_nodes(c),
            "bootstrap" => {
                let id = c.ids()[0];
                let voters: Vec<u64> = c.scan_list("voters").expect("voters=(..)");
                let n = self.node(id);
                let cfg = n.cfg.clone();
                n.raw = RawNode::bootstrap(&cfg, MemStorage::new(), &voters).expect("bootstrap");
                String::new()
            }
            "campaign" => {
                self.node(c.ids()[0]).raw.campaign();
                String::new()
            }
            "propose" => {
                let id = c.ids()[0];
                let data = c.bare()[1].to_string();
                match self.node(id).raw.propose(Bytes::from(data)) {
                    Ok(()) => String::new(),
                    Err(e) => format!("error: {e}"),
                }
            }
            "propose-conf-change" => {
                let id = c.ids()[0];
                let spec = c.bare()[1];
                let target: u64 = spec[1..].parse().expect("node id after v/l/r");
                let cc = match &spec[..1] {
                    "v" => ConfChange::AddVoter(target),
                    "l" => ConfChange::AddLearner(target),
                    "r" => ConfChange::RemoveNode(target),
                    other => panic!("{}: unknown conf change kind {other}", c.pos),
                };
                match self.node(id).raw.propose_conf_change(cc) {
                    Ok(()) => String::new(),
                    Err(e) => format!("error: {e}"),
                }
            }
            "propose-election-timeout" => {
                let ids = c.ids();
                match self.node(ids[0]).raw.propose_election_timeout(ids[1] as u32) {
                    Ok(()) => String::new(),
                    Err(e) => format!("error: {e}"),
                }
            }
            "read-index" => {
                let ids = c.ids();
                match self.node(ids[0]).raw.read_index(ids[1]) {
                    Ok(()) => String::new(),
                    Err(e) => format!("error: {e}"),
                }
            }
            "transfer-leadership" => {
                let from: u64 = c.scan("from").expect("from=");
                let to: u64 = c.scan("to").expect("to=");
                self.node(from).raw.transfer_leadership(to);
                String::new()
            }
            "report-unreachable" => {
                let ids = c.ids();
                self.node(ids[0]).raw.report_unreachable(ids[1]);
                String::new()
            }
            "report-snapshot" => {
                let ids = c.ids();
                let ok = c.bare()[2] == "ok";
                self.node(ids[0]).raw.report_snapshot(ids[1], ok);
                String::new()
            }
            "tick" => {
                let id = c.ids()[0];
                let n: u64 = c.scan("n").unwrap_or(1);
                let node = self.node(id);
                for _ in 0..n {
                    node.raw.tick();
                }
                String::new()
            }
            "tick-heartbeat" => {
                let id = c.ids()[0];
                let n = self.node(id);
                for _ in 0..n.cfg.heartbeat_ticks {
                    n.raw.tick();
                }
                String::new()
            }
            "tick-election" => {
                let id = c.ids()[0];
                let n = self.node(id);
                let start = n.raw.stats().campaigns;
                let limit = 2 * n.raw.status().election_timeout_ticks;
                for k in 1..=limit {
                    n.raw.tick();
                    if n.raw.stats().campaigns != start {
                        return format!("campaigned after {k} ticks");
                    }
                }
                format!("no campaign within {limit} ticks")
            }
            "process-ready" => {
                let mut out = String::new();
                for id in c.ids() {
                    self.process_ready(id, &mut out);
                }
                out
            }
            "persist" => {
                let id = c.ids()[0];
                let upto: Option<u64> = c.scan("upto");
                let mut out = String::new();
                self.persist_pending(id, upto, &mut out);
                out
            }
            "deliver-msgs" => {
                let ids = c.ids();
                let drop: Vec<u64> = c.scan_list("drop").unwrap_or_default();
                let kind: Option<String> = c.scan("type");
                let mut out = String::new();
                self.deliver(&ids, &drop, kind.as_deref(), &mut out);
                out
            }
            "stabilize" => {
                let ids = c.ids();
                let mut out = String::new();
                self.stabilize(&ids, &mut out);
                out
            }
            "step" => self.step(c),
            "raft-log" => {
                let id = c.ids()[0];
                let s = self.node(id).raw.storage();
                let ents = s.all_entries();
                if ents.is_empty() {
                    format!("log is empty: first index={}, last index={}", s.first_index(), s.last_index())
                } else {
                    ents.iter().map(|e| describe::entry(e) + "\n").collect()
                }
            }
            "raft-state" => {
                let mut out = String::new();
                for (id, n) in &self.nodes {
                    let st = n.raw.status();
                    let _ = writeln!(
                        out,
                        "{id}: {} term={} leader={} commit={} applied={} voters={:?} learners={:?}",
                        st.role.name(),
                        st.term,
                        st.leader,
                        st.commit,
                        st.applied,
                        st.conf_state.voters,
                        st.conf_state.learners
                    );
                }
                out
            }
            "status" => {
                let st = self.node(c.ids()[0]).raw.status();
                let mut out = String::new();
                let _ =
                    writeln!(out, "election-timeout={} transferee={}", st.election_timeout_ticks, st.lead_transferee);
                for p in &st.progress {
                    let _ = writeln!(
                        out,
                        "{}: {} match={} next={} inflight={}{}{}",
                        p.id,
                        p.state.name(),
                        p.matched,
                        p.next,
                        p.inflight_msgs,
                        if p.paused { " paused" } else { "" },
                        if p.is_learner { " learner" } else { "" }
                    );
                }
                out
            }
            "stats" => {
                let s = self.node(c.ids()[0]).raw.stats();
                let dbg = format!("{s:?}");
                // Print only the non-zero counters, one per line.
                let inner = dbg.trim_start_matches("Stats { ").trim_end_matches(" }");
                let lines: Vec<&str> = inner.split(", ").filter(|kv| !kv.ends_with(": 0")).collect();
                if lines.is_empty() { "all zero".into() } else { lines.join("\n") }
            }
            "applied" => {
                let n = self.node(c.ids()[0]);
                let parts: Vec<String> = n.applied.iter().map(|(i, d)| format!("{i}:{d}")).collect();
                format!("[{}]", parts.join(" "))
            }
            "compact" => {
                let ids = c.ids();
                let (id, index) = (ids[0], ids[1]);
                let n = self.node(id);
                let upto: Vec<(u64, String)> = n.applied.iter().filter(|(i, _)| *i <= index).cloned().collect();
                let cs = n.raw.conf_state();
                let et = n.raw.election_timeout_from_log();
                n.raw.storage_mut().create_snapshot(index, cs, et, encode_sm(&upto));
                String::new()
            }
            "restart" => {
                let id = c.ids()[0];
                let n = self.node(id);
                let storage = n.raw.storage().clone();
                let mut cfg = n.cfg.clone();
                let snap = storage.snapshot(0, 0).expect("mem storage snapshot");
                cfg.applied = snap.meta.index;
                let async_writes = n.async_writes;
                let mut fresh = TNode::new(cfg, storage, async_writes);
                fresh.applied = decode_sm(&snap.data);
                *n = fresh;
                String::new()
            }
            other => panic!("{}: unknown command {other}", c.pos),
        }
    }

    fn add_nodes(&mut self, c: &Case) -> String {
        let n = c.ids()[0];
        let voters: Option<Vec<u64>> = c.scan_list("voters");
        let learners: Vec<u64> = c.scan_list("learners").unwrap_or_default();
        let index: u64 = c.scan("index").unwrap_or(0);
        let async_writes = c.bare().contains(&"async");
        let first = self.nodes.keys().next_back().map_or(1, |k| k + 1);
        for id in first..first + n {
            let mut cfg = Config::new(id);
            cfg.pre_vote = c.scan("pre-vote").unwrap_or(false);
            cfg.check_quorum = c.scan("check-quorum").unwrap_or(false);
            cfg.forward_proposals = c.scan("forward").unwrap_or(true);
            cfg.read_mode = match c.scan::<String>("read-mode").as_deref() {
                Some("lease") => ReadMode::Lease,
                _ => ReadMode::Safe,
            };
            if let Some(v) = c.scan("max-size") {
                cfg.max_size_per_msg = v;
            }
            if let Some(v) = c.scan("max-inflight") {
                cfg.max_inflight_msgs = v;
            }
            if let Some(v) = c.scan("max-uncommitted") {
                cfg.max_uncommitted_bytes = v;
            }
            if let Some(v) = c.scan("election") {
                cfg.election_ticks = v;
            }
            if let Some(v) = c.scan("heartbeat") {
                cfg.heartbeat_ticks = v;
            }
            let storage = match &voters {
                Some(v) => {
                    let mut s = MemStorage::new();
                    let cs = ConfState { voters: v.clone(), learners: learners.clone() };
                    let snap = Snapshot {
                        meta: SnapshotMeta { index, term: 1, conf_state: cs, election_timeout_ticks: 0 },
                        data: Bytes::new(),
                    };
                    if index > 0 {
                        s.apply_snapshot(snap);
                        s.set_hard_state(HardState { term: 1, vote: 0, commit: index });
                    } else {
                        s = MemStorage::with_conf_state(snap.meta.conf_state);
                    }
                    s
                }
                None => MemStorage::new(),
            };
            if index > 0 {
                cfg.applied = index;
            }
            self.nodes.insert(id, TNode::new(cfg, storage, async_writes));
        }
        String::new()
    }

    fn process_ready(&mut self, id: u64, out: &mut String) {
        let n = self.node(id);
        if !n.raw.has_ready() {
            let _ = writeln!(out, "> {id}: no Ready");
            return;
        }
        let mut rd: Ready = n.raw.ready();
        let _ = writeln!(out, "> {id} handling Ready {}", rd.number());
        for line in describe::ready(&rd).lines() {
            let _ = writeln!(out, "  {line}");
        }
        let mut sends: Vec<Message> = std::mem::take(&mut rd.messages);
        if n.async_writes {
            if rd.has_write() {
                n.pending.push_back(PendingWrite {
                    number: rd.number(),
                    hard_state: rd.hard_state,
                    entries: rd.entries.clone(),
                    snapshot: rd.snapshot.clone(),
                });
            }
        } else {
            persist(n.raw.storage_mut(), rd.hard_state, &rd.entries, rd.snapshot.clone());
            sends.append(&mut rd.persisted_messages);
        }
        // Apply: snapshot first, then committed entries.
        if let Some(s) = &rd.snapshot {
            n.applied = decode_sm(&s.data);
        }
        for e in &rd.committed_entries {
            match e.kind {
                EntryKind::Normal if !e.data.is_empty() => {
                    n.applied.push((e.index, String::from_utf8_lossy(&e.data).into_owned()))
                }
                EntryKind::ConfChange => {
                    let cc = ConfChange::decode(&e.data).expect("committed conf change decodes");
                    let cs = n.raw.apply_conf_change(cc);
                    let _ = writeln!(out, "  conf-state voters={:?} learners={:?}", cs.voters, cs.learners);
                }
                _ => {}
            }
        }
        if n.async_writes {
            n.raw.advance_async(rd);
        } else {
            n.raw.advance(rd);
        }
        self.mailbox.extend(sends);
    }

    fn persist_pending(&mut self, id: u64, upto: Option<u64>, out: &mut String) {
        let n = self.node(id);
        let mut last = None;
        while let Some(w) = n.pending.front() {
            if upto.is_some_and(|u| w.number > u) {
                break;
            }
            let w = n.pending.pop_front().expect("checked");
            persist(n.raw.storage_mut(), w.hard_state, &w.entries, w.snapshot);
            last = Some(w.number);
        }
        if let Some(num) = last {
            n.raw.on_persist_ready(num);
            let _ = writeln!(out, "> {id} persisted Ready {num}");
        }
    }

    fn deliver(&mut self, ids: &[u64], drop: &[u64], kind: Option<&str>, out: &mut String) -> usize {
        let (take, keep): (Vec<Message>, Vec<Message>) = std::mem::take(&mut self.mailbox)
            .into_iter()
            .partition(|m| (ids.is_empty() || ids.contains(&m.to)) && kind.is_none_or(|k| m.body.name() == k));
        self.mailbox = keep;
        let n = take.len();
        for m in take {
            if drop.contains(&m.to) || !self.nodes.contains_key(&m.to) {
                let _ = writeln!(out, "dropped: {}", describe::message(&m));
                continue;
            }
            let _ = writeln!(out, "{}", describe::message(&m));
            let to = m.to;
            self.node(to).raw.step(m);
        }
        n
    }

    fn stabilize(&mut self, ids: &[u64], out: &mut String) {
        let ids: Vec<u64> = if ids.is_empty() { self.nodes.keys().copied().collect() } else { ids.to_vec() };
        for _round in 0..1000 {
            let mut progressed = false;
            for &id in &ids {
                if self.node(id).raw.has_ready() {
                    self.process_ready(id, out);
                    progressed = true;
                }
                if !self.node(id).pending.is_empty() {
                    self.persist_pending(id, None, out);
                    progressed = true;
                }
            }
            for &id in &ids {
                if self.mailbox.iter().any(|m| m.to == id) {
                    let _ = writeln!(out, "> {id} receiving messages");
                    let mut inner = String::new();
                    self.deliver(&[id], &[], None, &mut inner);
                    for line in inner.lines() {
                        let _ = writeln!(out, "  {line}");
                    }
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("stabilize did not settle within 1000 rounds");
    }

    fn step(&mut self, c: &Case) -> String {
        let id = c.ids()[0];
        let from: u64 = c.scan("from").expect("from=");
        let term: u64 = c.scan("term").unwrap_or(0);
        let kind: String = c.scan("type").expect("type=");
        let flag = |k: &str| c.scan::<bool>(k).unwrap_or(false);
        let body = match kind.as_str() {
            "heartbeat" => {
                MessageBody::Heartbeat { commit: c.scan("commit").unwrap_or(0), ctx: c.scan("ctx").unwrap_or(0) }
            }
            "heartbeat-response" => MessageBody::HeartbeatResponse { ctx: c.scan("ctx").unwrap_or(0) },
            "append" => {
                let (prev_term, prev_index) = parse_term_index(&c.scan::<String>("prev").expect("prev=T/I"));
                let entries = c
                    .scan_list::<String>("entries")
                    .unwrap_or_default()
                    .iter()
                    .map(|s| {
                        let (term, index) = parse_term_index(s);
                        Entry { term, index, kind: EntryKind::Normal, data: Bytes::from_static(b"x") }
                    })
                    .collect();
                MessageBody::Append { prev_index, prev_term, commit: c.scan("commit").unwrap_or(0), entries }
            }
            "append-response" => {
                let (hint_term, hint_index) = c.scan::<String>("hint").map_or((0, 0), |h| parse_term_index(&h));
                MessageBody::AppendResponse {
                    index: c.scan("index").unwrap_or(0),
                    reject: flag("reject"),
                    hint_index,
                    hint_term,
                }
            }
            "vote" => {
                let (last_term, last_index) = parse_term_index(&c.scan::<String>("last").expect("last=T/I"));
                MessageBody::Vote { pre: flag("pre"), last_index, last_term, transfer: flag("transfer") }
            }
            "vote-response" => {
                let (commit_term, commit) = c.scan::<String>("commit").map(|s| parse_term_index(&s)).unwrap_or((0, 0));
                MessageBody::VoteResponse { pre: flag("pre"), reject: flag("reject"), commit, commit_term }
            }
            "timeout-now" => MessageBody::TimeoutNow,
            "snapshot" => {
                let (t, i) = parse_term_index(&c.scan::<String>("snap").expect("snap=T/I"));
                let cs = ConfState {
                    voters: c.scan_list("voters").unwrap_or_default(),
                    learners: c.scan_list("learners").unwrap_or_default(),
                };
                MessageBody::Snapshot {
                    snapshot: Snapshot {
                        meta: SnapshotMeta { index: i, term: t, conf_state: cs, election_timeout_ticks: 0 },
                        data: Bytes::new(),
                    },
                }
            }
            "read-index" => MessageBody::ReadIndex { ctx: c.scan("ctx").unwrap_or(0) },
            "propose" => MessageBody::Propose {
                entries: vec![Entry::new(Bytes::from(c.scan::<String>("data").unwrap_or_default()))],
            },
            other => panic!("{}: unknown message type {other}", c.pos),
        };
        let to: u64 = c.scan("to").unwrap_or(id);
        self.node(id).raw.step(Message { from, to, term, body });
        String::new()
    }
}
