//! Live socket tests on 127.0.0.1: real transports talking, and hostile or broken
//! clients that must be rejected (and counted) without disturbing a well-behaved peer.

use std::time::Duration;

use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use skiff_engine::{Entry, EntryKind, Message, MessageBody};
use skiff_net::frame::{FRAME_HEADER_BYTES, FrameDecoder, FrameHeader, FrameKind};
use skiff_net::handshake::{Hello, Refusal};
use skiff_net::message::{AppFrame, Encoder};
use skiff_net::{Inbound, Lane, RejectReason, SendError, Transport};
use zerocopy::IntoBytes;

use crate::support::*;

#[test]
fn raft_messages_and_app_frames_flow_both_ways() {
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        let entries: Vec<Entry> = (1..=3)
            .map(|i| Entry {
                term: 2,
                index: i,
                kind: EntryKind::Normal,
                data: Bytes::from(vec![i as u8; 100 * i as usize]),
            })
            .collect();
        let app = Message {
            from: 1,
            to: 2,
            term: 2,
            body: MessageBody::Append { prev_index: 0, prev_term: 0, commit: 0, entries },
        };
        t1.send(app.clone()).unwrap();
        assert_eq!(recv(&t2).await, Inbound::Raft(app));
        let frame = AppFrame { tag: 9, body: Bytes::from_static(b"relayed request") };
        t2.send_app(1, &frame, Lane::Bulk).unwrap();
        assert_eq!(recv(&t1).await, Inbound::App { from: 2, frame });
        t2.send(heartbeat(2, 1, 5)).unwrap();
        assert_eq!(recv(&t1).await, Inbound::Raft(heartbeat(2, 1, 5)));
        assert_eq!(t1.stats().frames_sent.get(), 1);
        assert_eq!(t2.stats().frames_received.get(), 1);
        assert!(RejectReason::ALL.iter().all(|r| t1.stats().rejected(*r) == 0));
        // Per-peer traffic: node 1 sent one frame to 2 and got two from it.
        wait_until(|| t2.peer_traffic(1).is_some_and(|t| t.frames_out == 2)).await;
        let (a, b) = (t1.peer_traffic(2).unwrap(), t2.peer_traffic(1).unwrap());
        assert_eq!((a.frames_out, a.frames_in, b.frames_out, b.frames_in), (1, 2, 2, 1));
        assert_eq!(a.bytes_out, b.bytes_in, "what one side sent, the other received");
        assert!(a.bytes_out > 600, "three payloads of 100, 200 and 300 bytes: {a:?}");
        assert_eq!(t1.peer_traffic(99), None);
        // A message to a peer that is not connected is dropped and counted for it.
        assert!(t1.send(heartbeat(1, 3, 1)).is_err());
        assert_eq!(t1.peer_traffic(3).unwrap().dropped, 1);
    });
}

/// One hostile connection per case, each rejected for its own reason and closed,
/// while node 2 keeps being served and nothing the attacker sent reaches node 1's loop.
#[test]
fn hostile_frames_close_only_their_connection_and_are_counted() {
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        let hb3 = frame(FrameKind::Heartbeat, &{
            let m = heartbeat(3, 1, 1);
            let wire = Encoder::new(1 << 20).message(&m).unwrap().to_contiguous();
            wire[FRAME_HEADER_BYTES..].to_vec()
        });
        let cap = skiff_net::frame::FRAME_BODY_BYTES_MAX_DEFAULT;
        let oversized = FrameHeader::new(FrameKind::Append, cap + 1, 0).as_bytes().to_vec();
        let mut bad_version = FrameHeader::new(FrameKind::Heartbeat, 0, 0);
        bad_version.version = 2;
        let mut bad_crc = hb3.clone();
        *bad_crc.last_mut().unwrap() ^= 0x10;
        let wrong_endpoint = {
            let wire = Encoder::new(1 << 20).message(&heartbeat(2, 1, 1)).unwrap();
            wire.to_contiguous().to_vec()
        };
        let cases: Vec<(&str, bool, Vec<u8>, bool, RejectReason)> = vec![
            ("oversized length", true, oversized.clone(), false, RejectReason::Oversized),
            (
                "oversized before handshake",
                false,
                FrameHeader::new(FrameKind::Hello, 10_000, 0).as_bytes().to_vec(),
                false,
                RejectReason::Oversized,
            ),
            ("garbage", false, b"GET / HTTP/1.1\r\n\r\n".to_vec(), false, RejectReason::BadMagic),
            ("garbage after handshake", true, b"\x00\x01garbage".to_vec(), false, RejectReason::BadMagic),
            ("other version", true, bad_version.as_bytes().to_vec(), false, RejectReason::BadVersion),
            ("body checksum", true, bad_crc, false, RejectReason::BodyChecksum),
            ("undecodable body", true, frame(FrameKind::Append, b"short"), false, RejectReason::Undecodable),
            ("impersonation", true, wrong_endpoint, false, RejectReason::WrongEndpoint),
            ("second hello", true, hello(CLUSTER, 3, 0), false, RejectReason::UnexpectedKind),
            ("raft before hello", false, hb3.clone(), false, RejectReason::UnexpectedKind),
            ("truncated then close", true, hb3[..hb3.len() / 2].to_vec(), true, RejectReason::Truncated),
        ];
        for (i, (name, handshake, bytes, close, reason)) in cases.into_iter().enumerate() {
            let before = t1.stats().rejected(reason);
            let mut s = connect(t1.local_addr()).await;
            if handshake {
                write(&mut s, &hello(CLUSTER, 3, 0)).await;
            }
            write(&mut s, &bytes).await;
            if close {
                s.close().await.unwrap();
            }
            let answer = read_until_closed(&mut s).await;
            if handshake {
                assert_eq!(answer.len(), FRAME_HEADER_BYTES + 21, "{name}: only a HelloAccept");
            }
            wait_until(|| t1.stats().rejected(reason) > before).await;
            assert_eq!(t1.stats().rejected(reason), before + 1, "{name}");
            still_serves(&t2, &t1, 100 + i as u64).await;
            assert!(t1.try_recv().is_none(), "{name}: nothing from the attacker");
        }
    });
}

#[test]
fn handshake_refusals_are_sent_with_their_reason() {
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        let mut bad_version = Hello::new(CLUSTER, 3, 0);
        bad_version.version = 9;
        let cases = [
            (hello(CLUSTER + 1, 3, 0), Refusal::WrongCluster, RejectReason::WrongCluster),
            (hello(CLUSTER, 9, 0), Refusal::UnknownNode, RejectReason::UnknownNode),
            (hello(CLUSTER, 1, 0), Refusal::UnknownNode, RejectReason::UnknownNode),
            (hello(CLUSTER, 3, 1), Refusal::WrongShard, RejectReason::WrongShard),
            (
                frame(FrameKind::Hello, &bad_version.encode()),
                Refusal::UnsupportedVersion,
                RejectReason::UnsupportedVersion,
            ),
        ];
        for (i, (hello_bytes, refusal, reason)) in cases.into_iter().enumerate() {
            let before = t1.stats().rejected(reason);
            let mut s = connect(t1.local_addr()).await;
            write(&mut s, &hello_bytes).await;
            // Whatever follows the refused hello must never be delivered.
            write(&mut s, &frame(FrameKind::Heartbeat, &[0; 40])).await;
            let mut answer = bytes::BytesMut::from(&read_until_closed(&mut s).await[..]);
            let f = FrameDecoder::new(1024).decode(&mut answer).unwrap().expect("a refusal frame");
            assert_eq!(f.kind, FrameKind::HelloRefuse);
            let (got, text) = Refusal::decode(&f.body).unwrap();
            assert_eq!(got, refusal);
            assert!(text.contains("refuses"), "{text}");
            assert_eq!(t1.stats().rejected(reason), before + 1);
            still_serves(&t2, &t1, i as u64).await;
            assert!(t1.try_recv().is_none());
        }
        // A whole transport of another cluster is refused, never connects, and counts
        // the refusal on its side.
        let mut c = config(2, vec![(1, t1.local_addr())]);
        c.cluster_id = CLUSTER + 1;
        let stranger = Transport::start(c, listener()).unwrap();
        wait_until(|| stranger.stats().rejected(RejectReason::RefusedByPeer) >= 2).await;
        assert!(!stranger.is_connected(1));
        assert_eq!(stranger.send(heartbeat(2, 1, 0)), Err(SendError::Disconnected(1)));
        assert!(t1.try_recv().is_none());
    });
}

#[test]
fn slow_drip_sender_is_assembled_while_others_are_served() {
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        let mut wire = hello(CLUSTER, 3, 0);
        let hb = Encoder::new(1 << 20).message(&heartbeat(3, 1, 77)).unwrap();
        wire.extend_from_slice(&hb.to_contiguous());
        let mut s = connect(t1.local_addr()).await;
        let mut served = 0;
        for (i, b) in wire.iter().enumerate() {
            write(&mut s, &[*b]).await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
            if i % 8 == 0 {
                still_serves(&t2, &t1, 1000 + i as u64).await;
                served += 1;
            }
        }
        assert_eq!(recv(&t1).await, Inbound::Raft(heartbeat(3, 1, 77)));
        assert!(served >= wire.len() / 8, "node 2 was served throughout the drip");
        assert!(RejectReason::ALL.iter().all(|r| t1.stats().rejected(*r) == 0));
    });
}

#[test]
fn a_thousand_idle_connections_do_not_starve_a_peer() {
    const IDLE: usize = 1000;
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        let mut idle = Vec::with_capacity(IDLE);
        let partial_hello = hello(CLUSTER, 3, 0);
        for i in 0..IDLE {
            let mut s = connect(t1.local_addr()).await;
            if i % 2 == 0 {
                // Half stall in the middle of their handshake.
                write(&mut s, &partial_hello[..10]).await;
            }
            idle.push(s);
            if i % 100 == 0 {
                still_serves(&t2, &t1, i as u64).await;
            }
        }
        wait_until(|| t1.inbound_connections() == IDLE + 1).await;
        for ctx in 0..20 {
            still_serves(&t2, &t1, 10_000 + ctx).await;
        }
        // Listener, dialers to nodes 2 and 3, and the reader of node 2's connection,
        // plus one reader per idle connection.
        assert_eq!(t1.running_tasks(), 4 + IDLE);
        drop(idle);
        wait_until(|| t1.inbound_connections() == 1).await;
        wait_until(|| t1.running_tasks() == 4).await;
        still_serves(&t2, &t1, 99_999).await;
        // Those that hung up mid-handshake are counted as truncated; nothing else is.
        for r in RejectReason::ALL {
            let want = if r == RejectReason::Truncated { IDLE as u64 / 2 } else { 0 };
            assert_eq!(t1.stats().rejected(r), want, "{}", r.name());
        }
    });
}

#[test]
fn connections_over_the_limit_are_refused() {
    run(|| async {
        let (t1, t2) = pair(|id, c| {
            if id == 1 {
                c.inbound_connections_max = 2;
            }
        })
        .await;
        let _first = connect(t1.local_addr()).await;
        wait_until(|| t1.inbound_connections() == 2).await;
        let mut over = connect(t1.local_addr()).await;
        let mut answer = bytes::BytesMut::from(&read_until_closed(&mut over).await[..]);
        let f = FrameDecoder::new(1024).decode(&mut answer).unwrap().unwrap();
        assert_eq!(Refusal::decode(&f.body).unwrap().0, Refusal::ConnectionLimit);
        assert_eq!(t1.stats().rejected(RejectReason::ConnectionLimit), 1);
        still_serves(&t2, &t1, 1).await;
    });
}

#[test]
fn full_queues_drop_and_report_unreachable_without_blocking() {
    run(|| async {
        let (t1, t2) = pair(|id, c| {
            c.frame_body_bytes_max = 1 << 20;
            if id == 1 {
                c.queue.bulk.messages_max = 8;
            } else {
                c.inbound_messages_max = 1;
            }
        })
        .await;
        let mut unreachable = Vec::new();
        t1.take_unreachable(&mut unreachable);
        assert!(unreachable.is_empty() || unreachable == [3], "{unreachable:?}");
        unreachable.clear();
        // `send` is synchronous: this loop cannot block, and must hit the bound.
        let mut sent = 0;
        let full = (1..=1000).find_map(|i| match t1.send(append(1, 2, i, 64 << 10)) {
            Ok(()) => {
                sent += 1;
                None
            }
            Err(e) => Some(e),
        });
        assert_eq!(full, Some(SendError::QueueFull(2)));
        assert_eq!(sent, 8);
        // Control traffic still has its own room.
        t1.send(heartbeat(1, 2, 1)).unwrap();
        assert_eq!(t1.stats().dropped_queue_full.get(), 1);
        assert_eq!(t1.send(heartbeat(1, 3, 1)), Err(SendError::Disconnected(3)));
        assert_eq!(t1.send(heartbeat(1, 99, 1)), Err(SendError::UnknownPeer(99)));
        assert!(matches!(t1.send(append(1, 2, 1, 2 << 20)), Err(SendError::TooLarge(_))));
        t1.take_unreachable(&mut unreachable);
        unreachable.sort_unstable();
        assert_eq!(unreachable, [2, 3], "each reported once");
        // The heartbeat overtakes the queued appends; everything queued is delivered.
        assert_eq!(recv(&t2).await, Inbound::Raft(heartbeat(1, 2, 1)));
        for i in 1..=8 {
            assert_eq!(recv(&t2).await, Inbound::Raft(append(1, 2, i, 64 << 10)));
        }
    });
}

#[test]
fn redials_after_the_peer_restarts() {
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        let addr2 = t2.local_addr();
        assert_eq!(t1.stats().connects.get(), 1);
        drop(t2);
        wait_until(|| !t1.is_connected(2)).await;
        let mut unreachable = Vec::new();
        t1.take_unreachable(&mut unreachable);
        assert!(unreachable.contains(&2), "loss of the connection is reported");
        let l2 = skiff_net::sys::bind_listener(addr2).expect("rebind the restarted peer's port");
        let t2 = Transport::start(config(2, vec![(1, t1.local_addr())]), l2).unwrap();
        t1.connected(2).await;
        assert_eq!(t1.stats().connects.get(), 2);
        t1.send(heartbeat(1, 2, 42)).unwrap();
        assert_eq!(recv(&t2).await, Inbound::Raft(heartbeat(1, 2, 42)));
    });
}

#[test]
fn a_new_connection_from_a_peer_replaces_its_old_one() {
    run(|| async {
        let (t1, t2) = pair(|_, _| {}).await;
        still_serves(&t2, &t1, 1).await;
        assert_eq!(t1.inbound_connections(), 1);
        // Node 2 dials again, as it does once its connection is lost: here the old one
        // is still open on node 1's side, as after a network break without a RST.
        let mut s = connect(t1.local_addr()).await;
        write(&mut s, &hello(CLUSTER, 2, 0)).await;
        let mut accept = vec![0u8; FRAME_HEADER_BYTES + 21];
        futures_lite::AsyncReadExt::read_exact(&mut s, &mut accept).await.unwrap();
        let hb = Encoder::new(1 << 20).message(&heartbeat(2, 1, 5)).unwrap();
        write(&mut s, &hb.to_contiguous()).await;
        assert_eq!(recv(&t1).await, Inbound::Raft(heartbeat(2, 1, 5)));
        // The old connection was closed when the new one was accepted, not left to
        // hold a reader and buffers until keepalive gives up on it.
        wait_until(|| t1.inbound_connections() == 1).await;
        // Node 2's transport sees its connection closed and dials again, which in
        // turn replaces the hand-made one.
        wait_until(|| t2.stats().connects.get() == 2).await;
        let rest = read_until_closed(&mut s).await;
        assert!(rest.is_empty(), "nothing more was sent on the replaced connection");
        still_serves(&t2, &t1, 2).await;
        wait_until(|| t1.inbound_connections() == 1).await;
        assert!(RejectReason::ALL.iter().all(|r| t1.stats().rejected(*r) == 0), "a replacement is no rejection");
    });
}

#[test]
fn received_bytes_waiting_for_the_loop_are_bounded() {
    const APPENDS: u64 = 10;
    const BOUND: usize = 150 << 10;
    run(|| async {
        let (t1, t2) = pair(|id, c| {
            if id == 2 {
                c.inbound_bytes_max = BOUND;
            }
        })
        .await;
        for i in 1..=APPENDS {
            t1.send(append(1, 2, i, 64 << 10)).unwrap();
        }
        let mut got = 0;
        let mut peak = 0;
        while got < APPENDS {
            let (messages, bytes) = t2.inbound_len();
            assert!(bytes <= BOUND || messages == 1, "{messages} messages of {bytes} bytes held past the bound");
            peak = peak.max(messages);
            if let Some(m) = t2.try_recv() {
                got += 1;
                assert_eq!(m, Inbound::Raft(append(1, 2, got, 64 << 10)));
            }
            // Give the reader every chance to overfill the queue before the next check.
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        assert!(peak >= 2, "the queue did fill up to its bound");
    });
}
