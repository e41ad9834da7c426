//! Start-up refusals: every bad configuration or data directory exits non-zero with a
//! message naming the problem, and nothing is touched. And a graceful stop on SIGTERM.

use std::process::Command;
use std::time::Duration;

use skiff_net::RespValue;

use crate::cluster::{Cluster, ok, write_until_ok};

fn skiff(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).args(args).output().expect("run skiff");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// As [`skiff`], for a run that should be refused but might start: a process still
/// running after `within` is killed and reported as status -1.
fn skiff_within(args: &[&str], within: Duration) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run skiff");
    let deadline = std::time::Instant::now() + within;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
    (code, err)
}

fn dir(name: &str) -> std::path::PathBuf {
    let d =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("startup-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn bad_configurations_are_refused_with_their_reason() {
    let d = dir("cfg");
    let data = d.to_string_lossy().into_owned();
    let base = ["serve", "--cluster", "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3", "--data-dir", &data];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["serve", "--id", "1", "--data-dir", &data], "missing field `cluster`"),
        (vec!["serve", "--id", "1", "--cluster", "1=127.0.0.1:1"], "missing field `data_dir`"),
        ([&base[..], &["--id", "9"]].concat(), "not a member of cluster"),
        (vec!["serve", "--id", "1", "--cluster", "1=127.0.0.1:1,1=127.0.0.1:2", "--data-dir", &data], "appears twice"),
        (vec!["serve", "--id", "1", "--cluster", "1=127.0.0.1", "--data-dir", &data], "HOST:PORT"),
        ([&base[..], &["--id", "1", "--client-addr", "nonsense"]].concat(), "client_addr"),
        ([&base[..], &["--id", "1", "--cpu", "4096"]].concat(), "cpu 4096"),
        ([&base[..], &["--id", "1", "--election-ticks", "1"]].concat(), "election_ticks"),
        // Bounds of the engine, the WAL and the transport, refused before the data
        // directory is created.
        (
            [&base[..], &["--id", "1", "--election-ticks", "1048577"]].concat(),
            "election_ticks (1048577) must be at most",
        ),
        ([&base[..], &["--id", "1", "--wal-segment-bytes", "4294967296"]].concat(), "wal_segment_bytes"),
        ([&base[..], &["--id", "1", "--frame-bytes-max", "4294967296"]].concat(), "frame_bytes_max"),
        ([&base[..], &["--id", "1", "--frame-bytes-max", "2000000"]].concat(), "client request"),
        ([&base[..], &["--id", "1", "--read-mode", "lease", "--check-quorum", "false"]].concat(), "check_quorum"),
        ([&base[..], &["--id", "1", "--bootstrap", "--join"]].concat(), "exclusive"),
        (vec!["serve", "--config", "/nonexistent/skiff.toml"], "/nonexistent/skiff.toml"),
    ];
    for (args, want) in cases {
        let (code, err) = skiff(&args);
        assert_eq!(code, 2, "{args:?} exits with 2: {err}");
        assert!(err.contains(want), "{args:?}: stderr {err:?} does not mention {want:?}");
    }
    // A member's host name that does not resolve may resolve later (DNS not up yet at
    // boot): exit status 1, which a supervisor retries.
    let (code, err) =
        skiff(&["serve", "--id", "1", "--cluster", "1=127.0.0.1:1,2=no-such-host.invalid:7002", "--data-dir", &data]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("cannot resolve"), "{err}");
    assert!(!d.exists(), "a refused configuration creates no data directory");
    // An unknown key in a file is refused by name.
    std::fs::create_dir_all(&d).unwrap();
    let f = d.join("skiff.toml");
    std::fs::write(&f, "id = 1\ncolour = \"blue\"\n").unwrap();
    let (code, err) = skiff(&["serve", "--config", &f.to_string_lossy()]);
    assert_eq!(code, 2);
    assert!(err.contains("colour"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn busy_ports_foreign_data_directories_and_empty_ones_are_refused() {
    let mut c = Cluster::start(1, &[]);
    c.leader(Duration::from_secs(10));
    // The client port of the running node, given to another node: refused, not shared.
    let d = dir("busy");
    let peer = format!("127.0.0.1:{}", crate::cluster::free_port());
    let (code, err) = skiff(&[
        "serve",
        "--id",
        "1",
        "--cluster",
        &format!("1={peer}"),
        "--data-dir",
        &d.to_string_lossy(),
        "--client-addr",
        &c.node(1).client,
        "--bootstrap",
    ]);
    // Exit status 1, not 2: a port still held may be released (the systemd unit in
    // docs/operating.md restarts on 1, not on 2).
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("already in use") && err.contains("client_addr"), "{err}");
    // The running node's data directory, claimed by node 2 of the same cluster name.
    assert!(c.stop(1, Duration::from_secs(10)));
    let data = c.node(1).dir.to_string_lossy().into_owned();
    let (code, err) =
        skiff(&["serve", "--id", "2", "--cluster", &format!("2={peer}"), "--cluster-name", "it", "--data-dir", &data]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("belongs to another node or cluster"), "{err}");
    // An empty data directory without --bootstrap or --join: this node lost its data.
    let empty = dir("empty");
    let (code, err) =
        skiff(&["serve", "--id", "1", "--cluster", &format!("1={peer}"), "--data-dir", &empty.to_string_lossy()]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("holds no Raft state"), "{err}");
    // A directory that is not a Skiff data directory.
    let foreign = dir("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("precious.txt"), b"not ours").unwrap();
    let (code, err) = skiff(&[
        "serve",
        "--id",
        "1",
        "--cluster",
        &format!("1={peer}"),
        "--data-dir",
        &foreign.to_string_lossy(),
        "--bootstrap",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a Skiff data directory"), "{err}");
    assert_eq!(std::fs::read(foreign.join("precious.txt")).unwrap(), b"not ours", "nothing touched");
    for p in [d, empty, foreign] {
        let _ = std::fs::remove_dir_all(p);
    }
}

#[test]
fn sigterm_stops_a_node_gracefully_and_it_restarts_with_its_data() {
    let mut c = Cluster::start(1, &[]);
    c.leader(Duration::from_secs(10));
    assert_eq!(write_until_ok(&mut c.client(1), &["SET", "k", "v"], Duration::from_secs(10)), ok());
    assert!(c.stop(1, Duration::from_secs(5)), "exits 0 within 5 s of SIGTERM");
    c.restart(1);
    c.leader(Duration::from_secs(10));
    assert_eq!(write_until_ok(&mut c.client(1), &["GET", "k"], Duration::from_secs(10)), crate::cluster::bulk("v"));
}

/// Keeps a write of node `id` waiting: the other member of a two-node cluster is gone,
/// so nothing commits, and the stopping node waits out its grace period for it.
fn hold_a_write(c: &mut Cluster, id: u64) -> crate::cluster::Resp {
    c.leader(Duration::from_secs(10));
    c.kill(3 - id);
    let mut w = c.client(id);
    let mut req = bytes::BytesMut::new();
    skiff_net::resp::encode_request(&["SET", "held", "1"], &mut req);
    w.send_raw(&req).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    w
}

#[test]
fn a_stopping_node_tells_new_clients_it_is_shutting_down() {
    let mut c = Cluster::start(2, &[]);
    let _held = hold_a_write(&mut c, 1);
    c.signal(1, libc::SIGTERM);
    // The shard notices the stop flag within a tick; the grace period lasts 3 s.
    std::thread::sleep(Duration::from_millis(300));
    let mut late = c.client(1);
    let reply = late.read_reply();
    assert_eq!(
        reply,
        Some(RespValue::Error(bytes::Bytes::from_static(b"ERR the node is shutting down"))),
        "a connection refused while stopping says why"
    );
    assert!(c.wait_exit(1, Duration::from_secs(10)).is_some_and(|s| s.success()));
}

/// A first start refused after the configuration was accepted (here: neither
/// --bootstrap nor --join) writes no identity, so the operator can correct the id or
/// the cluster name and start again in the same directory.
#[test]
fn a_refused_first_start_leaves_the_data_directory_reusable() {
    let mut c = Cluster::new(1, &[]);
    let dir = c.node(1).dir.clone();
    let mut args = c.args(1);
    let name = args.iter().position(|a| a == "--cluster-name").unwrap() + 1;
    args[name] = "a-typo".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = skiff(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no Raft state"), "{err}");
    assert!(!dir.join("skiff.id").exists(), "no identity written by a refused start");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.file_name()).filter(|n| n != "skiff.lock").collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing but the lock file left in the data directory: {left:?}");
    // Corrected: the right cluster name, and --bootstrap.
    c.launch(1, &["--bootstrap"]);
    c.leader(Duration::from_secs(10));
    assert_eq!(write_until_ok(&mut c.client(1), &["SET", "k", "v"], Duration::from_secs(10)), ok());
    let id = std::fs::read_to_string(dir.join("skiff.id")).unwrap();
    assert!(id.contains("cluster_name = \"it\""), "{id}");
}

/// Two processes on one data directory would corrupt its WAL: a second `skiff serve`
/// on a directory in use, with ports of its own, is refused and names the holder.
#[test]
fn a_data_directory_in_use_is_refused() {
    let c = Cluster::start(1, &[]);
    c.leader(Duration::from_secs(10));
    let mut args = c.args(1);
    for flag in ["--client-addr", "--admin-addr", "--cluster"] {
        let i = args.iter().position(|a| a == flag).unwrap() + 1;
        let port = crate::cluster::free_port();
        args[i] = if flag == "--cluster" { format!("1=127.0.0.1:{port}") } else { format!("127.0.0.1:{port}") };
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, err) = skiff_within(&args, Duration::from_secs(10));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in use by another skiff process"), "{err}");
    assert!(err.contains(&c.node(1).dir.display().to_string()), "names the directory: {err}");
    assert!(err.contains(&format!("pid {}", c.pid(1))), "names the holder: {err}");
    // The first node never noticed.
    assert_eq!(write_until_ok(&mut c.client(1), &["SET", "k", "v"], Duration::from_secs(10)), ok());
}

/// A stop that does not finish (a write that cannot commit holds it for the grace
/// period) is cut short by a second signal.
#[test]
fn a_second_signal_exits_at_once() {
    let mut c = Cluster::start(2, &[]);
    let _held = hold_a_write(&mut c, 1);
    c.signal(1, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    c.signal(1, libc::SIGINT);
    // The grace period for the held write is 3 s; the second signal does not wait it out.
    let status = c.wait_exit(1, Duration::from_millis(1500)).expect("exits at once on the second signal");
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status}");
    let log = std::fs::read_to_string(&c.node(1).log).unwrap();
    assert!(log.contains("SIGINT again while stopping: exiting now"), "{log}");
}

/// A SKIFF_LOG value that is not a level is said, with the accepted ones.
#[test]
fn an_unknown_log_level_is_warned_about() {
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).arg("tune").env("SKIFF_LOG", "verbose").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SKIFF_LOG=\"verbose\" is not a log level"), "{err}");
    assert!(err.contains("error, warn, info, debug, trace, off"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_skiff")).arg("tune").env("SKIFF_LOG", "Debug").output().unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("SKIFF_LOG"), "a level is accepted quietly");
}

/// bootstrap left on after the first start is ignored, and said so; a flag turns off
/// `bootstrap = true` from a config file.
#[test]
fn bootstrap_on_a_node_with_state_is_warned_about_and_a_flag_clears_it() {
    let mut c = Cluster::start(1, &[]);
    c.leader(Duration::from_secs(10));
    // An acknowledged write is durable: the node has state when it stops.
    assert_eq!(write_until_ok(&mut c.client(1), &["SET", "k", "v"], Duration::from_secs(10)), ok());
    let founding = std::fs::read_to_string(&c.node(1).log).unwrap();
    assert!(!founding.contains("bootstrap was ignored"), "not on the founding start: {founding}");
    assert!(c.stop(1, Duration::from_secs(10)));
    c.launch(1, &["--bootstrap"]);
    c.leader(Duration::from_secs(10));
    let log = std::fs::read_to_string(&c.node(1).log).unwrap();
    assert!(log.contains("bootstrap is set but the data directory already holds Raft state"), "{log}");
    assert!(c.stop(1, Duration::from_secs(10)));

    // A config file that says bootstrap = true, overridden on an empty directory: the
    // node is refused instead of founding a cluster.
    let d = dir("bootstrap-false");
    std::fs::create_dir_all(&d).unwrap();
    let file = d.join("skiff.toml");
    std::fs::write(&file, "bootstrap = true\n").unwrap();
    let data = d.join("data");
    let peer = format!("127.0.0.1:{}", crate::cluster::free_port());
    let (code, err) = skiff_within(
        &[
            "serve",
            "--config",
            &file.to_string_lossy(),
            "--id",
            "1",
            "--cluster",
            &format!("1={peer}"),
            "--data-dir",
            &data.to_string_lossy(),
            "--client-addr",
            &format!("127.0.0.1:{}", crate::cluster::free_port()),
            "--admin-addr",
            &format!("127.0.0.1:{}", crate::cluster::free_port()),
            "--bootstrap=false",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("holds no Raft state"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}

/// A locked-memory limit too low for the runtime is refused before anything starts,
/// with the fix, whoever runs the node (the runtime refuses it for root too).
#[test]
fn a_memlock_limit_too_low_for_io_uring_is_refused_with_the_fix() {
    use std::os::unix::process::CommandExt;
    let d = dir("memlock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skiff"));
    cmd.args([
        "serve",
        "--id",
        "1",
        "--cluster",
        &format!("1=127.0.0.1:{}", crate::cluster::free_port()),
        "--client-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--data-dir",
        &d.to_string_lossy(),
        "--bootstrap",
    ]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = lim.rlim_max.min(65536);
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run skiff");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("RLIMIT_MEMLOCK is ") && err.contains("io_uring needs") && err.contains("ulimit -l"), "{err}");
    let _ = std::fs::remove_dir_all(&d);
}
