//! Fuzzes the peer receive path: arbitrary bytes, delivered in arbitrary pieces, through
//! the frame decoder and every body decoder. A body that decodes must re-encode to the
//! same bytes (the encoding is canonical), and nothing may panic or allocate past the
//! caps (run with `-malloc_limit_mb`, see docs/wire-format.md).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use skiff_net::frame::{FRAME_HEADER_BYTES, FrameDecoder, FrameKind};
use skiff_net::handshake::{Hello, Refusal};
use skiff_net::message::{Encoder, decode_app, decode_message};

/// Body cap for the fuzzed decoder: small enough that `-malloc_limit_mb=64` would catch
/// any allocation sized by an unchecked length.
const FUZZ_BODY_BYTES_MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    // The first byte picks the read size, so partial frames are exercised too.
    let step = usize::from(step).max(1);
    let decoder = FrameDecoder::new(FUZZ_BODY_BYTES_MAX);
    let mut encoder = Encoder::new(FUZZ_BODY_BYTES_MAX);
    let mut buf = BytesMut::new();
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => return,
            };
            match frame.kind {
                FrameKind::Hello | FrameKind::HelloAccept => {
                    if let Ok(hello) = Hello::decode(&frame.body) {
                        assert_eq!(&hello.encode()[..], &frame.body[..]);
                    }
                }
                FrameKind::HelloRefuse => {
                    let _ = Refusal::decode(&frame.body);
                }
                FrameKind::App => {
                    if let Ok(app) = decode_app(frame.body.clone()) {
                        let wire = encoder.app(&app).expect("fits").to_contiguous();
                        assert_eq!(&wire[FRAME_HEADER_BYTES..], &frame.body[..]);
                    }
                }
                kind => {
                    if let Ok(msg) = decode_message(kind, frame.body.clone()) {
                        let wire = encoder.message(&msg).expect("fits").to_contiguous();
                        assert_eq!(&wire[FRAME_HEADER_BYTES..], &frame.body[..], "{msg:?}");
                        assert_eq!(wire[5], kind as u8);
                    }
                }
            }
        }
    }
});
