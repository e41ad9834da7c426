//! The program's flow: install the interrupt flag, then either one run (against
//! `--targets` or a `--spawn`ed cluster) or `compare`, then the report and the output
//! files. Spawned servers are stopped on every path out, by their guards.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::cli::{Cli, Command, OutputArgs, RunArgs, SendTo, parse_targets};
use crate::error::BenchError;
use crate::report::{Summary, hgrm};
use crate::run::{self, ProgressMode, Protocol};
use crate::spawn::{self, SPAWN_NODES_MAX};

/// Exit status of a run that was interrupted after it began measuring (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Runs the command line; returns the process exit status.
pub fn main_with(cli: Cli) -> i32 {
    // SIGINT/SIGTERM only set this flag: every wait polls it, so spawned servers are
    // stopped and their data removed before the process exits.
    let interrupt = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, interrupt.clone()) {
            eprintln!("skiff-bench: cannot install a handler for signal {sig}: {e}");
            return 1;
        }
    }
    let result = match &cli.command {
        Some(Command::Compare(args)) => crate::compare::run(args, &interrupt),
        None => single(&cli.run, &interrupt),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff-bench: {e}");
            e.exit_code()
        }
    }
}

/// Writes `contents` to `path`.
pub fn write_output(path: &Path, contents: &str) -> Result<(), BenchError> {
    std::fs::write(path, contents).map_err(|source| BenchError::Output { path: path.to_path_buf(), source })
}

fn single(args: &RunArgs, interrupt: &AtomicBool) -> Result<i32, BenchError> {
    // Every flag is checked before anything is started.
    let mut cfg = args.workload.validate(args.protocol, Vec::new())?;
    args.output.validate()?;
    let mut cluster = None;
    let system;
    match args.spawn {
        Some(n) => {
            if !(1..=SPAWN_NODES_MAX).contains(&n) {
                return Err(BenchError::Usage(format!("--spawn must be between 1 and {SPAWN_NODES_MAX}, not {n}")));
            }
            if args.protocol != Protocol::Resp {
                return Err(BenchError::Usage("--spawn starts Skiff, which speaks RESP: drop --protocol etcd".into()));
            }
            let bin = args.spawn_args.skiff_bin.clone().unwrap_or_else(spawn::default_skiff_bin);
            let c = spawn::start_skiff(&bin, n, &args.spawn_args.data_dir, &args.spawn_args.skiff_arg, interrupt)?;
            cfg.targets = match args.spawn_args.send_to {
                SendTo::All => c.nodes.iter().map(|n| n.client).collect(),
                SendTo::Leader => c.nodes.iter().filter(|n| n.id == c.leader).map(|n| n.client).collect(),
            };
            system = "skiff";
            cluster = Some(c);
        }
        None => {
            cfg.targets = match &args.targets {
                Some(s) => parse_targets(s)?,
                None => vec![match args.protocol {
                    Protocol::Resp => ([127, 0, 0, 1], 6379).into(),
                    Protocol::Etcd => ([127, 0, 0, 1], 2379).into(),
                }],
            };
            system = "targets";
        }
    }
    let watched = cluster.as_ref().map(|c| c.procs.pids()).unwrap_or_default();
    let result = run::run(&cfg, &watched, interrupt, ProgressMode::detect(args.output.quiet), "")?;
    let summary = Summary::new(system, &cfg, &result, watched.len());
    print!("{}", summary.text());
    write_outputs(&args.output, &summary, &result.recorder.latency)?;
    if let Some(mut c) = cluster {
        c.procs.shutdown();
        eprintln!("skiff-bench: stopped the skiff cluster and removed {}", c.procs.dir().display());
    }
    Ok(if result.interrupted { EXIT_INTERRUPTED } else { 0 })
}

fn write_outputs(out: &OutputArgs, summary: &Summary, h: &hdrhistogram::Histogram<u64>) -> Result<(), BenchError> {
    if let Some(p) = &out.json {
        write_output(p, &(serde_json::to_string_pretty(summary).expect("a summary serialises") + "\n"))?;
    }
    if let Some(p) = &out.hgrm {
        write_output(p, &hgrm(h))?;
    }
    if let Some(p) = &out.plot {
        let title = format!("{}: latency by percentile", summary.system);
        write_output(p, &crate::plot::svg(&title, &[(summary.system.clone(), h)]))?;
    }
    Ok(())
}
