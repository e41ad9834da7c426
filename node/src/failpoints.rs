//! Failure points for fault testing (OVS's `cluster/failure-test`, etcd's failpoints):
//! crash the process at a chosen step of the write path, fail an fdatasync, cut or
//! degrade Raft traffic to chosen peers, delay elections, withhold vote requests, slow
//! down the finishing of a received snapshot.
//!
//! They exist only in builds with the `failpoints` cargo feature; without it every hook
//! below is an empty inline function and the admin port has no `/debug/failpoints`
//! endpoints (it answers 404). Points are armed at run time through the admin port
//! (see docs/admin.md), or at start-up from the `SKIFF_FAILPOINTS` environment variable
//! ([`arm_from_env`]), and live in this process's memory: a restart disarms them all.
//!
//! The registry is process-global because the admin port runs on its own thread; the
//! hooks on the shard's hot path cost one relaxed atomic load while nothing is armed.

use std::time::Duration;

use skiff_engine::{Message, MessageBody};

/// Where a crash can be armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    WalBeforeWrite,
    WalAfterWrite,
    WalBeforeFsync,
    WalAfterFsync,
    LeaderBeforeSendAppend,
    FollowerBeforeSendResponse,
    SnapshotBeforeSave,
    SnapshotAfterSave,
    SnapshotBeforeApply,
    SnapshotAfterApply,
}

impl CrashPoint {
    pub const ALL: [CrashPoint; 10] = [
        CrashPoint::WalBeforeWrite,
        CrashPoint::WalAfterWrite,
        CrashPoint::WalBeforeFsync,
        CrashPoint::WalAfterFsync,
        CrashPoint::LeaderBeforeSendAppend,
        CrashPoint::FollowerBeforeSendResponse,
        CrashPoint::SnapshotBeforeSave,
        CrashPoint::SnapshotAfterSave,
        CrashPoint::SnapshotBeforeApply,
        CrashPoint::SnapshotAfterApply,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CrashPoint::WalBeforeWrite => "wal-before-write",
            CrashPoint::WalAfterWrite => "wal-after-write",
            CrashPoint::WalBeforeFsync => "wal-before-fsync",
            CrashPoint::WalAfterFsync => "wal-after-fsync",
            CrashPoint::LeaderBeforeSendAppend => "leader-before-send-append",
            CrashPoint::FollowerBeforeSendResponse => "follower-before-send-response",
            CrashPoint::SnapshotBeforeSave => "snapshot-before-save",
            CrashPoint::SnapshotAfterSave => "snapshot-after-save",
            CrashPoint::SnapshotBeforeApply => "snapshot-before-apply",
            CrashPoint::SnapshotAfterApply => "snapshot-after-apply",
        }
    }

    pub fn from_name(name: &str) -> Option<CrashPoint> {
        CrashPoint::ALL.into_iter().find(|p| p.name() == name)
    }

    #[cfg(feature = "failpoints")]
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

/// What to do with an outgoing Raft message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outgoing {
    Send,
    Drop,
    Delay(Duration),
}

/// Whether this build has failure points.
pub const ENABLED: bool = cfg!(feature = "failpoints");

#[cfg(feature = "failpoints")]
pub use armed::*;

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use log::error;
    use serde_json::{Value, json};
    use skiff_engine::{Message, MessageBody, NodeId};

    use super::{CrashPoint, Outgoing};

    /// Everything armed. `any` is set whenever something else is, so that idle hooks
    /// cost one load.
    struct Registry {
        any: AtomicBool,
        crash: AtomicU32,
        fsync_eio: AtomicBool,
        no_vote_requests: AtomicBool,
        /// Fraction of peer messages dropped, in millionths.
        drop_ppm: AtomicU32,
        delay_ms: AtomicU64,
        /// Added to the finishing of each received snapshot, in milliseconds.
        snapshot_finish_delay_ms: AtomicU64,
        rng: AtomicU64,
        net: Mutex<Net>,
    }

    #[derive(Default)]
    struct Net {
        cut_out: BTreeSet<NodeId>,
        cut_in: BTreeSet<NodeId>,
        election_delay_until: Option<Instant>,
    }

    static REG: Registry = Registry {
        any: AtomicBool::new(false),
        crash: AtomicU32::new(0),
        fsync_eio: AtomicBool::new(false),
        no_vote_requests: AtomicBool::new(false),
        drop_ppm: AtomicU32::new(0),
        delay_ms: AtomicU64::new(0),
        snapshot_finish_delay_ms: AtomicU64::new(0),
        rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
        net: Mutex::new(Net { cut_out: BTreeSet::new(), cut_in: BTreeSet::new(), election_delay_until: None }),
    };

    fn net() -> std::sync::MutexGuard<'static, Net> {
        REG.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_any() {
        let n = net();
        let any = REG.crash.load(Ordering::Relaxed) != 0
            || REG.fsync_eio.load(Ordering::Relaxed)
            || REG.no_vote_requests.load(Ordering::Relaxed)
            || REG.drop_ppm.load(Ordering::Relaxed) != 0
            || REG.delay_ms.load(Ordering::Relaxed) != 0
            || REG.snapshot_finish_delay_ms.load(Ordering::Relaxed) != 0
            || !n.cut_out.is_empty()
            || !n.cut_in.is_empty()
            || n.election_delay_until.is_some();
        REG.any.store(any, Ordering::Relaxed);
    }

    #[inline]
    fn idle() -> bool {
        !REG.any.load(Ordering::Relaxed)
    }

    /// Aborts the process if `point` is armed (a crash: no destructors, no flushing).
    #[inline]
    pub fn crash_point(point: CrashPoint) {
        if idle() || REG.crash.load(Ordering::Relaxed) & point.bit() == 0 {
            return;
        }
        error!("failpoint {}: crashing the process", point.name());
        log::logger().flush();
        std::process::abort();
    }

    /// True once after `fsync-eio` was armed: the next fdatasync fails with EIO.
    #[inline]
    pub fn fail_fsync() -> bool {
        if idle() {
            return false;
        }
        let hit = REG.fsync_eio.swap(false, Ordering::Relaxed);
        if hit {
            error!("failpoint fsync-eio: failing this fdatasync with EIO");
            refresh_any();
        }
        hit
    }

    fn chance(ppm: u32) -> bool {
        // xorshift; shared state, so concurrent callers only make it more random.
        let mut x = REG.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        REG.rng.store(x, Ordering::Relaxed);
        (x % 1_000_000) < u64::from(ppm)
    }

    /// What to do with a Raft message (or snapshot chunk) about to go to `to`.
    #[inline]
    pub fn outgoing(to: NodeId, m: Option<&Message>) -> Outgoing {
        if idle() {
            return Outgoing::Send;
        }
        if net().cut_out.contains(&to) {
            return Outgoing::Drop;
        }
        if let Some(m) = m
            && REG.no_vote_requests.load(Ordering::Relaxed)
            && matches!(m.body, MessageBody::Vote { .. })
        {
            return Outgoing::Drop;
        }
        let ppm = REG.drop_ppm.load(Ordering::Relaxed);
        if ppm != 0 && chance(ppm) {
            return Outgoing::Drop;
        }
        match REG.delay_ms.load(Ordering::Relaxed) {
            0 => Outgoing::Send,
            ms => Outgoing::Delay(Duration::from_millis(ms)),
        }
    }

    /// Whether a message that arrived from `from` is dropped (partitioned).
    #[inline]
    pub fn drop_incoming(from: NodeId) -> bool {
        !idle() && net().cut_in.contains(&from)
    }

    /// Whether the election timer is held back (the node does not tick while it is
    /// not the leader).
    #[inline]
    pub fn hold_election_timer() -> bool {
        if idle() {
            return false;
        }
        let mut n = net();
        match n.election_delay_until {
            Some(t) if Instant::now() < t => true,
            Some(_) => {
                n.election_delay_until = None;
                drop(n);
                refresh_any();
                false
            }
            None => false,
        }
    }

    /// Called on the blocking thread that finishes a received snapshot, before it
    /// starts: sleeps as long as `snapshot-finish-delay` says (a large snapshot on a
    /// slow disk, without needing one).
    pub fn snapshot_finish_delay() {
        if idle() {
            return;
        }
        match REG.snapshot_finish_delay_ms.load(Ordering::Relaxed) {
            0 => {}
            ms => {
                error!("failpoint snapshot-finish-delay: finishing the received snapshot {ms} ms late");
                std::thread::sleep(Duration::from_millis(ms));
            }
        }
    }

    /// Arms or disarms one point from the admin port. `params` are the query
    /// parameters. Returns a description of what is now armed, or why not.
    pub fn arm(name: &str, params: &[(String, String)]) -> Result<String, String> {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let allow = |keys: &[&str]| match params.iter().find(|(n, _)| !keys.contains(&n.as_str())) {
            Some((n, _)) => Err(format!("unknown parameter `{n}` for {name}; it takes: {}", keys.join(", "))),
            None => Ok(()),
        };
        let action = get("action");
        let off = action == Some("off");
        let result = if let Some(point) = CrashPoint::from_name(name) {
            allow(&["action"])?;
            match action {
                Some("crash") => {
                    REG.crash.fetch_or(point.bit(), Ordering::Relaxed);
                    format!("{name}: the process aborts when it is reached")
                }
                Some("off") => {
                    REG.crash.fetch_and(!point.bit(), Ordering::Relaxed);
                    format!("{name}: off")
                }
                _ => return Err(format!("{name} takes action=crash or action=off")),
            }
        } else {
            match name {
                "fsync-eio" => {
                    allow(&["action"])?;
                    let on = match action {
                        Some("on") => true,
                        Some("off") => false,
                        _ => return Err("fsync-eio takes action=on or action=off".into()),
                    };
                    REG.fsync_eio.store(on, Ordering::Relaxed);
                    format!("fsync-eio: {}", if on { "the next fdatasync fails with EIO" } else { "off" })
                }
                "no-vote-requests" => {
                    allow(&["action"])?;
                    let on = match action {
                        Some("on") => true,
                        Some("off") => false,
                        _ => return Err("no-vote-requests takes action=on or action=off".into()),
                    };
                    REG.no_vote_requests.store(on, Ordering::Relaxed);
                    format!("no-vote-requests: {}", if on { "vote requests are not sent" } else { "off" })
                }
                "election-delay" => {
                    allow(&["ms", "action"])?;
                    let mut n = net();
                    if off {
                        n.election_delay_until = None;
                        "election-delay: off".to_string()
                    } else {
                        let ms = parse_u64(get("ms"), "ms")?;
                        n.election_delay_until = Some(Instant::now() + Duration::from_millis(ms));
                        format!("election-delay: no election timer for {ms} ms")
                    }
                }
                "snapshot-finish-delay" => {
                    allow(&["ms", "action"])?;
                    let ms = if off { 0 } else { parse_u64(get("ms"), "ms")? };
                    if ms > 600_000 {
                        return Err("ms must be at most 600000".into());
                    }
                    REG.snapshot_finish_delay_ms.store(ms, Ordering::Relaxed);
                    match ms {
                        0 => "snapshot-finish-delay: off".to_string(),
                        _ => format!("snapshot-finish-delay: each received snapshot is finished {ms} ms late"),
                    }
                }
                "partition" => {
                    allow(&["peers", "dir", "action"])?;
                    let mut n = net();
                    if off {
                        n.cut_out.clear();
                        n.cut_in.clear();
                        "partition: healed".to_string()
                    } else {
                        let peers = get("peers").ok_or("partition needs peers=ID,ID,... (or action=off)")?;
                        let ids = peers
                            .split(',')
                            .map(|p| p.trim().parse::<NodeId>().map_err(|_| format!("peers: `{p}` is not a node id")))
                            .collect::<Result<Vec<_>, _>>()?;
                        let (out, inc) = match get("dir").unwrap_or("both") {
                            "both" => (true, true),
                            "out" => (true, false),
                            "in" => (false, true),
                            d => return Err(format!("dir must be both, in or out, not `{d}`")),
                        };
                        for id in ids {
                            if out {
                                n.cut_out.insert(id);
                            }
                            if inc {
                                n.cut_in.insert(id);
                            }
                        }
                        format!("partition: not sending to {:?}, not receiving from {:?}", n.cut_out, n.cut_in)
                    }
                }
                "net" => {
                    allow(&["drop", "delay_ms", "action"])?;
                    if off {
                        REG.drop_ppm.store(0, Ordering::Relaxed);
                        REG.delay_ms.store(0, Ordering::Relaxed);
                        "net: off".to_string()
                    } else {
                        let drop: f64 = match get("drop") {
                            None => 0.0,
                            Some(v) => v.parse().map_err(|_| format!("drop: `{v}` is not a fraction"))?,
                        };
                        if !(0.0..=1.0).contains(&drop) {
                            return Err(format!("drop must be between 0 and 1, not {drop}"));
                        }
                        let delay = match get("delay_ms") {
                            None => 0,
                            v => parse_u64(v, "delay_ms")?,
                        };
                        if delay > 60_000 {
                            return Err("delay_ms must be at most 60000".into());
                        }
                        REG.drop_ppm.store((drop * 1e6) as u32, Ordering::Relaxed);
                        REG.delay_ms.store(delay, Ordering::Relaxed);
                        format!("net: dropping {drop} of peer messages, delaying the rest by {delay} ms")
                    }
                }
                _ => return Err(format!("no failure point `{name}`; see GET /debug/failpoints")),
            }
        };
        refresh_any();
        error!("failpoint armed: {result}");
        Ok(result)
    }

    fn parse_u64(v: Option<&str>, name: &str) -> Result<u64, String> {
        let v = v.ok_or_else(|| format!("missing parameter `{name}`"))?;
        v.parse().map_err(|_| format!("{name}: `{v}` is not a non-negative integer"))
    }

    /// Everything that can be armed and what is armed now.
    pub fn describe() -> Value {
        let crash = REG.crash.load(Ordering::Relaxed);
        let n = net();
        json!({
            "crash_points": CrashPoint::ALL.iter().map(|p| json!({
                "name": p.name(), "armed": crash & p.bit() != 0,
            })).collect::<Vec<_>>(),
            "fsync_eio": REG.fsync_eio.load(Ordering::Relaxed),
            "no_vote_requests": REG.no_vote_requests.load(Ordering::Relaxed),
            "partition": { "out": n.cut_out, "in": n.cut_in },
            "net": {
                "drop": f64::from(REG.drop_ppm.load(Ordering::Relaxed)) / 1e6,
                "delay_ms": REG.delay_ms.load(Ordering::Relaxed),
            },
            "snapshot_finish_delay_ms": REG.snapshot_finish_delay_ms.load(Ordering::Relaxed),
            "election_delay_ms": n.election_delay_until
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64)
                .unwrap_or(0),
        })
    }

    /// Disarms everything (tests share the process-global registry).
    pub fn reset() {
        REG.crash.store(0, Ordering::Relaxed);
        REG.fsync_eio.store(false, Ordering::Relaxed);
        REG.no_vote_requests.store(false, Ordering::Relaxed);
        REG.drop_ppm.store(0, Ordering::Relaxed);
        REG.delay_ms.store(0, Ordering::Relaxed);
        REG.snapshot_finish_delay_ms.store(0, Ordering::Relaxed);
        *net() = Net::default();
        refresh_any();
    }
}

#[cfg(not(feature = "failpoints"))]
mod disarmed {
    use super::{CrashPoint, Outgoing};
    use skiff_engine::{Message, NodeId};

    #[inline(always)]
    pub fn crash_point(_: CrashPoint) {}
    #[inline(always)]
    pub fn fail_fsync() -> bool {
        false
    }
    #[inline(always)]
    pub fn outgoing(_: NodeId, _: Option<&Message>) -> Outgoing {
        Outgoing::Send
    }
    #[inline(always)]
    pub fn drop_incoming(_: NodeId) -> bool {
        false
    }
    #[inline(always)]
    pub fn hold_election_timer() -> bool {
        false
    }
    #[inline(always)]
    pub fn snapshot_finish_delay() {}
}

#[cfg(not(feature = "failpoints"))]
pub use disarmed::*;

/// The environment variable that arms failure points at start-up, before the node
/// serves anything: `NAME?PARAM=VALUE&...`, several separated by `;`, as the admin
/// port's `POST /debug/failpoints/NAME?...` takes them (a node started on a data dir
/// can then meet a failure point in its first seconds, e.g. while catching up).
pub const ENV: &str = "SKIFF_FAILPOINTS";

/// Arms what [`ENV`] names. An error names the bad part; in a build without failure
/// points, the variable being set at all is one.
pub fn arm_from_env() -> Result<(), String> {
    match std::env::var_os(ENV) {
        None => Ok(()),
        Some(spec) => arm_spec(&spec.into_string().map_err(|_| format!("{ENV} is not valid UTF-8"))?),
    }
}

/// Arms each `NAME?PARAM=VALUE&...` of a `;`-separated list ([`ENV`]'s syntax).
pub fn arm_spec(spec: &str) -> Result<(), String> {
    if !ENABLED {
        return Err(format!(
            "{ENV} is set, but this build has no failure points (build with `--features failpoints`, or unset it)"
        ));
    }
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, query) = part.split_once('?').unwrap_or((part, ""));
        crate::admin::query_pairs(query)
            .and_then(|params| arm_point(name, &params))
            .map_err(|e| format!("{ENV}: `{part}`: {e}"))?;
    }
    Ok(())
}

#[cfg(feature = "failpoints")]
fn arm_point(name: &str, params: &[(String, String)]) -> Result<String, String> {
    arm(name, params)
}

#[cfg(not(feature = "failpoints"))]
fn arm_point(_: &str, _: &[(String, String)]) -> Result<String, String> {
    unreachable!("checked: ENABLED is false")
}

/// The crash points on the send path: a leader's append with entries, a
/// follower's append response.
pub fn crash_before_send(m: &Message, is_leader: bool) {
    match &m.body {
        MessageBody::Append { entries, .. } if is_leader && !entries.is_empty() => {
            crash_point(CrashPoint::LeaderBeforeSendAppend)
        }
        MessageBody::AppendResponse { .. } if !is_leader => crash_point(CrashPoint::FollowerBeforeSendResponse),
        _ => {}
    }
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use super::*;

    /// The registry is process-global: tests take turns.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn p(kv: &[(&str, &str)]) -> Vec<(String, String)> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn arming_parses_and_rejects_bad_parameters() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        reset();
        assert!(arm("wal-before-write", &p(&[("action", "crash")])).is_ok());
        assert!(arm("wal-before-write", &p(&[("action", "sometimes")])).is_err());
        assert!(arm("nonexistent", &p(&[])).unwrap_err().contains("no failure point"));
        assert!(arm("partition", &p(&[("peers", "2,x")])).unwrap_err().contains("`x`"));
        assert!(arm("partition", &p(&[("peers", "2"), ("colour", "red")])).unwrap_err().contains("colour"));
        assert!(arm("net", &p(&[("drop", "1.5")])).is_err());
        let d = describe();
        assert_eq!(d["crash_points"][0]["armed"], true);
        reset();
        assert_eq!(describe()["crash_points"][0]["armed"], false);
    }

    #[test]
    fn a_start_up_spec_arms_each_point_or_names_the_bad_one() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        reset();
        arm_spec(" snapshot-finish-delay?ms=1500 ;partition?peers=2&dir=out;;").unwrap();
        let d = describe();
        assert_eq!(d["snapshot_finish_delay_ms"], 1500);
        assert_eq!(d["partition"]["out"], serde_json::json!([2]));
        let e = arm_spec("wal-before-write?action=crash;net?drop=x").unwrap_err();
        assert!(e.contains("`net?drop=x`") && e.contains("drop"), "{e}");
        assert!(arm_spec("snapshot-finish-delay").unwrap_err().contains("missing parameter `ms`"));
        let e = arm_spec("snapshot-finish-delay?ms=1&ms=2").unwrap_err();
        assert!(e.contains("given more than once"), "parsed as the admin port parses: {e}");
        arm_spec("snapshot-finish-delay?action=off").unwrap();
        assert_eq!(describe()["snapshot_finish_delay_ms"], 0);
        reset();
    }

    #[test]
    fn partitions_cut_the_chosen_direction_and_heal() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        reset();
        arm("partition", &p(&[("peers", "2,3"), ("dir", "out")])).unwrap();
        assert_eq!(outgoing(2, None), Outgoing::Drop);
        assert_eq!(outgoing(4, None), Outgoing::Send);
        assert!(!drop_incoming(2));
        arm("partition", &p(&[("peers", "4"), ("dir", "in")])).unwrap();
        assert!(drop_incoming(4));
        arm("partition", &p(&[("action", "off")])).unwrap();
        assert_eq!(outgoing(2, None), Outgoing::Send);
        assert!(!drop_incoming(4));
        arm("net", &p(&[("drop", "1")])).unwrap();
        assert_eq!(outgoing(2, None), Outgoing::Drop);
        arm("net", &p(&[("delay_ms", "7")])).unwrap();
        assert_eq!(outgoing(2, None), Outgoing::Delay(Duration::from_millis(7)));
        arm("net", &p(&[("action", "off")])).unwrap();
        assert_eq!(outgoing(2, None), Outgoing::Send);
        arm("fsync-eio", &p(&[("action", "on")])).unwrap();
        assert!(fail_fsync());
        assert!(!fail_fsync(), "fsync-eio fails one fdatasync");
        reset();
    }
}

/// The file system the shard's WAL runs on: glommio's O_DIRECT files, wrapped with the
/// WAL failure points in `failpoints` builds.
#[cfg(not(feature = "failpoints"))]
pub type WalFs = skiff_wal::DmaFs;

#[cfg(feature = "failpoints")]
pub type WalFs = fs::FailFs;

#[cfg(feature = "failpoints")]
mod fs {
    use std::io;
    use std::path::Path;

    use skiff_wal::{DmaFs, FileSystem, WalFile};

    use super::{CrashPoint, crash_point, fail_fsync};

    /// [`DmaFs`] with crash points around writes and fdatasyncs, and an injectable
    /// fdatasync failure.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct FailFs(DmaFs);

    #[derive(Debug)]
    pub struct FailFile(<DmaFs as FileSystem>::File);

    impl WalFile for FailFile {
        type Buffer = <DmaFs as FileSystem>::Buffer;

        async fn write_at(&self, buf: Self::Buffer, pos: u64) -> io::Result<()> {
            crash_point(CrashPoint::WalBeforeWrite);
            self.0.write_at(buf, pos).await?;
            crash_point(CrashPoint::WalAfterWrite);
            Ok(())
        }

        /// An `O_DSYNC` write is the write and its flush at once: both "before" points
        /// fire before it, both "after" points once it is durable, and an injected
        /// fdatasync failure fails it after the bytes were written (durable or not: the
        /// WAL must not acknowledge it either way).
        async fn write_durable_at(&self, buf: Self::Buffer, pos: u64) -> io::Result<()> {
            crash_point(CrashPoint::WalBeforeWrite);
            crash_point(CrashPoint::WalBeforeFsync);
            self.0.write_durable_at(buf, pos).await?;
            if fail_fsync() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            crash_point(CrashPoint::WalAfterWrite);
            crash_point(CrashPoint::WalAfterFsync);
            Ok(())
        }

        async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
            self.0.read_at(pos, len).await
        }

        fn read_exact_at_blocking(&self, pos: u64, buf: &mut [u8]) -> io::Result<()> {
            self.0.read_exact_at_blocking(pos, buf)
        }

        async fn fdatasync(&self) -> io::Result<()> {
            crash_point(CrashPoint::WalBeforeFsync);
            if fail_fsync() {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.0.fdatasync().await?;
            crash_point(CrashPoint::WalAfterFsync);
            Ok(())
        }

        async fn size(&self) -> io::Result<u64> {
            self.0.size().await
        }
    }

    impl FileSystem for FailFs {
        type Buffer = <DmaFs as FileSystem>::Buffer;
        type File = FailFile;

        fn alloc_buffer(&self, len: usize) -> Self::Buffer {
            self.0.alloc_buffer(len)
        }
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.0.create_dir_all(dir)
        }
        fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.0.list_dir(dir)
        }
        fn check_direct_io(&self, dir: &Path) -> Result<(), String> {
            self.0.check_direct_io(dir)
        }
        async fn probe_device(&self, dir: &Path) -> io::Result<()> {
            self.0.probe_device(dir).await
        }
        async fn open(&self, path: &Path) -> io::Result<FailFile> {
            self.0.open(path).await.map(FailFile)
        }
        async fn create(&self, path: &Path) -> io::Result<FailFile> {
            self.0.create(path).await.map(FailFile)
        }
        async fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.0.rename(from, to).await
        }
        async fn remove(&self, path: &Path) -> io::Result<()> {
            self.0.remove(path).await
        }
        async fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.0.sync_dir(dir).await
        }
    }
}
