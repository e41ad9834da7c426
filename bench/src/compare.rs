//! `skiff-bench compare`: the same workload, one system after another in one run,
//! against a spawned Skiff cluster, a spawned Redis (every write fsynced: `appendonly
//! yes`, `appendfsync always`) and a spawned etcd cluster, then a side-by-side table
//! with Skiff's ratio to each. A system whose server is not installed is skipped with
//! a note saying how to install it.
//!
//! Against Redis it also runs `redis-benchmark` with the same clients, pipeline and
//! values, so the report shows whether skiff-bench keeps up with the tool Redis ships.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use crate::app::{EXIT_INTERRUPTED, write_output};
use crate::cli::{CompareArgs, SendTo, System};
use crate::error::BenchError;
use crate::report::{Summary, fmt_count, fmt_latency_us, hgrm};
use crate::run::{self, ProgressMode, Protocol, RunConfig, RunLength};
use crate::spawn::{self, Procs, SPAWN_NODES_MAX};
use crate::workload::KeyDistribution;

/// The generator keeps up when it reaches this share of `redis-benchmark`'s
/// throughput with the same clients and pipeline.
pub const GENERATOR_CHECK_PERCENT_MIN: f64 = 90.0;
/// Fewest requests for the `redis-benchmark` run: fewer make its figure noise.
const GENERATOR_CHECK_REQUESTS_MIN: u64 = 10_000;

/// One system's measured run.
#[derive(Debug)]
struct Measured {
    system: System,
    label: String,
    summary: Summary,
    latency: Histogram<u64>,
}

/// `redis-benchmark` against the same Redis.
#[derive(Debug, Clone)]
struct GeneratorCheck {
    test: &'static str,
    requests: u64,
    redis_benchmark_ops_per_sec: f64,
    skiff_bench_ops_per_sec: f64,
}

impl GeneratorCheck {
    fn percent(&self) -> f64 {
        self.skiff_bench_ops_per_sec / self.redis_benchmark_ops_per_sec * 100.0
    }
}

/// Runs `compare`; returns the exit status.
pub fn run(args: &CompareArgs, interrupt: &AtomicBool) -> Result<i32, BenchError> {
    let base = args.workload.validate(Protocol::Resp, Vec::new())?;
    args.output.validate()?;
    if !(1..=SPAWN_NODES_MAX).contains(&args.nodes) {
        return Err(BenchError::Usage(format!("--nodes must be between 1 and {SPAWN_NODES_MAX}, not {}", args.nodes)));
    }
    if args.systems.is_empty() {
        return Err(BenchError::Usage("--systems names no system".into()));
    }
    let progress = ProgressMode::detect(args.output.quiet);
    let mut measured: Vec<Measured> = Vec::new();
    let mut notes: Vec<(System, String)> = Vec::new();
    let mut check: Option<Result<GeneratorCheck, String>> = None;
    let mut failed = false;
    let mut interrupted = false;
    for &system in &args.systems {
        if interrupt.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        eprintln!("skiff-bench: == {} ==", system.name());
        let outcome = match system {
            System::Skiff => run_skiff(args, &base, interrupt, progress),
            System::Redis => run_redis(args, &base, interrupt, progress, &mut check),
            System::Etcd => run_etcd(args, &base, interrupt, progress),
        };
        match outcome {
            Ok(Ok(m)) => {
                interrupted |= m.summary.interrupted;
                eprint!("{}", m.summary.text());
                measured.push(m);
            }
            Ok(Err(skip)) => {
                eprintln!("skiff-bench: skipping {}: {skip}", system.name());
                notes.push((system, skip));
            }
            Err(BenchError::Interrupted) => {
                interrupted = true;
            }
            Err(e) => {
                eprintln!("skiff-bench: {} failed: {e}", system.name());
                notes.push((system, format!("failed: {e}")));
                failed = true;
            }
        }
        if interrupted {
            break;
        }
    }

    println!();
    print!("{}", table(&measured));
    for (system, note) in &notes {
        println!("{}: {note}", system.name());
    }
    if let Some(c) = &check {
        println!("{}", check_line(c));
    }
    write_outputs(args, &measured, &notes, &check)?;
    Ok(if interrupted {
        EXIT_INTERRUPTED
    } else if failed {
        1
    } else {
        0
    })
}

/// The measured run against `targets`, watching `procs`' CPU.
fn measure(
    system: System,
    label: String,
    cfg: &RunConfig,
    procs: &Procs,
    interrupt: &AtomicBool,
    progress: ProgressMode,
) -> Result<Measured, BenchError> {
    let pids = procs.pids();
    let result = run::run(cfg, &pids, interrupt, progress, system.name())?;
    let summary = Summary::new(system.name(), cfg, &result, pids.len());
    Ok(Measured { system, label, summary, latency: result.recorder.latency })
}

type Outcome = Result<Result<Measured, String>, BenchError>;

fn run_skiff(args: &CompareArgs, base: &RunConfig, interrupt: &AtomicBool, progress: ProgressMode) -> Outcome {
    let bin = args.spawn_args.skiff_bin.clone().unwrap_or_else(spawn::default_skiff_bin);
    let mut cluster =
        spawn::start_skiff(&bin, args.nodes, &args.spawn_args.data_dir, &args.spawn_args.skiff_arg, interrupt)?;
    let targets = match args.spawn_args.send_to {
        SendTo::All => cluster.nodes.iter().map(|n| n.client).collect(),
        SendTo::Leader => cluster.nodes.iter().filter(|n| n.id == cluster.leader).map(|n| n.client).collect(),
    };
    let cfg = RunConfig { targets, ..base.clone() };
    let label = format!("skiff ({} node{})", args.nodes, if args.nodes == 1 { "" } else { "s" });
    let m = measure(System::Skiff, label, &cfg, &cluster.procs, interrupt, progress);
    cluster.procs.shutdown();
    Ok(Ok(m?))
}

fn run_redis(
    args: &CompareArgs,
    base: &RunConfig,
    interrupt: &AtomicBool,
    progress: ProgressMode,
    check: &mut Option<Result<GeneratorCheck, String>>,
) -> Outcome {
    let Some(bin) = args.redis_bin.clone().or_else(|| spawn::find_in_path("redis-server")) else {
        return Ok(Err("redis-server is not installed (apt-get install redis-server)".into()));
    };
    let mut redis = spawn::start_redis(&bin, &args.spawn_args.data_dir, interrupt)?;
    let cfg = RunConfig { targets: vec![redis.addr], ..base.clone() };
    let m = measure(System::Redis, "redis (fsync always)".into(), &cfg, &redis.procs, interrupt, progress)?;
    if !args.no_generator_check && !m.summary.interrupted {
        *check = Some(generator_check(&cfg, &m.summary, &redis, interrupt));
    }
    redis.procs.shutdown();
    Ok(Ok(m))
}

fn run_etcd(args: &CompareArgs, base: &RunConfig, interrupt: &AtomicBool, progress: ProgressMode) -> Outcome {
    let Some(bin) = args.etcd_bin.clone().or_else(|| spawn::find_in_path("etcd")) else {
        return Ok(Err("etcd is not installed (apt-get install etcd-server)".into()));
    };
    let mut etcd = spawn::start_etcd(&bin, args.nodes, &args.spawn_args.data_dir, interrupt)?;
    let cfg = RunConfig { protocol: Protocol::Etcd, targets: etcd.clients.clone(), ..base.clone() };
    let label = format!("etcd ({} node{})", args.nodes, if args.nodes == 1 { "" } else { "s" });
    let m = measure(System::Etcd, label, &cfg, &etcd.procs, interrupt, progress);
    etcd.procs.shutdown();
    Ok(Ok(m?))
}

/// Runs `redis-benchmark` with the run's clients, pipeline, value size and keys for
/// about as many requests as skiff-bench completed, against the same Redis.
fn generator_check(
    cfg: &RunConfig,
    summary: &Summary,
    redis: &spawn::RedisServer,
    interrupt: &AtomicBool,
) -> Result<GeneratorCheck, String> {
    let Some(bin) = spawn::find_in_path("redis-benchmark") else {
        return Err("generator check skipped: redis-benchmark is not installed (apt-get install redis-tools)".into());
    };
    if cfg.rate.is_some() {
        return Err("generator check skipped: redis-benchmark has no open loop (drop --rate)".into());
    }
    if cfg.key_distribution != KeyDistribution::Uniform {
        return Err("generator check skipped: redis-benchmark draws keys uniformly only".into());
    }
    let test =
        match cfg.read_ratio {
            0.0 => "SET",
            1.0 => "GET",
            _ => return Err(
                "generator check skipped: redis-benchmark runs reads and writes separately (use --read-ratio 0 or 1)"
                    .into(),
            ),
        };
    let requests = match cfg.length {
        RunLength::Requests(n) => n,
        RunLength::Duration(_) => summary.ops,
    }
    .max(GENERATOR_CHECK_REQUESTS_MIN);
    eprintln!(
        "skiff-bench: generator check: redis-benchmark -t {} -n {requests} against the same redis",
        test.to_lowercase()
    );
    let out_path = redis.procs.dir().join("redis-benchmark.csv");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("generator check: {e}"))?;
    let mut cmd = Command::new(&bin);
    cmd.args(["-h", "127.0.0.1", "-p", &redis.addr.port().to_string()])
        .args(["-c", &cfg.clients.to_string(), "-P", &cfg.pipeline.to_string()])
        .args(["-d", &cfg.value_size.to_string(), "-r", &cfg.keys.to_string(), "-n", &requests.to_string()])
        .args(["-t", &test.to_lowercase(), "--csv"]);
    if cfg.threads > 1 {
        cmd.args(["--threads", &cfg.threads.to_string()]);
    }
    cmd.stdin(std::process::Stdio::null()).stdout(out).stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| format!("generator check: cannot run {}: {e}", bin.display()))?;
    let status = loop {
        if interrupt.load(Ordering::Relaxed) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("generator check interrupted".into());
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("generator check: {e}")),
        }
    };
    let csv = std::fs::read_to_string(&out_path).unwrap_or_default();
    let rps = parse_redis_benchmark_csv(&csv, test)
        .ok_or_else(|| format!("generator check: redis-benchmark ({status}) printed no {test} figure: {csv:?}"))?;
    Ok(GeneratorCheck {
        test,
        requests,
        redis_benchmark_ops_per_sec: rps,
        skiff_bench_ops_per_sec: summary.ops_per_sec,
    })
}

/// Requests per second of `test` from `redis-benchmark --csv` output
/// (`"SET","12345.67",...`).
fn parse_redis_benchmark_csv(csv: &str, test: &str) -> Option<f64> {
    csv.lines().find_map(|line| {
        let mut fields = line.split(',').map(|f| f.trim().trim_matches('"'));
        if fields.next()? != test {
            return None;
        }
        fields.next()?.parse().ok()
    })
}

fn check_line(c: &Result<GeneratorCheck, String>) -> String {
    match c {
        Err(e) => e.clone(),
        Ok(c) => format!(
            "generator check (redis, {} x {}): redis-benchmark {} ops/s, skiff-bench {} ops/s = {:.1}% ({})",
            c.test,
            fmt_count(c.requests),
            fmt_count(c.redis_benchmark_ops_per_sec.round() as u64),
            fmt_count(c.skiff_bench_ops_per_sec.round() as u64),
            c.percent(),
            if c.percent() >= GENERATOR_CHECK_PERCENT_MIN {
                "the generator keeps up".to_string()
            } else {
                format!("below {GENERATOR_CHECK_PERCENT_MIN}%: the generator may limit the figures; try --threads 2")
            }
        ),
    }
}

/// Skiff's figure divided by another system's.
fn ratio(skiff: Option<f64>, other: Option<f64>) -> Option<f64> {
    match (skiff, other) {
        (Some(s), Some(o)) if o > 0.0 => Some(s / o),
        _ => None,
    }
}

type Row = (&'static str, fn(&Summary) -> Option<f64>, fn(f64) -> String);

fn rows() -> Vec<Row> {
    let lat = |v: f64| fmt_latency_us(v as u64);
    let us = |v: f64| format!("{v:.1} µs");
    vec![
        ("throughput (ops/s)", |s| Some(s.ops_per_sec), |v| fmt_count(v.round() as u64)),
        ("latency p50", |s| s.p50_us.map(|v| v as f64), lat),
        ("latency p90", |s| s.p90_us.map(|v| v as f64), lat),
        ("latency p99", |s| s.p99_us.map(|v| v as f64), lat),
        ("latency p99.9", |s| s.p999_us.map(|v| v as f64), lat),
        ("latency max", |s| s.max_us.map(|v| v as f64), lat),
        ("errors", |s| Some(s.errors as f64), |v| fmt_count(v as u64)),
        ("server CPU per op", |s| s.cpu_us_per_op, us),
        ("generator CPU per op", |s| s.generator_cpu_us_per_op, us),
    ]
}

/// The side-by-side table, with a Skiff ÷ other column per other system.
fn table(measured: &[Measured]) -> String {
    if measured.is_empty() {
        return "no system was measured\n".to_string();
    }
    let skiff = measured.iter().find(|m| m.system == System::Skiff);
    let others: Vec<&Measured> = measured.iter().filter(|m| m.system != System::Skiff).collect();
    let mut header = vec![String::new()];
    header.extend(measured.iter().map(|m| m.label.clone()));
    if skiff.is_some() {
        header.extend(others.iter().map(|o| format!("skiff ÷ {}", o.system.name())));
    }
    let mut lines = vec![header];
    for (name, get, fmt) in rows() {
        let mut line = vec![name.to_string()];
        line.extend(measured.iter().map(|m| get(&m.summary).map_or("-".to_string(), fmt)));
        if let Some(s) = skiff {
            for o in &others {
                line.push(ratio(get(&s.summary), get(&o.summary)).map_or("-".to_string(), |r| format!("{r:.2}x")));
            }
        }
        lines.push(line);
    }
    let cols = lines[0].len();
    let widths: Vec<usize> = (0..cols).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in &lines {
        let mut row = format!("{:<w$}", l[0], w = widths[0]);
        for c in 1..cols {
            row.push_str(&format!("   {:>w$}", l[c], w = widths[c]));
        }
        out.push_str(row.trim_end());
        out.push('\n');
    }
    if skiff.is_some() && !others.is_empty() {
        out.push_str(
            "(skiff ÷ X: Skiff's figure over X's. Throughput above 1x: Skiff does more; latency and CPU below 1x: Skiff is faster or cheaper.)\n",
        );
    }
    out
}

/// `out.hgrm` → `out.skiff.hgrm`.
fn per_system_path(path: &Path, system: &str) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{system}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{system}"),
    };
    path.with_file_name(name)
}

fn write_outputs(
    args: &CompareArgs,
    measured: &[Measured],
    notes: &[(System, String)],
    check: &Option<Result<GeneratorCheck, String>>,
) -> Result<(), BenchError> {
    if let Some(p) = &args.output.json {
        let mut systems = Map::new();
        for m in measured {
            systems.insert(m.system.name().into(), serde_json::to_value(&m.summary).expect("a summary serialises"));
        }
        let mut ratios = Map::new();
        if let Some(s) = measured.iter().find(|m| m.system == System::Skiff) {
            for o in measured.iter().filter(|m| m.system != System::Skiff) {
                let mut r = Map::new();
                for (key, get) in [
                    ("ops_per_sec", (|s: &Summary| Some(s.ops_per_sec)) as fn(&Summary) -> Option<f64>),
                    ("p50_us", |s| s.p50_us.map(|v| v as f64)),
                    ("p90_us", |s| s.p90_us.map(|v| v as f64)),
                    ("p99_us", |s| s.p99_us.map(|v| v as f64)),
                    ("p999_us", |s| s.p999_us.map(|v| v as f64)),
                    ("max_us", |s| s.max_us.map(|v| v as f64)),
                    ("cpu_us_per_op", |s| s.cpu_us_per_op),
                ] {
                    r.insert(key.into(), json!(ratio(get(&s.summary), get(&o.summary))));
                }
                ratios.insert(o.system.name().into(), Value::Object(r));
            }
        }
        let skipped: Map<String, Value> = notes.iter().map(|(s, n)| (s.name().to_string(), json!(n))).collect();
        let check = match check {
            Some(Ok(c)) => json!({
                "test": c.test,
                "requests": c.requests,
                "redis_benchmark_ops_per_sec": c.redis_benchmark_ops_per_sec,
                "skiff_bench_ops_per_sec": c.skiff_bench_ops_per_sec,
                "percent": c.percent(),
            }),
            Some(Err(e)) => json!({ "skipped": e }),
            None => Value::Null,
        };
        let doc = json!({ "systems": systems, "ratios": ratios, "skipped": skipped, "generator_check": check });
        write_output(p, &(serde_json::to_string_pretty(&doc).expect("JSON serialises") + "\n"))?;
    }
    if let Some(p) = &args.output.hgrm {
        for m in measured {
            write_output(&per_system_path(p, m.system.name()), &hgrm(&m.latency))?;
        }
    }
    if let Some(p) = &args.output.plot {
        let series: Vec<(String, &Histogram<u64>)> = measured.iter().map(|m| (m.label.clone(), &m.latency)).collect();
        let w = &args.workload;
        let title = format!(
            "Latency by percentile: {} clients, pipeline {}, {}-byte values, {:.0}% reads",
            w.clients,
            w.pipeline,
            w.value_size,
            w.read_ratio * 100.0
        );
        write_output(p, &crate::plot::svg(&title, &series))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"98039.22\",\"0.279\"\n";
        assert_eq!(parse_redis_benchmark_csv(csv, "SET"), Some(98039.22));
        assert_eq!(parse_redis_benchmark_csv(csv, "GET"), None);
    }

    #[test]
    fn per_system_paths() {
        assert_eq!(per_system_path(Path::new("/o/run.hgrm"), "skiff"), PathBuf::from("/o/run.skiff.hgrm"));
        assert_eq!(per_system_path(Path::new("run"), "etcd"), PathBuf::from("run.etcd"));
    }

    #[test]
    fn ratios_need_both_figures() {
        assert_eq!(ratio(Some(2.0), Some(4.0)), Some(0.5));
        assert_eq!(ratio(Some(2.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
