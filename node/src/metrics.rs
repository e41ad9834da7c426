//! What a shard records about itself — counters, gauges and HDR histograms — cheaply and on
//! its own thread, the detectors that turn some of those records into operator warnings,
//! and the snapshot ([`ShardReport`]) a shard hands to the admin thread through
//! [`Published`].
//!
//! # Cost on the hot path
//!
//! [`ShardMetrics`] belongs to one shard and is touched only by that shard's thread: no
//! atomics, no locks, and every histogram is allocated when the shard (or, for per-peer
//! histograms, the first record about that peer) is created, so recording a value is an
//! array increment. The only shared, locked structure is [`Published`], which a shard
//! writes a few times per second, off the per-request path (DESIGN.md: "Admin HTTP ...
//! reads shard metrics through snapshots that shards publish, never through locks on the
//! hot path").
//!
//! # Units
//!
//! Durations are recorded in microseconds, batch sizes in entries or bytes
//! ([`Unit`]). Callers measure: every `record_*` method takes a [`Duration`] (or a count)
//! rather than reading a clock itself, so the same code serves the shard and the tests.
//!
//! # Layout
//!
//! - [`Command`], [`RejectReason`], [`HistogramKey`], [`Unit`]: the fixed label sets.
//! - [`Recorded`]: an HDR histogram plus the exact sum Prometheus wants.
//! - [`HeartbeatDetector`] (etcd's `contention.TimeoutDetector`) and [`SlowDetector`].
//! - [`ShardMetrics`]: the shard's recorder; [`ShardMetrics::report`] makes a
//!   [`ShardReport`].
//! - [`ShardStatus`]: a serializable mirror of the engine's [`skiff_engine::Status`].
//! - [`Published`]: the latest report of every shard plus node-level facts, shared with
//!   the admin thread.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use skiff_engine::{NodeId, Role};

/// Significant decimal digits every histogram keeps: values are exact below 256 and
/// within 1% above. Three digits (0.1%) would make each latency histogram 7x larger
/// (about 140 KiB instead of 20 KiB), and a shard copies all of its histograms into
/// every report it publishes, on its own core; 1% is finer than any latency decision an
/// operator makes from a percentile.
pub const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 2;

/// Largest duration a histogram tells apart, in microseconds (60 s). Anything slower has
/// failed by every measure an operator uses; longer values are counted as 60 s, while
/// [`Recorded::sum`] keeps their true length.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// Largest WAL batch, in entries, a histogram tells apart (2^20: a batch is bounded by
/// the engine's 1 MiB message cap and the pending-proposal bound far below this).
pub const BATCH_ENTRIES_MAX: u64 = 1 << 20;

/// Largest WAL batch, in bytes, a histogram tells apart (1 GiB, far above any batch a
/// group commit forms; a snapshot write is not a batch).
pub const BATCH_BYTES_MAX: u64 = 1 << 30;

/// Peers a shard keeps per-peer metrics for. A Raft group has a handful of voters
/// (etcd recommends at most 7) plus a few learners; records about peers beyond this are
/// counted in [`Counters::peer_records_dropped`] instead of growing memory.
pub const PEERS_MAX: usize = 16;

/// A heartbeat that leaves more than this many heartbeat intervals after the previous
/// one to the same peer is contention (etcd: "expect to send a heartbeat within 2
/// heartbeat intervals").
pub const HEARTBEAT_CONTENTION_FACTOR: u32 = 2;

/// Default for [`MetricsConfig::slow_fsync_threshold`]: 100 ms is over 2,000 times the
/// fdatasync median measured on this project's reference machine (45 µs) and long
/// enough to stall followers' acknowledgements visibly, yet short enough to be noticed
/// well before the 1 s etcd waits for.
pub const SLOW_FSYNC_THRESHOLD_DEFAULT: Duration = Duration::from_millis(100);

/// Default for [`MetricsConfig::slow_apply_threshold`]: etcd's `warnApplyDuration`
/// (100 ms). Applying is in-memory work; a batch this slow holds every client behind it.
pub const SLOW_APPLY_THRESHOLD_DEFAULT: Duration = Duration::from_millis(100);

// Histograms need high >= 2 * low (low is 1) and at least two digits to be useful.
const _: () = assert!(LATENCY_US_MAX >= 2 && BATCH_ENTRIES_MAX >= 2 && BATCH_BYTES_MAX >= 2);
const _: () = assert!(HISTOGRAM_SIGNIFICANT_DIGITS >= 1 && HISTOGRAM_SIGNIFICANT_DIGITS <= 5);

/// Client commands that get their own latency histogram; the rest share [`Command::Other`].
/// A fixed set keeps the label space (and memory) bounded whatever clients send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Get,
    Set,
    Del,
    Exists,
    Incr,
    Decr,
    IncrBy,
    DecrBy,
    Mget,
    Mset,
    Dbsize,
    Ping,
    Echo,
    Info,
    Other,
}

impl Command {
    /// Every command, in label order.
    pub const ALL: [Command; 15] = [
        Command::Get,
        Command::Set,
        Command::Del,
        Command::Exists,
        Command::Incr,
        Command::Decr,
        Command::IncrBy,
        Command::DecrBy,
        Command::Mget,
        Command::Mset,
        Command::Dbsize,
        Command::Ping,
        Command::Echo,
        Command::Info,
        Command::Other,
    ];
    /// Number of commands.
    pub const COUNT: usize = Command::ALL.len();

    /// Lower-case name, used as the `command` label and in histogram names.
    pub fn name(self) -> &'static str {
        match self {
            Command::Get => "get",
            Command::Set => "set",
            Command::Del => "del",
            Command::Exists => "exists",
            Command::Incr => "incr",
            Command::Decr => "decr",
            Command::IncrBy => "incrby",
            Command::DecrBy => "decrby",
            Command::Mget => "mget",
            Command::Mset => "mset",
            Command::Dbsize => "dbsize",
            Command::Ping => "ping",
            Command::Echo => "echo",
            Command::Info => "info",
            Command::Other => "other",
        }
    }

    /// The command a RESP command name (any case, as received) is counted under, without
    /// allocating.
    pub fn from_name(name: &[u8]) -> Command {
        Command::ALL[..Command::COUNT - 1]
            .iter()
            .copied()
            .find(|c| c.name().as_bytes().eq_ignore_ascii_case(name))
            .unwrap_or(Command::Other)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a proposal or a read was refused before reaching the engine, or dropped after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// No leader known (clients get `-TRYAGAIN`).
    NoLeader,
    /// The pending-proposal or pending-read bound is full.
    Overloaded,
    /// Larger than the per-entry or per-message cap.
    TooLarge,
    /// Waited longer than the bound for a leader or an answer.
    Timeout,
    /// Leadership changed before the request was committed or confirmed.
    LeadershipLost,
    /// The engine dropped it (for example during a leadership transfer).
    Dropped,
    /// The node is shutting down.
    ShuttingDown,
}

impl RejectReason {
    /// Every reason, in label order.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::NoLeader,
        RejectReason::Overloaded,
        RejectReason::TooLarge,
        RejectReason::Timeout,
        RejectReason::LeadershipLost,
        RejectReason::Dropped,
        RejectReason::ShuttingDown,
    ];
    /// Number of reasons.
    pub const COUNT: usize = RejectReason::ALL.len();

    /// Snake-case name, used as the `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::NoLeader => "no_leader",
            RejectReason::Overloaded => "overloaded",
            RejectReason::TooLarge => "too_large",
            RejectReason::Timeout => "timeout",
            RejectReason::LeadershipLost => "leadership_lost",
            RejectReason::Dropped => "dropped",
            RejectReason::ShuttingDown => "shutting_down",
        }
    }
}

/// What a histogram's values count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Microseconds,
    Entries,
    Bytes,
}

impl Unit {
    /// Lower-case name, as shown in `/histograms`.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Microseconds => "microseconds",
            Unit::Entries => "entries",
            Unit::Bytes => "bytes",
        }
    }

    /// Largest value a histogram of this unit tells apart.
    pub fn max(self) -> u64 {
        match self {
            Unit::Microseconds => LATENCY_US_MAX,
            Unit::Entries => BATCH_ENTRIES_MAX,
            Unit::Bytes => BATCH_BYTES_MAX,
        }
    }
}

/// Which histogram: a fixed family, or a family with a `command` or `peer` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistogramKey {
    /// From a client request's arrival to its answer, by command.
    ClientLatency(Command),
    /// From a proposal entering the engine to its entry being committed.
    ProposeToCommit,
    /// From an entry being committed to it being applied.
    CommitToApply,
    /// Time to apply one batch of committed entries.
    ApplyBatch,
    /// One WAL write (submission to completion), before any fdatasync.
    WalWrite,
    /// One WAL fdatasync.
    WalFsync,
    /// Entries per WAL write (group-commit batch size).
    WalBatchEntries,
    /// Bytes per WAL write.
    WalBatchBytes,
    /// One turn of the Ready loop, input to advance.
    ReadyLoopIteration,
    /// From a read arriving to its read index being confirmed.
    ReadIndex,
    /// Time a message waited in a peer's send queue before it was written.
    PeerSendQueueDelay(NodeId),
    /// Time between consecutive heartbeats sent to a peer.
    HeartbeatInterval(NodeId),
}

impl HistogramKey {
    /// The histograms without a label, in output order.
    pub const FIXED: [HistogramKey; 9] = [
        HistogramKey::ProposeToCommit,
        HistogramKey::CommitToApply,
        HistogramKey::ApplyBatch,
        HistogramKey::WalWrite,
        HistogramKey::WalFsync,
        HistogramKey::WalBatchEntries,
        HistogramKey::WalBatchBytes,
        HistogramKey::ReadyLoopIteration,
        HistogramKey::ReadIndex,
    ];

    /// The family name shared by every label value (`client_latency`, `wal_fsync`, ...).
    pub fn family(self) -> &'static str {
        match self {
            HistogramKey::ClientLatency(_) => "client_latency",
            HistogramKey::ProposeToCommit => "propose_to_commit",
            HistogramKey::CommitToApply => "commit_to_apply",
            HistogramKey::ApplyBatch => "apply_batch",
            HistogramKey::WalWrite => "wal_write",
            HistogramKey::WalFsync => "wal_fsync",
            HistogramKey::WalBatchEntries => "wal_batch_entries",
            HistogramKey::WalBatchBytes => "wal_batch_bytes",
            HistogramKey::ReadyLoopIteration => "ready_loop_iteration",
            HistogramKey::ReadIndex => "read_index",
            HistogramKey::PeerSendQueueDelay(_) => "peer_send_queue_delay",
            HistogramKey::HeartbeatInterval(_) => "heartbeat_interval",
        }
    }

    /// The name `/histograms/NAME` answers to: the family, then the label
    /// (`client_latency_set`, `heartbeat_interval_peer_2`).
    pub fn name(self) -> String {
        match self {
            HistogramKey::ClientLatency(c) => format!("{}_{}", self.family(), c.name()),
            HistogramKey::PeerSendQueueDelay(p) | HistogramKey::HeartbeatInterval(p) => {
                format!("{}_peer_{p}", self.family())
            }
            _ => self.family().to_string(),
        }
    }

    /// The Prometheus label this histogram carries besides `shard`, if any.
    pub fn label(self) -> Option<(&'static str, String)> {
        match self {
            HistogramKey::ClientLatency(c) => Some(("command", c.name().to_string())),
            HistogramKey::PeerSendQueueDelay(p) | HistogramKey::HeartbeatInterval(p) => Some(("peer", p.to_string())),
            _ => None,
        }
    }

    /// What the values count.
    pub fn unit(self) -> Unit {
        match self {
            HistogramKey::WalBatchEntries => Unit::Entries,
            HistogramKey::WalBatchBytes => Unit::Bytes,
            _ => Unit::Microseconds,
        }
    }

    /// One line on what the histogram measures (Prometheus HELP text, docs).
    pub fn help(self) -> &'static str {
        match self {
            HistogramKey::ClientLatency(_) => "Client request latency, arrival to answer, by command.",
            HistogramKey::ProposeToCommit => "Time from a proposal entering the engine to its entry being committed.",
            HistogramKey::CommitToApply => "Time from an entry being committed to it being applied.",
            HistogramKey::ApplyBatch => "Time to apply one batch of committed entries to the state machine.",
            HistogramKey::WalWrite => "Duration of one WAL write, before its fdatasync.",
            HistogramKey::WalFsync => "Duration of one WAL fdatasync.",
            HistogramKey::WalBatchEntries => "Entries per WAL write (group-commit batch size).",
            HistogramKey::WalBatchBytes => "Bytes per WAL write.",
            HistogramKey::ReadyLoopIteration => "Duration of one Ready loop iteration, input to advance.",
            HistogramKey::ReadIndex => "Time from a read arriving to its read index being confirmed.",
            HistogramKey::PeerSendQueueDelay(_) => "Time a message waited in a peer's send queue, by peer.",
            HistogramKey::HeartbeatInterval(_) => "Time between consecutive heartbeats sent to a peer, by peer.",
        }
    }
}

/// An HDR histogram and the exact sum of what was recorded into it: HDR keeps counts per
/// value range, not the sum a Prometheus histogram's `_sum` reports.
#[derive(Clone, Debug)]
pub struct Recorded {
    hist: Histogram<u64>,
    sum: u64,
}

impl Recorded {
    /// An empty histogram for values of `unit`.
    ///
    /// # Panics
    ///
    /// Never with the bounds in this module (a unit test builds every unit); the
    /// `expect` guards against a future edit making them invalid.
    pub fn new(unit: Unit) -> Recorded {
        let hist = Histogram::new_with_bounds(1, unit.max(), HISTOGRAM_SIGNIFICANT_DIGITS)
            .expect("histogram bounds are constants checked at compile time");
        Recorded { hist, sum: 0 }
    }

    /// Records one value; values above the unit's maximum count as the maximum.
    pub fn record(&mut self, value: u64) {
        self.sum = self.sum.saturating_add(value);
        self.hist.saturating_record(value.min(self.hist.high()));
    }

    /// Adds every value of `other` (same unit) into this one: used to merge shards.
    pub fn merge(&mut self, other: &Recorded) {
        self.sum = self.sum.saturating_add(other.sum);
        // Histograms of one unit share their bounds, so adding never needs to resize; a
        // mismatch would be a bug in the caller, and is then skipped rather than fatal.
        let merged = self.hist.add(&other.hist);
        debug_assert!(merged.is_ok(), "merged histograms of different units");
    }

    /// The histogram.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.hist
    }

    /// Exact sum of the recorded values (saturating at `u64::MAX`).
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A heartbeat that left late: the warning etcd logs as "failed to send out heartbeat on
/// time ... server is likely overloaded". Its `Display` is the whole warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contention {
    pub peer: NodeId,
    /// Time since the previous heartbeat to this peer.
    pub observed: Duration,
    /// The configured heartbeat interval.
    pub expected: Duration,
}

impl Contention {
    /// The gap above which a heartbeat is late: [`HEARTBEAT_CONTENTION_FACTOR`] intervals.
    pub fn limit(&self) -> Duration {
        self.expected.saturating_mul(HEARTBEAT_CONTENTION_FACTOR)
    }
}

impl fmt::Display for Contention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "heartbeat to peer {} went out {:?} after the previous one (heartbeat interval {:?}, \
             warning above {:?}): the node is likely overloaded (CPU starved or a slow disk stalling \
             the loop); read histograms ready_loop_iteration and wal_fsync",
            self.peer,
            self.observed,
            self.expected,
            self.limit()
        )
    }
}

/// Notices heartbeats that leave late (etcd `pkg/contention.TimeoutDetector`, used by
/// `etcdserver/raft.go`): call [`HeartbeatDetector::observe`] every time a heartbeat to
/// a peer leaves.
///
/// A late heartbeat is the earliest symptom of an overloaded node: followers that miss
/// heartbeats start elections, so the warning comes before the leadership churn it
/// explains.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatDetector {
    /// When the last heartbeat to each peer left; at most [`PEERS_MAX`] entries.
    last: Vec<(NodeId, Instant)>,
}

impl HeartbeatDetector {
    /// A detector that has seen no heartbeat.
    pub fn new() -> HeartbeatDetector {
        HeartbeatDetector { last: Vec::with_capacity(PEERS_MAX) }
    }

    /// Notes a heartbeat to `peer` leaving at `now`, with `interval` the configured
    /// heartbeat interval. Returns the contention when the gap since the previous
    /// heartbeat to that peer exceeds [`HEARTBEAT_CONTENTION_FACTOR`] × `interval`
    /// (strictly, as etcd). The first heartbeat to a peer (or the first after
    /// [`HeartbeatDetector::reset`]) has no gap and is never late.
    pub fn observe(&mut self, peer: NodeId, now: Instant, interval: Duration) -> Option<Contention> {
        let contention = self.gap(peer, now).and_then(|observed| {
            let c = Contention { peer, observed, expected: interval };
            (observed > c.limit()).then_some(c)
        });
        match self.last.iter().position(|(id, _)| *id == peer) {
            Some(i) => self.last[i].1 = now,
            // Beyond the bound the peer is simply not tracked (no warning, no growth).
            None if self.last.len() < PEERS_MAX => self.last.push((peer, now)),
            None => {}
        }
        contention
    }

    /// Time between the previous heartbeat to `peer` and `now`, if there was one.
    pub fn gap(&self, peer: NodeId, now: Instant) -> Option<Duration> {
        self.last.iter().find(|(id, _)| *id == peer).map(|(_, t)| now.saturating_duration_since(*t))
    }

    /// Forgets every peer. Called when leadership changes (etcd resets its detector on
    /// every soft-state change): a new leader's first heartbeat is not late.
    pub fn reset(&mut self) {
        self.last.clear();
    }

    /// Forgets one peer (removed from the group).
    pub fn forget(&mut self, peer: NodeId) {
        self.last.retain(|(id, _)| *id != peer);
    }
}

/// What a [`SlowDetector`] watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowKind {
    /// One WAL fdatasync.
    Fsync,
    /// One WAL `O_DSYNC` write (`wal_sync = "dsync"`): the write and its flush.
    DurableWrite,
    /// Applying one batch of committed entries.
    Apply,
}

impl SlowKind {
    /// The histograms an operator should read when this warning appears.
    pub fn histograms(self) -> &'static [&'static str] {
        match self {
            SlowKind::Fsync => &["wal_fsync", "wal_batch_bytes"],
            SlowKind::DurableWrite => &["wal_write", "wal_batch_bytes"],
            SlowKind::Apply => &["apply_batch", "commit_to_apply"],
        }
    }
}

/// An operation slower than its threshold. Its `Display` is the whole warning, naming
/// the histograms to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowWarning {
    pub kind: SlowKind,
    pub took: Duration,
    pub threshold: Duration,
}

impl fmt::Display for SlowWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, cause) = match self.kind {
            SlowKind::Fsync => ("WAL fdatasync", "the disk is slow or saturated"),
            SlowKind::DurableWrite => ("WAL durable (O_DSYNC) write", "the disk is slow or saturated"),
            SlowKind::Apply => {
                ("applying a batch of committed entries", "the state machine is slow or the CPU starved")
            }
        };
        write!(
            f,
            "{what} took {:?} (warning above {:?}): {cause}; read histograms {}",
            self.took,
            self.threshold,
            self.kind.histograms().join(" and ")
        )
    }
}

/// Warns when one operation exceeds a threshold. A zero threshold disables it: never a
/// warning, never a count (`fsync_warn_ms = 0`, `apply_warn_ms = 0`).
///
/// There is no rate limit: each warning stands for an operation that took at least the
/// threshold on the shard's own thread, so a shard cannot emit more than one per
/// threshold interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowDetector {
    kind: SlowKind,
    threshold: Duration,
}

impl SlowDetector {
    /// A detector for `kind` warning above `threshold`; never, for a zero `threshold`.
    pub fn new(kind: SlowKind, threshold: Duration) -> SlowDetector {
        SlowDetector { kind, threshold }
    }

    /// The warning to log, if `took` is over the threshold (and the detector is enabled).
    pub fn check(&self, took: Duration) -> Option<SlowWarning> {
        (!self.threshold.is_zero() && took > self.threshold).then_some(SlowWarning {
            kind: self.kind,
            took,
            threshold: self.threshold,
        })
    }
}

/// Thresholds for the shard's warnings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// An fdatasync slower than this is warned about. Default
    /// [`SLOW_FSYNC_THRESHOLD_DEFAULT`].
    pub slow_fsync_threshold: Duration,
    /// An apply batch slower than this is warned about. Default
    /// [`SLOW_APPLY_THRESHOLD_DEFAULT`].
    pub slow_apply_threshold: Duration,
}

impl Default for MetricsConfig {
    fn default() -> MetricsConfig {
        MetricsConfig {
            slow_fsync_threshold: SLOW_FSYNC_THRESHOLD_DEFAULT,
            slow_apply_threshold: SLOW_APPLY_THRESHOLD_DEFAULT,
        }
    }
}

/// Monotonic counts of what a shard did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Client proposals handed to the engine.
    pub proposals: u64,
    /// Entries seen committed.
    pub commits: u64,
    /// Committed entries applied to the state machine.
    pub applies: u64,
    /// Times a new leader became known (etcd's `leader_changes_seen_total`).
    pub leader_changes: u64,
    /// Heartbeats the transport could not queue (queue full, peer unreachable).
    pub heartbeat_send_failures: u64,
    /// Heartbeats that left late ([`HeartbeatDetector`]).
    pub heartbeat_contention: u64,
    /// Bytes written to the WAL.
    pub wal_bytes: u64,
    /// WAL writes (batches).
    pub wal_writes: u64,
    /// WAL fdatasyncs.
    pub wal_fsyncs: u64,
    /// fdatasyncs over the slow threshold.
    pub slow_fsyncs: u64,
    /// Apply batches over the slow threshold.
    pub slow_applies: u64,
    /// Snapshots of the state machine written locally.
    pub snapshots_taken: u64,
    /// Snapshots streamed to followers.
    pub snapshots_sent: u64,
    /// Snapshots received from a leader and installed.
    pub snapshots_received: u64,
    /// Reads served.
    pub reads: u64,
    /// Records about peers beyond [`PEERS_MAX`], ignored.
    pub peer_records_dropped: u64,
}

/// Values that go up and down, set by the shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Gauges {
    /// Proposals waiting for commit.
    pub pending_proposals: u64,
    /// Reads waiting for their read index.
    pub pending_reads: u64,
    /// Open client connections on this shard.
    pub clients: u64,
}

/// A peer's transport counters, as the transport (`skiff-net`) keeps them. The shard
/// copies them in with [`ShardMetrics::set_transport_counters`] when it reports, so this
/// crate does not depend on the transport's types.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TransportCounters {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub frames_out: u64,
    pub frames_in: u64,
    /// Messages dropped because the peer's send queue was full or the peer unreachable.
    pub dropped_messages: u64,
}

/// Per-peer recorder state on the shard.
#[derive(Clone, Debug)]
struct PeerMetrics {
    id: NodeId,
    send_queue_delay: Recorded,
    heartbeat_interval: Recorded,
    transport: TransportCounters,
}

impl PeerMetrics {
    fn new(id: NodeId) -> PeerMetrics {
        PeerMetrics {
            id,
            send_queue_delay: Recorded::new(Unit::Microseconds),
            heartbeat_interval: Recorded::new(Unit::Microseconds),
            transport: TransportCounters::default(),
        }
    }
}

/// A peer in a [`ShardReport`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerReport {
    pub id: NodeId,
    pub transport: TransportCounters,
}

/// Everything one shard records, owned by that shard's thread.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    shard: u32,
    config: MetricsConfig,
    counters: Counters,
    proposals_rejected: [u64; RejectReason::COUNT],
    reads_rejected: [u64; RejectReason::COUNT],
    gauges: Gauges,
    client_latency: Box<[Recorded]>,
    /// Indexed like [`HistogramKey::FIXED`].
    fixed: Box<[Recorded]>,
    peers: Vec<PeerMetrics>,
    heartbeats: HeartbeatDetector,
    slow_fsync: SlowDetector,
    slow_apply: SlowDetector,
    leader: NodeId,
    is_leader: bool,
    /// Frames the shard's transport refused, by reason. Counted per transport, not per
    /// peer: most are refused before a connection has an authenticated peer.
    transport_rejected: Vec<(&'static str, u64)>,
}

impl ShardMetrics {
    /// A recorder for `shard`, with every fixed histogram allocated now.
    pub fn new(shard: u32, config: MetricsConfig) -> ShardMetrics {
        ShardMetrics {
            shard,
            config,
            counters: Counters::default(),
            proposals_rejected: [0; RejectReason::COUNT],
            reads_rejected: [0; RejectReason::COUNT],
            gauges: Gauges::default(),
            client_latency: Command::ALL.iter().map(|_| Recorded::new(Unit::Microseconds)).collect(),
            fixed: HistogramKey::FIXED.iter().map(|k| Recorded::new(k.unit())).collect(),
            peers: Vec::with_capacity(PEERS_MAX),
            heartbeats: HeartbeatDetector::new(),
            slow_fsync: SlowDetector::new(SlowKind::Fsync, config.slow_fsync_threshold),
            slow_apply: SlowDetector::new(SlowKind::Apply, config.slow_apply_threshold),
            leader: 0,
            is_leader: false,
            transport_rejected: Vec::new(),
        }
    }

    /// The shard this recorder belongs to.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The thresholds in force.
    pub fn config(&self) -> MetricsConfig {
        self.config
    }

    /// Counts so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A histogram by key (`None` for a peer never recorded).
    pub fn histogram(&self, key: HistogramKey) -> Option<&Recorded> {
        match key {
            HistogramKey::ClientLatency(c) => Some(&self.client_latency[c.index()]),
            HistogramKey::PeerSendQueueDelay(p) => self.peers.iter().find(|m| m.id == p).map(|m| &m.send_queue_delay),
            HistogramKey::HeartbeatInterval(p) => self.peers.iter().find(|m| m.id == p).map(|m| &m.heartbeat_interval),
            fixed => Some(&self.fixed[Self::fixed_index(fixed)]),
        }
    }

    fn fixed_index(key: HistogramKey) -> usize {
        match key {
            HistogramKey::ProposeToCommit => 0,
            HistogramKey::CommitToApply => 1,
            HistogramKey::ApplyBatch => 2,
            HistogramKey::WalWrite => 3,
            HistogramKey::WalFsync => 4,
            HistogramKey::WalBatchEntries => 5,
            HistogramKey::WalBatchBytes => 6,
            HistogramKey::ReadyLoopIteration => 7,
            HistogramKey::ReadIndex => 8,
            HistogramKey::ClientLatency(_)
            | HistogramKey::PeerSendQueueDelay(_)
            | HistogramKey::HeartbeatInterval(_) => {
                unreachable!("labelled histograms are not fixed")
            }
        }
    }

    fn fixed_mut(&mut self, key: HistogramKey) -> &mut Recorded {
        &mut self.fixed[Self::fixed_index(key)]
    }

    /// The peer's recorder, created on first use; `None` past [`PEERS_MAX`] (counted).
    fn peer_mut(&mut self, peer: NodeId) -> Option<&mut PeerMetrics> {
        let pos = match self.peers.iter().position(|m| m.id == peer) {
            Some(pos) => pos,
            None if self.peers.len() < PEERS_MAX => {
                self.peers.push(PeerMetrics::new(peer));
                self.peers.len() - 1
            }
            None => {
                self.counters.peer_records_dropped += 1;
                return None;
            }
        };
        Some(&mut self.peers[pos])
    }

    /// A client request of `command` answered after `latency`.
    pub fn record_client_request(&mut self, command: Command, latency: Duration) {
        self.client_latency[command.index()].record(micros(latency));
    }

    /// `n` client proposals handed to the engine.
    pub fn record_proposals(&mut self, n: u64) {
        self.counters.proposals += n;
    }

    /// A proposal refused or dropped.
    pub fn record_proposal_rejected(&mut self, reason: RejectReason) {
        self.proposals_rejected[reason as usize] += 1;
    }

    /// `n` reads served.
    pub fn record_reads(&mut self, n: u64) {
        self.counters.reads += n;
    }

    /// A read refused or dropped.
    pub fn record_read_rejected(&mut self, reason: RejectReason) {
        self.reads_rejected[reason as usize] += 1;
    }

    /// `entries` newly committed.
    pub fn record_committed(&mut self, entries: u64) {
        self.counters.commits += entries;
    }

    /// One proposal's time from entering the engine to commit.
    pub fn record_propose_to_commit(&mut self, took: Duration) {
        self.fixed_mut(HistogramKey::ProposeToCommit).record(micros(took));
    }

    /// One entry's time from commit to apply.
    pub fn record_commit_to_apply(&mut self, took: Duration) {
        self.fixed_mut(HistogramKey::CommitToApply).record(micros(took));
    }

    /// A batch of `entries` applied in `took`. Returns the warning to log (`warn!`) when
    /// the batch was slower than [`MetricsConfig::slow_apply_threshold`].
    pub fn record_apply_batch(&mut self, entries: u64, took: Duration) -> Option<SlowWarning> {
        self.counters.applies += entries;
        self.fixed_mut(HistogramKey::ApplyBatch).record(micros(took));
        let warning = self.slow_apply.check(took);
        if warning.is_some() {
            self.counters.slow_applies += 1;
        }
        warning
    }

    /// One WAL write of `entries` entries and `bytes` bytes, completed in `took` (before
    /// its fdatasync).
    pub fn record_wal_write(&mut self, entries: u64, bytes: u64, took: Duration) {
        self.counters.wal_writes += 1;
        self.counters.wal_bytes += bytes;
        self.fixed_mut(HistogramKey::WalWrite).record(micros(took));
        self.fixed_mut(HistogramKey::WalBatchEntries).record(entries);
        self.fixed_mut(HistogramKey::WalBatchBytes).record(bytes);
    }

    /// One `O_DSYNC` WAL write (`wal_sync = "dsync"`), durable when it completed: a
    /// write and its sync at once. It is recorded in the write histograms, counted as a
    /// sync, and checked against the fdatasync threshold.
    pub fn record_wal_durable_write(&mut self, entries: u64, bytes: u64, took: Duration) -> Option<SlowWarning> {
        self.record_wal_write(entries, bytes, took);
        self.counters.wal_fsyncs += 1;
        let warning = SlowDetector { kind: SlowKind::DurableWrite, ..self.slow_fsync }.check(took);
        if warning.is_some() {
            self.counters.slow_fsyncs += 1;
        }
        warning
    }

    /// One fdatasync that took `took`. Returns the warning to log (`warn!`) when it was
    /// slower than [`MetricsConfig::slow_fsync_threshold`].
    pub fn record_wal_fsync(&mut self, took: Duration) -> Option<SlowWarning> {
        self.counters.wal_fsyncs += 1;
        self.fixed_mut(HistogramKey::WalFsync).record(micros(took));
        let warning = self.slow_fsync.check(took);
        if warning.is_some() {
            self.counters.slow_fsyncs += 1;
        }
        warning
    }

    /// One Ready loop iteration.
    pub fn record_ready_iteration(&mut self, took: Duration) {
        self.fixed_mut(HistogramKey::ReadyLoopIteration).record(micros(took));
    }

    /// One read's time from arrival to its read index being confirmed.
    pub fn record_read_index(&mut self, took: Duration) {
        self.fixed_mut(HistogramKey::ReadIndex).record(micros(took));
    }

    /// A snapshot of the state machine written locally.
    pub fn record_snapshot_taken(&mut self) {
        self.counters.snapshots_taken += 1;
    }

    /// A snapshot streamed to a follower.
    pub fn record_snapshot_sent(&mut self) {
        self.counters.snapshots_sent += 1;
    }

    /// A snapshot received from the leader and installed.
    pub fn record_snapshot_received(&mut self) {
        self.counters.snapshots_received += 1;
    }

    /// The leader as of the latest Ready's soft state. Counts a leader change when a
    /// leader is known and differs from the previous one (etcd), and resets the
    /// heartbeat detector whenever the leader or this node's leadership changes.
    pub fn record_leader(&mut self, leader: NodeId, is_leader: bool) {
        if leader != 0 && leader != self.leader {
            self.counters.leader_changes += 1;
        }
        if leader != self.leader || is_leader != self.is_leader {
            self.heartbeats.reset();
        }
        self.leader = leader;
        self.is_leader = is_leader;
    }

    /// A heartbeat to `peer` left at `now`; `interval` is the configured heartbeat
    /// interval. Records the gap since the previous one into the peer's
    /// `heartbeat_interval` histogram and returns the contention to log (`warn!`, with
    /// the contention's `Display`) when the gap exceeded 2x the interval.
    pub fn record_heartbeat_sent(&mut self, peer: NodeId, now: Instant, interval: Duration) -> Option<Contention> {
        let gap = self.heartbeats.gap(peer, now);
        let contention = self.heartbeats.observe(peer, now, interval);
        if let (Some(gap), Some(m)) = (gap, self.peer_mut(peer)) {
            m.heartbeat_interval.record(micros(gap));
        }
        if contention.is_some() {
            self.counters.heartbeat_contention += 1;
        }
        contention
    }

    /// A heartbeat the transport could not queue.
    pub fn record_heartbeat_send_failure(&mut self) {
        self.counters.heartbeat_send_failures += 1;
    }

    /// A message to `peer` waited `delay` in its send queue.
    pub fn record_peer_send_queue_delay(&mut self, peer: NodeId, delay: Duration) {
        if let Some(m) = self.peer_mut(peer) {
            m.send_queue_delay.record(micros(delay));
        }
    }

    /// The transport's counters for `peer`, copied in (typically just before
    /// [`ShardMetrics::report`]).
    pub fn set_transport_counters(&mut self, peer: NodeId, counters: TransportCounters) {
        if let Some(m) = self.peer_mut(peer) {
            m.transport = counters;
        }
    }

    /// The transport's frame rejections by reason (`skiff-net`'s reason names become the
    /// `reason` label).
    pub fn set_transport_rejections(&mut self, rejected: Vec<(&'static str, u64)>) {
        self.transport_rejected = rejected;
    }

    /// Forgets a peer removed from the group (its histograms and counters go too).
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.retain(|m| m.id != peer);
        self.heartbeats.forget(peer);
    }

    /// Proposals and reads currently waiting.
    pub fn set_pending(&mut self, proposals: u64, reads: u64) {
        self.gauges.pending_proposals = proposals;
        self.gauges.pending_reads = reads;
    }

    /// Open client connections.
    pub fn set_clients(&mut self, clients: u64) {
        self.gauges.clients = clients;
    }

    /// A snapshot of everything recorded, with the shard's `status`, for
    /// [`Published::publish`]. Copies the histograms (about 20 KiB each), so call it a
    /// few times per second, not per request.
    pub fn report(&self, status: ShardStatus) -> ShardReport {
        let mut histograms = Vec::with_capacity(Command::COUNT + HistogramKey::FIXED.len() + 2 * self.peers.len());
        for c in Command::ALL {
            histograms.push((HistogramKey::ClientLatency(c), self.client_latency[c.index()].clone()));
        }
        for (k, r) in HistogramKey::FIXED.iter().zip(self.fixed.iter()) {
            histograms.push((*k, r.clone()));
        }
        let mut peers: Vec<&PeerMetrics> = self.peers.iter().collect();
        peers.sort_by_key(|m| m.id);
        for m in &peers {
            histograms.push((HistogramKey::PeerSendQueueDelay(m.id), m.send_queue_delay.clone()));
        }
        for m in &peers {
            histograms.push((HistogramKey::HeartbeatInterval(m.id), m.heartbeat_interval.clone()));
        }
        ShardReport {
            shard: self.shard,
            status,
            counters: self.counters,
            proposals_rejected: self.proposals_rejected,
            reads_rejected: self.reads_rejected,
            gauges: self.gauges,
            histograms,
            peers: peers.iter().map(|m| PeerReport { id: m.id, transport: m.transport.clone() }).collect(),
            transport_rejected: self.transport_rejected.clone(),
        }
    }
}

/// The engine's counters of unusual events, mirrored for serialization.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    pub msgs_malformed: u64,
    pub msgs_stale_term: u64,
    pub msgs_from_non_member: u64,
    pub votes_ignored_in_lease: u64,
    pub appends_conflicting_with_committed: u64,
    pub commits_beyond_log: u64,
    pub proposals_dropped: u64,
    pub reads_dropped: u64,
    pub conf_changes_invalid: u64,
    pub campaigns: u64,
    pub campaigns_withheld: u64,
    pub leaderships_won: u64,
    pub check_quorum_step_downs: u64,
    pub transfers_aborted: u64,
    pub snapshots_sent: u64,
    pub storage_errors: u64,
}

impl From<&skiff_engine::Stats> for EngineStats {
    fn from(s: &skiff_engine::Stats) -> EngineStats {
        EngineStats {
            msgs_malformed: s.msgs_malformed,
            msgs_stale_term: s.msgs_stale_term,
            msgs_from_non_member: s.msgs_from_non_member,
            votes_ignored_in_lease: s.votes_ignored_in_lease,
            appends_conflicting_with_committed: s.appends_conflicting_with_committed,
            commits_beyond_log: s.commits_beyond_log,
            proposals_dropped: s.proposals_dropped,
            reads_dropped: s.reads_dropped,
            conf_changes_invalid: s.conf_changes_invalid,
            campaigns: s.campaigns,
            campaigns_withheld: s.campaigns_withheld,
            leaderships_won: s.leaderships_won,
            check_quorum_step_downs: s.check_quorum_step_downs,
            transfers_aborted: s.transfers_aborted,
            snapshots_sent: s.snapshots_sent,
            storage_errors: s.storage_errors,
        }
    }
}

/// One peer's replication progress as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub id: NodeId,
    pub learner: bool,
    #[serde(rename = "match")]
    pub matched: u64,
    pub next: u64,
    /// "probe", "replicate" or "snapshot".
    pub state: &'static str,
    /// Appends in flight (messages).
    pub inflight: u64,
    pub inflight_bytes: u64,
    /// Heard from within the current CheckQuorum period.
    pub recent_active: bool,
    /// Appends to it paused (probe outstanding, window full, snapshot).
    pub paused: bool,
    /// Milliseconds since the leader last heard from it (tick resolution).
    pub last_contact_ms: u64,
}

/// A shard's Raft state: a serializable mirror of the engine's [`skiff_engine::Status`]
/// plus what only the shard knows (the last snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    pub shard: u32,
    /// This node's id.
    pub id: NodeId,
    /// "leader", "follower", "candidate", "pre-candidate" or "learner" (a follower that
    /// is a learner).
    pub role: &'static str,
    pub term: u64,
    pub vote: NodeId,
    /// Known leader (0: none).
    pub leader: NodeId,
    pub commit: u64,
    pub applied: u64,
    pub persisted: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub last_snapshot_index: u64,
    /// Target of a leadership transfer in progress (0: none).
    pub lead_transferee: NodeId,
    pub election_timeout_ticks: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub pending_reads: u64,
    /// Other members' progress; known on the leader only (empty elsewhere).
    pub peers: Vec<PeerStatus>,
    pub engine: EngineStats,
    /// Keys in the state machine.
    pub kv_keys: u64,
    /// Order-independent digest of the state machine (hex), to compare replicas at
    /// the same applied index.
    pub kv_digest: String,
}

impl ShardStatus {
    /// Mirrors the engine's status. `is_learner` is whether this node is a learner of the
    /// group (`status.conf_state.learners` contains `status.id`); `tick` converts the
    /// engine's ticks-since-heard into `last_contact_ms`.
    pub fn from_engine(
        shard: u32,
        status: &skiff_engine::Status,
        is_learner: bool,
        last_snapshot_index: u64,
        tick: Duration,
    ) -> ShardStatus {
        let role = match status.role {
            Role::Follower if is_learner => "learner",
            role => role.name(),
        };
        let tick_ms = u64::try_from(tick.as_millis()).unwrap_or(u64::MAX);
        let peers = status
            .progress
            .iter()
            .filter(|p| p.id != status.id)
            .map(|p| PeerStatus {
                id: p.id,
                learner: p.is_learner,
                matched: p.matched,
                next: p.next,
                state: p.state.name(),
                inflight: p.inflight_msgs as u64,
                inflight_bytes: p.inflight_bytes,
                recent_active: p.recent_active,
                paused: p.paused,
                last_contact_ms: p.ticks_since_heard.saturating_mul(tick_ms),
            })
            .collect();
        ShardStatus {
            shard,
            id: status.id,
            role,
            term: status.term,
            vote: status.vote,
            leader: status.leader,
            commit: status.commit,
            applied: status.applied,
            persisted: status.persisted,
            first_index: status.first_index,
            last_index: status.last_index,
            last_snapshot_index,
            lead_transferee: status.lead_transferee,
            election_timeout_ticks: status.election_timeout_ticks,
            voters: status.conf_state.voters.clone(),
            learners: status.conf_state.learners.clone(),
            pending_reads: status.pending_reads,
            peers,
            engine: EngineStats::from(&status.stats),
            kv_keys: 0,
            kv_digest: String::new(),
        }
    }
}

/// Everything the admin thread shows about one shard: plain data, `Send`, cloneable.
#[derive(Clone, Debug)]
pub struct ShardReport {
    pub shard: u32,
    pub status: ShardStatus,
    pub counters: Counters,
    /// Indexed by `RejectReason as usize` (see [`ShardReport::proposals_rejected`]).
    pub proposals_rejected: [u64; RejectReason::COUNT],
    /// Indexed by `RejectReason as usize` (see [`ShardReport::reads_rejected`]).
    pub reads_rejected: [u64; RejectReason::COUNT],
    pub gauges: Gauges,
    /// Every histogram: per command, the fixed ones, then per peer.
    pub histograms: Vec<(HistogramKey, Recorded)>,
    /// Peers with metrics, by id.
    pub peers: Vec<PeerReport>,
    /// Frames the transport refused, by reason.
    pub transport_rejected: Vec<(&'static str, u64)>,
}

impl ShardReport {
    /// Proposals rejected for `reason`.
    pub fn proposals_rejected(&self, reason: RejectReason) -> u64 {
        self.proposals_rejected[reason as usize]
    }

    /// Reads rejected for `reason`.
    pub fn reads_rejected(&self, reason: RejectReason) -> u64 {
        self.reads_rejected[reason as usize]
    }

    /// A histogram by key.
    pub fn histogram(&self, key: HistogramKey) -> Option<&Recorded> {
        self.histograms.iter().find(|(k, _)| *k == key).map(|(_, r)| r)
    }
}

/// A member of the cluster as this node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub id: NodeId,
    /// Peer address, `HOST:PORT`.
    pub addr: String,
    pub learner: bool,
}

/// Node-level facts for `/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeInfo {
    pub node_id: NodeId,
    pub cluster: String,
    pub members: Vec<Member>,
}

/// A shard's latest report and when it was published.
#[derive(Clone, Debug)]
pub struct PublishedReport {
    pub report: Arc<ShardReport>,
    pub at: Instant,
}

/// The latest report of every shard and the node's facts, shared between the shards
/// (writers, a few times per second each) and the admin thread (reader).
///
/// One lock per shard, so shards never wait for each other; each lock is held only to
/// swap an `Arc`, so a reader never holds up a shard for longer than that.
#[derive(Debug)]
pub struct Published {
    node: Mutex<NodeInfo>,
    shards: Box<[Mutex<Option<PublishedReport>>]>,
}

/// Takes a lock even if a holder panicked: every critical section here is a plain
/// assignment or clone, which cannot leave the data half-updated.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Published {
    /// Room for `shards` shards' reports, none published yet.
    pub fn new(node: NodeInfo, shards: u32) -> Published {
        Published { node: Mutex::new(node), shards: (0..shards).map(|_| Mutex::new(None)).collect() }
    }

    /// Number of shards.
    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    /// Replaces the shard's report with `report`.
    ///
    /// # Panics
    ///
    /// If `report.shard` is not below [`Published::shard_count`] (a wiring bug).
    pub fn publish(&self, report: ShardReport) {
        let shard = report.shard as usize;
        assert!(shard < self.shards.len(), "report from shard {shard} but only {} shards exist", self.shards.len());
        let fresh = PublishedReport { report: Arc::new(report), at: Instant::now() };
        // Swap under the lock, drop the old report (freeing its histograms) after it.
        let old = lock(&self.shards[shard]).replace(fresh);
        drop(old);
    }

    /// Replaces the member list (after a membership change).
    pub fn set_members(&self, members: Vec<Member>) {
        lock(&self.node).members = members;
    }

    /// The node's facts.
    pub fn node(&self) -> NodeInfo {
        lock(&self.node).clone()
    }

    /// One shard's latest report, if it has published one.
    pub fn shard(&self, shard: u32) -> Option<PublishedReport> {
        self.shards.get(shard as usize).and_then(|m| lock(m).clone())
    }

    /// Every shard's latest report, by shard.
    pub fn shards(&self) -> Vec<Option<PublishedReport>> {
        self.shards.iter().map(|m| lock(m).clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_engine::{ConfState, PeerProgress, ProgressState, Stats, Status};

    const HB: Duration = Duration::from_millis(100);

    #[test]
    fn every_unit_builds_a_histogram_that_takes_its_maximum() {
        for unit in [Unit::Microseconds, Unit::Entries, Unit::Bytes] {
            let mut r = Recorded::new(unit);
            r.record(0);
            r.record(unit.max());
            r.record(u64::MAX);
            assert_eq!(r.count(), 3);
            assert!(r.histogram().max() >= unit.max(), "{unit:?}");
            assert_eq!(r.sum(), u64::MAX, "sum saturates and keeps the true values");
        }
    }

    #[test]
    fn histogram_precision_is_one_percent() {
        let mut r = Recorded::new(Unit::Microseconds);
        for v in [100u64, 1_000, 10_000, 1_000_000] {
            r.record(v);
        }
        for q in [0.25, 0.5, 0.75, 1.0] {
            let v = r.histogram().value_at_quantile(q);
            let exact = [100u64, 1_000, 10_000, 1_000_000][((q * 4.0) as usize).max(1) - 1];
            assert!(v.abs_diff(exact) * 100 <= exact, "q{q}: {v} vs {exact}");
        }
    }

    #[test]
    fn command_names_map_back_case_insensitively() {
        for c in Command::ALL {
            assert_eq!(Command::from_name(c.name().as_bytes()), if c == Command::Other { Command::Other } else { c });
            assert_eq!(
                Command::from_name(c.name().to_ascii_uppercase().as_bytes()),
                Command::from_name(c.name().as_bytes())
            );
        }
        assert_eq!(Command::from_name(b"SeT"), Command::Set);
        assert_eq!(Command::from_name(b"CONFIG"), Command::Other);
        assert_eq!(Command::from_name(b""), Command::Other);
        assert_eq!(Command::ALL.iter().enumerate().filter(|(i, c)| c.index() != *i).count(), 0);
    }

    #[test]
    fn reject_reasons_index_in_order() {
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
    }

    #[test]
    fn histogram_names_and_labels() {
        assert_eq!(HistogramKey::ClientLatency(Command::Set).name(), "client_latency_set");
        assert_eq!(HistogramKey::HeartbeatInterval(2).name(), "heartbeat_interval_peer_2");
        assert_eq!(HistogramKey::PeerSendQueueDelay(3).name(), "peer_send_queue_delay_peer_3");
        assert_eq!(HistogramKey::WalFsync.name(), "wal_fsync");
        assert_eq!(HistogramKey::WalFsync.label(), None);
        assert_eq!(HistogramKey::HeartbeatInterval(2).label(), Some(("peer", "2".to_string())));
        assert_eq!(HistogramKey::WalBatchBytes.unit(), Unit::Bytes);
        for (i, k) in HistogramKey::FIXED.iter().enumerate() {
            assert_eq!(ShardMetrics::fixed_index(*k), i);
        }
    }

    #[test]
    fn heartbeat_detector_warns_exactly_past_twice_the_interval() {
        let mut d = HeartbeatDetector::new();
        let t0 = Instant::now();
        assert_eq!(d.observe(2, t0, HB), None, "the first heartbeat has no gap");
        assert_eq!(d.observe(2, t0 + HB, HB), None, "on time");
        assert_eq!(d.observe(2, t0 + HB * 3, HB), None, "exactly 2x is not late (etcd: exceed > 0)");
        let late = d.observe(2, t0 + HB * 5 + Duration::from_micros(1), HB).expect("just over 2x is late");
        assert_eq!(late.peer, 2);
        assert_eq!(late.observed, HB * 2 + Duration::from_micros(1));
        assert_eq!(late.expected, HB);
        assert_eq!(late.limit(), HB * 2);
        assert_eq!(d.observe(2, t0 + HB * 6, HB), None, "measured from the late one, not the one before");
        // Peers are independent.
        assert_eq!(d.observe(3, t0 + HB * 6, HB), None);
        assert!(d.observe(3, t0 + HB * 9, HB).is_some());
        assert_eq!(d.observe(2, t0 + HB * 7, HB), None);
        // After a reset (leadership change) the next heartbeat has no gap.
        d.reset();
        assert_eq!(d.observe(2, t0 + HB * 100, HB), None);
        // The interval in force is the one passed now (it can change at run time).
        assert!(d.observe(2, t0 + HB * 103, HB).is_some());
        assert_eq!(d.observe(2, t0 + HB * 106, HB * 2), None);
    }

    #[test]
    fn heartbeat_detector_is_bounded_in_peers() {
        let mut d = HeartbeatDetector::new();
        let t0 = Instant::now();
        for p in 1..=(PEERS_MAX as u64 + 5) {
            d.observe(p, t0, HB);
        }
        assert_eq!(d.last.len(), PEERS_MAX);
        assert_eq!(d.observe(PEERS_MAX as u64 + 3, t0 + HB * 10, HB), None, "untracked peers never warn");
        d.forget(1);
        assert_eq!(d.gap(1, t0), None);
    }

    #[test]
    fn contention_message_names_peer_intervals_cause_and_histograms() {
        let c = Contention { peer: 7, observed: Duration::from_millis(350), expected: HB };
        let text = c.to_string();
        for needle in ["peer 7", "350ms", "100ms", "200ms", "likely overloaded", "ready_loop_iteration", "wal_fsync"] {
            assert!(text.contains(needle), "{needle:?} missing from {text}");
        }
    }

    #[test]
    fn shard_metrics_count_contention_and_record_every_gap() {
        let mut m = ShardMetrics::new(0, MetricsConfig::default());
        let t0 = Instant::now();
        let gaps_ms = [0u64, 100, 100, 250, 100, 199, 201];
        let mut t = t0;
        let mut warned = Vec::new();
        for (i, g) in gaps_ms.iter().enumerate() {
            t += Duration::from_millis(*g);
            if m.record_heartbeat_sent(2, t, HB).is_some() {
                warned.push(i);
            }
        }
        assert_eq!(warned, vec![3, 6], "gaps of 250 ms and 201 ms exceed 2 x 100 ms; 199 ms does not");
        assert_eq!(m.counters().heartbeat_contention, 2);
        let count = |m: &ShardMetrics| m.histogram(HistogramKey::HeartbeatInterval(2)).map(Recorded::count);
        assert_eq!(count(&m), Some(gaps_ms.len() as u64 - 1), "every gap, late or not");
        let sum = m.histogram(HistogramKey::HeartbeatInterval(2)).map(Recorded::sum);
        assert_eq!(sum, Some((100 + 100 + 250 + 100 + 199 + 201) * 1000));
        // A leadership change resets the detector: the next heartbeat is no gap at all.
        m.record_leader(1, true);
        assert_eq!(m.record_heartbeat_sent(2, t + Duration::from_secs(10), HB), None);
        assert_eq!(count(&m), Some(6));
    }

    #[test]
    fn slow_fsync_and_apply_warn_above_threshold_and_name_histograms() {
        let config = MetricsConfig {
            slow_fsync_threshold: Duration::from_millis(10),
            slow_apply_threshold: Duration::from_millis(5),
        };
        let mut m = ShardMetrics::new(0, config);
        assert_eq!(m.record_wal_fsync(Duration::from_millis(10)), None, "at the threshold is fine");
        let w = m.record_wal_fsync(Duration::from_millis(11)).expect("over the threshold");
        assert_eq!(w.kind, SlowKind::Fsync);
        assert!(w.to_string().contains("wal_fsync"), "{w}");
        assert!(w.to_string().contains("11ms"), "{w}");
        assert_eq!(m.record_apply_batch(3, Duration::from_millis(1)), None);
        let w = m.record_apply_batch(4, Duration::from_millis(6)).expect("slow apply");
        assert!(w.to_string().contains("apply_batch") && w.to_string().contains("commit_to_apply"), "{w}");
        let c = m.counters();
        assert_eq!((c.wal_fsyncs, c.slow_fsyncs, c.applies, c.slow_applies), (2, 1, 7, 1));
    }

    #[test]
    fn a_zero_threshold_disables_the_slow_warnings() {
        let config = MetricsConfig { slow_fsync_threshold: Duration::ZERO, slow_apply_threshold: Duration::ZERO };
        let mut m = ShardMetrics::new(0, config);
        assert_eq!(m.record_wal_fsync(Duration::from_secs(5)), None);
        assert_eq!(m.record_apply_batch(1, Duration::from_secs(5)), None);
        let c = m.counters();
        assert_eq!((c.wal_fsyncs, c.slow_fsyncs, c.applies, c.slow_applies), (1, 0, 1, 0));
    }

    #[test]
    fn leader_changes_count_new_known_leaders_only() {
        let mut m = ShardMetrics::new(0, MetricsConfig::default());
        m.record_leader(0, false);
        m.record_leader(2, false);
        m.record_leader(2, false);
        m.record_leader(0, false);
        m.record_leader(3, false);
        m.record_leader(1, true);
        assert_eq!(m.counters().leader_changes, 3);
    }

    #[test]
    fn peers_are_bounded_and_removable() {
        let mut m = ShardMetrics::new(0, MetricsConfig::default());
        for p in 1..=(PEERS_MAX as u64 + 2) {
            m.record_peer_send_queue_delay(p, Duration::from_micros(5));
        }
        assert_eq!(m.peers.len(), PEERS_MAX);
        assert_eq!(m.counters().peer_records_dropped, 2);
        m.remove_peer(1);
        assert!(m.histogram(HistogramKey::PeerSendQueueDelay(1)).is_none());
        m.record_peer_send_queue_delay(100, Duration::from_micros(5));
        assert!(m.histogram(HistogramKey::PeerSendQueueDelay(100)).is_some());
    }

    fn engine_status(role: Role) -> Status {
        Status {
            id: 1,
            role,
            term: 4,
            vote: 1,
            leader: if role == Role::Leader { 1 } else { 2 },
            commit: 10,
            applied: 9,
            persisted: 10,
            first_index: 1,
            last_index: 11,
            lead_transferee: 0,
            election_timeout_ticks: 10,
            conf_state: ConfState { voters: vec![1, 2, 3], learners: vec![4] },
            pending_reads: 2,
            progress: if role == Role::Leader {
                [1u64, 2, 4]
                    .iter()
                    .map(|&id| PeerProgress {
                        id,
                        is_learner: id == 4,
                        matched: 10 - id,
                        next: 11 - id + 1,
                        state: if id == 4 { ProgressState::Snapshot } else { ProgressState::Replicate },
                        inflight_msgs: id as usize,
                        inflight_bytes: 100 * id,
                        recent_active: true,
                        paused: id == 4,
                        ticks_since_heard: if id == 1 { 0 } else { id },
                    })
                    .collect()
            } else {
                Vec::new()
            },
            stats: Stats { campaigns: 3, ..Stats::default() },
        }
    }

    #[test]
    fn shard_status_mirrors_the_engine() {
        let s = ShardStatus::from_engine(0, &engine_status(Role::Leader), false, 5, Duration::from_millis(10));
        assert_eq!((s.role, s.term, s.leader, s.commit, s.applied, s.last_snapshot_index), ("leader", 4, 1, 10, 9, 5));
        assert_eq!(s.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![2, 4], "self is not a peer");
        let p4 = &s.peers[1];
        assert_eq!((p4.learner, p4.state, p4.last_contact_ms, p4.inflight), (true, "snapshot", 40, 4));
        assert_eq!(s.engine.campaigns, 3);
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["peers"][0]["match"], 8);
        assert_eq!(json["learners"][0], 4);

        let f = ShardStatus::from_engine(0, &engine_status(Role::Follower), false, 0, Duration::from_millis(10));
        assert_eq!((f.role, f.peers.len()), ("follower", 0));
        let l = ShardStatus::from_engine(0, &engine_status(Role::Follower), true, 0, Duration::from_millis(10));
        assert_eq!(l.role, "learner");
        let c = ShardStatus::from_engine(0, &engine_status(Role::PreCandidate), false, 0, Duration::from_millis(10));
        assert_eq!(c.role, "pre-candidate");
    }

    #[test]
    fn report_carries_everything_and_publish_replaces_it() {
        let mut m = ShardMetrics::new(1, MetricsConfig::default());
        m.record_client_request(Command::Set, Duration::from_micros(250));
        m.record_proposals(3);
        m.record_proposal_rejected(RejectReason::NoLeader);
        m.record_read_rejected(RejectReason::Timeout);
        m.record_wal_write(3, 4096, Duration::from_micros(40));
        m.set_transport_counters(2, TransportCounters { bytes_out: 9, ..TransportCounters::default() });
        m.set_transport_rejections(vec![("too_large", 1)]);
        m.set_pending(4, 5);
        m.set_clients(6);
        let status = ShardStatus::from_engine(1, &engine_status(Role::Leader), false, 0, Duration::from_millis(10));
        let report = m.report(status);
        assert_eq!(report.shard, 1);
        assert_eq!(report.counters.proposals, 3);
        assert_eq!(report.counters.wal_bytes, 4096);
        assert_eq!(report.proposals_rejected(RejectReason::NoLeader), 1);
        assert_eq!(report.reads_rejected(RejectReason::Timeout), 1);
        assert_eq!(report.gauges, Gauges { pending_proposals: 4, pending_reads: 5, clients: 6 });
        assert_eq!(report.histogram(HistogramKey::ClientLatency(Command::Set)).map(Recorded::count), Some(1));
        assert_eq!(report.histogram(HistogramKey::WalBatchBytes).map(Recorded::sum), Some(4096));
        assert!(report.histogram(HistogramKey::HeartbeatInterval(2)).is_some());
        assert_eq!(report.peers[0].transport.bytes_out, 9);
        assert_eq!(report.histograms.len(), Command::COUNT + HistogramKey::FIXED.len() + 2);

        let published = Published::new(NodeInfo { node_id: 1, cluster: "c".into(), members: vec![] }, 2);
        assert!(published.shard(1).is_none());
        published.publish(report.clone());
        m.record_proposals(1);
        published.publish(m.report(report.status.clone()));
        let latest = published.shard(1).expect("published");
        assert_eq!(latest.report.counters.proposals, 4);
        assert!(published.shards()[0].is_none());
        published.set_members(vec![Member { id: 2, addr: "h:1".into(), learner: false }]);
        assert_eq!(published.node().members.len(), 1);
    }

    #[test]
    #[should_panic(expected = "report from shard 1 but only 1 shards exist")]
    fn publishing_an_unknown_shard_is_a_bug() {
        let published = Published::new(NodeInfo { node_id: 1, cluster: "c".into(), members: vec![] }, 1);
        let m = ShardMetrics::new(1, MetricsConfig::default());
        let status = ShardStatus::from_engine(1, &engine_status(Role::Follower), false, 0, Duration::from_millis(10));
        published.publish(m.report(status));
    }

    #[test]
    fn merging_adds_counts_and_sums() {
        let mut a = Recorded::new(Unit::Microseconds);
        let mut b = Recorded::new(Unit::Microseconds);
        a.record(10);
        b.record(20);
        b.record(30);
        a.merge(&b);
        assert_eq!((a.count(), a.sum(), a.histogram().max()), (3, 60, 30));
    }

    #[test]
    fn reports_are_send() {
        fn is_send<T: Send + Sync>() {}
        is_send::<ShardReport>();
        is_send::<Published>();
    }
}
