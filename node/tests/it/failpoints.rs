//! Failure points on live nodes (`failpoints` builds): a crash at each step of the
//! write path and of snapshotting, an fdatasync that fails, partitions and message
//! loss. In every case no acknowledged write may be lost, and the crashed node must
//! come back and converge with the others.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use skiff_net::RespValue;

use crate::cluster::{Cluster, Resp, bulk, http_get, http_post, ok, write_until_ok};

const ELECTION: Duration = Duration::from_secs(10);
/// Short request deadlines: writes caught by a crash answer TIMEOUT quickly.
const FLAGS: &[&str] = &["--request-timeout-ms", "1500"];

/// Writes unique values through `via` until node `target` exits (or `within` passes);
/// the acknowledged writes go into `acked`. Returns the exit status.
fn write_until_exit(
    c: &mut Cluster,
    via: u64,
    target: u64,
    tag: &str,
    acked: &mut BTreeMap<String, String>,
    within: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    let mut cl = c.client(via);
    for i in 0.. {
        if let Some(status) = c.wait_exit(target, Duration::ZERO) {
            return status;
        }
        assert!(Instant::now() < deadline, "node {target} did not crash at {tag} within {within:?}");
        let (k, v) = (format!("{tag}-{}", i % 50), format!("{tag}-v{i}"));
        match cl.try_cmd(&["SET", &k, &v]) {
            Some(r) if r == ok() => {
                acked.insert(k, v);
            }
            // TRYAGAIN / TIMEOUT while the crash is handled: not acknowledged.
            Some(_) => std::thread::sleep(Duration::from_millis(5)),
            None => cl = c.client(via),
        }
    }
    unreachable!()
}

/// Every acknowledged write reads back through every running node.
fn check_acked(c: &mut Cluster, acked: &BTreeMap<String, String>) {
    let running: Vec<u64> = (1..=c.nodes.len() as u64).filter(|&id| c.running(id)).collect();
    for id in running {
        let mut cl = c.client(id);
        for (k, v) in acked {
            let got = write_until_ok(&mut cl, &["GET", k], ELECTION);
            assert_eq!(got, bulk(v), "node {id}: {k} lost its acknowledged value");
        }
    }
}

/// Waits until every running node has applied the same index and holds the same state.
fn converged(c: &mut Cluster) {
    let deadline = Instant::now() + ELECTION;
    loop {
        let running: Vec<u64> = (1..=c.nodes.len() as u64).filter(|&id| c.running(id)).collect();
        let st: Vec<Option<(u64, String)>> = running
            .iter()
            .map(|&id| {
                let s = &c.status(id)["shards"][0];
                Some((s["applied"].as_u64()?, s["kv_digest"].as_str()?.to_string()))
            })
            .collect();
        if st[0].is_some() && st.iter().all(|x| *x == st[0]) {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not converge: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_aborted(status: std::process::ExitStatus, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{what}: expected an abort, got {status:?}");
}

#[test]
fn a_crash_at_each_write_path_point_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, FLAGS);
    let mut acked = BTreeMap::new();
    let points = [
        ("wal-before-write", false),
        ("wal-after-write", true),
        ("wal-before-fsync", false),
        ("wal-after-fsync", true),
        ("follower-before-send-response", false),
        ("leader-before-send-append", true),
    ];
    for (point, on_leader) in points {
        let leader = c.leader(ELECTION);
        let target = if on_leader { leader } else { 1 + leader % 3 };
        let via = (1..=3).find(|&id| id != target).expect("three nodes");
        // Acknowledged before the crash: these must all survive it.
        let mut cl = c.client(via);
        for i in 0..20 {
            let (k, v) = (format!("{point}-before-{i}"), format!("v{i}"));
            assert_eq!(write_until_ok(&mut cl, &["SET", &k, &v], ELECTION), ok());
            acked.insert(k, v);
        }
        c.arm(target, &format!("{point}?action=crash"));
        let status = write_until_exit(&mut c, via, target, point, &mut acked, ELECTION);
        assert_aborted(status, point);
        let log = std::fs::read_to_string(&c.node(target).log).unwrap();
        assert!(log.contains(&format!("failpoint {point}: crashing")), "{point}: log says why");
        // The survivors keep serving, then the crashed node comes back and converges.
        let via_leader = c.leader(ELECTION);
        assert_ne!(via_leader, target);
        c.restart(target);
        c.leader(ELECTION);
        check_acked(&mut c, &acked);
        converged(&mut c);
    }
    assert!(acked.len() >= points.len() * 20, "writes were acknowledged around the crashes: {}", acked.len());
}

#[test]
fn crashes_while_saving_and_applying_snapshots_lose_nothing() {
    // Snapshots every few KiB of log, so that they happen during the test, keeping
    // few entries below them, so that a follower cut off falls behind them.
    let mut flags = FLAGS.to_vec();
    flags.extend(["--snapshot-log-bytes", "8192", "--snapshot-catchup-entries", "20"]);
    let mut c = Cluster::start(3, &flags);
    let mut acked = BTreeMap::new();
    // A node saving its own snapshot.
    for point in ["snapshot-before-save", "snapshot-after-save"] {
        let leader = c.leader(ELECTION);
        let target = 1 + leader % 3;
        let via = (1..=3).find(|&id| id != target).expect("three nodes");
        c.arm(target, &format!("{point}?action=crash"));
        let status = write_until_exit(&mut c, via, target, point, &mut acked, ELECTION);
        assert_aborted(status, point);
        c.restart(target);
        c.leader(ELECTION);
        check_acked(&mut c, &acked);
        converged(&mut c);
    }
    // A follower cut off while the others compact past it must be sent the leader's
    // snapshot: crash it before and after applying that snapshot.
    for point in ["snapshot-before-apply", "snapshot-after-apply"] {
        let leader = c.leader(ELECTION);
        let target = 1 + leader % 3;
        let via = (1..=3).find(|&id| id != target).expect("three nodes");
        c.arm(target, "partition?peers=1,2,3&dir=both");
        let mut cl = c.client(via);
        for i in 0..400 {
            let (k, v) = (format!("{point}-{}", i % 40), format!("{point}-v{i}-{}", "x".repeat(64)));
            assert_eq!(write_until_ok(&mut cl, &["SET", &k, &v], ELECTION), ok());
            acked.insert(k, v);
        }
        c.arm(target, &format!("{point}?action=crash"));
        c.arm(target, "partition?action=off");
        let status = c.wait_exit(target, ELECTION).unwrap_or_else(|| panic!("{point} was not reached"));
        assert_aborted(status, point);
        c.restart(target);
        c.leader(ELECTION);
        check_acked(&mut c, &acked);
        converged(&mut c);
    }
}

#[test]
fn a_failed_fdatasync_stops_the_node_which_recovers_on_restart() {
    let mut c = Cluster::start(3, FLAGS);
    let leader = c.leader(ELECTION);
    let target = 1 + leader % 3;
    let mut acked = BTreeMap::new();
    c.arm(target, "fsync-eio?action=on");
    let deadline = Instant::now() + ELECTION;
    let mut cl = c.client(leader);
    let mut i = 0;
    let status = loop {
        if let Some(s) = c.wait_exit(target, Duration::ZERO) {
            break s;
        }
        assert!(Instant::now() < deadline, "node {target} kept running after a failed fdatasync");
        let (k, v) = (format!("eio-{i}"), format!("v{i}"));
        assert_eq!(write_until_ok(&mut cl, &["SET", &k, &v], ELECTION), ok(), "the majority keeps serving");
        acked.insert(k, v);
        i += 1;
    };
    assert!(!status.success(), "a storage failure is an error exit: {status:?}");
    let log = std::fs::read_to_string(&c.node(target).log).unwrap();
    assert!(log.contains("Input/output error") || log.contains("EIO"), "the log names the failure");
    c.restart(target);
    c.leader(ELECTION);
    check_acked(&mut c, &acked);
    converged(&mut c);
}

#[test]
fn a_partitioned_leader_is_replaced_and_rejoins_when_healed() {
    let mut c = Cluster::start(3, FLAGS);
    let old = c.leader(ELECTION);
    let others: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    let mut acked = BTreeMap::new();
    assert_eq!(write_until_ok(&mut c.client(old), &["SET", "before", "1"], ELECTION), ok());
    acked.insert("before".to_string(), "1".to_string());
    c.arm(old, &format!("partition?peers={},{}&dir=both", others[0], others[1]));
    // The other two elect a leader of their own and keep accepting writes.
    let deadline = Instant::now() + ELECTION;
    let new = loop {
        let roles: Vec<(u64, String, u64)> =
            others.iter().filter_map(|&id| c.client(id).replication().map(|(r, l)| (id, r, l))).collect();
        if let Some(&(id, _, _)) = roles.iter().find(|(_, r, _)| r == "leader") {
            break id;
        }
        assert!(Instant::now() < deadline, "no new leader behind the partition: {roles:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_ne!(new, old);
    let mut cl = c.client(new);
    for i in 0..50 {
        let (k, v) = (format!("during-{i}"), i.to_string());
        assert_eq!(write_until_ok(&mut cl, &["SET", &k, &v], ELECTION), ok());
        acked.insert(k, v);
    }
    // The cut-off node cannot commit anything: a write through it does not succeed.
    let r = c.client(old).cmd(&["SET", "isolated", "x"]);
    assert!(matches!(r, RespValue::Error(_)), "an isolated node acknowledged a write: {r:?}");
    c.arm(old, "partition?action=off");
    c.leader(ELECTION);
    check_acked(&mut c, &acked);
    converged(&mut c);
}

#[test]
fn writes_survive_message_loss_and_delay() {
    let mut c = Cluster::start(3, FLAGS);
    c.leader(ELECTION);
    for id in 1..=3 {
        c.arm(id, "net?drop=0.2&delay_ms=2");
    }
    let mut acked = BTreeMap::new();
    let mut cl = c.client(1);
    for i in 0..100 {
        let (k, v) = (format!("lossy-{i}"), i.to_string());
        if write_until_ok(&mut cl, &["SET", &k, &v], ELECTION * 3) == ok() {
            acked.insert(k, v);
        }
    }
    assert_eq!(acked.len(), 100);
    for id in 1..=3 {
        c.arm(id, "net?action=off");
    }
    c.leader(ELECTION);
    check_acked(&mut c, &acked);
    converged(&mut c);
}

/// A read whose read-index request was lost is asked again, not left to wait out its
/// deadline: a follower that cannot send to the leader (but still hears it, so sees
/// no change of leader) serves a GET soon after the path is back.
#[test]
fn a_read_whose_read_index_was_lost_is_asked_again() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let follower = c.follower(leader);
    let mut w = c.client(leader);
    assert_eq!(write_until_ok(&mut w, &["SET", "lost", "found"], ELECTION), ok());
    // Let the follower apply it, so that only the read index is in question.
    let mut r = c.client(follower);
    assert_eq!(r.cmd(&["GET", "lost"]), bulk("found"));
    c.arm(follower, &format!("partition?peers={leader}&dir=out"));
    let mut get = bytes::BytesMut::new();
    skiff_net::resp::encode_request(&["GET", "lost"], &mut get);
    r.send_raw(&get).unwrap();
    // The request goes out (and is dropped) well within this second; the default
    // request deadline is 5 s, and a dropped request is asked again every 500 ms.
    std::thread::sleep(Duration::from_secs(1));
    c.arm(follower, "partition?action=off");
    assert_eq!(r.read_reply(), Some(bulk("found")), "the read was asked again once the path was back");
}

#[test]
fn failpoints_are_listed_and_bad_requests_are_refused() {
    let c = Cluster::start(1, FLAGS);
    c.leader(ELECTION);
    let admin = c.node(1).admin.clone();
    let listed: serde_json::Value = serde_json::from_str(&http_get(&admin, "/debug/failpoints")).unwrap();
    let names: Vec<&str> =
        listed["crash_points"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"wal-after-fsync") && names.len() == 10, "{names:?}");
    let (code, body) = http_post(&admin, "/debug/failpoints/no-such-point?action=crash");
    assert_eq!(code, 400, "{body}");
    let (code, body) = http_post(&admin, "/debug/failpoints/net?drop=2");
    assert_eq!(code, 400, "{body}");
    c.arm(1, "wal-before-write?action=crash");
    c.arm(1, "wal-before-write?action=off");
    let listed: serde_json::Value = serde_json::from_str(&http_get(&admin, "/debug/failpoints")).unwrap();
    assert!(listed["crash_points"].as_array().unwrap().iter().all(|p| p["armed"] == false));
    // Disarmed: the node keeps writing.
    let mut cl = Resp::connect(&c.node(1).client);
    assert_eq!(write_until_ok(&mut cl, &["SET", "a", "b"], ELECTION), ok());
}

#[test]
fn a_follower_slow_to_finish_a_received_snapshot_does_not_campaign_and_is_sent_it_once() {
    // The follower finishes the received file on a blocking thread and holds the
    // leader's messages meanwhile, heartbeats included. Finishing is made to take
    // several election timeouts (200–400 ms here): the follower must not take the
    // heartbeats it holds as the leader's silence and start elections, and the leader
    // must not send the snapshot again.
    let mut flags = FLAGS.to_vec();
    flags.extend(["--snapshot-log-bytes", "16384", "--snapshot-catchup-entries", "0"]);
    let mut c = Cluster::start(3, &flags);
    let leader = c.leader(ELECTION);
    let lagging = crate::node::stop_a_follower_after_founding(&mut c, leader);
    let mut cl = c.client(leader);
    for i in 0..300 {
        assert_eq!(write_until_ok(&mut cl, &["SET", &format!("k{i}"), &"x".repeat(200)], ELECTION), ok());
    }
    crate::node::wait_until_compacted(&c, leader);
    let term = c.status(leader)["shards"][0]["term"].as_u64().unwrap();
    c.restart_with_env(lagging, &[("SKIFF_FAILPOINTS", "snapshot-finish-delay?ms=2000")]);
    let deadline = Instant::now() + ELECTION;
    while c.status(lagging)["shards"][0]["kv_keys"].as_u64() != Some(300) {
        assert!(Instant::now() < deadline, "the follower caught up: {}", c.status(lagging)["shards"][0]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&c.node(lagging).log).unwrap();
    // Campaigning right after the restart, before the leader's connection is back, is
    // fine; campaigning while finishing is not.
    let (_, finishing) = log
        .split_once("finishing the received snapshot 2000 ms late")
        .unwrap_or_else(|| panic!("the delay was armed from the start and reached: {log}"));
    assert!(finishing.contains("installed the leader's snapshot"), "caught up by snapshot: {finishing}");
    assert!(!finishing.contains("campaigning"), "the follower campaigned while finishing: {finishing}");
    let sent = crate::node::settled_counter(&c, leader, "skiff_snapshots_sent_total", 1);
    assert_eq!(sent, 1, "the snapshot was sent once");
    let s = c.status(leader)["shards"][0].clone();
    assert_eq!((s["role"].as_str(), s["term"].as_u64()), (Some("leader"), Some(term)), "leadership held: {s}");
    assert_eq!(c.client(lagging).cmd(&["GET", "k299"]), bulk(&"x".repeat(200)));
}

#[test]
fn failure_points_armed_from_the_environment_are_checked_at_start() {
    let mut c = Cluster::start(1, FLAGS);
    c.leader(ELECTION);
    assert!(c.stop(1, Duration::from_secs(10)));
    // A bad spec: the node refuses to start and names it.
    c.restart_with_env_expecting_exit(1, &[("SKIFF_FAILPOINTS", "net?drop=0.5;snapshot-finish-delay?ms=soon")]);
    let status = c.wait_exit(1, ELECTION).expect("the node exits");
    assert!(!status.success());
    let log = std::fs::read_to_string(&c.node(1).log).unwrap();
    assert!(log.contains("SKIFF_FAILPOINTS: `snapshot-finish-delay?ms=soon`: ms: `soon`"), "{log}");
    // A good one is armed before the node serves.
    c.restart_with_env(1, &[("SKIFF_FAILPOINTS", "snapshot-finish-delay?ms=5; no-vote-requests?action=on")]);
    let listed: serde_json::Value = serde_json::from_str(&http_get(&c.node(1).admin, "/debug/failpoints")).unwrap();
    assert_eq!(listed["snapshot_finish_delay_ms"], 5);
    assert_eq!(listed["no_vote_requests"], true);
}
