//! The `skiff-bench` binary as a user runs it: its output files parse, and bad input
//! gets a clear message and a non-zero exit, never a panic.

use std::process::{Command, Output};

use crate::support::{Action, FakeServer, Scratch, bench_bin};

fn bench(args: &[&str]) -> Output {
    Command::new(bench_bin()).args(args).output().expect("run skiff-bench")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn json_hgrm_and_svg_outputs_parse() {
    let server =
        FakeServer::start(|i, _| if i % 50 == 0 { Action::Raw(b"-TRYAGAIN later\r\n") } else { Action::Answer });
    let dir = Scratch::new("outputs");
    let (json, hgrm, svg) = (dir.0.join("r.json"), dir.0.join("r.hgrm"), dir.0.join("r.svg"));
    let target = server.addr.to_string();
    let o = bench(&[
        "--targets",
        &target,
        "--requests",
        "500",
        "--clients",
        "2",
        "--pipeline",
        "2",
        "--warmup",
        "0",
        "--read-ratio",
        "0.3",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("throughput") && text.contains("p99.9"), "{text}");

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for key in ["ops_per_sec", "p50_us", "p90_us", "p99_us", "p999_us", "max_us", "errors", "cpu_us_per_op"] {
        assert!(v.get(key).is_some(), "the summary has `{key}`: {v}");
    }
    assert_eq!(v["errors"], 10);
    assert_eq!(v["errors_by_kind"]["TRYAGAIN"], 10);
    assert_eq!(v["ops"], 490);
    assert!(v["cpu_us_per_op"].is_null(), "no spawned servers, no server CPU");
    assert!(v["ops_per_sec"].as_f64().unwrap() > 0.0);
    let p = |k: &str| v[k].as_u64().unwrap();
    assert!(p("p50_us") <= p("p90_us") && p("p90_us") <= p("p99_us") && p("p99_us") <= p("p999_us"));
    assert!(p("p999_us") <= p("max_us"));

    // .hgrm: a header, rows of value / percentile / count / 1/(1-p), and a footer.
    let h = std::fs::read_to_string(&hgrm).unwrap();
    let mut lines = h.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    assert_eq!(lines.next(), Some(""));
    let rows: Vec<Vec<f64>> = lines
        .take_while(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(|f| f.parse::<f64>().unwrap()).collect())
        .collect();
    assert!(rows.len() > 5);
    assert!(rows.windows(2).all(|w| w[0][0] <= w[1][0] && w[0][1] <= w[1][1]), "sorted by value and percentile");
    let last = rows.last().unwrap();
    assert_eq!((last[1], last[2]), (1.0, 490.0));
    assert!(h.contains("#[Max     =") && h.contains("Total count    =          490]"), "{h}");
    // The max in the footer is the JSON's max, in milliseconds.
    assert!((last[0] - p("max_us") as f64 / 1000.0).abs() < 0.002);

    let s = std::fs::read_to_string(&svg).unwrap();
    assert!(s.starts_with("<svg") && s.contains("<polyline"));
}

#[test]
fn bad_flags_are_refused_clearly() {
    for (args, says) in [
        (&["--clients", "0"][..], "--clients"),
        (&["--pipeline", "0"], "--pipeline"),
        (&["--read-ratio", "2"], "--read-ratio"),
        (&["--rate", "0"], "--rate"),
        (&["--key-distribution", "zipf:7"], "zipf"),
        (&["--clients", "many"], "invalid value"),
        (&["--targets", "localhost"], "bad --targets entry `localhost`: no port"),
        (&["--targets", "127.0.0.1:99999"], "bad --targets"),
        (&["--targets", ""], "bad --targets"),
        (&["--spawn", "0"], "--spawn"),
        (&["--spawn", "3", "--protocol", "etcd"], "RESP"),
        (&["compare", "--nodes", "0"], "--nodes"),
        (&["--json", "/nonexistent/dir/r.json"], "--json: directory /nonexistent/dir does not exist"),
    ] {
        let o = bench(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?} should say {says:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// A TCP socket bound to a free loopback port without listening, and that port.
fn bound_not_listening() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor this function owns; `addr` and `len`
    // are valid for the sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd, (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let mut len = len;
        let rc = libc::getsockname(fd, (&raw mut addr).cast(), &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (owned, u16::from_be(addr.sin_port))
    }
}

#[test]
fn an_unreachable_target_is_an_error_not_a_report() {
    // A port held by a socket that is bound but never listens: connections to it are
    // refused, and no other test can start listening there meanwhile (a port merely
    // free a moment ago was once taken by a node another test started).
    let (_held, port) = bound_not_listening();
    let o = bench(&["--targets", &format!("127.0.0.1:{port}"), "--duration", "1", "--warmup", "0"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot connect to 127.0.0.1:{port}")), "{err}");
    assert!(o.stdout.is_empty(), "no report for a run that did not happen");
}

#[test]
fn missing_binaries_and_data_dirs_are_named() {
    let o = bench(&["--spawn", "1", "--skiff-bin", "/nonexistent/skiff"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot find the skiff binary at /nonexistent/skiff"), "{err}");

    let o = bench(&["--spawn", "1", "--skiff-bin", bench_bin(), "--data-dir", "/nonexistent/dir"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("/nonexistent/dir") && err.contains("not a directory"), "{err}");
}
