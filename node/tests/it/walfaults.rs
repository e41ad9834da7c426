//! Damaged or lost data on a stopped node: a bit flip in a middle WAL segment (the
//! node refuses to start and says where), a torn tail (the node starts and rejoins),
//! and a deleted data directory (the node refuses rather than rejoining as a blank
//! voter; the documented replacement procedure brings it back).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, bulk, http_get, http_post, ok, write_until_ok};

const ELECTION: Duration = Duration::from_secs(10);
const BLOCK: usize = 4096;

/// The WAL segments of a node, oldest first, with the index of their first all-zero
/// block (where their data ends).
fn segments(dir: &Path) -> Vec<(PathBuf, usize)> {
    let wal = dir.join("shard-0").join("wal");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&wal)
        .unwrap_or_else(|e| panic!("{}: {e}", wal.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            let end = data.chunks(BLOCK).position(|b| b.iter().all(|&x| x == 0)).unwrap_or(data.len() / BLOCK);
            (p, end)
        })
        // Spare segments (all-zero header) hold no data.
        .filter(|(_, end)| *end > 0)
        .collect()
}

fn write_big(c: &Cluster, via: u64, n: usize, size: usize, acked: &mut BTreeMap<String, String>) {
    let mut cl = c.client(via);
    for i in 0..n {
        let k = format!("big-{i}");
        let v = format!("{i}-{}", "v".repeat(size));
        assert_eq!(write_until_ok(&mut cl, &["SET", &k, &v], ELECTION), ok());
        acked.insert(k, v);
    }
}

fn check_acked(c: &Cluster, ids: &[u64], acked: &BTreeMap<String, String>) {
    for &id in ids {
        let mut cl = c.client(id);
        for (k, v) in acked {
            assert_eq!(write_until_ok(&mut cl, &["GET", k], ELECTION), bulk(v), "node {id}: {k}");
        }
    }
}

#[test]
fn a_bit_flip_in_a_middle_segment_is_refused_and_named() {
    let mut c = Cluster::start(3, &["--wal-segment-bytes", "4194304"]);
    let leader = c.leader(ELECTION);
    let target = 1 + leader % 3;
    let mut acked = BTreeMap::new();
    // ~12 MiB of log: at least three 4 MiB segments on every node.
    write_big(&c, leader, 24, 512 * 1024, &mut acked);
    c.kill(target);
    let segs = segments(&c.node(target).dir);
    assert!(segs.len() >= 3, "expected three segments or more: {segs:?}");
    let (middle, _) = &segs[1];
    let mut data = std::fs::read(middle).unwrap();
    let at = BLOCK + 1000; // inside the segment's first batch
    data[at] ^= 0x10;
    std::fs::write(middle, &data).unwrap();
    c.restart_expecting_exit(target);
    let status = c.wait_exit(target, ELECTION).expect("a node with a corrupt WAL must not run");
    assert!(!status.success());
    let log = std::fs::read_to_string(&c.node(target).log).unwrap();
    let name = middle.file_name().unwrap().to_string_lossy().to_string();
    let line = log.lines().rev().find(|l| l.contains(&name)).unwrap_or_else(|| panic!("log names {name}: {log}"));
    assert!(line.contains("offset"), "the error gives the offset: {line}");
    // The other two keep serving everything.
    let others: Vec<u64> = (1..=3).filter(|&id| id != target).collect();
    check_acked(&c, &others, &acked);
}

#[test]
fn a_torn_tail_is_dropped_and_the_node_rejoins() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let target = 1 + leader % 3;
    let mut acked = BTreeMap::new();
    write_big(&c, leader, 50, 1000, &mut acked);
    c.kill(target);
    // A write that never completed: garbage where the next batch would have gone.
    let segs = segments(&c.node(target).dir);
    let (last, end) = segs.last().expect("a segment").clone();
    let mut data = std::fs::read(&last).unwrap();
    let junk: Vec<u8> = (0..3 * BLOCK).map(|i| (i * 131 + 7) as u8).collect();
    data[end * BLOCK..end * BLOCK + junk.len()].copy_from_slice(&junk);
    std::fs::write(&last, &data).unwrap();
    c.restart(target);
    c.leader(ELECTION);
    let log = std::fs::read_to_string(&c.node(target).log).unwrap();
    assert!(log.to_lowercase().contains("torn"), "the dropped tail is reported: {log}");
    write_big(&c, leader, 5, 100, &mut acked);
    check_acked(&c, &[1, 2, 3], &acked);
}

#[test]
fn a_lost_data_directory_is_refused_and_the_member_can_be_replaced() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let target = 1 + leader % 3;
    let mut acked = BTreeMap::new();
    write_big(&c, leader, 30, 100, &mut acked);
    c.kill(target);
    std::fs::remove_dir_all(&c.node(target).dir).unwrap();
    // Restarted without --bootstrap or --join on an empty directory: refused, with
    // the way out.
    c.restart_expecting_exit(target);
    let status = c.wait_exit(target, ELECTION).expect("a node without its data must not run");
    assert!(!status.success());
    let log = std::fs::read_to_string(&c.node(target).log).unwrap();
    assert!(log.contains("members/remove") || log.contains("--join"), "the refusal says what to do: {log}");
    // Changes naming the wrong member are refused, not proposed: promoting an id
    // that is not a learner (here one not even in the cluster list) would add a voter
    // with no address, and adding a voter as a learner would demote it.
    let admin = c.node(leader).admin.clone();
    let voter = 1 + target % 3;
    for (path, want) in [
        ("/members/promote?id=9".to_string(), 400),
        (format!("/members/promote?id={voter}"), 409),
        (format!("/members/add?id={voter}&learner=true"), 409),
        ("/members/remove?id=9".to_string(), 400),
        (format!("/transfer-leader?to={leader}"), 400),
        ("/election-timeout?ticks=1".to_string(), 400),
    ] {
        let (code, body) = http_post(&admin, &path);
        assert_eq!(code, want, "{path}: {body}");
    }
    let status: String = http_get(&admin, "/status").split_whitespace().collect();
    assert!(status.contains("\"voters\":[1,2,3]"), "the voters are unchanged: {status}");
    // The replacement procedure (docs/operating.md): remove, start with --join, add.
    let (code, body) = http_post(&admin, &format!("/members/remove?id={target}"));
    assert_eq!(code, 200, "{body}");
    // /status lists the group's members as of the applied change, not the cluster
    // list the node started with.
    let deadline = Instant::now() + ELECTION;
    loop {
        let status: String = http_get(&admin, "/status").split_whitespace().collect();
        if !status.contains(&format!("\"id\":{target},\"addr\"")) {
            break;
        }
        assert!(Instant::now() < deadline, "member {target} still listed after its removal: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&c.node(target).dir).ok();
    c.launch(target, &["--join"]);
    let peer = c.node(target).peer.clone();
    let deadline = Instant::now() + ELECTION;
    loop {
        // Retried: the removal must be applied before the next change is accepted.
        let (code, body) = http_post(&admin, &format!("/members/add?id={target}&addr={peer}"));
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "add was refused: {code} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.leader(ELECTION);
    write_big(&c, leader, 5, 100, &mut acked);
    check_acked(&c, &[1, 2, 3], &acked);
}
