//! One chaos run: start the cluster, run the workload, inject the seeded schedule of
//! faults, heal, read everything back through every node, then judge: is the history
//! linearizable, is every acknowledged write there, do the replicas agree.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::check::{CheckOptions, CheckReport, Verdict, check};
use crate::client::{Resp, http};
use crate::faults::{CRASH_POINTS, FaultKind, Schedule};
use crate::history::{Input, Op, Outcome, Output, Value, write_jsonl};
use crate::monitor::{Life, Measured, Monitor};
use crate::procs::{Cluster, NodeAddrs, Start, interrupted};
use crate::rng::Rng;
use crate::waltail::{TailError, damage_tail};
use crate::workload::{Keys, Shared, WorkerParams, execute, worker};

/// The client id of the final write and reads.
pub const FINAL_CLIENT: u32 = u32::MAX;

/// The key of the final write.
const FINAL_KEY: &str = "final";

/// How long a started node may take to listen on its client port (it may wait up to 3 s
/// for a port its previous process held).
const LISTEN_WAIT: Duration = Duration::from_secs(15);

/// Admin requests: answered from memory, so a slow answer means a stuck node.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `slow-election` waits, once the delayed election timers run again, for one
/// of the delayed nodes to win before the muted ones may ask for votes too. A delayed
/// node whose log is behind a muted node's cannot win (Raft §5.4.1: the muted node
/// refuses its vote), so without this the cluster would wait for the muted nodes for
/// the whole settle time (a 35 s leaderless period in a soak, seed 20261204).
const SLOW_ELECTION_WAIT: Duration = Duration::from_secs(5);
/// How long a node whose arming request got no answer is given to show that it died of
/// the failure point it was just armed with: the point can fire (and abort the
/// process) before the admin thread sends its reply.
const ARM_RACE_WAIT: Duration = Duration::from_secs(2);
/// How long the lagging variant of `slow-election` keeps the leader's appends from the
/// delayed followers before killing the leader.
const SLOW_ELECTION_LAG: Duration = Duration::from_millis(600);

/// Where a node stands in the leader's applied configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Member {
    Voter,
    Learner,
    Gone,
}

/// Time after arming a partition for the node to have taken in the messages already
/// past its filter.
const CUT_MARGIN: Duration = Duration::from_millis(50);

/// Filler written while waiting for a cut-off follower to need a snapshot: big enough
/// that a few hundred of them pass the snapshot threshold of a test cluster quickly.
const FILLER_VALUE_BYTES: usize = 512;

/// Violations the report prints; one usually tells the story, and a broken node can
/// fail every key.
const VIOLATIONS_SHOWN: usize = 3;

/// The `statfs` magic of tmpfs, which has no O_DIRECT.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A free loopback port.
pub type PortSource = Arc<dyn Fn() -> u16 + Send + Sync>;

/// Everything a run needs.
#[derive(Clone)]
pub struct Config {
    /// A `skiff` binary built with the `failpoints` feature.
    pub skiff_bin: PathBuf,
    pub nodes: u64,
    pub seed: u64,
    /// Where the run's directory (data, logs, history) is created; must support O_DIRECT.
    pub work_dir: PathBuf,
    /// Workload before the first fault.
    pub warmup: Duration,
    /// How long faults are injected (at least until every kind came up once, with
    /// `cover_all`).
    pub fault_phase: Duration,
    pub cover_all: bool,
    /// Workload after the last fault is healed.
    pub cooldown: Duration,
    pub faults: Vec<FaultKind>,
    pub clients: u32,
    pub keys: usize,
    pub ops_per_key: u64,
    /// A client's deadline for one request (after it: outcome unknown).
    pub client_timeout: Duration,
    /// Most time a client waits between two requests.
    pub think: Duration,
    /// How long a fault lasts, in ms (uniform in the range).
    pub hold_ms: (u64, u64),
    /// The pause between faults, in ms.
    pub gap_ms: (u64, u64),
    /// How long to wait for an armed crash point to be reached.
    pub crash_wait: Duration,
    /// How long to wait for a leader (before a leader fault, after healing) and for the
    /// replicas to converge.
    pub settle_wait: Duration,
    /// Flags for every `skiff serve` (timing, segment and snapshot sizes).
    pub node_flags: Vec<String>,
    pub check: CheckOptions,
    pub port: PortSource,
    /// `slow-election` with the delayed followers' logs first put behind the muted
    /// ones' (`Some(true)`), never (`Some(false)`), or as the seed decides (`None`).
    pub slow_election_lag: Option<bool>,
    /// Keep the run directory even when the run passes.
    pub keep: bool,
    /// Print progress (faults as they happen) to stderr.
    pub verbose: bool,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("skiff_bin", &self.skiff_bin)
            .field("nodes", &self.nodes)
            .field("seed", &self.seed)
            .field("fault_phase", &self.fault_phase)
            .field("faults", &self.faults)
            .finish_non_exhaustive()
    }
}

/// Flags of a soak run: elections within about a second, small WAL segments,
/// frequent snapshots and a short log kept below them, so that rotation, compaction,
/// catch-up from the kept log and snapshot transfer all happen.
pub const SOAK_NODE_FLAGS: &[&str] = &[
    "--tick-ms",
    "50",
    "--election-ticks",
    "10",
    "--heartbeat-ticks",
    "1",
    "--request-timeout-ms",
    "2000",
    "--wal-segment-bytes",
    "4194304",
    "--snapshot-log-bytes",
    "65536",
    "--snapshot-catchup-entries",
    "200",
];

impl Config {
    /// A soak run of `fault_phase` with every fault kind.
    pub fn soak(skiff_bin: PathBuf, seed: u64, fault_phase: Duration) -> Config {
        Config {
            skiff_bin,
            nodes: 3,
            seed,
            work_dir: PathBuf::from("/var/tmp"),
            warmup: Duration::from_secs(5),
            fault_phase,
            cover_all: true,
            cooldown: Duration::from_secs(10),
            faults: FaultKind::all(),
            clients: 6,
            keys: 5,
            ops_per_key: 200,
            client_timeout: Duration::from_secs(3),
            think: Duration::from_millis(5),
            hold_ms: (1_000, 5_000),
            gap_ms: (1_000, 3_000),
            crash_wait: Duration::from_secs(30),
            settle_wait: Duration::from_secs(30),
            node_flags: SOAK_NODE_FLAGS.iter().map(|s| s.to_string()).collect(),
            check: CheckOptions::default(),
            port: Arc::new(default_port),
            slow_election_lag: None,
            keep: false,
            verbose: true,
        }
    }
}

/// A loopback port below the ephemeral range (a port from that range, released while a
/// node restarts, could meanwhile become the local port of an outgoing connection),
/// never handed out twice by this process.
pub fn default_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (lo, hi) = (10_000u16, ephemeral.saturating_sub(1).max(10_001));
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if *next == 0 {
        *next = lo + (std::process::id().wrapping_mul(7919) % u32::from(hi - lo)) as u16;
    }
    loop {
        let port = *next;
        *next = if *next + 1 >= hi { lo } else { *next + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Why a run could not be carried out (as opposed to a run that found a problem).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("cannot use {0}: {1}")]
    Dir(PathBuf, String),
    #[error("cannot start {0}: {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error(
        "{0} has no failure points (GET /debug/failpoints answered {1}); build it with \
         `cargo build --release --target-dir target/chaos -p skiff-node --features failpoints`"
    )]
    NoFailpoints(PathBuf, String),
    #[error("the node does not know the crash point `{0}`; is {1} an older build?")]
    UnknownCrashPoint(String, PathBuf),
    #[error("node {0} did not start: {1}")]
    NodeStart(u64, String),
    #[error("the new cluster elected no leader within {0:?}")]
    NoLeader(Duration),
    #[error("interrupted")]
    Interrupted,
    #[error("cannot save the run to {0}: {1}")]
    Save(PathBuf, std::io::Error),
}

/// Operations counted by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub ops: u64,
    pub ok: u64,
    pub failed: u64,
    pub unknown: u64,
}

impl Tally {
    fn add(&mut self, op: &Op) {
        self.ops += 1;
        match op.outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Fail(_) => self.failed += 1,
            Outcome::Unknown(_) => self.unknown += 1,
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// Since the run started.
    pub at: Duration,
    pub kind: FaultKind,
    pub detail: String,
    /// Whether it took effect (a crash point was reached, the WAL was damaged, a leader
    /// was there to aim at).
    pub took_effect: bool,
}

/// The explicit search for lost acknowledged writes.
#[derive(Clone, Debug, Default)]
pub struct AckedWrites {
    /// Acknowledged SETs and INCRs in the history.
    pub acked: u64,
    /// Acknowledged SETs that no other operation could have overwritten (every other
    /// write or INCR on the key, answered, completed before it began).
    pub last_writes: u64,
    /// Of those, the ones whose value is not what the final reads returned.
    pub missing: Vec<String>,
}

/// The replicas' state machines at the end.
#[derive(Clone, Debug, Default)]
pub struct Convergence {
    pub converged: bool,
    /// (node, applied index, digest) as last seen.
    pub nodes: Vec<(u64, Option<u64>, Option<String>)>,
}

/// Everything a run found.
#[derive(Debug)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: u64,
    pub clients: u32,
    pub wall: Duration,
    pub before: Tally,
    pub during: Tally,
    pub after: Tally,
    pub final_ops: Tally,
    pub faults: Vec<FaultRecord>,
    pub measured: Measured,
    pub check: CheckReport,
    pub acked: AckedWrites,
    pub convergence: Convergence,
    /// Everything wrong besides the checks above: nodes that exited unasked, refused to
    /// start, no leader after healing.
    pub problems: Vec<String>,
    /// Where the history, report and logs are (kept when the run failed, or asked to).
    pub saved: Option<PathBuf>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.check.verdict() == Verdict::Linearizable
            && self.acked.missing.is_empty()
            && self.convergence.converged
            && self.problems.is_empty()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// p50 and max of `v`.
fn p50_max(v: &[Duration]) -> Option<(Duration, Duration)> {
    let mut s = v.to_vec();
    s.sort();
    Some((*s.get(s.len().saturating_sub(1) / 2)?, *s.last()?))
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "skiff-chaos seed {}: {} ({} nodes, {} clients, {} wall)",
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.nodes,
            self.clients,
            secs(self.wall)
        )?;
        writeln!(f, "  operations           total       ok   failed  unknown")?;
        for (name, t) in [
            ("before faults", self.before),
            ("during faults", self.during),
            ("after faults", self.after),
            ("final checks", self.final_ops),
        ] {
            writeln!(f, "    {name:<15} {:>8} {:>8} {:>8} {:>8}", t.ops, t.ok, t.failed, t.unknown)?;
        }
        let mut kinds: Vec<(FaultKind, u64, u64)> = Vec::new();
        for r in &self.faults {
            match kinds.iter_mut().find(|(k, _, _)| *k == r.kind) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += u64::from(r.took_effect);
                }
                None => kinds.push((r.kind, 1, u64::from(r.took_effect))),
            }
        }
        kinds.sort();
        writeln!(f, "  faults injected: {} (kind: injected / took effect)", self.faults.len())?;
        for (k, n, e) in kinds {
            writeln!(f, "    {:<38} {n:>4} / {e}", k.name())?;
        }
        let m = &self.measured;
        writeln!(
            f,
            "  longest period without a leader: {}",
            m.leaderless.iter().max().map(|d| secs(*d)).unwrap_or_else(|| "none".into())
        )?;
        match p50_max(&m.elections) {
            Some((p50, max)) => writeln!(
                f,
                "  time to elect after a leader loss: {} losses, p50 {}, max {}",
                m.elections.len(),
                secs(p50),
                secs(max)
            )?,
            None => writeln!(f, "  time to elect after a leader loss: no leader loss seen")?,
        }
        let catchups: Vec<Duration> = m.catchups.iter().map(|(_, d)| *d).collect();
        match p50_max(&catchups) {
            Some((p50, max)) => write!(
                f,
                "  catch-up of a restarted node: {} restarts, p50 {}, max {}",
                catchups.len(),
                secs(p50),
                secs(max)
            )?,
            None => write!(f, "  catch-up of a restarted node: no restart measured")?,
        }
        if m.catchups_unfinished.is_empty() {
            writeln!(f)?;
        } else {
            writeln!(f, " (not caught up when measured last: nodes {:?})", m.catchups_unfinished)?;
        }
        writeln!(
            f,
            "    (leadership polled every {} ms, {} polls)",
            crate::monitor::POLL_INTERVAL.as_millis(),
            m.polls
        )?;
        let c = &self.check;
        writeln!(
            f,
            "  linearizability: {} ({} keys, {} operations checked, {} unknown-outcome writes nobody observed left out, \
             {} search steps, at most {} for one key)",
            c.verdict(),
            c.keys,
            c.ops,
            c.unobserved_unknown_writes,
            c.steps,
            c.steps_max
        )?;
        for v in c.violations.iter().take(VIOLATIONS_SHOWN) {
            write!(f, "{v}")?;
        }
        if c.violations.len() > VIOLATIONS_SHOWN {
            writeln!(
                f,
                "    ... and {} more keys (all of them in violations.txt when the run is saved)",
                c.violations.len() - VIOLATIONS_SHOWN
            )?;
        }
        for (k, steps) in &c.too_hard {
            writeln!(f, "    key {k}: undecided after {steps} search steps")?;
        }
        writeln!(
            f,
            "  acknowledged writes: {} (all covered by the check above); {} were their key's last write: {}",
            self.acked.acked,
            self.acked.last_writes,
            if self.acked.missing.is_empty() {
                "every one is in the final state".to_string()
            } else {
                format!("{} MISSING", self.acked.missing.len())
            }
        )?;
        for m in &self.acked.missing {
            writeln!(f, "    missing: {m}")?;
        }
        let cv = &self.convergence;
        if cv.converged {
            let (_, applied, digest) = &cv.nodes[0];
            writeln!(
                f,
                "  replicas: all {} at applied index {}, state digest {}",
                cv.nodes.len(),
                applied.unwrap_or(0),
                digest.as_deref().unwrap_or("?")
            )?;
        } else {
            writeln!(f, "  replicas: NOT converged: (node, applied, digest) {:?}", cv.nodes)?;
        }
        for p in &self.problems {
            writeln!(f, "  problem: {p}")?;
        }
        if let Some(dir) = &self.saved {
            writeln!(f, "  history, report and node logs: {}", dir.display())?;
        }
        if !self.passed() {
            writeln!(f, "  reproduce the schedule with --seed {}", self.seed)?;
        }
        Ok(())
    }
}

/// The last lines of a node's log.
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The process, its monitor and the run's bookkeeping.
struct Run<'a> {
    cfg: &'a Config,
    t0: Instant,
    cluster: Cluster,
    monitor: Arc<Monitor>,
    faults: Vec<FaultRecord>,
    problems: Vec<String>,
    /// Nodes started with `--join` on a wiped directory and not yet seen with a durable
    /// Raft state: one that crashes before its first write has nothing on disk, and an
    /// operator starts it with `--join` again (a plain start of an empty directory is
    /// refused, rightly). `--join` is ignored on a directory that has state, so keeping
    /// it until the state is seen is harmless.
    joining: BTreeSet<u64>,
}

impl Run<'_> {
    fn say(&self, msg: &str) {
        if self.cfg.verbose {
            eprintln!("[{:>8.2}s] {msg}", self.t0.elapsed().as_secs_f64());
        }
    }

    /// Sleeps, waking early when interrupted.
    fn sleep(&self, d: Duration) -> Result<(), ChaosError> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if interrupted() {
                return Err(ChaosError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    fn admin(&self, id: u64) -> String {
        self.cluster.node(id).admin.clone()
    }

    /// Shard 0 of node `id`'s `GET /status` (`None` when it does not answer in JSON).
    fn shard_status(&self, id: u64) -> Option<serde_json::Value> {
        let (_, body) = http(&self.cluster.node(id).admin, "GET", "/status", ADMIN_TIMEOUT).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        Some(v["shards"][0].clone())
    }

    /// Arms a failure point that stops the process when it is reached (a crash point,
    /// `fsync-eio`) and waits up to `wait` for the node to exit. An arming request that
    /// got no answer still counts when the node exits: the point may have fired before
    /// the reply went out. `Err` with what to report when it could not be armed.
    fn arm_and_wait_exit(
        &mut self,
        target: u64,
        arm: &str,
        disarm: &str,
        wait: Duration,
    ) -> Result<Option<std::process::ExitStatus>, String> {
        if !self.arm(target, arm) {
            return match self.cluster.wait_exit(target, ARM_RACE_WAIT) {
                Some(status) => Ok(Some(status)),
                None => Err(format!("node {target}: could not arm")),
            };
        }
        Ok(self.wait_exit_or_disarm(target, disarm, wait))
    }

    /// Waits up to `wait` for an armed node to exit; disarms it if it has not.
    fn wait_exit_or_disarm(&mut self, target: u64, disarm: &str, wait: Duration) -> Option<std::process::ExitStatus> {
        let exited = self.cluster.wait_exit(target, wait);
        if exited.is_some() {
            return exited;
        }
        self.arm(target, disarm);
        // It may have been reached just as it was disarmed.
        self.cluster.wait_exit(target, Duration::from_millis(300))
    }

    /// Arms a failure point (`name?query`) on node `id`.
    fn arm(&mut self, id: u64, point: &str) -> bool {
        match http(&self.admin(id), "POST", &format!("/debug/failpoints/{point}"), ADMIN_TIMEOUT) {
            Ok((200, _)) => true,
            Ok((code, body)) => {
                self.problems.push(format!("node {id} refused failure point {point}: {code} {body}"));
                false
            }
            // The node may have just crashed, or be paused: not a finding in itself.
            Err(e) => {
                self.say(&format!("arming {point} on node {id} failed: {e}"));
                false
            }
        }
    }

    /// Starts node `id` (not bootstrapping) and waits for it to listen. A node that
    /// exits instead is a problem: it refused its own data.
    fn start(&mut self, id: u64, after: &str) -> Result<bool, ChaosError> {
        self.start_as(id, Start::Restart, after)
    }

    fn start_as(&mut self, id: u64, how: Start, after: &str) -> Result<bool, ChaosError> {
        let node = self.cluster.node(id).clone();
        if how == Start::Join {
            self.joining.insert(id);
        }
        let how = if how == Start::Restart && self.joining.contains(&id) { Start::Join } else { how };
        self.cluster.start(id, how).map_err(|e| ChaosError::Spawn(self.cfg.skiff_bin.clone(), e))?;
        let deadline = Instant::now() + LISTEN_WAIT;
        loop {
            if let Some(status) = self.cluster.exit_status(id) {
                self.problems.push(format!(
                    "node {id} did not start after {after} ({status}); its log ends:\n{}",
                    log_tail(&node.log, 15)
                ));
                self.monitor.set_life(id, Life::Down);
                return Ok(false);
            }
            if std::net::TcpStream::connect(&node.client).is_ok() {
                self.monitor.restarted(id);
                return Ok(true);
            }
            if Instant::now() > deadline {
                self.problems.push(format!("node {id} did not listen within {LISTEN_WAIT:?} after {after}"));
                self.monitor.restarted(id);
                return Ok(false);
            }
            if interrupted() {
                return Err(ChaosError::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self, id: u64) {
        self.cluster.kill(id);
        self.monitor.set_life(id, Life::Down);
    }

    /// Any node that exited without being asked to is a problem; it is restarted.
    fn unexpected_exits(&mut self, context: &str) -> Result<(), ChaosError> {
        for id in self.cluster.ids() {
            if let Some(status) = self.cluster.exit_status(id) {
                self.monitor.set_life(id, Life::Down);
                self.problems.push(format!(
                    "node {id} exited unasked ({status}) around {context}; its log ends:\n{}",
                    log_tail(&self.cluster.node(id).log, 15)
                ));
                self.start(id, "an unexpected exit")?;
            }
        }
        Ok(())
    }

    fn random_node(&self, rng: &mut Rng) -> u64 {
        rng.range(1, self.cfg.nodes)
    }

    fn leader(&self) -> Option<u64> {
        self.monitor.wait_leader(self.cfg.settle_wait)
    }

    /// `"; delayed followers behind: commit X < Y"` when the muted followers have
    /// committed past everything the delayed ones have seen, as the monitor saw them.
    fn commit_gap(&self, mute: &[u64], slow: &[u64]) -> String {
        let views = self.monitor.views();
        let commit = |id: &u64| views.get((*id - 1) as usize).and_then(|v| v.as_ref()).map(|r| r.commit);
        let (Some(slow_max), Some(mute_min)) =
            (slow.iter().filter_map(commit).max(), mute.iter().filter_map(commit).min())
        else {
            return "; delayed followers' logs unknown".into();
        };
        if mute_min > slow_max {
            format!("; delayed followers behind: commit {slow_max} < {mute_min}")
        } else {
            format!("; delayed followers not behind: commit {slow_max} >= {mute_min}")
        }
    }

    fn follower(&self, rng: &mut Rng) -> Option<u64> {
        let leader = self.leader()?;
        let others: Vec<u64> = self.cluster.ids().into_iter().filter(|&i| i != leader).collect();
        Some(*rng.pick(&others))
    }

    fn others(&self, id: u64) -> String {
        self.cluster.ids().into_iter().filter(|&i| i != id).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Injects one fault and heals it.
    /// Forgets joining nodes that now hold a durable Raft state (see `joining`).
    fn note_joined(&mut self) {
        for id in self.joining.clone() {
            if self.cluster.running(id)
                && self.shard_status(id).and_then(|s| s["persisted"].as_u64()).is_some_and(|p| p > 0)
            {
                self.joining.remove(&id);
            }
        }
    }

    fn inject(&mut self, kind: FaultKind, mut rng: Rng) -> Result<FaultRecord, ChaosError> {
        self.note_joined();
        let at = self.t0.elapsed();
        let hold = Duration::from_millis(rng.range(self.cfg.hold_ms.0, self.cfg.hold_ms.1));
        let record = |detail: String, took_effect: bool| FaultRecord { at, kind, detail, took_effect };
        let no_leader = || record("no leader to aim at".into(), false);
        Ok(match kind {
            FaultKind::KillRandom | FaultKind::KillLeader => {
                let target = if kind == FaultKind::KillLeader {
                    match self.leader() {
                        Some(l) => l,
                        None => return Ok(no_leader()),
                    }
                } else {
                    self.random_node(&mut rng)
                };
                self.say(&format!("{kind}: SIGKILL node {target}, down for {}", secs(hold)));
                self.kill(target);
                self.sleep(hold)?;
                self.start(target, &kind.name())?;
                record(format!("node {target} down {}", secs(hold)), true)
            }
            FaultKind::PauseRandom | FaultKind::PauseLeader => {
                let target = if kind == FaultKind::PauseLeader {
                    match self.leader() {
                        Some(l) => l,
                        None => return Ok(no_leader()),
                    }
                } else {
                    self.random_node(&mut rng)
                };
                self.say(&format!("{kind}: SIGSTOP node {target} for {}", secs(hold)));
                self.monitor.set_life(target, Life::Paused);
                self.cluster.pause(target);
                self.sleep(hold)?;
                self.cluster.resume(target);
                self.monitor.set_life(target, Life::Up);
                record(format!("node {target} paused {}", secs(hold)), true)
            }
            FaultKind::PartitionLeader => {
                let Some(target) = self.leader() else { return Ok(no_leader()) };
                self.say(&format!("{kind}: node {target} cut off both ways for {}", secs(hold)));
                let q = format!("partition?peers={}&dir=both", self.others(target));
                let armed = self.arm(target, &q);
                self.sleep(hold)?;
                self.arm(target, "partition?action=off");
                record(format!("node {target} isolated {}", secs(hold)), armed)
            }
            FaultKind::PartitionMinority => {
                let mut ids = self.cluster.ids();
                rng.shuffle(&mut ids);
                let minority: Vec<u64> = ids[..((self.cfg.nodes - 1) / 2) as usize].to_vec();
                let majority: Vec<String> = ids[minority.len()..].iter().map(|i| i.to_string()).collect();
                self.say(&format!("{kind}: nodes {minority:?} cut off from {majority:?} for {}", secs(hold)));
                let mut armed = true;
                for &m in &minority {
                    armed &= self.arm(m, &format!("partition?peers={}&dir=both", majority.join(",")));
                }
                self.sleep(hold)?;
                for &m in &minority {
                    self.arm(m, "partition?action=off");
                }
                record(format!("nodes {minority:?} isolated {}", secs(hold)), armed)
            }
            FaultKind::PartitionOneWay => {
                let target = if rng.chance(500) {
                    match self.leader() {
                        Some(l) => l,
                        None => return Ok(no_leader()),
                    }
                } else {
                    self.random_node(&mut rng)
                };
                let dir = if rng.chance(500) { "in" } else { "out" };
                let what = if dir == "in" { "hears nothing from" } else { "sends nothing to" };
                self.say(&format!("{kind}: node {target} {what} its peers for {}", secs(hold)));
                let armed = self.arm(target, &format!("partition?peers={}&dir={dir}", self.others(target)));
                self.sleep(hold)?;
                self.arm(target, "partition?action=off");
                record(format!("node {target} dir={dir} {}", secs(hold)), armed)
            }
            FaultKind::NetLossDelay => {
                let drop = rng.range(50, 300) as f64 / 1000.0;
                let delay = rng.range(0, 20);
                self.say(&format!("{kind}: every node drops {drop} of peer messages, delays {delay} ms"));
                let mut armed = true;
                for id in self.cluster.ids() {
                    armed &= self.arm(id, &format!("net?drop={drop}&delay_ms={delay}"));
                }
                self.sleep(hold)?;
                for id in self.cluster.ids() {
                    self.arm(id, "net?action=off");
                }
                record(format!("drop {drop}, delay {delay} ms, {}", secs(hold)), armed)
            }
            FaultKind::Crash(i) => self.crash(CRASH_POINTS[i], kind, at, &mut rng)?,
            FaultKind::SlowSnapshot => {
                let Some(target) = self.follower(&mut rng) else { return Ok(no_leader()) };
                let late = hold.as_millis() as u64;
                self.say(&format!("{kind}: node {target} falls behind a snapshot, then finishes it {late} ms late"));
                if !self.fall_behind_a_snapshot(target)? {
                    return Ok(record(format!("node {target}: the leader did not compact past it in time"), false));
                }
                let snapshot_of = |r: &Self| r.shard_status(target).and_then(|s| s["last_snapshot_index"].as_u64());
                let before = snapshot_of(self).unwrap_or(0);
                let armed = self.arm(target, &format!("snapshot-finish-delay?ms={late}"));
                self.arm(target, "partition?action=off");
                let deadline = Instant::now() + self.cfg.crash_wait + hold;
                let mut installed = None;
                while installed.is_none() && Instant::now() < deadline {
                    if interrupted() {
                        return Err(ChaosError::Interrupted);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    installed = snapshot_of(self).filter(|&i| i > before);
                }
                self.arm(target, "snapshot-finish-delay?action=off");
                match installed {
                    Some(i) => {
                        record(format!("node {target} installed the snapshot at {i}, finished {late} ms late"), armed)
                    }
                    None => record(
                        format!("node {target}: no snapshot installed within {}", secs(self.cfg.crash_wait + hold)),
                        false,
                    ),
                }
            }
            FaultKind::FsyncEio => {
                let target = self.random_node(&mut rng);
                self.say(&format!("{kind}: node {target}'s next fdatasync fails"));
                let exited = match self.arm_and_wait_exit(
                    target,
                    "fsync-eio?action=on",
                    "fsync-eio?action=off",
                    self.cfg.crash_wait,
                ) {
                    Ok(e) => e,
                    Err(detail) => return Ok(record(detail, false)),
                };
                match exited {
                    Some(status) => {
                        self.monitor.set_life(target, Life::Down);
                        if status.success() {
                            self.problems.push(format!("node {target} exited with success after a failed fdatasync"));
                        }
                        self.start(target, "fsync-eio")?;
                        record(format!("node {target} stopped ({status}) and restarted"), true)
                    }
                    None => record(format!("node {target} did not fdatasync in time"), false),
                }
            }
            FaultKind::WalTail => {
                let target = self.random_node(&mut rng);
                self.kill(target);
                let dir = self.cluster.node(target).dir.clone();
                let log = self.cluster.node(target).log.clone();
                let (detail, done) = match damage_tail(&dir, &mut rng) {
                    Ok(d) => (
                        format!(
                            "node {target}: {} over {} bytes at offset {} of {}",
                            d.how,
                            d.bytes,
                            d.end,
                            d.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
                        ),
                        true,
                    ),
                    Err(e @ TailError::Full(_)) => (format!("node {target}: {e}"), false),
                    Err(e) => {
                        self.problems.push(format!("WAL tail damage on node {target}: {e}"));
                        (format!("node {target}: {e}"), false)
                    }
                };
                self.say(&format!("{kind}: {detail}"));
                let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                self.sleep(hold / 2)?;
                if self.start(target, "WAL tail damage")? && done {
                    // Recovery says so when it drops a torn tail; give it a moment.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let mut reported = false;
                    while !reported && Instant::now() < deadline {
                        let text = std::fs::read(&log).unwrap_or_default();
                        reported = String::from_utf8_lossy(&text[(log_before as usize).min(text.len())..])
                            .to_lowercase()
                            .contains("torn");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    if !reported {
                        self.problems.push(format!("node {target} did not report dropping the torn tail ({detail})"));
                    }
                }
                record(detail, done)
            }
            FaultKind::SlowElection => {
                let Some(leader) = self.leader() else { return Ok(no_leader()) };
                let mut followers: Vec<u64> = self.cluster.ids().into_iter().filter(|&i| i != leader).collect();
                rng.shuffle(&mut followers);
                let (mute, slow) = followers.split_at(followers.len().div_ceil(2));
                let (mute, slow) = (mute.to_vec(), slow.to_vec());
                self.say(&format!(
                    "{kind}: nodes {mute:?} send no vote requests, {slow:?} hold their election timers for {}; \
                     SIGKILL leader {leader}",
                    secs(hold)
                ));
                // Half the time (seeded) the delayed followers first stop receiving the
                // leader's appends for a moment while the workload writes, so that their
                // logs are behind the muted ones' when the leader dies: only a muted
                // node can win then (the state that found SLOW_ELECTION_WAIT).
                let lag = self.cfg.slow_election_lag.unwrap_or_else(|| rng.chance(500));
                let lag_time = if lag { SLOW_ELECTION_LAG } else { Duration::ZERO };
                let mut armed = true;
                for &m in &mute {
                    armed &= self.arm(m, "no-vote-requests?action=on");
                }
                for &s in &slow {
                    armed &= self.arm(s, &format!("election-delay?ms={}", (hold + lag_time).as_millis()));
                }
                let mut behind = String::new();
                if lag {
                    let slow_list: Vec<String> = slow.iter().map(u64::to_string).collect();
                    armed &= self.arm(leader, &format!("partition?peers={}&dir=out", slow_list.join(",")));
                    self.sleep(lag_time)?;
                    behind = self.commit_gap(&mute, &slow);
                }
                self.kill(leader);
                self.sleep(hold)?;
                // The delayed timers run again by now: one of those nodes wins, unless
                // its log is behind a muted node's (then only a muted node can win).
                self.monitor.wait_leader(SLOW_ELECTION_WAIT.min(self.cfg.settle_wait));
                for &m in &mute {
                    self.arm(m, "no-vote-requests?action=off");
                }
                self.start(leader, &kind.name())?;
                record(format!("leader {leader} killed; {mute:?} mute, {slow:?} delayed {}{behind}", secs(hold)), armed)
            }
            FaultKind::Membership => {
                let Some(target) = self.follower(&mut rng) else { return Ok(no_leader()) };
                let (wipe, learner) = (rng.chance(500), rng.chance(500));
                self.say(&format!(
                    "{kind}: remove node {target}{}, add it back{} after {}",
                    if wipe { " and wipe its data" } else { "" },
                    if learner { " as a learner, then promote it" } else { "" },
                    secs(hold)
                ));
                if let Err(e) = self.change_membership(&format!("remove?id={target}"), target, Member::Gone) {
                    return Ok(record(e, false));
                }
                if wipe {
                    self.kill(target);
                    let dir = self.cluster.node(target).dir.clone();
                    std::fs::remove_dir_all(&dir).map_err(|e| ChaosError::Dir(dir.clone(), e.to_string()))?;
                }
                self.sleep(hold)?;
                if wipe && !self.start_as(target, Start::Join, "its replacement")? {
                    return Ok(record(format!("node {target}: the replacement did not start"), false));
                }
                let steps = if learner {
                    vec![
                        (format!("add?id={target}&learner=true"), Member::Learner),
                        (format!("promote?id={target}"), Member::Voter),
                    ]
                } else {
                    vec![(format!("add?id={target}"), Member::Voter)]
                };
                for (op, want) in steps {
                    if let Err(e) = self.change_membership(&op, target, want) {
                        // A member left out of the cluster is a finding: the final
                        // checks would not cover it.
                        self.problems.push(format!("node {target} could not be added back: {e}"));
                        return Ok(record(e, false));
                    }
                }
                record(
                    format!(
                        "node {target} removed and added back{}{}",
                        if wipe { " with a wiped data directory" } else { "" },
                        if learner { " (learner, then promoted)" } else { "" }
                    ),
                    true,
                )
            }
            FaultKind::ClusterRestart => {
                self.say(&format!("{kind}: SIGKILL every node, restart after {}", secs(hold / 2)));
                for id in self.cluster.ids() {
                    self.kill(id);
                }
                self.sleep(hold / 2)?;
                for id in self.cluster.ids() {
                    self.start(id, "the whole-cluster restart")?;
                }
                record(format!("all nodes down {}", secs(hold / 2)), true)
            }
        })
    }

    /// Sends membership operation `op` (`remove?id=N`, ...) to the leader until the
    /// leader's applied configuration shows `target` as `want`. Retried: the leader may
    /// change, refuse while another change is applied (409), or time out (503; it may
    /// still take effect, so the configuration is checked before every retry).
    fn change_membership(&mut self, op: &str, target: u64, want: Member) -> Result<(), String> {
        let deadline = Instant::now() + self.cfg.settle_wait;
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            if interrupted() {
                return Err("interrupted".into());
            }
            let Some(leader) = self.monitor.leader() else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            let member = || -> Option<Member> {
                let shard = self.shard_status(leader)?;
                if shard["role"].as_str() != Some("leader") {
                    return None;
                }
                let has = |k: &str| shard[k].as_array().is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(target)));
                Some(if has("voters") {
                    Member::Voter
                } else if has("learners") {
                    Member::Learner
                } else {
                    Member::Gone
                })
            };
            if member() == Some(want) {
                return Ok(());
            }
            match http(&self.admin(leader), "POST", &format!("/members/{op}"), ADMIN_TIMEOUT) {
                Ok((200, _)) => {
                    // Applied on the leader shortly after it commits.
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until {
                        if member() == Some(want) {
                            return Ok(());
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    last = format!("{op} on node {leader}: accepted, not applied within 5 s");
                }
                Ok((code, body)) => last = format!("{op} on node {leader}: {code} {}", body.trim()),
                Err(e) => last = format!("{op} on node {leader}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    }

    /// Arms crash point `point` on a node where load reaches it, waits for the abort,
    /// restarts the node.
    fn crash(&mut self, point: &str, kind: FaultKind, at: Duration, rng: &mut Rng) -> Result<FaultRecord, ChaosError> {
        let record = |detail: String, took_effect: bool| FaultRecord { at, kind, detail, took_effect };
        let snapshot_apply = point.starts_with("snapshot-") && point.ends_with("-apply");
        let target = if point == "leader-before-send-append" {
            self.leader()
        } else if point == "follower-before-send-response" || snapshot_apply {
            self.follower(rng)
        } else {
            Some(self.random_node(rng))
        };
        let Some(target) = target else { return Ok(record("no leader to aim at".into(), false)) };
        self.say(&format!("{kind}: armed on node {target}"));
        if snapshot_apply && !self.fall_behind_a_snapshot(target)? {
            return Ok(record(format!("node {target}: the leader did not compact past it in time"), false));
        }
        let (arm, disarm) = (format!("{point}?action=crash"), format!("{point}?action=off"));
        let exited = if snapshot_apply {
            // These points fire only once the leader's snapshot arrives, which needs the
            // partition healed: arming cannot race with them.
            let armed = self.arm(target, &arm);
            self.arm(target, "partition?action=off");
            if !armed {
                return Ok(record(format!("node {target}: could not arm"), false));
            }
            self.wait_exit_or_disarm(target, &disarm, self.cfg.crash_wait)
        } else {
            match self.arm_and_wait_exit(target, &arm, &disarm, self.cfg.crash_wait) {
                Ok(e) => e,
                Err(detail) => return Ok(record(detail, false)),
            }
        };
        let Some(status) = exited else {
            return Ok(record(format!("node {target}: not reached within {:?}", self.cfg.crash_wait), false));
        };
        self.monitor.set_life(target, Life::Down);
        if status.signal() != Some(libc::SIGABRT) {
            self.problems.push(format!(
                "node {target} armed at {point} exited with {status}, not an abort; its log ends:\n{}",
                log_tail(&self.cluster.node(target).log, 15)
            ));
        }
        self.start(target, point)?;
        Ok(record(format!("node {target} aborted at {point} and restarted"), true))
    }

    /// Cuts `target` off and writes filler through the others until the leader has
    /// compacted its log past `target`'s last entry, so that healing sends it a
    /// snapshot. The partition stays armed; the caller heals it.
    fn fall_behind_a_snapshot(&mut self, target: u64) -> Result<bool, ChaosError> {
        if !self.arm(target, &format!("partition?peers={}&dir=both", self.others(target))) {
            return Ok(false);
        }
        let deadline = Instant::now() + self.cfg.crash_wait;
        // A node's admin status is a report it refreshes a few times a second, so the
        // target's `last_index` in a report made before the cut may predate entries it
        // took in afterwards: compared with the leader's fresh `first_index`, such a
        // figure says "behind the snapshot" when it is not, the leader then sends
        // entries, not a snapshot, and the crash point is never reached. Only a report
        // made after the cut counts (the target takes in nothing more once cut off).
        let cut_at = Instant::now() + CUT_MARGIN;
        let filler = "f".repeat(FILLER_VALUE_BYTES);
        let mut conn: Option<Resp> = None;
        let mut i = 0u64;
        while Instant::now() < deadline {
            if interrupted() {
                return Err(ChaosError::Interrupted);
            }
            let Some(leader) = self.monitor.leader().filter(|&l| l != target) else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if let (Some(l), Some(t)) = (self.shard_status(leader), self.shard_status(target))
                && let (Some(first), Some(last), Some(age)) =
                    (l["first_index"].as_u64(), t["last_index"].as_u64(), t["report_age_ms"].as_u64())
                && Instant::now().checked_sub(Duration::from_millis(age)).is_some_and(|made| made > cut_at)
                && first > last + 1
            {
                return Ok(true);
            }
            if conn.is_none() {
                conn = Resp::connect(&self.cluster.node(leader).client).ok();
            }
            // Filler keys are outside the checked key space; the state digests cover them.
            for _ in 0..20 {
                let Some(c) = conn.as_mut() else { break };
                i += 1;
                if c.call(&["SET", &format!("filler-{}", i % 64), &filler], self.cfg.client_timeout).is_err() {
                    conn = None;
                }
            }
        }
        self.arm(target, "partition?action=off");
        Ok(false)
    }

    /// Resumes paused nodes, starts stopped ones and disarms every failure point.
    fn heal_all(&mut self) -> Result<(), ChaosError> {
        for id in self.cluster.ids() {
            if self.cluster.paused(id) {
                self.cluster.resume(id);
                self.monitor.set_life(id, Life::Up);
            }
            if !self.cluster.running(id) {
                self.start(id, "healing")?;
            }
            let mut off: Vec<String> =
                ["partition", "net", "fsync-eio", "no-vote-requests", "election-delay", "snapshot-finish-delay"]
                    .iter()
                    .map(|p| format!("{p}?action=off"))
                    .collect();
            off.extend(CRASH_POINTS.iter().map(|p| format!("{p}?action=off")));
            for q in off {
                let _ = http(&self.admin(id), "POST", &format!("/debug/failpoints/{q}"), ADMIN_TIMEOUT);
            }
        }
        Ok(())
    }

    /// Retries `input` on `key` through `node` until it gets a definite answer; every
    /// attempt goes into `ops`.
    fn final_op(&self, sh: &Shared, node: u64, key: &str, input: Input, ops: &mut Vec<Op>) -> Option<Outcome> {
        let deadline = Instant::now() + self.cfg.settle_wait;
        let addr = &self.cluster.node(node).client;
        let mut conn: Option<Resp> = None;
        while Instant::now() < deadline && !interrupted() {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Resp::connect(addr) {
                    Ok(c) => conn.insert(c),
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let (op, usable) = execute(sh, c, FINAL_CLIENT, node, key, input.clone(), self.cfg.client_timeout);
            let outcome = op.outcome.clone();
            ops.push(op);
            if let Outcome::Ok(_) = outcome {
                return Some(outcome);
            }
            if !usable {
                conn = None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Polls every node's `/status` until all have applied the same index with the same
    /// digest. Equal indexes with different digests are a divergence at once.
    fn converge(&mut self) -> Convergence {
        let deadline = Instant::now() + self.cfg.settle_wait;
        loop {
            let nodes: Vec<(u64, Option<u64>, Option<String>)> = self
                .cluster
                .ids()
                .into_iter()
                .map(|id| {
                    let s = self.shard_status(id);
                    let applied = s.as_ref().and_then(|s| s["applied"].as_u64());
                    let digest = s.as_ref().and_then(|s| s["kv_digest"].as_str().map(str::to_string));
                    (id, applied, digest)
                })
                .collect();
            let all_known = nodes.iter().all(|(_, a, d)| a.is_some() && d.is_some());
            let same_applied = all_known && nodes.iter().all(|(_, a, _)| *a == nodes[0].1);
            if same_applied && nodes.iter().all(|(_, _, d)| *d == nodes[0].2) {
                return Convergence { converged: true, nodes };
            }
            if same_applied {
                self.problems
                    .push(format!("replicas diverged: same applied index, different state digests: {nodes:?}"));
                return Convergence { converged: false, nodes };
            }
            if Instant::now() > deadline || interrupted() {
                self.problems.push(format!("replicas did not converge within {:?}", self.cfg.settle_wait));
                return Convergence { converged: false, nodes };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Whether `dir`'s file system is tmpfs (no O_DIRECT).
fn on_tmpfs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs writes into the zeroed struct we own; the path is NUL-terminated.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == TMPFS_MAGIC
    }
}

/// The explicit search for lost acknowledged writes over the final reads.
pub fn acked_writes(ops: &[Op]) -> (AckedWrites, Vec<String>) {
    let mut out = AckedWrites::default();
    let mut problems = Vec::new();
    let mut by_key: std::collections::BTreeMap<&str, Vec<&Op>> = std::collections::BTreeMap::new();
    for op in ops {
        by_key.entry(&op.key).or_default().push(op);
    }
    for (key, ops) in by_key {
        let finals: Vec<&Option<Value>> = ops
            .iter()
            .filter(|o| o.client == FINAL_CLIENT)
            .filter_map(|o| match &o.outcome {
                Outcome::Ok(Output::Read(v)) => Some(v),
                _ => None,
            })
            .collect();
        if finals.windows(2).any(|w| w[0] != w[1]) {
            problems.push(format!("the final reads of key {key} differ between nodes: {finals:?}"));
        }
        for w in &ops {
            let Input::Write(v) = &w.input else {
                if matches!(w.outcome, Outcome::Ok(_)) && w.input == Input::Incr {
                    out.acked += 1;
                }
                continue;
            };
            if !matches!(w.outcome, Outcome::Ok(_)) {
                continue;
            }
            out.acked += 1;
            let last = ops
                .iter()
                .filter(|o| o.id != w.id && o.may_mutate())
                .all(|o| matches!(o.outcome, Outcome::Ok(_)) && o.complete_ns < w.invoke_ns);
            if !last || finals.is_empty() {
                continue;
            }
            out.last_writes += 1;
            if finals.iter().any(|f| f.as_ref() != Some(v)) {
                out.missing.push(format!("{w}; the final reads returned {finals:?}"));
            }
        }
    }
    (out, problems)
}

/// Runs the whole test.
///
/// # Errors
/// When the run cannot be carried out (the binary, the directory, a cluster that never
/// starts, an interruption); problems found in a run that completed are in the report.
pub fn run(cfg: &Config) -> Result<RunReport, ChaosError> {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t0 = Instant::now();
    let dir = cfg.work_dir.join(format!(
        "skiff-chaos-{}-{}-{}",
        cfg.seed,
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| ChaosError::Dir(dir.clone(), e.to_string()))?;
    let result = run_in(cfg, t0, &dir);
    // A run that could not be carried out leaves nothing behind (its nodes are stopped
    // by now): the error says what went wrong.
    if result.is_err() && !cfg.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_in(cfg: &Config, t0: Instant, dir: &Path) -> Result<RunReport, ChaosError> {
    let dir = dir.to_path_buf();
    if on_tmpfs(&dir) {
        return Err(ChaosError::Dir(dir, "it is on tmpfs, which has no O_DIRECT; use /var/tmp or a disk".into()));
    }
    if !cfg.skiff_bin.is_file() {
        return Err(ChaosError::Spawn(
            cfg.skiff_bin.clone(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file; build it or give --skiff-bin"),
        ));
    }
    let addrs: Vec<NodeAddrs> = (1..=cfg.nodes)
        .map(|id| NodeAddrs {
            id,
            client: format!("127.0.0.1:{}", (cfg.port)()),
            peer: format!("127.0.0.1:{}", (cfg.port)()),
            admin: format!("127.0.0.1:{}", (cfg.port)()),
            dir: dir.join(format!("node-{id}")),
            log: dir.join(format!("node-{id}.log")),
        })
        .collect();
    let clients: Vec<String> = addrs.iter().map(|a| a.client.clone()).collect();
    let mut cluster = Cluster::new(cfg.skiff_bin.clone(), "chaos", addrs, cfg.node_flags.clone());
    for id in cluster.ids() {
        cluster.start(id, Start::Bootstrap).map_err(|e| ChaosError::Spawn(cfg.skiff_bin.clone(), e))?;
    }
    let monitor = Monitor::new(clients.clone());
    let mut run = Run {
        cfg,
        t0,
        cluster,
        monitor: monitor.clone(),
        faults: Vec::new(),
        problems: Vec::new(),
        joining: BTreeSet::new(),
    };
    run.say(&format!("seed {}: {} nodes in {}", cfg.seed, cfg.nodes, dir.display()));
    for id in run.cluster.ids() {
        let deadline = Instant::now() + LISTEN_WAIT;
        while std::net::TcpStream::connect(&run.cluster.node(id).client).is_err() {
            if let Some(status) = run.cluster.exit_status(id) {
                return Err(ChaosError::NodeStart(
                    id,
                    format!("{status}: {}", log_tail(&run.cluster.node(id).log, 10)),
                ));
            }
            if Instant::now() > deadline {
                return Err(ChaosError::NodeStart(id, format!("not listening after {LISTEN_WAIT:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // The binary must have failure points, and the ones this runner knows.
    match http(&run.admin(1), "GET", "/debug/failpoints", ADMIN_TIMEOUT) {
        Ok((200, body)) => {
            for p in CRASH_POINTS {
                if !body.contains(&format!("\"{p}\"")) {
                    return Err(ChaosError::UnknownCrashPoint(p.to_string(), cfg.skiff_bin.clone()));
                }
            }
        }
        Ok((code, _)) => return Err(ChaosError::NoFailpoints(cfg.skiff_bin.clone(), code.to_string())),
        Err(e) => return Err(ChaosError::NoFailpoints(cfg.skiff_bin.clone(), e.to_string())),
    }
    let mon_thread = {
        let m = monitor.clone();
        std::thread::Builder::new().name("chaos-monitor".into()).spawn(move || m.run()).expect("spawn the monitor")
    };
    // Stops the monitor however this function returns.
    struct StopMonitor(Arc<Monitor>);
    impl Drop for StopMonitor {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let _stop_monitor = StopMonitor(monitor.clone());
    if run.monitor.wait_leader(cfg.settle_wait).is_none() {
        if interrupted() {
            return Err(ChaosError::Interrupted);
        }
        return Err(ChaosError::NoLeader(cfg.settle_wait));
    }

    let sh = Arc::new(Shared::new(t0, clients, Keys::new(cfg.keys, cfg.ops_per_key)));
    // Stops the workers however this function returns.
    struct StopWorkers(Arc<Shared>);
    impl Drop for StopWorkers {
        fn drop(&mut self) {
            self.0.stop.store(true, Ordering::Relaxed);
        }
    }
    let _stop_workers = StopWorkers(sh.clone());
    let workers: Vec<_> = (0..cfg.clients)
        .map(|client| {
            let sh = sh.clone();
            let p = WorkerParams { client, seed: cfg.seed, timeout: cfg.client_timeout, think: cfg.think };
            std::thread::Builder::new()
                .name(format!("chaos-client-{client}"))
                .spawn(move || worker(&sh, &p))
                .expect("spawn a client")
        })
        .collect();
    run.say(&format!("{} clients running; warm-up {}", cfg.clients, secs(cfg.warmup)));
    run.sleep(cfg.warmup)?;

    let fault_start = t0.elapsed();
    let mut schedule = Schedule::new(cfg.seed, &cfg.faults);
    let mut last = "the warm-up".to_string();
    while t0.elapsed() - fault_start < cfg.fault_phase || (cfg.cover_all && !schedule.covered()) {
        run.unexpected_exits(&last)?;
        let (kind, mut rng) = schedule.next_fault();
        let gap = Duration::from_millis(rng.range(cfg.gap_ms.0, cfg.gap_ms.1));
        let rec = run.inject(kind, rng.clone())?;
        run.say(&format!("  {kind}: {}{}", rec.detail, if rec.took_effect { "" } else { " (no effect)" }));
        last = format!("{kind} at {:.2} s", rec.at.as_secs_f64());
        run.faults.push(rec);
        run.unexpected_exits(&last)?;
        // Let the cluster recover before the next fault.
        run.monitor.wait_leader(cfg.settle_wait);
        run.sleep(gap)?;
    }
    run.heal_all()?;
    let fault_end = t0.elapsed();
    run.say(&format!("faults over ({} injected); cool-down {}", run.faults.len(), secs(cfg.cooldown)));
    run.sleep(cfg.cooldown)?;
    run.unexpected_exits(&last)?;
    sh.stop.store(true, Ordering::Relaxed);
    let mut ops: Vec<Op> = Vec::new();
    for w in workers {
        ops.extend(w.join().expect("a client thread panicked"));
    }

    // Final phase: a leader, one more write, every key through every node.
    run.heal_all()?;
    let mut final_ops = Vec::new();
    if run.monitor.wait_leader(cfg.settle_wait).is_none() {
        run.problems.push(format!("no leader within {:?} after healing", cfg.settle_wait));
    } else {
        let mut rng = Rng::fork(cfg.seed, 2);
        let v = sh.unique_value(&mut rng);
        let node = run.monitor.leader().unwrap_or(1);
        if run.final_op(&sh, node, FINAL_KEY, Input::Write(v), &mut final_ops).is_none() {
            run.problems.push("the final write was not acknowledged".into());
        }
        let mut keys = sh.keys.lock().unwrap_or_else(|e| e.into_inner()).all();
        keys.push(FINAL_KEY.to_string());
        run.say(&format!("final reads: {} keys through {} nodes", keys.len(), cfg.nodes));
        for id in run.cluster.ids() {
            for k in &keys {
                if run.final_op(&sh, id, k, Input::Read, &mut final_ops).is_none() {
                    run.problems.push(format!("node {id} could not read key {k} after healing"));
                    break;
                }
            }
        }
    }
    let convergence = run.converge();
    let measured = monitor.stop();
    let _ = mon_thread.join();
    run.cluster.kill_all();

    let mut before = Tally::default();
    let mut during = Tally::default();
    let mut after = Tally::default();
    for op in &ops {
        let at = Duration::from_nanos(op.invoke_ns);
        if at < fault_start {
            before.add(op)
        } else if at < fault_end {
            during.add(op)
        } else {
            after.add(op)
        }
    }
    let mut final_tally = Tally::default();
    final_ops.iter().for_each(|o| final_tally.add(o));
    ops.extend(final_ops);
    ops.sort_by_key(|o| (o.invoke_ns, o.id));
    run.say(&format!("checking {} operations", ops.len()));
    let check_report = check(&ops, &cfg.check);
    let (acked, acked_problems) = acked_writes(&ops);
    run.problems.extend(acked_problems);

    let mut report = RunReport {
        seed: cfg.seed,
        nodes: cfg.nodes,
        clients: cfg.clients,
        wall: t0.elapsed(),
        before,
        during,
        after,
        final_ops: final_tally,
        faults: std::mem::take(&mut run.faults),
        measured,
        check: check_report,
        acked,
        convergence,
        problems: std::mem::take(&mut run.problems),
        saved: None,
    };
    if report.passed() && !cfg.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        let save = |name: &str, f: &dyn Fn(&mut std::fs::File) -> std::io::Result<()>| {
            let p = dir.join(name);
            std::fs::File::create(&p).and_then(|mut file| f(&mut file)).map_err(|e| ChaosError::Save(p, e))
        };
        save("history.jsonl", &|f| write_jsonl(&ops, &mut std::io::BufWriter::new(f)))?;
        if !report.check.violations.is_empty() {
            let all: String = report.check.violations.iter().map(|v| v.to_string()).collect();
            save("violations.txt", &|f| {
                use std::io::Write;
                f.write_all(all.as_bytes())
            })?;
        }
        report.saved = Some(dir.clone());
        let text = report.to_string();
        let faults: String = report
            .faults
            .iter()
            .map(|r| format!("{:>9.2}s {:<38} {}\n", r.at.as_secs_f64(), r.kind.name(), r.detail))
            .collect();
        save("report.txt", &|f| {
            use std::io::Write;
            write!(f, "{text}\nfaults:\n{faults}")
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: u64, client: u32, t: (u64, u64), input: Input, outcome: Outcome) -> Op {
        Op { id, client, node: 1, key: "k".into(), input, invoke_ns: t.0, complete_ns: t.1, outcome }
    }

    #[test]
    fn the_last_acknowledged_write_must_be_in_the_final_state() {
        let w = |id, t, v| op(id, 0, t, Input::Write(Value::Int(v)), Outcome::Ok(Output::Write));
        let fin = |id, v| op(id, FINAL_CLIENT, (100, 101), Input::Read, Outcome::Ok(Output::Read(Some(Value::Int(v)))));
        let (a, p) = acked_writes(&[w(1, (0, 1), 10), w(2, (2, 3), 20), fin(3, 20), fin(4, 20)]);
        assert_eq!((a.acked, a.last_writes, a.missing.len(), p.len()), (2, 1, 0, 0));
        let (a, _) = acked_writes(&[w(1, (0, 1), 10), w(2, (2, 3), 20), fin(3, 10)]);
        assert_eq!(a.missing.len(), 1);
        // Concurrent writes: neither is certainly last.
        let (a, _) = acked_writes(&[w(1, (0, 5), 10), w(2, (2, 3), 20), fin(3, 10)]);
        assert_eq!((a.last_writes, a.missing.len()), (0, 0));
        // Nodes disagreeing in the final reads is a problem of its own.
        let (_, p) = acked_writes(&[w(1, (0, 1), 10), fin(3, 10), fin(4, 11)]);
        assert_eq!(p.len(), 1);
    }

    /// A fake node: `script` runs as the "skiff" binary; its admin port is `admin`.
    fn fake_node_run(dir: &Path, script: &str, admin: &str) -> (Config, Cluster) {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("fake-skiff");
        std::fs::write(&bin, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let addrs = NodeAddrs {
            id: 1,
            client: "127.0.0.1:1".into(),
            peer: "127.0.0.1:1".into(),
            admin: admin.into(),
            dir: dir.join("node-1"),
            log: dir.join("node-1.log"),
        };
        let mut cfg = Config::soak(bin.clone(), 1, Duration::ZERO);
        cfg.verbose = false;
        let mut cluster = Cluster::new(bin, "fake", vec![addrs], Vec::new());
        cluster.start(1, Start::Restart).unwrap();
        (cfg, cluster)
    }

    /// An admin port that reads one request and closes without answering: what a node
    /// does when the point it was just armed with aborts it before the reply goes out.
    fn admin_that_never_answers() -> (String, std::thread::JoinHandle<()>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 512];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match std::io::Read::read(&mut s, &mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        (addr, t)
    }

    /// Arms a crash point on a fake node running `script` whose admin port never
    /// answers; what `arm_and_wait_exit` made of it, and whether the node still runs.
    fn arm_unanswered(dir: &Path, script: &str) -> (Result<Option<std::process::ExitStatus>, String>, bool) {
        let (admin, server) = admin_that_never_answers();
        let (cfg, cluster) = fake_node_run(dir, script, &admin);
        let mut run = Run {
            cfg: &cfg,
            t0: Instant::now(),
            cluster,
            monitor: Monitor::new(Vec::new()),
            faults: Vec::new(),
            problems: Vec::new(),
            joining: BTreeSet::new(),
        };
        let got = run.arm_and_wait_exit(
            1,
            "wal-before-write?action=crash",
            "wal-before-write?action=off",
            Duration::from_secs(10),
        );
        server.join().unwrap();
        assert!(run.problems.is_empty(), "{:?}", run.problems);
        (got, run.cluster.running(1)) // dropping `run` kills a node still running
    }

    /// Regression (30-minute soak, seed 20261204): a crash point reached before the admin
    /// thread sent the arming reply was taken for a failed arming, and the abort that
    /// followed reported as an unexpected exit.
    #[test]
    fn a_crash_before_the_arming_reply_counts_as_the_crash() {
        use std::os::unix::process::ExitStatusExt;
        let dir = std::env::temp_dir().join(format!("skiff-chaos-arm-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (got, running) = arm_unanswered(&dir, "sleep 0.5; kill -ABRT $$");
        let status = got.expect("the abort is the crash that was armed").expect("the node exited");
        assert_eq!(status.signal(), Some(libc::SIGABRT));
        assert!(!running);
        // A node that got no reply and lives on was not armed.
        let (got, running) = arm_unanswered(&dir, "exec sleep 60");
        assert_eq!(got, Err("node 1: could not arm".to_string()));
        assert!(running);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Regression (soak seed 20261208, 15 min): a node wiped and started with `--join`
    /// crashed at its first WAL write, before it held any Raft state; the runner
    /// restarted it without `--join`, the node rightly refused an empty directory, and
    /// the cluster later lost its quorum. A joining node is restarted with `--join`
    /// until it has been seen with a durable state.
    #[test]
    fn a_joining_node_is_restarted_with_join_until_it_holds_state() {
        let dir = std::env::temp_dir().join(format!("skiff-chaos-joining-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let args = dir.join("args");
        let (cfg, mut cluster) =
            fake_node_run(&dir, &format!("echo \"$@\" >> {}; exit 3", args.display()), "127.0.0.1:1");
        while cluster.exit_status(1).is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut run = Run {
            cfg: &cfg,
            t0: Instant::now(),
            cluster,
            monitor: Monitor::new(vec!["127.0.0.1:1".into()]),
            faults: Vec::new(),
            problems: Vec::new(),
            joining: BTreeSet::new(),
        };
        let last_start = || std::fs::read_to_string(&args).unwrap().lines().last().unwrap().to_string();
        assert!(!last_start().contains("--join"), "a plain start");
        assert!(!run.start_as(1, Start::Join, "a wipe").unwrap());
        assert!(last_start().contains("--join"), "the replacement joins");
        assert!(!run.start(1, "a crash").unwrap());
        assert!(last_start().contains("--join"), "restarted before it was seen with state: joins again");
        run.joining.remove(&1);
        assert!(!run.start(1, "a crash").unwrap());
        assert!(!last_start().contains("--join"), "once it holds state, a plain restart");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn percentiles() {
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(p50_max(&[d(5), d(1), d(3)]), Some((d(3), d(5))));
        assert_eq!(p50_max(&[]), None);
    }
}
