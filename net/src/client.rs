//! A RESP2 client connection on glommio, for the node's client port: reads pipelined
//! requests, buffers replies until the pipeline is drained, and on a protocol error
//! answers `-ERR Protocol error: ...` and closes, as Redis does.

use std::io;

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::recycling::RecyclingBuffer;
use crate::resp::{Request, RequestDecoder, RespError, RespLimits, RespValue, encode_reply};
use crate::sys;

/// Receive buffer reserved per client connection at a time: a pipeline of a few hundred
/// small commands per read; larger requests reserve what their header declares.
pub const CLIENT_RECV_BUFFER_BYTES: usize = 64 << 10;
/// Spare receive capacity below which a fresh buffer is reserved before reading.
pub const CLIENT_RECV_SPARE_BYTES_MIN: usize = 4 << 10;

const _: () = assert!(CLIENT_RECV_SPARE_BYTES_MIN < CLIENT_RECV_BUFFER_BYTES);

/// Why a client connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client broke the protocol; it has been sent the error reply and the
    /// connection is closed.
    #[error("protocol error: {0}")]
    Protocol(#[from] RespError),
    /// The client closed the connection in the middle of a request.
    #[error("connection closed in the middle of a request")]
    Truncated,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// One client connection.
#[derive(Debug)]
pub struct ClientConnection {
    stream: TcpStream,
    decoder: RequestDecoder,
    recv: RecyclingBuffer,
    send: BytesMut,
}

impl ClientConnection {
    /// Wraps an accepted client stream, enforcing `limits` on what it sends.
    pub fn new(stream: TcpStream, limits: RespLimits) -> ClientConnection {
        ClientConnection {
            stream,
            decoder: RequestDecoder::new(limits),
            recv: RecyclingBuffer::new(CLIENT_RECV_BUFFER_BYTES, CLIENT_RECV_SPARE_BYTES_MIN),
            send: BytesMut::new(),
        }
    }

    /// The next request, or `Ok(None)` when the client closed cleanly. Buffered replies
    /// are flushed before waiting for more input, so a pipeline gets all its replies in
    /// one write. On a protocol error the error reply is sent and the stream closed.
    pub async fn next_request(&mut self) -> Result<Option<Request>, ClientError> {
        loop {
            match self.decoder.decode(self.recv.bytes()) {
                Ok(Some(req)) => return Ok(Some(req)),
                Ok(None) => {}
                Err(e) => {
                    // Replies to the requests before the bad one go out first.
                    encode_reply(&RespValue::Error(e.reply_text().into()), &mut self.send);
                    // Best effort: the client is being dropped either way.
                    let _ = self.flush().await;
                    let _ = self.stream.close().await;
                    return Err(e.into());
                }
            }
            self.flush().await?;
            self.recv.make_room(0);
            let n = sys::read_into(&self.stream, self.recv.bytes()).await?;
            if n == 0 {
                return if self.recv.bytes().is_empty() { Ok(None) } else { Err(ClientError::Truncated) };
            }
        }
    }

    /// Queues a reply; it is written by the next [`ClientConnection::flush`] or before
    /// the next wait for input.
    ///
    /// # Panics
    /// As [`encode_reply`]: a simple string or error containing CR or LF.
    pub fn reply(&mut self, value: &RespValue) {
        encode_reply(value, &mut self.send);
    }

    /// Writes every queued reply.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.send.is_empty() {
            self.stream.write_all(&self.send).await?;
            self.send.clear();
        }
        Ok(())
    }
}
