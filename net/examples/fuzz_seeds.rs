//! Writes a seed corpus for the fuzz targets in `net/fuzz`: one valid frame of every
//! peer kind, and a set of RESP requests and replies. Checksummed frames are hard for a
//! fuzzer to synthesise from nothing; starting from valid ones lets it spend its time
//! mutating real structure. Usage: `cargo run -p skiff-net --example fuzz_seeds DIR`.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use skiff_engine::{ConfState, Entry, EntryKind, Message, MessageBody, Snapshot, SnapshotMeta};
use skiff_net::frame::FrameKind;
use skiff_net::handshake::{Hello, Refusal};
use skiff_net::message::{AppFrame, Encoder};
use skiff_net::resp::{RespValue, encode_reply, encode_request};

fn main() -> std::io::Result<()> {
    let dir: PathBuf =
        std::env::args_os().nth(1).expect("usage: fuzz_seeds DIR (the fuzz crate's corpus directory)").into();
    let peer = dir.join("peer_frame");
    std::fs::create_dir_all(&peer)?;
    let mut enc = Encoder::new(1 << 20);
    let entries = |n: usize| -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                term: 2,
                index: 10 + i as u64,
                kind: if i == 1 { EntryKind::ConfChange } else { EntryKind::Normal },
                data: Bytes::from(vec![b'a' + i as u8; i * 3]),
            })
            .collect()
    };
    let bodies = [
        MessageBody::Append { prev_index: 9, prev_term: 2, commit: 8, entries: entries(3) },
        MessageBody::AppendResponse { index: 12, reject: true, hint_index: 5, hint_term: 1 },
        MessageBody::Heartbeat { commit: 8, ctx: 3 },
        MessageBody::HeartbeatResponse { ctx: 3 },
        MessageBody::Vote { pre: true, last_index: 12, last_term: 2, transfer: false },
        MessageBody::VoteResponse { pre: false, reject: true, commit: 7, commit_term: 2 },
        MessageBody::Snapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 100,
                    term: 3,
                    conf_state: ConfState { voters: vec![1, 2, 3], learners: vec![4] },
                    election_timeout_ticks: 10,
                },
                data: Bytes::from_static(b"state"),
            },
        },
        MessageBody::TimeoutNow,
        MessageBody::Propose { entries: entries(2) },
        MessageBody::ReadIndex { ctx: 4 },
        MessageBody::ReadIndexResponse { ctx: 4, index: 99 },
        MessageBody::TransferLeader { target: 3 },
    ];
    let mut frames = Vec::new();
    for body in bodies {
        let name = body.name();
        let msg = Message { from: 1, to: 2, term: 3, body };
        frames.push((name.to_string(), enc.message(&msg).expect("fits").to_contiguous()));
    }
    let hello = Hello::new(7, 1, 0).encode();
    frames.push(("hello".into(), enc.raw(FrameKind::Hello, &hello).expect("fits").to_contiguous()));
    frames.push((
        "refuse".into(),
        enc.raw(FrameKind::HelloRefuse, &Refusal::WrongCluster.encode("other cluster")).expect("fits").to_contiguous(),
    ));
    frames.push((
        "app".into(),
        enc.app(&AppFrame { tag: 1, body: Bytes::from_static(b"relay") }).expect("fits").to_contiguous(),
    ));
    // The target's first byte is the read size; 7 splits frames across reads.
    let mut all = vec![7u8];
    for (name, frame) in &frames {
        let mut seed = vec![255u8];
        seed.extend_from_slice(frame);
        std::fs::write(peer.join(name), seed)?;
        all.extend_from_slice(frame);
    }
    std::fs::write(peer.join("all_in_small_reads"), all)?;

    // RESP: the first byte's low bit picks requests (0) or replies (1), the rest the
    // read size.
    let resp = dir.join("resp");
    std::fs::create_dir_all(&resp)?;
    let mut requests = BytesMut::new();
    encode_request(&["SET", "key", "value"], &mut requests);
    encode_request(&["MGET", "a", "b", "c"], &mut requests);
    requests.extend_from_slice(b"PING\r\nSET k \"a b\\x41\" 'it\\'s'\r\n*0\r\n");
    let mut replies = BytesMut::new();
    for v in [
        RespValue::Simple(Bytes::from_static(b"OK")),
        RespValue::Error(Bytes::from_static(b"ERR no")),
        RespValue::Integer(-42),
        RespValue::Bulk(Bytes::from_static(b"bulk")),
        RespValue::NullBulk,
        RespValue::NullArray,
        RespValue::Array(vec![RespValue::Integer(1), RespValue::Array(vec![RespValue::Bulk(Bytes::new())])]),
    ] {
        encode_reply(&v, &mut replies);
    }
    for (name, mode, bytes) in [
        ("requests_whole", 254, &requests),
        ("requests_drip", 2, &requests),
        ("replies_whole", 255, &replies),
        ("replies_drip", 3, &replies),
    ] {
        let mut seed = vec![mode];
        seed.extend_from_slice(bytes);
        std::fs::write(resp.join(name), seed)?;
    }
    Ok(())
}
