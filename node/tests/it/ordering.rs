//! The Ready loop's durability ordering, observed on real nodes: three nodes run in
//! this process with their WAL submissions, WAL completions and every message handed
//! to the transport traced; a workload and a forced re-election run; then each trace
//! must show every accepting append response and every granted vote sent only after
//! the WAL reported the state it vouches for durable.

use std::time::Duration;

use skiff_node::server;
use skiff_node::trace::{Checked, Trace, check_durability};
use skiff_tuning::Topology;

use crate::cluster::{Resp, free_port, ok, write_until_ok};

struct InProcess {
    id: u64,
    client: String,
    running: Option<server::Running>,
}

fn leader_among(nodes: &[InProcess]) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let views: Vec<Option<(String, u64)>> = nodes
            .iter()
            .filter(|n| n.running.is_some())
            .map(|n| Resp::try_connect(&n.client).and_then(|mut c| c.replication()))
            .collect();
        if let Some(Some((_, l))) = views.iter().find(|v| v.as_ref().is_some_and(|(r, _)| r == "leader"))
            && views.iter().all(|v| v.as_ref().is_some_and(|(_, x)| x == l))
        {
            return *l;
        }
        assert!(std::time::Instant::now() < deadline, "no leader: {views:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_vote_or_append_response_leaves_before_its_state_is_durable() {
    let root = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ordering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let peers: Vec<(u64, String)> = (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let cluster: Vec<String> = peers.iter().map(|(id, a)| format!("{id}={a}")).collect();
    let topology = Topology::discover().unwrap();
    let traces: Vec<Trace> = (0..3).map(|_| Trace::default()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let client = format!("127.0.0.1:{}", free_port());
        let mut t = toml::Table::new();
        t.insert("id".into(), (id as i64).into());
        t.insert("cluster".into(), cluster.join(",").into());
        t.insert("client_addr".into(), client.clone().into());
        t.insert("admin_addr".into(), format!("127.0.0.1:{}", free_port()).into());
        t.insert("data_dir".into(), root.join(format!("node-{id}")).to_string_lossy().into_owned().into());
        t.insert("tick_ms".into(), 20.into());
        t.insert("bootstrap".into(), true.into());
        let cfg = skiff_tuning::load(None, t).unwrap();
        let listeners = server::bind_listeners(&cfg).unwrap();
        let running = server::start_traced(&cfg, listeners, &topology, Some(traces[(id - 1) as usize].clone()))
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        nodes.push(InProcess { id, client, running: Some(running) });
    }
    let leader = leader_among(&nodes);
    for i in 0..300u64 {
        let via = &nodes[(i % 3) as usize].client;
        assert_eq!(
            write_until_ok(&mut Resp::connect(via), &["SET", &format!("k{i}"), "v"], Duration::from_secs(10)),
            ok()
        );
    }
    // Stop the leader: the others elect a new one (granting votes) and go on.
    let old = nodes.iter_mut().find(|n| n.id == leader).unwrap();
    let r = old.running.take().unwrap();
    r.request_stop();
    r.wait().unwrap();
    let new_leader = leader_among(&nodes);
    assert_ne!(new_leader, leader);
    let alive: Vec<String> = nodes.iter().filter(|n| n.running.is_some()).map(|n| n.client.clone()).collect();
    for i in 0..100u64 {
        let via = &alive[(i % 2) as usize];
        assert_eq!(
            write_until_ok(&mut Resp::connect(via), &["SET", &format!("j{i}"), "v"], Duration::from_secs(10)),
            ok()
        );
    }
    for n in &mut nodes {
        if let Some(r) = n.running.take() {
            r.request_stop();
            r.wait().unwrap();
        }
    }
    let mut total = Checked::default();
    for (i, t) in traces.iter().enumerate() {
        let events = t.lock().unwrap();
        let c = check_durability(i as u64 + 1, &events).unwrap_or_else(|e| panic!("{e}"));
        total.append_responses += c.append_responses;
        total.votes_granted += c.votes_granted;
    }
    assert!(total.append_responses > 200, "the check saw the followers' responses: {total:?}");
    assert!(total.votes_granted >= 2, "and the votes of two elections: {total:?}");
    let _ = std::fs::remove_dir_all(&root);
}
