//! `skiff local`: a whole cluster on loopback that answers clients, stops on Ctrl-C
//! (every node gone, its data directory removed), and whose nodes stop even when
//! `skiff local` itself is killed outright.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cluster::{Resp, bulk, free_port, ok, write_until_ok};

/// Time for a node to start, answer, or stop on a loaded two-core machine.
const WAIT: Duration = Duration::from_secs(60);

/// Kills `skiff local` and the nodes it reported if a test fails midway.
struct LocalGuard {
    child: Option<Child>,
    node_pids: Vec<u32>,
    dir: PathBuf,
}

impl Drop for LocalGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in &self.node_pids {
            if is_skiff(*pid) {
                // SAFETY: kill takes plain integers; the pid is a node this test saw started.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_skiff(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
    stat.contains("(skiff)") && state != Some("Z")
}

/// The `skiff serve` children of `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok());
        if ppid == Some(parent) && stat.contains("(skiff)") {
            out.push(pid);
        }
    }
    out
}

/// Starts `skiff local` with its own data directory and free ports; returns once it
/// printed its table and every node answers PING, with the nodes' client addresses.
fn start(name: &str) -> (LocalGuard, Vec<String>) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("local-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Three consecutive free ranges: client BASE+i, peer BASE+100+i, admin BASE+200+i.
    let base = loop {
        let b = free_port();
        if (1..=3).all(|i| [0, 100, 200].iter().all(|o| std::net::TcpListener::bind(("127.0.0.1", b + o + i)).is_ok()))
        {
            break b;
        }
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(["local", "--nodes", "3", "--base-port", &base.to_string(), "--data-dir"])
        .arg(&dir)
        .args(["--", "--tick-ms", "20", "--election-ticks", "10"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start skiff local");
    let stdout = child.stdout.take().unwrap();
    let mut g = LocalGuard { child: Some(child), node_pids: Vec::new(), dir };
    let mut clients = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() == 4 && cols[0].parse::<u64>().is_ok() {
            clients.push(cols[1].to_string());
        }
        if line.contains("Ctrl-C stops the cluster") {
            break;
        }
    }
    assert_eq!(clients.len(), 3, "skiff local printed three nodes");
    g.node_pids = children_of(g.child.as_ref().unwrap().id());
    assert_eq!(g.node_pids.len(), 3, "three skiff serve children");
    for addr in &clients {
        let deadline = Instant::now() + WAIT;
        loop {
            if Resp::try_connect(addr).and_then(|mut c| c.try_cmd(&["PING"])).is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "node at {addr} never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (g, clients)
}

fn wait_gone(pids: &[u32]) {
    let deadline = Instant::now() + WAIT;
    while pids.iter().any(|p| is_skiff(*p)) {
        assert!(Instant::now() < deadline, "nodes still running: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_stops_every_node_and_removes_the_data() {
    let (mut g, clients) = start("sigint");
    // The cluster serves: a write through one node reads back through another.
    let mut c = Resp::connect(&clients[0]);
    assert_eq!(write_until_ok(&mut c, &["SET", "k", "v"], WAIT), ok());
    assert_eq!(Resp::connect(&clients[2]).cmd(&["GET", "k"]), bulk("v"));
    let pid = g.child.as_ref().unwrap().id();
    // SAFETY: kill takes plain integers; the pid is our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) };
    let status = g.child.take().unwrap().wait().unwrap();
    assert!(status.success(), "{status}");
    wait_gone(&g.node_pids);
    assert!(!g.dir.exists(), "the data directory skiff local created is removed");
}

#[test]
fn a_killed_skiff_local_still_stops_its_nodes() {
    let (mut g, _) = start("sigkill");
    let mut child = g.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    wait_gone(&g.node_pids);
}
