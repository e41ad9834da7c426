//! The admin port end to end: a server on 127.0.0.1:0 over fabricated shard reports and
//! fake shards answering operations; every endpoint, every error status, hostile clients
//! next to a well-behaved one, and a glommio executor woken by an operation.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Once};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff_engine::{ConfState, PeerProgress, ProgressState, Role, Stats, Status};
use skiff_node::admin::{AdminHandle, AdminLimits, AdminServer, Op, OpReply, OpsReceiver, ops_channel};
use skiff_node::metrics::{
    Command, Member, MetricsConfig, NodeInfo, Published, RejectReason, ShardMetrics, ShardStatus, TransportCounters,
};

/// Socket read timeout for the test client: far above any answer's time, so a hang
/// fails the test instead of blocking it.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn engine_status(role: Role, learner: bool) -> Status {
    let leader = role == Role::Leader;
    Status {
        id: 1,
        role,
        term: 7,
        vote: 1,
        leader: if leader { 1 } else { 2 },
        commit: 120,
        applied: 118,
        persisted: 121,
        first_index: 50,
        last_index: 121,
        lead_transferee: 0,
        election_timeout_ticks: 10,
        conf_state: ConfState { voters: vec![1, 2, 3], learners: if learner { vec![1] } else { vec![] } },
        pending_reads: 1,
        progress: if leader {
            [1u64, 2, 3]
                .into_iter()
                .map(|id| PeerProgress {
                    id,
                    is_learner: false,
                    matched: 121 - id,
                    next: 122 - id,
                    state: ProgressState::Replicate,
                    inflight_msgs: id as usize,
                    inflight_bytes: 512 * id,
                    recent_active: true,
                    paused: false,
                    ticks_since_heard: if id == 1 { 0 } else { 2 * id },
                })
                .collect()
        } else {
            Vec::new()
        },
        stats: Stats { campaigns: 2, leaderships_won: 1, msgs_stale_term: 4, ..Stats::default() },
    }
}

/// Two shards: 0 leads with peers 2 and 3 and has recorded a little of everything;
/// 1 is a learner that follows.
fn fabricated_published() -> Arc<Published> {
    let node = NodeInfo {
        node_id: 1,
        cluster: "test-cluster".to_string(),
        members: vec![
            Member { id: 1, addr: "127.0.0.1:7001".to_string(), learner: false },
            Member { id: 2, addr: "127.0.0.1:7002".to_string(), learner: false },
            Member { id: 3, addr: "127.0.0.1:7003".to_string(), learner: false },
        ],
    };
    let published = Arc::new(Published::new(node, 2));

    let mut m = ShardMetrics::new(0, MetricsConfig::default());
    m.record_leader(1, true);
    for i in 0..200u64 {
        m.record_client_request(Command::Set, Duration::from_micros(150 + i));
        m.record_client_request(Command::Get, Duration::from_micros(60 + i / 2));
        m.record_propose_to_commit(Duration::from_micros(100 + i));
        m.record_commit_to_apply(Duration::from_micros(5 + i % 7));
        m.record_ready_iteration(Duration::from_micros(20 + i % 50));
        m.record_read_index(Duration::from_micros(90 + i));
    }
    m.record_client_request(Command::from_name(b"CONFIG"), Duration::from_micros(12));
    m.record_proposals(200);
    m.record_committed(200);
    m.record_reads(200);
    m.record_proposal_rejected(RejectReason::Overloaded);
    m.record_read_rejected(RejectReason::NoLeader);
    for i in 0..50u64 {
        m.record_wal_write(4 + i % 4, 4096 * (1 + i % 3), Duration::from_micros(30 + i));
        let _ = m.record_wal_fsync(Duration::from_micros(45 + i));
    }
    let _ = m.record_apply_batch(200, Duration::from_micros(700));
    let t0 = Instant::now();
    // Gaps of 100, 100, 250 and 100 ms: one late heartbeat per peer.
    for at_ms in [0u64, 100, 200, 450, 550] {
        let at = t0 + Duration::from_millis(at_ms);
        for peer in [2, 3] {
            let _ = m.record_heartbeat_sent(peer, at, Duration::from_millis(100));
        }
    }
    m.record_peer_send_queue_delay(2, Duration::from_micros(15));
    m.record_peer_send_queue_delay(3, Duration::from_micros(25));
    m.set_transport_counters(
        2,
        TransportCounters { bytes_out: 1 << 20, bytes_in: 4096, frames_out: 300, frames_in: 290, dropped_messages: 1 },
    );
    m.set_transport_rejections(vec![("too_large", 2), ("bad_checksum", 1)]);
    m.set_transport_counters(3, TransportCounters { bytes_out: 1 << 19, ..TransportCounters::default() });
    m.set_pending(3, 1);
    m.set_clients(5);
    m.record_snapshot_taken();
    let status =
        ShardStatus::from_engine(0, &engine_status(Role::Leader, false), false, 100, Duration::from_millis(10));
    published.publish(m.report(status));

    let mut f = ShardMetrics::new(1, MetricsConfig::default());
    f.record_leader(2, false);
    f.record_client_request(Command::Get, Duration::from_micros(80));
    let _ = f.record_wal_fsync(Duration::from_micros(70));
    let status = ShardStatus::from_engine(1, &engine_status(Role::Follower, true), true, 90, Duration::from_millis(10));
    published.publish(f.report(status));
    published
}

struct Server {
    handle: AdminHandle,
    receivers: Vec<OpsReceiver>,
}

/// Panics on the admin server's thread, counted by a hook every test installs: tokio
/// catches a panicking connection task and serves on, so without the hook a handler
/// that panics on some input would go unnoticed.
static ADMIN_PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_admin_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if thread::current().name() == Some("skiff-admin") {
                ADMIN_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn start(limits: AdminLimits) -> Server {
    count_admin_panics();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let (ops, receivers) = ops_channel(2);
    let handle =
        AdminServer::start_with_limits(listener, fabricated_published(), ops, limits).expect("admin server starts");
    Server { handle, receivers }
}

fn addr(s: &Server) -> SocketAddr {
    s.handle.local_addr()
}

/// A fake shard: answers each operation as the test script says, and reports what it
/// received. `to=2` succeeds, `to=3` is "not the leader", `to=9` is an invalid id,
/// `to=8` is dropped unanswered, `to=7` never answers in time.
fn fake_shard(mut rx: OpsReceiver, seen: std_mpsc::Sender<(u32, Op)>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut held = Vec::new();
        while let Some(req) = rx.recv_blocking() {
            let _ = seen.send((req.shard, req.op.clone()));
            let reply = match &req.op {
                Op::TransferLeader { to: 2 } => OpReply::Done("leadership transfer to 2 started".to_string()),
                Op::TransferLeader { to: 3 } => OpReply::NotLeader { leader: 2 },
                Op::TransferLeader { to: 4 } => OpReply::NotLeader { leader: 0 },
                Op::TransferLeader { to: 9 } => {
                    OpReply::Invalid { parameter: "to", reason: "node 9 is not a voter of this group".to_string() }
                }
                Op::TransferLeader { to: 8 } => {
                    drop(req);
                    continue;
                }
                Op::TransferLeader { to: 7 } => {
                    held.push(req);
                    continue;
                }
                Op::AddMember { id, addr, learner } => OpReply::Done(format!(
                    "added {id} at {}{}",
                    addr.as_deref().unwrap_or("its configured address"),
                    if *learner { " as a learner" } else { "" }
                )),
                Op::RemoveMember { id } => OpReply::Conflict(format!("a membership change is in progress; {id} stays")),
                Op::PromoteMember { .. } => OpReply::Unavailable("shutting down".to_string()),
                Op::SetElectionTimeout { ticks } => OpReply::Failed(format!("cannot log a timeout of {ticks}")),
                Op::TransferLeader { .. } => OpReply::Failed("unexpected".to_string()),
            };
            assert!(req.reply(reply), "the HTTP handler still waits");
        }
        drop(held);
    })
}

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client over one keep-alive connection, so tests control every
/// byte (including the hostile ones).
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(CLIENT_READ_TIMEOUT)).expect("read timeout");
        Client { stream, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write request");
    }

    fn request(&mut self, method: &str, target: &str) -> HttpResponse {
        self.send(format!("{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n").as_bytes());
        self.response().expect("a response")
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next response, or an error if the connection closes first.
    fn response(&mut self) -> std::io::Result<HttpResponse> {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            if self.fill()? == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed before a response"));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .unwrap_or(0);
        let total = head_end + 4 + length;
        while self.buf.len() < total {
            if self.fill()? == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "closed inside a body"));
            }
        }
        let body = String::from_utf8_lossy(&self.buf[head_end + 4..total]).to_string();
        self.buf.drain(..total);
        Ok(HttpResponse { status, headers, body })
    }

    /// Whether the server closed the connection (EOF or reset), reading past anything it
    /// sent first.
    fn closed_by_server(&mut self) -> bool {
        loop {
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => return true,
                Err(_) => return false,
            }
        }
    }
}

fn get(addr: SocketAddr, target: &str) -> HttpResponse {
    Client::connect(addr).request("GET", target)
}

fn post(addr: SocketAddr, target: &str) -> HttpResponse {
    Client::connect(addr).request("POST", target)
}

#[test]
fn status_shows_node_members_and_each_shard() {
    let s = start(AdminLimits::default());
    let r = get(addr(&s), "/status");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["node_id"], 1);
    assert_eq!(v["cluster"], "test-cluster");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(v["members"][1]["addr"], "127.0.0.1:7002");

    let leader = &v["shards"][0];
    for field in ["shard", "role", "term", "leader", "commit", "applied", "last_snapshot_index", "peers"] {
        assert!(!leader[field].is_null(), "shard 0 lacks {field}: {leader}");
    }
    assert_eq!(leader["role"], "leader");
    assert_eq!(
        (leader["term"].as_u64(), leader["commit"].as_u64(), leader["applied"].as_u64()),
        (Some(7), Some(120), Some(118))
    );
    assert_eq!(leader["last_snapshot_index"], 100);
    let peers = leader["peers"].as_array().expect("peers");
    assert_eq!(peers.iter().map(|p| p["id"].as_u64().unwrap_or(0)).collect::<Vec<_>>(), vec![2, 3]);
    for field in ["id", "match", "next", "state", "inflight", "last_contact_ms"] {
        assert!(!peers[0][field].is_null(), "peer lacks {field}: {}", peers[0]);
    }
    assert_eq!((peers[0]["match"].as_u64(), peers[0]["next"].as_u64()), (Some(119), Some(120)));
    assert_eq!(peers[0]["state"], "replicate");
    assert_eq!(peers[1]["last_contact_ms"], 60, "6 ticks of 10 ms");

    let learner = &v["shards"][1];
    assert_eq!(learner["role"], "learner");
    assert_eq!(learner["leader"], 2);
    assert_eq!(learner["peers"].as_array().map(Vec::len), Some(0), "followers list no peers");
    s.handle.shutdown().expect("clean shutdown");
}

fn promtool_check(text: &str) -> Option<(bool, String)> {
    let mut child = match Process::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.success() && report.trim().is_empty(), report))
}

#[test]
fn metrics_are_prometheus_text_that_promtool_accepts() {
    let s = start(AdminLimits::default());
    let r = get(addr(&s), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = &r.body;
    for line in [
        "# TYPE skiff_proposals_total counter",
        "skiff_proposals_total{shard=\"0\"} 200",
        "skiff_is_leader{shard=\"0\"} 1",
        "skiff_is_leader{shard=\"1\"} 0",
        "skiff_has_leader{shard=\"1\"} 1",
        "skiff_term{shard=\"0\"} 7",
        "skiff_heartbeat_contention_total{shard=\"0\"} 2",
        "skiff_wal_fsyncs_total{shard=\"0\"} 50",
        "skiff_proposals_rejected_total{shard=\"0\",reason=\"overloaded\"} 1",
        "skiff_reads_rejected_total{shard=\"0\",reason=\"no_leader\"} 1",
        "skiff_peer_sent_bytes_total{shard=\"0\",peer=\"2\"} 1048576",
        "skiff_transport_rejected_frames_total{shard=\"0\",reason=\"too_large\"} 2",
        "skiff_peer_dropped_messages_total{shard=\"0\",peer=\"2\"} 1",
        "skiff_raft_messages_dropped_total{shard=\"0\",reason=\"stale_term\"} 4",
        "skiff_node_info{cluster=\"test-cluster\",node=\"1\"} 1",
        "# TYPE skiff_client_request_duration_seconds histogram",
        "skiff_client_request_duration_seconds_count{shard=\"0\",command=\"set\"} 200",
        "skiff_client_request_duration_seconds_count{shard=\"0\",command=\"other\"} 1",
        "skiff_wal_fsync_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 50",
        "skiff_heartbeat_interval_seconds_count{shard=\"0\",peer=\"2\"} 4",
        "skiff_wal_batch_size_bytes_count{shard=\"0\"} 50",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
    }
    match promtool_check(text) {
        Some((ok, report)) => assert!(ok, "promtool check metrics complained:\n{report}"),
        None => eprintln!("skipped: promtool is not installed (apt-get install prometheus), /metrics not linted"),
    }
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn histograms_summarise_every_histogram_and_print_one_distribution() {
    let s = start(AdminLimits::default());
    let a = addr(&s);
    let v = get(a, "/histograms").json();
    let list = v["histograms"].as_array().expect("list");
    assert!(!list.is_empty());
    for h in list {
        for field in ["name", "shard", "unit", "count", "mean", "p50", "p90", "p99", "p999", "max"] {
            assert!(!h[field].is_null(), "{field} missing in {h}");
        }
    }
    let find = |name: &str, shard: u64| {
        list.iter()
            .find(|h| h["name"] == name && h["shard"] == shard)
            .unwrap_or_else(|| panic!("no {name} for {shard}"))
    };
    let set = find("client_latency_set", 0);
    assert_eq!(set["count"], 200);
    let p50 = set["p50"].as_u64().expect("p50");
    assert!((245..=255).contains(&p50), "p50 of 150..350 us is about 250: {p50}");
    assert!(set["p99"].as_u64() >= set["p90"].as_u64());
    assert_eq!(find("wal_batch_bytes", 0)["unit"], "bytes");
    assert_eq!(find("heartbeat_interval_peer_2", 0)["count"], 4);

    let only = get(a, "/histograms?shard=1").json();
    let shards: Vec<u64> =
        only["histograms"].as_array().expect("list").iter().map(|h| h["shard"].as_u64().unwrap_or(9)).collect();
    assert!(!shards.is_empty() && shards.iter().all(|s| *s == 1));

    for name in ["wal_fsync", "client_latency_set", "heartbeat_interval_peer_2", "wal_batch_entries"] {
        let r = get(a, &format!("/histograms/{name}"));
        assert_eq!(r.status, 200, "{name}: {}", r.body);
        let mut lines = r.body.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"], "{name}");
        let rows = r.body.lines().skip(2).take_while(|l| !l.starts_with('#')).count();
        assert!(rows > 3, "{name} has a percentile table:\n{}", r.body);
        assert!(r.body.contains("#[Mean    ="), "{name}");
        assert!(r.body.contains("#[Max     ="), "{name}");
        assert!(r.body.contains("Total count    ="), "{name}");
    }
    // Without `shard`, a name merges every shard: 50 fsyncs on shard 0, 1 on shard 1.
    assert!(get(a, "/histograms/wal_fsync").body.contains("Total count    =           51]"));
    assert!(get(a, "/histograms/wal_fsync?shard=1").body.contains("Total count    =            1]"));

    let missing = get(a, "/histograms/no_such_thing");
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("valid names") && missing.body.contains("wal_fsync"), "{}", missing.body);
    assert_eq!(get(a, "/histograms?shard=7").status, 400);
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn operations_reach_the_shard_and_its_answers_come_back() {
    let limits = AdminLimits { op_reply_timeout: Duration::from_millis(300), ..AdminLimits::default() };
    let mut s = start(limits);
    let a = addr(&s);
    let (seen_tx, seen) = std_mpsc::channel();
    let shards: Vec<_> = s.receivers.drain(..).map(|rx| fake_shard(rx, seen_tx.clone())).collect();

    let r = post(a, "/transfer-leader?to=2");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["shard"].as_u64(), v["op"].as_str(), v["result"].as_str()),
        (Some(0), Some("transfer-leader"), Some("done"))
    );
    assert_eq!(v["detail"], "leadership transfer to 2 started");
    assert_eq!(seen.recv().expect("seen"), (0, Op::TransferLeader { to: 2 }));

    let r = post(a, "/transfer-leader?to=3&shard=1");
    assert_eq!((r.status, r.body.as_str()), (409, "not the leader: leader is 2\n"));
    assert_eq!(seen.recv().expect("seen"), (1, Op::TransferLeader { to: 3 }), "routed to shard 1");
    let r = post(a, "/transfer-leader?to=4");
    assert_eq!(r.status, 409);
    assert!(r.body.contains("no leader is known"), "{}", r.body);
    let r = post(a, "/transfer-leader?to=9");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("`to`") && r.body.contains("not a voter"), "{}", r.body);
    let r = post(a, "/transfer-leader?to=8");
    assert_eq!(r.status, 500, "dropped without an answer: {}", r.body);
    let r = post(a, "/transfer-leader?to=7");
    assert_eq!(r.status, 503, "no answer in time: {}", r.body);
    assert!(r.body.contains("did not answer"), "{}", r.body);

    let r = post(a, "/members/add?id=4&addr=127.0.0.1:7004&learner=true");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["detail"], "added 4 at 127.0.0.1:7004 as a learner");
    let r = post(a, "/members/add?id=5&addr=%5B%3A%3A1%5D%3A7005");
    assert_eq!(r.json()["detail"], "added 5 at [::1]:7005");
    // addr is optional; given for a configured member, it must match the cluster list.
    let r = post(a, "/members/add?id=6");
    assert_eq!(r.json()["detail"], "added 6 at its configured address");
    let r = post(a, "/members/add?id=2&addr=127.0.0.1:7002");
    assert_eq!(r.json()["detail"], "added 2 at 127.0.0.1:7002");
    let r = post(a, "/members/add?id=2&addr=127.0.0.1:9999");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("`addr`") && r.body.contains("127.0.0.1:9999") && r.body.contains("127.0.0.1:7002"),
        "names both addresses: {}",
        r.body
    );
    assert_eq!(post(a, "/members/remove?id=3").status, 409);
    assert_eq!(post(a, "/members/promote?id=4").status, 503);
    let r = post(a, "/election-timeout?ticks=20");
    assert_eq!(r.status, 500);
    assert!(r.body.contains("election-timeout failed"), "{}", r.body);

    drop(seen_tx);
    let received: Vec<(u32, Op)> = seen.try_iter().collect();
    assert!(received.contains(&(0, Op::AddMember { id: 4, addr: Some("127.0.0.1:7004".into()), learner: true })));
    assert!(received.contains(&(0, Op::AddMember { id: 5, addr: Some("[::1]:7005".into()), learner: false })));
    assert!(received.contains(&(0, Op::AddMember { id: 6, addr: None, learner: false })));
    assert!(
        !received.iter().any(|(_, op)| matches!(op, Op::AddMember { addr: Some(a), .. } if a.ends_with(":9999"))),
        "a mismatched addr never reaches the shard"
    );
    assert!(received.contains(&(0, Op::RemoveMember { id: 3 })));
    assert!(received.contains(&(0, Op::PromoteMember { id: 4 })));
    assert!(received.contains(&(0, Op::SetElectionTimeout { ticks: 20 })));

    // Stopping the server closes the channel: the shards' receivers see the end.
    s.handle.shutdown().expect("clean shutdown");
    for shard in shards {
        shard.join().expect("fake shard exits when the admin server stops");
    }
}

#[test]
fn bad_parameters_are_400_and_name_the_parameter() {
    let s = start(AdminLimits::default());
    let a = addr(&s);
    for (target, parameter) in [
        ("/transfer-leader", "`to`"),
        ("/transfer-leader?to=abc", "`to`"),
        ("/transfer-leader?to=0", "`to`"),
        ("/transfer-leader?to=2&shard=5", "`shard`"),
        ("/transfer-leader?to=2&shard=x", "`shard`"),
        ("/transfer-leader?too=2", "`too`"),
        ("/transfer-leader?to=2&to=3", "`to`"),
        ("/members/add?id=4&addr=nohost", "`addr`"),
        ("/members/add?id=4&addr=h:99999", "`addr`"),
        ("/members/add?id=4&addr=h:1&learner=maybe", "`learner`"),
        ("/members/add?addr=h:1", "`id`"),
        ("/members/remove?id=-1", "`id`"),
        ("/members/promote", "`id`"),
        ("/election-timeout?ticks=0", "`ticks`"),
        ("/election-timeout?ticks=1e3", "`ticks`"),
        ("/transfer-leader?to=%zz", "percent-encoding"),
    ] {
        let r = post(a, target);
        assert_eq!(r.status, 400, "{target}: {}", r.body);
        assert!(r.body.contains(parameter), "{target}: {} does not name {parameter}", r.body);
    }
    let r = get(a, "/status?verbose=1");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("`verbose`"));
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn unknown_paths_are_404_and_wrong_methods_405() {
    let s = start(AdminLimits::default());
    let a = addr(&s);
    for path in ["/", "/nope", "/status/", "/histograms/", "/members", "/metrics/x"] {
        let r = get(a, path);
        assert_eq!(r.status, 404, "{path}");
        assert!(r.body.contains("/status"), "404 lists the endpoints: {}", r.body);
    }
    let r = get(a, "/transfer-leader?to=2");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = post(a, "/status");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(Client::connect(a).request("DELETE", "/metrics").status, 405);
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn hostile_requests_are_refused_while_a_good_client_is_served() {
    let s = start(AdminLimits::default());
    let a = addr(&s);
    let mut good = Client::connect(a);
    assert_eq!(good.request("GET", "/status").status, 200);

    // Headers over the cap: 431, and that connection closes.
    let mut big = Client::connect(a);
    let filler = "x".repeat(70 * 1024);
    big.send(format!("GET /status HTTP/1.1\r\nHost: t\r\nX-Filler: {filler}\r\n\r\n").as_bytes());
    assert_eq!(big.response().expect("an answer").status, 431);
    assert!(big.closed_by_server());
    assert_eq!(good.request("GET", "/metrics").status, 200);

    // Garbage instead of HTTP: 400 and closed.
    let mut garbage = Client::connect(a);
    garbage.send(b"\x00\x01\x02 not http at all\r\n\r\n");
    assert_eq!(garbage.response().expect("an answer").status, 400);
    assert!(garbage.closed_by_server());
    assert_eq!(good.request("GET", "/histograms").status, 200);

    // A declared body over the cap: 413 before reading it.
    let mut body = Client::connect(a);
    body.send(b"POST /transfer-leader?to=2 HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    assert_eq!(body.response().expect("an answer").status, 413);
    // A chunked body that grows over the cap: 413 once it does.
    let mut chunked = Client::connect(a);
    chunked.send(b"POST /transfer-leader?to=2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("800\r\n{}\r\n", "y".repeat(0x800));
    for _ in 0..3 {
        chunked.send(chunk.as_bytes());
    }
    assert_eq!(chunked.response().expect("an answer").status, 413);
    // A small body is read and ignored: keep-alive goes on.
    let mut small = Client::connect(a);
    small.send(b"GET /status HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(small.response().expect("an answer").status, 200);
    assert_eq!(small.request("GET", "/status").status, 200);

    // The good client was never disturbed, on its one connection.
    for _ in 0..3 {
        assert_eq!(good.request("GET", "/status").status, 200);
    }
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn slow_clients_are_cut_off_while_a_busy_client_is_served() {
    let limits = AdminLimits { header_read_timeout: Duration::from_millis(300), ..AdminLimits::default() };
    let s = start(limits);
    let a = addr(&s);
    let mut slow = Client::connect(a);
    slow.send(b"GET /status HTTP/1.1\r\nHost: t\r\n");
    slow.stream.set_read_timeout(Some(Duration::from_millis(50))).expect("read timeout");
    let mut good = Client::connect(a);
    // Each request restarts the good client's header timer; the slow one never finishes
    // its head, so the server closes it. Bounded: 400 turns of at least 50 ms each.
    let mut closed = false;
    for _ in 0..400 {
        assert_eq!(good.request("GET", "/status").status, 200);
        match slow.fill() {
            Ok(0) => closed = true,
            Ok(_) => closed = slow.closed_by_server(),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset) => closed = true,
            Err(_) => {}
        }
        if closed {
            break;
        }
    }
    assert!(closed, "a client that never completes its request head is disconnected");
    assert_eq!(good.request("GET", "/metrics").status, 200);
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn a_client_that_never_reads_is_dropped_and_frees_its_slot() {
    // Far more response bytes than loopback socket buffers hold unread.
    const PIPELINED_REQUESTS: usize = 400;
    let limits =
        AdminLimits { connections_max: 1, write_stall_timeout: Duration::from_millis(300), ..AdminLimits::default() };
    let s = start(limits);
    let a = addr(&s);
    let mut sink = Client::connect(a);
    assert_eq!(sink.request("GET", "/status").status, 200);
    // The sink holds the only slot: a second client is refused.
    assert_eq!(Client::connect(a).response().expect("a refusal").status, 503);
    sink.send(&b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n".repeat(PIPELINED_REQUESTS));
    let mut served = false;
    for _ in 0..500 {
        let mut c = Client::connect(a);
        c.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
        if c.response().is_ok_and(|r| r.status == 200) {
            served = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(served, "the stalled connection is dropped and its slot reused");
    assert!(sink.closed_by_server(), "the non-reading client was disconnected");
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn connections_over_the_limit_get_503_and_capacity_returns() {
    let limits = AdminLimits { connections_max: 2, ..AdminLimits::default() };
    let s = start(limits);
    let a = addr(&s);
    let mut first = Client::connect(a);
    let mut second = Client::connect(a);
    // A request on each proves the server holds both connections.
    assert_eq!(first.request("GET", "/status").status, 200);
    assert_eq!(second.request("GET", "/status").status, 200);
    let mut third = Client::connect(a);
    let r = third.response().expect("a refusal");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("too many admin connections"), "{}", r.body);
    assert!(third.closed_by_server());
    assert_eq!(first.request("GET", "/status").status, 200, "held connections keep working");

    drop(second);
    // The slot frees once the server sees the close; retry a bounded number of times.
    let mut served = false;
    for _ in 0..200 {
        let mut c = Client::connect(a);
        c.send(b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n");
        if c.response().is_ok_and(|r| r.status == 200) {
            served = true;
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(served, "a closed connection gives its slot back");
    s.handle.shutdown().expect("clean shutdown");
}

#[test]
fn shutdown_closes_the_port_and_dropping_the_handle_stops_too() {
    let s = start(AdminLimits::default());
    let a = addr(&s);
    assert_eq!(get(a, "/status").status, 200);
    s.handle.shutdown().expect("clean shutdown");
    assert!(TcpStream::connect(a).is_err(), "nothing listens after shutdown");

    let s = start(AdminLimits::default());
    let a = addr(&s);
    let mut receivers = s.receivers;
    drop(s.handle);
    assert!(TcpStream::connect(a).is_err(), "nothing listens after the handle is dropped");
    assert!(receivers[0].recv_blocking().is_none(), "the shard's receiver sees the server gone");
}

#[test]
fn a_glommio_executor_parked_on_recv_is_woken_by_an_operation() {
    let mut s = start(AdminLimits::default());
    let a = addr(&s);
    let mut rx = s.receivers.remove(0);
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name("shard-0")
        .spawn(move || async move {
            // Parks the executor until the admin thread's waker fires.
            let req = rx.recv().await.expect("an operation");
            let op = req.op.clone();
            req.reply(OpReply::Done("woken".to_string()));
            op
        })
        .expect("executor starts");
    let r = post(a, "/election-timeout?ticks=15");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["detail"], "woken");
    assert_eq!(executor.join().expect("executor finishes"), Op::SetElectionTimeout { ticks: 15 });
    s.handle.shutdown().expect("clean shutdown");
}

/// A small deterministic generator (xorshift), so a failing case can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Requests mutated at random (bytes flipped, inserted, deleted, duplicated, cut) must
/// each end with an answer or a closed connection, never a panic, and the server must
/// keep serving.
#[test]
fn mutated_requests_never_panic_the_server() {
    const CASES: usize = 300;
    let limits = AdminLimits {
        header_read_timeout: Duration::from_millis(200),
        op_reply_timeout: Duration::from_millis(50),
        ..AdminLimits::default()
    };
    let s = start(limits);
    let a = addr(&s);
    let seeds: [&[u8]; 5] = [
        b"GET /status HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /histograms/wal_fsync?shard=0 HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n",
        b"POST /members/add?id=4&addr=%5B%3A%3A1%5D%3A7004&learner=true HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /transfer-leader?to=2 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET /metrics HTTP/1.0\r\n\r\n",
    ];
    let mut rng = Rng(0x5eed_ad31_0000_0001);
    for case in 0..CASES {
        let mut req = seeds[rng.below(seeds.len())].to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(req.len());
            match rng.below(5) {
                0 => req[at] = rng.next() as u8,
                1 => req.insert(at, rng.next() as u8),
                2 => {
                    let end = (at + rng.below(8)).min(req.len());
                    req.drain(at..end);
                }
                3 => {
                    let end = (at + rng.below(16)).min(req.len());
                    let piece = req[at..end].to_vec();
                    req.splice(at..at, piece);
                }
                _ => req.truncate(at),
            }
            if req.is_empty() {
                req.push(b'G');
            }
        }
        let mut c = Client::connect(a);
        c.send(&req);
        // No more input: a partial request is then answered or closed at once.
        c.stream.shutdown(std::net::Shutdown::Write).expect("half-close");
        assert!(c.closed_by_server(), "case {case}: the connection ends: {:?}", String::from_utf8_lossy(&req));
    }
    assert_eq!(ADMIN_PANICS.load(Ordering::SeqCst), 0, "the admin thread panicked on some input");
    assert_eq!(get(a, "/status").status, 200);
    s.handle.shutdown().expect("clean shutdown");
}
