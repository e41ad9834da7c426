//! The connection handshake: the dialer says who it is (cluster, node, shard, format
//! version); the acceptor checks that against its own identity and peer list, and
//! answers with its own identity or a refusal carrying a reason.
//!
//! ```text
//! Hello / HelloAccept body (21 bytes)      HelloRefuse body
//! 0   u64 cluster_id                       0   u8 reason (Refusal)
//! 8   u64 node_id                          1   UTF-8 text, at most REFUSE_TEXT_BYTES_MAX
//! 16  u32 shard_id
//! 20  u8  version (FRAME_VERSION)
//! ```
//!
//! Nothing but a Hello is accepted as a connection's first frame, and nothing a peer
//! sends before it has been accepted reaches the engine.

use bytes::{BufMut, Bytes, BytesMut};
use skiff_engine::{NO_NODE, NodeId};

use crate::frame::FRAME_VERSION;
use crate::message::DecodeError;

/// Bytes of a Hello or HelloAccept body.
pub const HELLO_BYTES: usize = 21;

/// Longest refusal text sent; enough for a sentence naming both sides' ids, short
/// enough that a refusal never approaches any frame cap.
pub const REFUSE_TEXT_BYTES_MAX: usize = 256;

/// Who is at one end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub cluster_id: u64,
    pub node_id: NodeId,
    pub shard_id: u32,
    pub version: u8,
}

impl Hello {
    /// This node's hello at the current format version.
    pub fn new(cluster_id: u64, node_id: NodeId, shard_id: u32) -> Hello {
        Hello { cluster_id, node_id, shard_id, version: FRAME_VERSION }
    }

    /// The wire body.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..8].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.node_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.shard_id.to_le_bytes());
        out[20] = self.version;
        out
    }

    /// Decodes a Hello or HelloAccept body.
    pub fn decode(body: &[u8]) -> Result<Hello, DecodeError> {
        let b: &[u8; HELLO_BYTES] = match body.len() {
            HELLO_BYTES => body.try_into().expect("length checked"),
            n if n < HELLO_BYTES => return Err(DecodeError::Truncated),
            n => return Err(DecodeError::TrailingBytes(n - HELLO_BYTES)),
        };
        Ok(Hello {
            cluster_id: u64::from_le_bytes(b[0..8].try_into().expect("8 bytes")),
            node_id: u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
            shard_id: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
            version: b[20],
        })
    }

    /// Checks a remote hello against `local` (this node) and the ids this node accepts.
    /// `expected_node` is `Some(id)` when dialing a known peer (its answer must come
    /// from that peer), `None` when accepting (any member of `peers`).
    pub fn check(
        &self,
        local: &Hello,
        expected_node: Option<NodeId>,
        is_peer: impl Fn(NodeId) -> bool,
    ) -> Result<(), Refusal> {
        if self.version != local.version {
            return Err(Refusal::UnsupportedVersion);
        }
        if self.cluster_id != local.cluster_id {
            return Err(Refusal::WrongCluster);
        }
        let known = match expected_node {
            Some(id) => self.node_id == id,
            None => self.node_id != NO_NODE && self.node_id != local.node_id && is_peer(self.node_id),
        };
        if !known {
            return Err(Refusal::UnknownNode);
        }
        if self.shard_id != local.shard_id {
            return Err(Refusal::WrongShard);
        }
        Ok(())
    }
}

/// Why a handshake was refused. Values are part of the wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum Refusal {
    #[error("peer belongs to another cluster")]
    WrongCluster = 1,
    #[error("peer node id is not a member this node talks to")]
    UnknownNode = 2,
    #[error("peer connected to the wrong shard")]
    WrongShard = 3,
    #[error("peer speaks an unsupported format version")]
    UnsupportedVersion = 4,
    #[error("too many peer connections")]
    ConnectionLimit = 5,
}

impl Refusal {
    /// Decodes the wire value.
    pub fn from_u8(v: u8) -> Option<Refusal> {
        Some(match v {
            1 => Refusal::WrongCluster,
            2 => Refusal::UnknownNode,
            3 => Refusal::WrongShard,
            4 => Refusal::UnsupportedVersion,
            5 => Refusal::ConnectionLimit,
            _ => return None,
        })
    }

    /// The body of a HelloRefuse frame; `text` is cut to [`REFUSE_TEXT_BYTES_MAX`] on a
    /// character boundary.
    pub fn encode(&self, text: &str) -> Bytes {
        let mut cut = text.len().min(REFUSE_TEXT_BYTES_MAX);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut out = BytesMut::with_capacity(1 + cut);
        out.put_u8(*self as u8);
        out.extend_from_slice(&text.as_bytes()[..cut]);
        out.freeze()
    }

    /// Decodes a HelloRefuse body into the reason and its (lossily decoded) text.
    pub fn decode(body: &[u8]) -> Result<(Refusal, String), DecodeError> {
        let (&code, text) = body.split_first().ok_or(DecodeError::Truncated)?;
        let refusal = Refusal::from_u8(code).ok_or(DecodeError::BadFlags(code))?;
        if text.len() > REFUSE_TEXT_BYTES_MAX {
            return Err(DecodeError::TrailingBytes(text.len() - REFUSE_TEXT_BYTES_MAX));
        }
        Ok((refusal, String::from_utf8_lossy(text).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_checks_each_field() {
        let local = Hello::new(77, 1, 3);
        let remote = Hello::new(77, 2, 3);
        assert_eq!(Hello::decode(&remote.encode()), Ok(remote));
        assert_eq!(Hello::decode(&remote.encode()[..20]), Err(DecodeError::Truncated));
        let peers = |id| id == 2;
        assert_eq!(remote.check(&local, None, peers), Ok(()));
        assert_eq!(remote.check(&local, Some(2), peers), Ok(()));
        assert_eq!(remote.check(&local, Some(3), peers), Err(Refusal::UnknownNode));
        let cases = [
            (Hello { cluster_id: 78, ..remote }, Refusal::WrongCluster),
            (Hello { node_id: 9, ..remote }, Refusal::UnknownNode),
            (Hello { node_id: 1, ..remote }, Refusal::UnknownNode),
            (Hello { node_id: 0, ..remote }, Refusal::UnknownNode),
            (Hello { shard_id: 4, ..remote }, Refusal::WrongShard),
            (Hello { version: 2, ..remote }, Refusal::UnsupportedVersion),
        ];
        for (hello, want) in cases {
            assert_eq!(hello.check(&local, None, |id| id == 2 || id == 1), Err(want), "{hello:?}");
        }
    }

    #[test]
    fn refusal_round_trips_with_bounded_text() {
        let long = "é".repeat(REFUSE_TEXT_BYTES_MAX);
        let body = Refusal::WrongCluster.encode(&long);
        assert!(body.len() <= 1 + REFUSE_TEXT_BYTES_MAX);
        let (r, text) = Refusal::decode(&body).unwrap();
        assert_eq!(r, Refusal::WrongCluster);
        assert!(long.starts_with(&text));
        assert_eq!(Refusal::decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(Refusal::decode(&[0]), Err(DecodeError::BadFlags(0)));
    }
}
