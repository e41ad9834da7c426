//! Bad input never panics. Members are fed random messages — random kinds, senders
//! (members, strangers, 0, themselves), terms and indexes (small, current, off by one,
//! huge, `u64::MAX`) — interleaved with normal traffic:
//!
//! - whatever arrives, nothing panics;
//! - a malformed message (sender 0 or self, misaddressed, a position beyond what any
//!   log can reach, a term where none belongs) is refused and changes nothing.
//!
//! Well-formed messages that lie (a forged append from the current leader) can corrupt
//! a member: Raft does not tolerate Byzantine peers, which is why the transport
//! authenticates them (cluster id, member id, checksums) before anything reaches the
//! engine.

use bytes::Bytes;
use skiff_engine::{
    ConfState, Config, Entry, EntryKind, MemStorage, Message, MessageBody, RawNode, Snapshot, SnapshotMeta,
};

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
        self.next() % n
    }
    /// A value a fuzzer would try: small, near `around`, huge or extreme.
    fn interesting(&mut self, around: u64) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => around,
            2 => around.saturating_sub(1),
            3 => around.saturating_add(1),
            4 => self.below(20),
            5 => u64::MAX,
            6 => u64::MAX / 2 + self.below(3),
            _ => self.next(),
        }
    }
}

fn garbage(r: &mut Rng, to: u64, term: u64, last: u64) -> Message {
    let from = [0, 1, 2, 3, 9, u64::MAX][r.below(6) as usize];
    let t = r.interesting(term);
    let i = r.interesting(last);
    let body = match r.below(13) {
        0 => {
            let n = r.below(4);
            let entries = (0..n)
                .map(|k| Entry {
                    term: r.interesting(term),
                    index: if r.below(2) == 0 { i.wrapping_add(1 + k) } else { r.interesting(last) },
                    kind: [EntryKind::Normal, EntryKind::ConfChange, EntryKind::ElectionTimeout][r.below(3) as usize],
                    data: Bytes::from(vec![r.next() as u8; r.below(12) as usize]),
                })
                .collect();
            MessageBody::Append { prev_index: i, prev_term: r.interesting(term), commit: r.interesting(last), entries }
        }
        1 => MessageBody::AppendResponse {
            index: i,
            reject: r.below(2) == 0,
            hint_index: r.interesting(last),
            hint_term: r.interesting(term),
        },
        2 => MessageBody::Heartbeat { commit: i, ctx: r.next() },
        3 => MessageBody::HeartbeatResponse { ctx: r.next() },
        4 => MessageBody::Vote {
            pre: r.below(2) == 0,
            last_index: i,
            last_term: r.interesting(term),
            transfer: r.below(2) == 0,
        },
        5 => MessageBody::VoteResponse {
            pre: r.below(2) == 0,
            reject: r.below(2) == 0,
            commit: r.below(64),
            commit_term: r.below(8),
        },
        6 => {
            let voters: Vec<u64> = (0..r.below(4)).map(|_| r.below(5)).collect();
            MessageBody::Snapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index: i,
                        term: r.interesting(term),
                        conf_state: ConfState { voters, learners: vec![] },
                        election_timeout_ticks: r.next() as u32,
                    },
                    data: Bytes::new(),
                },
            }
        }
        7 => MessageBody::TimeoutNow,
        8 => MessageBody::Propose { entries: vec![Entry::new(Bytes::from_static(b"g"))] },
        9 => MessageBody::ReadIndex { ctx: r.next() },
        10 => MessageBody::ReadIndexResponse { ctx: r.next(), index: i },
        11 => MessageBody::TransferLeader { target: r.interesting(3) },
        _ => MessageBody::Propose { entries: vec![] },
    };
    let to = if r.below(10) == 0 { r.interesting(to) } else { to };
    Message { from, to, term: t, body }
}

/// Handles every member's Ready synchronously and delivers messages until quiet (or
/// for a bounded number of rounds).
fn settle(nodes: &mut [RawNode<MemStorage>], rounds: usize) {
    for _ in 0..rounds {
        let mut msgs = Vec::new();
        for n in nodes.iter_mut() {
            if !n.has_ready() {
                continue;
            }
            let mut rd = n.ready();
            msgs.append(&mut rd.messages);
            if let Some(s) = rd.snapshot.clone() {
                n.storage_mut().apply_snapshot(s);
            }
            n.storage_mut().append(&rd.entries);
            if let Some(hs) = rd.hard_state {
                n.storage_mut().set_hard_state(hs);
            }
            msgs.append(&mut rd.persisted_messages);
            for e in &rd.committed_entries {
                if e.kind == EntryKind::ConfChange
                    && let Some(cc) = skiff_engine::ConfChange::decode(&e.data)
                {
                    n.apply_conf_change(cc);
                }
            }
            n.advance(rd);
        }
        if msgs.is_empty() {
            return;
        }
        for m in msgs {
            if (1..=nodes.len() as u64).contains(&m.to) {
                nodes[(m.to - 1) as usize].step(m);
            }
        }
    }
}

fn cluster(seed: u64) -> Vec<RawNode<MemStorage>> {
    let ids = [1u64, 2, 3];
    let mut nodes: Vec<RawNode<MemStorage>> = ids
        .iter()
        .map(|&id| {
            let mut cfg = Config::new(id);
            cfg.check_quorum = seed.is_multiple_of(2);
            cfg.pre_vote = !seed.is_multiple_of(3);
            RawNode::bootstrap(&cfg, MemStorage::new(), &ids).expect("bootstrap")
        })
        .collect();
    settle(&mut nodes, 10);
    nodes[0].campaign();
    settle(&mut nodes, 50);
    nodes
}

#[test]
fn random_messages_never_panic() {
    for seed in 0..40 {
        let mut r = Rng(seed);
        let mut nodes = cluster(seed);
        for step in 0..3000 {
            let k = r.below(3) as usize;
            match r.below(10) {
                0..=5 => {
                    let (term, last) = (nodes[k].term(), nodes[k].last_index());
                    let m = garbage(&mut r, k as u64 + 1, term, last);
                    nodes[k].step(m);
                }
                6 => {
                    let _ = nodes[k].propose(Bytes::from(format!("p{step}")));
                }
                7 => {
                    let _ = nodes[k].read_index(step);
                }
                8 => nodes[k].tick(),
                _ => settle(&mut nodes, 3),
            }
        }
        let malformed: u64 = nodes.iter().map(|n| n.stats().msgs_malformed).sum();
        assert!(malformed > 100, "seed {seed}: some garbage was refused as malformed ({malformed})");
    }
}

/// Makes `m` malformed in one of the ways the engine must detect.
fn spoil(r: &mut Rng, mut m: Message, to: u64) -> Message {
    m.to = to;
    match r.below(6) {
        0 => m.from = 0,
        1 => m.from = to,
        2 => m.to = to + 1 + r.below(5),
        3 => {
            // A term-less relayed request with a term, or a term-carrying one without.
            m.term = if matches!(
                m.body,
                MessageBody::Propose { .. } | MessageBody::ReadIndex { .. } | MessageBody::TransferLeader { .. }
            ) {
                1 + r.below(5)
            } else {
                0
            };
        }
        4 => m.term = (1 << 62) + 1 + r.below(1000),
        _ => {
            m.from = 2;
            m.body = MessageBody::Append {
                prev_index: u64::MAX - r.below(3),
                prev_term: 1,
                commit: 0,
                entries: vec![Entry::new(Bytes::from_static(b"x"))],
            };
        }
    }
    m
}

#[test]
fn malformed_messages_change_nothing() {
    for seed in 0..20 {
        let mut r = Rng(seed ^ 0xBAD);
        let mut nodes = cluster(seed);
        for _ in 0..2000 {
            let k = r.below(3) as usize;
            let to = k as u64 + 1;
            let (term, last) = (nodes[k].term(), nodes[k].last_index());
            let g = garbage(&mut r, to, term, last);
            let m = spoil(&mut r, g, to);
            let before = nodes[k].status();
            let has_ready = nodes[k].has_ready();
            nodes[k].step(m.clone());
            let after = nodes[k].status();
            assert_eq!(after.stats.msgs_malformed, before.stats.msgs_malformed + 1, "seed {seed}: not refused: {m:?}");
            let mut expected = before.clone();
            expected.stats = after.stats;
            assert_eq!(after, expected, "seed {seed}: refused message changed state: {m:?}");
            assert_eq!(nodes[k].has_ready(), has_ready, "seed {seed}: refused message produced output: {m:?}");
            if r.below(20) == 0 {
                settle(&mut nodes, 5);
            }
        }
    }
}
