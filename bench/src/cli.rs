//! Command-line flags, their defaults and bounds, and their validation into a
//! [`RunConfig`]. A value outside its bounds is refused with a message naming the flag.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::BenchError;
use crate::run::{Protocol, RunConfig, RunLength};
use crate::stats::LATENCY_US_MAX;
use crate::workload::{KEYS_MAX, KeyDistribution, ZIPF_KEYS_MAX};

/// Most connections: Skiff's default `max_clients`, and file descriptors to spare.
pub const CLIENTS_MAX: usize = 10_000;
/// Most requests in flight per connection: beyond this the kernel's socket buffers,
/// not the server, set the pace.
pub const PIPELINE_MAX: usize = 1024;
/// Most worker threads: a load generator that needs more is measuring itself.
pub const THREADS_MAX: usize = 64;
/// Longest run or warm-up, in seconds: a week.
pub const DURATION_S_MAX: f64 = 7.0 * 24.0 * 3600.0;
/// Largest value: the Skiff client port's cap on one bulk string.
pub const VALUE_BYTES_MAX: usize = skiff_net::resp::RESP_BULK_BYTES_MAX_DEFAULT;
/// Most request bytes one connection may have in flight (`--pipeline` ×
/// `--value-size`): each connection holds a whole batch in its write buffer, and a
/// batch beyond this is the kernel's socket buffers being measured.
pub const INFLIGHT_BYTES_MAX: usize = 64 << 20;
/// Most request bytes all connections together may have in flight: the generator's
/// write buffers must fit in memory beside the servers it loads.
pub const INFLIGHT_BYTES_TOTAL_MAX: usize = 2 << 30;
/// Highest open-loop rate, requests per second in total.
pub const RATE_MAX: f64 = 100_000_000.0;
/// Default run length when neither --duration nor --requests is given, in seconds.
pub const DURATION_S_DEFAULT: f64 = 10.0;

/// skiff-bench: load Skiff, Redis or etcd and report throughput and honest latency.
///
/// Without a subcommand, runs one workload against --targets (RESP or etcd), or against
/// a Skiff cluster it starts itself with --spawn N. `skiff-bench compare` runs the same
/// workload against a spawned Skiff cluster, Redis and etcd and prints them side by
/// side. See docs/bench.md.
#[derive(Debug, Parser)]
#[command(name = "skiff-bench", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the same workload against a spawned Skiff cluster, a spawned Redis
    /// (appendfsync always) and a spawned etcd cluster, one after another, and print a
    /// side-by-side table with ratios. Systems that are not installed are skipped.
    Compare(CompareArgs),
}

/// What the load is.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Connections, spread round-robin over the targets (1..=10000).
    #[arg(long, short = 'c', default_value_t = 50)]
    pub clients: usize,
    /// Requests in flight per connection (1..=1024): a batch of N in the closed loop,
    /// a window of N in the open loop.
    #[arg(long, short = 'P', default_value_t = 1)]
    pub pipeline: usize,
    /// Length of the measured part of the run, in seconds [default: 10].
    #[arg(long, value_name = "SECONDS", conflicts_with = "requests")]
    pub duration: Option<f64>,
    /// End after this many measured requests (successful or failed) instead.
    #[arg(long, short = 'n', value_name = "N")]
    pub requests: Option<u64>,
    /// Bytes per value written (0..=4194304).
    #[arg(long, short = 'd', value_name = "BYTES", default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys, `key:000000000000` upward.
    #[arg(long, short = 'r', value_name = "N", default_value_t = 100_000)]
    pub keys: u64,
    /// How keys are drawn: `uniform` or `zipf:THETA` (0 < THETA < 1; 0.99 is YCSB's).
    #[arg(long, value_name = "DIST", default_value = "uniform")]
    pub key_distribution: KeyDistribution,
    /// Share of requests that are reads (GET / Range), 0..=1; the rest are writes.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Open loop at this many requests per second in total; latency is then measured
    /// from each request's intended send time. Closed loop when absent.
    #[arg(long, value_name = "OPS")]
    pub rate: Option<f64>,
    /// Seconds of load before measuring starts; excluded from every figure.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    pub warmup: f64,
    /// Worker threads, each with its share of the connections (1..=64).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seconds a request may wait for its reply before it counts as a `timeout` error.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub timeout: f64,
    /// Seed of the key and operation choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Where results go besides the text report.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the HdrHistogram percentile distribution (.hgrm, milliseconds) to FILE;
    /// in `compare`, one file per system (FILE with the system's name before the
    /// extension).
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Draw latency by percentile as SVG into FILE (one curve per system in `compare`).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// No progress lines.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// How spawned Skiff nodes are run.
#[derive(Debug, Clone, Args)]
pub struct SpawnArgs {
    /// The `skiff` binary to spawn [default: `skiff` beside this executable].
    #[arg(long, value_name = "PATH")]
    pub skiff_bin: Option<PathBuf>,
    /// Directory under which a fresh data directory is made for spawned servers (and
    /// removed afterwards); must support O_DIRECT, so not tmpfs.
    #[arg(long, value_name = "DIR", default_value = crate::spawn::DEFAULT_DATA_PARENT)]
    pub data_dir: PathBuf,
    /// An extra argument for every `skiff serve`, e.g. --skiff-arg=--tick-ms=50;
    /// repeatable.
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    pub skiff_arg: Vec<String>,
    /// Which spawned Skiff nodes the clients connect to: `all` (followers relay writes
    /// to the leader) or only the `leader`.
    #[arg(long, value_enum, default_value_t = SendTo::All)]
    pub send_to: SendTo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SendTo {
    All,
    Leader,
}

/// A single run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub spawn_args: SpawnArgs,
    /// Servers to load, HOST:PORT,... [default: 127.0.0.1:6379, or :2379 for etcd].
    #[arg(long, value_name = "HOST:PORT,...", conflicts_with = "spawn")]
    pub targets: Option<String>,
    /// The targets' protocol.
    #[arg(long, value_enum, default_value_t = Protocol::Resp)]
    pub protocol: Protocol,
    /// Start an N-node Skiff cluster (1..=9) for the run, and stop it and remove its
    /// data afterwards.
    #[arg(long, value_name = "N")]
    pub spawn: Option<usize>,
}

/// Systems `compare` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    Skiff,
    Redis,
    Etcd,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Skiff => "skiff",
            System::Redis => "redis",
            System::Etcd => "etcd",
        }
    }
}

/// `compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub spawn_args: SpawnArgs,
    /// Nodes in the Skiff and etcd clusters (1..=9).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Which systems to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "skiff,redis,etcd")]
    pub systems: Vec<System>,
    /// The redis-server binary [default: from PATH].
    #[arg(long, value_name = "PATH")]
    pub redis_bin: Option<PathBuf>,
    /// The etcd binary [default: from PATH].
    #[arg(long, value_name = "PATH")]
    pub etcd_bin: Option<PathBuf>,
    /// Skip the check that runs redis-benchmark with the same clients and pipeline
    /// against the same Redis to show whether skiff-bench keeps up with it.
    #[arg(long)]
    pub no_generator_check: bool,
}

impl OutputArgs {
    /// Refuses an output file whose directory does not exist, before a run that would
    /// then have nowhere to put its results.
    pub fn validate(&self) -> Result<(), BenchError> {
        for (flag, path) in [("--json", &self.json), ("--hgrm", &self.hgrm), ("--plot", &self.plot)] {
            let Some(parent) = path.as_ref().and_then(|p| p.parent()) else { continue };
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                return Err(usage(format!("{flag}: directory {} does not exist", parent.display())));
            }
        }
        Ok(())
    }
}

fn usage(msg: impl Into<String>) -> BenchError {
    BenchError::Usage(msg.into())
}

fn seconds(flag: &str, v: f64, allow_zero: bool) -> Result<Duration, BenchError> {
    let ok = v.is_finite() && v <= DURATION_S_MAX && if allow_zero { v >= 0.0 } else { v > 0.0 };
    if !ok {
        let lower = if allow_zero { "0" } else { "more than 0" };
        return Err(usage(format!("{flag} must be {lower} and at most {DURATION_S_MAX} seconds, not {v}")));
    }
    Ok(Duration::from_secs_f64(v))
}

impl WorkloadArgs {
    /// The run configuration for `targets`, or the first flag out of bounds.
    pub fn validate(&self, protocol: Protocol, targets: Vec<SocketAddr>) -> Result<RunConfig, BenchError> {
        if !(1..=CLIENTS_MAX).contains(&self.clients) {
            return Err(usage(format!("--clients must be between 1 and {CLIENTS_MAX}, not {}", self.clients)));
        }
        if !(1..=PIPELINE_MAX).contains(&self.pipeline) {
            return Err(usage(format!("--pipeline must be between 1 and {PIPELINE_MAX}, not {}", self.pipeline)));
        }
        if !(1..=THREADS_MAX).contains(&self.threads) {
            return Err(usage(format!("--threads must be between 1 and {THREADS_MAX}, not {}", self.threads)));
        }
        if self.threads > self.clients {
            return Err(usage(format!(
                "--threads ({}) is more than --clients ({}): a thread without a connection has nothing to do",
                self.threads, self.clients
            )));
        }
        if self.value_size > VALUE_BYTES_MAX {
            return Err(usage(format!(
                "--value-size must be at most {VALUE_BYTES_MAX} bytes (the client port's cap on one string), not {}",
                self.value_size
            )));
        }
        let batch_bytes = self.pipeline * self.value_size;
        if batch_bytes > INFLIGHT_BYTES_MAX {
            return Err(usage(format!(
                "--pipeline x --value-size is {batch_bytes} bytes in flight per connection; at most {INFLIGHT_BYTES_MAX} (lower one of them)"
            )));
        }
        if batch_bytes * self.clients > INFLIGHT_BYTES_TOTAL_MAX {
            return Err(usage(format!(
                "--clients x --pipeline x --value-size is {} bytes in flight; at most {INFLIGHT_BYTES_TOTAL_MAX} (lower one of them)",
                batch_bytes * self.clients
            )));
        }
        if !(1..=KEYS_MAX).contains(&self.keys) {
            return Err(usage(format!("--keys must be between 1 and {KEYS_MAX}, not {}", self.keys)));
        }
        if matches!(self.key_distribution, KeyDistribution::Zipf(_)) && self.keys > ZIPF_KEYS_MAX {
            return Err(usage(format!(
                "--key-distribution zipf spans at most {ZIPF_KEYS_MAX} keys, not {}",
                self.keys
            )));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err(usage(format!("--read-ratio must be between 0 and 1, not {}", self.read_ratio)));
        }
        if let Some(rate) = self.rate
            && !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX)
        {
            return Err(usage(format!("--rate must be more than 0 and at most {RATE_MAX} requests/s, not {rate}")));
        }
        let length = match (self.duration, self.requests) {
            (_, Some(0)) => return Err(usage("--requests must be at least 1")),
            (_, Some(n)) => RunLength::Requests(n),
            (d, None) => RunLength::Duration(seconds("--duration", d.unwrap_or(DURATION_S_DEFAULT), false)?),
        };
        let timeout = seconds("--timeout", self.timeout, false)?;
        if timeout.as_micros() > u128::from(LATENCY_US_MAX) {
            return Err(usage(format!("--timeout must be at most {} seconds", LATENCY_US_MAX / 1_000_000)));
        }
        Ok(RunConfig {
            protocol,
            targets,
            clients: self.clients,
            pipeline: self.pipeline,
            value_size: self.value_size,
            keys: self.keys,
            key_distribution: self.key_distribution,
            read_ratio: self.read_ratio,
            rate: self.rate,
            length,
            warmup: seconds("--warmup", self.warmup, true)?,
            threads: self.threads,
            timeout,
            seed: self.seed,
        })
    }
}

/// Parses `HOST:PORT,HOST:PORT,...`, resolving each host (the first address wins).
pub fn parse_targets(s: &str) -> Result<Vec<SocketAddr>, BenchError> {
    let bad =
        |entry: &str, reason: &str| BenchError::BadTarget { entry: entry.to_string(), reason: reason.to_string() };
    let mut out = Vec::new();
    for entry in s.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(bad(entry, "empty entry"));
        }
        let Some((host, port)) = entry.rsplit_once(':') else {
            return Err(bad(entry, "no port"));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad(entry, "no host"));
        }
        let port: u16 = port.parse().map_err(|_| bad(entry, "the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad(entry, "port 0 is not a server's port"));
        }
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| bad(entry, &format!("cannot resolve the host: {e}")))?
            .next()
            .ok_or_else(|| bad(entry, "the host resolves to no address"))?;
        out.push(addr);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(args: &[&str]) -> WorkloadArgs {
        let mut v = vec!["skiff-bench"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().run.workload
    }

    #[test]
    fn defaults_are_a_ten_second_closed_loop() {
        let cfg = workload(&[]).validate(Protocol::Resp, vec!["127.0.0.1:1".parse().unwrap()]).unwrap();
        assert_eq!(cfg.length, RunLength::Duration(Duration::from_secs(10)));
        assert_eq!((cfg.clients, cfg.pipeline, cfg.value_size, cfg.threads), (50, 1, 100, 1));
        assert_eq!(cfg.rate, None);
    }

    #[test]
    fn out_of_bounds_values_name_their_flag() {
        let t = || vec!["127.0.0.1:1".parse().unwrap()];
        for (args, flag) in [
            (&["--clients", "0"][..], "--clients"),
            (&["--pipeline", "5000"], "--pipeline"),
            (&["--read-ratio", "1.5"], "--read-ratio"),
            (&["--rate", "0"], "--rate"),
            (&["--duration=-1"], "--duration"),
            (&["--duration", "inf"], "--duration"),
            (&["--requests", "0"], "--requests"),
            (&["--threads", "4", "--clients", "2"], "--threads"),
            (&["--value-size", "99999999"], "--value-size"),
            (&["--value-size", "4000000", "--pipeline", "100"], "--pipeline x --value-size"),
            (&["--value-size", "4000000", "--clients", "1000"], "--clients x --pipeline x --value-size"),
            (&["--keys", "0"], "--keys"),
            (&["--timeout", "0"], "--timeout"),
            (&["--warmup=-2"], "--warmup"),
        ] {
            let err = workload(args).validate(Protocol::Resp, t()).unwrap_err();
            assert!(err.to_string().contains(flag), "{args:?}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        let mut v = vec!["skiff-bench", "--duration", "1", "--requests", "5"];
        assert!(Cli::try_parse_from(&v).is_err(), "duration and requests conflict");
        v = vec!["skiff-bench", "--spawn", "3", "--targets", "127.0.0.1:1"];
        assert!(Cli::try_parse_from(&v).is_err(), "spawn and targets conflict");
    }

    #[test]
    fn targets_parse_or_say_why_not() {
        assert_eq!(parse_targets("127.0.0.1:6379, localhost:7000").unwrap().len(), 2);
        assert_eq!(parse_targets("[::1]:6379").unwrap()[0].port(), 6379);
        for bad in ["", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:0", ":6379", "127.0.0.1:6379,", "no.such.host.invalid:1"]
        {
            let err = parse_targets(bad).unwrap_err();
            assert!(matches!(err, BenchError::BadTarget { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn compare_takes_the_workload_flags() {
        let cli =
            Cli::try_parse_from(["skiff-bench", "compare", "--clients", "64", "--systems", "skiff,etcd"]).unwrap();
        let Some(Command::Compare(c)) = cli.command else { panic!("compare") };
        assert_eq!(c.workload.clients, 64);
        assert_eq!(c.systems, [System::Skiff, System::Etcd]);
    }
}
