//! `compare` against real servers: Skiff (when its binary can be built), Redis and etcd
//! when they are installed — skipped with a printed note otherwise — and the notes a
//! user gets for systems that are not installed.

use std::process::Command;

use crate::support::{Scratch, bench_bin, skiff_bin};

fn installed(name: &str) -> bool {
    skiff_bench::spawn::find_in_path(name).is_some()
}

#[test]
fn compare_runs_each_installed_system_and_leaves_nothing_behind() {
    let mut systems = Vec::new();
    let skiff = skiff_bin();
    if skiff.is_some() {
        systems.push("skiff");
    }
    for (system, bin, package) in [("redis", "redis-server", "redis-server"), ("etcd", "etcd", "etcd-server")] {
        if installed(bin) {
            systems.push(system);
        } else {
            eprintln!("SKIPPED: {bin} is not installed (apt-get install {package}); compare runs without {system}");
        }
    }
    if !systems.iter().any(|s| *s != "skiff") {
        eprintln!("SKIPPED: neither redis-server nor etcd is installed; nothing to compare with");
        return;
    }
    let dir = Scratch::new("compare");
    let out = Scratch::new("compare-out");
    let (json, plot, hgrm) = (out.0.join("c.json"), out.0.join("c.svg"), out.0.join("c.hgrm"));
    let mut cmd = Command::new(bench_bin());
    cmd.args(["compare", "--systems", &systems.join(","), "--requests", "300", "--clients", "4", "--warmup", "0"])
        .args(["--quiet", "--data-dir", dir.0.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap(), "--plot", plot.to_str().unwrap(), "--hgrm", hgrm.to_str().unwrap()]);
    if let Some(s) = &skiff {
        cmd.arg("--skiff-bin").arg(s);
    }
    let o = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert_eq!(dir.entries(), Vec::<String>::new(), "every server's data is removed");

    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for s in &systems {
        let m = &v["systems"][s];
        assert_eq!(m["ops"].as_u64().unwrap() + m["errors"].as_u64().unwrap(), 300, "{s}: {m}");
        assert!(m["ops"].as_u64().unwrap() > 0, "{s}: {m}");
        // Measured, though a few hundred requests may cost less than /proc's 10 ms tick.
        assert!(m["cpu_us_per_op"].as_f64().is_some_and(|c| c >= 0.0), "{s}: the servers' CPU is measured: {m}");
        assert!(out.0.join(format!("c.{s}.hgrm")).is_file(), "{s}: its .hgrm is written");
        if *s != "skiff" && skiff.is_some() {
            assert!(v["ratios"][s]["ops_per_sec"].as_f64().unwrap() > 0.0, "{s}: {v}");
            assert!(stdout.contains(&format!("skiff ÷ {s}")), "{stdout}");
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert_eq!(svg.matches("<polyline").count(), systems.len(), "one curve per system");
    if systems.contains(&"redis") && installed("redis-benchmark") {
        let c = &v["generator_check"];
        assert!(c["redis_benchmark_ops_per_sec"].as_f64().unwrap() > 0.0, "{c}");
        assert!(stdout.contains("generator check"), "{stdout}");
    }
}

#[test]
fn systems_that_are_not_installed_are_skipped_with_how_to_install_them() {
    let o = Command::new(bench_bin())
        .args(["compare", "--systems", "redis,etcd", "--requests", "10"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(stdout.contains("redis-server is not installed (apt-get install redis-server)"), "{stdout}");
    assert!(stdout.contains("etcd is not installed (apt-get install etcd-server)"), "{stdout}");
}
