//! The node's configuration: one TOML file whose every key is also a command-line flag
//! (a flag overrides the file). Each field documents its default and bounds;
//! [`NodeConfig::validate`] checks them and names the fix when one is wrong.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::topology::Topology;

/// Default client (RESP) address: Redis's port, loopback.
pub const CLIENT_ADDR_DEFAULT: &str = "127.0.0.1:6379";
/// Default admin (HTTP) address: loopback only, so metrics and operations are not
/// exposed unless the operator decides to.
pub const ADMIN_ADDR_DEFAULT: &str = "127.0.0.1:7379";
/// etcd's default tick: heartbeats every 100 ms, elections after 1 s.
pub const TICK_MS_DEFAULT: u64 = 100;
/// Longest tick accepted: beyond 10 s an election takes minutes.
pub const TICK_MS_MAX: u64 = 10_000;
/// Largest frame accepted on a peer connection: a full append (1 MiB of entries by
/// default) plus headers fits many times over, and a snapshot chunk fits.
pub const FRAME_BYTES_MAX_DEFAULT: u64 = 16 << 20;
/// WAL segments: large enough that rotation is rare, small enough to recycle quickly.
pub const WAL_SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest WAL segment: one of the largest appends must fit with room to spare.
pub const WAL_SEGMENT_BYTES_MIN: u64 = 4 << 20;
/// Largest WAL segment: the WAL keeps offsets within a segment in a `u32`
/// (`skiff_wal::format::SEGMENT_BYTES_MAX`; the node checks they agree).
pub const WAL_SEGMENT_BYTES_MAX: u64 = 1 << 31;
/// Longest election timeout the Raft engine accepts
/// (`skiff_engine::config::ELECTION_TICKS_MAX`; the node checks they agree).
pub const ELECTION_TICKS_MAX: u32 = 1 << 20;
/// Upper bound on `max_inflight_msgs`, the engine's
/// (`skiff_engine::config::MAX_INFLIGHT_MSGS_MAX`).
pub const MAX_INFLIGHT_MSGS_MAX: usize = 1 << 16;
/// Largest peer frame body the transport can carry: its length is a `u32` on the wire
/// (`skiff_net::frame::FRAME_BODY_BYTES_MAX_LIMIT`).
pub const FRAME_BYTES_MAX_LIMIT: u64 = u32::MAX as u64;
/// Bulk bytes one client request may carry in total (`skiff_net::resp`'s
/// `RESP_REQUEST_BYTES_MAX_DEFAULT`; the node checks they agree).
pub const CLIENT_REQUEST_BYTES_MAX: u64 = 8 << 20;
/// Elements one client request may have (`skiff_net::resp`'s
/// `RESP_ARRAY_LEN_MAX_DEFAULT`; the node checks they agree).
pub const CLIENT_REQUEST_ELEMENTS_MAX: u64 = 64 << 10;
/// Largest log entry one client request becomes: one request is one entry, holding the
/// request's strings with a 4-byte length each and a fixed header of under 64 bytes
/// (origin, command tag, counts). The node tests its encoding against this bound.
pub const CLIENT_ENTRY_BYTES_MAX: u64 = CLIENT_REQUEST_BYTES_MAX + 4 * CLIENT_REQUEST_ELEMENTS_MAX + 64;
/// Body of a snapshot chunk frame: the application frame tag (4 bytes), the chunk header
/// (32) and 1 MiB of snapshot (the node checks this against its chunk size).
pub const SNAPSHOT_CHUNK_FRAME_BYTES: u64 = 4 + 32 + (1 << 20);
/// Room in a frame for what is not entry payload: message fields and the entry records
/// (21 bytes per entry, and an append of `max_size_per_msg` bytes counts at least 24 per
/// entry, so the records never outgrow the payload bytes they replace).
pub const FRAME_HEADROOM_BYTES: u64 = 64 << 10;
/// Log bytes since the last snapshot that trigger a new one.
pub const SNAPSHOT_LOG_BYTES_DEFAULT: u64 = 64 << 20;
/// Entries kept below each snapshot for followers' catch-up (etcd's
/// `SnapshotCatchUpEntries`).
pub const SNAPSHOT_CATCHUP_ENTRIES_DEFAULT: u64 = 5000;
/// Upper bound for `snapshot_catchup_entries`.
pub const SNAPSHOT_CATCHUP_ENTRIES_MAX: u64 = 10_000_000;
/// Bound on the bytes of those entries.
pub const SNAPSHOT_CATCHUP_BYTES_DEFAULT: u64 = 64 << 20;
/// WAL appends in flight before the shard stops taking new batches. With O_DSYNC writes
/// (the default `wal_sync`) four in flight let the device merge their flushes: on a
/// 3-node cluster under redis-benchmark (-c 64) 4 gave about 43,500 writes/s against
/// 37,400 with 2, at 26 instead of 31 us of cluster CPU per write; 8 gave no more.
pub const WAL_WRITES_IN_FLIGHT_DEFAULT: u64 = 4;
/// The WAL's own bound on appends not yet durable.
pub const WAL_WRITES_IN_FLIGHT_MAX: u64 = 8;
/// Client connections per node before new ones are refused.
pub const MAX_CLIENTS_DEFAULT: usize = 10_000;
/// Proposals waiting to commit before clients get an overload error.
pub const MAX_PENDING_PROPOSALS_DEFAULT: usize = 65_536;
/// Reads waiting for their read index before clients get an overload error.
pub const MAX_PENDING_READS_DEFAULT: usize = 65_536;
/// How long a request waits for a leader (or for its commit) before the client is
/// told to try again.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// An fdatasync slower than this is logged with the histogram to read.
pub const FSYNC_WARN_MS_DEFAULT: u64 = 100;
/// An apply batch slower than this is logged with the histogram to read.
pub const APPLY_WARN_MS_DEFAULT: u64 = 100;

/// Every key of the schema; the flags have the same names with `-` for `_`.
pub const KEYS: &[&str] = &[
    "id",
    "cluster",
    "cluster_name",
    "client_addr",
    "admin_addr",
    "data_dir",
    "bootstrap",
    "join",
    "cpu",
    "numa_node",
    "tick_ms",
    "heartbeat_ticks",
    "election_ticks",
    "pre_vote",
    "check_quorum",
    "read_mode",
    "max_size_per_msg",
    "max_inflight_msgs",
    "frame_bytes_max",
    "wal_segment_bytes",
    "snapshot_log_bytes",
    "snapshot_catchup_entries",
    "snapshot_catchup_bytes",
    "wal_writes_in_flight",
    "wal_sync",
    "max_clients",
    "max_pending_proposals",
    "max_pending_reads",
    "request_timeout_ms",
    "fsync_warn_ms",
    "apply_warn_ms",
];

/// How linearizable reads are confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadModeSetting {
    /// ReadIndex: a heartbeat round per batch of reads.
    #[default]
    Safe,
    /// Leader lease (requires `check_quorum`).
    Lease,
}

/// How the WAL makes an append durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WalSyncSetting {
    /// Each append is one `O_DSYNC` write (write and cache flush in one operation);
    /// several are in flight at once and the device merges their flushes.
    #[default]
    Dsync,
    /// A plain write, then an `fdatasync`; the next write overlaps the previous sync.
    Fdatasync,
}

/// A node's configuration. Keys are the TOML keys and the flag names (`--key`, with
/// `_` written as `-`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id: a key of `cluster`. Required.
    pub id: u64,
    /// Every member's peer address, this node's included (it listens on its own):
    /// `"1=10.0.0.1:7001,2=10.0.0.2:7001"`, or a table `{ 1 = "10.0.0.1:7001" }`.
    /// Required.
    #[serde(deserialize_with = "de_members")]
    pub cluster: BTreeMap<u64, String>,
    /// Name of the cluster; nodes and data directories of another cluster are refused.
    /// Default "skiff".
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    /// RESP listen address. Default 127.0.0.1:6379.
    #[serde(default = "default_client_addr")]
    pub client_addr: String,
    /// Admin HTTP listen address. Default 127.0.0.1:7379 (loopback).
    #[serde(default = "default_admin_addr")]
    pub admin_addr: String,
    /// Where the WAL, snapshots and the identity file live. Required.
    pub data_dir: PathBuf,
    /// Found a new cluster (every member of `cluster` a voter) if the data directory
    /// is empty. Give it on every member's first start only. Default false.
    #[serde(default)]
    pub bootstrap: bool,
    /// Start with an empty data directory and wait to be added by the cluster's
    /// leader (`POST /members/add`). Default false. Without `bootstrap` or `join`, a
    /// node refuses to start on an empty data directory: it may have lost its data,
    /// and a blank member could help elect a leader that lacks committed writes.
    #[serde(default)]
    pub join: bool,
    /// CPU to pin the shard to. Default: unpinned.
    #[serde(default)]
    pub cpu: Option<u32>,
    /// NUMA node the CPU must belong to (checked). Default: unchecked.
    #[serde(default)]
    pub numa_node: Option<u32>,
    /// Milliseconds per Raft tick. Default 100; 1..=10000.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Heartbeat interval in ticks. Default 1.
    #[serde(default = "default_heartbeat_ticks")]
    pub heartbeat_ticks: u32,
    /// Election timeout in ticks. Default 10; must exceed `heartbeat_ticks`; at most
    /// [`ELECTION_TICKS_MAX`].
    #[serde(default = "default_election_ticks")]
    pub election_ticks: u32,
    /// PreVote before elections. Default true.
    #[serde(default = "default_true")]
    pub pre_vote: bool,
    /// Leaders step down without a quorum; followers ignore disruptive votes.
    /// Default true.
    #[serde(default = "default_true")]
    pub check_quorum: bool,
    /// "safe" (ReadIndex) or "lease". Default "safe".
    #[serde(default)]
    pub read_mode: ReadModeSetting,
    /// Bytes of entries per append message. Default 1 MiB.
    #[serde(default = "default_max_size_per_msg")]
    pub max_size_per_msg: u64,
    /// Appends in flight per peer. Default 512.
    #[serde(default = "default_max_inflight_msgs")]
    pub max_inflight_msgs: usize,
    /// Largest frame accepted from a peer. Default 16 MiB; at least
    /// [`NodeConfig::frame_bytes_min`], at most [`FRAME_BYTES_MAX_LIMIT`].
    #[serde(default = "default_frame_bytes_max")]
    pub frame_bytes_max: u64,
    /// WAL segment size in bytes. Default 64 MiB; 4 MiB to 2 GiB, a multiple of 4 KiB.
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
    /// Log bytes since the last snapshot that trigger a new one. Default 64 MiB.
    #[serde(default = "default_snapshot_log_bytes")]
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log below each snapshot, so that a follower a little behind
    /// (restarted, briefly cut off) catches up from the log rather than receiving the
    /// whole snapshot. Default 5,000 (etcd's value); 0 releases the log up to the
    /// snapshot.
    #[serde(default = "default_snapshot_catchup_entries")]
    pub snapshot_catchup_entries: u64,
    /// Bound on the WAL bytes of those entries (large values keep fewer). Default 64 MiB.
    #[serde(default = "default_snapshot_catchup_bytes")]
    pub snapshot_catchup_bytes: u64,
    /// WAL appends that may be in flight (written or syncing, not yet durable) before
    /// the shard stops taking new batches. Default 4: with `wal_sync = "dsync"` that many
    /// durable writes share the device's flushes; with `"fdatasync"`, 2 already writes
    /// the next batch while the previous one syncs. 1 makes fewer, larger batches, which
    /// costs less CPU per write where the CPU rather than the disk is the limit. 1..=8.
    #[serde(default = "default_wal_writes_in_flight")]
    pub wal_writes_in_flight: u64,
    /// How an append is made durable: `"dsync"` (default: one O_DSYNC write per
    /// append, several in flight) or `"fdatasync"` (write, then fdatasync).
    #[serde(default)]
    pub wal_sync: WalSyncSetting,
    /// Client connections accepted at once. Default 10000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// Proposals waiting to commit. Default 65536.
    #[serde(default = "default_max_pending_proposals")]
    pub max_pending_proposals: usize,
    /// Reads waiting for their read index. Default 65536.
    #[serde(default = "default_max_pending_reads")]
    pub max_pending_reads: usize,
    /// How long a request may wait (for a leader, or to commit). Default 5000 ms.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Warn when an fdatasync takes longer. Default 100 ms; 0 never warns.
    #[serde(default = "default_fsync_warn_ms")]
    pub fsync_warn_ms: u64,
    /// Warn when applying one batch takes longer. Default 100 ms; 0 never warns.
    #[serde(default = "default_apply_warn_ms")]
    pub apply_warn_ms: u64,
}

fn default_cluster_name() -> String {
    "skiff".into()
}
fn default_client_addr() -> String {
    CLIENT_ADDR_DEFAULT.into()
}
fn default_admin_addr() -> String {
    ADMIN_ADDR_DEFAULT.into()
}
fn default_tick_ms() -> u64 {
    TICK_MS_DEFAULT
}
fn default_heartbeat_ticks() -> u32 {
    1
}
fn default_election_ticks() -> u32 {
    10
}
fn default_true() -> bool {
    true
}
fn default_max_size_per_msg() -> u64 {
    1 << 20
}
fn default_max_inflight_msgs() -> usize {
    512
}
fn default_frame_bytes_max() -> u64 {
    FRAME_BYTES_MAX_DEFAULT
}
fn default_wal_segment_bytes() -> u64 {
    WAL_SEGMENT_BYTES_DEFAULT
}
fn default_snapshot_log_bytes() -> u64 {
    SNAPSHOT_LOG_BYTES_DEFAULT
}
fn default_snapshot_catchup_entries() -> u64 {
    SNAPSHOT_CATCHUP_ENTRIES_DEFAULT
}
fn default_snapshot_catchup_bytes() -> u64 {
    SNAPSHOT_CATCHUP_BYTES_DEFAULT
}
fn default_wal_writes_in_flight() -> u64 {
    WAL_WRITES_IN_FLIGHT_DEFAULT
}
fn default_max_clients() -> usize {
    MAX_CLIENTS_DEFAULT
}
fn default_max_pending_proposals() -> usize {
    MAX_PENDING_PROPOSALS_DEFAULT
}
fn default_max_pending_reads() -> usize {
    MAX_PENDING_READS_DEFAULT
}
fn default_request_timeout_ms() -> u64 {
    REQUEST_TIMEOUT_MS_DEFAULT
}
fn default_fsync_warn_ms() -> u64 {
    FSYNC_WARN_MS_DEFAULT
}
fn default_apply_warn_ms() -> u64 {
    APPLY_WARN_MS_DEFAULT
}

/// Parses `"1=host:port,2=host:port"`.
pub fn parse_members(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("cluster member {part:?} is not ID=HOST:PORT (for example 1=10.0.0.1:7001)"))?;
        let id: u64 =
            id.trim().parse().map_err(|_| format!("cluster member id {:?} is not a positive integer", id.trim()))?;
        if out.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("cluster member id {id} appears twice; give each member its own id"));
        }
    }
    Ok(out)
}

fn de_members<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Spec {
        Text(String),
        Table(BTreeMap<String, String>),
    }
    match Spec::deserialize(d)? {
        Spec::Text(t) => parse_members(&t).map_err(serde::de::Error::custom),
        Spec::Table(t) => {
            let mut out = BTreeMap::new();
            for (k, v) in t {
                let id: u64 = k.parse().map_err(|_| {
                    serde::de::Error::custom(format!("cluster member id {k:?} is not a positive integer"))
                })?;
                out.insert(id, v);
            }
            Ok(out)
        }
    }
}

/// A configuration that cannot be used; the message names the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String, pub Persistence);

/// Whether starting again, unchanged, could get past an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Persistence {
    /// It would be refused again: the configuration or the data must change.
    #[default]
    Lasting,
    /// It may clear by itself: a host name that does not resolve yet (DNS not up at
    /// boot, a member's record not yet published), a port still held.
    MayClear,
}

fn err(s: impl Into<String>) -> ConfigError {
    ConfigError(s.into(), Persistence::Lasting)
}

/// Resolves `HOST:PORT` (an IP address or a resolvable name) to socket addresses.
pub fn resolve(what: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| err(format!("{what} {addr:?} is not HOST:PORT (for example 127.0.0.1:7001)")))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(err(format!("{what} {addr:?} is not HOST:PORT with a port from 0 to 65535")));
    }
    let may_clear = |s: String| ConfigError(s, Persistence::MayClear);
    addr.to_socket_addrs()
        .map_err(|e| {
            may_clear(format!(
                "{what} {addr:?}: cannot resolve {host:?} ({e}); use an IP address or a name this host resolves"
            ))
        })?
        .next()
        .ok_or_else(|| may_clear(format!("{what} {addr:?}: {host:?} resolves to no address")))
}

/// Reads the file (if any), applies `overrides` (flags) on top, and parses the result.
/// Does not validate: call [`NodeConfig::validate`].
pub fn load(file: Option<&Path>, overrides: toml::Table) -> Result<NodeConfig, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
            text.parse::<toml::Table>().map_err(|e| err(format!("config file {}: {e}", path.display())))?
        }
        None => toml::Table::new(),
    };
    for (k, v) in overrides {
        table.insert(k, v);
    }
    toml::Value::Table(table).try_into::<NodeConfig>().map_err(|e| {
        let msg = e.to_string();
        if msg.contains("missing field") {
            err(format!("{} (set it in the config file or with the flag of the same name)", msg.trim()))
        } else if msg.contains("unknown field") {
            err(format!("{} (check the spelling; `skiff serve --help` lists every key)", msg.trim()))
        } else {
            err(msg.trim().to_string())
        }
    })
}

impl NodeConfig {
    /// The smallest `frame_bytes_max` this configuration works with: a frame must hold
    /// an append of `max_size_per_msg` bytes of entries, an append of the single largest
    /// entry a client request can make (the engine sends an entry larger than
    /// `max_size_per_msg` alone), each with [`FRAME_HEADROOM_BYTES`] of headers, and a
    /// snapshot chunk.
    pub fn frame_bytes_min(&self) -> u64 {
        self.max_size_per_msg
            .max(CLIENT_ENTRY_BYTES_MAX)
            .saturating_add(FRAME_HEADROOM_BYTES)
            .max(SNAPSHOT_CHUNK_FRAME_BYTES)
    }

    /// This node's peer listen address (its own entry in `cluster`).
    pub fn peer_addr(&self) -> Option<&str> {
        self.cluster.get(&self.id).map(String::as_str)
    }

    /// Checks every bound and cross-field rule against the machine's `topology`. The
    /// error names the key, what is wrong and what to do.
    pub fn validate(&self, topology: &Topology) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(err("id must be a positive integer (0 means \"no node\")"));
        }
        if self.cluster.is_empty() {
            return Err(err(
                "cluster lists no members; give every member's peer address, e.g. --cluster 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001",
            ));
        }
        if self.cluster.contains_key(&0) {
            return Err(err("cluster: member id 0 is not allowed; ids are positive integers"));
        }
        if !self.cluster.contains_key(&self.id) {
            let ids: Vec<String> = self.cluster.keys().map(u64::to_string).collect();
            return Err(err(format!(
                "id {} is not a member of cluster (members: {}); add this node's peer address to cluster or fix id",
                self.id,
                ids.join(", ")
            )));
        }
        if self.cluster_name.is_empty() || self.cluster_name.len() > 64 {
            return Err(err("cluster_name must be 1 to 64 characters"));
        }
        let mut seen: BTreeMap<SocketAddr, u64> = BTreeMap::new();
        for (&id, addr) in &self.cluster {
            let a = resolve(&format!("cluster member {id} address"), addr)?;
            if a.port() == 0 {
                return Err(err(format!("cluster member {id} address {addr:?} has port 0; peers need a fixed port")));
            }
            if let Some(other) = seen.insert(a, id) {
                return Err(err(format!("cluster members {other} and {id} share the address {a}; give each its own")));
            }
        }
        let peer = resolve("peer address", self.peer_addr().expect("checked above"))?;
        let client = resolve("client_addr", &self.client_addr)?;
        let admin = resolve("admin_addr", &self.admin_addr)?;
        if client == peer || admin == peer || (client == admin && client.port() != 0) {
            return Err(err(format!(
                "client_addr ({client}), admin_addr ({admin}) and this node's peer address ({peer}) must all differ"
            )));
        }
        if let Some(cpu) = self.cpu {
            let Some(c) = topology.cpu(cpu) else {
                return Err(err(format!(
                    "cpu {cpu} is not a CPU this process may run on (online and allowed: {}); pick one of those or \
                     leave cpu unset",
                    topology.describe()
                )));
            };
            if let Some(n) = self.numa_node
                && c.numa_node != n
            {
                return Err(err(format!(
                    "cpu {cpu} is on NUMA node {}, not numa_node {n}; pick a CPU of node {n} ({})",
                    c.numa_node,
                    topology.describe()
                )));
            }
        }
        if let Some(n) = self.numa_node
            && !topology.numa_nodes().contains(&n)
        {
            return Err(err(format!("numa_node {n} has no online CPUs (online: {})", topology.describe())));
        }
        if self.tick_ms == 0 || self.tick_ms > TICK_MS_MAX {
            return Err(err(format!("tick_ms ({}) must be between 1 and {TICK_MS_MAX}", self.tick_ms)));
        }
        if self.heartbeat_ticks == 0 {
            return Err(err("heartbeat_ticks must be at least 1"));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(err(format!(
                "election_ticks ({}) must be greater than heartbeat_ticks ({}); 10x is usual",
                self.election_ticks, self.heartbeat_ticks
            )));
        }
        if self.election_ticks > ELECTION_TICKS_MAX {
            return Err(err(format!(
                "election_ticks ({}) must be at most {ELECTION_TICKS_MAX}; 10x heartbeat_ticks is usual",
                self.election_ticks
            )));
        }
        if self.read_mode == ReadModeSetting::Lease && !self.check_quorum {
            return Err(err(
                "read_mode = \"lease\" requires check_quorum = true (a deposed leader would keep serving reads)",
            ));
        }
        if self.max_size_per_msg == 0 {
            return Err(err("max_size_per_msg must be at least 1"));
        }
        if self.max_inflight_msgs == 0 || self.max_inflight_msgs > MAX_INFLIGHT_MSGS_MAX {
            return Err(err(format!(
                "max_inflight_msgs ({}) must be between 1 and {MAX_INFLIGHT_MSGS_MAX}",
                self.max_inflight_msgs
            )));
        }
        let frame_min = self.frame_bytes_min();
        if self.frame_bytes_max < frame_min {
            return Err(err(format!(
                "frame_bytes_max ({}) must be at least {frame_min}: a peer frame carries an append of \
                 max_size_per_msg ({}) bytes of entries, or one entry as large as a client request can make \
                 ({CLIENT_ENTRY_BYTES_MAX} bytes), each with {FRAME_HEADROOM_BYTES} bytes of headers, and a snapshot \
                 chunk ({SNAPSHOT_CHUNK_FRAME_BYTES} bytes); the default is {FRAME_BYTES_MAX_DEFAULT}",
                self.frame_bytes_max, self.max_size_per_msg
            )));
        }
        if self.frame_bytes_max > FRAME_BYTES_MAX_LIMIT {
            return Err(err(format!(
                "frame_bytes_max ({}) must be at most {FRAME_BYTES_MAX_LIMIT} (a frame's length is 32 bits on the wire)",
                self.frame_bytes_max
            )));
        }
        if self.wal_segment_bytes < WAL_SEGMENT_BYTES_MIN
            || self.wal_segment_bytes > WAL_SEGMENT_BYTES_MAX
            || !self.wal_segment_bytes.is_multiple_of(4096)
        {
            return Err(err(format!(
                "wal_segment_bytes ({}) must be between {WAL_SEGMENT_BYTES_MIN} and {WAL_SEGMENT_BYTES_MAX}, and a \
                 multiple of 4096",
                self.wal_segment_bytes
            )));
        }
        if self.wal_segment_bytes < 2 * self.max_size_per_msg {
            return Err(err("wal_segment_bytes must be at least twice max_size_per_msg so one append always fits"));
        }
        if self.snapshot_log_bytes == 0 {
            return Err(err("snapshot_log_bytes must be at least 1"));
        }
        if self.snapshot_catchup_entries > SNAPSHOT_CATCHUP_ENTRIES_MAX {
            return Err(err(format!(
                "snapshot_catchup_entries ({}) must be at most {SNAPSHOT_CATCHUP_ENTRIES_MAX}",
                self.snapshot_catchup_entries
            )));
        }
        if !(1..=WAL_WRITES_IN_FLIGHT_MAX).contains(&self.wal_writes_in_flight) {
            return Err(err(format!(
                "wal_writes_in_flight ({}) must be between 1 and {WAL_WRITES_IN_FLIGHT_MAX}",
                self.wal_writes_in_flight
            )));
        }
        for (key, v) in [
            ("max_clients", self.max_clients),
            ("max_pending_proposals", self.max_pending_proposals),
            ("max_pending_reads", self.max_pending_reads),
        ] {
            if v == 0 {
                return Err(err(format!("{key} must be at least 1")));
            }
        }
        if self.request_timeout_ms == 0 {
            return Err(err("request_timeout_ms must be at least 1"));
        }
        if self.bootstrap && self.join {
            return Err(err(
                "bootstrap and join are exclusive: bootstrap founds a new cluster, join enters an existing one",
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(err("data_dir is empty; give the directory for the WAL and snapshots"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Cpu;

    fn topo() -> Topology {
        Topology {
            cpus: vec![
                Cpu { id: 0, core: 0, package: 0, numa_node: 0 },
                Cpu { id: 1, core: 1, package: 0, numa_node: 0 },
                Cpu { id: 2, core: 0, package: 1, numa_node: 1 },
            ],
        }
    }

    fn base() -> toml::Table {
        r#"
            id = 1
            cluster = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
            data_dir = "/var/lib/skiff"
        "#
        .parse()
        .unwrap()
    }

    fn with(extra: &str) -> Result<NodeConfig, ConfigError> {
        let mut t = base();
        for (k, v) in extra.parse::<toml::Table>().unwrap() {
            t.insert(k, v);
        }
        load(None, t)
    }

    #[test]
    fn defaults_fill_in_and_validate() {
        let c = with("").unwrap();
        assert_eq!(c.tick_ms, TICK_MS_DEFAULT);
        assert_eq!(c.client_addr, CLIENT_ADDR_DEFAULT);
        assert_eq!(c.peer_addr(), Some("127.0.0.1:7001"));
        assert_eq!(c.validate(&topo()), Ok(()));
    }

    #[test]
    fn members_as_a_table_too() {
        let c = load(
            None,
            r#"
                id = 2
                data_dir = "d"
                [cluster]
                1 = "127.0.0.1:7001"
                2 = "127.0.0.1:7002"
            "#
            .parse()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.cluster.len(), 2);
        assert_eq!(c.validate(&topo()), Ok(()));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("skiff.toml");
        std::fs::write(&path, "id = 1\ncluster = \"1=127.0.0.1:7001\"\ndata_dir = \"x\"\ntick_ms = 50\n").unwrap();
        let mut flags = toml::Table::new();
        flags.insert("tick_ms".into(), toml::Value::Integer(20));
        let c = load(Some(&path), flags).unwrap();
        assert_eq!(c.tick_ms, 20);
    }

    /// Every rejection names the offending key (or value) in its message.
    #[test]
    fn each_bad_value_is_refused_with_its_name() {
        let cases: &[(&str, &str)] = &[
            ("id = 0", "id"),
            ("id = 9", "not a member of cluster"),
            ("cluster = \"1=127.0.0.1:7001,2=127.0.0.1:7001\"", "share the address"),
            ("cluster = \"1=127.0.0.1\"", "HOST:PORT"),
            ("cluster = \"1=no-such-host.invalid:1\"", "cannot resolve"),
            ("cluster = \"1=127.0.0.1:7001,1=127.0.0.1:7002\"", "appears twice"),
            ("cluster = \"x=127.0.0.1:7001\"", "not a positive integer"),
            ("client_addr = \"127.0.0.1:7001\"", "must all differ"),
            ("admin_addr = \"nonsense\"", "admin_addr"),
            ("cpu = 7", "cpu 7"),
            ("cpu = 2\nnuma_node = 0", "NUMA node 1"),
            ("numa_node = 5", "numa_node 5"),
            ("tick_ms = 0", "tick_ms"),
            ("election_ticks = 1", "election_ticks"),
            ("read_mode = \"lease\"\ncheck_quorum = false", "check_quorum"),
            ("frame_bytes_max = 1000", "frame_bytes_max"),
            ("frame_bytes_max = 4294967296", "at most 4294967295"),
            ("wal_segment_bytes = 5000", "wal_segment_bytes"),
            ("wal_segment_bytes = 4294967296", "between 4194304 and 2147483648"),
            ("election_ticks = 1048577", "at most 1048576"),
            ("snapshot_catchup_entries = 10000001", "at most 10000000"),
            ("max_clients = 0", "max_clients"),
            ("request_timeout_ms = 0", "request_timeout_ms"),
            ("bootstrap = true\njoin = true", "exclusive"),
        ];
        for (extra, needle) in cases {
            let e = with(extra).and_then(|c| c.validate(&topo())).expect_err(extra);
            assert!(e.0.contains(needle), "{extra}: error {:?} does not mention {needle:?}", e.0);
        }
    }

    /// The upper bounds the engine, the WAL and the transport enforce are accepted up to
    /// and including the bound.
    #[test]
    fn upper_bounds_are_inclusive() {
        let c = with(
            "election_ticks = 1048576\nwal_segment_bytes = 2147483648\nframe_bytes_max = 4294967295\n\
             snapshot_catchup_entries = 10000000\nmax_inflight_msgs = 65536",
        )
        .unwrap();
        assert_eq!(c.validate(&topo()), Ok(()));
        // One past a bound is refused, naming the key: this one used to pass and make
        // the node abort on its first append as leader.
        let e = with("max_inflight_msgs = 65537").unwrap().validate(&topo()).unwrap_err().0;
        assert!(e.contains("max_inflight_msgs") && e.contains("65536"), "{e}");
    }

    /// frame_bytes_max must hold the largest client entry, a snapshot chunk, and a full
    /// append, whichever is largest, with room for headers.
    #[test]
    fn frame_bytes_max_must_hold_the_largest_frame() {
        let min = CLIENT_ENTRY_BYTES_MAX + FRAME_HEADROOM_BYTES;
        assert!(min > SNAPSHOT_CHUNK_FRAME_BYTES);
        assert_eq!(with("").unwrap().frame_bytes_min(), min);
        assert_eq!(with(&format!("frame_bytes_max = {min}")).unwrap().validate(&topo()), Ok(()));
        // Enough for max_size_per_msg + 64 KiB (the old rule), not for a client's entry.
        let e = with("frame_bytes_max = 2000000").unwrap().validate(&topo()).unwrap_err().0;
        assert!(e.contains(&format!("at least {min}")) && e.contains("client request"), "{e}");
        let e = with(&format!("frame_bytes_max = {}", min - 1)).unwrap().validate(&topo()).unwrap_err().0;
        assert!(e.contains("frame_bytes_max"), "{e}");
        // A larger max_size_per_msg raises the bound.
        let big = 32u64 << 20;
        let c = with(&format!("max_size_per_msg = {big}\nwal_segment_bytes = {}", 4 * big)).unwrap();
        assert_eq!(c.frame_bytes_min(), big + FRAME_HEADROOM_BYTES);
        assert!(c.validate(&topo()).unwrap_err().0.contains("frame_bytes_max"));
    }

    /// `KEYS` is exactly the schema: serde lists the expected fields when it meets an
    /// unknown one.
    #[test]
    fn keys_list_matches_the_schema() {
        let e = with("zzz = 1").unwrap_err().0;
        let serde_part = e.split(" (check").next().unwrap();
        let listed: std::collections::BTreeSet<&str> =
            serde_part.split('`').skip(3).step_by(2).filter(|s| !s.is_empty()).collect();
        let keys: std::collections::BTreeSet<&str> = KEYS.iter().copied().collect();
        assert_eq!(listed, keys, "{e}");
    }

    #[test]
    fn unknown_and_missing_keys_and_bad_types_are_reported() {
        let e = with("colour = \"blue\"").unwrap_err();
        assert!(e.0.contains("colour") && e.0.contains("spelling"), "{e}");
        let e = load(None, "id = 1\ndata_dir = \"x\"".parse().unwrap()).unwrap_err();
        assert!(e.0.contains("cluster") && e.0.contains("flag"), "{e}");
        let e = with("tick_ms = \"fast\"").unwrap_err();
        assert!(e.0.contains("tick_ms") || e.0.contains("invalid type"), "{e}");
        let e = with("read_mode = \"sometimes\"").unwrap_err();
        assert!(e.0.contains("sometimes"), "{e}");
    }

    #[test]
    fn unreadable_or_broken_files_name_the_file() {
        let e = load(Some(Path::new("/nonexistent/skiff.toml")), toml::Table::new()).unwrap_err();
        assert!(e.0.contains("/nonexistent/skiff.toml"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "id = = 1").unwrap();
        let e = load(Some(&path), toml::Table::new()).unwrap_err();
        assert!(e.0.contains("bad.toml"), "{e}");
    }
}
