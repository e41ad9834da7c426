//! `skiff-chaos`: runs a chaos test against real Skiff processes, or checks a saved
//! history again.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "skiff-chaos", about = "Drive Skiff nodes through faults and check what clients saw")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a saved history (JSON lines) for linearizability.
    Check {
        /// The history file a run saved.
        file: std::path::PathBuf,
        /// Search steps allowed per key.
        #[arg(long, default_value_t = skiff_chaos::check::STEPS_MAX_PER_KEY_DEFAULT)]
        steps_max_per_key: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { file, steps_max_per_key } => {
            let f = match std::fs::File::open(&file) {
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
    }
}
