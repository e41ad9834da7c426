//! A harness for multi-process tests: real `skiff serve` processes on loopback ports,
//! each with its own data directory under the target directory (which supports
//! O_DIRECT), a small blocking RESP client, and cleanup by pid even when a test fails
//! (the nodes' logs are printed then).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use skiff_net::{ReplyDecoder, RespLimits, RespValue};

/// Fast timing for tests: elections within a few hundred milliseconds. A test's own
/// flags replace these.
pub const TEST_FLAGS: &[&str] = &["--tick-ms", "20", "--election-ticks", "10", "--heartbeat-ticks", "1"];

/// A free loopback port for a listener, never handed out before in this test process.
/// It is taken below the kernel's ephemeral range: a port from that range, released
/// while a node restarts, can meanwhile become the local port of any outgoing
/// connection, and the node could not listen on it again. Each test process starts at
/// its own offset so that concurrent test processes rarely meet.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let ephemeral_start: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral_start.saturating_sub(1).max(10_001));
    let mut next = NEXT.lock().unwrap();
    if *next == 0 {
        *next = lo + (std::process::id() % u32::from(hi - lo)) as u16;
    }
    loop {
        let port = *next;
        *next = if *next + 1 >= hi { lo } else { *next + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct Node {
    pub id: u64,
    pub client: String,
    pub peer: String,
    pub admin: String,
    pub dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    root: PathBuf,
    extra: Vec<String>,
}

impl Cluster {
    /// Starts `n` founding members with `extra` flags on top of [`TEST_FLAGS`].
    pub fn start(n: u64, extra: &[&str]) -> Cluster {
        let mut c = Cluster::new(n, extra);
        for id in 1..=n {
            c.launch(id, &["--bootstrap"]);
        }
        c
    }

    /// `n` members with their ports and (not yet created) data directories, none
    /// started.
    pub fn new(n: u64, extra: &[&str]) -> Cluster {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "cluster-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let nodes = (1..=n)
            .map(|id| Node {
                id,
                client: format!("127.0.0.1:{}", free_port()),
                peer: format!("127.0.0.1:{}", free_port()),
                admin: format!("127.0.0.1:{}", free_port()),
                dir: root.join(format!("node-{id}")),
                log: root.join(format!("node-{id}.log")),
                child: None,
            })
            .collect();
        Cluster { nodes, root, extra: extra.iter().map(|s| s.to_string()).collect() }
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    /// The `skiff serve` arguments of node `id`.
    pub fn args(&self, id: u64) -> Vec<String> {
        let n = self.node(id);
        let cluster: Vec<String> = self.nodes.iter().map(|m| format!("{}={}", m.id, m.peer)).collect();
        let mut a: Vec<String> = [
            "serve",
            "--id",
            &id.to_string(),
            "--cluster",
            &cluster.join(","),
            "--cluster-name",
            "it",
            "--client-addr",
            &n.client,
            "--admin-addr",
            &n.admin,
            "--data-dir",
            &n.dir.to_string_lossy(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Test timing, unless the test sets a flag of its own.
        for pair in TEST_FLAGS.chunks(2) {
            if !self.extra.iter().any(|e| e == pair[0]) {
                a.extend(pair.iter().map(|s| s.to_string()));
            }
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Starts node `id`'s process with `more` flags.
    pub fn launch(&mut self, id: u64, more: &[&str]) {
        self.spawn(id, more, &[]);
        wait_listening(&self.node(id).client.clone());
    }

    /// Starts node `id` again with `env` set, e.g. failure points armed from the start
    /// (`SKIFF_FAILPOINTS`).
    pub fn restart_with_env(&mut self, id: u64, env: &[(&str, &str)]) {
        self.spawn(id, &[], env);
        wait_listening(&self.node(id).client.clone());
    }

    /// Starts node `id` again without waiting for it to listen: it is expected to
    /// refuse to start (see [`Cluster::wait_exit`]).
    pub fn restart_expecting_exit(&mut self, id: u64) {
        self.spawn(id, &[], &[]);
    }

    /// [`Cluster::restart_expecting_exit`] with `env` set.
    pub fn restart_with_env_expecting_exit(&mut self, id: u64, env: &[(&str, &str)]) {
        self.spawn(id, &[], env);
    }

    fn spawn(&mut self, id: u64, more: &[&str], env: &[(&str, &str)]) {
        let mut args = self.args(id);
        args.extend(more.iter().map(|s| s.to_string()));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.node(id).log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_skiff"))
            .args(&args)
            .envs(env.iter().copied())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn skiff");
        self.nodes[(id - 1) as usize].child = Some(child);
    }

    /// Restarts node `id` from its data directory.
    pub fn restart(&mut self, id: u64) {
        self.launch(id, &[]);
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.nodes[(id - 1) as usize].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits; returns whether it exited cleanly within `grace`.
    pub fn stop(&mut self, id: u64, grace: Duration) -> bool {
        let Some(mut c) = self.nodes[(id - 1) as usize].child.take() else { return true };
        // SAFETY: the pid is our child, not yet waited for.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of node `id`'s process.
    pub fn pid(&self, id: u64) -> u32 {
        self.node(id).child.as_ref().expect("node is running").id()
    }

    /// Sends `sig` to node `id`'s process without waiting for it.
    pub fn signal(&self, id: u64, sig: libc::c_int) {
        let c = self.node(id).child.as_ref().expect("node is running");
        // SAFETY: the pid is our child, not yet waited for.
        unsafe {
            libc::kill(c.id() as libc::pid_t, sig);
        }
    }

    pub fn client(&self, id: u64) -> Resp {
        Resp::connect(&self.node(id).client)
    }

    /// Waits until one running node is leader and every running node knows it.
    pub fn leader(&self, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<u64> = self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect();
            let infos: Vec<(u64, String, u64)> = running
                .iter()
                .filter_map(|&id| {
                    Resp::try_connect(&self.node(id).client).and_then(|mut c| c.replication()).map(|(r, l)| (id, r, l))
                })
                .collect();
            if infos.len() == running.len()
                && let Some(&(leader, _, _)) = infos.iter().find(|(_, r, _)| r == "leader")
                && infos.iter().all(|(_, _, l)| *l == leader)
            {
                return leader;
            }
            assert!(Instant::now() < deadline, "no stable leader within {within:?}: {infos:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A node other than `leader` (the lowest id).
    pub fn follower(&self, leader: u64) -> u64 {
        self.nodes.iter().map(|n| n.id).find(|&id| id != leader).expect("a follower")
    }

    /// Whether node `id`'s process is running (as far as this harness started it).
    pub fn running(&mut self, id: u64) -> bool {
        let n = &mut self.nodes[(id - 1) as usize];
        match n.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                n.child = None;
                false
            }
            None => false,
        }
    }

    /// Waits up to `within` for node `id`'s process to exit on its own; its status, or
    /// `None` if it still runs (it is left running) or was not running.
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let n = &mut self.nodes[(id - 1) as usize];
        loop {
            let c = n.child.as_mut()?;
            if let Ok(Some(status)) = c.try_wait() {
                n.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Arms a failure point on node `id` (`POST /debug/failpoints/...`); panics unless
    /// the node accepts it.
    pub fn arm(&self, id: u64, point_and_query: &str) {
        let (code, body) = http_post(&self.node(id).admin, &format!("/debug/failpoints/{point_and_query}"));
        assert_eq!(code, 200, "arming {point_and_query} on node {id}: {body}");
    }

    /// The admin port's `/status` of node `id`, parsed.
    pub fn status(&self, id: u64) -> serde_json::Value {
        let body = http_get(&self.node(id).admin, "/status");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("status of node {id}: {e}: {body}"))
    }
}

static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for n in &self.nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {} log (last lines) ----", n.id);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Waits until something listens on `addr` (the node bound its ports).
pub fn wait_listening(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A plain HTTP/1.1 GET (Connection: close); the body.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()
}

/// A plain HTTP/1.1 POST without a body; the status code and body.
pub fn http_post(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// A blocking RESP client.
pub struct Resp {
    stream: TcpStream,
    dec: ReplyDecoder,
    buf: BytesMut,
}

impl Resp {
    pub fn connect(addr: &str) -> Resp {
        Resp::try_connect(addr).unwrap_or_else(|| panic!("cannot connect to {addr}"))
    }

    pub fn try_connect(addr: &str) -> Option<Resp> {
        let stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        Some(Resp { stream, dec: ReplyDecoder::new(RespLimits::default()), buf: BytesMut::new() })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next reply; `None` when the connection closed or timed out.
    pub fn read_reply(&mut self) -> Option<RespValue> {
        loop {
            if let Ok(Some(v)) = self.dec.decode(&mut self.buf) {
                return Some(v);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn cmd(&mut self, args: &[&str]) -> RespValue {
        let mut out = BytesMut::new();
        skiff_net::resp::encode_request(args, &mut out);
        self.stream.write_all(&out).expect("send");
        self.read_reply().expect("reply")
    }

    /// Like [`Resp::cmd`], but `None` when the connection fails instead of panicking.
    pub fn try_cmd(&mut self, args: &[&str]) -> Option<RespValue> {
        let mut out = BytesMut::new();
        skiff_net::resp::encode_request(args, &mut out);
        self.stream.write_all(&out).ok()?;
        self.read_reply()
    }

    /// (raft_role, leader) from INFO replication.
    pub fn replication(&mut self) -> Option<(String, u64)> {
        let mut out = BytesMut::new();
        skiff_net::resp::encode_request(&["INFO", "replication"], &mut out);
        self.stream.write_all(&out).ok()?;
        let RespValue::Bulk(b) = self.read_reply()? else { return None };
        let text = String::from_utf8_lossy(&b).into_owned();
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).map(str::to_string);
        Some((field("raft_role:")?, field("leader:")?.parse().ok()?))
    }
}

/// `+OK`
pub fn ok() -> RespValue {
    RespValue::Simple(bytes::Bytes::from_static(b"OK"))
}

pub fn bulk(s: &str) -> RespValue {
    RespValue::Bulk(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// Retries a write until it is acknowledged (`-TRYAGAIN` while a leader is elected).
pub fn write_until_ok(c: &mut Resp, args: &[&str], within: Duration) -> RespValue {
    let deadline = Instant::now() + within;
    loop {
        let r = c.cmd(args);
        match &r {
            RespValue::Error(e) if e.starts_with(b"TRYAGAIN") || e.starts_with(b"TIMEOUT") => {
                assert!(Instant::now() < deadline, "{args:?} not acknowledged within {within:?}: {r:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return r,
        }
    }
}
