//! What a run measures: the latency histogram of successful requests, counts of reads
//! and writes, errors by kind, and the control every connection consults (warm-up or
//! measuring, the request budget, stop).
//!
//! Each worker thread records into its own [`Recorder`] (no lock on the hot path) and
//! merges it into the shared one a few times a second, for the progress line and, at
//! the end, for the report.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histogram tracks, in microseconds: one hour. Anything slower
/// is recorded as one hour (and the request timeout ends requests long before).
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept: values within 0.1%, as wrk2 and HdrHistogram's
/// defaults; 3 digits over 1 µs..1 h cost about 200 KiB per histogram.
pub const LATENCY_SIGFIG: u8 = 3;
/// Distinct error kinds tracked by name; further kinds are counted as `other`. Error
/// texts come from the server, so their variety must be bounded.
pub const ERROR_KINDS_MAX: usize = 32;
/// Longest error kind kept (a server's first word of an error reply).
pub const ERROR_KIND_BYTES_MAX: usize = 32;

/// Kinds the generator itself observes (lowercase, unlike server error codes).
pub mod kind {
    /// No reply within `--timeout`: the connection is closed and reopened, since a
    /// RESP reply cannot be skipped.
    pub const TIMEOUT: &str = "timeout";
    /// The connection broke with the request in flight, or was down when the request
    /// was due (open loop).
    pub const CONNECTION: &str = "connection";
    /// The reply could not be decoded; the connection is closed and reopened.
    pub const PROTOCOL: &str = "protocol";
    /// A reply of the wrong type for the request (e.g. SET not answered `+OK`).
    pub const UNEXPECTED: &str = "unexpected";
    /// An error reply whose first word is not an error code.
    pub const ERROR: &str = "error";
    /// Past [`super::ERROR_KINDS_MAX`] distinct kinds.
    pub const OTHER: &str = "other";
}

/// A new, empty latency histogram (microseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG).expect("static bounds are valid")
}

/// The kind of a RESP error reply: its first word when that is an error code
/// (uppercase letters, digits, `_` or `-`: `TRYAGAIN`, `ERR`, `OVERLOADED`), as Redis
/// and Skiff start their errors; otherwise [`kind::ERROR`].
pub fn error_reply_kind(text: &[u8]) -> &str {
    let word = text.split(|&b| b == b' ').next().unwrap_or_default();
    let is_code = !word.is_empty()
        && word.len() <= ERROR_KIND_BYTES_MAX
        && word.iter().all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if is_code { std::str::from_utf8(word).unwrap_or(kind::ERROR) } else { kind::ERROR }
}

/// Error counts by kind, in the order kinds were first seen. Looking up a kind seen
/// before allocates nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    kinds: Vec<(String, u64)>,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Some((_, c)) = self.kinds.iter_mut().find(|(k, _)| k == kind) {
            *c += n;
        } else if self.kinds.len() < ERROR_KINDS_MAX - 1 || (kind == kind::OTHER && self.kinds.len() < ERROR_KINDS_MAX)
        {
            // The last slot is kept for `other`.
            self.kinds.push((kind.to_string(), n));
        } else {
            self.add(kind::OTHER, n);
        }
    }

    pub fn total(&self) -> u64 {
        self.kinds.iter().map(|(_, c)| c).sum()
    }

    pub fn get(&self, kind: &str) -> u64 {
        self.kinds.iter().find(|(k, _)| k == kind).map_or(0, |(_, c)| *c)
    }

    /// (kind, count), most frequent first.
    pub fn sorted(&self) -> Vec<(String, u64)> {
        let mut v = self.kinds.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        for (k, c) in &other.kinds {
            self.add(k, *c);
        }
    }
}

/// What one thread (or the whole run) measured.
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Latency of successful requests, in microseconds.
    pub latency: Histogram<u64>,
    pub reads: u64,
    pub writes: u64,
    pub errors: ErrorCounts,
    /// When the last counted request finished (successfully or not).
    pub last_done: Option<Instant>,
    /// Connection attempts that failed; not requests, so not errors.
    pub connect_failures: u64,
    /// Requests answered that are not measured (warm-up): progress only.
    pub unmeasured: u64,
    /// Open loop: measured requests due but not sent when the run stopped.
    pub unsent: u64,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder {
            latency: new_histogram(),
            reads: 0,
            writes: 0,
            errors: ErrorCounts::default(),
            last_done: None,
            connect_failures: 0,
            unmeasured: 0,
            unsent: 0,
        }
    }
}

impl Recorder {
    /// A successful request of `op` that took `latency`, finishing at `now`.
    pub fn ok(&mut self, op: crate::workload::Op, latency: Duration, now: Instant) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(us);
        match op {
            crate::workload::Op::Read => self.reads += 1,
            crate::workload::Op::Write => self.writes += 1,
        }
        self.done(now);
    }

    /// `n` failed requests of `kind`, finishing at `now`.
    pub fn error(&mut self, kind: &str, n: u64, now: Instant) {
        self.errors.add(kind, n);
        self.done(now);
    }

    fn done(&mut self, now: Instant) {
        if self.last_done.is_none_or(|t| now > t) {
            self.last_done = Some(now);
        }
    }

    /// Successful requests.
    pub fn ops(&self) -> u64 {
        self.reads + self.writes
    }

    /// Adds `other` into this recorder and empties `other`.
    pub fn drain_from(&mut self, other: &mut Recorder) {
        self.latency.add(&other.latency).expect("histograms share bounds");
        other.latency.reset();
        self.reads += std::mem::take(&mut other.reads);
        self.writes += std::mem::take(&mut other.writes);
        self.errors.merge(&other.errors);
        other.errors.kinds.clear();
        if let Some(t) = other.last_done.take() {
            self.done(t);
        }
        self.connect_failures += std::mem::take(&mut other.connect_failures);
        self.unmeasured += std::mem::take(&mut other.unmeasured);
        self.unsent += std::mem::take(&mut other.unsent);
    }
}

const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

/// Shared by the run's connections: the phase, when measuring began, and the budget of
/// requests left (`--requests`).
#[derive(Debug)]
pub struct Control {
    phase: AtomicU8,
    measure_start: OnceLock<Instant>,
    stopped_at: OnceLock<Instant>,
    budget: Option<AtomicU64>,
}

impl Control {
    /// A run in warm-up; `requests` is the measured-request budget, if any.
    pub fn new(requests: Option<u64>) -> Control {
        Control {
            phase: AtomicU8::new(PHASE_WARMUP),
            measure_start: OnceLock::new(),
            stopped_at: OnceLock::new(),
            budget: requests.map(AtomicU64::new),
        }
    }

    /// Ends the warm-up: requests claimed (closed loop) or due (open loop) from now on
    /// are measured. Returns the start of measurement.
    pub fn start_measuring(&self) -> Instant {
        let t = *self.measure_start.get_or_init(Instant::now);
        self.phase.compare_exchange(PHASE_WARMUP, PHASE_MEASURE, Ordering::AcqRel, Ordering::Acquire).ok();
        t
    }

    /// No new requests from now on; connections finish what is in flight.
    pub fn stop(&self) {
        self.stopped_at.get_or_init(Instant::now);
        self.phase.store(PHASE_STOP, Ordering::Release);
    }

    /// Open loop: measured requests that were due by the time the run stopped but not
    /// sent (the window was full: the server fell behind the rate), given the next
    /// due time and the interval of a connection's schedule. They were never answered,
    /// so they have no latency; they are reported so a backlog is not hidden. A spent
    /// `--requests` budget leaves none: requests past it were never part of the run.
    pub fn unsent_due(&self, next_due: Instant, interval: Duration) -> u64 {
        let (Some(stop), Some(start)) = (self.stopped_at.get(), self.measure_start()) else { return 0 };
        if self.budget.is_some() || interval.is_zero() {
            return 0;
        }
        let from = next_due.max(start);
        if from > *stop {
            return 0;
        }
        ((*stop - from).as_nanos() / interval.as_nanos()) as u64 + 1
    }

    pub fn stopping(&self) -> bool {
        self.phase.load(Ordering::Acquire) == PHASE_STOP
    }

    pub fn measuring(&self) -> bool {
        self.phase.load(Ordering::Acquire) == PHASE_MEASURE
    }

    pub fn measure_start(&self) -> Option<Instant> {
        self.measure_start.get().copied()
    }

    /// Whether a request intended at `t` (open loop) is measured.
    pub fn counts_intended(&self, t: Instant) -> bool {
        self.measure_start().is_some_and(|s| t >= s)
    }

    /// Claims up to `want` requests to send now. Returns how many may be sent and
    /// whether they are measured; 0 when stopping or the budget is spent. During the
    /// warm-up the budget is untouched.
    pub fn claim(&self, want: u64) -> (u64, bool) {
        match self.phase.load(Ordering::Acquire) {
            PHASE_STOP => (0, false),
            PHASE_WARMUP => (want, false),
            _ => (self.take_budget(want), true),
        }
    }

    /// Claims up to `want` of the budget for measured requests.
    pub fn take_budget(&self, want: u64) -> u64 {
        let Some(budget) = &self.budget else { return want };
        let got = budget.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| Some(left - left.min(want)));
        let left = got.unwrap_or(0);
        let n = left.min(want);
        if left <= want {
            // Spent: nothing more will be sent.
            self.stop();
        }
        n
    }

    /// Whether the request budget (if any) is spent.
    pub fn budget_spent(&self) -> bool {
        self.budget.as_ref().is_some_and(|b| b.load(Ordering::Acquire) == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Op;

    #[test]
    fn error_replies_are_classified_by_their_code() {
        assert_eq!(error_reply_kind(b"TRYAGAIN no leader is known"), "TRYAGAIN");
        assert_eq!(error_reply_kind(b"ERR unknown command"), "ERR");
        assert_eq!(error_reply_kind(b"OVERLOADED"), "OVERLOADED");
        assert_eq!(error_reply_kind(b"something went wrong"), kind::ERROR);
        assert_eq!(error_reply_kind(b""), kind::ERROR);
        assert_eq!(error_reply_kind(&[b'A'; 40]), kind::ERROR);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut e = ErrorCounts::default();
        for i in 0..100 {
            e.add(&format!("K{i}"), 1);
        }
        assert_eq!(e.total(), 100);
        assert_eq!(e.kinds.len(), ERROR_KINDS_MAX);
        assert_eq!(e.get(kind::OTHER), 100 - (ERROR_KINDS_MAX as u64 - 1));
    }

    #[test]
    fn drain_moves_everything() {
        let now = Instant::now();
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        b.ok(Op::Read, Duration::from_micros(100), now);
        b.ok(Op::Write, Duration::from_micros(300), now);
        b.error("ERR", 2, now + Duration::from_millis(1));
        a.drain_from(&mut b);
        assert_eq!((a.reads, a.writes, a.errors.get("ERR"), a.latency.len()), (1, 1, 2, 2));
        assert_eq!((b.ops(), b.errors.total(), b.latency.len()), (0, 0, 0));
        assert_eq!(a.last_done, Some(now + Duration::from_millis(1)));
    }

    #[test]
    fn budget_is_claimed_exactly_and_only_while_measuring() {
        let c = Control::new(Some(10));
        assert_eq!(c.claim(4), (4, false), "warm-up claims do not spend the budget");
        c.start_measuring();
        assert_eq!(c.claim(4), (4, true));
        assert_eq!(c.claim(4), (4, true));
        assert!(!c.stopping());
        assert_eq!(c.claim(4), (2, true));
        assert!(c.stopping() && c.budget_spent());
        assert_eq!(c.claim(4), (0, false));
    }
}
