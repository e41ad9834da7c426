//! Servers this process starts for a run — a Skiff cluster (`--spawn N`, `compare`), a
//! Redis and an etcd cluster (`compare`) — on loopback ports, with their data in a
//! fresh directory that is removed afterwards.
//!
//! Every child is stopped by its pid (SIGTERM, then SIGKILL after a grace period) when
//! its [`Procs`] guard is dropped: at the end of a run, on an error, and after
//! SIGINT/SIGTERM (the handler only sets a flag; every wait here polls it). Children run
//! in process groups of their own, so a terminal's Ctrl-C reaches only this process,
//! which then stops them once (a Skiff node exits at once, skipping its clean shutdown,
//! on a second signal).

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::BenchError;

/// How long stopped children get to exit on SIGTERM before SIGKILL: Skiff's own
/// shutdown grace is 3 s, etcd and Redis flush in well under that.
pub const CHILD_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a spawned Skiff cluster or etcd cluster may take to elect a leader (and a
/// Redis to answer PING): elections take 1-2 s with default timing; the rest is slack
/// for a loaded machine.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between readiness polls.
const READY_POLL: Duration = Duration::from_millis(100);
/// Timeout of one HTTP request to an admin or health port.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// Lines of a child's log shown when it fails to start.
const LOG_TAIL_LINES: usize = 20;
/// Most nodes `--spawn` starts: ports and processes on one machine.
pub const SPAWN_NODES_MAX: usize = 9;
/// Default parent of the data directory: disk-backed on common distributions, where
/// /tmp is often tmpfs (which has no O_DIRECT, and Skiff's WAL needs it).
pub const DEFAULT_DATA_PARENT: &str = "/var/tmp";

/// Running children and the directory holding their data and logs; both are cleaned up
/// on drop.
#[derive(Debug)]
pub struct Procs {
    what: String,
    children: Vec<(String, Child)>,
    dir: PathBuf,
    keep_dir: bool,
}

impl Procs {
    /// Creates a fresh directory under `parent` (which must support O_DIRECT when
    /// `need_odirect`) for `what` to run in.
    pub fn new(what: &str, parent: &Path, need_odirect: bool) -> Result<Procs, BenchError> {
        let dir = fresh_dir(parent, what)?;
        let procs = Procs { what: what.to_string(), children: Vec::new(), dir, keep_dir: false };
        if need_odirect {
            check_odirect(&procs.dir)?;
        }
        Ok(procs)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c)| c.id()).collect()
    }

    /// Starts `cmd` as child `name`, its output going to `name.log` in the directory.
    pub fn spawn(&mut self, name: &str, mut cmd: Command) -> Result<u32, BenchError> {
        let log_path = self.dir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| BenchError::io(format!("{}", log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| BenchError::io("log file", e))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::from(log)).stderr(Stdio::from(log2)).process_group(0);
        // A skiff-bench killed with SIGKILL, which runs no clean-up, still leaves no
        // server behind (its data directory stays; it is named in the log). Servers are
        // spawned from the main thread, which lives for the whole run.
        skiff_net::child::signal_on_parent_death(&mut cmd, libc::SIGKILL, "skiff-bench");
        let child = cmd
            .spawn()
            .map_err(|e| BenchError::Spawn(format!("cannot start {name} ({:?}): {e}", cmd.get_program())))?;
        let pid = child.id();
        self.children.push((name.to_string(), child));
        Ok(pid)
    }

    /// An error if a child has exited, with the end of its log.
    pub fn check_running(&mut self) -> Result<(), BenchError> {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
                return Err(BenchError::Spawn(format!(
                    "{} {name} exited during start-up ({status}); the end of its log:\n{tail}",
                    self.what
                )));
            }
        }
        Ok(())
    }

    /// Stops every child by pid (SIGTERM, then SIGKILL after [`CHILD_STOP_GRACE`]) and
    /// removes the directory. Idempotent.
    pub fn shutdown(&mut self) {
        for (_, child) in &mut self.children {
            if let Ok(None) = child.try_wait() {
                let _ = crate::sys::signal(child.id(), libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + CHILD_STOP_GRACE;
        for (_, child) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.shutdown();
    }
}

static DIR_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A new directory `parent/skiff-bench-WHAT-PID-N`.
fn fresh_dir(parent: &Path, what: &str) -> Result<PathBuf, BenchError> {
    if !parent.is_dir() {
        return Err(BenchError::DataDir {
            path: parent.to_path_buf(),
            reason: "is not a directory (create it, or pass another --data-dir)".into(),
        });
    }
    loop {
        let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("skiff-bench-{what}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(BenchError::DataDir {
                    path: parent.to_path_buf(),
                    reason: format!("cannot create {}: {e}", dir.display()),
                });
            }
        }
    }
}

/// Opens a file in `dir` with O_DIRECT, as Skiff's WAL will: tmpfs and some overlay
/// file systems refuse it, and a node would then fail at start.
fn check_odirect(dir: &Path) -> Result<(), BenchError> {
    let probe = dir.join(".odirect-probe");
    let result = OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(&probe);
    let _ = std::fs::remove_file(&probe);
    result.map(|_| ()).map_err(|e| BenchError::DataDir {
        path: dir.parent().unwrap_or(dir).to_path_buf(),
        reason: format!(
            "the file system does not support O_DIRECT ({e}), which Skiff's WAL needs; pass --data-dir on a disk-backed file system such as ext4 or xfs"
        ),
    })
}

/// `count` distinct free loopback ports. The listeners are held until all are chosen so
/// no port is handed out twice; another process could still take one before the server
/// binds it, which the server then reports.
pub fn free_ports(count: usize) -> Result<Vec<u16>, BenchError> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::io("cannot pick a free loopback port", e))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BenchError::io("cannot pick a free loopback port", e))
}

/// A plain HTTP/1.1 GET (Connection: close): status code and body.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let sock: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&sock, HTTP_TIMEOUT)?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    s.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Polls `ready` until it says yes, a child exits, the deadline passes or the run is
/// interrupted.
fn wait_ready(
    procs: &mut Procs,
    interrupt: &AtomicBool,
    what: &str,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::new();
    loop {
        if interrupt.load(Ordering::Relaxed) {
            return Err(BenchError::Interrupted);
        }
        procs.check_running()?;
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = e,
        }
        if Instant::now() >= deadline {
            return Err(BenchError::Spawn(format!(
                "{what} was not ready within {}s{}",
                READY_TIMEOUT.as_secs(),
                if last.is_empty() { String::new() } else { format!(" (last: {last})") }
            )));
        }
        std::thread::sleep(READY_POLL);
    }
}

/// The addresses of one spawned Skiff node.
#[derive(Clone, Debug)]
pub struct SkiffNode {
    pub id: u64,
    pub pid: u32,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub admin: SocketAddr,
}

/// A running Skiff cluster.
#[derive(Debug)]
pub struct SkiffCluster {
    pub procs: Procs,
    pub nodes: Vec<SkiffNode>,
    pub leader: u64,
}

/// Where `skiff` is looked for: beside this executable (cargo puts both binaries in
/// `target/PROFILE/`).
pub fn default_skiff_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("skiff")))
        .unwrap_or_else(|| PathBuf::from("skiff"))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `skiff serve` arguments of `node` in the cluster `all`, as `skiff local` builds
/// them: founding members of a new cluster with every member a voter.
pub fn serve_args(node: &SkiffNode, all: &[SkiffNode], data_dir: &Path, extra: &[String]) -> Vec<String> {
    let cluster: Vec<String> = all.iter().map(|n| format!("{}={}", n.id, n.peer)).collect();
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--id".into(),
        node.id.to_string(),
        "--cluster".into(),
        cluster.join(","),
        "--cluster-name".into(),
        "skiff-bench".into(),
        "--client-addr".into(),
        node.client.to_string(),
        "--admin-addr".into(),
        node.admin.to_string(),
        "--data-dir".into(),
        data_dir.to_string_lossy().into_owned(),
        "--bootstrap".into(),
    ];
    args.extend(extra.iter().cloned());
    args
}

/// The leader every node agrees on, from the nodes' `/status` (shard 0): one node says
/// it is leader and every node names it.
fn agreed_leader(nodes: &[SkiffNode]) -> Result<Option<u64>, String> {
    let mut leaders = Vec::with_capacity(nodes.len());
    let mut leader_says = None;
    for n in nodes {
        let (code, body) = http_get(&n.admin.to_string(), "/status").map_err(|e| format!("node {}: {e}", n.id))?;
        if code != 200 {
            return Err(format!("node {}: /status answered {code}", n.id));
        }
        let status: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("node {}: /status is not JSON: {e}", n.id))?;
        let shard = &status["shards"][0];
        if shard["role"] == "leader" {
            leader_says = Some(n.id);
        }
        leaders.push(shard["leader"].as_u64().unwrap_or(0));
    }
    Ok(leader_says.filter(|l| leaders.iter().all(|x| x == l)))
}

/// Starts `n` Skiff nodes from `bin` in a fresh directory under `parent` and waits for
/// them to agree on a leader.
pub fn start_skiff(
    bin: &Path,
    n: usize,
    parent: &Path,
    extra: &[String],
    interrupt: &AtomicBool,
) -> Result<SkiffCluster, BenchError> {
    if !bin.is_file() {
        return Err(BenchError::BinaryMissing {
            what: "the skiff binary",
            path: bin.to_path_buf(),
            hint: "build it with `cargo build --release -p skiff-node` (it lands beside skiff-bench), or pass --skiff-bin PATH".into(),
        });
    }
    let mut procs = Procs::new("skiff", parent, true)?;
    let ports = free_ports(3 * n)?;
    let mut nodes: Vec<SkiffNode> = (0..n)
        .map(|i| SkiffNode {
            id: i as u64 + 1,
            pid: 0,
            client: loopback(ports[3 * i]),
            peer: loopback(ports[3 * i + 1]),
            admin: loopback(ports[3 * i + 2]),
        })
        .collect();
    for i in 0..n {
        let data = procs.dir().join(format!("node-{}", i + 1));
        let mut cmd = Command::new(bin);
        cmd.args(serve_args(&nodes[i], &nodes, &data, extra));
        let pid = procs.spawn(&format!("node-{}", i + 1), cmd)?;
        nodes[i].pid = pid;
        eprintln!(
            "skiff-bench: started skiff node {} pid {pid}: client {} admin {}",
            nodes[i].id, nodes[i].client, nodes[i].admin
        );
    }
    eprintln!("skiff-bench: skiff data in {}", procs.dir().display());
    let mut leader = 0;
    wait_ready(&mut procs, interrupt, "the skiff cluster (a leader all nodes agree on)", || {
        agreed_leader(&nodes).map(|l| {
            leader = l.unwrap_or(0);
            l.is_some()
        })
    })?;
    eprintln!("skiff-bench: skiff cluster ready, leader is node {leader}");
    Ok(SkiffCluster { procs, nodes, leader })
}

/// Looks `name` up in PATH.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A running Redis.
#[derive(Debug)]
pub struct RedisServer {
    pub procs: Procs,
    pub addr: SocketAddr,
}

/// Answers PING with +PONG?
fn redis_pong(addr: SocketAddr) -> Result<bool, String> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(|e| e.to_string())?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).map_err(|e| e.to_string())?;
    // `-LOADING` while the AOF is read: not ready yet.
    Ok(buf[..n].starts_with(b"+PONG"))
}

/// Starts `redis-server` with every write fsynced before it is acknowledged
/// (`appendonly yes`, `appendfsync always`) and no snapshots, in a fresh directory.
pub fn start_redis(bin: &Path, parent: &Path, interrupt: &AtomicBool) -> Result<RedisServer, BenchError> {
    let mut procs = Procs::new("redis", parent, false)?;
    let port = free_ports(1)?[0];
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"]).arg(procs.dir()).args([
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
        "--daemonize",
        "no",
    ]);
    let pid = procs.spawn("redis", cmd)?;
    let addr = loopback(port);
    eprintln!("skiff-bench: started redis-server pid {pid} on {addr}, data in {}", procs.dir().display());
    wait_ready(&mut procs, interrupt, "redis-server", || redis_pong(addr))?;
    Ok(RedisServer { procs, addr })
}

/// A running etcd cluster.
#[derive(Debug)]
pub struct EtcdCluster {
    pub procs: Procs,
    pub clients: Vec<SocketAddr>,
}

/// Starts an `n`-member etcd cluster on loopback (etcd 3.4 flags) in a fresh directory
/// and waits until every member reports itself healthy (a leader is known).
pub fn start_etcd(bin: &Path, n: usize, parent: &Path, interrupt: &AtomicBool) -> Result<EtcdCluster, BenchError> {
    let mut procs = Procs::new("etcd", parent, false)?;
    let ports = free_ports(2 * n)?;
    let client = |i: usize| loopback(ports[2 * i]);
    let peer_url = |i: usize| format!("http://{}", loopback(ports[2 * i + 1]));
    let initial: Vec<String> = (0..n).map(|i| format!("m{}={}", i + 1, peer_url(i))).collect();
    let token = format!("skiff-bench-{}", std::process::id());
    for i in 0..n {
        let name = format!("m{}", i + 1);
        let client_url = format!("http://{}", client(i));
        let mut cmd = Command::new(bin);
        cmd.args(["--name", &name, "--data-dir"])
            .arg(procs.dir().join(&name))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url(i), "--initial-advertise-peer-urls", &peer_url(i)])
            .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &token]);
        let pid = procs.spawn(&format!("etcd-{name}"), cmd)?;
        eprintln!("skiff-bench: started etcd member {name} pid {pid}: client {}", client(i));
    }
    eprintln!("skiff-bench: etcd data in {}", procs.dir().display());
    let clients: Vec<SocketAddr> = (0..n).map(client).collect();
    wait_ready(&mut procs, interrupt, "the etcd cluster", || {
        for c in &clients {
            let (code, body) = http_get(&c.to_string(), "/health").map_err(|e| format!("{c}: {e}"))?;
            if code != 200 || !body.contains("\"health\":\"true\"") {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    Ok(EtcdCluster { procs, clients })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_args_found_a_cluster() {
        let nodes: Vec<SkiffNode> = (1..=3)
            .map(|id| SkiffNode {
                id,
                pid: 0,
                client: loopback(7000 + id as u16),
                peer: loopback(7100 + id as u16),
                admin: loopback(7200 + id as u16),
            })
            .collect();
        let args = serve_args(&nodes[1], &nodes, Path::new("/d/node-2"), &["--tick-ms".into(), "50".into()]);
        assert!(
            args.windows(2)
                .any(|w| w[0] == "--cluster" && w[1] == "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103")
        );
        assert!(args.windows(2).any(|w| w[0] == "--id" && w[1] == "2"));
        assert!(args.contains(&"--bootstrap".to_string()));
        assert_eq!(args.last().map(String::as_str), Some("50"));
    }

    #[test]
    fn ports_are_distinct() {
        let p = free_ports(12).unwrap();
        let mut q = p.clone();
        q.sort();
        q.dedup();
        assert_eq!(q.len(), 12);
    }

    #[test]
    fn a_missing_parent_is_refused_and_a_fresh_dir_is_removed() {
        assert!(matches!(Procs::new("x", Path::new("/nonexistent/dir"), false), Err(BenchError::DataDir { .. })));
        let parent = std::env::temp_dir().join(format!("procs-unit-{}", std::process::id()));
        std::fs::create_dir_all(&parent).unwrap();
        let mut p = Procs::new("x", &parent, false).unwrap();
        let dir = p.dir().to_path_buf();
        assert!(dir.is_dir());
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        let pid = p.spawn("sleeper", sleeper).unwrap();
        drop(p);
        assert!(!dir.exists());
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the child is stopped and reaped");
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
