//! `--spawn` against real `skiff serve` processes: a short run works, and afterwards no
//! process and no directory is left — also when skiff-bench is interrupted mid-run or
//! while the cluster is still starting. Killed outright (SIGKILL, no clean-up at all),
//! it still leaves no process behind.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Scratch, bench_bin, skiff_bin};

/// How long skiff-bench gets to stop its cluster after SIGINT: the nodes' SIGTERM
/// grace (10 s) plus slack for a loaded machine.
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// Kills skiff-bench if a test fails before it exits (its own cleanup then cannot run,
/// so the test also stops the nodes it learned of).
struct BenchGuard {
    child: Option<Child>,
    node_pids: Vec<u32>,
}

impl Drop for BenchGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in &self.node_pids {
            if is_skiff(*pid) {
                let _ = skiff_bench::sys::signal(*pid, libc::SIGKILL);
            }
        }
    }
}

/// Whether `pid` is a running `skiff` process (not one reused by something else).
fn is_skiff(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // State Z: exited, waiting to be reaped; it holds nothing.
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next());
    stat.contains("(skiff)") && state != Some("Z")
}

/// Node pids from skiff-bench's `started skiff node N pid P` lines.
fn node_pid(line: &str) -> Option<u32> {
    let rest = line.split("started skiff node ").nth(1)?;
    rest.split(" pid ").nth(1)?.split(':').next()?.parse().ok()
}

/// Starts skiff-bench with `args`, streaming its stderr lines to the returned channel.
fn start(args: &[&str]) -> (BenchGuard, mpsc::Receiver<String>) {
    let mut child = Command::new(bench_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skiff-bench");
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut BufReader::new(stdout), &mut std::io::sink()));
    (BenchGuard { child: Some(child), node_pids: Vec::new() }, rx)
}

/// Reads stderr lines (recording node pids) until one contains `marker`.
fn wait_for(g: &mut BenchGuard, rx: &mpsc::Receiver<String>, marker: &str) -> Vec<String> {
    let deadline = Instant::now() + EXIT_WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("no `{marker}` from skiff-bench: {seen:#?}"));
        if let Some(pid) = node_pid(&line) {
            g.node_pids.push(pid);
        }
        let done = line.contains(marker);
        seen.push(line);
        if done {
            return seen;
        }
    }
}

fn wait_exit(g: &mut BenchGuard) -> std::process::ExitStatus {
    let c = g.child.as_mut().unwrap();
    let deadline = Instant::now() + EXIT_WAIT;
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            g.child = None;
            return s;
        }
        assert!(Instant::now() < deadline, "skiff-bench did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_nothing_left(g: &BenchGuard, dir: &Scratch) {
    assert_eq!(g.node_pids.len(), 3, "three nodes were started");
    for pid in &g.node_pids {
        assert!(!is_skiff(*pid), "node pid {pid} is still running");
    }
    assert_eq!(dir.entries(), Vec::<String>::new(), "the data directory is removed");
}

#[test]
fn a_short_spawn_run_reports_and_leaves_nothing_behind() {
    let Some(skiff) = skiff_bin() else { return };
    let dir = Scratch::new("spawn-run");
    let json = Scratch::new("spawn-run-json");
    let json_file = json.0.join("r.json");
    let (mut g, rx) = start(&[
        "--spawn",
        "3",
        "--skiff-bin",
        skiff.to_str().unwrap(),
        "--data-dir",
        dir.0.to_str().unwrap(),
        "--requests",
        "300",
        "--clients",
        "6",
        "--warmup",
        "0.2",
        "--json",
        json_file.to_str().unwrap(),
    ]);
    wait_for(&mut g, &rx, "stopped the skiff cluster");
    let status = wait_exit(&mut g);
    assert!(status.success(), "{status}");
    assert_nothing_left(&g, &dir);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json_file).unwrap()).unwrap();
    assert_eq!(v["system"], "skiff");
    assert_eq!(v["ops"].as_u64().unwrap() + v["errors"].as_u64().unwrap(), 300, "{v}");
    assert!(v["ops"].as_u64().unwrap() > 0, "{v}");
    // Measured, though 300 writes may cost less than /proc's 10 ms tick.
    assert!(v["cpu_us_per_op"].as_f64().is_some_and(|c| c >= 0.0), "the cluster's CPU is measured: {v}");
    assert_eq!(v["server_processes"], 3);
    assert_eq!(v["workload"]["targets"].as_array().unwrap().len(), 3, "clients go to every node by default");
}

/// Arguments of a run that would last ten minutes: it only ends by a signal.
fn long_run<'a>(skiff: &'a std::path::Path, dir: &'a Scratch) -> [&'a str; 10] {
    let (skiff, dir) = (skiff.to_str().unwrap(), dir.0.to_str().unwrap());
    ["--spawn", "3", "--skiff-bin", skiff, "--data-dir", dir, "--duration", "600", "--clients", "4"]
}

#[test]
fn an_interrupted_spawn_run_stops_the_cluster_and_removes_its_data() {
    let Some(skiff) = skiff_bin() else { return };
    let dir = Scratch::new("spawn-sigint");
    let args = long_run(&skiff, &dir);
    // Mid-run: after the cluster is ready and load is flowing.
    let (mut g, rx) = start(&args);
    wait_for(&mut g, &rx, "skiff cluster ready");
    std::thread::sleep(Duration::from_millis(1500));
    skiff_bench::sys::signal(g.child.as_ref().unwrap().id(), libc::SIGINT).unwrap();
    let status = wait_exit(&mut g);
    assert_eq!(status.code(), Some(130), "{status}");
    assert_nothing_left(&g, &dir);

    // While the cluster is starting: the leader wait is cut short the same way.
    let (mut g, rx) = start(&args);
    wait_for(&mut g, &rx, "skiff data in");
    skiff_bench::sys::signal(g.child.as_ref().unwrap().id(), libc::SIGINT).unwrap();
    let status = wait_exit(&mut g);
    assert_eq!(status.code(), Some(130), "{status}");
    assert_nothing_left(&g, &dir);
}

#[test]
fn a_killed_spawn_run_leaves_no_server_running() {
    let Some(skiff) = skiff_bin() else { return };
    let dir = Scratch::new("spawn-sigkill");
    let (mut g, rx) = start(&long_run(&skiff, &dir));
    wait_for(&mut g, &rx, "skiff cluster ready");
    assert_eq!(g.node_pids.len(), 3, "three nodes were started");
    skiff_bench::sys::signal(g.child.as_ref().unwrap().id(), libc::SIGKILL).unwrap();
    wait_exit(&mut g);
    // The kernel delivers the parent-death signal as the parent exits; give the nodes
    // a moment to be reaped by init.
    let deadline = Instant::now() + EXIT_WAIT;
    while g.node_pids.iter().any(|p| is_skiff(*p)) {
        assert!(Instant::now() < deadline, "nodes still running after skiff-bench was killed: {:?}", g.node_pids);
        std::thread::sleep(Duration::from_millis(50));
    }
}
