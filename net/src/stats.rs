//! Counters a transport keeps: rejected connections and frames by reason, and dropped
//! messages. Read by the node for `/metrics`; cheap enough for the hot path (a `Cell`
//! increment on the shard's own thread).

use std::cell::Cell;

/// Why a connection was closed (or refused) by this side. Each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum RejectReason {
    /// A frame declared a body longer than the cap (rejected before allocation).
    Oversized,
    /// The first bytes of a frame were not the magic: garbage or another protocol.
    BadMagic,
    /// A frame of another format version.
    BadVersion,
    /// The header failed its own checksum.
    HeaderChecksum,
    /// The body failed its checksum.
    BodyChecksum,
    /// A frame kind version 1 does not define.
    UnknownKind,
    /// Undefined header flags set.
    BadFlags,
    /// The body did not decode for its kind.
    Undecodable,
    /// A frame out of place: a Raft frame before the handshake, a second handshake, or
    /// traffic on the direction of a connection that carries none.
    UnexpectedKind,
    /// A Raft message whose `from` is not the handshaken peer or whose `to` is not us.
    WrongEndpoint,
    /// Handshake from or to another cluster.
    WrongCluster,
    /// Handshake naming a node this node does not talk to (or the wrong one).
    UnknownNode,
    /// Handshake for another shard.
    WrongShard,
    /// Handshake at an unsupported format version.
    UnsupportedVersion,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// More inbound connections than the configured limit.
    ConnectionLimit,
    /// The remote side refused our handshake.
    RefusedByPeer,
}

impl RejectReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; 18] = [
        RejectReason::Oversized,
        RejectReason::BadMagic,
        RejectReason::BadVersion,
        RejectReason::HeaderChecksum,
        RejectReason::BodyChecksum,
        RejectReason::UnknownKind,
        RejectReason::BadFlags,
        RejectReason::Undecodable,
        RejectReason::UnexpectedKind,
        RejectReason::WrongEndpoint,
        RejectReason::WrongCluster,
        RejectReason::UnknownNode,
        RejectReason::WrongShard,
        RejectReason::UnsupportedVersion,
        RejectReason::HandshakeTimeout,
        RejectReason::Truncated,
        RejectReason::ConnectionLimit,
        RejectReason::RefusedByPeer,
    ];

    /// A snake_case name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::BadMagic => "bad_magic",
            RejectReason::BadVersion => "bad_version",
            RejectReason::HeaderChecksum => "header_checksum",
            RejectReason::BodyChecksum => "body_checksum",
            RejectReason::UnknownKind => "unknown_kind",
            RejectReason::BadFlags => "bad_flags",
            RejectReason::Undecodable => "undecodable",
            RejectReason::UnexpectedKind => "unexpected_kind",
            RejectReason::WrongEndpoint => "wrong_endpoint",
            RejectReason::WrongCluster => "wrong_cluster",
            RejectReason::UnknownNode => "unknown_node",
            RejectReason::WrongShard => "wrong_shard",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::Truncated => "truncated",
            RejectReason::ConnectionLimit => "connection_limit",
            RejectReason::RefusedByPeer => "refused_by_peer",
        }
    }
}

const _: () = assert!(RejectReason::ALL.len() == RejectReason::RefusedByPeer as usize + 1);

/// Counters of one transport (one shard).
#[derive(Debug, Default)]
pub struct Stats {
    rejects: [Cell<u64>; RejectReason::ALL.len()],
    /// Messages dropped because a peer's send queue was full.
    pub dropped_queue_full: Cell<u64>,
    /// Messages dropped because they encode to more than the frame cap.
    pub dropped_too_large: Cell<u64>,
    /// Messages dropped because their connection failed before they were written.
    pub dropped_disconnected: Cell<u64>,
    /// Messages addressed to a node that is not a configured peer.
    pub dropped_unknown_peer: Cell<u64>,
    /// Frames written to peers.
    pub frames_sent: Cell<u64>,
    /// Frames received and handed to the node.
    pub frames_received: Cell<u64>,
    /// Outbound connections established (handshake accepted).
    pub connects: Cell<u64>,
}

impl Stats {
    /// Records a rejection.
    pub fn reject(&self, reason: RejectReason) {
        bump(&self.rejects[reason as usize]);
    }

    /// Rejections counted for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejects[reason as usize].get()
    }

    /// Every (reason, count) pair, for export.
    pub fn rejections(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL.iter().map(|r| (*r, self.rejected(*r)))
    }
}

/// Adds one to a counter.
pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_and_name() {
        let stats = Stats::default();
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            for _ in 0..=i {
                stats.reject(*r);
            }
        }
        for (i, (r, n)) in stats.rejections().enumerate() {
            assert_eq!(n, i as u64 + 1, "{}", r.name());
        }
        let names: std::collections::HashSet<_> = RejectReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), RejectReason::ALL.len());
    }
}
