//! One measured run against a set of targets: worker threads each drive their share of
//! the connections on a current-thread tokio runtime, the calling thread prints
//! progress once a second, ends the warm-up and the run, and gathers the results and
//! the CPU time spent by the generator and by the watched server processes.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::BenchError;
use crate::report::{fmt_count, fmt_latency_us};
use crate::stats::{Control, Recorder};
use crate::sys;
use crate::workload::{Generator, KeyDistribution, RespTemplates, Zipf};

/// How often the calling thread checks for the end of the run and for an interrupt.
pub const CONTROL_TICK: Duration = Duration::from_millis(50);
/// How often progress is printed: the "at least once a second".
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// How often each worker thread merges its measurements into the shared recorder. Well
/// under the progress interval, so the progress line is at most this stale.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How long the reachability check waits for each target before the run starts.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(3);

/// The wire protocol spoken to the targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// Redis protocol: Skiff or Redis (GET and SET).
    Resp,
    /// etcd's v3 gRPC API (KV Range and Put).
    Etcd,
}

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RunLength {
    Duration(Duration),
    /// This many measured requests (successful or not).
    Requests(u64),
}

/// Everything a run needs, validated.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub protocol: Protocol,
    pub targets: Vec<SocketAddr>,
    /// Connections, spread over the targets round-robin.
    pub clients: usize,
    /// Requests in flight per connection.
    pub pipeline: usize,
    pub value_size: usize,
    pub keys: u64,
    pub key_distribution: KeyDistribution,
    /// Share of requests that are reads, 0..=1.
    pub read_ratio: f64,
    /// Open loop at this many requests per second in total; closed loop when `None`.
    pub rate: Option<f64>,
    pub length: RunLength,
    pub warmup: Duration,
    pub threads: usize,
    pub timeout: Duration,
    pub seed: u64,
}

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// One line rewritten in place (stderr is a terminal).
    Tty,
    /// A line per interval (logs, pipes).
    Plain,
    Off,
}

impl ProgressMode {
    /// `Tty` when stderr is a terminal, `Plain` otherwise; `Off` when `quiet`.
    pub fn detect(quiet: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Off
        } else if std::io::stderr().is_terminal() {
            ProgressMode::Tty
        } else {
            ProgressMode::Plain
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub recorder: Recorder,
    /// From the start of measurement to the last measured request's end (or to the
    /// end of the run's duration, if later).
    pub elapsed: Duration,
    /// CPU time of this process over the measured part.
    pub generator_cpu: Duration,
    /// CPU time of the watched processes (the servers) over the measured part; `None`
    /// when none are watched or one could not be read.
    pub server_cpu: Option<Duration>,
    /// Ended early by SIGINT/SIGTERM.
    pub interrupted: bool,
}

/// Checks that every target accepts a TCP connection.
pub fn check_reachable(targets: &[SocketAddr]) -> Result<(), BenchError> {
    for t in targets {
        TcpStream::connect_timeout(t, REACH_TIMEOUT)
            .map_err(|source| BenchError::Unreachable { target: t.to_string(), source })?;
    }
    Ok(())
}

fn cpu_of(pids: &[u32]) -> Option<Duration> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| sys::process_cpu(p)).sum()
}

/// Runs the workload. `watched` are server pids whose CPU time is measured; `label`
/// prefixes progress lines. Returns [`BenchError::Interrupted`] if interrupted before
/// measuring began.
pub fn run(
    cfg: &RunConfig,
    watched: &[u32],
    interrupt: &AtomicBool,
    progress: ProgressMode,
    label: &str,
) -> Result<RunResult, BenchError> {
    check_reachable(&cfg.targets)?;
    let zipf = match cfg.key_distribution {
        KeyDistribution::Zipf(theta) => Some(Zipf::new(cfg.keys, theta)),
        KeyDistribution::Uniform => None,
    };
    let requests = match cfg.length {
        RunLength::Requests(n) => Some(n),
        RunLength::Duration(_) => None,
    };
    let control = Arc::new(Control::new(requests));
    let shared = Arc::new(Mutex::new(Recorder::default()));
    let mut measure: Option<(Instant, Duration, Option<Duration>)> = None;
    if cfg.warmup.is_zero() {
        measure = Some((control.start_measuring(), sys::self_cpu(), cpu_of(watched)));
    }
    // Without a warm-up the open-loop schedule starts with measurement, so no request
    // falls due before it (and escapes the budget).
    let start = measure.map_or_else(Instant::now, |m| m.0);
    let cfg_shared = Arc::new(cfg.clone());
    let mut workers = Vec::with_capacity(cfg.threads);
    for t in 0..cfg.threads {
        let (cfg, control, shared, zipf) = (cfg_shared.clone(), control.clone(), shared.clone(), zipf.clone());
        let handle = std::thread::Builder::new()
            .name(format!("skiff-bench-{t}"))
            .spawn(move || worker(t, &cfg, zipf, start, &control, &shared))
            .map_err(|e| BenchError::io("cannot start a worker thread", e))?;
        workers.push(handle);
    }

    let mut printer = Progress::new(progress, label, start);
    let mut interrupted = false;
    let mut stopped_at = None;
    loop {
        std::thread::sleep(CONTROL_TICK);
        let now = Instant::now();
        if interrupt.load(Ordering::Relaxed) {
            interrupted = true;
            control.stop();
            stopped_at = Some(now);
            break;
        }
        if measure.is_none() && now >= start + cfg.warmup {
            measure = Some((control.start_measuring(), sys::self_cpu(), cpu_of(watched)));
        }
        if let Some((m, _, _)) = measure
            && let RunLength::Duration(d) = cfg.length
            && now >= m + d
        {
            control.stop();
            stopped_at = Some(m + d);
            break;
        }
        if workers.iter().all(|w| w.is_finished()) {
            break;
        }
        printer.tick(now, measure.map(|m| m.0), &shared);
    }
    for w in workers {
        if w.join().is_err() {
            return Err(BenchError::io("a worker thread panicked", std::io::Error::other("see the message above")));
        }
    }
    printer.finish();
    let Some((measure_start, cpu0, server_cpu0)) = measure else {
        return Err(BenchError::Interrupted);
    };
    let generator_cpu = sys::self_cpu().saturating_sub(cpu0);
    let server_cpu = match (server_cpu0, cpu_of(watched)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let recorder = std::mem::take(&mut *shared.lock().expect("workers have finished"));
    let end = match (stopped_at, recorder.last_done) {
        (Some(s), Some(d)) => s.max(d),
        (Some(s), None) => s,
        (None, Some(d)) => d,
        (None, None) => Instant::now(),
    };
    Ok(RunResult {
        recorder,
        elapsed: end.saturating_duration_since(measure_start),
        generator_cpu,
        server_cpu,
        interrupted,
    })
}

/// Seeds differ per connection and caller but follow from `--seed`.
fn seed_for(base: u64, conn: usize, caller: usize) -> u64 {
    base ^ (conn as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (caller as u64).wrapping_mul(0xD1B5_4A32_D192_ED03)
}

/// One worker thread: its connections on a current-thread runtime.
fn worker(
    t: usize,
    cfg: &RunConfig,
    zipf: Option<Zipf>,
    start: Instant,
    control: &Arc<Control>,
    shared: &Arc<Mutex<Recorder>>,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    let rec = Rc::new(RefCell::new(Recorder::default()));
    let templates = Rc::new(RespTemplates::new(cfg.value_size));
    let value = Bytes::from(vec![b'x'; cfg.value_size]);
    let interval = cfg.rate.map(|r| Duration::from_secs_f64(cfg.clients as f64 / r));
    local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for conn in (t..cfg.clients).step_by(cfg.threads) {
            let target = cfg.targets[conn % cfg.targets.len()];
            // Connections start staggered over one interval, so an open loop does not
            // send in bursts of `clients` requests.
            let schedule = interval
                .map(|i| (i, start + Duration::from_secs_f64(i.as_secs_f64() * conn as f64 / cfg.clients as f64)));
            let generator =
                |caller| Generator::new(seed_for(cfg.seed, conn, caller), cfg.keys, zipf.clone(), cfg.read_ratio);
            let task = match cfg.protocol {
                crate::run::Protocol::Resp => {
                    let spec = crate::resp::ConnSpec {
                        target,
                        pipeline: cfg.pipeline,
                        timeout: cfg.timeout,
                        generator: generator(0),
                        schedule,
                    };
                    tokio::task::spawn_local(crate::resp::run_connection(
                        spec,
                        templates.clone(),
                        control.clone(),
                        rec.clone(),
                    ))
                }
                crate::run::Protocol::Etcd => {
                    let spec = crate::etcd::EtcdSpec {
                        target,
                        pipeline: cfg.pipeline,
                        timeout: cfg.timeout,
                        value: value.clone(),
                        generators: (0..cfg.pipeline).map(generator).collect(),
                        schedule,
                    };
                    tokio::task::spawn_local(crate::etcd::run_client(spec, control.clone(), rec.clone()))
                }
            };
            tasks.push(task);
        }
        let flusher = {
            let (rec, shared) = (rec.clone(), shared.clone());
            tokio::task::spawn_local(async move {
                loop {
                    tokio::time::sleep(FLUSH_INTERVAL).await;
                    shared.lock().expect("no panics while locked").drain_from(&mut rec.borrow_mut());
                }
            })
        };
        for task in tasks {
            let _ = task.await;
        }
        flusher.abort();
    });
    shared.lock().expect("no panics while locked").drain_from(&mut rec.borrow_mut());
}

/// The progress line: elapsed time, throughput over the last interval, errors and the
/// p99 so far.
struct Progress<'a> {
    mode: ProgressMode,
    label: &'a str,
    start: Instant,
    last_print: Instant,
    last_done: u64,
    printed_tty: bool,
}

impl<'a> Progress<'a> {
    fn new(mode: ProgressMode, label: &'a str, start: Instant) -> Progress<'a> {
        Progress { mode, label, start, last_print: start, last_done: 0, printed_tty: false }
    }

    fn tick(&mut self, now: Instant, measure_start: Option<Instant>, shared: &Mutex<Recorder>) {
        if self.mode == ProgressMode::Off || now < self.last_print + PROGRESS_INTERVAL {
            return;
        }
        let (done, errors, p99) = {
            let r = shared.lock().expect("no panics while locked");
            let p99 = (!r.latency.is_empty()).then(|| r.latency.value_at_quantile(0.99));
            (r.ops() + r.errors.total() + r.unmeasured, r.errors.total(), p99)
        };
        let secs = (now - self.last_print).as_secs_f64();
        let rate = (done - self.last_done.min(done)) as f64 / secs;
        self.last_print = now;
        self.last_done = done;
        let phase = match measure_start {
            None => format!("warm-up {:>4.0}s", (now - self.start).as_secs_f64()),
            Some(m) => format!("{:>12.0}s", (now - m).as_secs_f64()),
        };
        let line = format!(
            "{}{phase}  {:>11} ops/s  errors {:<8}  p99 {}",
            if self.label.is_empty() { String::new() } else { format!("{} ", self.label) },
            fmt_count(rate.round() as u64),
            fmt_count(errors),
            p99.map_or("-".to_string(), fmt_latency_us),
        );
        let mut err = std::io::stderr().lock();
        if self.mode == ProgressMode::Tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            self.printed_tty = true;
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.printed_tty {
            eprintln!();
        }
    }
}
