//! Shared helpers: run a test on a fresh glommio executor, start transports on
//! 127.0.0.1 port 0, and speak raw bytes to a listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use skiff_engine::{Entry, Message, MessageBody, NodeId};
use skiff_net::frame::{FrameKind, encode_frame};
use skiff_net::handshake::Hello;
use skiff_net::sys::bind_listener;
use skiff_net::{Inbound, Transport, TransportConfig};

pub const CLUSTER: u64 = 0x5eed;

/// Safety net only: a hung test fails instead of hanging the suite. No assertion
/// depends on elapsed time.
const TEST_DEADLINE_SECS: u64 = 120;

/// Runs `body` on its own executor (never spinning) and propagates its panics. Dropping
/// the executor at the end closes every socket the test opened, pass or fail.
pub fn run<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .name("skiff-net-it")
        .spawn(move || async move {
            glommio::timer::timeout(Duration::from_secs(TEST_DEADLINE_SECS), async move {
                body().await;
                Ok(())
            })
            .await
            .expect("test deadline passed");
        })
        .expect("executor starts")
        .join()
        .expect("test body passed");
}

/// A listener on 127.0.0.1, port chosen by the kernel.
pub fn listener() -> std::net::TcpListener {
    bind_listener("127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1:0")
}

/// An address nothing listens on (bound, then closed).
pub fn dead_addr() -> SocketAddr {
    listener().local_addr().unwrap()
}

pub fn config(node: NodeId, peers: Vec<(NodeId, SocketAddr)>) -> TransportConfig {
    let mut c = TransportConfig::new(CLUSTER, node, 0, peers);
    // Quick redials keep the tests short; the defaults are exercised by the benchmark.
    c.redial_backoff_initial_ms = 5;
    c.redial_backoff_max_ms = 50;
    c
}

/// Two transports, nodes 1 and 2, connected both ways. `tweak` adjusts each config
/// (called with the node id) before start; node 1 also lists node 3 at a dead address.
pub async fn pair(tweak: impl Fn(NodeId, &mut TransportConfig)) -> (Transport, Transport) {
    let (l1, l2) = (listener(), listener());
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let mut c1 = config(1, vec![(2, a2), (3, dead_addr())]);
    let mut c2 = config(2, vec![(1, a1)]);
    tweak(1, &mut c1);
    tweak(2, &mut c2);
    let t1 = Transport::start(c1, l1).expect("start node 1");
    let t2 = Transport::start(c2, l2).expect("start node 2");
    t1.connected(2).await;
    t2.connected(1).await;
    (t1, t2)
}

pub fn heartbeat(from: NodeId, to: NodeId, ctx: u64) -> Message {
    Message { from, to, term: 1, body: MessageBody::Heartbeat { commit: 0, ctx } }
}

pub fn append(from: NodeId, to: NodeId, index: u64, payload_bytes: usize) -> Message {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Append {
            prev_index: index - 1,
            prev_term: 1,
            commit: 0,
            entries: vec![Entry {
                term: 1,
                index,
                kind: Default::default(),
                data: Bytes::from(vec![index as u8; payload_bytes]),
            }],
        },
    }
}

/// Waits (polling every millisecond) until `cond` holds.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    while !cond() {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
}

/// Receives the next message, waiting for it.
pub async fn recv(t: &Transport) -> Inbound {
    loop {
        if let Some(m) = t.try_recv() {
            return m;
        }
        t.readable().await;
    }
}

/// Proves `server` still serves a well-behaved peer: `client` sends a heartbeat with
/// `ctx` and it arrives intact.
pub async fn still_serves(client: &Transport, server: &Transport, ctx: u64) {
    client.connected(1).await;
    client.send(heartbeat(2, 1, ctx)).expect("queued");
    assert_eq!(recv(server).await, Inbound::Raft(heartbeat(2, 1, ctx)));
}

pub fn frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_frame(kind, body, &mut out);
    out.to_vec()
}

pub fn hello(cluster: u64, node: NodeId, shard: u32) -> Vec<u8> {
    frame(FrameKind::Hello, &Hello::new(cluster, node, shard).encode())
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

/// Reads until the server closes the connection; returns what it sent.
pub async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

pub async fn write(stream: &mut TcpStream, bytes: &[u8]) {
    // The server may already have closed; the assertions look at what it counted.
    let _ = stream.write_all(bytes).await;
}
