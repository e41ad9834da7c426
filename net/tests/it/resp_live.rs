//! The RESP2 client connection over real sockets: pipelined requests get their replies
//! in order, a slow-drip request is assembled, and every cap violation is answered with
//! Redis's protocol error before the connection is closed.

use std::time::Duration;

use bytes::Bytes;
use glommio::net::TcpListener;
use skiff_net::resp::{RespError, RespLimits, RespValue};
use skiff_net::{ClientConnection, ClientError};

use crate::support::*;

/// Serves one client: PING → PONG, anything else → its arguments echoed as an array.
/// Returns how the connection ended.
async fn serve_one(listener: &TcpListener, limits: RespLimits) -> Result<(), ClientError> {
    let stream = listener.accept().await.unwrap();
    let mut conn = ClientConnection::new(stream, limits);
    while let Some(req) = conn.next_request().await? {
        if req.args[0].eq_ignore_ascii_case(b"PING") {
            conn.reply(&RespValue::Simple(Bytes::from_static(b"PONG")));
        } else {
            conn.reply(&RespValue::Array(req.args.into_iter().map(RespValue::Bulk).collect()));
        }
    }
    Ok(())
}

fn glommio_listener() -> TcpListener {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: a bound, listening socket handed over whole.
    unsafe { TcpListener::from_raw_fd(listener().into_raw_fd()) }
}

#[test]
fn pipelined_and_slow_drip_requests_are_answered_in_order() {
    run(|| async {
        let l = glommio_listener();
        let addr = l.local_addr().unwrap();
        let server = glommio::spawn_local(async move { serve_one(&l, RespLimits::default()).await });
        let mut c = connect(addr).await;
        write(&mut c, b"PING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n").await;
        let drip = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for b in drip {
            write(&mut c, &[*b]).await;
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        futures_lite::AsyncWriteExt::close(&mut c).await.unwrap();
        let answer = read_until_closed(&mut c).await;
        assert_eq!(answer, b"+PONG\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n+PONG\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
        assert!(server.await.is_ok());
    });
}

#[test]
fn cap_violations_get_a_protocol_error_and_a_closed_connection() {
    let limits = RespLimits {
        bulk_bytes_max: 1024,
        array_len_max: 16,
        inline_bytes_max: 256,
        request_bytes_max: 2048,
        depth_max: 4,
    };
    run(move || async move {
        let bulk_1024 = [&b"$1024\r\n"[..], &[b'x'; 1024], b"\r\n"].concat();
        let cases: Vec<(Vec<u8>, RespError)> = vec![
            (b"*1\r\n$1025\r\n".to_vec(), RespError::InvalidBulkLength),
            (b"*17\r\n".to_vec(), RespError::InvalidMultibulkLength),
            (vec![b'a'; 300], RespError::InlineTooLong),
            (
                // Two full 1,024-byte bulks reach the 2,048-byte request cap; the third
                // header is refused before its data arrives.
                [&b"*3\r\n"[..], &bulk_1024, &bulk_1024, b"$1024\r\n"].concat(),
                RespError::RequestTooLarge(2048),
            ),
            (b"*1\r\n+OK\r\n".to_vec(), RespError::ExpectedBulk(b'+')),
            (b"SET k \"v\n".to_vec(), RespError::UnbalancedQuotes),
        ];
        for (input, want) in cases {
            let l = glommio_listener();
            let addr = l.local_addr().unwrap();
            let server = glommio::spawn_local(async move { serve_one(&l, limits).await });
            let mut c = connect(addr).await;
            // A valid request first: it is answered before the bad one closes the door.
            write(&mut c, b"PING\r\n").await;
            write(&mut c, &input).await;
            let answer = read_until_closed(&mut c).await;
            let expected = format!("+PONG\r\n-{}\r\n", want.reply_text());
            assert_eq!(String::from_utf8_lossy(&answer), expected);
            match server.await {
                Err(ClientError::Protocol(got)) => assert_eq!(got, want),
                other => panic!("expected a protocol error, got {other:?}"),
            }
        }
    });
}
