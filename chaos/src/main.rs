//! `skiff-chaos`: runs a chaos test against real Skiff processes (the default), or
//! checks a saved history again (`skiff-chaos check FILE`). Exit status: 0 the run
//! passed, 1 it found a problem (saved to the directory it names), 2 it could not run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use skiff_chaos::runner::{Config, SOAK_NODE_FLAGS};

#[derive(Debug, Parser)]
#[command(
    name = "skiff-chaos",
    about = "Drive Skiff nodes through crashes, pauses, partitions and disk damage, and check what clients saw",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a saved history (JSON lines) for linearizability.
    Check {
        /// The history.jsonl a run saved.
        file: PathBuf,
        /// Search steps allowed per key.
        #[arg(long, default_value_t = skiff_chaos::check::STEPS_MAX_PER_KEY_DEFAULT)]
        steps_max_per_key: u64,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Seed of the fault schedule and the workload's choices (default: from the clock;
    /// printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// How long to inject faults: 90s, 30m, 2h (at least until every kind came up once).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds, comma-separated: all, crash (every crash point), or names such as
    /// kill, kill-leader, pause, pause-leader, partition-leader, partition-minority,
    /// partition-one-way, net-loss-delay, crash:wal-before-write, fsync-eio, wal-tail,
    /// cluster-restart, slow-election.
    #[arg(long, default_value = "all", value_parser = parse_kinds)]
    faults: Kinds,
    /// Number of nodes (odd).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=7))]
    nodes: u64,
    /// The skiff binary, built with the failpoints feature (default: the skiff beside
    /// this executable; build both with `cargo build --release --target-dir target/chaos
    /// -p skiff-node --features failpoints -p skiff-chaos`).
    #[arg(long)]
    skiff_bin: Option<PathBuf>,
    /// Where the run's directory goes; it must support O_DIRECT (not tmpfs).
    #[arg(long, default_value = "/var/tmp")]
    work_dir: PathBuf,
    /// Client threads.
    #[arg(long, default_value_t = 6)]
    clients: u32,
    /// Keys in use at once.
    #[arg(long, default_value_t = 5)]
    keys: usize,
    /// Operations a key takes before a fresh key replaces it.
    #[arg(long, default_value_t = 200)]
    ops_per_key: u64,
    /// Workload before the first fault.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    /// Workload after the faults are healed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    cooldown: Duration,
    /// Keep the run's directory even when it passes.
    #[arg(long)]
    keep: bool,
    /// Print only the report.
    #[arg(long)]
    quiet: bool,
    /// Flags for every `skiff serve`, replacing the runner's own of the same name:
    /// `-- --tick-ms 20 --snapshot-log-bytes 8192`.
    #[arg(last = true)]
    serve_flags: Vec<String>,
}

/// A list of fault kinds (its own type: clap takes a `Vec` field for a repeated flag).
#[derive(Clone, Debug)]
struct Kinds(Vec<skiff_chaos::FaultKind>);

fn parse_kinds(s: &str) -> Result<Kinds, String> {
    skiff_chaos::faults::parse_kinds(s).map(Kinds)
}

/// `90s`, `30m`, `2h`, `500ms`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration such as 90s, 30m or 2h"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}`: the unit must be ms, s, m or h")),
    })
}

/// The default node flags with `extra` replacing any of the same name.
fn serve_flags(extra: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for pair in SOAK_NODE_FLAGS.chunks(2) {
        if !extra.iter().any(|e| e == pair[0] || e.starts_with(&format!("{}=", pair[0]))) {
            out.extend(pair.iter().map(|s| s.to_string()));
        }
    }
    out.extend(extra.iter().cloned());
    out
}

fn check_file(file: &PathBuf, steps_max_per_key: u64) -> ExitCode {
    let f = match std::fs::File::open(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("skiff-chaos: cannot open {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let ops = match skiff_chaos::history::read_jsonl(std::io::BufReader::new(f)) {
        Ok(ops) => ops,
        Err(e) => {
            eprintln!("skiff-chaos: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let rep = skiff_chaos::check(&ops, &skiff_chaos::CheckOptions { steps_max_per_key });
    println!("{} operations on {} keys: {}", rep.ops, rep.keys, rep.verdict());
    for v in &rep.violations {
        println!("{v}");
    }
    for (k, steps) in &rep.too_hard {
        println!("key {k}: undecided after {steps} search steps");
    }
    if rep.verdict() == skiff_chaos::Verdict::Linearizable { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Cmd::Check { file, steps_max_per_key }) = &cli.cmd {
        return check_file(file, *steps_max_per_key);
    }
    let a = cli.run;
    let skiff_bin = match a.skiff_bin {
        Some(p) => p,
        None => match std::env::current_exe() {
            Ok(me) => me.with_file_name("skiff"),
            Err(e) => {
                eprintln!("skiff-chaos: cannot find this executable ({e}); give --skiff-bin");
                return ExitCode::from(2);
            }
        },
    };
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
            % 1_000_000_000
    });
    if let Err(e) = skiff_chaos::procs::install_interrupt_handler() {
        eprintln!("skiff-chaos: cannot handle Ctrl-C ({e}); nodes may be left running if interrupted");
    }
    let mut cfg = Config::soak(skiff_bin, seed, a.duration);
    cfg.nodes = a.nodes;
    cfg.faults = a.faults.0;
    cfg.work_dir = a.work_dir;
    cfg.clients = a.clients;
    cfg.keys = a.keys;
    cfg.ops_per_key = a.ops_per_key.min(skiff_chaos::workload::VALUE_STRIDE as u64 - 1);
    cfg.warmup = a.warmup;
    cfg.cooldown = a.cooldown;
    cfg.keep = a.keep;
    cfg.verbose = !a.quiet;
    cfg.node_flags = serve_flags(&a.serve_flags);
    println!("skiff-chaos: seed {seed} (reproduce the schedule with --seed {seed})");
    match skiff_chaos::run(&cfg) {
        Ok(report) => {
            println!("{report}");
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("skiff-chaos: {e} (seed {seed})");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["skiff-chaos", "--faults", "kill,crash", "--seed", "3"]).unwrap();
        assert_eq!(cli.run.faults.0.len(), 11);
        assert!(Cli::try_parse_from(["skiff-chaos", "check", "h.jsonl"]).is_ok());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn serve_flags_replace_the_defaults_of_the_same_name() {
        let f = serve_flags(&["--tick-ms".into(), "20".into()]);
        assert_eq!(f.iter().filter(|x| *x == "--tick-ms").count(), 1);
        assert!(f.windows(2).any(|w| w[0] == "--tick-ms" && w[1] == "20"));
        assert!(f.contains(&"--election-ticks".to_string()));
    }
}
