//! The faults a run can inject, and the seeded schedule that orders them.
//!
//! A seed fixes the schedule: the order of the fault kinds, each fault's random choices
//! (which node, how long, which direction, how much loss) and the pauses between
//! faults. What a seed cannot fix is which node is the leader when a fault aimed at
//! the leader comes up, nor the exact operations the clients interleave with it.

use std::fmt;
use std::str::FromStr;

use crate::rng::Rng;

/// The crash points a `failpoints` build of the node has (docs/admin.md).
pub const CRASH_POINTS: [&str; 10] = [
    "wal-before-write",
    "wal-after-write",
    "wal-before-fsync",
    "wal-after-fsync",
    "leader-before-send-append",
    "follower-before-send-response",
    "snapshot-before-save",
    "snapshot-after-save",
    "snapshot-before-apply",
    "snapshot-after-apply",
];

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// SIGKILL a random node, restart it later.
    KillRandom,
    /// SIGKILL the leader, restart it later.
    KillLeader,
    /// SIGSTOP a random node, SIGCONT later.
    PauseRandom,
    /// SIGSTOP the leader, SIGCONT later.
    PauseLeader,
    /// Cut the leader off from every peer, both ways.
    PartitionLeader,
    /// Cut a random minority off from the majority, both ways.
    PartitionMinority,
    /// One node stops sending to, or receiving from, every peer.
    PartitionOneWay,
    /// Every node drops a fraction of its peer messages and delays the rest.
    NetLossDelay,
    /// Abort a node at one of [`CRASH_POINTS`] (the index), restart it.
    Crash(usize),
    /// The next fdatasync of a node fails with EIO: it stops; restart it.
    FsyncEio,
    /// SIGKILL a node, damage the unwritten tail of its WAL, restart it.
    WalTail,
    /// SIGKILL every node, restart them all.
    ClusterRestart,
    /// SIGKILL the leader while some followers send no vote requests and the others
    /// hold their election timers: no leader until the timers run again.
    SlowElection,
    /// Remove a follower from the cluster through the leader's admin port and add it
    /// back: keeping its data, or wiped and started again with `--join` (the member
    /// replacement procedure); added as a voter at once, or as a learner then promoted.
    Membership,
    /// Cut a follower off until the leader compacts past it, then heal with the
    /// follower finishing the leader's snapshot seconds late: it holds the leader's
    /// messages meanwhile, and must neither campaign for want of them nor lose them.
    SlowSnapshot,
}

impl FaultKind {
    /// Every kind.
    pub fn all() -> Vec<FaultKind> {
        let mut v = vec![
            FaultKind::KillRandom,
            FaultKind::KillLeader,
            FaultKind::PauseRandom,
            FaultKind::PauseLeader,
            FaultKind::PartitionLeader,
            FaultKind::PartitionMinority,
            FaultKind::PartitionOneWay,
            FaultKind::NetLossDelay,
        ];
        v.extend((0..CRASH_POINTS.len()).map(FaultKind::Crash));
        v.extend([
            FaultKind::FsyncEio,
            FaultKind::WalTail,
            FaultKind::ClusterRestart,
            FaultKind::SlowElection,
            FaultKind::Membership,
            FaultKind::SlowSnapshot,
        ]);
        v
    }

    pub fn name(self) -> String {
        match self {
            FaultKind::KillRandom => "kill".into(),
            FaultKind::KillLeader => "kill-leader".into(),
            FaultKind::PauseRandom => "pause".into(),
            FaultKind::PauseLeader => "pause-leader".into(),
            FaultKind::PartitionLeader => "partition-leader".into(),
            FaultKind::PartitionMinority => "partition-minority".into(),
            FaultKind::PartitionOneWay => "partition-one-way".into(),
            FaultKind::NetLossDelay => "net-loss-delay".into(),
            FaultKind::Crash(i) => format!("crash:{}", CRASH_POINTS[i]),
            FaultKind::FsyncEio => "fsync-eio".into(),
            FaultKind::WalTail => "wal-tail".into(),
            FaultKind::ClusterRestart => "cluster-restart".into(),
            FaultKind::SlowElection => "slow-election".into(),
            FaultKind::Membership => "membership".into(),
            FaultKind::SlowSnapshot => "slow-snapshot".into(),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    /// A name from [`FaultKind::name`]; `crash` alone is not a kind (see [`parse_kinds`]).
    fn from_str(s: &str) -> Result<FaultKind, String> {
        FaultKind::all().into_iter().find(|k| k.name() == s).ok_or_else(|| {
            format!(
                "unknown fault `{s}`; the faults are: {}",
                FaultKind::all().iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// A comma-separated list of kinds; `all` is every kind, `crash` every crash point.
///
/// # Errors
/// Naming the unknown entry.
pub fn parse_kinds(s: &str) -> Result<Vec<FaultKind>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "all" => out.extend(FaultKind::all()),
            "crash" => out.extend((0..CRASH_POINTS.len()).map(FaultKind::Crash)),
            p => out.push(p.parse()?),
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err("no fault kinds given".into());
    }
    Ok(out)
}

/// The order faults come in: every enabled kind once (in a seeded order), then kinds
/// picked at random, for as long as the run asks.
#[derive(Debug)]
pub struct Schedule {
    kinds: Vec<FaultKind>,
    first_round: Vec<FaultKind>,
    rng: Rng,
}

impl Schedule {
    /// # Panics
    /// If `kinds` is empty.
    pub fn new(seed: u64, kinds: &[FaultKind]) -> Schedule {
        assert!(!kinds.is_empty(), "a schedule needs fault kinds");
        let mut rng = Rng::fork(seed, 1);
        let mut first_round = kinds.to_vec();
        rng.shuffle(&mut first_round);
        first_round.reverse();
        Schedule { kinds: kinds.to_vec(), first_round, rng }
    }

    /// The next fault, and a generator for its own choices.
    pub fn next_fault(&mut self) -> (FaultKind, Rng) {
        let kind = match self.first_round.pop() {
            Some(k) => k,
            None => *self.rng.pick(&self.kinds),
        };
        (kind, Rng::new(self.rng.next_u64()))
    }

    /// Whether every enabled kind has come up once.
    pub fn covered(&self) -> bool {
        self.first_round.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for k in FaultKind::all() {
            assert_eq!(k.name().parse::<FaultKind>(), Ok(k));
        }
        assert_eq!(parse_kinds("all").unwrap().len(), FaultKind::all().len());
        assert_eq!(parse_kinds("crash,kill").unwrap().len(), CRASH_POINTS.len() + 1);
        assert!(parse_kinds("kill,frobnicate").unwrap_err().contains("frobnicate"));
    }

    #[test]
    fn a_seed_fixes_the_schedule_and_every_kind_comes_first() {
        let kinds = FaultKind::all();
        let take = |seed| {
            let mut s = Schedule::new(seed, &kinds);
            (0..40).map(|_| s.next_fault().0).collect::<Vec<_>>()
        };
        assert_eq!(take(5), take(5));
        assert_ne!(take(5), take(6));
        let mut first: Vec<FaultKind> = take(5)[..kinds.len()].to_vec();
        first.sort();
        assert_eq!(first, kinds);
    }
}
