//! Whole-node behaviour with real processes: elections, writes and reads through every
//! node, leader failure (SIGKILL), full restarts, catching up by snapshot after
//! compaction, bad client input, graceful stop, and refused configurations.

use std::process::Command;
use std::time::{Duration, Instant};

use skiff_net::RespValue;

use crate::cluster::{Cluster, bulk, ok, write_until_ok};

const ELECTION: Duration = Duration::from_secs(10);

#[test]
fn three_nodes_elect_a_leader_and_every_node_serves_writes_and_reads() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    assert!((1..=3).contains(&leader));
    // A write through each node (followers relay), readable through every node.
    for id in 1..=3 {
        let mut cl = c.client(id);
        assert_eq!(write_until_ok(&mut cl, &["SET", &format!("k{id}"), &format!("v{id}")], ELECTION), ok());
    }
    for id in 1..=3 {
        let mut cl = c.client(id);
        for k in 1..=3 {
            assert_eq!(cl.cmd(&["GET", &format!("k{k}")]), bulk(&format!("v{k}")), "node {id} reads k{k}");
        }
        assert_eq!(cl.cmd(&["EXISTS", "k1", "k2", "nope"]), RespValue::Integer(2));
        assert_eq!(cl.cmd(&["DBSIZE"]), RespValue::Integer(3));
    }
    // INCR through different nodes: each sees the previous one's effect.
    for (i, id) in [1u64, 2, 3, 1].iter().enumerate() {
        assert_eq!(c.client(*id).cmd(&["INCR", "counter"]), RespValue::Integer(i as i64 + 1));
    }
    let mut cl = c.client(2);
    assert_eq!(cl.cmd(&["SET", "k1", "x", "NX"]), RespValue::NullBulk);
    assert_eq!(cl.cmd(&["SET", "k9", "x", "XX"]), RespValue::NullBulk);
    assert_eq!(cl.cmd(&["MSET", "m1", "a", "m2", "b"]), ok());
    assert_eq!(cl.cmd(&["MGET", "m1", "m2", "zz"]), RespValue::Array(vec![bulk("a"), bulk("b"), RespValue::NullBulk]));
    assert_eq!(cl.cmd(&["DEL", "m1", "m2", "zz"]), RespValue::Integer(2));
    assert!(matches!(cl.cmd(&["NOSUCH"]), RespValue::Error(_)));
    assert!(matches!(cl.cmd(&["GET"]), RespValue::Error(_)));
    // Every replica reaches the same state (same applied index: same digest).
    let deadline = Instant::now() + ELECTION;
    loop {
        // Reports are published a few times a second; a shard not yet reported is null.
        let st: Vec<Option<(u64, String)>> = (1..=3)
            .map(|id| {
                let s = &c.status(id)["shards"][0];
                Some((s["applied"].as_u64()?, s["kv_digest"].as_str()?.to_string()))
            })
            .collect();
        if st[0].is_some() && st.iter().all(|x| *x == st[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas differ: {st:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let mut acked = Vec::new();
    for i in 0..100 {
        let via = 1 + (i % 3) as u64;
        let k = format!("key{i}");
        if write_until_ok(&mut c.client(via), &["SET", &k, &i.to_string()], ELECTION) == ok() {
            acked.push((k, i));
        }
    }
    assert_eq!(acked.len(), 100);
    c.kill(leader);
    let new_leader = c.leader(ELECTION);
    assert_ne!(new_leader, leader, "a surviving node leads");
    for id in (1..=3).filter(|&id| id != leader) {
        let mut cl = c.client(id);
        for (k, v) in &acked {
            assert_eq!(cl.cmd(&["GET", k]), bulk(&v.to_string()), "node {id} lost {k}");
        }
    }
    // Writes continue, and the old leader, restarted, catches up.
    assert_eq!(write_until_ok(&mut c.client(new_leader), &["SET", "after", "1"], ELECTION), ok());
    c.restart(leader);
    c.leader(ELECTION);
    let mut cl = c.client(leader);
    assert_eq!(write_until_ok(&mut cl, &["GET", "after"], ELECTION), bulk("1"));
    assert_eq!(cl.cmd(&["GET", "key99"]), bulk("99"));
}

#[test]
fn restarting_every_node_keeps_all_data() {
    let mut c = Cluster::start(3, &[]);
    c.leader(ELECTION);
    for i in 0..50 {
        assert_eq!(write_until_ok(&mut c.client(1), &["SET", &format!("k{i}"), &format!("v{i}")], ELECTION), ok());
    }
    for id in 1..=3 {
        assert!(c.stop(id, Duration::from_secs(10)), "node {id} stops cleanly on SIGTERM");
    }
    for id in 1..=3 {
        c.restart(id);
    }
    c.leader(ELECTION);
    for id in 1..=3 {
        let mut cl = c.client(id);
        for i in 0..50 {
            assert_eq!(write_until_ok(&mut cl, &["GET", &format!("k{i}")], ELECTION), bulk(&format!("v{i}")));
        }
    }
}

/// Stops a follower of `leader` once its founding entry is durable, and returns it.
/// Stopped right after founding, a node may exit before its founding entry (index 1)
/// reaches its WAL, and would then be refused at restart.
pub(crate) fn stop_a_follower_after_founding(c: &mut Cluster, leader: u64) -> u64 {
    let lagging = if leader == 3 { 2 } else { 3 };
    let deadline = Instant::now() + ELECTION;
    while c.status(lagging)["shards"][0]["persisted"].as_u64().unwrap_or(0) < 1 {
        assert!(Instant::now() < deadline, "node {lagging} persisted its founding entry");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(c.stop(lagging, Duration::from_secs(10)));
    lagging
}

/// Waits until `leader` has compacted its log past its first entries.
pub(crate) fn wait_until_compacted(c: &Cluster, leader: u64) {
    let deadline = Instant::now() + ELECTION;
    while c.status(leader)["shards"][0]["first_index"].as_u64().unwrap_or(0) <= 2 {
        assert!(Instant::now() < deadline, "the leader compacted its log");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_follower_restarted_after_compaction_catches_up_by_snapshot() {
    // Snapshots every 16 KiB of log: a few hundred writes compact the log many times.
    let mut c = Cluster::start(3, &["--snapshot-log-bytes", "16384", "--snapshot-catchup-entries", "0"]);
    let leader = c.leader(ELECTION);
    let lagging = stop_a_follower_after_founding(&mut c, leader);
    let value = "x".repeat(200);
    for i in 0..400 {
        assert_eq!(write_until_ok(&mut c.client(leader), &["SET", &format!("k{i}"), &value], ELECTION), ok());
    }
    wait_until_compacted(&c, leader);
    c.restart(lagging);
    let deadline = Instant::now() + ELECTION;
    loop {
        let s = &c.status(lagging)["shards"][0];
        if s["kv_keys"].as_u64() == Some(400) {
            break;
        }
        assert!(Instant::now() < deadline, "the follower caught up: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&c.node(lagging).log).unwrap();
    assert!(log.contains("installed the leader's snapshot"), "caught up by snapshot, not by replaying the log");
    // The leader's Snapshot message comes right behind the last chunk, while the file
    // is still being finished off the Ready loop: it waits for it rather than being
    // refused (which would make the leader send the whole snapshot again).
    assert!(!log.contains("without its data"), "the snapshot message was held, not refused");
    assert_eq!(c.client(lagging).cmd(&["GET", "k399"]), bulk(&value));
    // Of the many snapshots taken, older files are removed (off the Ready loop's thread)
    // once a newer one is recorded in the WAL: the leader ends up with one.
    let snapshots = c.node(leader).dir.join("shard-0/snapshots");
    let deadline = Instant::now() + ELECTION;
    loop {
        let files: Vec<String> = std::fs::read_dir(&snapshots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".skiffsnap"))
            .collect();
        if files.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "old snapshot files were removed: {files:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node `id`'s counter `name` once it has reached `at_least` and two more of the
/// shard's publications (`PUBLISH_INTERVAL`) have gone by: what a node did just before
/// another node's status showed its effect may not be published yet, and a count that
/// is still rising shows it in the meantime.
pub(crate) fn settled_counter(c: &Cluster, id: u64, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + ELECTION;
    while counter(c, id, name) < at_least {
        assert!(Instant::now() < deadline, "node {id}'s {name} reaches {at_least}");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(2 * skiff_node::shard::PUBLISH_INTERVAL);
    counter(c, id, name)
}

/// A counter of node `id`'s shard 0 from `/metrics`, once the shard publishes it.
fn counter(c: &Cluster, id: u64, name: &str) -> u64 {
    let deadline = Instant::now() + ELECTION;
    loop {
        let metrics = crate::cluster::http_get(&c.node(id).admin, "/metrics");
        if let Some(line) = metrics.lines().find(|l| l.starts_with(&format!("{name}{{"))) {
            return line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("a count: {line}"));
        }
        assert!(Instant::now() < deadline, "node {id} exports {name}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_follower_is_sent_a_large_snapshot_once_and_installs_it() {
    // 100,000 keys: the follower syncs and decodes the received file off its
    // Raft loop for a while, and the leader's messages that arrive meanwhile (its
    // Snapshot message, then appends from the snapshot's index on) must wait for it;
    // stepped earlier, the appends are rejected and the leader sends it all again.
    let mut c = Cluster::start(3, &["--snapshot-log-bytes", "2097152", "--snapshot-catchup-entries", "0"]);
    let leader = c.leader(ELECTION);
    let lagging = stop_a_follower_after_founding(&mut c, leader);
    let value = "v".repeat(40);
    let mut cl = c.client(leader);
    for batch in 0..100 {
        let mut args = vec!["MSET".to_string()];
        for i in 0..1000 {
            args.extend([format!("k{batch}-{i}"), value.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(write_until_ok(&mut cl, &args, ELECTION), ok());
    }
    wait_until_compacted(&c, leader);
    assert_eq!(counter(&c, leader, "skiff_snapshots_sent_total"), 0);
    c.restart(lagging);
    let deadline = Instant::now() + ELECTION;
    while c.status(lagging)["shards"][0]["kv_keys"].as_u64() != Some(100_000) {
        assert!(Instant::now() < deadline, "the follower caught up: {}", c.status(lagging)["shards"][0]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&c.node(lagging).log).unwrap();
    assert!(log.contains("installed the leader's snapshot"), "caught up by snapshot");
    assert!(!log.contains("without its data"), "no snapshot message was refused");
    assert_eq!(settled_counter(&c, leader, "skiff_snapshots_sent_total", 1), 1, "the snapshot was sent once");
    assert_eq!(c.client(lagging).cmd(&["GET", "k99-999"]), bulk(&value));
}

#[test]
fn a_follower_a_little_behind_catches_up_from_the_log_kept_below_the_snapshot() {
    // Snapshots every 16 KiB of log (about 60 writes), keeping 100 entries below each.
    let mut c = Cluster::start(3, &["--snapshot-log-bytes", "16384", "--snapshot-catchup-entries", "100"]);
    let leader = c.leader(ELECTION);
    let lagging = if leader == 3 { 2 } else { 3 };
    let value = "x".repeat(200);
    let mut cl = c.client(leader);
    for i in 0..150 {
        assert_eq!(write_until_ok(&mut cl, &["SET", &format!("k{i}"), &value], ELECTION), ok());
    }
    let shard = |c: &Cluster, id| c.status(id)["shards"][0].clone();
    // Status reports are refreshed every 250 ms: one taken after that holds every write.
    std::thread::sleep(Duration::from_millis(300));
    let written = shard(&c, leader)["commit"].as_u64().unwrap();
    let deadline = Instant::now() + ELECTION;
    let stopped_at = loop {
        let persisted = shard(&c, lagging)["persisted"].as_u64().unwrap();
        if persisted >= written {
            break persisted;
        }
        assert!(Instant::now() < deadline, "node {lagging} has the log before it stops");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(c.stop(lagging, Duration::from_secs(10)));
    // A few writes at a time (the status is refreshed every 250 ms) until the leader
    // has taken a snapshot beyond the stopped node's log: the 100 entries kept below it
    // still reach back to that log.
    let deadline = Instant::now() + 4 * ELECTION;
    let mut i = 150;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let s = shard(&c, leader);
        let (snap, first) = (s["last_snapshot_index"].as_u64().unwrap(), s["first_index"].as_u64().unwrap());
        if snap > stopped_at {
            assert!(first > 1, "the leader released the log below its tail: {s}");
            assert!(first <= stopped_at + 1, "the kept log reaches back to the stopped node's: {s}");
            break;
        }
        assert!(Instant::now() < deadline, "the leader took a snapshot after {stopped_at}: {s}");
        for _ in 0..5 {
            assert_eq!(write_until_ok(&mut cl, &["SET", &format!("k{i}"), &value], ELECTION), ok());
            i += 1;
        }
    }
    c.restart(lagging);
    let deadline = Instant::now() + ELECTION;
    loop {
        let s = &c.status(lagging)["shards"][0];
        if s["kv_keys"].as_u64() == Some(i) {
            break;
        }
        assert!(Instant::now() < deadline, "the follower caught up: {s}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&c.node(lagging).log).unwrap();
    assert!(!log.contains("installed the leader's snapshot"), "caught up from the log, without a snapshot");
    assert_eq!(c.client(lagging).cmd(&["GET", &format!("k{}", i - 1)]), bulk(&value));
}

#[test]
fn bad_client_input_is_refused_while_other_clients_are_served() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let mut good = c.client(leader);
    assert_eq!(write_until_ok(&mut good, &["SET", "a", "1"], ELECTION), ok());
    let cases: &[(&str, &[u8])] = &[
        ("garbage multibulk length", b"*x\r\n"),
        ("oversized bulk length", b"*1\r\n$999999999999\r\n"),
        ("oversized array", b"*99999999\r\n"),
        ("bulk without its CRLF", b"*1\r\n$1\r\nab\r\n"),
    ];
    for (what, bytes) in cases {
        let mut bad = c.client(leader);
        bad.send_raw(bytes).unwrap();
        match bad.read_reply() {
            Some(RespValue::Error(e)) => {
                assert!(e.starts_with(b"ERR Protocol error"), "{what}: {}", String::from_utf8_lossy(&e))
            }
            other => panic!("{what}: expected a protocol error, got {other:?}"),
        }
        assert!(bad.read_reply().is_none(), "{what}: the connection is closed");
        assert_eq!(good.cmd(&["GET", "a"]), bulk("1"), "{what}: others keep being served");
    }
    // A pipeline of many requests in one write is answered in order.
    let mut p = c.client(leader);
    let mut batch = bytes::BytesMut::new();
    for i in 0..200 {
        skiff_net::resp::encode_request(&["SET", &format!("p{i}"), &i.to_string()], &mut batch);
    }
    p.send_raw(&batch).unwrap();
    for _ in 0..200 {
        assert_eq!(p.read_reply(), Some(ok()));
    }
    assert_eq!(p.cmd(&["GET", "p199"]), bulk("199"));
    // A pipeline takes effect in the order it was sent, on the leader and on a
    // follower (which relays its writes and reads): each GET reads the SET before it,
    // never the one after it.
    let follower = c.follower(leader);
    for node in [leader, follower] {
        let mut p = c.client(node);
        let key = format!("order-{node}");
        let mut batch = bytes::BytesMut::new();
        skiff_net::resp::encode_request(&["GET", &key], &mut batch);
        for i in 0..20 {
            skiff_net::resp::encode_request(&["SET", &key, &i.to_string()], &mut batch);
            skiff_net::resp::encode_request(&["GET", &key], &mut batch);
        }
        p.send_raw(&batch).unwrap();
        assert_eq!(p.read_reply(), Some(RespValue::NullBulk), "node {node}: the first GET comes before every SET");
        for i in 0..20 {
            assert_eq!(p.read_reply(), Some(ok()), "node {node}");
            assert_eq!(p.read_reply(), Some(bulk(&i.to_string())), "node {node}: GET after SET {i}");
        }
    }
}

/// A follower asks the leader for one read index per batch of reads, not one per
/// read: thousands of pipelined GETs arriving together on a follower would otherwise
/// be as many ReadIndex messages, overflowing the peer's control lane (1,024
/// messages); the dropped ones left their reads waiting out the request timeout.
#[test]
fn a_burst_of_pipelined_reads_on_a_follower_is_served_promptly() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let follower = c.follower(leader);
    let mut w = c.client(leader);
    assert_eq!(write_until_ok(&mut w, &["SET", "burst", "x"], ELECTION), ok());
    let mut batch = bytes::BytesMut::new();
    for _ in 0..1024 {
        skiff_net::resp::encode_request(&["GET", "burst"], &mut batch);
    }
    let mut clients: Vec<_> = (0..4).map(|_| c.client(follower)).collect();
    for p in &mut clients {
        p.send_raw(&batch).unwrap();
    }
    // A read whose read index was dropped waits out the request timeout and is
    // answered -TRYAGAIN: every one must be the value.
    for (i, p) in clients.iter_mut().enumerate() {
        for n in 0..1024 {
            assert_eq!(p.read_reply(), Some(bulk("x")), "client {i}, GET {n}");
        }
    }
}

/// Writes waiting for a leader are bounded in bytes, not only in number: a node cut
/// off from its peers answers -OVERLOADED once 256 MiB of them wait, instead of
/// holding every large write it is sent.
#[test]
fn writes_waiting_for_a_leader_are_bounded_in_bytes() {
    // A member of a three-node cluster started alone never has a leader.
    let mut c = Cluster::new(3, &[]);
    c.launch(1, &["--bootstrap"]);
    let value = "v".repeat(3 << 20);
    let n = 96; // 288 MiB of values, one write per connection so that all wait at once
    let mut clients: Vec<_> = (0..n).map(|_| c.client(1)).collect();
    for (i, p) in clients.iter_mut().enumerate() {
        let mut req = bytes::BytesMut::new();
        skiff_net::resp::encode_request(&["SET", &format!("k{i}"), &value], &mut req);
        p.send_raw(&req).unwrap();
    }
    let (mut overloaded, mut tryagain) = (0, 0);
    for (i, p) in clients.iter_mut().enumerate() {
        match p.read_reply() {
            Some(RespValue::Error(e)) if e.starts_with(b"OVERLOADED") => overloaded += 1,
            Some(RespValue::Error(e)) if e.starts_with(b"TRYAGAIN") => tryagain += 1,
            other => panic!("SET {i}: {other:?}"),
        }
    }
    assert!(overloaded > 0 && tryagain > 0, "overloaded {overloaded}, waited {tryagain}");
    assert!(tryagain <= 86, "at most 256 MiB of 3 MiB writes waited: {tryagain}");
}

#[test]
fn redis_cli_sets_and_gets() {
    if Command::new("redis-cli").arg("--version").output().is_err() {
        eprintln!("redis-cli is not installed (apt-get install redis-tools): skipped");
        return;
    }
    let c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    let port = c.node(leader).client.rsplit(':').next().unwrap().to_string();
    let run = |args: &[&str]| {
        let out = Command::new("redis-cli").args(["-p", &port]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(run(&["GET", "greeting"]), "hello");
    assert!(run(&["INFO", "replication"]).contains("raft_role:leader"));
}

#[test]
fn large_writes_at_once_are_split_and_an_oversized_one_is_refused() {
    let c = Cluster::start(3, &[]);
    let leader = c.leader(ELECTION);
    // Larger than one log entry may hold (a WAL batch is at most 8 MiB), though within
    // the 8 MiB client request cap: refused, and the node keeps serving.
    let key = "k".repeat(4 << 20);
    let value = "v".repeat((4 << 20) - 64);
    let r = c.client(leader).cmd(&["SET", &key, &value]);
    let RespValue::Error(e) = &r else { panic!("an oversized write was accepted: {r:?}") };
    assert!(String::from_utf8_lossy(e).contains("too large"), "{r:?}");
    // Eight 3 MiB writes in flight together, through every node: one Ready holds more
    // than a WAL batch, so it is written as several appends.
    let writers: Vec<_> = (0..8u64)
        .map(|i| {
            let addr = c.node(1 + i % 3).client.clone();
            std::thread::spawn(move || {
                let v = format!("{i}").repeat(3 << 20);
                let mut cl = crate::cluster::Resp::connect(&addr);
                (i, write_until_ok(&mut cl, &["SET", &format!("big{i}"), &v], ELECTION))
            })
        })
        .collect();
    for w in writers {
        let (i, r) = w.join().unwrap();
        assert_eq!(r, ok(), "big{i}");
    }
    for id in 1..=3 {
        let mut cl = c.client(id);
        for i in 0..8u64 {
            let RespValue::Bulk(b) = cl.cmd(&["GET", &format!("big{i}")]) else { panic!("node {id}: big{i} missing") };
            assert_eq!(b.len(), 3 << 20, "node {id}: big{i}");
        }
        assert_eq!(cl.cmd(&["SET", "after", "1"]), ok(), "node {id} still serves");
    }
}
