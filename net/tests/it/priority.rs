//! Heartbeats keep flowing while a bulk append stream saturates the connection: each
//! heartbeat overtakes every append that was still queued when it was sent.
//!
//! The receiver drains slowly (its inbound queue holds 4 messages and the socket
//! buffers are small), so the sender's bulk lane stays backed up. The assertions are
//! about order and progress only: with a single FIFO queue each heartbeat would arrive
//! after all the appends queued before it, and the test would fail.

use skiff_engine::MessageBody;
use skiff_net::sys::SocketOptions;
use skiff_net::{Inbound, Lane};

use crate::support::*;

const APPENDS: u64 = 200;
const APPEND_PAYLOAD_BYTES: usize = 64 << 10;
const HEARTBEATS: u64 = 5;
/// Appends the receiver takes between two heartbeats.
const APPENDS_PER_HEARTBEAT: u64 = 20;

#[test]
fn heartbeats_overtake_a_saturating_append_stream() {
    run(|| async {
        let small = SocketOptions { send_buffer_bytes: Some(64 << 10), recv_buffer_bytes: Some(64 << 10) };
        let (t1, t2) = pair(|id, c| {
            c.socket = small;
            if id == 1 {
                c.queue.bulk.messages_max = APPENDS as usize;
                c.queue.bulk.bytes_max = 32 << 20;
            } else {
                c.inbound_messages_max = 4;
            }
        })
        .await;
        for i in 1..=APPENDS {
            t1.send(append(1, 2, i, APPEND_PAYLOAD_BYTES)).unwrap();
        }
        // Let the writer start: the connection is then full and the rest stays queued.
        wait_until(|| t1.queued(2, Lane::Bulk).0 < APPENDS as usize).await;

        let mut appends_received = 0u64;
        let mut next_index = 1u64;
        let mut heartbeats_received = 0u64;
        // (ctx, appends received when sent, appends still queued at the sender when sent)
        let mut in_flight: Option<(u64, u64, u64)> = None;
        let mut next_ctx = 1;
        while appends_received < APPENDS || heartbeats_received < HEARTBEATS {
            if in_flight.is_none()
                && next_ctx <= HEARTBEATS
                && appends_received >= (next_ctx - 1) * APPENDS_PER_HEARTBEAT
            {
                let queued = t1.queued(2, Lane::Bulk).0 as u64;
                assert!(queued > 0, "heartbeat {next_ctx}: the bulk lane must be backed up");
                t1.send(heartbeat(1, 2, next_ctx)).unwrap();
                in_flight = Some((next_ctx, appends_received, queued));
                next_ctx += 1;
            }
            match recv(&t2).await {
                Inbound::Raft(m) => match m.body {
                    MessageBody::Append { entries, .. } => {
                        assert_eq!(entries[0].index, next_index, "appends stay in order");
                        next_index += 1;
                        appends_received += 1;
                    }
                    MessageBody::Heartbeat { ctx, .. } => {
                        let (want, _, queued) = in_flight.take().expect("a heartbeat was sent");
                        assert_eq!(ctx, want, "heartbeats stay in order");
                        // Every append still queued when the heartbeat was sent is
                        // behind it.
                        let sent_before = APPENDS;
                        assert!(
                            appends_received <= sent_before - queued,
                            "heartbeat {ctx} waited behind queued appends: \
                             {appends_received} received, {queued} were queued"
                        );
                        heartbeats_received += 1;
                    }
                    other => panic!("unexpected {other:?}"),
                },
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(t1.stats().dropped_queue_full.get(), 0);
    });
}
