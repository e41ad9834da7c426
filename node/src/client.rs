//! One client connection on the RESP port: read whatever requests have arrived
//! (pipelined requests come together), dispatch them all to the shard, ring the Ready
//! loop once, then answer them in order in one write. A read behind a write of the
//! same pipeline (or a write behind a read) is dispatched only once the requests
//! before it are answered, so a pipeline takes effect in order, as on Redis. A protocol error is answered
//! (after the replies owed to earlier requests) and closes the connection, as Redis
//! does; nothing a client sends can affect another client or the shard.

use std::rc::Rc;

use bytes::{BufMut, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use log::debug;
use skiff_net::{Request, RequestDecoder, RespError, RespLimits};

use std::time::Instant;

use crate::commands::Reply;
use crate::metrics::{Command, RejectReason};
use crate::shard::{Pending, Shard, Unanswered};

/// Bytes read from a client per read call.
pub const CLIENT_READ_BYTES: usize = 16 << 10;
/// Requests dispatched before answering: bounds what one client can have in flight
/// (redis-benchmark's -P 16 and far deeper pipelines fit).
pub const CLIENT_PIPELINE_MAX: usize = 1024;
/// Encoded replies are written once they pass this size, so a pipeline of large
/// replies (1,024 GETs of a 4 MiB value) holds one reply at a time, not all of them.
pub const CLIENT_REPLY_FLUSH_BYTES: usize = 1 << 20;

/// Empties the reply buffer after a write; one that grew for a large reply is let go,
/// so an idle connection does not keep the largest reply it ever sent (up to 64 MiB).
fn reset_reply_buffer(out: &mut BytesMut) {
    if out.capacity() > 4 * CLIENT_REPLY_FLUSH_BYTES {
        *out = BytesMut::new();
    } else {
        out.clear();
    }
}

/// Appends the RESP2 encoding of `r` to `out`. Error and simple-string texts are
/// single-line by construction (the command layer strips CR and LF).
pub fn encode(r: &Reply, out: &mut BytesMut) {
    match r {
        Reply::Simple(s) => {
            out.put_u8(b'+');
            out.put_slice(s.as_bytes());
            out.put_slice(b"\r\n");
        }
        Reply::Error(e) => {
            out.put_u8(b'-');
            for b in e.bytes() {
                out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
            }
            out.put_slice(b"\r\n");
        }
        Reply::Int(n) => {
            out.put_u8(b':');
            out.put_slice(itoa(*n).as_bytes());
            out.put_slice(b"\r\n");
        }
        Reply::Bulk(b) => {
            out.put_u8(b'$');
            out.put_slice(itoa(b.len() as i64).as_bytes());
            out.put_slice(b"\r\n");
            out.put_slice(b);
            out.put_slice(b"\r\n");
        }
        Reply::Nil => out.put_slice(b"$-1\r\n"),
        Reply::Array(items) => {
            out.put_u8(b'*');
            out.put_slice(itoa(items.len() as i64).as_bytes());
            out.put_slice(b"\r\n");
            for i in items {
                encode(i, out);
            }
        }
    }
}

fn itoa(n: i64) -> String {
    n.to_string()
}

/// Serves the connection until the client closes it, sends QUIT, or breaks the
/// protocol.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut decoder = RequestDecoder::new(RespLimits::default());
    let mut inbuf = BytesMut::with_capacity(CLIENT_READ_BYTES);
    let mut out = BytesMut::with_capacity(4096);
    let mut pending: Vec<(Pending, Command, Instant)> = Vec::new();
    let mut chunk = vec![0u8; CLIENT_READ_BYTES];
    // A request that must wait for the replies owed to earlier ones (see
    // `Shard::dispatch`), with the time it was decoded.
    let mut held: Option<(Request, Instant)> = None;
    loop {
        let mut quit = false;
        let mut protocol_error = None;
        let mut earlier = Unanswered::default();
        while pending.len() < CLIENT_PIPELINE_MAX {
            let (req, decoded) = match held.take() {
                Some(h) => h,
                None => match decoder.decode(&mut inbuf) {
                    Ok(Some(req)) => (req, Instant::now()),
                    Ok(None) => break,
                    Err(e) => {
                        if matches!(e, RespError::RequestTooLarge(_) | RespError::InlineTooLong) {
                            shard.record_request_rejected(RejectReason::TooLarge);
                        }
                        protocol_error = Some(e);
                        break;
                    }
                },
            };
            let Some(p) = shard.dispatch(&req.args, &mut earlier) else {
                held = Some((req, decoded));
                break;
            };
            let command = req.args.first().map_or(Command::Other, |n| Command::from_name(n));
            quit = matches!(p, Pending::Quit);
            pending.push((p, command, decoded));
            if quit {
                break;
            }
        }
        // Stopped by the cap, or by a request that waits for these replies, with
        // requests still buffered: answer, then decode again before reading.
        let capped = pending.len() >= CLIENT_PIPELINE_MAX || held.is_some();
        if pending.iter().any(|(p, _, _)| matches!(p, Pending::Wait { .. })) {
            shard.wake();
        }
        for (p, command, started) in pending.drain(..) {
            match p {
                Pending::Done(r) => encode(&r, &mut out),
                Pending::Wait(slot) => {
                    let r = slot.take().await;
                    encode(&r, &mut out);
                }
                Pending::Quit => encode(&Reply::Simple("OK"), &mut out),
            }
            shard.record_client_request(command, started.elapsed());
            if out.len() >= CLIENT_REPLY_FLUSH_BYTES {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                reset_reply_buffer(&mut out);
            }
        }
        if let Some(e) = &protocol_error {
            encode(&Reply::err(e.reply_text()), &mut out);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            reset_reply_buffer(&mut out);
        }
        if quit || protocol_error.is_some() {
            if let Some(e) = protocol_error {
                debug!("closing a client connection: protocol error: {e}");
            }
            let _ = stream.close().await;
            return;
        }
        if capped {
            continue;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        for r in [
            Reply::Simple("OK"),
            Reply::err("ERR bad\r\nthing"),
            Reply::Int(-5),
            Reply::Bulk(Bytes::from_static(b"hi")),
            Reply::Nil,
            Reply::Array(vec![Reply::Int(1), Reply::Nil]),
        ] {
            encode(&r, &mut out);
        }
        assert_eq!(&out[..], b"+OK\r\n-ERR bad  thing\r\n:-5\r\n$2\r\nhi\r\n$-1\r\n*2\r\n:1\r\n$-1\r\n");
    }
}
