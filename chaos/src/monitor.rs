//! Watches the cluster's leadership while the run goes on: every `POLL_INTERVAL` it asks
//! each live node for `INFO replication` (answered by the shard itself, not from the
//! admin port's snapshots), and derives the periods without a leader, the time to
//! elect a new one after each leader loss, and how long restarted nodes take to catch
//! up. Figures are at the resolution of the poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::client::{Replication, Resp};

/// How often every live node is asked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long one node may take to answer `INFO replication` before it counts as silent
/// for this poll (it is answered without touching the disk).
const INFO_TIMEOUT: Duration = Duration::from_millis(300);

/// What the runner knows about a node's process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Up,
    Down,
    Paused,
}

/// A restarted node waiting to reach the leader's commit index as of its restart.
#[derive(Clone, Debug)]
struct Catchup {
    node: u64,
    since: Instant,
    /// The leader's commit index when the node restarted; unknown until a leader is seen.
    target: Option<u64>,
}

/// Everything the monitor measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Every stretch without a leader, after the first leader.
    pub leaderless: Vec<Duration>,
    /// For each leader loss: the time until a leader was known again.
    pub elections: Vec<Duration>,
    /// For each restart: the node and the time until it had applied the leader's
    /// commit index as of the restart.
    pub catchups: Vec<(u64, Duration)>,
    /// Restarts not caught up when the monitor stopped.
    pub catchups_unfinished: Vec<u64>,
    pub polls: u64,
}

#[derive(Debug)]
struct State {
    life: Vec<Life>,
    views: Vec<Option<Replication>>,
    leader: Option<u64>,
    seen_leader: bool,
    leaderless_since: Option<Instant>,
    lost_at: Option<Instant>,
    pending: Vec<Catchup>,
    out: Measured,
}

/// The monitor's shared state; the runner tells it about process changes.
#[derive(Debug)]
pub struct Monitor {
    clients: Vec<String>,
    st: Mutex<State>,
    stop: AtomicBool,
}

/// The leader a majority of the cluster follows: a node that says it is leader and that
/// at least a majority of all members (itself included) name as leader.
pub fn effective_leader(views: &[Option<Replication>]) -> Option<u64> {
    let majority = views.len() / 2 + 1;
    views
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.as_ref().filter(|v| v.is_leader()).map(|v| (i as u64 + 1, v.term)))
        .filter(|&(id, _)| views.iter().flatten().filter(|v| v.leader == id).count() >= majority)
        .max_by_key(|&(_, term)| term)
        .map(|(id, _)| id)
}

impl Monitor {
    pub fn new(clients: Vec<String>) -> Arc<Monitor> {
        let n = clients.len();
        Arc::new(Monitor {
            clients,
            st: Mutex::new(State {
                life: vec![Life::Up; n],
                views: vec![None; n],
                leader: None,
                seen_leader: false,
                leaderless_since: None,
                lost_at: None,
                pending: Vec::new(),
                out: Measured::default(),
            }),
            stop: AtomicBool::new(false),
        })
    }

    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_life(&self, node: u64, life: Life) {
        let mut st = self.st();
        st.life[(node - 1) as usize] = life;
        if life != Life::Up {
            st.views[(node - 1) as usize] = None;
        }
    }

    /// Node `node` was just restarted: time its catch-up.
    pub fn restarted(&self, node: u64) {
        let mut st = self.st();
        st.life[(node - 1) as usize] = Life::Up;
        let target =
            st.leader.filter(|&l| l != node).and_then(|l| st.views[(l - 1) as usize].as_ref()).map(|v| v.commit);
        st.pending.retain(|c| c.node != node);
        st.pending.push(Catchup { node, since: Instant::now(), target });
    }

    /// The leader at the last poll.
    pub fn leader(&self) -> Option<u64> {
        self.st().leader
    }

    /// The last views of every node.
    pub fn views(&self) -> Vec<Option<Replication>> {
        self.st().views.clone()
    }

    /// Waits up to `within` for a leader.
    pub fn wait_leader(&self, within: Duration) -> Option<u64> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if Instant::now() >= deadline || crate::procs::interrupted() {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL / 2);
        }
    }

    /// Polls until [`Monitor::stop`]; run on a thread of its own.
    pub fn run(&self) {
        let mut conns: Vec<Option<Resp>> = self.clients.iter().map(|_| None).collect();
        while !self.stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let life = self.st().life.clone();
            let mut views = vec![None; self.clients.len()];
            for (i, addr) in self.clients.iter().enumerate() {
                if life[i] != Life::Up {
                    conns[i] = None;
                    continue;
                }
                if conns[i].is_none() {
                    conns[i] = Resp::connect(addr).ok();
                }
                if let Some(c) = conns[i].as_mut() {
                    match c.replication(INFO_TIMEOUT) {
                        Ok(v) => views[i] = Some(v),
                        Err(_) => conns[i] = None,
                    }
                }
            }
            self.observe(views, Instant::now());
            std::thread::sleep(POLL_INTERVAL.saturating_sub(started.elapsed()));
        }
    }

    fn observe(&self, views: Vec<Option<Replication>>, now: Instant) {
        let mut st = self.st();
        // A node whose life changed while it was polled is not trusted this round.
        let views: Vec<Option<Replication>> =
            views.into_iter().zip(st.life.iter()).map(|(v, l)| v.filter(|_| *l == Life::Up)).collect();
        let leader = effective_leader(&views);
        st.out.polls += 1;
        match (st.leader, leader) {
            (Some(a), Some(b)) if a != b => {
                // Leadership moved between two polls.
                st.out.elections.push(Duration::ZERO);
            }
            (Some(_), None) => {
                st.leaderless_since = Some(now);
                st.lost_at = Some(now);
            }
            (None, Some(_)) => {
                if st.seen_leader {
                    if let Some(t) = st.leaderless_since.take() {
                        st.out.leaderless.push(now.saturating_duration_since(t));
                    }
                    if let Some(t) = st.lost_at.take() {
                        st.out.elections.push(now.saturating_duration_since(t));
                    }
                }
                st.seen_leader = true;
            }
            _ => {}
        }
        st.leader = leader;
        if let Some(l) = leader {
            let commit = views[(l - 1) as usize].as_ref().map(|v| v.commit);
            let mut done = Vec::new();
            for (k, c) in st.pending.iter_mut().enumerate() {
                if c.target.is_none() {
                    c.target = commit;
                }
                let applied = views[(c.node - 1) as usize].as_ref().map(|v| v.applied);
                if let (Some(t), Some(a)) = (c.target, applied)
                    && a >= t
                {
                    done.push(k);
                }
            }
            for k in done.into_iter().rev() {
                let c = st.pending.remove(k);
                st.out.catchups.push((c.node, now.saturating_duration_since(c.since)));
            }
        }
        st.views = views;
    }

    /// Stops polling; what was measured. A leaderless stretch still open counts.
    pub fn stop(&self) -> Measured {
        self.stop.store(true, Ordering::Relaxed);
        let mut st = self.st();
        let mut out = st.out.clone();
        if let Some(t) = st.leaderless_since.take() {
            out.leaderless.push(t.elapsed());
        }
        out.catchups_unfinished = st.pending.iter().map(|c| c.node).collect();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(role: &str, term: u64, leader: u64) -> Option<Replication> {
        Some(Replication { role: role.into(), term, leader, commit: 10, applied: 10 })
    }

    #[test]
    fn the_leader_is_the_one_a_majority_follows() {
        assert_eq!(effective_leader(&[v("leader", 2, 1), v("follower", 2, 1), None]), Some(1));
        // A deposed leader that still thinks it leads, cut off from the rest.
        assert_eq!(effective_leader(&[v("leader", 2, 1), v("leader", 3, 2), v("follower", 3, 2)]), Some(2));
        assert_eq!(effective_leader(&[v("leader", 2, 1), None, None]), None);
        assert_eq!(effective_leader(&[v("candidate", 3, 0), v("follower", 2, 0), None]), None);
    }

    #[test]
    fn leader_losses_and_catch_ups_are_timed() {
        let m = Monitor::new(vec!["a".into(), "b".into(), "c".into()]);
        let t = Instant::now();
        let s = |ms| t + Duration::from_millis(ms);
        m.observe(vec![v("leader", 1, 1), v("follower", 1, 1), v("follower", 1, 1)], s(0));
        m.observe(vec![None, v("candidate", 2, 0), v("follower", 1, 0)], s(50));
        m.observe(vec![None, v("leader", 2, 2), v("follower", 2, 2)], s(300));
        m.restarted(1);
        let mut behind = v("follower", 2, 2);
        behind.as_mut().unwrap().applied = 3;
        m.observe(vec![behind, v("leader", 2, 2), v("follower", 2, 2)], s(350));
        m.observe(vec![v("follower", 2, 2), v("leader", 2, 2), v("follower", 2, 2)], s(400));
        let out = m.stop();
        assert_eq!(out.leaderless, vec![Duration::from_millis(250)]);
        assert_eq!(out.elections, vec![Duration::from_millis(250)]);
        assert_eq!(out.catchups.len(), 1);
        assert!(out.catchups_unfinished.is_empty());
    }
}
