//! The peer transport a shard owns: one listener, one dialed connection per peer for
//! sending, the accepted connections for receiving, the per-peer send queues, and the
//! bounded inbound queue the Raft loop drains.
//!
//! # How a shard owns its connections
//! A [`Transport`] is created inside the shard's glommio executor and every task it
//! spawns (listener, one dialer/writer per peer, one reader per accepted connection)
//! runs on that executor, on the shard's core; state is shared through `Rc`/`Cell`,
//! never across threads. Shard `i` dials shard `i` of each peer, and accepts
//! connections from shard `i` of each peer on its own peer port.
//!
//! Each direction has its own connection: this node *sends* to peer P only on the
//! connection it dialed to P, and *receives* from P only on the connection P dialed to
//! it. No tie-break between simultaneous dials is needed, a slow reader on one side
//! never holds up the other direction, and a dialed connection carries nothing back
//! after the handshake (bytes arriving there are a protocol error).
//!
//! # The Raft loop's side
//! [`Transport::send`] never waits: it encodes, queues in the control or bulk lane, and
//! wakes the peer's writer; if the peer is disconnected or its lane is full the message
//! is dropped (Raft retransmits) and the peer is queued for
//! [`Transport::take_unreachable`] (etcd's `ReportUnreachable`). Received messages wait
//! in a bounded queue that the loop drains with [`Transport::recv_batch`]; when it is
//! full, readers stop reading and TCP flow control pushes back on the sender.
//!
//! Dropping the `Transport` stops every task it started and closes every socket.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::{AsyncWriteExt, future};
use glommio::net::{TcpListener, TcpStream};
use log::{debug, info, warn};
use skiff_engine::{Message, NodeId};

use crate::backoff::{Backoff, REDIAL_BACKOFF_INITIAL_MS, REDIAL_BACKOFF_MAX_MS};
use crate::frame::{FRAME_BODY_BYTES_MAX_DEFAULT, FRAME_HEADER_BYTES, Frame, FrameDecoder, FrameError, FrameKind};
use crate::handshake::{HELLO_BYTES, Hello, REFUSE_TEXT_BYTES_MAX, Refusal};
use crate::message::{AppFrame, DecodeError, EncodeError, Encoder, OutFrame, decode_app, decode_message};
use crate::queue::{Lane, QueueFull, QueueLimits, SendQueue, WRITE_BATCH_BYTES_MAX};
use crate::recycling::RecyclingBuffer;
use crate::stats::{RejectReason, Stats, bump};
use crate::sys::{self, SocketOptions};

/// Default bound on received messages waiting for the Raft loop. A loop iteration
/// drains it; 4,096 covers a burst of 512 in-flight appends from each of several peers
/// plus their control traffic. When full, readers stop reading (TCP pushes back).
pub const INBOUND_MESSAGES_MAX_DEFAULT: usize = 4096;
/// Default bound on the frame bytes of received messages waiting for the Raft loop. The
/// messages hold their receive buffers, so this is the memory a loop that falls behind
/// can pin: 64 full 1 MiB append batches. A single larger frame is still admitted when
/// the queue is empty.
pub const INBOUND_BYTES_MAX_DEFAULT: usize = 64 << 20;
/// Backlog at which a connection reader yields after queueing a message, so the Raft
/// loop on the same executor drains (and the receive buffers recycle) instead of the
/// reader decoding far ahead of it.
pub const INBOUND_YIELD_MESSAGES: usize = 32;
/// Default bound on accepted peer connections per shard. A cluster has a handful of
/// peers; the bound only stops a flood of strangers from exhausting file descriptors.
pub const INBOUND_CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Default time an accepted connection has to complete its handshake, and a dialer to
/// hear back. Generous for a loaded peer, short enough that idle strangers are shed.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Default time a dial may take before it counts as failed and backs off.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 3_000;
/// Largest body accepted before the handshake completes: a Hello, or a refusal with its
/// text. An unauthenticated peer cannot make this side reserve more.
pub const HANDSHAKE_BODY_BYTES_MAX: usize = 1 + REFUSE_TEXT_BYTES_MAX;
/// Receive buffer allocated per authenticated connection at a time. Frames are cut out
/// of it without copying, so one buffer serves many frames before it is replaced (and
/// is recycled once they are dropped, see `recycling.rs`). 1 MiB holds a full append
/// batch; with up to `RETIRED_BUFFERS_MAX` retired buffers a peer connection pins
/// at most 5 MiB besides a single larger frame.
pub const RECV_BUFFER_BYTES: usize = 1 << 20;
/// Spare receive capacity below which another buffer is taken before reading. Large
/// reads mean fewer readiness waits, each of which costs glommio a few allocations
/// (measured: 8 allocations per 100 KiB message at 16 KiB, 2 at 128 KiB).
pub const RECV_SPARE_BYTES_MIN: usize = 128 << 10;
/// Receive buffer before the handshake completes: exactly one largest handshake frame,
/// so an unauthenticated connection pins no more.
pub const HANDSHAKE_RECV_BYTES: usize = FRAME_HEADER_BYTES + HANDSHAKE_BODY_BYTES_MAX;

const _: () = assert!(HANDSHAKE_BODY_BYTES_MAX >= HELLO_BYTES);
const _: () = assert!(INBOUND_YIELD_MESSAGES < INBOUND_MESSAGES_MAX_DEFAULT);
const _: () = assert!(RECV_SPARE_BYTES_MIN < RECV_BUFFER_BYTES);
const _: () = assert!(RECV_BUFFER_BYTES >= FRAME_HEADER_BYTES);

/// Errors starting a transport.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid transport configuration: {0}")]
    Config(String),
    #[error("peer listener: {0}")]
    Listener(#[source] io::Error),
}

/// Why [`Transport::send`] dropped a message. The Raft loop may ignore it: every drop is
/// counted in [`Stats`] and (except `UnknownPeer`) reported through
/// [`Transport::take_unreachable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("node {0} is not a configured peer")]
    UnknownPeer(NodeId),
    #[error("peer {0} is not connected")]
    Disconnected(NodeId),
    #[error("send queue to peer {0} is full")]
    QueueFull(NodeId),
    #[error(transparent)]
    TooLarge(#[from] EncodeError),
}

/// What the Raft loop receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Inbound {
    /// A Raft message; `from` is the authenticated peer and `to` this node.
    Raft(Message),
    /// An application frame from peer `from`.
    App { from: NodeId, frame: AppFrame },
}

/// Configuration of one shard's transport. Every bound has a documented default.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// Identifies the cluster; a peer with another id is refused.
    pub cluster_id: u64,
    /// This node's id (not 0).
    pub node_id: NodeId,
    /// The shard (Raft group) this transport serves; connections are shard-to-shard.
    pub shard_id: u32,
    /// Every peer this shard talks to, with the address of the same shard's peer port.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Largest frame body sent or accepted. Default [`FRAME_BODY_BYTES_MAX_DEFAULT`].
    pub frame_body_bytes_max: usize,
    /// Per-peer send queue bounds. Default [`QueueLimits::default`].
    pub queue: QueueLimits,
    /// Received messages waiting for the loop. Default [`INBOUND_MESSAGES_MAX_DEFAULT`].
    pub inbound_messages_max: usize,
    /// Frame bytes of received messages waiting for the loop. Default
    /// [`INBOUND_BYTES_MAX_DEFAULT`].
    pub inbound_bytes_max: usize,
    /// Accepted connections at once. Default [`INBOUND_CONNECTIONS_MAX_DEFAULT`].
    pub inbound_connections_max: usize,
    /// Default [`HANDSHAKE_TIMEOUT_MS_DEFAULT`].
    pub handshake_timeout: Duration,
    /// Default [`CONNECT_TIMEOUT_MS_DEFAULT`].
    pub connect_timeout: Duration,
    /// Redial backoff bounds. Defaults [`REDIAL_BACKOFF_INITIAL_MS`],
    /// [`REDIAL_BACKOFF_MAX_MS`].
    pub redial_backoff_initial_ms: u64,
    pub redial_backoff_max_ms: u64,
    /// Socket buffer sizes. Default: the kernel's.
    pub socket: SocketOptions,
}

impl TransportConfig {
    /// A configuration with every bound at its default.
    pub fn new(cluster_id: u64, node_id: NodeId, shard_id: u32, peers: Vec<(NodeId, SocketAddr)>) -> TransportConfig {
        TransportConfig {
            cluster_id,
            node_id,
            shard_id,
            peers,
            frame_body_bytes_max: FRAME_BODY_BYTES_MAX_DEFAULT,
            queue: QueueLimits::default(),
            inbound_messages_max: INBOUND_MESSAGES_MAX_DEFAULT,
            inbound_bytes_max: INBOUND_BYTES_MAX_DEFAULT,
            inbound_connections_max: INBOUND_CONNECTIONS_MAX_DEFAULT,
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS_DEFAULT),
            connect_timeout: Duration::from_millis(CONNECT_TIMEOUT_MS_DEFAULT),
            redial_backoff_initial_ms: REDIAL_BACKOFF_INITIAL_MS,
            redial_backoff_max_ms: REDIAL_BACKOFF_MAX_MS,
            socket: SocketOptions::default(),
        }
    }

    /// Checks the configuration; the message says what to fix.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |m: String| Err(NetError::Config(m));
        if self.node_id == skiff_engine::NO_NODE {
            return bad("node id must not be 0".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (id, _) in &self.peers {
            if *id == skiff_engine::NO_NODE || *id == self.node_id {
                return bad(format!("peer id {id} must be non-zero and differ from this node"));
            }
            if !seen.insert(*id) {
                return bad(format!("peer id {id} is listed twice"));
            }
        }
        if self.frame_body_bytes_max < HANDSHAKE_BODY_BYTES_MAX
            || self.frame_body_bytes_max > crate::frame::FRAME_BODY_BYTES_MAX_LIMIT
        {
            return bad(format!(
                "frame_body_bytes_max {} must be within [{HANDSHAKE_BODY_BYTES_MAX}, 2^32-1]",
                self.frame_body_bytes_max
            ));
        }
        if self.queue.control.messages_max == 0 || self.queue.bulk.messages_max == 0 {
            return bad("each send queue lane must hold at least one message".into());
        }
        if self.inbound_messages_max == 0 || self.inbound_bytes_max == 0 || self.inbound_connections_max == 0 {
            return bad("inbound bounds must be at least 1".into());
        }
        if self.redial_backoff_initial_ms == 0 || self.redial_backoff_initial_ms > self.redial_backoff_max_ms {
            return bad("redial backoff must satisfy 0 < initial <= max".into());
        }
        Ok(())
    }
}

/// A set of wakers to wake together: the glommio-local stand-in for a condition
/// variable. Waiters re-check their condition when woken.
#[derive(Debug, Default)]
struct Wakers(RefCell<Vec<Waker>>);

impl Wakers {
    fn wake_all(&self) {
        for w in self.0.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves once `ready()` holds (checked now and after every wake).
    fn until<'a>(&'a self, mut ready: impl FnMut() -> bool + 'a) -> impl Future<Output = ()> + 'a {
        future::poll_fn(move |cx| {
            if ready() {
                return Poll::Ready(());
            }
            let mut ws = self.0.borrow_mut();
            if !ws.iter().any(|w| w.will_wake(cx.waker())) {
                ws.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// Traffic with one peer, for the node's per-peer metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub frames_out: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Messages to this peer dropped (queue full, disconnected, too large).
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct PeerCounters {
    frames_out: Cell<u64>,
    bytes_out: Cell<u64>,
    frames_in: Cell<u64>,
    bytes_in: Cell<u64>,
    dropped: Cell<u64>,
}

impl PeerCounters {
    fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
}

#[derive(Debug)]
struct Peer {
    id: NodeId,
    addr: SocketAddr,
    queue: RefCell<SendQueue>,
    connected: Cell<bool>,
    traffic: PeerCounters,
    /// The writer waits here for frames; `send` wakes it.
    work: Wakers,
    /// Waiters for queue room and for connection state changes.
    room: Wakers,
    /// Generation of the newest accepted connection from this peer: a peer dials
    /// again only when it lost its connection, so an older one still open here is
    /// half-open (its host vanished, or a network path broke without a RST) and is
    /// closed at once rather than when keepalive finally gives up on it.
    inbound_generation: Cell<u64>,
    /// Readers of older connections wait here to be told they were replaced.
    inbound_replaced: Wakers,
}

#[derive(Debug)]
struct Shared {
    config: TransportConfig,
    local: Hello,
    peers: HashMap<NodeId, Peer>,
    encoder: RefCell<Encoder>,
    /// Received messages with the frame bytes each holds.
    inbound: RefCell<VecDeque<(Inbound, usize)>>,
    inbound_bytes: Cell<usize>,
    /// The Raft loop waits here for received messages.
    inbound_ready: Wakers,
    /// Readers wait here for room in `inbound`.
    inbound_room: Wakers,
    unreachable: RefCell<Vec<NodeId>>,
    accepted: Cell<usize>,
    stats: Stats,
    /// Every task this transport started and that is still running, so that dropping
    /// the transport cancels them all. A task removes itself when it ends, so
    /// connections that come and go leave nothing behind.
    tasks: RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>,
    next_task: Cell<u64>,
}

impl Shared {
    fn report_unreachable(&self, id: NodeId) {
        let mut u = self.unreachable.borrow_mut();
        if !u.contains(&id) {
            u.push(id);
        }
    }

    /// Spawns `work` on this executor as a task the transport cancels when dropped.
    fn spawn(self: &Rc<Shared>, work: impl Future<Output = ()> + 'static) {
        let id = self.next_task.get();
        self.next_task.set(id + 1);
        let s = self.clone();
        let handle = glommio::spawn_local(async move {
            work.await;
            // Dropping our own handle only detaches it; the task ends right after.
            s.tasks.borrow_mut().remove(&id);
        })
        .detach();
        // The task cannot have run yet: it was only scheduled.
        self.tasks.borrow_mut().insert(id, handle);
    }
}

/// One shard's peer transport. See the module documentation.
#[derive(Debug)]
pub struct Transport {
    shared: Rc<Shared>,
    local_addr: SocketAddr,
}

impl Transport {
    /// Starts serving `listener` (see [`sys::bind_listener`]) and dialing every peer.
    /// Must be called on the shard's glommio executor; every task it starts runs there.
    pub fn start(config: TransportConfig, listener: std::net::TcpListener) -> Result<Transport, NetError> {
        config.validate()?;
        let local_addr = listener.local_addr().map_err(NetError::Listener)?;
        // SAFETY: the fd comes from a bound, listening std listener whose ownership is
        // handed over here.
        let listener = unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) };
        let peers = config
            .peers
            .iter()
            .map(|&(id, addr)| {
                let peer = Peer {
                    id,
                    addr,
                    queue: RefCell::new(SendQueue::new(config.queue)),
                    connected: Cell::new(false),
                    traffic: PeerCounters::default(),
                    work: Wakers::default(),
                    room: Wakers::default(),
                    inbound_generation: Cell::new(0),
                    inbound_replaced: Wakers::default(),
                };
                (id, peer)
            })
            .collect();
        let shared = Rc::new(Shared {
            local: Hello::new(config.cluster_id, config.node_id, config.shard_id),
            encoder: RefCell::new(Encoder::new(config.frame_body_bytes_max)),
            peers,
            inbound: RefCell::new(VecDeque::new()),
            inbound_bytes: Cell::new(0),
            inbound_ready: Wakers::default(),
            inbound_room: Wakers::default(),
            unreachable: RefCell::new(Vec::new()),
            accepted: Cell::new(0),
            stats: Stats::default(),
            tasks: RefCell::new(HashMap::new()),
            next_task: Cell::new(0),
            config,
        });
        let s = shared.clone();
        shared.spawn(async move { accept_loop(&s, listener).await });
        for &(id, _) in &shared.config.peers {
            let s = shared.clone();
            shared.spawn(async move { dial_loop(&s, id).await });
        }
        Ok(Transport { shared, local_addr })
    }

    /// The address the peer listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Queues a Raft message for `msg.to`. Never waits. Control messages
    /// ([`skiff_engine::MessageBody::is_control`]) go in the control lane, the rest in
    /// the bulk lane. On any error the message is dropped and counted; except for an
    /// unknown peer, the peer is also reported unreachable.
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let lane = if msg.body.is_control() { Lane::Control } else { Lane::Bulk };
        let to = msg.to;
        self.enqueue(to, lane, move |enc| enc.message_owned(msg))
    }

    /// Queues an application frame for peer `to` in `lane`, with the same rules as
    /// [`Transport::send`].
    pub fn send_app(&self, to: NodeId, frame: &AppFrame, lane: Lane) -> Result<(), SendError> {
        self.enqueue(to, lane, |enc| enc.app(frame))
    }

    fn enqueue(
        &self,
        to: NodeId,
        lane: Lane,
        encode: impl FnOnce(&mut Encoder) -> Result<OutFrame, EncodeError>,
    ) -> Result<(), SendError> {
        let s = &self.shared;
        let Some(peer) = s.peers.get(&to) else {
            bump(&s.stats.dropped_unknown_peer);
            return Err(SendError::UnknownPeer(to));
        };
        if !peer.connected.get() {
            bump(&s.stats.dropped_disconnected);
            bump(&peer.traffic.dropped);
            s.report_unreachable(to);
            return Err(SendError::Disconnected(to));
        }
        let frame = match encode(&mut s.encoder.borrow_mut()) {
            Ok(f) => f,
            Err(e) => {
                bump(&s.stats.dropped_too_large);
                bump(&peer.traffic.dropped);
                s.report_unreachable(to);
                return Err(e.into());
            }
        };
        if let Err(QueueFull(_)) = peer.queue.borrow_mut().push(lane, frame) {
            bump(&s.stats.dropped_queue_full);
            bump(&peer.traffic.dropped);
            s.report_unreachable(to);
            return Err(SendError::QueueFull(to));
        }
        peer.work.wake_all();
        Ok(())
    }

    /// Moves up to `max` received messages into `out`, oldest first; returns how many.
    pub fn recv_batch(&self, out: &mut Vec<Inbound>, max: usize) -> usize {
        let s = &self.shared;
        let mut q = s.inbound.borrow_mut();
        let n = q.len().min(max);
        let mut bytes = 0;
        out.extend(q.drain(..n).map(|(m, b)| {
            bytes += b;
            m
        }));
        drop(q);
        s.inbound_bytes.set(s.inbound_bytes.get() - bytes);
        if n > 0 {
            s.inbound_room.wake_all();
        }
        n
    }

    /// Takes the oldest received message, if any.
    pub fn try_recv(&self) -> Option<Inbound> {
        let s = &self.shared;
        let (m, bytes) = s.inbound.borrow_mut().pop_front()?;
        s.inbound_bytes.set(s.inbound_bytes.get() - bytes);
        s.inbound_room.wake_all();
        Some(m)
    }

    /// Resolves when a received message is waiting (for a loop with nothing else to do).
    pub async fn readable(&self) {
        let s = &self.shared;
        s.inbound_ready.until(|| !s.inbound.borrow().is_empty()).await;
    }

    /// Traffic with `peer` so far (`None` for an unknown peer).
    pub fn peer_traffic(&self, peer: NodeId) -> Option<PeerTraffic> {
        let t = &self.shared.peers.get(&peer)?.traffic;
        Some(PeerTraffic {
            frames_out: t.frames_out.get(),
            bytes_out: t.bytes_out.get(),
            frames_in: t.frames_in.get(),
            bytes_in: t.bytes_in.get(),
            dropped: t.dropped.get(),
        })
    }

    /// Moves the peers to report unreachable (`engine.report_unreachable(id)`) into
    /// `out`, each once since the last call.
    pub fn take_unreachable(&self, out: &mut Vec<NodeId>) {
        out.append(&mut self.shared.unreachable.borrow_mut());
    }

    /// True when the connection to `peer` is established and accepting frames.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared.peers.get(&peer).is_some_and(|p| p.connected.get())
    }

    /// Resolves once the connection to `peer` is established.
    ///
    /// # Panics
    /// If `peer` is not configured.
    pub async fn connected(&self, peer: NodeId) {
        let p = self.shared.peers.get(&peer).expect("peer is configured");
        p.room.until(|| p.connected.get()).await;
    }

    /// Resolves once `lane` of `peer` has room for a frame of `bytes` (or the peer is
    /// disconnected, where sending would drop). For producers that may wait rather than
    /// drop: snapshot streaming, load generation.
    ///
    /// # Panics
    /// If `peer` is not configured.
    pub async fn send_capacity(&self, peer: NodeId, lane: Lane, bytes: usize) {
        let p = self.shared.peers.get(&peer).expect("peer is configured");
        p.room.until(|| !p.connected.get() || p.queue.borrow().has_room(lane, bytes)).await;
    }

    /// Queued (messages, bytes) for `peer` in `lane`.
    pub fn queued(&self, peer: NodeId, lane: Lane) -> (usize, usize) {
        self.shared.peers.get(&peer).map_or((0, 0), |p| p.queue.borrow().len(lane))
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Received (messages, frame bytes) waiting for [`Transport::recv_batch`].
    pub fn inbound_len(&self) -> (usize, usize) {
        (self.shared.inbound.borrow().len(), self.shared.inbound_bytes.get())
    }

    /// Tasks this transport is running: the listener, one dialer per peer, one reader
    /// per accepted connection.
    pub fn running_tasks(&self) -> usize {
        self.shared.tasks.borrow().len()
    }

    /// Accepted connections currently open.
    pub fn inbound_connections(&self) -> usize {
        self.shared.accepted.get()
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        // Each task is dropped (closing its socket) the next time the executor runs;
        // the tasks hold the last references to the shared state, so it goes with them.
        let tasks: Vec<_> = self.shared.tasks.borrow_mut().drain().collect();
        for (_, handle) in tasks {
            handle.cancel();
        }
    }
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("undecodable {kind:?} body: {err}")]
    Decode { kind: FrameKind, err: DecodeError },
    #[error("unexpected {0:?} frame")]
    Unexpected(FrameKind),
    #[error("bytes on a send-only connection")]
    UnexpectedBytes,
    #[error("message from {from} to {to} on the connection of peer {peer}")]
    WrongEndpoint { from: NodeId, to: NodeId, peer: NodeId },
    #[error("handshake refused: {0}")]
    Refused(Refusal),
    #[error("peer refused our handshake ({0}): {1}")]
    RefusedByPeer(Refusal, String),
    #[error("handshake timed out")]
    HandshakeTimeout,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("connection closed")]
    Closed,
    #[error("replaced by a newer connection from the same peer")]
    Replaced,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl ConnError {
    /// The rejection counter for this ending, if it is one.
    fn reason(&self) -> Option<RejectReason> {
        Some(match self {
            ConnError::Frame(e) => e.reason(),
            ConnError::Decode { .. } => RejectReason::Undecodable,
            ConnError::Unexpected(_) | ConnError::UnexpectedBytes => RejectReason::UnexpectedKind,
            ConnError::WrongEndpoint { .. } => RejectReason::WrongEndpoint,
            ConnError::Refused(r) => match r {
                Refusal::WrongCluster => RejectReason::WrongCluster,
                Refusal::UnknownNode => RejectReason::UnknownNode,
                Refusal::WrongShard => RejectReason::WrongShard,
                Refusal::UnsupportedVersion => RejectReason::UnsupportedVersion,
                Refusal::ConnectionLimit => RejectReason::ConnectionLimit,
            },
            ConnError::RefusedByPeer(..) => RejectReason::RefusedByPeer,
            ConnError::HandshakeTimeout => RejectReason::HandshakeTimeout,
            ConnError::Truncated => RejectReason::Truncated,
            ConnError::Closed | ConnError::Replaced | ConnError::Io(_) => return None,
        })
    }
}

/// Reads until one whole frame is buffered; `Closed` at a clean end of stream.
async fn read_frame(
    stream: &TcpStream,
    recv: &mut RecyclingBuffer,
    decoder: &FrameDecoder,
) -> Result<Frame, ConnError> {
    loop {
        if let Some(frame) = decoder.decode(recv.bytes())? {
            return Ok(frame);
        }
        // The header (if buffered) has passed the cap check: room for the whole frame.
        let frame_bytes = decoder.frame_len(recv.bytes())?.unwrap_or(0);
        recv.make_room(frame_bytes);
        if sys::read_into(stream, recv.bytes()).await? == 0 {
            return Err(if recv.bytes().is_empty() { ConnError::Closed } else { ConnError::Truncated });
        }
    }
}

/// Writes one handshake frame (small, contiguous; no gathering needed).
async fn write_frame(stream: &mut TcpStream, kind: FrameKind, body: &[u8]) -> io::Result<()> {
    let mut wire = BytesMut::with_capacity(FRAME_HEADER_BYTES + body.len());
    crate::frame::encode_frame(kind, body, &mut wire);
    stream.write_all(&wire).await
}

async fn with_timeout<T>(dur: Duration, work: impl Future<Output = Result<T, ConnError>>) -> Result<T, ConnError> {
    future::or(work, async {
        glommio::timer::sleep(dur).await;
        Err(ConnError::HandshakeTimeout)
    })
    .await
}

async fn accept_loop(s: &Rc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!("shard {}: accepting a peer connection failed: {e}", s.local.shard_id);
                glommio::timer::sleep(Duration::from_millis(REDIAL_BACKOFF_INITIAL_MS)).await;
                continue;
            }
        };
        let s2 = s.clone();
        s.spawn(async move { serve_accepted(&s2, stream).await });
    }
}

/// Counts an accepted connection for as long as it lives.
struct AcceptedGuard<'a>(&'a Shared);

impl Drop for AcceptedGuard<'_> {
    fn drop(&mut self) {
        self.0.accepted.set(self.0.accepted.get() - 1);
    }
}

async fn serve_accepted(s: &Rc<Shared>, mut stream: TcpStream) {
    let peer_addr = stream.peer_addr().ok();
    s.accepted.set(s.accepted.get() + 1);
    let _guard = AcceptedGuard(s);
    let result = if s.accepted.get() > s.config.inbound_connections_max {
        Err(ConnError::Refused(Refusal::ConnectionLimit))
    } else {
        receive(s, &mut stream).await
    };
    match result {
        Ok(()) | Err(ConnError::Closed) => debug!("peer connection from {peer_addr:?} closed"),
        Err(e) => {
            if let Some(reason) = e.reason() {
                s.stats.reject(reason);
            }
            if let ConnError::Refused(r) = &e {
                let text = format!(
                    "node {} shard {} of cluster {:#x} refuses: {r}",
                    s.local.node_id, s.local.shard_id, s.local.cluster_id
                );
                // Best effort: the refused side logs the reason; we close either way.
                let _ = write_frame(&mut stream, FrameKind::HelloRefuse, &r.encode(&text)).await;
            }
            warn!("shard {}: closing peer connection from {peer_addr:?}: {e}", s.local.shard_id);
        }
    }
}

/// The receiving side of an accepted connection: handshake, then frames to the inbound
/// queue until the connection ends.
async fn receive(s: &Rc<Shared>, stream: &mut TcpStream) -> Result<(), ConnError> {
    sys::configure(stream, &s.config.socket)?;
    // Before the handshake, only a Hello-sized frame is accepted and only a Hello-sized
    // buffer is allocated: a stranger cannot make this side reserve more.
    let mut recv = RecyclingBuffer::new(HANDSHAKE_RECV_BYTES, HANDSHAKE_RECV_BYTES);
    let hello_decoder = FrameDecoder::new(HANDSHAKE_BODY_BYTES_MAX);
    let frame = with_timeout(s.config.handshake_timeout, read_frame(stream, &mut recv, &hello_decoder)).await?;
    if frame.kind != FrameKind::Hello {
        return Err(ConnError::Unexpected(frame.kind));
    }
    let hello = Hello::decode(&frame.body).map_err(|err| ConnError::Decode { kind: frame.kind, err })?;
    hello.check(&s.local, None, |id| s.peers.contains_key(&id)).map_err(ConnError::Refused)?;
    write_frame(stream, FrameKind::HelloAccept, &s.local.encode()).await?;
    let peer = hello.node_id;
    info!("shard {}: accepted connection from node {peer}", s.local.shard_id);
    let from = &s.peers[&peer];
    let generation = from.inbound_generation.get() + 1;
    from.inbound_generation.set(generation);
    from.inbound_replaced.wake_all();
    let decoder = FrameDecoder::new(s.config.frame_body_bytes_max);
    recv.set_sizes(RECV_BUFFER_BYTES, RECV_SPARE_BYTES_MIN);
    loop {
        if from.inbound_generation.get() != generation {
            return Err(ConnError::Replaced);
        }
        let frame = future::or(read_frame(stream, &mut recv, &decoder), async {
            from.inbound_replaced.until(|| from.inbound_generation.get() != generation).await;
            Err(ConnError::Replaced)
        })
        .await?;
        let frame_bytes = FRAME_HEADER_BYTES + frame.body.len();
        let inbound = match frame.kind {
            FrameKind::App => Inbound::App {
                from: peer,
                frame: decode_app(frame.body).map_err(|err| ConnError::Decode { kind: FrameKind::App, err })?,
            },
            kind if kind.is_handshake() => return Err(ConnError::Unexpected(kind)),
            kind => {
                let msg = decode_message(kind, frame.body).map_err(|err| ConnError::Decode { kind, err })?;
                if msg.from != peer || msg.to != s.local.node_id {
                    return Err(ConnError::WrongEndpoint { from: msg.from, to: msg.to, peer });
                }
                Inbound::Raft(msg)
            }
        };
        // Back-pressure: stop reading while the loop is behind.
        s.inbound_room
            .until(|| {
                let held = s.inbound_bytes.get();
                s.inbound.borrow().len() < s.config.inbound_messages_max
                    && (held == 0 || held + frame_bytes <= s.config.inbound_bytes_max)
            })
            .await;
        s.inbound.borrow_mut().push_back((inbound, frame_bytes));
        s.inbound_bytes.set(s.inbound_bytes.get() + frame_bytes);
        bump(&s.stats.frames_received);
        if let Some(p) = s.peers.get(&peer) {
            bump(&p.traffic.frames_in);
            PeerCounters::add(&p.traffic.bytes_in, frame_bytes as u64);
        }
        s.inbound_ready.wake_all();
        if s.inbound.borrow().len() >= INBOUND_YIELD_MESSAGES {
            future::yield_now().await;
        }
    }
}

/// Dials peer `id`, keeps the connection up with backoff, and writes its queue.
async fn dial_loop(s: &Rc<Shared>, id: NodeId) {
    let peer = &s.peers[&id];
    let seed = s.local.node_id.rotate_left(32) ^ id ^ u64::from(s.local.shard_id) << 16;
    let mut backoff = Backoff::new(s.config.redial_backoff_initial_ms, s.config.redial_backoff_max_ms, seed);
    loop {
        match connect(s, peer).await {
            Ok(mut stream) => {
                backoff.reset();
                bump(&s.stats.connects);
                info!("shard {}: connected to node {id} at {}", s.local.shard_id, peer.addr);
                peer.connected.set(true);
                peer.room.wake_all();
                let end = write_loop(s, peer, &mut stream).await;
                peer.connected.set(false);
                let dropped = peer.queue.borrow_mut().clear() as u64;
                s.stats.dropped_disconnected.set(s.stats.dropped_disconnected.get() + dropped);
                s.report_unreachable(id);
                peer.room.wake_all();
                if let Some(reason) = end.reason() {
                    s.stats.reject(reason);
                }
                warn!("shard {}: connection to node {id} lost: {end}", s.local.shard_id);
            }
            Err(e) => {
                if let Some(reason) = e.reason() {
                    s.stats.reject(reason);
                }
                debug!("shard {}: dialing node {id} at {} failed: {e}", s.local.shard_id, peer.addr);
                if let ConnError::RefusedByPeer(..) = e {
                    warn!("shard {}: node {id} refused us: {e}", s.local.shard_id);
                }
            }
        }
        glommio::timer::sleep(backoff.next_delay()).await;
    }
}

async fn connect(s: &Shared, peer: &Peer) -> Result<TcpStream, ConnError> {
    let mut stream =
        future::or(async { TcpStream::connect(peer.addr).await.map_err(|e| ConnError::Io(e.into())) }, async {
            glommio::timer::sleep(s.config.connect_timeout).await;
            Err(ConnError::Io(io::ErrorKind::TimedOut.into()))
        })
        .await?;
    sys::configure(&stream, &s.config.socket)?;
    write_frame(&mut stream, FrameKind::Hello, &s.local.encode()).await?;
    let mut recv = RecyclingBuffer::new(HANDSHAKE_RECV_BYTES, HANDSHAKE_RECV_BYTES);
    let decoder = FrameDecoder::new(HANDSHAKE_BODY_BYTES_MAX);
    let frame = with_timeout(s.config.handshake_timeout, read_frame(&stream, &mut recv, &decoder)).await?;
    match frame.kind {
        FrameKind::HelloAccept => {
            let hello = Hello::decode(&frame.body).map_err(|err| ConnError::Decode { kind: frame.kind, err })?;
            hello.check(&s.local, Some(peer.id), |_| true).map_err(ConnError::Refused)?;
            if !recv.bytes().is_empty() {
                return Err(ConnError::UnexpectedBytes);
            }
            Ok(stream)
        }
        FrameKind::HelloRefuse => {
            let (refusal, text) =
                Refusal::decode(&frame.body).map_err(|err| ConnError::Decode { kind: frame.kind, err })?;
            Err(ConnError::RefusedByPeer(refusal, text))
        }
        kind => Err(ConnError::Unexpected(kind)),
    }
}

/// Writes the peer's queue until the connection fails. Each write takes every queued
/// control frame and then bulk frames up to [`WRITE_BATCH_BYTES_MAX`] (at least one), in
/// one gather write. While idle it watches the socket: the acceptor sends nothing after its
/// HelloAccept, so readability means end of stream (or a misbehaving peer).
async fn write_loop(s: &Shared, peer: &Peer, stream: &mut TcpStream) -> ConnError {
    let mut batch: Vec<OutFrame> = Vec::new();
    // Reused across batches: steady sending allocates nothing per write.
    let mut gather = sys::GatherBuf::default();
    loop {
        if peer.queue.borrow().is_empty() {
            let mut probe = [0u8; 1];
            let idle = future::or(
                async {
                    peer.work.until(|| !peer.queue.borrow().is_empty()).await;
                    None
                },
                async { Some(stream.peek(&mut probe).await) },
            )
            .await;
            match idle {
                None => {}
                Some(Ok(0)) => return ConnError::Closed,
                Some(Ok(_)) => return ConnError::UnexpectedBytes,
                Some(Err(e)) => return ConnError::Io(e.into()),
            }
        }
        peer.queue.borrow_mut().take_batch(&mut batch, WRITE_BATCH_BYTES_MAX);
        // Room was freed: producers waiting for capacity may go on.
        peer.room.wake_all();
        if let Err(e) = sys::write_frames(stream, &batch, &mut gather).await {
            let lost = batch.len() as u64;
            s.stats.dropped_disconnected.set(s.stats.dropped_disconnected.get() + lost);
            return ConnError::Io(e);
        }
        s.stats.frames_sent.set(s.stats.frames_sent.get() + batch.len() as u64);
        PeerCounters::add(&peer.traffic.frames_out, batch.len() as u64);
        PeerCounters::add(&peer.traffic.bytes_out, batch.iter().map(|f| f.wire_bytes() as u64).sum());
        batch.clear();
    }
}
