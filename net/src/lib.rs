//! Skiff's transport: framed, checksummed Raft messages between the shards of peer
//! nodes over TCP, and the RESP2 codec for the client port.
//!
//! # Layout
//! - [`frame`]: the zerocopy frame header and the incremental frame decoder.
//! - [`message`]: frame bodies for every Raft message and for application frames;
//!   gather-list encoding and zero-copy decoding of entry payloads.
//! - [`handshake`]: the cluster/node/shard/version handshake and its refusals.
//! - [`queue`]: the per-peer send queue with a control lane and a bulk lane.
//! - [`recycling`]: receive buffers and head arenas, recycled once the frames cut from
//!   them are dropped.
//! - [`backoff`]: capped exponential redial backoff with jitter.
//! - [`stats`]: rejection and drop counters.
//! - [`sys`]: socket options and the vectored `sendmsg` glommio lacks.
//! - [`transport`]: the glommio [`Transport`] a shard owns: listener, dialers, writers.
//! - [`resp`]: the RESP2 request/reply codec.
//! - [`client`]: a RESP2 client connection on glommio (pipelining, protocol errors).
//! - [`child`]: the parent-death signal for programs that start nodes.
//!
//! The wire format is described in `docs/wire-format.md`.

pub mod backoff;
pub mod child;
pub mod client;
pub mod frame;
pub mod handshake;
pub mod message;
pub mod queue;
pub mod recycling;
pub mod resp;
pub mod stats;
pub mod sys;
pub mod transport;

pub use client::{ClientConnection, ClientError};
pub use frame::{Frame, FrameDecoder, FrameError, FrameHeader, FrameKind};
pub use handshake::{Hello, Refusal};
pub use message::{AppFrame, DecodeError, EncodeError, Encoder, OutFrame, Payloads};
pub use queue::{Lane, LaneLimits, QueueLimits};
pub use resp::{ReplyDecoder, Request, RequestDecoder, RespError, RespLimits, RespValue};
pub use stats::{RejectReason, Stats};
pub use transport::{Inbound, NetError, PeerTraffic, SendError, Transport, TransportConfig};
