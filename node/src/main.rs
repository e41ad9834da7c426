//! The `skiff` binary: parses arguments and configuration, then hands over to the
//! library (`skiff_node::server`, `skiff_node::local`).

use std::sync::atomic::Ordering;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use skiff_node::cli::{Cli, Command};
use skiff_node::{local, logging, server};
use skiff_tuning::{Persistence, Topology};

/// mimalloc instead of glibc's allocator: the shard allocates and frees small buffers
/// at a high rate (receive probes, entries, replies), and glibc's heap trimming made
/// those allocations fault fresh pages in again and again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// Exit status of a refused start: 2 when starting again unchanged would be refused
/// again (the systemd unit in docs/operating.md does not restart on it), 1 when the
/// cause may clear by itself (a host name not resolving yet, a port still held).
fn refused(e: &dyn std::fmt::Display, persistence: Persistence) -> i32 {
    eprintln!("skiff: {e}");
    match persistence {
        Persistence::Lasting => 2,
        Persistence::MayClear => 1,
    }
}

fn serve(args: &skiff_node::cli::ServeArgs) -> i32 {
    let fail = |e: &dyn std::fmt::Display| refused(e, Persistence::Lasting);
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
        return refused(&e, e.1);
    }
    logging::set_prefix(format!("node {}: ", cfg.id));
    if let Err(e) = skiff_node::failpoints::arm_from_env() {
        return fail(&e);
    }
    let listeners = match server::bind_listeners(&cfg) {
        Ok(l) => l,
        Err(e) => return refused(&e, e.1),
    };
    let running = match server::start(&cfg, listeners, &topology) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    // SIGTERM and SIGINT ask the shard to stop: it finishes in-flight writes and
    // closes the WAL. A second one exits at once, for a stop that hangs: a write is
    // acknowledged only once it is durable on a majority, so exiting loses none.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            running.request_stop();
            let _ = running.wait();
            return fail(&format!("cannot handle SIGINT and SIGTERM: {e}"));
        }
    };
    let stop = running.stop.clone();
    std::thread::spawn(move || {
        let mut received = signals.forever();
        if let Some(sig) = received.next() {
            log::info!("stopping on a signal ({}); a second signal exits at once", signal_name(sig));
            stop.store(true, Ordering::Relaxed);
        }
        if let Some(sig) = received.next() {
            log::warn!(
                "{} again while stopping: exiting now without waiting for in-flight requests (their outcome is \
                 unknown to their clients; acknowledged writes are already durable)",
                signal_name(sig)
            );
            std::process::exit(128 + sig);
        }
    });
    match running.wait() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skiff: {e}");
            1
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
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
