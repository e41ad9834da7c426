//! The `skiff-bench` binary: parses the command line and hands it to [`skiff_bench::app`].
#![forbid(unsafe_code)]

use clap::Parser;

fn main() {
    let cli = skiff_bench::cli::Cli::parse();
    std::process::exit(skiff_bench::app::main_with(cli));
}
