//! Starting and stopping a node: start-up checks with operator-facing errors, the data
//! directory's identity, exclusive listeners, the shard's pinned executor, and the
//! graceful stop.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};
use log::{error, info, warn};
use skiff_engine::ReadMode;
use skiff_tuning::{NodeConfig, Persistence, ReadModeSetting, Topology, WalSyncSetting};
use skiff_wal::{DmaFs, FileSystem};

use crate::admin::{AdminHandle, AdminServer, ops_channel};
use crate::metrics::{Member, NodeInfo, Published};
use crate::shard::{Shard, ShardParams, StartMode};

/// glommio refuses to start with less locked memory than this (RUNTIME-NOTES).
pub const MEMLOCK_BYTES_MIN: u64 = 512 << 10;
/// Locked memory each executor's io_uring registers (3 rings x 10 MiB by default);
/// below it a non-root process silently loses registered buffers.
pub const MEMLOCK_BYTES_PER_SHARD: u64 = 30 << 20;
/// Name of the identity file in the data directory.
pub const IDENTITY_FILE: &str = "skiff.id";
/// The identity is written here first, then renamed to [`IDENTITY_FILE`]. A crash in
/// between leaves it behind with no identity next to it: start-up removes it.
pub const IDENTITY_TMP_FILE: &str = "skiff.id.tmp";
/// Locked (`flock`) by the process using the data directory; holds its pid.
pub const LOCK_FILE: &str = "skiff.lock";

// The configuration validates against copies of the engine's, the WAL's, the
// transport's and the client codec's bounds (the tuning crate depends on none of them);
// they must agree.
const _: () = assert!(skiff_tuning::config::ELECTION_TICKS_MAX == skiff_engine::config::ELECTION_TICKS_MAX);
const _: () = assert!(skiff_tuning::config::MAX_INFLIGHT_MSGS_MAX == skiff_engine::config::MAX_INFLIGHT_MSGS_MAX);
const _: () = assert!(skiff_tuning::config::WAL_SEGMENT_BYTES_MAX == skiff_wal::format::SEGMENT_BYTES_MAX);
const _: () = assert!(skiff_tuning::config::WAL_SEGMENT_BYTES_MIN >= skiff_wal::format::SEGMENT_BYTES_MIN);
const _: () =
    assert!(skiff_tuning::config::FRAME_BYTES_MAX_LIMIT == skiff_net::frame::FRAME_BODY_BYTES_MAX_LIMIT as u64);
const _: () =
    assert!(skiff_tuning::config::CLIENT_REQUEST_BYTES_MAX == skiff_net::resp::RESP_REQUEST_BYTES_MAX_DEFAULT as u64);
const _: () =
    assert!(skiff_tuning::config::CLIENT_REQUEST_ELEMENTS_MAX == skiff_net::resp::RESP_ARRAY_LEN_MAX_DEFAULT as u64);
// A snapshot chunk frame: the app frame's tag, the chunk header, the chunk.
const _: () = assert!(
    skiff_tuning::config::SNAPSHOT_CHUNK_FRAME_BYTES
        >= 4 + crate::shard::SNAPSHOT_CHUNK_HEADER_BYTES as u64 + crate::shard::SNAPSHOT_CHUNK_BYTES as u64
);

/// Why the node could not start; the text says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String, pub Persistence);

fn err(s: impl Into<String>) -> StartError {
    StartError(s.into(), Persistence::Lasting)
}

impl From<skiff_tuning::ConfigError> for StartError {
    /// Keeps whether the cause may clear (a host name that does not resolve yet).
    fn from(e: skiff_tuning::ConfigError) -> StartError {
        StartError(e.to_string(), e.1)
    }
}

/// A stable 64-bit id for a cluster name (FNV-1a), carried in WAL segment headers,
/// snapshot files and the peer handshake.
pub fn cluster_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// The node's three listeners, bound before anything else starts, exclusively (no
/// SO_REUSEPORT: two processes configured with one port must not share it silently).
#[derive(Debug)]
pub struct Listeners {
    pub client: TcpListener,
    pub peer: TcpListener,
    pub admin: TcpListener,
}

/// How long start-up waits for a busy port to be released. A node that just exited
/// (a restart) still holds its listening sockets for a moment: io_uring releases the
/// sockets its in-flight requests reference only when the kernel has torn the ring down,
/// after the process is gone.
pub const PORT_RELEASE_WAIT: Duration = Duration::from_secs(3);

fn bind(what: &str, key: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    let mut logged = false;
    let res = loop {
        match TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                if !logged {
                    info!("{what} address {addr} is busy; waiting up to {PORT_RELEASE_WAIT:?} for it to be released");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other,
        }
    };
    res.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError(
                format!(
                    "{what} address {addr} is already in use (another process listens there); stop it or choose \
                     another {key}"
                ),
                Persistence::MayClear,
            )
        } else if e.kind() == std::io::ErrorKind::AddrNotAvailable {
            err(format!("{what} address {addr} is not an address of this host; fix {key}"))
        } else if e.kind() == std::io::ErrorKind::PermissionDenied {
            err(format!("{what} address {addr}: permission denied (ports below 1024 need privileges); fix {key}"))
        } else {
            err(format!("cannot listen on {what} address {addr}: {e}"))
        }
    })
}

/// Binds the client, peer and admin listeners of a validated configuration.
pub fn bind_listeners(cfg: &NodeConfig) -> Result<Listeners, StartError> {
    let resolve = |what: &str, a: &str| skiff_tuning::resolve(what, a).map_err(StartError::from);
    let peer_addr = resolve("peer address", cfg.peer_addr().expect("validated"))?;
    Ok(Listeners {
        client: bind("client", "client_addr", resolve("client_addr", &cfg.client_addr)?)?,
        peer: bind("peer", &format!("cluster member {}", cfg.id), peer_addr)?,
        admin: bind("admin", "admin_addr", resolve("admin_addr", &cfg.admin_addr)?)?,
    })
}

/// The capability to lock memory beyond RLIMIT_MEMLOCK (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// Whether the `CapEff` line of a `/proc/PID/status` text holds CAP_IPC_LOCK (bit 14).
fn has_ipc_lock(proc_status: &str) -> bool {
    skiff_tuning::topology::proc_status_field(proc_status, "CapEff")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Checks RLIMIT_MEMLOCK against what io_uring needs.
pub fn check_memlock(shards: u64) -> Result<(), StartError> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    // CAP_IPC_LOCK (not merely root: a container's root usually lacks it) lets the
    // process lock more than its limit.
    let can_lock = std::fs::read_to_string("/proc/self/status").ok().is_some_and(|s| has_ipc_lock(&s));
    let cur = lim.rlim_cur;
    if cur == libc::RLIM_INFINITY {
        return Ok(());
    }
    let fix =
        "raise it: `ulimit -l unlimited` in the shell that starts skiff, or LimitMEMLOCK=infinity in its systemd unit";
    // The runtime refuses a soft limit below this whatever the user, root included.
    if cur < MEMLOCK_BYTES_MIN {
        return Err(err(format!("RLIMIT_MEMLOCK is {cur} bytes; io_uring needs at least {MEMLOCK_BYTES_MIN}: {fix}")));
    }
    // With CAP_IPC_LOCK the process may lock more than its limit: registering buffers
    // works.
    if !can_lock && cur < MEMLOCK_BYTES_PER_SHARD * shards {
        warn!(
            "RLIMIT_MEMLOCK is {cur} bytes, less than the {} bytes {shards} shard(s) register; io_uring will run without \
             registered buffers (slower): {fix}",
            MEMLOCK_BYTES_PER_SHARD * shards
        );
    }
    Ok(())
}

/// The data directory, checked and locked: its identity matches this node, or it is
/// empty and the identity is still to be written ([`PendingIdentity::write`]).
#[derive(Debug)]
pub struct DataDir {
    pub path: PathBuf,
    /// Held for as long as the node runs.
    pub lock: DirLock,
    pub identity: PendingIdentity,
}

impl DataDir {
    /// Whether this is the first start in an empty directory (no identity yet).
    pub fn is_new(&self) -> bool {
        self.identity.unwritten.is_some()
    }
}

/// The identity of a new data directory, not yet written.
#[derive(Debug)]
pub struct PendingIdentity {
    dir: PathBuf,
    /// `Some` on the first start in an empty directory.
    unwritten: Option<String>,
}

impl PendingIdentity {
    /// Writes the identity of a new directory, durably; does nothing for an existing one.
    /// Called once every other start-up check has passed, so that a refused first start
    /// leaves the directory as empty as it found it.
    pub fn write(mut self) -> Result<(), StartError> {
        let Some(want) = self.unwritten.take() else { return Ok(()) };
        let id_path = self.dir.join(IDENTITY_FILE);
        write_durably(&id_path, &self.dir.join(IDENTITY_TMP_FILE), want.as_bytes())
            .map_err(|e| err(format!("cannot write {}: {e}", id_path.display())))
    }
}

/// An exclusive `flock` on the data directory's [`LOCK_FILE`], released when dropped
/// (or when the process ends, however it ends). Two processes writing one WAL would
/// corrupt it.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Takes the lock of `dir`, or says which process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<DirLock, StartError> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| err(format!("cannot open the lock file {}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor this function owns; it has no other preconditions.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err(format!("cannot lock {}: {e}", path.display())));
        }
        let holder = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .map(|pid| format!(" (pid {pid})"))
            .unwrap_or_default();
        return Err(err(format!(
            "data_dir {} is in use by another skiff process{holder}: it holds the lock on {LOCK_FILE}. Each node needs \
             a data directory of its own; stop the other process or choose another data_dir",
            dir.display()
        )));
    }
    // Who holds it, for the message above; the lock itself is the flock, not the text.
    let pid = format!("{}\n", std::process::id());
    let written = file.set_len(0).and_then(|()| {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        file.write_all(pid.as_bytes())
    });
    if let Err(e) = written {
        warn!("cannot record this process's pid in {}: {e}", path.display());
    }
    Ok(DirLock { _file: file })
}

/// Entries of `dir` that make it something other than an empty Skiff data directory.
fn foreign_entries(dir: &Path) -> Result<Vec<String>, StartError> {
    Ok(std::fs::read_dir(dir)
        .map_err(|e| err(format!("cannot list data_dir {}: {e}", dir.display())))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != LOCK_FILE && n != IDENTITY_TMP_FILE)
        .collect())
}

fn refuse_foreign(dir: &Path, foreign: &[String]) -> StartError {
    err(format!(
        "data_dir {} is not empty ({}) but has no {IDENTITY_FILE}: it is not a Skiff data directory; choose an empty \
         directory",
        dir.display(),
        foreign.join(", ")
    ))
}

/// Creates the data directory if missing, checks it is writable, and checks its
/// identity: a directory of another cluster or node is refused. On a first start (an
/// empty directory) nothing is written yet: see [`DataDir::write_identity`].
pub fn prepare_data_dir(cfg: &NodeConfig) -> Result<DataDir, StartError> {
    let dir = &cfg.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        err(format!("cannot create data_dir {}: {e}; create it and give this user write access", dir.display()))
    })?;
    let probe = dir.join(".skiff-write-probe");
    std::fs::write(&probe, b"ok").map_err(|e| {
        err(format!(
            "data_dir {} is not writable by this user: {e}; fix its permissions or choose another",
            dir.display()
        ))
    })?;
    let _ = std::fs::remove_file(&probe);
    let id_path = dir.join(IDENTITY_FILE);
    // A directory that is not ours gets no lock file in it.
    if !id_path.exists() {
        let foreign = foreign_entries(dir)?;
        if !foreign.is_empty() {
            return Err(refuse_foreign(dir, &foreign));
        }
    }
    let lock = lock_data_dir(dir)?;
    let tmp_path = dir.join(IDENTITY_TMP_FILE);
    match std::fs::remove_file(&tmp_path) {
        Ok(()) => info!("removed {}, left by an interrupted write of the identity", tmp_path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(format!("cannot remove the stale {}: {e}", tmp_path.display()))),
    }
    let want = format!(
        "cluster_name = {:?}\ncluster_id = {}\nnode_id = {}\n",
        cfg.cluster_name,
        cluster_id(&cfg.cluster_name),
        cfg.id
    );
    let unwritten_identity = match std::fs::read_to_string(&id_path) {
        Ok(have) => {
            if have != want {
                return Err(err(format!(
                    "data_dir {} belongs to another node or cluster ({}); this node is cluster {:?} node {}. Use this \
                     node's own data directory",
                    dir.display(),
                    have.trim().replace('\n', ", "),
                    cfg.cluster_name,
                    cfg.id
                )));
            }
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let foreign = foreign_entries(dir)?;
            if !foreign.is_empty() {
                return Err(refuse_foreign(dir, &foreign));
            }
            Some(want)
        }
        Err(e) => return Err(err(format!("cannot read {}: {e}", id_path.display()))),
    };
    Ok(DataDir {
        path: dir.clone(),
        lock,
        identity: PendingIdentity { dir: dir.clone(), unwritten: unwritten_identity },
    })
}

/// The refusal of a start without `bootstrap` or `join` on a data directory with no
/// Raft state. The shard gives the same answer when `shard_dir` holds no state.
fn no_raft_state(shard_dir: &Path, id: u64) -> StartError {
    err(format!(
        "the data directory {} holds no Raft state. If this node's data was lost, do not start it as a blank member \
         (it could help elect a leader that lacks committed writes): remove it from the cluster (POST \
         /members/remove?id={id} on the leader's admin port), then start it with --join and add it back (POST \
         /members/add?id={id}). To found a new cluster, start every member with --bootstrap.",
        shard_dir.display()
    ))
}

/// The checks a first start makes before it writes anything: what the shard would
/// otherwise refuse only after the identity is written.
fn check_new_data_dir(data: &DataDir, params: &ShardParams) -> Result<(), StartError> {
    if params.start == StartMode::Restart {
        return Err(no_raft_state(&params.dir, params.node_id));
    }
    DmaFs.check_direct_io(&data.path).map_err(|e| err(format!("data_dir {} is unusable: {e}", data.path.display())))
}

/// Writes `data` to `tmp`, syncs it and renames it to `path`, so `path` is either absent
/// or whole after a crash.
/// Writes `data` to `path` through `tmp`: written, synced, renamed, directory synced.
pub(crate) fn write_durably(path: &Path, tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// The shard parameters of a validated configuration.
pub fn shard_params(cfg: &NodeConfig, dir: PathBuf) -> Result<ShardParams, StartError> {
    let mut members = Vec::new();
    for (&id, addr) in &cfg.cluster {
        members.push((id, skiff_tuning::resolve(&format!("cluster member {id}"), addr)?));
    }
    let mut engine = skiff_engine::Config::new(cfg.id);
    engine.election_ticks = cfg.election_ticks;
    engine.heartbeat_ticks = cfg.heartbeat_ticks;
    engine.max_size_per_msg = cfg.max_size_per_msg;
    engine.max_inflight_msgs = cfg.max_inflight_msgs;
    engine.check_quorum = cfg.check_quorum;
    engine.pre_vote = cfg.pre_vote;
    engine.read_mode = match cfg.read_mode {
        ReadModeSetting::Safe => ReadMode::Safe,
        ReadModeSetting::Lease => ReadMode::Lease,
    };
    engine.seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(cfg.id, |d| d.as_nanos() as u64)
            ^ cfg.id.rotate_left(32);
    engine.validate().map_err(|e| err(e.to_string()))?;
    Ok(ShardParams {
        node_id: cfg.id,
        shard: 0,
        cluster_id: cluster_id(&cfg.cluster_name),
        engine,
        dir,
        members,
        start: if cfg.bootstrap {
            StartMode::Bootstrap
        } else if cfg.join {
            StartMode::Join
        } else {
            StartMode::Restart
        },
        tick: Duration::from_millis(cfg.tick_ms),
        heartbeat_ticks: cfg.heartbeat_ticks,
        wal_segment_bytes: cfg.wal_segment_bytes,
        frame_bytes_max: cfg.frame_bytes_max as usize,
        snapshot_log_bytes: cfg.snapshot_log_bytes,
        snapshot_catchup_entries: cfg.snapshot_catchup_entries,
        snapshot_catchup_bytes: cfg.snapshot_catchup_bytes,
        wal_writes_in_flight: cfg.wal_writes_in_flight,
        wal_sync: match cfg.wal_sync {
            WalSyncSetting::Dsync => skiff_wal::SyncMode::Dsync,
            WalSyncSetting::Fdatasync => skiff_wal::SyncMode::Fdatasync,
        },
        max_clients: cfg.max_clients,
        max_pending_proposals: cfg.max_pending_proposals,
        max_pending_reads: cfg.max_pending_reads,
        request_timeout: Duration::from_millis(cfg.request_timeout_ms),
        fsync_warn: Duration::from_millis(cfg.fsync_warn_ms),
        apply_warn: Duration::from_millis(cfg.apply_warn_ms),
        trace: None,
    })
}

/// A running node: its shard executor thread, its admin port, and what it publishes.
#[derive(Debug)]
pub struct Running {
    pub published: Arc<Published>,
    pub stop: Arc<AtomicBool>,
    shard_thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    admin: Option<AdminHandle>,
    /// The data directory's lock, released when the node is gone.
    _lock: DirLock,
}

impl Running {
    /// Asks the node to stop (as SIGTERM does).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Waits for the node to stop; the error is why it stopped on its own.
    pub fn wait(mut self) -> Result<(), StartError> {
        let res = self.shard_thread.take().map(|h| h.join());
        if let Some(a) = self.admin.take()
            && let Err(e) = a.shutdown()
        {
            warn!("stopping the admin port: {e}");
        }
        match res {
            Some(Ok(Ok(()))) | None => Ok(()),
            Some(Ok(Err(e))) => Err(err(e)),
            Some(Err(_)) => Err(err("the shard thread panicked")),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.request_stop();
        if let Some(h) = self.shard_thread.take() {
            let _ = h.join();
        }
    }
}

/// Starts a node from a validated configuration and bound listeners. Returns once the
/// shard has opened its WAL and started serving (or failed to).
pub fn start(cfg: &NodeConfig, listeners: Listeners, topology: &Topology) -> Result<Running, StartError> {
    start_traced(cfg, listeners, topology, None)
}

/// As [`start`], recording the shard's WAL and transport activity into `trace` (tests
/// of the ordering rules).
pub fn start_traced(
    cfg: &NodeConfig,
    listeners: Listeners,
    topology: &Topology,
    trace: Option<crate::trace::Trace>,
) -> Result<Running, StartError> {
    cfg.validate(topology).map_err(|e| err(e.to_string()))?;
    check_memlock(1)?;
    let mut params = shard_params(cfg, cfg.data_dir.join("shard-0"))?;
    params.trace = trace;
    let data = prepare_data_dir(cfg)?;
    if data.is_new() {
        check_new_data_dir(&data, &params)?;
    }
    let DataDir { lock, identity, .. } = data;
    let stop = Arc::new(AtomicBool::new(false));
    let members = cfg.cluster.iter().map(|(&id, addr)| Member { id, addr: addr.clone(), learner: false }).collect();
    let published =
        Arc::new(Published::new(NodeInfo { node_id: cfg.id, cluster: cfg.cluster_name.clone(), members }, 1));
    let (ops_tx, mut ops_rx) = ops_channel(1);
    let ops = ops_rx.pop().expect("one receiver per shard");
    let placement = match cfg.cpu {
        Some(cpu) => Placement::Fixed(cpu as usize),
        None => Placement::Unbound,
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (stop2, stop3, pub2) = (stop.clone(), stop.clone(), published.clone());
    let Listeners { client, peer, admin } = listeners;
    let bootstrap = cfg.bootstrap;
    let admin = AdminServer::start(admin, published.clone(), ops_tx)
        .map_err(|e| err(format!("cannot start the admin port: {e}")))?;
    let handle = LocalExecutorBuilder::new(placement)
        .name("skiff-shard-0")
        .spawn(move || async move {
            // Every check that can refuse a first start has passed: the directory
            // becomes this node's.
            if let Err(e) = identity.write() {
                let _ = ready_tx.send(Err(e.to_string()));
                return Err(e.to_string());
            }
            let shard = match Shard::open(params, peer, stop2, pub2, ops).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e.to_string());
                }
            };
            if bootstrap {
                warn_if_bootstrap_ignored(&shard.status());
            }
            let accept = glommio::spawn_local(accept_clients(shard.clone(), client, stop3));
            let _ = ready_tx.send(Ok(()));
            let res = shard.clone().run().await;
            drop(accept);
            let closed = shard.close().await;
            res.map_err(|e| e.to_string())?;
            closed.map_err(|e| e.to_string())
        })
        .map_err(|e| err(format!("cannot start the shard executor: {e}")))?;
    let handle = std::thread::spawn(move || handle.join().unwrap_or_else(|e| Err(format!("shard executor: {e}"))));
    match ready_rx.recv() {
        Ok(Ok(())) => {
            info!(
                "node {} serving: client {}, peer {}, admin {}",
                cfg.id,
                cfg.client_addr,
                cfg.peer_addr().unwrap_or("?"),
                cfg.admin_addr
            );
            Ok(Running { published, stop, shard_thread: Some(handle), admin: Some(admin), _lock: lock })
        }
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(err(e))
        }
        Err(_) => {
            let why = match handle.join() {
                Ok(Err(e)) => e,
                Ok(Ok(())) => "it ended without saying why".into(),
                Err(_) => "its thread panicked (see the message above)".into(),
            };
            Err(err(format!("the shard stopped while starting: {why}")))
        }
    }
}

/// What a refused client connection is told before it is closed. The shard refuses
/// connections when `max_clients` are open and once it is stopping; `stop` (the flag
/// SIGTERM raises) tells the two apart.
fn refusal(stop: &AtomicBool) -> &'static [u8] {
    if stop.load(Ordering::Relaxed) {
        b"-ERR the node is shutting down\r\n"
    } else {
        b"-ERR max number of clients reached\r\n"
    }
}

/// Bootstrap acts only on a data directory with no Raft state. Left set on a node that
/// has state, it does nothing today, but if the directory is ever lost the node comes
/// back founding a cluster of its own instead of being refused: say so.
fn warn_if_bootstrap_ignored(status: &crate::metrics::ShardStatus) {
    // A founding member starts with its founding entries not yet written; a node that
    // restarted from its data has everything it knows on disk.
    let founded = status.persisted == 0 && status.last_index > 0;
    if !founded {
        warn!(
            "bootstrap is set but the data directory already holds Raft state (last index {}, term {}): bootstrap was \
             ignored. Remove it from this node's configuration (or pass --bootstrap=false): should the data \
             directory ever be lost, a node started with it founds a new cluster instead of being refused",
            status.last_index, status.term
        );
    }
}

async fn accept_clients(shard: Rc<Shard>, listener: TcpListener, stop: Arc<AtomicBool>) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the fd comes from a bound, listening std listener handed over here.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of file descriptors and the like: keep serving those connected.
                error!("accepting a client connection: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !shard.admit_client() {
            let mut s = stream;
            let _ = futures_lite::AsyncWriteExt::write_all(&mut s, refusal(&stop)).await;
            let _ = futures_lite::AsyncWriteExt::close(&mut s).await;
            continue;
        }
        glommio::spawn_local(crate::shard::serve_client(shard.clone(), stream)).detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipc_lock_capability_is_read_from_cap_eff() {
        assert!(has_ipc_lock("Name:\tskiff\nCapEff:\t000001ffffffffff\n"), "full root");
        assert!(!has_ipc_lock("CapEff:\t00000000a80425fb\n"), "a container's default root set");
        assert!(!has_ipc_lock("CapEff:\t0000000000000000\n"));
        assert!(!has_ipc_lock("Name:\tskiff\n"), "no line: assume it cannot");
    }

    fn config(dir: &Path) -> NodeConfig {
        let mut t = toml::Table::new();
        t.insert("id".into(), 1.into());
        t.insert("cluster".into(), "1=127.0.0.1:7001".into());
        t.insert("data_dir".into(), dir.to_string_lossy().into_owned().into());
        skiff_tuning::load(None, t).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    /// A crash while the identity is written leaves only its temporary file; the next
    /// start takes the directory as the empty one it was.
    #[test]
    fn a_stale_identity_temp_file_does_not_make_the_directory_foreign() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(IDENTITY_TMP_FILE), b"cluster_na").unwrap();
        let cfg = config(&dir);
        let data = prepare_data_dir(&cfg).expect("a directory holding only the temp file is accepted");
        assert!(data.is_new());
        assert_eq!(names(&dir), vec![LOCK_FILE.to_string()], "the temp file gone, nothing written yet");
        data.identity.write().unwrap();
        drop(data.lock);
        assert_eq!(names(&dir), vec![IDENTITY_FILE.to_string(), LOCK_FILE.to_string()]);
        let id = std::fs::read_to_string(dir.join(IDENTITY_FILE)).unwrap();
        assert!(id.contains("node_id = 1"), "{id}");
        assert!(!prepare_data_dir(&cfg).expect("and accepted again").is_new());
    }

    #[test]
    fn the_data_directory_is_locked_while_in_use() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let cfg = config(&dir);
        let data = prepare_data_dir(&cfg).unwrap();
        let e = prepare_data_dir(&cfg).expect_err("a second user of the directory is refused").0;
        assert!(e.contains("in use by another skiff process"), "{e}");
        assert!(e.contains(&dir.display().to_string()), "names the directory: {e}");
        assert!(e.contains(&format!("pid {}", std::process::id())), "names the holder: {e}");
        drop(data);
        prepare_data_dir(&cfg).expect("free again once the holder is gone");
    }

    /// The largest requests the client codec accepts become entries within
    /// `CLIENT_ENTRY_BYTES_MAX`, the bound `frame_bytes_max` is validated against.
    #[test]
    fn the_largest_client_requests_fit_the_entry_bound() {
        use bytes::Bytes;
        use skiff_tuning::config::{CLIENT_ENTRY_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX, CLIENT_REQUEST_ELEMENTS_MAX};
        let total = CLIENT_REQUEST_BYTES_MAX as usize;
        let elements = CLIENT_REQUEST_ELEMENTS_MAX as usize;
        // As many strings as allowed, sharing the request's bytes: the most length
        // prefixes, the most payload.
        let request = |name: &str, strings: usize| {
            let mut args = vec![Bytes::copy_from_slice(name.as_bytes())];
            let each = (total - name.len()) / strings;
            for i in 0..strings {
                let len = if i == 0 { total - name.len() - each * (strings - 1) } else { each };
                args.push(Bytes::from(vec![b'k'; len]));
            }
            assert_eq!(args.iter().map(Bytes::len).sum::<usize>(), total);
            args
        };
        let half = total / 2;
        let set = vec![
            Bytes::from_static(b"SET"),
            Bytes::from(vec![b'k'; half]),
            Bytes::from(vec![b'v'; total - half - 3 - 2]),
            Bytes::from_static(b"NX"),
        ];
        for args in [request("DEL", elements - 1), request("MSET", (elements - 1) & !1), set] {
            let crate::commands::Action::Write(cmd) = crate::commands::parse(&args) else { panic!("a write") };
            let entry = cmd.encode(crate::kv::Origin { node: u64::MAX, request: u64::MAX });
            assert!(
                entry.len() as u64 <= CLIENT_ENTRY_BYTES_MAX,
                "{} of {} strings: {} bytes",
                String::from_utf8_lossy(&args[0]),
                args.len(),
                entry.len()
            );
        }
    }
}
