//! Property tests: every peer message and every RESP value round-trips through its
//! encoding, whatever the read boundaries; every single-bit flip of a peer frame is
//! detected.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use skiff_engine::{ConfState, Entry, EntryKind, Message, MessageBody, Snapshot, SnapshotMeta};
use skiff_net::frame::FrameDecoder;
use skiff_net::message::{AppFrame, Encoder, decode_app, decode_message};
use skiff_net::resp::{ReplyDecoder, Request, RequestDecoder, RespLimits, RespValue, encode_reply, encode_request};

const BODY_MAX: usize = 1 << 20;

fn entry() -> impl Strategy<Value = Entry> {
    (any::<u64>(), any::<u64>(), 0u8..3, vec(any::<u8>(), 0..64)).prop_map(|(term, index, kind, data)| Entry {
        term,
        index,
        kind: EntryKind::from_u8(kind).unwrap(),
        data: Bytes::from(data),
    })
}

fn ids() -> impl Strategy<Value = Vec<u64>> {
    vec(any::<u64>(), 0..6)
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>(), vec(entry(), 0..8)).prop_map(
            |(prev_index, prev_term, commit, entries)| MessageBody::Append { prev_index, prev_term, commit, entries }
        ),
        (any::<u64>(), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(index, reject, hint_index, hint_term)| {
            MessageBody::AppendResponse { index, reject, hint_index, hint_term }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(commit, ctx)| MessageBody::Heartbeat { commit, ctx }),
        any::<u64>().prop_map(|ctx| MessageBody::HeartbeatResponse { ctx }),
        (any::<bool>(), any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(pre, last_index, last_term, transfer)| MessageBody::Vote { pre, last_index, last_term, transfer }
        ),
        (any::<bool>(), any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(pre, reject, commit, commit_term)| {
            MessageBody::VoteResponse { pre, reject, commit, commit_term }
        }),
        (any::<u64>(), any::<u64>(), ids(), ids(), any::<u32>(), vec(any::<u8>(), 0..128)).prop_map(
            |(index, term, voters, learners, ticks, data)| {
                MessageBody::Snapshot {
                    snapshot: Snapshot {
                        meta: SnapshotMeta {
                            index,
                            term,
                            conf_state: ConfState { voters, learners },
                            election_timeout_ticks: ticks,
                        },
                        data: Bytes::from(data),
                    },
                }
            }
        ),
        Just(MessageBody::TimeoutNow),
        vec(entry(), 0..8).prop_map(|entries| MessageBody::Propose { entries }),
        any::<u64>().prop_map(|ctx| MessageBody::ReadIndex { ctx }),
        (any::<u64>(), any::<u64>()).prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
        any::<u64>().prop_map(|target| MessageBody::TransferLeader { target }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    (any::<u64>(), any::<u64>(), any::<u64>(), body()).prop_map(|(from, to, term, body)| Message {
        from,
        to,
        term,
        body,
    })
}

/// Feeds `wire` to a frame decoder `step` bytes at a time and returns the frames.
fn frames_in_steps(wire: &[u8], step: usize) -> Vec<skiff_net::Frame> {
    let decoder = FrameDecoder::new(BODY_MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in wire.chunks(step.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some(f) = decoder.decode(&mut buf).expect("valid frames decode") {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "no bytes left over");
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_peer_message_round_trips(msgs in vec(message(), 1..4), step in 1usize..64) {
        let mut enc = Encoder::new(BODY_MAX);
        let mut wire = BytesMut::new();
        for m in &msgs {
            wire.extend_from_slice(&enc.message(m).unwrap().to_contiguous());
        }
        let got: Vec<Message> = frames_in_steps(&wire, step)
            .into_iter()
            .map(|f| decode_message(f.kind, f.body).unwrap())
            .collect();
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn app_frames_round_trip(tag in any::<u32>(), body in vec(any::<u8>(), 0..256), step in 1usize..32) {
        let app = AppFrame { tag, body: Bytes::from(body) };
        let wire = Encoder::new(BODY_MAX).app(&app).unwrap().to_contiguous();
        let frames = frames_in_steps(&wire, step);
        prop_assert_eq!(frames.len(), 1);
        prop_assert_eq!(decode_app(frames[0].body.clone()).unwrap(), app);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// CRC32C catches every single-bit error, and the header has its own CRC, so a flip
    /// anywhere (magic, length, kind, body) is an error: never a frame, never a wait
    /// for bytes that will not come.
    #[test]
    fn every_single_bit_flip_of_a_peer_frame_is_detected(m in message()) {
        let wire = Encoder::new(BODY_MAX).message(&m).unwrap().to_contiguous();
        let decoder = FrameDecoder::new(BODY_MAX);
        for bit in 0..wire.len() * 8 {
            let mut flipped = wire.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let got = decoder.decode(&mut flipped);
            prop_assert!(got.is_err(), "flip of bit {} not detected: {:?}", bit, got);
        }
    }
}

fn simple_text() -> impl Strategy<Value = Bytes> {
    "[ -~]{0,24}".prop_map(|s| Bytes::from(s.into_bytes()))
}

fn resp_value() -> impl Strategy<Value = RespValue> {
    let leaf = prop_oneof![
        simple_text().prop_map(RespValue::Simple),
        simple_text().prop_map(RespValue::Error),
        any::<i64>().prop_map(RespValue::Integer),
        vec(any::<u8>(), 0..64).prop_map(|b| RespValue::Bulk(Bytes::from(b))),
        Just(RespValue::NullBulk),
        Just(RespValue::NullArray),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| vec(inner, 0..8).prop_map(RespValue::Array))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_resp_value_round_trips(values in vec(resp_value(), 1..5), step in 1usize..16) {
        let mut wire = BytesMut::new();
        for v in &values {
            encode_reply(v, &mut wire);
        }
        let mut dec = ReplyDecoder::new(RespLimits::default());
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(v) = dec.decode(&mut buf).unwrap() {
                got.push(v);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, values);
    }

    #[test]
    fn pipelined_requests_round_trip(
        reqs in vec(vec(vec(any::<u8>(), 0..32), 1..6), 1..6),
        inline in vec("[a-zA-Z0-9]{1,8}", 1..5),
        step in 1usize..16,
    ) {
        let mut wire = BytesMut::new();
        for args in &reqs {
            encode_request(args, &mut wire);
        }
        // An inline request pipelined after the multibulk ones.
        wire.extend_from_slice(inline.join(" ").as_bytes());
        wire.extend_from_slice(b"\r\n");
        let mut dec = RequestDecoder::new(RespLimits::default());
        let mut buf = BytesMut::new();
        let mut got: Vec<Request> = Vec::new();
        for chunk in wire.chunks(step) {
            buf.extend_from_slice(chunk);
            while let Some(r) = dec.decode(&mut buf).unwrap() {
                got.push(r);
            }
        }
        let mut want: Vec<Vec<Bytes>> =
            reqs.iter().map(|a| a.iter().map(|x| Bytes::from(x.clone())).collect()).collect();
        want.push(inline.iter().map(|s| Bytes::from(s.clone().into_bytes())).collect());
        prop_assert_eq!(got.into_iter().map(|r| r.args).collect::<Vec<_>>(), want);
    }
}
