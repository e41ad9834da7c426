//! Malformed input on the live ports of a loaded 3-node cluster: garbage, oversized
//! lengths, truncated frames and slow-drip senders on the peer, client and admin
//! ports of every node, while well-behaved clients keep writing. Every bad connection
//! is answered with an error and/or closed; the good clients see no failure; no
//! acknowledged write is lost; and the nodes' memory stays within the stated bound.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, Resp, bulk, http_get, ok};

const ELECTION: Duration = Duration::from_secs(10);

/// The bound on each node's resident memory during the hostile phase: its own
/// footprint (io_uring buffers, caches) plus what the hostile clients may make it hold
/// (each partial client request is bounded by the 8 MiB request cap; the test keeps
/// eight such connections per node, ~1 MiB each, open at once).
const RSS_BOUND_MIB: u64 = 256;

fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

/// Reads until the peer closes the connection (or `within` passes); what was read and
/// whether it closed.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        s.set_read_timeout(Some(left.min(Duration::from_millis(200)))).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (got, true),
        }
    }
}

fn garbage(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A peer frame header (docs/wire-format.md) with a valid magic, version and header
/// checksum, declaring `body_len`.
fn frame_header(kind: u8, body_len: u32, body_crc: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(b"SKF1");
    h.push(1);
    h.push(kind);
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&body_len.to_le_bytes());
    h.extend_from_slice(&body_crc.to_le_bytes());
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Every kind of bad peer connection; each must be closed by the node.
fn attack_peer_port(addr: &str) {
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", garbage(64 * 1024, 7), false),
        ("oversized length", frame_header(1, u32::MAX, 0), false),
        ("truncated hello", [frame_header(1, 100, 0), vec![1, 2, 3]].concat(), true),
        ("bad body checksum", [frame_header(1, 8, 12345), vec![0; 8]].concat(), false),
    ];
    for (what, bytes, half_close) in cases {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&bytes);
        if half_close {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let (_, closed) = read_until_closed(&mut s, Duration::from_secs(5));
        assert!(closed, "peer port {addr}: {what}: the node kept the connection open");
    }
}

/// Bad client connections: each gets a protocol error and is closed, or (for
/// inline garbage, as with Redis) error replies.
fn attack_client_port(addr: &str) {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bulk length over the cap", b"*1\r\n$99999999999\r\n".to_vec()),
        ("array length over the cap", b"*2000000\r\n".to_vec()),
        ("bad bulk header", b"*1\r\n%3\r\nfoo\r\n".to_vec()),
        ("binary garbage", garbage(16 * 1024, 11)),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&bytes);
        let (reply, closed) = read_until_closed(&mut s, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("-ERR") || text.starts_with("-"), "client port {addr}: {what}: reply {text:?}");
        assert!(closed || what == "binary garbage", "client port {addr}: {what}: not closed");
    }
    // Truncated request, then the client goes away: nothing to answer, nothing breaks.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk").unwrap();
    drop(s);
}

fn attack_admin_port(addr: &str) {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", garbage(8 * 1024, 13), "HTTP/1.1 400"),
        (
            "huge declared body",
            b"POST /transfer-leader?to=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
            "HTTP/1.1 413",
        ),
    ];
    for (what, bytes, want) in cases {
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(&bytes);
        let (reply, closed) = read_until_closed(&mut s, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with(want), "admin port {addr}: {what}: {text:?}");
        assert!(closed, "admin port {addr}: {what}: not closed");
    }
}

/// Sends `bytes` one at a time, `gap` apart, until done or the node closes.
fn drip(addr: String, bytes: Vec<u8>, gap: Duration) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        for b in bytes {
            if s.write_all(&[b]).is_err() {
                return (Vec::new(), true);
            }
            std::thread::sleep(gap);
        }
        read_until_closed(&mut s, Duration::from_secs(15))
    })
}

#[test]
fn hostile_connections_on_every_port_leave_a_loaded_cluster_unharmed() {
    // Production election timing (1 s): the good clients must see no failure, and the
    // test timing's 200 ms election timeout can expire on a busy 2-core machine.
    let c = Cluster::start(3, &["--tick-ms", "100", "--election-ticks", "10"]);
    let leader = c.leader(ELECTION);
    let pids: Vec<u32> = (1..=3).map(|id| c.pid(id)).collect();

    // Well-behaved load: a writer through the leader and one through a follower; every
    // reply must be +OK.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = [leader, 1 + leader % 3]
        .into_iter()
        .map(|via| {
            let addr = c.node(via).client.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut cl = Resp::connect(&addr);
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (k, v) = (format!("good-{via}-{i}"), format!("v{i}"));
                    let r = cl.cmd(&["SET", &k, &v]);
                    assert_eq!(r, ok(), "a well-behaved client got {r:?}");
                    acked.push((k, v));
                    i += 1;
                }
                acked
            })
        })
        .collect();

    // Slow drips on every port of every node, running while the other attacks go on.
    let mut drips = Vec::new();
    for id in 1..=3 {
        let n = c.node(id);
        // Peer: a handshake frame a byte at a time never completes in time; the node's
        // handshake timeout (10 s) closes it.
        drips.push(("peer", drip(n.peer.clone(), frame_header(1, 40, 0), Duration::from_millis(600))));
        // Admin: request head a byte at a time, cut off by the header read timeout.
        drips.push((
            "admin",
            drip(n.admin.clone(), b"GET /status HTTP/1.1\r\nHost: x\r\n".to_vec(), Duration::from_millis(600)),
        ));
    }
    // Client: a slow but valid request is assembled and answered, as Redis does.
    let client_drip = drip(
        c.node(1).client.clone(),
        b"*3\r\n$3\r\nSET\r\n$4\r\ndrip\r\n$3\r\nyes\r\n".to_vec(),
        Duration::from_millis(20),
    );
    // Partial large requests held open: eight per node, ~1 MiB each.
    let mut held = Vec::new();
    for id in 1..=3 {
        for _ in 0..8 {
            let mut s = TcpStream::connect(&c.node(id).client).unwrap();
            s.write_all(b"*3\r\n$3\r\nSET\r\n$4\r\nheld\r\n$4000000\r\n").unwrap();
            s.write_all(&vec![b'x'; 1 << 20]).unwrap();
            held.push(s);
        }
    }
    for id in 1..=3 {
        let n = c.node(id);
        attack_peer_port(&n.peer);
        attack_client_port(&n.client);
        attack_admin_port(&n.admin);
    }
    let peak: Vec<u64> = pids.iter().map(|&p| rss_mib(p)).collect();
    for (i, mib) in peak.iter().enumerate() {
        assert!(*mib < RSS_BOUND_MIB, "node {} holds {mib} MiB with hostile clients (bound {RSS_BOUND_MIB})", i + 1);
    }
    drop(held);
    for (port, d) in drips {
        let (_, closed) = d.join().unwrap();
        assert!(closed, "a slow-drip connection on a {port} port was never closed");
    }
    let (reply, _) = client_drip.join().unwrap();
    assert!(String::from_utf8_lossy(&reply).starts_with("+OK"), "the slow client was answered");

    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() > 20, "the good clients made progress: {}", acked.len());
    // The attacks were seen and counted as rejections by reason.
    let metrics = http_get(&c.node(1).admin, "/metrics");
    let rejected: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("skiff_transport_rejected_frames_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(rejected >= 4, "peer-port rejections were counted: {rejected}");
    // Nothing acknowledged was lost, on any node.
    for id in 1..=3 {
        let mut cl = c.client(id);
        for (k, v) in acked.iter().step_by(7) {
            assert_eq!(cl.cmd(&["GET", k]), bulk(v), "node {id}: {k}");
        }
        assert_eq!(cl.cmd(&["GET", "drip"]), bulk("yes"));
    }
}
