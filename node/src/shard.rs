//! One shard: a member of one Raft group, on one core. It owns the engine, the WAL, the
//! peer transport, the KV state and the client connections that landed on its core;
//! its tasks share state through `Rc<RefCell<_>>` and never block each other.
//!
//! The Ready loop follows DESIGN.md's order: collect input (peer messages, WAL
//! completions, ticks, queued client requests), take a Ready, send its messages (the
//! leader's appends go out while its own write is in flight), submit the write to the
//! WAL without waiting for it (asynchronous persistence: the engine holds votes and
//! append responses until `on_persist_ready`), apply committed entries and answer the
//! clients waiting for them, serve reads whose index is applied, advance.
//!
//! Client writes queue in the shard state and are proposed together once per loop
//! iteration, so every write that arrived while the previous WAL write was in flight
//! shares one Ready and one WAL append: the group commit.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::failpoints::{self, CrashPoint, Outgoing, WalFs};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_lite::future;
use log::{error, info, warn};
use skiff_engine::{
    ConfChange, Entry, EntryKind, HardState, Index, Message, MessageBody, NodeId, RawNode, ReadState, Ready,
    RequestError, Role, SnapshotMeta, Storage,
};
use skiff_net::{AppFrame, Inbound, Lane, Transport, TransportConfig};
use skiff_wal::{
    Append, Completion, FileSystem, Identity, IoTiming, RECORD_HEADER_BYTES, Wal, WalError, WalOptions, WalStorage,
};

use crate::admin::{Op, OpReply, OpRequest, OpsReceiver};
use crate::commands::{self, Action, Read, Reply};
use crate::kv::{Command, Kv, Origin};
use crate::metrics::{self, MetricsConfig, RejectReason, ShardMetrics, ShardStatus};
use crate::snapshot::{self, Descriptor, Receiver, SnapshotDir, SnapshotError, SnapshotHeader};
use crate::sync::{Notify, Slot};
use crate::trace::TraceEvent;

/// The engine's storage: the WAL's index and tail cache.
pub type LogStorage = WalStorage<<WalFs as FileSystem>::File>;

/// Messages taken from the transport per loop iteration: enough to drain a busy peer
/// link in one go, few enough that ticks and clients are not starved.
pub const INBOUND_BATCH_MAX: usize = 4096;
/// A read-index request unanswered this long is asked again (etcd's server retries
/// after 500 ms too): its message or the answer may have been dropped, or the leader
/// restarted without this node seeing a change of leader. Asking again is safe: any
/// index confirmed after a read arrived serves it.
const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// Snapshot bytes per chunk frame: bounded memory on both ends, and well under the
/// peer frame cap.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Application frame tag of a snapshot chunk.
pub const APP_SNAPSHOT_CHUNK: u32 = 1;
/// Whether ticks are skipped: a follower finishing a received snapshot holds the
/// leader's messages, heartbeats included (a leader keeps ticking, so keeps
/// heartbeating).
fn ticks_skipped(st: &State) -> bool {
    st.finishing.is_some() && st.node.role() != Role::Leader
}

/// Raft messages held while a received snapshot is being finished (heartbeats and the
/// odd append during a few seconds at most; more are dropped and retransmitted).
const HELD_MESSAGES_MAX: usize = 4096;
/// Header of a snapshot chunk frame: index, term, offset, total bytes (u64 LE each).
pub const SNAPSHOT_CHUNK_HEADER_BYTES: usize = 32;
/// How long a stopping shard lets in-flight writes finish before failing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often a shard publishes its status for the admin port.
/// Room kept in each WAL batch for what rides along with the entries: the batch
/// header, the preamble records a new segment starts with, the hard state, snapshot
/// markers, and padding to the block size.
const APPEND_SLACK_BYTES: usize = 64 * 1024;

/// Splits `entries` into consecutive ranges of at most `budget` encoded bytes each
/// (an entry costs its data plus a record header); always at least one range, and an
/// entry larger than the budget gets a range of its own.
fn split_entries(entries: &[Entry], budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for (i, e) in entries.iter().enumerate() {
        let cost = e.data.len() + RECORD_HEADER_BYTES;
        if i > start && bytes + cost > budget {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += cost;
    }
    out.push(start..entries.len());
    out
}

/// What chunk `i` of the `count` appends one Ready is written as carries.
///
/// The snapshot install goes first. The hard state goes in the first and the last:
/// the engine needs it durable no later than the entries it comes with (a membership
/// change must never be on disk without the commit index that covers the change
/// before it), and a crash between two chunks then leaves it with a commit index
/// perhaps beyond the entries that made it to disk, which recovery clamps to the log.
/// Only the last carries this Ready's number and any compaction; the earlier ones
/// repeat the previous number, whose completion reports nothing new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkPart {
    install: bool,
    hard_state: bool,
    last: bool,
}

impl ChunkPart {
    fn of(i: usize, count: usize) -> ChunkPart {
        let last = i + 1 == count;
        ChunkPart { install: i == 0, hard_state: i == 0 || last, last }
    }
}

const _: () = assert!(skiff_tuning::config::WAL_WRITES_IN_FLIGHT_MAX <= skiff_wal::APPENDS_IN_FLIGHT_MAX);

pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(250);

const _: () = assert!(SNAPSHOT_CHUNK_BYTES + SNAPSHOT_CHUNK_HEADER_BYTES < 16 << 20);

/// How a shard starts when its WAL is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// Found a new cluster whose voters are every configured member.
    Bootstrap,
    /// Start empty and wait to be added by the cluster's leader.
    Join,
    /// Only restart from existing state; an empty data directory is refused.
    Restart,
}

/// Everything a shard needs to start.
#[derive(Clone, Debug)]
pub struct ShardParams {
    pub node_id: NodeId,
    pub shard: u32,
    pub cluster_id: u64,
    /// Engine configuration (`applied` is filled in from the snapshot at start).
    pub engine: skiff_engine::Config,
    /// This shard's directory: `wal/` and `snapshots/` live under it.
    pub dir: PathBuf,
    /// Every member, this node included.
    pub members: Vec<(NodeId, SocketAddr)>,
    pub start: StartMode,
    pub tick: Duration,
    pub heartbeat_ticks: u32,
    pub wal_segment_bytes: u64,
    pub frame_bytes_max: usize,
    pub snapshot_log_bytes: u64,
    /// Entries the WAL keeps below each snapshot, and the bound on their bytes.
    pub snapshot_catchup_entries: u64,
    pub snapshot_catchup_bytes: u64,
    /// Appends not yet durable before the loop stops taking Readies (1..=8).
    pub wal_writes_in_flight: u64,
    /// How the WAL makes appends durable.
    pub wal_sync: skiff_wal::SyncMode,
    pub max_clients: usize,
    pub max_pending_proposals: usize,
    pub max_pending_reads: usize,
    pub request_timeout: Duration,
    pub fsync_warn: Duration,
    pub apply_warn: Duration,
    /// Records WAL submissions, completions and sent messages (tests of the ordering
    /// rules); `None` in production.
    pub trace: Option<crate::trace::Trace>,
}

/// Why a shard stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("transport: {0}")]
    Net(#[from] skiff_net::NetError),
    #[error("engine: {0}")]
    Engine(#[from] skiff_engine::Error),
    #[error("{0}")]
    Start(String),
}

/// A write from a client, from the moment it is queued until it is applied.
struct PendingWrite {
    slot: Rc<Slot<Reply>>,
    /// When it was handed to the engine.
    proposed: Option<Instant>,
}

/// A read from a client, from the moment it is queued until it is served.
struct PendingRead {
    slot: Rc<Slot<Reply>>,
    read: Read,
    /// When its read index was asked for.
    asked: Option<Instant>,
    /// Set once the read index is known.
    index: Option<Index>,
}

/// What a client task waits for, in request order.
#[derive(Debug)]
pub enum Pending {
    Done(Reply),
    Wait(Rc<Slot<Reply>>),
    Quit,
}

/// What a client connection's dispatched, not yet answered requests include.
#[derive(Clone, Copy, Debug, Default)]
pub struct Unanswered {
    pub writes: bool,
    pub reads: bool,
}

/// What woke the Ready loop.
enum Woken {
    Wal(Result<Completion, WalError>),
    Op(OpRequest),
    Other,
}

/// A snapshot received from the leader, verified and durable, waiting for the Raft
/// message that installs it.
struct Received {
    index: Index,
    kv: Kv,
    desc: Descriptor,
}

struct State {
    node: RawNode<LogStorage>,
    kv: Kv,
    applied: Index,
    next_request: u64,
    queued_writes: Vec<(u64, Entry)>,
    /// Bytes of the entries in `queued_writes`: with no leader they pile up there, and
    /// a count bound alone would let 65,536 writes of 8 MiB each hold 512 GiB.
    queued_write_bytes: u64,
    writes: HashMap<u64, PendingWrite>,
    write_deadlines: VecDeque<(Instant, u64)>,
    queued_reads: Vec<u64>,
    reads: HashMap<u64, PendingRead>,
    read_deadlines: VecDeque<(Instant, u64)>,
    /// Reads whose index is known, by index, served once it is applied.
    reads_by_index: BTreeMap<Index, Vec<u64>>,
    /// Read-index requests in flight: one per loop iteration that had reads to ask
    /// for, under its own context, covering all of them (etcd's server does the same:
    /// a follower relays one ReadIndex message per batch, not one per read, so a burst
    /// of reads cannot flood the peer's control lane).
    read_batches: HashMap<u64, Vec<u64>>,
    /// When each batch was asked, oldest first: one unanswered after
    /// [`READ_INDEX_RETRY`] is asked again (its message or the answer may have been
    /// dropped, or the leader restarted without this node seeing a leader change).
    read_batch_asked: VecDeque<(Instant, u64)>,
    clients: usize,
    last_tick: Instant,
    bytes_since_snapshot: u64,
    snapshot_running: bool,
    last_snapshot: Index,
    /// A snapshot written and waiting to be recorded in the WAL (and then served).
    pending_compaction: Option<(SnapshotMeta, Descriptor)>,
    /// Older snapshot files to remove once the WAL append with this seq is durable.
    remove_snapshots_after: Option<(u64, Index)>,
    receiving: Option<Receiver>,
    /// The snapshot whose received file is being made durable, verified and decoded on
    /// the blocking thread (a large state takes seconds: not on the Ready loop's).
    finishing: Option<Index>,
    /// Raft messages that arrived while `finishing`, stepped in order once the file is
    /// ready: the leader's Snapshot message comes right behind the last chunk, and an
    /// append stepped before the snapshot is installed would be rejected and make the
    /// leader send the whole snapshot again. At most [`HELD_MESSAGES_MAX`].
    held: Vec<Message>,
    received: Option<Received>,
    /// Peers a snapshot is being streamed to.
    sending: HashSet<NodeId>,
    snapshot_reports: Vec<(NodeId, bool)>,
    last_ready: u64,
    /// The hard state of commit-only Readies, which are not written on their own: it
    /// goes to disk with the next write (a commit index that lags on disk is safe).
    unwritten_hard_state: Option<HardState>,
    metrics: ShardMetrics,
    leader: NodeId,
    /// The role the last soft state reported, to log each start of a campaign.
    role: Role,
    stopping: bool,
    last_publish: Instant,
}

/// A running shard. Shared by its tasks through `Rc`.
pub struct Shard {
    p: ShardParams,
    st: RefCell<State>,
    wake: Notify,
    wal: Wal<WalFs>,
    /// Entry bytes (with record headers) one WAL append may carry: a Ready with more is
    /// written as several appends, and a single entry larger than this is refused.
    append_budget: usize,
    storage: LogStorage,
    transport: Transport,
    snapdir: SnapshotDir,
    stop: Arc<AtomicBool>,
    published: Arc<metrics::Published>,
    /// Every member of the cluster list with its address as configured, for the
    /// member list `/status` shows (the group's voters and learners).
    configured: Vec<metrics::Member>,
    /// Taken out while the loop waits on it, put back after.
    ops: RefCell<Option<OpsReceiver>>,
}

/// Counts this shard's starts: holds their number, as decimal text.
pub const STARTS_FILE: &str = "starts";
/// Written first, synced, then renamed to [`STARTS_FILE`].
const STARTS_TMP_FILE: &str = "starts.tmp";
/// Low bits of a request id that count requests within one start; the bits above
/// hold the start's number.
const REQUEST_ID_START_SHIFT: u32 = 48;

/// Counts one more start of the shard whose directory is `dir` and returns its number
/// (1 on the first start), durably: request ids begin with it, so that an entry this
/// node proposed before a restart, committed and applied after it, never answers a
/// client of the new run (which it would if the ids repeated). A clock is not enough
/// for that: it can be set back.
pub fn count_start(dir: &Path) -> Result<u64, ShardError> {
    let path = dir.join(STARTS_FILE);
    let before = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u64>().map_err(|_| {
            ShardError::Start(format!(
                "{} does not hold a count of starts (it holds {:?}): skiff alone writes it. If it was damaged, \
                 remove it: the next start then counts from a random number, as on a new data directory",
                path.display(),
                text.chars().take(40).collect::<String>()
            ))
        })?,
        // A new data directory counts from a random number: a member replaced under
        // the same id (its disk lost, the node removed and joined again) would
        // otherwise number its requests as its predecessor's first run did, and an
        // entry of that run still in the log, applied during the catch-up, would
        // answer a client of the new one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => random_u16(),
        Err(e) => return Err(ShardError::Start(format!("cannot read {}: {e}", path.display()))),
    };
    let now =
        before.checked_add(1).ok_or_else(|| ShardError::Start(format!("{} is at its maximum", path.display())))?;
    crate::server::write_durably(&path, &dir.join(STARTS_TMP_FILE), format!("{now}\n").as_bytes())
        .map_err(|e| ShardError::Start(format!("cannot write {}: {e}", path.display())))?;
    Ok(now)
}

/// Bytes a client write's entry takes as a WAL record: what one log entry may hold
/// (`append_budget`) and what writes waiting for a leader are bounded by.
fn wal_record_bytes(e: &Entry) -> u64 {
    (e.data.len() + RECORD_HEADER_BYTES) as u64
}

/// 16 random bits from the kernel (or, should getrandom fail, from the clock and the
/// process id).
fn random_u16() -> u64 {
    let mut b = [0u8; 2];
    // SAFETY: `b` is a valid, writable buffer of the length passed.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 2 {
        return u64::from(u16::from_le_bytes(b));
    }
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ u64::from(std::process::id()).rotate_left(17)) & 0xFFFF
}

/// The first request id of start number `start`: ids of different starts differ in
/// their high bits (those of 65,536 consecutive starts never meet), and a start has
/// 2^48 ids, more than a node answers in years.
fn request_id_base(start: u64) -> u64 {
    ((start & 0xFFFF) << REQUEST_ID_START_SHIFT) | 1
}

impl Shard {
    /// Opens the WAL and the latest snapshot, starts the engine and the transport.
    /// Runs on the shard's executor.
    pub async fn open(
        p: ShardParams,
        peer_listener: std::net::TcpListener,
        stop: Arc<AtomicBool>,
        published: Arc<metrics::Published>,
        ops: OpsReceiver,
    ) -> Result<Rc<Shard>, ShardError> {
        let started = Instant::now();
        let wal_dir = p.dir.join("wal");
        let snapdir = SnapshotDir::new(p.dir.join("snapshots"));
        std::fs::create_dir_all(snapdir.path())
            .map_err(|e| ShardError::Start(format!("cannot create {}: {e}", snapdir.path().display())))?;
        let start = count_start(&p.dir)?;
        let mut opts = WalOptions::new(
            &wal_dir,
            Identity { cluster_id: p.cluster_id, shard_id: u64::from(p.shard), node_id: p.node_id },
        );
        opts.segment_bytes = p.wal_segment_bytes;
        opts.sync = p.wal_sync;
        opts.catchup_entries = p.snapshot_catchup_entries;
        opts.catchup_bytes = p.snapshot_catchup_bytes;
        let append_budget = opts.batch_bytes_max().saturating_sub(APPEND_SLACK_BYTES);
        let wal = Wal::open(WalFs::default(), opts).await?;
        if let Some(t) = &wal.open_report().torn_tail {
            warn!("shard {}: dropped a torn write at the tail of the WAL ({t:?}); it was never acknowledged", p.shard);
        }
        let storage = wal.storage();
        let wal_opened = started.elapsed();
        let meta = storage.snapshot_meta();
        let mut kv = Kv::new();
        if meta.index > 0 {
            let path = snapdir.file(meta.index);
            let (header, loaded, desc) = glommio::executor().spawn_blocking(move || snapshot::read(&path)).await?;
            if header.meta.index != meta.index || header.meta.term != meta.term || header.cluster_id != p.cluster_id {
                return Err(ShardError::Start(format!(
                    "snapshot file {} does not match the WAL's snapshot record (index {}, term {})",
                    snapdir.file(meta.index).display(),
                    meta.index,
                    meta.term
                )));
            }
            storage.set_snapshot_data(meta.index, desc.encode());
            kv = loaded;
        }
        let mut cfg = p.engine.clone();
        cfg.applied = meta.index;
        let empty =
            storage.last_index() == 0 && storage.initial_state().map(|s| s.hard_state.is_empty()).unwrap_or(false);
        let node = match (empty, p.start) {
            (true, StartMode::Bootstrap) => {
                let voters: Vec<NodeId> = p.members.iter().map(|(id, _)| *id).collect();
                info!("shard {}: founding a new cluster with voters {voters:?}", p.shard);
                RawNode::bootstrap(&cfg, storage.clone(), &voters)?
            }
            (true, StartMode::Restart) => {
                return Err(ShardError::Start(format!(
                    "the data directory {} holds no Raft state. If this node's data was lost, do not start it as a \
                     blank member (it could help elect a leader that lacks committed writes): remove it from the \
                     cluster (POST /members/remove?id={} on the leader's admin port), then start it with --join and \
                     add it back (POST /members/add?id={}). To found a new cluster, start every member with --bootstrap.",
                    p.dir.display(),
                    p.node_id,
                    p.node_id
                )));
            }
            _ => RawNode::new(&cfg, storage.clone())?,
        };
        if !empty {
            info!(
                "shard {}: recovered in {} ms (WAL {} ms): snapshot at index {} ({} keys), log {}..={}, commit {}",
                p.shard,
                started.elapsed().as_millis(),
                wal_opened.as_millis(),
                meta.index,
                kv.len(),
                storage.first_index(),
                storage.last_index(),
                storage.hard_state().commit
            );
        }
        let peers: Vec<(NodeId, SocketAddr)> = p.members.iter().copied().filter(|(id, _)| *id != p.node_id).collect();
        let mut tc = TransportConfig::new(p.cluster_id, p.node_id, p.shard, peers);
        tc.frame_body_bytes_max = p.frame_bytes_max;
        let transport = Transport::start(tc, peer_listener)?;
        let now = Instant::now();
        let st = State {
            node,
            kv,
            applied: meta.index,
            next_request: request_id_base(start),
            queued_writes: Vec::new(),
            queued_write_bytes: 0,
            writes: HashMap::new(),
            write_deadlines: VecDeque::new(),
            queued_reads: Vec::new(),
            reads: HashMap::new(),
            read_deadlines: VecDeque::new(),
            reads_by_index: BTreeMap::new(),
            read_batches: HashMap::new(),
            read_batch_asked: VecDeque::new(),
            clients: 0,
            last_tick: now,
            bytes_since_snapshot: 0,
            snapshot_running: false,
            last_snapshot: meta.index,
            pending_compaction: None,
            remove_snapshots_after: None,
            receiving: None,
            finishing: None,
            held: Vec::new(),
            received: None,
            sending: HashSet::new(),
            snapshot_reports: Vec::new(),
            last_ready: 0,
            unwritten_hard_state: None,
            metrics: ShardMetrics::new(
                p.shard,
                MetricsConfig { slow_fsync_threshold: p.fsync_warn, slow_apply_threshold: p.apply_warn },
            ),
            leader: 0,
            role: Role::Follower,
            stopping: false,
            last_publish: now,
        };
        Ok(Rc::new(Shard {
            p,
            st: RefCell::new(st),
            wake: Notify::default(),
            wal,
            append_budget,
            storage,
            transport,
            snapdir,
            stop,
            configured: published.node().members,
            published,
            ops: RefCell::new(Some(ops)),
        }))
    }

    pub fn params(&self) -> &ShardParams {
        &self.p
    }

    /// The peer listener's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    // ---- the client side ------------------------------------------------------------

    /// Whether another client connection may be accepted (and counts it if so).
    pub fn admit_client(&self) -> bool {
        let mut st = self.st.borrow_mut();
        if st.clients >= self.p.max_clients || st.stopping {
            return false;
        }
        st.clients += 1;
        true
    }

    /// A request refused before it reached the shard (the client codec's size caps).
    pub fn record_request_rejected(&self, reason: RejectReason) {
        self.st.borrow_mut().metrics.record_proposal_rejected(reason);
    }

    pub fn client_gone(&self) {
        self.st.borrow_mut().clients -= 1;
    }

    /// Turns a request into something to reply now or to wait for. Writes and reads
    /// are queued for the next loop iteration; the caller rings the doorbell
    /// ([`Shard::wake`]) once it has dispatched everything it read.
    ///
    /// `earlier` says what the connection's earlier requests still wait for: a read
    /// behind an unanswered write, or a write behind an unanswered read, is not taken
    /// (`None`) and must be dispatched again once those are answered. A connection's
    /// requests then take effect in the order it sent them, as Redis executes a
    /// pipeline: `SET k v` then `GET k` reads `v`, and a `GET` never sees a `SET` sent
    /// after it. Runs of reads, and runs of writes, still go out together.
    pub fn dispatch(&self, args: &[Bytes], earlier: &mut Unanswered) -> Option<Pending> {
        let action = commands::parse(args);
        match action {
            Action::Write(_) if earlier.reads => return None,
            Action::Read(_) if earlier.writes => return None,
            Action::Write(_) => earlier.writes = true,
            Action::Read(_) => earlier.reads = true,
            _ => {}
        }
        Some(self.dispatch_action(action))
    }

    fn dispatch_action(&self, action: Action) -> Pending {
        let now = Instant::now();
        let mut st = self.st.borrow_mut();
        if st.stopping && matches!(action, Action::Write(_) | Action::Read(_)) {
            match action {
                Action::Write(_) => st.metrics.record_proposal_rejected(RejectReason::ShuttingDown),
                _ => st.metrics.record_read_rejected(RejectReason::ShuttingDown),
            }
            return Pending::Done(Reply::err("ERR the node is shutting down"));
        }
        match action {
            Action::Now(r) => Pending::Done(r),
            Action::Quit => Pending::Quit,
            Action::Info(section) => Pending::Done(self.info(&st, section.as_deref())),
            Action::Write(cmd) => {
                if st.writes.len() >= self.p.max_pending_proposals {
                    st.metrics.record_proposal_rejected(RejectReason::Overloaded);
                    return Pending::Done(Reply::err("OVERLOADED too many writes in flight; retry later"));
                }
                let id = st.next_request;
                let entry = Entry::new(cmd.encode(Origin { node: self.p.node_id, request: id }));
                let size = wal_record_bytes(&entry);
                if size > self.append_budget as u64 {
                    st.metrics.record_proposal_rejected(RejectReason::TooLarge);
                    return Pending::Done(Reply::err(format!(
                        "ERR write too large: it encodes to {size} bytes, more than the {} one log entry may hold \
                         (raise wal_segment_bytes, up to an 8 MiB batch)",
                        self.append_budget
                    )));
                }
                // Writes waiting for a leader are bounded in bytes as the leader bounds
                // its uncommitted ones (max_uncommitted_bytes); an empty queue takes one
                // write whatever its size.
                let cap = self.p.engine.max_uncommitted_bytes;
                if cap > 0 && st.queued_write_bytes > 0 && st.queued_write_bytes + size > cap {
                    st.metrics.record_proposal_rejected(RejectReason::Overloaded);
                    return Pending::Done(Reply::err(
                        "OVERLOADED too many bytes of writes waiting for a leader; retry later",
                    ));
                }
                st.queued_write_bytes += size;
                st.next_request += 1;
                let slot = Rc::new(Slot::default());
                let deadline = now + self.p.request_timeout;
                st.queued_writes.push((id, entry));
                st.writes.insert(id, PendingWrite { slot: slot.clone(), proposed: None });
                st.write_deadlines.push_back((deadline, id));
                Pending::Wait(slot)
            }
            Action::Read(read) => {
                if st.reads.len() >= self.p.max_pending_reads {
                    st.metrics.record_read_rejected(RejectReason::Overloaded);
                    return Pending::Done(Reply::err("OVERLOADED too many reads in flight; retry later"));
                }
                let ctx = st.next_request;
                st.next_request += 1;
                let slot = Rc::new(Slot::default());
                let deadline = now + self.p.request_timeout;
                st.queued_reads.push(ctx);
                st.reads.insert(ctx, PendingRead { slot: slot.clone(), read, asked: None, index: None });
                st.read_deadlines.push_back((deadline, ctx));
                Pending::Wait(slot)
            }
        }
    }

    /// Rings the Ready loop's doorbell.
    pub fn wake(&self) {
        self.wake.notify();
    }

    fn info(&self, st: &State, section: Option<&str>) -> Reply {
        let s = st.node.status();
        let mut out = String::new();
        let want = |name: &str| section.is_none_or(|sec| sec == name || sec == "all" || sec == "everything");
        if want("server") {
            out.push_str(&format!(
                "# Server\r\nskiff_version:{}\r\nnode_id:{}\r\nshard:{}\r\nprocess_id:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                self.p.node_id,
                self.p.shard,
                std::process::id()
            ));
        }
        if want("replication") {
            let redis_role = if s.role == Role::Leader { "master" } else { "slave" };
            out.push_str(&format!(
                "# Replication\r\nrole:{redis_role}\r\nraft_role:{}\r\nterm:{}\r\nleader:{}\r\ncommit:{}\r\napplied:{}\r\nlast_snapshot:{}\r\nvoters:{:?}\r\nlearners:{:?}\r\n\r\n",
                s.role.name(),
                s.term,
                s.leader,
                s.commit,
                st.applied,
                st.last_snapshot,
                s.conf_state.voters,
                s.conf_state.learners
            ));
        }
        if want("clients") {
            out.push_str(&format!("# Clients\r\nconnected_clients:{}\r\n\r\n", st.clients));
        }
        if want("keyspace") {
            out.push_str(&format!("# Keyspace\r\ndb0:keys={}\r\n", st.kv.len()));
        }
        Reply::Bulk(Bytes::from(out))
    }

    // ---- the Ready loop ------------------------------------------------------------

    /// Runs the Ready loop until the stop flag is raised, then finishes in-flight
    /// writes (for at most [`SHUTDOWN_GRACE`]) and closes the WAL.
    pub async fn run(self: Rc<Self>) -> Result<(), ShardError> {
        let mut grace_until: Option<Instant> = None;
        loop {
            let completion = match self.wait_for_work().await {
                Woken::Wal(Err(e)) => return Err(self.fatal(e)),
                Woken::Wal(Ok(c)) => Some(c),
                Woken::Op(op) => {
                    self.operation(&mut self.st.borrow_mut(), op);
                    None
                }
                Woken::Other => None,
            };
            if let Err(e) = self.iteration(completion).await {
                return Err(self.fatal_any(e));
            }
            if self.stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                let until = *grace_until.get_or_insert_with(|| {
                    info!("shard {}: stopping; finishing in-flight writes", self.p.shard);
                    self.st.borrow_mut().stopping = true;
                    now + SHUTDOWN_GRACE
                });
                let idle = self.st.borrow().writes.is_empty();
                if idle || now >= until {
                    self.fail_all("ERR the node stopped before this request completed; its outcome is unknown");
                    // Whatever was submitted (votes, founding entries, appends a
                    // follower may have been promised) becomes durable before the
                    // process exits, whether or not the WAL itself gets closed.
                    while self.wal.in_flight() > 0 {
                        let c = self.wal.next_completion().await.map_err(|e| self.fatal(e))?;
                        self.completed(&mut self.st.borrow_mut(), c);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Closes the WAL (after `run` returned).
    pub async fn close(self: Rc<Self>) -> Result<(), ShardError> {
        match Rc::try_unwrap(self) {
            Ok(shard) => shard.wal.close().await.map_err(ShardError::from),
            // Tasks still hold the shard (clients mid-request): the WAL stops with
            // them; everything acknowledged is already durable.
            Err(_) => Ok(()),
        }
    }

    fn fatal(&self, e: WalError) -> ShardError {
        error!("shard {}: stopping: {e}", self.p.shard);
        self.fail_all("ERR the node stopped on a storage error; the outcome of this request is unknown");
        ShardError::Wal(e)
    }

    fn fatal_any(&self, e: ShardError) -> ShardError {
        error!("shard {}: stopping: {e}", self.p.shard);
        self.fail_all("ERR the node stopped on an error; the outcome of this request is unknown");
        e
    }

    fn fail_all(&self, msg: &str) {
        let mut st = self.st.borrow_mut();
        for (_, w) in st.writes.drain() {
            w.slot.fill(Reply::err(msg));
        }
        for (_, r) in st.reads.drain() {
            r.slot.fill(Reply::err(msg));
        }
        st.queued_writes.clear();
        st.queued_write_bytes = 0;
        st.queued_reads.clear();
        st.reads_by_index.clear();
        st.read_batches.clear();
        st.read_batch_asked.clear();
    }

    /// Waits until something needs the loop: the doorbell, a peer message, a WAL
    /// completion, an admin operation, or the next tick.
    async fn wait_for_work(&self) -> Woken {
        let until_tick = {
            let st = self.st.borrow();
            if ticks_skipped(&st) {
                // Ticks resume when the snapshot is finished, which rings the doorbell.
                self.p.tick
            } else {
                (st.last_tick + self.p.tick).saturating_duration_since(Instant::now())
            }
        };
        if until_tick.is_zero() {
            return Woken::Other;
        }
        let doorbell = async {
            self.wake.wait().await;
            Woken::Other
        };
        let inbound = async {
            self.transport.readable().await;
            Woken::Other
        };
        let wal = async { Woken::Wal(self.wal.next_completion().await) };
        let mut rx = self.ops.borrow_mut().take();
        let ops = async {
            // tokio's receiver is cancel-safe: losing the race loses nothing. Once the
            // admin port is gone it never resolves again.
            match rx.as_mut() {
                Some(r) => match r.recv().await {
                    Some(op) => Woken::Op(op),
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let tick = async {
            glommio::timer::sleep(until_tick).await;
            Woken::Other
        };
        let woken = future::or(doorbell, future::or(inbound, future::or(wal, future::or(ops, tick)))).await;
        *self.ops.borrow_mut() = rx;
        woken
    }

    async fn iteration(self: &Rc<Self>, first: Option<Completion>) -> Result<(), ShardError> {
        let now = Instant::now();
        {
            let mut st = self.st.borrow_mut();
            let st = &mut *st;
            if let Some(c) = first {
                self.completed(st, c);
            }
            while let Some(c) = self.wal.try_next_completion()? {
                self.completed(st, c);
            }
            // Ticks: one per elapsed interval, also after a stall, so that elections
            // and leases measure real time (the engine's lease needs it). They come
            // before the messages that arrived meanwhile: a leader back from a stall
            // must not answer a relayed read from a lease that ran out while it was
            // stalled, and a follower that acknowledges a heartbeat now must count its
            // election timeout (its promise not to vote for another) from now, not
            // from before the stall. While a follower finishes a received snapshot,
            // holding the leader's heartbeats, its ticks are skipped: it must not
            // campaign for want of messages it holds. A follower's clock running slow
            // only makes it grant votes later, which the leader's lease tolerates
            // (running fast would not be).
            if ticks_skipped(st) {
                st.last_tick = now;
            }
            let elapsed = now.saturating_duration_since(st.last_tick);
            let ticks = (elapsed.as_nanos() / self.p.tick.as_nanos().max(1)) as u32;
            let held = failpoints::hold_election_timer() && st.node.role() != Role::Leader;
            for _ in 0..ticks {
                if !held {
                    st.node.tick();
                }
            }
            st.last_tick += self.p.tick * ticks;
            let mut inbound = Vec::new();
            self.transport.recv_batch(&mut inbound, INBOUND_BATCH_MAX);
            for m in inbound {
                self.inbound(st, m)?;
            }
            let mut unreachable = Vec::new();
            self.transport.take_unreachable(&mut unreachable);
            for id in unreachable {
                st.node.report_unreachable(id);
            }
            for (id, ok) in std::mem::take(&mut st.snapshot_reports) {
                st.node.report_snapshot(id, ok);
            }
            while let Some(op) = self.ops.borrow_mut().as_mut().and_then(OpsReceiver::try_recv) {
                self.operation(st, op);
            }
            self.propose_queued(st);
            self.expire(st, now);
        }
        self.handle_readies().await?;
        self.after_apply().await?;
        let mut st = self.st.borrow_mut();
        let mut timings = Vec::new();
        self.wal.take_io_timings(&mut timings);
        for t in timings {
            match t {
                IoTiming::Write { entries, bytes, took } => st.metrics.record_wal_write(entries, bytes, took),
                IoTiming::Fsync { took } => {
                    if let Some(w) = st.metrics.record_wal_fsync(took) {
                        warn!("shard {}: {w}", self.p.shard);
                    }
                }
                IoTiming::DurableWrite { entries, bytes, took } => {
                    if let Some(w) = st.metrics.record_wal_durable_write(entries, bytes, took) {
                        warn!("shard {}: {w}", self.p.shard);
                    }
                }
            }
        }
        st.metrics.record_ready_iteration(now.elapsed());
        Ok(())
    }

    /// An operation from the admin port: only the leader may change the group.
    fn operation(&self, st: &mut State, req: OpRequest) {
        let leader = st.node.leader();
        let is_member = |id: NodeId| self.p.members.iter().any(|(m, _)| *m == id);
        let reply = if st.stopping {
            OpReply::Unavailable("the node is shutting down".into())
        } else if st.node.role() != Role::Leader {
            OpReply::NotLeader { leader }
        } else {
            let proposed = |r: Result<(), RequestError>, what: String| match r {
                Ok(()) => OpReply::Done(format!("proposed: {what}")),
                Err(RequestError::ConfChangePending) => {
                    OpReply::Conflict("a membership change is still being applied; retry when it is".into())
                }
                Err(RequestError::Invalid(why)) => {
                    OpReply::Invalid { parameter: req.op.parameter(), reason: why.into() }
                }
                Err(e) => OpReply::Conflict(e.to_string()),
            };
            // A change that names the wrong member is refused before it is proposed:
            // promoting an id that is not a learner would add a voter with no address
            // (a typo then costs the group its fault tolerance), and adding a voter
            // as a learner would demote it.
            let conf = st.node.conf_state();
            let role = |id: &NodeId| (conf.voters.contains(id), conf.learners.contains(id));
            let already = |id: NodeId, what: &str| OpReply::Conflict(format!("{id} is already a {what} of this group"));
            match &req.op {
                Op::TransferLeader { to } if *to == self.p.node_id => {
                    OpReply::Invalid { parameter: "to", reason: format!("{to} is this node, the leader already") }
                }
                Op::TransferLeader { to } => {
                    if !role(to).0 {
                        OpReply::Invalid { parameter: "to", reason: format!("{to} is not a voter of this group") }
                    } else {
                        st.node.transfer_leadership(*to);
                        OpReply::Done(format!("transferring leadership to {to}"))
                    }
                }
                Op::AddMember { id, .. } if !is_member(*id) => OpReply::Invalid {
                    parameter: "id",
                    reason: format!(
                        "{id} is not in this node's cluster list: add `{id}=HOST:PORT` to every member's --cluster \
                         and restart them one at a time first"
                    ),
                },
                Op::AddMember { id, .. } if role(id).0 => already(*id, "voter"),
                Op::AddMember { id, learner: true, .. } if role(id).1 => already(*id, "learner"),
                Op::AddMember { id, learner: true, .. } => {
                    proposed(st.node.propose_conf_change(ConfChange::AddLearner(*id)), format!("add learner {id}"))
                }
                Op::PromoteMember { id } if role(id).0 => already(*id, "voter"),
                Op::PromoteMember { id } if !role(id).1 => OpReply::Invalid {
                    parameter: "id",
                    reason: format!("{id} is not a learner of this group: add it as a learner first"),
                },
                Op::AddMember { id, learner: false, .. } | Op::PromoteMember { id } => {
                    proposed(st.node.propose_conf_change(ConfChange::AddVoter(*id)), format!("add voter {id}"))
                }
                Op::RemoveMember { id } if role(id) == (false, false) => {
                    OpReply::Invalid { parameter: "id", reason: format!("{id} is not a member of this group") }
                }
                Op::RemoveMember { id } => {
                    proposed(st.node.propose_conf_change(ConfChange::RemoveNode(*id)), format!("remove {id}"))
                }
                Op::SetElectionTimeout { ticks } => match u32::try_from(*ticks) {
                    Ok(t) => proposed(st.node.propose_election_timeout(t), format!("election timeout {t} ticks")),
                    Err(_) => OpReply::Invalid { parameter: "ticks", reason: "too large".into() },
                },
            }
        };
        info!("shard {}: admin operation {}: {reply:?}", self.p.shard, req.op.name());
        req.reply(reply);
    }

    fn trace(&self, e: impl FnOnce() -> TraceEvent) {
        if let Some(t) = &self.p.trace {
            t.lock().unwrap_or_else(|p| p.into_inner()).push(e());
        }
    }

    fn completed(&self, st: &mut State, c: Completion) {
        self.trace(|| TraceEvent::WalCompleted { tag: c.tag, synced: c.synced });
        st.node.on_persist_ready(c.tag);
        if let Some((seq, keep)) = st.remove_snapshots_after
            && c.seq >= seq
        {
            st.remove_snapshots_after = None;
            // Unlinking a snapshot file of tens of MB takes milliseconds (measured 4.5 ms
            // for 25 MB on ext4), then a directory fsync: not on the Ready loop's thread.
            let (dir, shard) = (self.snapdir.clone(), self.p.shard);
            let removal = glommio::executor().spawn_blocking(move || {
                if let Err(e) = dir.remove_older(keep) {
                    warn!("shard {shard}: removing old snapshots: {e}");
                }
            });
            glommio::spawn_local(removal).detach();
        }
    }

    fn inbound(self: &Rc<Self>, st: &mut State, m: Inbound) -> Result<(), ShardError> {
        let from = match &m {
            Inbound::Raft(msg) => msg.from,
            Inbound::App { from, .. } => *from,
        };
        if failpoints::drop_incoming(from) {
            return Ok(());
        }
        match m {
            Inbound::Raft(msg) if st.finishing.is_some() => {
                // Dropped past the bound: Raft retransmits.
                if st.held.len() < HELD_MESSAGES_MAX {
                    st.held.push(msg);
                }
            }
            Inbound::Raft(msg) => {
                if let MessageBody::Snapshot { snapshot } = &msg.body {
                    // Install only a snapshot whose file arrived whole and matches the
                    // leader's description of it; otherwise the leader retries.
                    let ok = st.received.as_ref().is_some_and(|r| {
                        r.index == snapshot.meta.index && Descriptor::decode(&snapshot.data) == Some(r.desc)
                    });
                    if !ok {
                        warn!(
                            "shard {}: snapshot message for index {} without its data; waiting for the leader to resend",
                            self.p.shard, snapshot.meta.index
                        );
                        return Ok(());
                    }
                }
                st.node.step(msg);
            }
            Inbound::App { from, frame } if frame.tag == APP_SNAPSHOT_CHUNK => {
                self.snapshot_chunk(st, from, frame.body)?
            }
            Inbound::App { from, frame } => {
                warn!("shard {}: unknown frame tag {} from {from}", self.p.shard, frame.tag)
            }
        }
        Ok(())
    }

    fn snapshot_chunk(self: &Rc<Self>, st: &mut State, from: NodeId, mut body: Bytes) -> Result<(), ShardError> {
        if body.len() < SNAPSHOT_CHUNK_HEADER_BYTES {
            warn!("shard {}: short snapshot chunk from {from}", self.p.shard);
            return Ok(());
        }
        if st.finishing.is_some() {
            // The blocking thread owns the partial file until it is finished; a
            // transfer started meanwhile is dropped and the leader retries.
            return Ok(());
        }
        let (index, _term, offset, total) =
            (body.get_u64_le(), body.get_u64_le(), body.get_u64_le(), body.get_u64_le());
        if offset == 0 {
            st.receiving = Some(Receiver::start(&self.snapdir, index)?);
        }
        let Some(rx) = st.receiving.as_mut().filter(|r| r.index() == index) else { return Ok(()) };
        if !rx.chunk(offset, &body)? {
            st.receiving = None;
            return Ok(());
        }
        if rx.received() >= total {
            let rx = st.receiving.take().expect("checked");
            st.finishing = Some(index);
            let (shard, dir) = (self.clone(), self.snapdir.clone());
            let finished = glommio::executor().spawn_blocking(move || {
                failpoints::crash_point(CrashPoint::SnapshotBeforeSave);
                failpoints::snapshot_finish_delay();
                let finished = rx.finish(&dir);
                failpoints::crash_point(CrashPoint::SnapshotAfterSave);
                finished
            });
            glommio::spawn_local(async move { shard.snapshot_finished(index, from, finished.await) }).detach();
        }
        Ok(())
    }

    /// A received snapshot file is durable and decoded (or refused): it can be
    /// installed, and the Raft messages held meanwhile are stepped now.
    fn snapshot_finished(
        self: &Rc<Self>,
        index: Index,
        from: NodeId,
        finished: Result<(SnapshotHeader, Kv, Descriptor), SnapshotError>,
    ) {
        let mut st = self.st.borrow_mut();
        st.finishing = None;
        match finished {
            Ok((_, kv, desc)) => {
                st.metrics.record_snapshot_received();
                st.received = Some(Received { index, kv, desc });
            }
            Err(e) => warn!("shard {}: snapshot from {from} refused: {e}", self.p.shard),
        }
        for msg in std::mem::take(&mut st.held) {
            if let Err(e) = self.inbound(&mut st, Inbound::Raft(msg)) {
                warn!("shard {}: a message held during the snapshot: {e}", self.p.shard);
            }
        }
        drop(st);
        self.wake();
    }

    /// Proposes every queued write, in batches of at most `max_size_per_msg` bytes (a
    /// follower relays each batch as one message, which must fit in a frame), and
    /// asks for every queued read's index, if a leader is known; otherwise they wait
    /// (until their deadline).
    fn propose_queued(&self, st: &mut State) {
        if st.node.leader() == 0 {
            return;
        }
        st.queued_write_bytes = 0;
        let mut queued = std::mem::take(&mut st.queued_writes).into_iter().peekable();
        while queued.peek().is_some() {
            let mut bytes = 0usize;
            let mut batch = Vec::new();
            while let Some((_, e)) = queued.peek() {
                if !batch.is_empty() && bytes + e.data.len() > self.p.engine.max_size_per_msg as usize {
                    break;
                }
                bytes += e.data.len();
                batch.push(queued.next().expect("peeked"));
            }
            let ids: Vec<u64> = batch.iter().map(|(id, _)| *id).collect();
            let entries: Vec<Entry> = batch.into_iter().map(|(_, e)| e).collect();
            match st.node.propose_batch(entries) {
                Ok(()) => {
                    st.metrics.record_proposals(ids.len() as u64);
                    let now = Instant::now();
                    for id in ids {
                        if let Some(w) = st.writes.get_mut(&id) {
                            w.proposed = Some(now);
                        }
                    }
                }
                Err(e) => {
                    let (reason, reply) = match e {
                        RequestError::Overloaded => (
                            RejectReason::Overloaded,
                            "OVERLOADED too many uncommitted writes; retry later".to_string(),
                        ),
                        RequestError::NoLeader => {
                            (RejectReason::NoLeader, "TRYAGAIN no leader is known; retry".to_string())
                        }
                        RequestError::TransferInProgress => {
                            (RejectReason::LeadershipLost, "TRYAGAIN leadership is changing; retry".to_string())
                        }
                        other => (RejectReason::Dropped, format!("ERR {other}")),
                    };
                    for id in ids {
                        st.metrics.record_proposal_rejected(reason);
                        if let Some(w) = st.writes.remove(&id) {
                            w.slot.fill(Reply::err(reply.clone()));
                        }
                    }
                }
            }
        }
        let reads = std::mem::take(&mut st.queued_reads);
        if reads.is_empty() {
            return;
        }
        let now = Instant::now();
        for ctx in &reads {
            if let Some(r) = st.reads.get_mut(ctx) {
                r.asked = Some(now);
            }
        }
        let batch = st.next_request;
        st.next_request += 1;
        match st.node.read_index(batch) {
            Ok(()) => {
                st.read_batches.insert(batch, reads);
                st.read_batch_asked.push_back((now, batch));
            }
            Err(e) => {
                for ctx in reads {
                    st.metrics.record_read_rejected(RejectReason::NoLeader);
                    if let Some(r) = st.reads.remove(&ctx) {
                        r.slot.fill(Reply::err(format!("TRYAGAIN {e}")));
                    }
                }
            }
        }
    }

    /// The leader changed: read-index requests asked of the old one may never be
    /// answered, so their reads are asked again (of the new leader, once known)
    /// instead of waiting out their deadline. Asking again is safe: an index confirmed
    /// after the read arrived serves it linearizably.
    fn reask_reads(&self, st: &mut State) {
        let batches: Vec<Vec<u64>> = st.read_batches.drain().map(|(_, ctxs)| ctxs).collect();
        st.read_batch_asked.clear();
        Self::requeue_reads(st, batches);
    }

    /// Puts the reads of dropped batches that still wait for an index back in the
    /// queue, in arrival order, ahead of reads queued since.
    fn requeue_reads(st: &mut State, batches: Vec<Vec<u64>>) {
        let mut again: Vec<u64> = Vec::new();
        for ctxs in batches {
            again.extend(ctxs.into_iter().filter(|c| st.reads.get(c).is_some_and(|r| r.index.is_none())));
        }
        if !again.is_empty() {
            again.sort_unstable();
            again.append(&mut st.queued_reads);
            st.queued_reads = again;
        }
    }

    /// Answers requests past their deadline.
    fn expire(&self, st: &mut State, now: Instant) {
        // The queues drop expired requests in one pass each, not one pass per expired
        // request: with no leader both hold up to their caps (65,536), and a scan per
        // expiry would take the shard's core when it most needs it (ticks, elections).
        let (mut writes_expired, mut reads_expired) = (false, false);
        while let Some(&(deadline, id)) = st.write_deadlines.front() {
            if deadline > now {
                break;
            }
            st.write_deadlines.pop_front();
            if let Some(w) = st.writes.remove(&id) {
                st.metrics.record_proposal_rejected(RejectReason::Timeout);
                let msg = if w.proposed.is_some() {
                    "TIMEOUT the write was not applied in time; its outcome is unknown"
                } else {
                    "TRYAGAIN no leader is known; retry later"
                };
                w.slot.fill(Reply::err(msg));
                writes_expired = true;
            }
        }
        while let Some(&(deadline, ctx)) = st.read_deadlines.front() {
            if deadline > now {
                break;
            }
            st.read_deadlines.pop_front();
            if let Some(r) = st.reads.remove(&ctx) {
                st.metrics.record_read_rejected(RejectReason::Timeout);
                let msg = if r.index.is_some() {
                    "TIMEOUT the read could not be served in time"
                } else {
                    "TRYAGAIN leadership could not be confirmed; retry later"
                };
                r.slot.fill(Reply::err(msg));
                reads_expired = true;
            }
        }
        if writes_expired {
            let writes = &st.writes;
            st.queued_writes.retain(|(q, _)| writes.contains_key(q));
            st.queued_write_bytes = st.queued_writes.iter().map(|(_, e)| wal_record_bytes(e)).sum();
        }
        if reads_expired {
            let reads = &st.reads;
            st.queued_reads.retain(|q| reads.contains_key(q));
        }
        let mut unanswered = Vec::new();
        while let Some(&(asked, batch)) = st.read_batch_asked.front() {
            if now.saturating_duration_since(asked) < READ_INDEX_RETRY {
                break;
            }
            st.read_batch_asked.pop_front();
            if let Some(ctxs) = st.read_batches.remove(&batch) {
                unanswered.push(ctxs);
            }
        }
        Self::requeue_reads(st, unanswered);
    }

    async fn handle_readies(self: &Rc<Self>) -> Result<(), ShardError> {
        loop {
            let (mut rd, installing): (Ready, Option<Received>) = {
                let mut st = self.st.borrow_mut();
                if !st.node.has_ready() {
                    return Ok(());
                }
                // Group commit: while the disk is busy with as many appends as allowed,
                // work accumulates in the engine and goes out as one larger batch
                // when a write completes (the completion wakes this loop).
                if self.wal.in_flight() >= self.p.wal_writes_in_flight {
                    return Ok(());
                }
                let rd = st.node.ready();
                // The received snapshot this Ready installs is taken now: another
                // transfer may finish while this loop waits for the WAL below and
                // replace `received`.
                let installing = match &rd.snapshot {
                    Some(snap) => match st.received.take() {
                        Some(r) if r.index == snap.meta.index => Some(r),
                        _ => {
                            return Err(ShardError::Start(format!(
                                "the engine installed snapshot {} but its data is not here",
                                snap.meta.index
                            )));
                        }
                    },
                    None => None,
                };
                (rd, installing)
            };
            let mut leader_changed = false;
            if let Some(ss) = rd.soft_state {
                let mut st = self.st.borrow_mut();
                st.metrics.record_leader(ss.leader, ss.role == Role::Leader);
                if ss.leader != st.leader {
                    info!(
                        "shard {}: leader is now {} (this node: {}, term {})",
                        self.p.shard,
                        ss.leader,
                        ss.role.name(),
                        st.node.term()
                    );
                    st.leader = ss.leader;
                    leader_changed = true;
                }
                if ss.role != st.role && matches!(ss.role, Role::PreCandidate | Role::Candidate) {
                    info!(
                        "shard {}: no word from a leader for an election timeout: campaigning (this node: {}, term {})",
                        self.p.shard,
                        ss.role.name(),
                        st.node.term()
                    );
                }
                st.role = ss.role;
            }
            let msgs = std::mem::take(&mut rd.messages);
            self.send(msgs);
            if !rd.has_write() {
                if let Some(hs) = rd.hard_state {
                    self.st.borrow_mut().unwritten_hard_state = Some(hs);
                }
            } else {
                let (compaction, hard_state) = {
                    let mut st = self.st.borrow_mut();
                    let unwritten = st.unwritten_hard_state.take();
                    (st.pending_compaction.take(), rd.hard_state.or(unwritten))
                };
                let install = rd.snapshot.as_ref().map(|s| s.meta.clone());
                // One append per WAL batch: a Ready holding more entries than a batch
                // can take (many large writes at once) is written as several appends
                // (see `ChunkPart`).
                let chunks = split_entries(&rd.entries, self.append_budget);
                let count = chunks.len();
                let mut seq = 0;
                for (i, range) in chunks.into_iter().enumerate() {
                    let part = ChunkPart::of(i, count);
                    let tag = if part.last { rd.number() } else { self.st.borrow().last_ready };
                    let entries = &rd.entries[range];
                    let append = Append {
                        tag,
                        install: if part.install { install.as_ref() } else { None },
                        entries,
                        hard_state: if part.hard_state { hard_state } else { None },
                        compact: if part.last { compaction.as_ref().map(|(m, _)| m) } else { None },
                        must_sync: true,
                    };
                    self.make_room().await?;
                    self.trace(|| TraceEvent::WalSubmitted {
                        tag,
                        last: entries.last().map(|e| (e.index, e.term)),
                        hard_state: append.hard_state,
                        snapshot: append.install.map(|m| m.index),
                    });
                    seq = self.wal.submit(&append).await?;
                }
                let mut st = self.st.borrow_mut();
                st.last_ready = rd.number();
                if let Some((m, desc)) = compaction {
                    self.recorded_snapshot(&mut st, seq, &m, desc);
                }
                if let (Some(m), Some(r)) = (&install, &installing) {
                    self.storage.set_snapshot_data(m.index, r.desc.encode());
                }
            }
            let mut st = self.st.borrow_mut();
            self.apply(&mut st, &mut rd, installing);
            if leader_changed {
                // After `apply`: read states this Ready carries were confirmed and
                // serve their reads; the rest are asked again.
                self.reask_reads(&mut st);
            }
            st.node.advance_async(rd);
        }
    }

    /// Waits until the WAL accepts another append. The WAL holds a bounded number of
    /// appends whose completions have not been taken, and only this loop takes them:
    /// waiting in `submit` without taking them would wait forever.
    async fn make_room(&self) -> Result<(), WalError> {
        loop {
            while let Some(c) = self.wal.try_next_completion()? {
                self.completed(&mut self.st.borrow_mut(), c);
            }
            if self.wal.has_room() {
                return Ok(());
            }
            let c = self.wal.next_completion().await?;
            self.completed(&mut self.st.borrow_mut(), c);
        }
    }

    /// Sends a Ready's messages; snapshots are streamed by a task of their own.
    fn send(self: &Rc<Self>, msgs: Vec<Message>) {
        let now = Instant::now();
        for m in msgs {
            if let MessageBody::Heartbeat { .. } = m.body {
                self.heartbeat_sent(m.to, now);
            }
            if let MessageBody::Snapshot { .. } = m.body {
                let to = m.to;
                let fresh = self.st.borrow_mut().sending.insert(to);
                if fresh {
                    let shard = self.clone();
                    glommio::spawn_local(async move { shard.stream_snapshot(m).await }).detach();
                } else {
                    self.st.borrow_mut().snapshot_reports.push((to, false));
                }
                continue;
            }
            if failpoints::ENABLED {
                failpoints::crash_before_send(&m, self.st.borrow().node.role() == Role::Leader);
                match failpoints::outgoing(m.to, Some(&m)) {
                    Outgoing::Send => {}
                    Outgoing::Drop => continue,
                    Outgoing::Delay(d) => {
                        let shard = self.clone();
                        glommio::spawn_local(async move {
                            glommio::timer::sleep(d).await;
                            let _ = shard.transport.send(m);
                        })
                        .detach();
                        continue;
                    }
                }
            }
            // Drops (queue full, peer down) are counted by the transport and reported
            // back as unreachable peers; Raft retransmits.
            self.trace(|| TraceEvent::Sent(m.clone()));
            let _ = self.transport.send(m);
        }
    }

    /// The heartbeat-contention detector (etcdserver's TimeoutDetector): a heartbeat
    /// that leaves more than twice its interval after the previous one means the loop
    /// was starved.
    fn heartbeat_sent(&self, to: NodeId, now: Instant) {
        let interval = self.p.tick * self.p.heartbeat_ticks;
        if let Some(c) = self.st.borrow_mut().metrics.record_heartbeat_sent(to, now, interval) {
            warn!("shard {}: {c}", self.p.shard);
        }
    }

    /// Streams the snapshot file to `m.to` in bounded chunks on the bulk lane, then
    /// sends the snapshot message itself, and reports how it went to the engine.
    async fn stream_snapshot(self: Rc<Self>, m: Message) {
        let to = m.to;
        let ok = self.try_stream_snapshot(m).await;
        if let Err(e) = &ok {
            warn!("shard {}: sending snapshot to {to} failed: {e}", self.p.shard);
        }
        let mut st = self.st.borrow_mut();
        st.sending.remove(&to);
        st.snapshot_reports.push((to, ok.is_ok()));
        if ok.is_ok() {
            st.metrics.record_snapshot_sent();
        }
        drop(st);
        self.wake();
    }

    async fn try_stream_snapshot(&self, m: Message) -> Result<(), String> {
        let MessageBody::Snapshot { snapshot } = &m.body else { unreachable!("called for snapshot messages") };
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        let path = self.snapdir.file(index);
        // Opened once for the whole transfer: a newer local snapshot may remove the
        // file meanwhile, and the open file stays readable until this transfer ends.
        let p2 = path.clone();
        let (file, total) = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<(Arc<std::fs::File>, u64)> {
                let f = std::fs::File::open(&p2)?;
                let len = f.metadata()?.len();
                Ok((Arc::new(f), len))
            })
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut offset = 0u64;
        while offset < total {
            let n = SNAPSHOT_CHUNK_BYTES.min((total - offset) as usize);
            let f = file.clone();
            let data = glommio::executor()
                .spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; n];
                    f.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let mut body = BytesMut::with_capacity(SNAPSHOT_CHUNK_HEADER_BYTES + n);
            body.put_u64_le(index);
            body.put_u64_le(term);
            body.put_u64_le(offset);
            body.put_u64_le(total);
            body.put_slice(&data);
            let frame = AppFrame { tag: APP_SNAPSHOT_CHUNK, body: body.freeze() };
            if failpoints::outgoing(m.to, None) == Outgoing::Drop {
                return Err("a failure point dropped a chunk".into());
            }
            self.transport.send_capacity(m.to, Lane::Bulk, frame.body.len()).await;
            self.transport.send_app(m.to, &frame, Lane::Bulk).map_err(|e| e.to_string())?;
            offset += n as u64;
        }
        self.transport.send(m).map_err(|e| e.to_string())
    }

    /// Applies `rd`'s committed entries, after installing `installing`, the received
    /// snapshot `rd` carries, if any.
    fn apply(&self, st: &mut State, rd: &mut Ready, installing: Option<Received>) {
        let t0 = Instant::now();
        if let Some(r) = installing {
            info!("shard {}: installed the leader's snapshot at index {}", self.p.shard, r.index);
            failpoints::crash_point(CrashPoint::SnapshotBeforeApply);
            // The replaced state can be millions of pairs: freeing them here would hold
            // the Ready loop, so the blocking thread does it.
            let old = std::mem::replace(&mut st.kv, r.kv);
            glommio::spawn_local(glommio::executor().spawn_blocking(move || drop(old))).detach();
            st.applied = r.index;
            st.last_snapshot = r.index;
            st.bytes_since_snapshot = 0;
            failpoints::crash_point(CrashPoint::SnapshotAfterApply);
        }
        let committed = rd.committed_entries.len() as u64;
        if committed > 0 {
            st.metrics.record_committed(committed);
        }
        for e in rd.committed_entries.drain(..) {
            st.applied = e.index;
            st.bytes_since_snapshot += e.data.len() as u64;
            match e.kind {
                EntryKind::Normal if !e.data.is_empty() => match Command::decode(&e.data) {
                    Some((origin, cmd)) => {
                        let outcome = st.kv.apply(&cmd);
                        if origin.node == self.p.node_id
                            && let Some(w) = st.writes.remove(&origin.request)
                        {
                            if let Some(at) = w.proposed {
                                st.metrics.record_propose_to_commit(t0.saturating_duration_since(at));
                            }
                            w.slot.fill(commands::outcome_reply(&outcome));
                        }
                    }
                    // Every member skips it alike, so the replicas stay identical.
                    None => warn!(
                        "shard {}: entry {} is not a command this version understands; applied as a no-op",
                        self.p.shard, e.index
                    ),
                },
                EntryKind::ConfChange => {
                    if let Some(cc) = ConfChange::decode(&e.data) {
                        let cs = st.node.apply_conf_change(cc);
                        info!(
                            "shard {}: membership is now voters {:?}, learners {:?}",
                            self.p.shard, cs.voters, cs.learners
                        );
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        for ReadState { ctx: batch, index } in rd.read_states.drain(..) {
            let Some(ctxs) = st.read_batches.remove(&batch) else { continue };
            for ctx in ctxs {
                if let Some(r) = st.reads.get_mut(&ctx) {
                    r.index = Some(index);
                    if let Some(at) = r.asked {
                        st.metrics.record_read_index(now.saturating_duration_since(at));
                    }
                    st.reads_by_index.entry(index).or_default().push(ctx);
                }
            }
        }
        // Serve every read whose index is applied (diss. §6.4 step 4).
        let mut served = 0;
        while let Some(entry) = st.reads_by_index.first_entry() {
            if *entry.key() > st.applied {
                break;
            }
            for ctx in entry.remove() {
                if let Some(r) = st.reads.remove(&ctx) {
                    r.slot.fill(commands::serve_read(&st.kv, &r.read));
                    served += 1;
                }
            }
        }
        if served > 0 {
            st.metrics.record_reads(served);
        }
        if committed > 0 {
            let took = t0.elapsed();
            st.metrics.record_commit_to_apply(took);
            if let Some(w) = st.metrics.record_apply_batch(committed, took) {
                warn!("shard {}: {w}", self.p.shard);
            }
        }
    }

    /// After applying: publish status now and then; take a snapshot when the log
    /// grew past the threshold; record a finished one in the WAL.
    async fn after_apply(self: &Rc<Self>) -> Result<(), ShardError> {
        let now = Instant::now();
        let start = {
            let mut st = self.st.borrow_mut();
            if now.duration_since(st.last_publish) >= PUBLISH_INTERVAL {
                st.last_publish = now;
                self.publish(&mut st);
            }
            let due = !st.snapshot_running
                && st.bytes_since_snapshot >= self.p.snapshot_log_bytes
                && st.applied > st.last_snapshot;
            if due {
                st.snapshot_running = true;
                st.bytes_since_snapshot = 0;
                let index = st.applied;
                let term = st.node.log_term(index).ok();
                term.map(|term| {
                    (
                        SnapshotMeta {
                            index,
                            term,
                            conf_state: st.node.conf_state(),
                            election_timeout_ticks: st.node.election_timeout_from_log(),
                        },
                        st.kv.clone(),
                    )
                })
            } else {
                None
            }
        };
        if let Some((meta, kv)) = start {
            let shard = self.clone();
            glommio::spawn_local(async move { shard.take_snapshot(meta, kv).await }).detach();
        }
        // A finished snapshot with nothing else to write goes to the WAL on its own.
        let idle_compaction = {
            let st = self.st.borrow();
            st.pending_compaction.is_some() && !st.node.has_ready()
        };
        if idle_compaction {
            let (meta, desc, tag, hard_state) = {
                let mut st = self.st.borrow_mut();
                let (m, d) = st.pending_compaction.take().expect("checked");
                (m, d, st.last_ready, st.unwritten_hard_state.take())
            };
            let append = Append { tag, compact: Some(&meta), hard_state, must_sync: true, ..Default::default() };
            self.make_room().await?;
            let seq = self.wal.submit(&append).await?;
            let mut st = self.st.borrow_mut();
            self.recorded_snapshot(&mut st, seq, &meta, desc);
        }
        Ok(())
    }

    fn recorded_snapshot(&self, st: &mut State, seq: u64, meta: &SnapshotMeta, desc: Descriptor) {
        if meta.index <= st.last_snapshot {
            // The leader's snapshot, installed while this one was being written, is
            // newer: the WAL ignores this compaction too, and its file goes with the
            // next snapshot's clean-up.
            return;
        }
        self.storage.set_snapshot_data(meta.index, desc.encode());
        st.last_snapshot = meta.index;
        st.remove_snapshots_after = Some((seq, meta.index));
    }

    /// Writes the snapshot file off the loop (the state is a constant-time clone),
    /// then queues it for the WAL.
    async fn take_snapshot(self: Rc<Self>, meta: SnapshotMeta, kv: Kv) {
        let dir = self.snapdir.clone();
        let (cluster, shard) = (self.p.cluster_id, self.p.shard);
        let m2 = meta.clone();
        let res = glommio::executor()
            .spawn_blocking(move || {
                failpoints::crash_point(CrashPoint::SnapshotBeforeSave);
                let res = snapshot::write(&dir, cluster, shard, &m2, &kv);
                failpoints::crash_point(CrashPoint::SnapshotAfterSave);
                res
            })
            .await;
        let mut st = self.st.borrow_mut();
        st.snapshot_running = false;
        match res {
            Ok(desc) => {
                st.metrics.record_snapshot_taken();
                info!("shard {}: wrote snapshot at index {} ({} bytes)", self.p.shard, meta.index, desc.bytes);
                if meta.index > st.last_snapshot {
                    st.pending_compaction = Some((meta, desc));
                } else {
                    info!(
                        "shard {}: not compacting to it: the leader's snapshot at {} was installed meanwhile",
                        self.p.shard, st.last_snapshot
                    );
                }
            }
            Err(e) => warn!("shard {}: snapshot at {} failed (will retry): {e}", self.p.shard, meta.index),
        }
        drop(st);
        self.wake();
    }

    /// The shard's status as the admin port shows it.
    fn shard_status(&self, st: &State) -> ShardStatus {
        let status = st.node.status();
        let learner = status.conf_state.learners.contains(&self.p.node_id);
        let mut s = ShardStatus::from_engine(self.p.shard, &status, learner, st.last_snapshot, self.p.tick);
        s.applied = st.applied;
        s.kv_keys = st.kv.len() as u64;
        s.kv_digest = format!("{:016x}", st.kv.digest());
        s
    }

    /// Publishes this shard's report for the admin port.
    fn publish(&self, st: &mut State) {
        for (id, _) in &self.p.members {
            if let Some(t) = self.transport.peer_traffic(*id) {
                st.metrics.set_transport_counters(
                    *id,
                    metrics::TransportCounters {
                        bytes_out: t.bytes_out,
                        bytes_in: t.bytes_in,
                        frames_out: t.frames_out,
                        frames_in: t.frames_in,
                        dropped_messages: t.dropped,
                    },
                );
            }
        }
        st.metrics.set_transport_rejections(self.transport.stats().rejections().map(|(r, n)| (r.name(), n)).collect());
        st.metrics.set_pending(st.writes.len() as u64, st.reads.len() as u64);
        st.metrics.set_clients(st.clients as u64);
        let report = st.metrics.report(self.shard_status(st));
        self.published.publish(report);
        // The group's members as of the latest applied membership change.
        let cs = st.node.conf_state();
        // `configured` is this node's whole cluster list (`p.members` resolved); a
        // member missing from it has no address here.
        let addr = |id: NodeId| self.configured.iter().find(|m| m.id == id).map(|m| m.addr.clone()).unwrap_or_default();
        let members = cs
            .voters
            .iter()
            .map(|&id| metrics::Member { id, addr: addr(id), learner: false })
            .chain(cs.learners.iter().map(|&id| metrics::Member { id, addr: addr(id), learner: true }))
            .collect();
        self.published.set_members(members);
    }

    /// Status as of now (for tests).
    pub fn status(&self) -> ShardStatus {
        self.shard_status(&self.st.borrow())
    }

    /// Records a client request's latency.
    pub fn record_client_request(&self, command: metrics::Command, took: Duration) {
        self.st.borrow_mut().metrics.record_client_request(command, took);
    }
}

/// Serves one client connection: reads pipelined requests, dispatches them all, then
/// answers them in order.
pub async fn serve_client(shard: Rc<Shard>, stream: glommio::net::TcpStream) {
    crate::client::serve(shard.clone(), stream).await;
    shard.client_gone();
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("node", &self.p.node_id).field("shard", &self.p.shard).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(sizes: &[usize]) -> Vec<Entry> {
        sizes.iter().map(|&n| Entry::new(Bytes::from(vec![0u8; n]))).collect()
    }

    #[test]
    fn entries_split_into_batches_within_the_budget() {
        let h = RECORD_HEADER_BYTES;
        assert_eq!(split_entries(&[], 100), vec![0..0]);
        assert_eq!(split_entries(&entries(&[10, 10, 10]), 1000), vec![0..3]);
        // Two fit exactly; the third starts a new batch.
        let e = entries(&[50 - h, 50 - h, 1]);
        assert_eq!(split_entries(&e, 100), vec![0..2, 2..3]);
        // An entry over the budget goes alone (the caller refuses such entries).
        let e = entries(&[10, 500, 10]);
        assert_eq!(split_entries(&e, 100), vec![0..1, 1..2, 2..3]);
        // Every range is within the budget unless it holds a single entry.
        let sizes: Vec<usize> = (0..200).map(|i| (i * 37) % 90).collect();
        let e = entries(&sizes);
        let ranges = split_entries(&e, 300);
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, e.len());
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in ranges {
            let bytes: usize = e[r.clone()].iter().map(|x| x.data.len() + h).sum();
            assert!(bytes <= 300 || r.len() == 1, "{r:?}: {bytes}");
        }
    }

    #[test]
    fn each_start_is_counted_durably_and_gets_its_own_request_ids() {
        let dir = tempfile::tempdir().unwrap();
        let first = count_start(dir.path()).unwrap();
        assert!((1..=0x1_0000).contains(&first), "a new directory counts from a random number: {first}");
        assert_eq!(count_start(dir.path()).unwrap(), first + 1);
        assert_eq!(std::fs::read_to_string(dir.path().join(STARTS_FILE)).unwrap(), format!("{}\n", first + 1));
        // Two new directories (a member replaced under the same id) rarely share their
        // first numbers: of 8 pairs, at least one differs unless the source is broken.
        let firsts: Vec<u64> = (0..8).map(|_| count_start(tempfile::tempdir().unwrap().path()).unwrap()).collect();
        assert!(firsts.windows(2).any(|w| w[0] != w[1]), "{firsts:?}");
        assert!(!dir.path().join(STARTS_TMP_FILE).exists());
        // Ids of one start never reach the next start's.
        let (a, b) = (request_id_base(1), request_id_base(2));
        assert!(a + (1 << REQUEST_ID_START_SHIFT) - 1 < b);
        assert_ne!(request_id_base(0xFFFF), request_id_base(0x1_0000));
        // A damaged count is refused, naming the file; it is left as it was.
        std::fs::write(dir.path().join(STARTS_FILE), "x7").unwrap();
        let e = count_start(dir.path()).unwrap_err().to_string();
        assert!(e.contains("starts") && e.contains("x7"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.path().join(STARTS_FILE)).unwrap(), "x7");
    }

    #[test]
    fn a_split_ready_writes_its_hard_state_no_later_than_its_entries() {
        let whole = ChunkPart::of(0, 1);
        assert_eq!(whole, ChunkPart { install: true, hard_state: true, last: true });
        for count in 2..6 {
            let parts: Vec<ChunkPart> = (0..count).map(|i| ChunkPart::of(i, count)).collect();
            // The first append holds the Ready's first entries, a membership change
            // among them perhaps: the hard state (its commit index) is in it.
            assert!(parts[0].hard_state && parts[0].install && !parts[0].last, "{count}: {parts:?}");
            assert!(parts[count - 1].hard_state && parts[count - 1].last, "{count}: {parts:?}");
            assert_eq!(parts.iter().filter(|p| p.last).count(), 1);
            assert_eq!(parts.iter().filter(|p| p.install).count(), 1);
        }
    }
}
