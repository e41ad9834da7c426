//! Blocking clients for a node's ports: RESP on the client port (with a deadline per
//! request, after which the outcome is unknown) and plain HTTP/1.1 on the admin port.
//! Every call has a timeout, because a paused node accepts connections and never
//! answers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use skiff_net::resp::encode_request;
use skiff_net::{ReplyDecoder, RespLimits, RespValue};

/// How long a connection attempt may take: loopback connects at once or is refused, so
/// this only matters when the listen backlog of a paused node is full.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    /// The request may or may not have reached the node.
    #[error("send failed: {0}")]
    Send(std::io::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before the reply")]
    Closed,
    #[error("read failed: {0}")]
    Read(std::io::Error),
    #[error("malformed reply: {0}")]
    Protocol(String),
}

fn connect(addr: &str) -> Result<TcpStream, ClientError> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| ClientError::Connect { addr: addr.to_string(), source: std::io::Error::other(format!("{e}")) })?;
    let s = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT)
        .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// A RESP connection to one node. After any error it must be dropped: a late reply
/// would otherwise be taken for the answer to the next request.
#[derive(Debug)]
pub struct Resp {
    stream: TcpStream,
    dec: ReplyDecoder,
    buf: BytesMut,
}

impl Resp {
    pub fn connect(addr: &str) -> Result<Resp, ClientError> {
        Ok(Resp { stream: connect(addr)?, dec: ReplyDecoder::new(RespLimits::default()), buf: BytesMut::new() })
    }

    /// Sends one request and waits up to `timeout` for its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A], timeout: Duration) -> Result<RespValue, ClientError> {
        let mut out = BytesMut::new();
        encode_request(args, &mut out);
        let deadline = Instant::now() + timeout;
        self.stream.set_write_timeout(Some(timeout)).map_err(ClientError::Send)?;
        self.stream.write_all(&out).map_err(ClientError::Send)?;
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout(timeout));
            }
            self.stream.set_read_timeout(Some(left)).map_err(ClientError::Read)?;
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return Err(ClientError::Timeout(timeout));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ClientError::Read(e)),
            }
        }
    }
}

/// What `INFO replication` says about a node's shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replication {
    pub role: String,
    pub term: u64,
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
}

impl Replication {
    pub fn is_leader(&self) -> bool {
        self.role == "leader"
    }
}

/// Parses the `INFO replication` text.
pub fn parse_replication(text: &str) -> Option<Replication> {
    let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim);
    Some(Replication {
        role: field("raft_role:")?.to_string(),
        term: field("term:")?.parse().ok()?,
        leader: field("leader:")?.parse().ok()?,
        commit: field("commit:")?.parse().ok()?,
        applied: field("applied:")?.parse().ok()?,
    })
}

impl Resp {
    /// The node's Raft view, answered live by its shard.
    pub fn replication(&mut self, timeout: Duration) -> Result<Replication, ClientError> {
        match self.call(&["INFO", "replication"], timeout)? {
            RespValue::Bulk(b) => parse_replication(&String::from_utf8_lossy(&b))
                .ok_or_else(|| ClientError::Protocol("INFO replication without the raft fields".into())),
            other => Err(ClientError::Protocol(format!("INFO replication answered {other:?}"))),
        }
    }
}

/// An HTTP/1.1 request without a body (`Connection: close`); the status and body.
pub fn http(addr: &str, method: &str, path: &str, timeout: Duration) -> Result<(u16, String), ClientError> {
    let mut s = connect(addr)?;
    s.set_write_timeout(Some(timeout)).map_err(ClientError::Send)?;
    s.set_read_timeout(Some(timeout)).map_err(ClientError::Read)?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .map_err(ClientError::Send)?;
    let mut resp = Vec::new();
    match s.read_to_end(&mut resp) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            return Err(ClientError::Timeout(timeout));
        }
        Err(e) => return Err(ClientError::Read(e)),
    }
    let resp = String::from_utf8_lossy(&resp);
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        ClientError::Protocol(format!("not an HTTP response: {:?}", resp.chars().take(80).collect::<String>()))
    })?;
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_replication_is_parsed() {
        let text =
            "# Replication\r\nrole:master\r\nraft_role:leader\r\nterm:3\r\nleader:2\r\ncommit:10\r\napplied:9\r\n";
        let r = parse_replication(text).unwrap();
        assert!(r.is_leader());
        assert_eq!((r.term, r.leader, r.commit, r.applied), (3, 2, 10, 9));
        assert!(parse_replication("# Replication\r\nrole:master\r\n").is_none());
    }
}
