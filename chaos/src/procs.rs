//! The `skiff serve` processes of a run: spawned with their own ports, data directory
//! and log file, killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT) by pid.
//!
//! Every process this module starts is also entered in a process-wide registry, so
//! that nothing is left running: [`Cluster`]'s `Drop` kills its processes (also when
//! a panic unwinds), and [`install_interrupt_handler`] makes Ctrl-C stop the run
//! cleanly, and a second Ctrl-C kill every registered process at once and exit.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The node processes alive, by pid, and whether each is paused (SIGSTOP).
static LIVE: Mutex<BTreeMap<u32, bool>> = Mutex::new(BTreeMap::new());

/// Set by the first Ctrl-C (or SIGTERM): the run stops at its next step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn live() -> std::sync::MutexGuard<'static, BTreeMap<u32, bool>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the run was asked to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this module spawned and has not yet reaped, so it
    // cannot name another process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGINT/SIGTERM: the first asks the run to stop (its guards then kill the nodes);
/// the second kills every node process at once and exits with status 130.
///
/// # Errors
/// If the signal handlers cannot be installed.
pub fn install_interrupt_handler() -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM])?;
    std::thread::Builder::new().name("chaos-signals".into()).spawn(move || {
        for _ in signals.forever() {
            if INTERRUPTED.swap(true, Ordering::Relaxed) {
                kill_all_registered();
                std::process::exit(130);
            }
            eprintln!("skiff-chaos: interrupted; stopping the nodes (again to kill them at once)");
        }
    })?;
    Ok(())
}

/// SIGCONT and SIGKILL to every registered process.
fn kill_all_registered() {
    let mut l = live();
    for (&pid, &paused) in l.iter() {
        if paused {
            signal(pid, libc::SIGCONT);
        }
        signal(pid, libc::SIGKILL);
    }
    l.clear();
}

/// One node's addresses and files.
#[derive(Clone, Debug)]
pub struct NodeAddrs {
    pub id: u64,
    pub client: String,
    pub peer: String,
    pub admin: String,
    pub dir: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug)]
struct Proc {
    child: Child,
    paused: bool,
}

/// How a node starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A founding member on an empty data directory (`--bootstrap`).
    Bootstrap,
    /// A member to be added on an empty data directory (`--join`).
    Join,
    /// On its own data.
    Restart,
}

/// The processes of a run. Dropping it kills whatever still runs.
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<NodeAddrs>,
    bin: PathBuf,
    cluster_name: String,
    flags: Vec<String>,
    procs: Vec<Option<Proc>>,
}

impl Cluster {
    /// `nodes` with their addresses; none started. `flags` go to every `skiff serve`.
    pub fn new(bin: PathBuf, cluster_name: &str, nodes: Vec<NodeAddrs>, flags: Vec<String>) -> Cluster {
        let procs = nodes.iter().map(|_| None).collect();
        Cluster { nodes, bin, cluster_name: cluster_name.to_string(), flags, procs }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: u64) -> &NodeAddrs {
        &self.nodes[(id - 1) as usize]
    }

    fn args(&self, id: u64, how: Start) -> Vec<String> {
        let n = self.node(id);
        let cluster: Vec<String> = self.nodes.iter().map(|m| format!("{}={}", m.id, m.peer)).collect();
        let mut a: Vec<String> = vec![
            "serve".into(),
            "--id".into(),
            id.to_string(),
            "--cluster".into(),
            cluster.join(","),
            "--cluster-name".into(),
            self.cluster_name.clone(),
            "--client-addr".into(),
            n.client.clone(),
            "--admin-addr".into(),
            n.admin.clone(),
            "--data-dir".into(),
            n.dir.to_string_lossy().into_owned(),
        ];
        match how {
            Start::Bootstrap => a.push("--bootstrap".into()),
            Start::Join => a.push("--join".into()),
            Start::Restart => {}
        }
        a.extend(self.flags.iter().cloned());
        a
    }

    /// Starts node `id` (appending to its log file).
    ///
    /// # Errors
    /// If the process cannot be spawned.
    pub fn start(&mut self, id: u64, how: Start) -> std::io::Result<()> {
        assert!(self.procs[(id - 1) as usize].is_none(), "node {id} is already running");
        let args = self.args(id, how);
        let log = OpenOptions::new().create(true).append(true).open(&self.node(id).log)?;
        let mut cmd = Command::new(&self.bin);
        // A runner killed outright (a CI timeout) leaves no node behind; its run
        // directory stays. Nodes are started and restarted from the thread that called
        // `run`, which lives until the run is over.
        skiff_net::child::signal_on_parent_death(&mut cmd, libc::SIGKILL, "skiff-chaos");
        let child = cmd
            .args(&args)
            .env("SKIFF_LOG", std::env::var("SKIFF_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        live().insert(child.id(), false);
        self.procs[(id - 1) as usize] = Some(Proc { child, paused: false });
        Ok(())
    }

    /// Whether node `id`'s process is running (paused counts); reaps it if it exited.
    pub fn running(&mut self, id: u64) -> bool {
        self.exit_status(id).is_none() && self.procs[(id - 1) as usize].is_some()
    }

    /// If node `id`'s process has exited since the last look: its status (reaped).
    pub fn exit_status(&mut self, id: u64) -> Option<ExitStatus> {
        let slot = &mut self.procs[(id - 1) as usize];
        let p = slot.as_mut()?;
        match p.child.try_wait() {
            Ok(Some(status)) => {
                live().remove(&p.child.id());
                *slot = None;
                Some(status)
            }
            _ => None,
        }
    }

    /// Waits up to `within` for node `id` to exit by itself.
    pub fn wait_exit(&mut self, id: u64, within: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.exit_status(id) {
                return Some(s);
            }
            if self.procs[(id - 1) as usize].is_none() || std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn paused(&self, id: u64) -> bool {
        self.procs[(id - 1) as usize].as_ref().is_some_and(|p| p.paused)
    }

    /// SIGKILL (after SIGCONT if paused) and reap. No-op if not running.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.procs[(id - 1) as usize].take() {
            let pid = p.child.id();
            if p.paused {
                signal(pid, libc::SIGCONT);
            }
            let _ = p.child.kill();
            let _ = p.child.wait();
            live().remove(&pid);
        }
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: u64) {
        if let Some(p) = self.procs[(id - 1) as usize].as_mut()
            && !p.paused
        {
            signal(p.child.id(), libc::SIGSTOP);
            p.paused = true;
            live().insert(p.child.id(), true);
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        if let Some(p) = self.procs[(id - 1) as usize].as_mut()
            && p.paused
        {
            signal(p.child.id(), libc::SIGCONT);
            p.paused = false;
            live().insert(p.child.id(), false);
        }
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for id in self.ids() {
            self.kill(id);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}
