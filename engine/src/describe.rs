//! Compact, stable text forms of entries, messages and Readies: what the interaction
//! tests in `engine/testdata/` print, and what logs may show.

use std::fmt::Write;

use crate::raw_node::Ready;
use crate::types::{ConfChange, Entry, EntryKind, Message, MessageBody, decode_election_timeout};

/// `term/index` followed by the payload: `"text"` for printable data, `noop` for an
/// empty normal entry, `cc:add-voter(4)` or `election-timeout(20)` for config entries.
pub fn entry(e: &Entry) -> String {
    let mut s = format!("{}/{} ", e.term, e.index);
    match e.kind {
        EntryKind::Normal if e.data.is_empty() => s.push_str("noop"),
        EntryKind::Normal => {
            if e.data.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                let _ = write!(s, "{:?}", String::from_utf8_lossy(&e.data));
            } else {
                let _ = write!(s, "<{} bytes>", e.data.len());
            }
        }
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Some(ConfChange::AddVoter(id)) => {
                let _ = write!(s, "cc:add-voter({id})");
            }
            Some(ConfChange::AddLearner(id)) => {
                let _ = write!(s, "cc:add-learner({id})");
            }
            Some(ConfChange::RemoveNode(id)) => {
                let _ = write!(s, "cc:remove({id})");
            }
            Some(ConfChange::Bootstrap(ids)) => {
                let _ = write!(s, "cc:bootstrap{ids:?}");
            }
            None => s.push_str("cc:<malformed>"),
        },
        EntryKind::ElectionTimeout => match decode_election_timeout(&e.data) {
            Some(t) => {
                let _ = write!(s, "election-timeout({t})");
            }
            None => s.push_str("election-timeout(<malformed>)"),
        },
    }
    s
}

/// A bracketed list of entries.
pub fn entries(ents: &[Entry]) -> String {
    let parts: Vec<String> = ents.iter().map(entry).collect();
    format!("[{}]", parts.join(", "))
}

/// `from->to name term=T fields...`
pub fn message(m: &Message) -> String {
    let mut s = format!("{}->{} {} term={}", m.from, m.to, m.body.name(), m.term);
    match &m.body {
        MessageBody::Append { prev_index, prev_term, commit, entries: ents } => {
            let _ = write!(s, " prev={prev_term}/{prev_index} commit={commit}");
            if !ents.is_empty() {
                let _ = write!(s, " {}", entries(ents));
            }
        }
        MessageBody::AppendResponse { index, reject, hint_index, hint_term } => {
            if *reject {
                let _ = write!(s, " reject index={index} hint={hint_term}/{hint_index}");
            } else {
                let _ = write!(s, " index={index}");
            }
        }
        MessageBody::Heartbeat { commit, ctx } => {
            let _ = write!(s, " commit={commit} ctx={ctx}");
        }
        MessageBody::HeartbeatResponse { ctx } => {
            let _ = write!(s, " ctx={ctx}");
        }
        MessageBody::Vote { last_index, last_term, transfer, .. } => {
            let _ = write!(s, " last={last_term}/{last_index}");
            if *transfer {
                s.push_str(" transfer");
            }
        }
        MessageBody::VoteResponse { reject, commit, commit_term, .. } => {
            s.push_str(if *reject { " reject" } else { " grant" });
            if *commit > 0 {
                let _ = write!(s, " commit={commit_term}/{commit}");
            }
        }
        MessageBody::Snapshot { snapshot } => {
            let m = &snapshot.meta;
            let _ = write!(
                s,
                " snap={}/{} voters={:?} learners={:?}",
                m.term, m.index, m.conf_state.voters, m.conf_state.learners
            );
        }
        MessageBody::TimeoutNow => {}
        MessageBody::Propose { entries: ents } => {
            let _ = write!(s, " {}", entries(ents));
        }
        MessageBody::ReadIndex { ctx } => {
            let _ = write!(s, " ctx={ctx}");
        }
        MessageBody::ReadIndexResponse { ctx, index } => {
            let _ = write!(s, " ctx={ctx} index={index}");
        }
        MessageBody::TransferLeader { target } => {
            let _ = write!(s, " target={target}");
        }
    }
    s
}

/// A multi-line description of a Ready, one item per line; empty parts are omitted.
pub fn ready(rd: &Ready) -> String {
    let mut s = String::new();
    if let Some(ss) = rd.soft_state {
        let _ = writeln!(s, "role={} leader={}", ss.role.name(), ss.leader);
    }
    if let Some(hs) = rd.hard_state {
        let _ = writeln!(s, "hard-state term={} vote={} commit={}", hs.term, hs.vote, hs.commit);
    }
    if let Some(snap) = &rd.snapshot {
        let m = &snap.meta;
        let _ = writeln!(
            s,
            "snapshot {}/{} voters={:?} learners={:?}",
            m.term, m.index, m.conf_state.voters, m.conf_state.learners
        );
    }
    if !rd.entries.is_empty() {
        let _ = writeln!(s, "entries: {}", entries(&rd.entries));
    }
    if !rd.entries.is_empty() || rd.snapshot.is_some() || rd.hard_state.is_some() {
        let _ = writeln!(s, "must-sync={}", rd.must_sync);
    }
    if !rd.committed_entries.is_empty() {
        let _ = writeln!(s, "committed: {}", entries(&rd.committed_entries));
    }
    for m in &rd.messages {
        let _ = writeln!(s, "send {}", message(m));
    }
    for m in &rd.persisted_messages {
        let _ = writeln!(s, "send-after-persist {}", message(m));
    }
    for r in &rd.read_states {
        let _ = writeln!(s, "read-state ctx={} index={}", r.ctx, r.index);
    }
    s
}
