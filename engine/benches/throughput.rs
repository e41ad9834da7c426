//! Engine throughput, side by side with tikv's raft-rs 0.7 in the same process and run:
//! three in-memory members on one thread, 100-byte proposals in batches of 256,
//! messages delivered in memory, entries "persisted" into in-memory storage, until
//! 2,000,000 entries are committed on the leader.
//!
//! `cargo bench -p skiff-engine` prints both throughputs and `engine_vs_raftrs_ratio`.
//! `--entries N` changes the target; `--rounds N` (default 5) runs both sides back to back N
//! times and reports the median of the per-round ratios; `--only skiff|raftrs` runs one
//! side once (for profilers).

// A benchmark measures wall-clock time; the purity lints are for engine code.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use std::time::Instant;

use bytes::Bytes;

const PAYLOAD_BYTES: usize = 100;
const BATCH_ENTRIES: usize = 256;
const TARGET_ENTRIES_DEFAULT: u64 = 2_000_000;

/// One batch of proposals as the client port produces them: each payload is a
/// zero-copy slice of the buffer its request arrived in (the RESP codec slices bulk
/// strings out of the connection's receive buffer), one buffer per batch. Both engines
/// get identical payloads.
fn payloads(seed: u8) -> impl Iterator<Item = Bytes> {
    let buf = Bytes::from(vec![seed; PAYLOAD_BYTES * BATCH_ENTRIES]);
    (0..BATCH_ENTRIES).map(move |i| buf.slice(i * PAYLOAD_BYTES..(i + 1) * PAYLOAD_BYTES))
}

mod skiff {
    use super::*;
    use skiff_engine::{Config, Entry, MemStorage, Message, RawNode, Role};

    pub fn run(target: u64) -> (u64, f64) {
        let ids = [1u64, 2, 3];
        let mut nodes: Vec<RawNode<MemStorage>> = ids
            .iter()
            .map(|&id| {
                let mut cfg = Config::new(id);
                cfg.max_uncommitted_bytes = 0;
                RawNode::bootstrap(&cfg, MemStorage::new(), &ids).expect("bootstrap")
            })
            .collect();
        let mut inbox: Vec<Message> = Vec::new();
        let mut committed_on_leader = 0u64;
        // Apply the bootstrap entries first: a member does not campaign while a
        // committed membership change is unapplied.
        for node in nodes.iter_mut() {
            let rd = node.ready();
            node.storage_mut().append(&rd.entries);
            if let Some(hs) = rd.hard_state {
                node.storage_mut().set_hard_state(hs);
            }
            node.advance(rd);
            let rd = node.ready();
            node.advance(rd);
        }
        nodes[0].campaign();
        let start = Instant::now();
        let mut proposed = 0u64;
        let mut seed = 0u8;
        loop {
            if nodes[0].role() == Role::Leader && proposed < target + BATCH_ENTRIES as u64 {
                seed = seed.wrapping_add(1);
                let batch: Vec<Entry> = payloads(seed).map(Entry::new).collect();
                nodes[0].propose_batch(batch).expect("leader accepts");
                proposed += BATCH_ENTRIES as u64;
            }
            for (i, node) in nodes.iter_mut().enumerate() {
                if !node.has_ready() {
                    continue;
                }
                let mut rd = node.ready();
                inbox.append(&mut rd.messages);
                let store = node.storage_mut();
                store.append_owned(std::mem::take(&mut rd.entries));
                if let Some(hs) = rd.hard_state {
                    store.set_hard_state(hs);
                }
                inbox.append(&mut rd.persisted_messages);
                if i == 0 {
                    committed_on_leader +=
                        rd.committed_entries.iter().filter(|e| e.data.len() == PAYLOAD_BYTES).count() as u64;
                }
                node.advance(rd);
            }
            for m in inbox.drain(..) {
                nodes[(m.to - 1) as usize].step(m);
            }
            if committed_on_leader >= target {
                break;
            }
        }
        (committed_on_leader, start.elapsed().as_secs_f64())
    }
}

mod raftrs {
    use super::*;
    use raft::StateRole;
    use raft::prelude::*;
    use raft::storage::MemStorage;

    pub fn run(target: u64) -> (u64, f64) {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let ids = [1u64, 2, 3];
        let mut nodes: Vec<RawNode<MemStorage>> = ids
            .iter()
            .map(|&id| {
                let cfg = raft::Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 1,
                    max_size_per_msg: 1 << 20,
                    max_inflight_msgs: 512,
                    check_quorum: true,
                    pre_vote: true,
                    ..Default::default()
                };
                let store = MemStorage::new_with_conf_state((ids.to_vec(), vec![]));
                RawNode::new(&cfg, store, &logger).expect("raft-rs node")
            })
            .collect();
        let mut inbox: Vec<Message> = Vec::new();
        let mut committed_on_leader = 0u64;
        nodes[0].campaign().expect("campaign");
        let start = Instant::now();
        let mut proposed = 0u64;
        let mut seed = 0u8;
        loop {
            if nodes[0].raft.state == StateRole::Leader && proposed < target + BATCH_ENTRIES as u64 {
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgPropose);
                m.from = 1;
                seed = seed.wrapping_add(1);
                let ents: Vec<Entry> = payloads(seed).map(|data| Entry { data, ..Default::default() }).collect();
                m.set_entries(ents.into());
                nodes[0].step(m).expect("leader accepts");
                proposed += BATCH_ENTRIES as u64;
            }
            for (i, node) in nodes.iter_mut().enumerate() {
                if !node.has_ready() {
                    continue;
                }
                let mut rd = node.ready();
                inbox.extend(rd.take_messages());
                let store = node.raft.raft_log.store.clone();
                if !rd.entries().is_empty() {
                    store.wl().append(rd.entries()).expect("append");
                }
                if let Some(hs) = rd.hs() {
                    store.wl().set_hardstate(hs.clone());
                }
                inbox.extend(rd.take_persisted_messages());
                let count = |ents: &[Entry]| ents.iter().filter(|e| e.data.len() == PAYLOAD_BYTES).count() as u64;
                if i == 0 {
                    committed_on_leader += count(rd.committed_entries());
                }
                let mut light = node.advance(rd);
                if let Some(commit) = light.commit_index() {
                    store.wl().mut_hard_state().set_commit(commit);
                }
                inbox.extend(light.take_messages());
                if i == 0 {
                    committed_on_leader += count(light.committed_entries());
                }
                node.advance_apply();
            }
            for m in inbox.drain(..) {
                nodes[(m.to - 1) as usize].step(m).expect("step");
            }
            if committed_on_leader >= target {
                break;
            }
        }
        (committed_on_leader, start.elapsed().as_secs_f64())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag =
        |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(|v| v.parse().expect(name));
    let target: u64 = flag("--entries").unwrap_or(TARGET_ENTRIES_DEFAULT);
    let rounds: u64 = flag("--rounds").unwrap_or(5);
    println!(
        "workload: 3 members, one thread, {PAYLOAD_BYTES}-byte proposals in batches of {BATCH_ENTRIES}, until {target} entries commit on the leader; {rounds} rounds, both sides back to back"
    );
    if let Some(side) = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)) {
        // For profilers: one side, one round.
        let (n, secs) = if side == "skiff" { skiff::run(target) } else { raftrs::run(target) };
        println!("{side}: {n} entries in {secs:.3} s = {:.3} M entries/s", n as f64 / secs / 1e6);
        return;
    }
    // Each round runs both sides back to back; their ratio within a round is robust to
    // slow drifts in machine load, and the median over rounds to one-off spikes.
    let mut ratios = Vec::new();
    let mut best_skiff = 0f64;
    let mut best_raftrs = 0f64;
    for round in 1..=rounds {
        let (n, secs) = raftrs::run(target);
        let r = n as f64 / secs;
        println!("round {round}: raft-rs 0.7     {n} entries in {secs:.3} s = {:.3} M entries/s", r / 1e6);
        let (n, secs) = skiff::run(target);
        let s = n as f64 / secs;
        println!(
            "round {round}: skiff-engine    {n} entries in {secs:.3} s = {:.3} M entries/s   ratio {:.2}",
            s / 1e6,
            s / r
        );
        best_raftrs = best_raftrs.max(r);
        best_skiff = best_skiff.max(s);
        ratios.push(s / r);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    println!("raftrs_entries_per_sec_best={best_raftrs:.0}");
    println!("engine_entries_per_sec_best={best_skiff:.0}");
    println!("engine_vs_raftrs_ratio={:.2}", ratios[ratios.len() / 2]);
}
