//! Fuzzes the RESP2 decoders: arbitrary bytes, in arbitrary pieces, as client requests
//! or as replies. Nothing may panic or allocate past the caps; a reply that decodes must
//! re-encode to exactly the bytes it was decoded from (the parser is strict, so the
//! encoding is canonical); a request never carries an argument over the bulk cap.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use skiff_net::resp::{ReplyDecoder, RequestDecoder, RespLimits, encode_reply};

/// Small caps so the fuzzer reaches every limit quickly.
const LIMITS: RespLimits = RespLimits {
    bulk_bytes_max: 1024,
    array_len_max: 64,
    inline_bytes_max: 256,
    request_bytes_max: 4096,
    depth_max: 8,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(mode >> 1).max(1);
    let mut buf = BytesMut::new();
    if mode & 1 == 0 {
        let mut dec = RequestDecoder::new(LIMITS);
        for chunk in data.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(req)) => {
                        assert!(!req.args.is_empty());
                        assert!(req.args.len() <= LIMITS.array_len_max.max(LIMITS.inline_bytes_max));
                        let total: usize = req.args.iter().map(|a| a.len()).sum();
                        assert!(total <= LIMITS.request_bytes_max.max(LIMITS.inline_bytes_max));
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    } else {
        let mut dec = ReplyDecoder::new(LIMITS);
        let mut consumed = 0;
        let mut fed = 0;
        for chunk in data.chunks(step) {
            buf.extend_from_slice(chunk);
            fed += chunk.len();
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(value)) => {
                        let end = fed - buf.len();
                        let mut again = BytesMut::new();
                        encode_reply(&value, &mut again);
                        assert_eq!(&again[..], &data[consumed..end], "{value:?}");
                        consumed = end;
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
    }
});
