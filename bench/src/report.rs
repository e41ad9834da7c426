//! The summary of a run and its renderings: the text report, `--json`, and the
//! HdrHistogram percentile distribution (`--hgrm`).
//!
//! Latency figures exist only when something was measured: a run with no successful
//! request reports `null` (JSON) or `-` (text), never a number. Errors are counted by
//! kind and never enter the throughput.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::run::{RunConfig, RunLength, RunResult};

/// The `.hgrm` table's resolution: HdrHistogram's and wrk2's default of five
/// percentile ticks per halving of the distance to 100%.
pub const HGRM_TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per millisecond: `.hgrm` values are printed in milliseconds, as wrk2
/// and Skiff's admin port print them.
const US_PER_MS: f64 = 1000.0;

/// The workload, as the report states it.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadSummary {
    pub protocol: String,
    pub targets: Vec<String>,
    pub clients: usize,
    pub pipeline: usize,
    pub threads: usize,
    pub value_size: usize,
    pub keys: u64,
    pub key_distribution: String,
    pub read_ratio: f64,
    /// Open-loop rate in requests per second; `null` for a closed loop.
    pub rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_s: f64,
    pub timeout_s: f64,
}

impl WorkloadSummary {
    pub fn of(cfg: &RunConfig) -> WorkloadSummary {
        WorkloadSummary {
            protocol: format!("{:?}", cfg.protocol).to_lowercase(),
            targets: cfg.targets.iter().map(|t| t.to_string()).collect(),
            clients: cfg.clients,
            pipeline: cfg.pipeline,
            threads: cfg.threads,
            value_size: cfg.value_size,
            keys: cfg.keys,
            key_distribution: cfg.key_distribution.to_string(),
            read_ratio: cfg.read_ratio,
            rate: cfg.rate,
            duration_s: match cfg.length {
                RunLength::Duration(d) => Some(d.as_secs_f64()),
                RunLength::Requests(_) => None,
            },
            requests: match cfg.length {
                RunLength::Requests(n) => Some(n),
                RunLength::Duration(_) => None,
            },
            warmup_s: cfg.warmup.as_secs_f64(),
            timeout_s: cfg.timeout.as_secs_f64(),
        }
    }
}

/// What `--json` writes for one run (and, per system, for `compare`).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// What was measured: `skiff`, `redis`, `etcd`, or `targets`.
    pub system: String,
    /// Successful requests per second over the measured time.
    pub ops_per_sec: f64,
    /// Latency percentiles of successful requests, microseconds; `null` if none.
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
    pub mean_us: Option<f64>,
    /// Failed requests (all kinds); not part of `ops_per_sec`.
    pub errors: u64,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// CPU time of the server processes per successful request, microseconds; `null`
    /// unless the servers were spawned by this run.
    pub cpu_us_per_op: Option<f64>,
    pub server_cpu_s: Option<f64>,
    pub server_processes: usize,
    /// This generator's own CPU time over the measured part.
    pub generator_cpu_s: f64,
    pub generator_cpu_us_per_op: Option<f64>,
    /// The generator's CPU time as a share of the measured time: near 100 × threads
    /// means the generator, not the server, is the limit.
    pub generator_cpu_percent: f64,
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    pub duration_s: f64,
    pub connect_failures: u64,
    /// Open loop: requests that were due by the end of the run but not sent, waiting
    /// for room in the window (never answered, so not in any figure). More than one
    /// per connection means the server fell behind the rate.
    pub unsent_at_end: u64,
    /// Latency is measured from each request's intended send time (open loop) or
    /// from its send (closed loop).
    pub latency_from: String,
    pub interrupted: bool,
    pub workload: WorkloadSummary,
}

impl Summary {
    pub fn new(system: &str, cfg: &RunConfig, result: &RunResult, server_processes: usize) -> Summary {
        let r = &result.recorder;
        let h = &r.latency;
        let ops = r.ops();
        let secs = result.elapsed.as_secs_f64();
        let q = |q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q));
        let per_op = |d: std::time::Duration| (ops > 0).then(|| d.as_secs_f64() * 1e6 / ops as f64);
        Summary {
            system: system.to_string(),
            ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: (!h.is_empty()).then(|| h.max()),
            mean_us: (!h.is_empty()).then(|| h.mean()),
            errors: r.errors.total(),
            errors_by_kind: r.errors.sorted().into_iter().collect(),
            cpu_us_per_op: result.server_cpu.and_then(per_op),
            server_cpu_s: result.server_cpu.map(|d| d.as_secs_f64()),
            server_processes,
            generator_cpu_s: result.generator_cpu.as_secs_f64(),
            generator_cpu_us_per_op: per_op(result.generator_cpu),
            generator_cpu_percent: if secs > 0.0 { result.generator_cpu.as_secs_f64() / secs * 100.0 } else { 0.0 },
            ops,
            reads: r.reads,
            writes: r.writes,
            duration_s: secs,
            connect_failures: r.connect_failures,
            unsent_at_end: r.unsent,
            latency_from: if cfg.rate.is_some() { "intended send time" } else { "send" }.to_string(),
            interrupted: result.interrupted,
            workload: WorkloadSummary::of(cfg),
        }
    }

    /// The text report.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let w = &self.workload;
        let lat = |v: Option<u64>| v.map_or("-".to_string(), fmt_latency_us);
        let _ = writeln!(out, "{}", self.workload_line());
        if self.interrupted {
            let _ = writeln!(out, "  (interrupted: figures cover the part that ran)");
        }
        let _ = writeln!(
            out,
            "  throughput  {} ops/s   ({} ops in {:.2} s: {} reads, {} writes)",
            fmt_count(self.ops_per_sec.round() as u64),
            fmt_count(self.ops),
            self.duration_s,
            fmt_count(self.reads),
            fmt_count(self.writes)
        );
        let kinds: Vec<String> = self.errors_by_kind.iter().map(|(k, c)| format!("{k} {}", fmt_count(*c))).collect();
        let _ = writeln!(
            out,
            "  errors      {}{}",
            fmt_count(self.errors),
            if kinds.is_empty() { String::new() } else { format!("   ({})", kinds.join(", ")) }
        );
        if self.unsent_at_end > 0 {
            let _ = writeln!(
                out,
                "  backlog     {} requests were due but still waiting for a free --pipeline slot when the run ended{}",
                fmt_count(self.unsent_at_end),
                // A few are the window at work; many more than one per connection
                // mean the rate was more than the server could answer.
                if self.unsent_at_end > self.workload.clients as u64 {
                    " (more than one per connection: the server fell behind --rate)"
                } else {
                    ""
                }
            );
        }
        if self.connect_failures > 0 {
            let _ = writeln!(out, "  reconnects  {} failed connection attempts", fmt_count(self.connect_failures));
        }
        let _ = writeln!(
            out,
            "  latency     p50 {}   p90 {}   p99 {}   p99.9 {}   max {}   (from each request's {})",
            lat(self.p50_us),
            lat(self.p90_us),
            lat(self.p99_us),
            lat(self.p999_us),
            lat(self.max_us),
            self.latency_from
        );
        let _ = writeln!(
            out,
            "  generator   CPU {:.2} s = {:.0}% of one core{}{}",
            self.generator_cpu_s,
            self.generator_cpu_percent,
            self.generator_cpu_us_per_op.map_or(String::new(), |v| format!(", {v:.1} µs/op")),
            if self.generator_cpu_percent > 90.0 * w.threads as f64 {
                "   (near saturation: add --threads, or the generator limits the figures)"
            } else {
                ""
            }
        );
        match (self.server_cpu_s, self.cpu_us_per_op) {
            (Some(cpu), Some(per_op)) => {
                let _ = writeln!(
                    out,
                    "  servers     CPU {cpu:.2} s over {} process{}, {per_op:.1} µs/op",
                    self.server_processes,
                    if self.server_processes == 1 { "" } else { "es" }
                );
            }
            (Some(cpu), None) => {
                let _ = writeln!(out, "  servers     CPU {cpu:.2} s (no successful request to divide by)");
            }
            _ => {}
        }
        out
    }

    fn workload_line(&self) -> String {
        let w = &self.workload;
        let length = match (w.duration_s, w.requests) {
            (Some(d), _) => format!("{d} s"),
            (None, Some(n)) => format!("{} requests", fmt_count(n)),
            _ => String::new(),
        };
        format!(
            "{} ({}): {} clients over {} target{} ({} thread{}), pipeline {}, {}-byte values, {} keys {}, {:.0}% reads, {}, {}{}",
            self.system,
            w.protocol,
            w.clients,
            w.targets.len(),
            if w.targets.len() == 1 { "" } else { "s" },
            w.threads,
            if w.threads == 1 { "" } else { "s" },
            w.pipeline,
            w.value_size,
            fmt_count(w.keys),
            w.key_distribution,
            w.read_ratio * 100.0,
            w.rate.map_or("closed loop".to_string(), |r| format!("open loop at {} ops/s", fmt_count(r as u64))),
            length,
            if w.warmup_s > 0.0 { format!(" after {} s warm-up", w.warmup_s) } else { String::new() },
        )
    }
}

/// `12345678` as `12,345,678`.
pub fn fmt_count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in microseconds, in µs below 1 ms and in ms (3 decimals) above.
pub fn fmt_latency_us(us: u64) -> String {
    if us < 1000 { format!("{us} µs") } else { format!("{:.3} ms", us as f64 / US_PER_MS) }
}

/// The percentile distribution in HdrHistogram's `.hgrm` text format, values in
/// milliseconds, as `HistogramLogProcessor`, `outputPercentileDistribution` and wrk2
/// print it (and as Skiff's admin port serves its histograms), readable by
/// HdrHistogram's plotter.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = write!(out, "{:>12} {:>14} {:>10} {:>14}\n\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)");
    let mut total = 0u64;
    for v in h.iter_quantiles(HGRM_TICKS_PER_HALF_DISTANCE) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / US_PER_MS;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10} {:14.2}", 1.0 / (1.0 - q));
        } else {
            let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
        }
    }
    let sub_buckets = (2 * 10u64.pow(u32::from(h.sigfig()))).next_power_of_two();
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / US_PER_MS, h.stdev() / US_PER_MS, h.max() as f64 / US_PER_MS)
    };
    let _ = writeln!(out, "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]");
    let _ = writeln!(out, "#[Max     = {max:12.3}, Total count    = {:12}]", h.len());
    let _ = writeln!(out, "#[Buckets = {:12}, SubBuckets     = {:12}]", h.buckets(), sub_buckets);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::new_histogram;

    #[test]
    fn counts_and_latencies_format() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1000), "1,000");
        assert_eq!(fmt_count(12_345_678), "12,345,678");
        assert_eq!(fmt_latency_us(999), "999 µs");
        assert_eq!(fmt_latency_us(1234), "1.234 ms");
    }

    #[test]
    fn hgrm_has_the_table_and_footer() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let text = hgrm(&h);
        let rows: Vec<Vec<&str>> =
            text.lines().skip(2).take_while(|l| !l.starts_with('#')).map(|l| l.split_whitespace().collect()).collect();
        assert!(rows.len() > 10);
        assert_eq!(rows.last().unwrap()[1], "1.000000000000");
        assert_eq!(rows.last().unwrap()[2], "1000");
        assert!(text.contains("Total count    =         1000]"), "{text}");
        assert!(hgrm(&new_histogram()).contains("Total count    =            0]"));
    }
}
