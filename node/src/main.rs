//! The `skiff` binary: parses arguments and configuration, then hands over to the
//! library (`skiff_node::server`, `skiff_node::local`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Parser;
use skiff_node::cli::{Cli, Command};
use skiff_node::{local, logging, server};
use skiff_tuning::Topology;

fn main() {
    let cli = Cli::parse();
    logging::init();
    let code = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Local(args) => local::run(&args),
        Command::Tune => tune(),
    };
    std::process::exit(code);
}

fn serve(args: &skiff_node::cli::ServeArgs) -> i32 {
    let fail = |e: &dyn std::fmt::Display| {
        eprintln!("skiff: {e}");
        2
    };
    let overrides = match args.overrides() {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    let cfg = match skiff_tuning::load(args.config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let topology = match Topology::discover() {
        Ok(t) => t,
        Err(e) => return fail(&format!("cannot read this machine's CPU topology: {e}")),
    };
    if let Err(e) = cfg.validate(&topology) {
        return fail(&e);
    }
    logging::set_prefix(format!("node {}: ", cfg.id));
    let listeners = match server::bind_listeners(&cfg) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    let running = match server::start(&cfg, listeners, &topology) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // SIGTERM and SIGINT ask the shard to stop: it finishes in-flight writes and
    // closes the WAL.
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, signalled.clone());
    }
    let stop = running.stop.clone();
    std::thread::spawn(move || {
        while !signalled.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
        log::info!("stopping on a signal");
        stop.store(true, Ordering::Relaxed);
    });
    match running.wait() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skiff: {e}");
            1
        }
    }
}

fn tune() -> i32 {
    let t = match Topology::discover() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("skiff tune: {e}");
            return 1;
        }
    };
    println!("online CPUs: {}", t.describe());
    for c in &t.cpus {
        println!("  cpu {:>3}: core {:>3}, package {}, NUMA node {}", c.id, c.core, c.package, c.numa_node);
    }
    // Leave CPU 0 to interrupts and housekeeping when there is a choice (glommio's
    // guidance); take the last CPU otherwise.
    let pick = t.cpus.iter().rev().find(|c| c.id != 0).or(t.cpus.first());
    if let Some(c) = pick {
        println!("suggested: cpu = {}  numa_node = {}", c.id, c.numa_node);
        println!("  (one shard per node; put the data directory's disk interrupts on another CPU when you can)");
    }
    0
}
